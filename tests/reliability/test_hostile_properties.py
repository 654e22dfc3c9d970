"""Hostile input, property by property (hypothesis), beyond what schemathesis reaches through the OpenAPI.

1. Job specs: hostile text in every user-controlled field goes through the real renderers (spec → Launch → sbatch
   script / Ray entrypoint), and the result is run by REAL bash/sh in a sandbox with stub ``srun``, ``torchrun``
   and ``scontrol`` that pass argv along like the real ones: either the spec is refused naming the field, or the
   payload never runs and argv/env arrive byte-identical.
2. Dataset object names: every accepted path yields a key strictly under ``<org>/<dataset>/v<N>/``, normalised.
3. Gateway payloads: hostile JSON bodies to OIP infer and /v1/embeddings never get a 5xx; errors name the field.
4. Portal: hostile names and descriptions are shown escaped, never evaluated as templates, never as links.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haihe.datasets import layout
from haihe.errors import InvalidInput, Unsupported
from haihe.jobs.render import RenderContext, job_experiment, render_launch
from haihe.jobs.spec import JobSpec, validate_spec
from haihe.schedulers.base import Launch, Launcher
from haihe.schedulers.ray import translate
from haihe.schedulers.slurm.options import slurm_options
from haihe.schedulers.slurm.sbatch import render_script
from tests.fixtures.figures import Figures
from tests.unit.endpoint_fakes import FakeRuntime

EXAMPLES = int(os.environ.get("HAIHE_PROPERTY_EXAMPLES", "100"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
# each job-spec example runs bash (and sh) for real: fewer of them, so the file stays within its time budget
JOB_SETTINGS = settings(SETTINGS, max_examples=max(10, EXAMPLES * 3 // 5))

PWNED = "PWNED"
PAYLOADS = [f"$(touch {PWNED})", f"`touch {PWNED}`", f"; touch {PWNED}", f"\ntouch {PWNED}\n", f"&& touch {PWNED}",
            f"| touch {PWNED}", f'$(touch "$HAIHE_PROBE_DIR/{PWNED}")', f"'; touch {PWNED}; '",
            f'"; touch {PWNED}; "', f"\\'$(touch {PWNED})", f"${{IFS}}touch${{IFS}}{PWNED}", f"$'\\x74ouch' {PWNED}",
            f"#SBATCH --wrap='touch {PWNED}'", f"\r\ntouch {PWNED}", f"<(touch {PWNED})", f">({PWNED})"]
NASTY = ["'", '"', "\\", "\n", "\r", "\t", ";", "&", "|", "$", "`", "*", "?", "~", "!", "{", "}", "#", " ", "-", "--",
         "=", "%", "天津超算", "é", "\u202e", "\u00a0", "\x7f", "\x1b[31m", "{{7*7}}", "\x00"]
# no lone surrogates (Cs): neither JSON nor YAML decoding produces them from valid UTF-8
_chars = st.characters(blacklist_categories=["Cs"])
hostile = st.lists(st.one_of(st.sampled_from(PAYLOADS), st.sampled_from(NASTY), st.text(_chars, max_size=8)),
                   min_size=1, max_size=5).map("".join)
valid_name = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?\Z")
maybe_hostile_name = st.one_of(valid_name, hostile)

STUBS = {
    # srun: drop its own --options, then run the command on "the node", as srun does
    "srun": '#!/bin/bash\nwhile [[ $# -gt 0 && $1 == --* ]]; do shift; done\nexport SLURM_NODEID=0\nexec "$@"\n',
    # torchrun --no-python: everything after its own options is the program and its argv
    "torchrun": '#!/bin/bash\nwhile [[ $# -gt 0 && $1 != --no-python ]]; do shift; done\nshift\nexec "$@"\n',
    "scontrol": '#!/bin/bash\ncase "$2" in hostnames) echo n1 ;; node) echo "NodeName=n1 NodeAddr=127.0.0.1" ;; '
                'esac\n',
    # the job's python and Ray Train's launcher python: record argv (NUL-separated), env and cwd, byte for byte
    "recorder": '#!/bin/bash\nprintf "%s\\0" "$@" > "$HAIHE_PROBE_DIR/argv"\nenv -0 > "$HAIHE_PROBE_DIR/env"\n'
                'printf "%s" "$PWD" > "$HAIHE_PROBE_DIR/cwd"\n',
}


@dataclasses.dataclass
class Tally:
    examples: int = 0
    refused: int = 0
    ran: int = 0
    unnamed_400: int = 0


TALLY: dict[str, Tally] = {}


def _sandbox() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="hostile-")


def _install_stubs(root: Path) -> Path:
    bin_dir = root / "bin"
    bin_dir.mkdir()
    for name, text in STUBS.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    (bin_dir / "python").symlink_to(bin_dir / "recorder")  # Ray Train's launcher line starts with `python`
    return bin_dir


def _run(root: Path, argv: list[str]) -> tuple[list[str], dict[str, str], str]:
    """Run ``argv`` in the sandbox; return what the recorder saw (argv after the program, env, cwd)."""
    bin_dir = root / "bin"
    probe = root / "probe"
    probe.mkdir(exist_ok=True)
    for f in probe.iterdir():
        f.unlink()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HAIHE_PROBE_DIR": str(probe), "SLURM_JOB_ID": "12",
           "SLURM_JOB_NODELIST": "n1", "SLURM_ARRAY_TASK_ID": "0", "LC_ALL": "C.UTF-8"}
    proc = subprocess.run(argv, cwd=root, env=env, capture_output=True, timeout=30, check=False)
    assert (probe / "argv").exists(), f"the program never ran: rc={proc.returncode} {proc.stderr[-500:]!r}"
    raw_argv = (probe / "argv").read_bytes()
    args = [a.decode("utf-8", "surrogateescape") for a in raw_argv.split(b"\0")[:-1]]
    pairs = (probe / "env").read_bytes().split(b"\0")[:-1]
    recorded = dict(p.decode("utf-8", "surrogateescape").split("=", 1) for p in pairs)
    return args, recorded, (probe / "cwd").read_bytes().decode("utf-8", "surrogateescape")


def _no_pwned(root: Path) -> None:
    found = [str(p) for p in root.rglob(f"*{PWNED}*") if p.name == PWNED]
    assert not found, f"an injected payload ran: {found}"


def _names_a_field(exc: InvalidInput | Unsupported, injected: set[str]) -> None:
    field = exc.field or ""
    head = field.split(".")[0]
    assert head in injected or any(name in exc.message for name in injected), (field, exc.message, injected)


RESTRICTED = ("name", "partition", "qos", "time_limit", "dataset.name", "dataset.mount", "from_zoo", "register",
              "sweep_key", "env_key")


def _spec_data(draw: Any) -> tuple[dict[str, Any], set[str]]:
    """A job spec with hostile text in every free-text field (argv, env values, experiment, sweep values) and, in
    some examples, in one restricted field (names, partition, ...); plus the top-level fields that got some."""
    bad = draw(st.one_of(st.none(), st.none(), st.sampled_from(RESTRICTED)))

    def pick(field: str, good: Any) -> Any:
        return draw(hostile) if bad == field else draw(good)

    data: dict[str, Any] = {"name": pick("name", valid_name), "launcher": draw(st.sampled_from(
        ["none", "torchrun", "mpi", "ray_train"]))}
    entry = draw(st.lists(hostile, min_size=1, max_size=4))
    data["entrypoint"] = draw(st.sampled_from([entry, entry, " ".join(entry)]))
    good_key = st.from_regex(r"\AU_[A-Z0-9_]{1,12}\Z")
    data["env"] = draw(st.dictionaries(good_key, hostile, max_size=4))
    if bad == "env_key":
        data["env"][draw(st.one_of(hostile, st.sampled_from(["1BAD", "A-B", "HAIHE_X", "SLURM_JOB_ID", "A=B",
                                                              "AWS_SECRET", ""])))] = "v"
    data["resources"] = {"partition": pick("partition", st.one_of(st.none(), valid_name)),
                         "qos": pick("qos", st.one_of(st.none(), valid_name)),
                         "time_limit": pick("time_limit", st.sampled_from(["00:30:00", 5, "1-00:00"]))}
    data["tracking"] = {"experiment": draw(st.one_of(st.none(), hostile.map(lambda x: x[:200])))}
    if draw(st.booleans()) or bad in ("dataset.name", "dataset.mount"):
        data["dataset"] = {"name": pick("dataset.name", valid_name),
                           "mount": pick("dataset.mount", st.sampled_from(["/data", "/mnt/a_b.c-d"]))}
    if draw(st.booleans()) or bad == "from_zoo":
        data["model"] = {"from_zoo": pick("from_zoo", st.just("public/minilm-l6@production"))}
    if draw(st.booleans()) or bad == "register":
        data["register"] = {"name": pick("register", valid_name)}
    if draw(st.booleans()) or bad == "sweep_key":
        data["sweep"] = {pick("sweep_key", st.just("lr")): draw(st.lists(hostile, min_size=1, max_size=3))}
    injected = set(data) | {"register", "time_limit", "partition", "qos", "experiment", "mount", "from_zoo", "env"}
    return data, injected


@st.composite
def job_cases(draw: Any) -> tuple[dict[str, Any], set[str], str, str | None]:
    data, injected = _spec_data(draw)
    account = draw(st.one_of(st.none(), st.just("acme_vision"), hostile))
    workdir_leaf = draw(st.one_of(st.none(), hostile))
    return data, injected, account or "", workdir_leaf


def _expect_recorded(spec: JobSpec, launch: Launch, ctx: RenderContext, args: list[str], env: dict[str, str]) -> None:
    assert spec.entrypoint is not None
    assert args[-len(spec.entrypoint) - 1:] == ["--", *spec.entrypoint], (args, spec.entrypoint)
    for key, value in launch.env.items():
        assert env.get(key) == value, (key, value, env.get(key))
    assert env["HAIHE_EXPERIMENT"] == job_experiment(ctx.org, ctx.project, spec.tracking.experiment)
    if spec.sweep:
        assert json.loads(env["HAIHE_SWEEP"]) == spec.sweep_points()


@JOB_SETTINGS
@given(case=job_cases())
def _job_spec_property(case: tuple[dict[str, Any], set[str], str, str | None]) -> None:
    data, injected, account, workdir_leaf = case
    tally = TALLY.setdefault("jobs", Tally())
    tally.examples += 1
    try:
        spec = validate_spec(data, "hostile.yaml")
    except InvalidInput as exc:
        tally.refused += 1
        _names_a_field(exc, injected)
        assert exc.message.startswith("hostile.yaml: ")
        return
    with _sandbox() as tmp:
        root = Path(tmp)
        recorder = _install_stubs(root) / "recorder"
        ctx = RenderContext(job_id="0f1e2d3c-job", org="acme", project="vision", user="ada",
                            node_python=str(recorder), account=account or None, dataset="acme/ds@v1")
        launch = render_launch(spec, ctx)
        if workdir_leaf is not None:
            workdir = root / "work" / workdir_leaf.replace("/", "_").replace("\x00", "_")[:200]
            if workdir_leaf.strip(".") and "\x00" not in workdir_leaf:
                workdir.mkdir(parents=True, exist_ok=True)
                launch = dataclasses.replace(launch, workdir=str(workdir))
        # Slurm: the batch script as sbatch would run it
        try:
            script = render_script(launch, slurm_options(launch, jobs_dir=str(root)))
        except InvalidInput as exc:
            _names_a_field(exc, injected | {"account", "launcher", "env"})
            assert launch.launcher is Launcher.RAY_TRAIN or exc.field in ("account", "partition", "qos") \
                or (exc.field or "").startswith("env.")
        else:
            (root / "job.sbatch").write_text(script, encoding="utf-8")
            args, env, cwd = _run(root, ["bash", str(root / "job.sbatch")])
            _no_pwned(root)
            _expect_recorded(spec, launch, ctx, args, env)
            assert env["HAIHE_JOB_NAME"] == launch.name
            if launch.workdir:
                assert cwd == launch.workdir
            tally.ran += 1
        # Ray: the entrypoint line, as Ray's job supervisor runs it (/bin/sh -c)
        try:
            translate.check_shape(launch)
            line = translate.entrypoint(launch)
            body = translate.submit_body(launch, None)
        except (InvalidInput, Unsupported) as exc:
            _names_a_field(exc, injected | {"resources", "env", "command"})
            return
        assert body["runtime_env"]["env_vars"].items() >= dict(launch.env).items()  # JSON, never a shell
        args, env, _cwd = _run(root, ["/bin/sh", "-c", line])
        _no_pwned(root)
        assert spec.entrypoint is not None
        assert args[-len(spec.entrypoint) - 1:] == ["--", *spec.entrypoint]
        if launch.launcher is Launcher.RAY_TRAIN:
            assert args[args.index("--name") + 1] == launch.name
        tally.ran += 1


def test_hostile_job_specs_never_inject_into_batch_scripts(figures: Figures) -> None:
    TALLY.pop("jobs", None)
    try:
        _job_spec_property()
    except Exception:
        figures.record("test_hostile_job_specs_never_inject_into_batch_scripts", "hypothesis: hostile job specs",
                       {"examples": TALLY["jobs"].examples, "failures": 1}, "failed")
        raise
    t = TALLY["jobs"]
    assert t.ran > 0 and t.refused > 0, t  # both branches really exercised
    figures.record("test_hostile_job_specs_never_inject_into_batch_scripts",
                   "hypothesis: shell payloads in every job-spec field; sbatch script and Ray entrypoint run by "
                   "real bash/sh with stub srun/torchrun",
                   {"examples": t.examples, "refused_naming_field": t.refused, "scripts_run": t.ran,
                    "failures": 0})


def test_lone_surrogates_from_json_are_refused_naming_the_field() -> None:
    """JSON can carry ``\\ud800``, which no UTF-8 script can hold: refused at validation, never at render time."""
    data = json.loads('{"name": "s", "entrypoint": ["python", "\\ud800"]}')
    with pytest.raises(InvalidInput) as err:
        validate_spec(data)
    assert err.value.field == "entrypoint.1"
    data = json.loads('{"name": "s", "entrypoint": ["python"], "env": {"U_A": "\\udfff"}}')
    with pytest.raises(InvalidInput) as err:
        validate_spec(data)
    assert (err.value.field or "").startswith("env")


def test_nul_in_the_experiment_is_refused_naming_the_field() -> None:
    """tracking.experiment reaches the batch script as HAIHE_EXPERIMENT: a NUL must be refused at validation,
    naming the field, not at render time as 'command' (the property above finds this by chance; this pins it)."""
    with pytest.raises(InvalidInput) as err:
        validate_spec({"name": "s", "entrypoint": ["python"], "tracking": {"experiment": "a\x00b"}})
    assert err.value.field == "tracking.experiment"


def test_known_payloads_each_run_literally() -> None:
    """Every payload, alone, as an argument and an env value under each Slurm launcher: byte-identical."""
    with _sandbox() as tmp:
        root = Path(tmp)
        recorder = _install_stubs(root) / "recorder"
        ctx = RenderContext(job_id="payload-job", org="acme", project="vision", user="ada", node_python=str(recorder))
        for launcher in ("none", "torchrun", "mpi"):
            for payload in PAYLOADS + [n for n in NASTY if n != "\x00"]:
                spec = validate_spec({"name": "p", "launcher": launcher, "entrypoint": [payload, "x"],
                                      "env": {"U_P": payload}})
                launch = render_launch(spec, ctx)
                (root / "job.sbatch").write_text(render_script(launch, slurm_options(launch, jobs_dir=str(root))))
                args, env, _ = _run(root, ["bash", str(root / "job.sbatch")])
                _no_pwned(root)
                assert args[-3:] == ["--", payload, "x"] and env["U_P"] == payload, (launcher, payload)


# --- 2. dataset object names -------------------------------------------------------------------------------------

SEGMENTS = ["..", ".", "", "%2e%2e", "%2E%2E", "..%2f", "\\", "..\\..", "\x00", "\n", "manifest.json", "_uploads",
            "v1", "a" * 300, "天津", "ü", "\u202e", " ", "~", "$(x)", "C:", "\ufeff", "\u2024\u2024", "．．"]
object_path = st.one_of(
    st.lists(st.one_of(st.sampled_from(SEGMENTS), st.text(_chars, max_size=12)), min_size=1, max_size=6).map("/".join),
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4).map(lambda s: "/" + "/".join(s)),
    st.lists(st.sampled_from([*SEGMENTS, "x"]), min_size=1, max_size=4).map(lambda s: "/".join(s) + "/"),
    st.text(_chars, max_size=1100),
)


plain_segment = st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=16)
plain_path = st.lists(plain_segment, min_size=1, max_size=5).map("/".join)
mixed_path = st.lists(st.one_of(plain_segment, st.sampled_from(SEGMENTS)), min_size=1, max_size=5).map("/".join)
object_path = st.one_of(plain_path, mixed_path, object_path)


@st.composite
def dataset_cases(draw: Any) -> tuple[Any, Any, Any, str]:
    """One hostile part at a time (a hostile org would hide what the path check does)."""
    target = draw(st.sampled_from(["path"] * 6 + ["org", "dataset", "version"]))
    org = draw(hostile) if target == "org" else draw(valid_name)
    dataset = draw(hostile) if target == "dataset" else draw(valid_name)
    version = draw(st.one_of(st.integers(-5, 0), st.just(True), st.just(10**9), st.just("1"))) \
        if target == "version" else draw(st.integers(1, 10**9 - 1))
    return org, dataset, version, draw(object_path)


@SETTINGS
@given(case=dataset_cases())
def _dataset_key_property(case: tuple[Any, Any, Any, str]) -> None:
    org, dataset, version, path = case
    tally = TALLY.setdefault("datasets", Tally())
    tally.examples += 1
    try:
        key = layout.file_key(org, dataset, version, path)
    except InvalidInput as exc:
        tally.refused += 1
        assert exc.field in ("org", "dataset", "version", "path"), exc.field
        return
    tally.ran += 1
    prefix = f"{org}/{dataset}/v{version}/"
    assert key.startswith(prefix) and len(key) > len(prefix)
    rest = key[len(prefix):]
    assert rest == path
    assert posixpath.normpath(key) == key, "the key is not normalised"  # no '.', '..', '//' or trailing '/'
    assert not rest.startswith("/") and "\\" not in rest and "\x00" not in rest
    assert len(key.encode("utf-8")) <= layout.MAX_KEY_BYTES
    assert rest != layout.MANIFEST_NAME
    assert layout.parse_version_dir(key.split("/")[2]) == version
    # a staged copy lands under the mount, never beside it
    mount = "/data/ds"
    assert posixpath.normpath(posixpath.join(mount, rest)).startswith(mount + "/")


def test_dataset_object_names_stay_inside_their_prefix(figures: Figures) -> None:
    TALLY.pop("datasets", None)
    _dataset_key_property()
    t = TALLY["datasets"]
    assert t.ran > 0 and t.refused > 0, t
    figures.record("test_dataset_object_names_stay_inside_their_prefix",
                   "hypothesis: '..', absolute, NUL, backslash, %2e%2e, long, unicode, trailing-slash object names",
                   {"examples": t.examples, "refused_naming_field": t.refused, "accepted_inside_prefix": t.ran,
                    "failures": 0})


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "a\\..\\b", "a\x00b", "a/",
                                  "./a", "manifest.json", "a/" + "b" * 256, "x" * 1000])
def test_known_escapes_are_refused_naming_the_path(path: str) -> None:
    with pytest.raises(InvalidInput) as err:
        layout.file_key("acme", "images", 1, path)
    assert err.value.field == "path"


def test_percent_encoded_dots_are_plain_names() -> None:
    """``%2e%2e`` is not decoded by the layout (S3 keys are not URLs): it stays a literal name inside the prefix."""
    assert layout.file_key("acme", "images", 2, "%2e%2e/x") == "acme/images/v2/%2e%2e/x"


# --- 3. gateway payloads ---------------------------------------------------------------------------------------


def _deep(depth: int) -> Any:
    value: Any = 1.0
    for _ in range(depth):
        value = [value]
    return value


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                      st.text(_chars, max_size=20), st.integers(min_value=10**20, max_value=10**400),
                      st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, -0.0, 2**63, -(2**63) - 1]))
json_any = st.recursive(json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                          st.dictionaries(st.text(_chars, max_size=8), kids,
                                                                          max_size=4)), max_leaves=20)
datatype = st.sampled_from(["FP32", "FP64", "FP16", "INT64", "INT32", "INT16", "INT8", "UINT8", "BOOL", "BYTES",
                            "fp32", "STRING", ""])
shape = st.one_of(st.lists(st.integers(-3, 5), max_size=4), st.lists(st.integers(-(2**70), 2**70), max_size=9),
                  json_any)
tensor = st.fixed_dictionaries({"name": st.one_of(st.text(_chars, max_size=10), json_any), "shape": shape,
                                "datatype": st.one_of(datatype, json_any),
                                "data": st.one_of(st.lists(json_leaf, max_size=12), json_any,
                                                  st.integers(0, 900).map(_deep))},
                               optional={"parameters": json_any, "extra": json_any})
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70),
                    st.sampled_from([float("nan"), float("inf"), 1e308, -0.0, 2**63, 10**30, True]))


@st.composite
def good_tensor(draw: Any) -> dict[str, Any]:
    """Well-shaped tensors whose numbers are hostile (NaN, inf, out of the dtype's range)."""
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    flat = draw(st.lists(numbers, min_size=rows * cols, max_size=rows * cols))
    nested = [flat[i * cols:(i + 1) * cols] for i in range(rows)]
    dtype = draw(st.sampled_from(["FP32", "FP64", "FP16", "INT64", "INT32", "INT16", "INT8", "UINT8", "BOOL"]))
    return {"name": draw(st.text(_chars, max_size=10)), "shape": [rows, cols], "datatype": dtype,
            "data": draw(st.sampled_from([flat, nested]))}


oip_body = st.one_of(st.fixed_dictionaries({"inputs": st.lists(good_tensor(), min_size=1, max_size=1)},
                                           optional={"id": st.text(_chars, max_size=300)}),
                     st.fixed_dictionaries({"inputs": st.one_of(st.lists(tensor, max_size=2), json_any)},
                                           optional={"id": json_any, "outputs": json_any, "parameters": json_any}),
                     json_any)
emb_body = st.one_of(
    st.fixed_dictionaries({"model": st.just("emb"), "input": st.one_of(
        hostile, st.lists(hostile, min_size=1, max_size=4), st.just("x" * 3_000_000))},
        optional={"encoding_format": st.sampled_from(["float", "base64"]), "dimensions": st.integers(1, 3)}),
    st.fixed_dictionaries({"model": st.one_of(st.just("emb"), json_any),
                           "input": st.one_of(st.text(_chars, max_size=50), st.lists(st.text(_chars, max_size=10),
                                                                                     max_size=5), json_any,
                                              st.just("x" * 3_000_000), st.integers(0, 900).map(_deep))},
                          optional={"encoding_format": st.one_of(st.sampled_from(["float", "base64"]), json_any),
                                    "dimensions": st.one_of(st.integers(-5, 10**30), json_any),
                                    "user": json_any}),
    json_any)


@dataclasses.dataclass
class Gateway:
    client: TestClient
    key: dict[str, str]


class _AnyShapeRuntime(FakeRuntime):
    """The unit fake doubles rows it can iterate; a 1-d tensor's rows are scalars, which the real servers take."""

    async def infer(self, target: str, rows: list[Any], timeout_s: float) -> list[Any]:
        return await super().infer(target, [r if isinstance(r, str) else np.asarray(r).reshape(-1) for r in rows],
                                   timeout_s)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from haihe.platform.gateway.config import GatewayConfig
    from haihe.platform.gateway.hub import EndpointsHub
    from haihe.server import create_app
    from tests.fixtures.platform import Tenancy, bearer, make_settings
    from tests.unit.endpoint_fakes import FakeZoo

    db = tmp_path_factory.mktemp("gw") / "haihe.db"
    app = create_app(make_settings(f"sqlite:///{db}", schedulers={"ray": "ray://127.0.0.1:9"},
                                   reconcile_interval_s=0, mlflow_url="http://127.0.0.1:9"))
    runtime, zoo = _AnyShapeRuntime(), FakeZoo()
    zoo.add("acme-models/digits", "image-classification", [1], aliases={"production": 1})
    zoo.add("public/minilm-l6", "text-embedding", [1], aliases={"production": 1})
    with TestClient(app) as client:
        hub = EndpointsHub(app.state.ctx, GatewayConfig(auth_cache_s=60, drain_s=0, rate_per_s=10**6, burst=10**6),
                           runtimes={"ray": runtime}, zoo=zoo)
        app.state.endpoints = hub
        t = Tenancy(client).bootstrap()
        org = t.org()
        for name, model in (("digits", "acme-models/digits@production"), ("emb", "public/minilm-l6@production")):
            r = client.post(f"/api/v1/orgs/{org}/endpoints", json={"name": name, "model": model},
                            headers=t.admin_headers)
            assert r.status_code == 202, r.text
        for _ in range(3):
            hub.supervise_once()
        key = t.key(org, t.admin_headers, username=t.user(org, role="service_account"), scopes=["inference"])
        yield Gateway(client, bearer(key))


def _post_json(gw: Gateway, path: str, body: Any) -> Any:
    # allow_nan: NaN/Infinity are what careless clients really send; the server must not choke on them
    raw = json.dumps(body, allow_nan=True).encode()
    return gw.client.post(path, content=raw, headers={**gw.key, "content-type": "application/json"})


def _err(r: Any) -> dict[str, Any]:
    """The error of an answer as {code, message, field}: the platform's envelope, or OIP's string error on /v2."""
    body = r.json()
    err = body["error"]
    if isinstance(err, str):  # OIP v2: {"error": "<message>", "code": ..., "field": ...}
        return {"code": body.get("code"), "message": err, "field": body.get("field")}
    assert isinstance(err, dict), body
    return err


def _check_answer(r: Any, tally: Tally) -> None:
    assert r.status_code < 500, f"{r.status_code}: {r.text[:300]}"
    tally.examples += 1
    if r.status_code >= 400:
        tally.refused += 1
        err = _err(r)
        assert err["code"] and err["message"]
        if r.status_code == 422:
            assert err.get("field"), err
        if r.status_code == 400 and not err.get("field"):
            # FastAPI's own "error parsing the body" (e.g. JSON nested past the decoder's recursion limit)
            tally.unnamed_400 += 1
    else:
        tally.ran += 1


@SETTINGS
@given(body=oip_body, endpoint=st.one_of(st.just("digits"), st.just("digits"), st.text(_chars, min_size=1,
                                                                                          max_size=20)))
def _oip_property(gw: Gateway, body: Any, endpoint: str) -> None:
    from urllib.parse import quote

    _check_answer(_post_json(gw, f"/v2/models/{quote(endpoint, safe='')}/infer", body),
                  TALLY.setdefault("gateway", Tally()))


@SETTINGS
@given(body=emb_body)
def _embeddings_property(gw: Gateway, body: Any) -> None:
    _check_answer(_post_json(gw, "/v1/embeddings", body), TALLY.setdefault("gateway", Tally()))


def test_hostile_inference_payloads_never_5xx(gateway: Gateway, figures: Figures) -> None:
    TALLY.pop("gateway", None)
    r = _post_json(gateway, "/v2/models/digits/infer",
                   {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]})
    assert r.status_code == 200, r.text  # the seam is live: well-formed requests are served
    try:
        _oip_property(gateway)
        _embeddings_property(gateway)
    except Exception:
        t = TALLY["gateway"]
        figures.record("test_hostile_inference_payloads_never_5xx", "hypothesis: hostile inference bodies",
                       {"examples": t.examples, "failures": 1}, "failed")
        raise
    t = TALLY["gateway"]
    assert t.refused > 0 and t.ran > 0, t
    figures.record("test_hostile_inference_payloads_never_5xx",
                   "hypothesis: nested, huge-number, NaN, wrong-type, giant-string bodies to OIP infer and "
                   "/v1/embeddings (fake runtime)",
                   {"examples": t.examples, "refused_4xx": t.refused, "served": t.ran,
                    "400_without_field": t.unnamed_400, "failures": 0})


@pytest.mark.parametrize("path", ["/v2/models/digits/infer", "/v1/embeddings"])
def test_json_nested_past_any_parser_limit_is_a_4xx(gateway: Gateway, path: str) -> None:
    """100 000 levels of nesting (built as text: no encoder would write it) is refused, not a crash."""
    depth = 100_000
    raw = ('{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": ' + "[" * depth + "1" + "]" * depth
           + "}]}").encode()
    r = gateway.client.post(path, content=raw, headers={**gateway.key, "content-type": "application/json"})
    assert 400 <= r.status_code < 500 and _err(r)["code"], r.text[:300]


@pytest.mark.parametrize("body,field", [
    ({"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1.0]}]}, "inputs.0.data"),
    ({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": []}]}, "inputs.0.shape"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": ["a"]}]}, "inputs.0.data"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "INT8", "data": [10**30]}]}, "inputs.0.data"),
    ({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [_deep(200)]}]}, "inputs.0.data"),
    ({"inputs": "nope"}, "inputs"),
])
def test_bad_tensors_name_their_field(gateway: Gateway, body: dict[str, Any], field: str) -> None:
    r = _post_json(gateway, "/v2/models/digits/infer", body)
    assert r.status_code in (400, 422), r.text
    assert _err(r)["field"].startswith(field), r.json()


# --- 4. portal template injection ------------------------------------------------------------------------------

# ZQ…QZ marks where a payload sits, so "evaluated" is checked right there and not anywhere in the page
INJECTIONS = ["ZQ{{7*7}}QZ", "{% raw %}x{% endraw %}", "<script>alert(1)</script>", '"><img src=x onerror=alert(1)>',
              "javascript:alert(1)", "ZQ${7*7}QZ", "ZQ#{7*7}QZ", "{{ config }}", "</textarea><svg onload=alert(1)>"]
HOSTILE_TEXT = " ".join(INJECTIONS)


def _assert_inert(html: str, where: str) -> None:
    assert "<script>alert" not in html, where
    assert "<img src=x onerror" not in html and "<svg onload" not in html, where
    assert not re.search(r"""href\s*=\s*["']?\s*javascript:""", html, re.I), where
    assert "ZQ49QZ" not in html, f"{where}: a stored template was evaluated"


def test_hostile_names_render_inert_in_the_portal(tmp_path: Path, figures: Figures) -> None:
    from tests.browser.portal_support import make_portal

    portals = make_portal(tmp_path)
    portal = next(portals)
    try:
        t = portal.tenancy
        client = t.client
        admin = t.admin_headers
        # free text where the API allows it: org display name, project description, user display name, key name,
        # and a job's entrypoint/env/experiment (shown on the job page as its spec)
        org = "org-hostile"
        r = client.post("/api/v1/orgs", json={"name": org, "display_name": HOSTILE_TEXT[:200]}, headers=admin)
        assert r.status_code == 201, r.text
        project = "p-hostile"
        r = client.post(f"/api/v1/orgs/{org}/projects", json={"name": project, "description": HOSTILE_TEXT},
                        headers=admin)
        assert r.status_code == 201, r.text
        user = "hostile-user"
        r = client.post(f"/api/v1/orgs/{org}/users", json={"username": user, "role": "org_admin",
                                                          "password": "correct-horse-battery",
                                                          "display_name": HOSTILE_TEXT[:200]}, headers=admin)
        assert r.status_code == 201, r.text
        hdr = t.login(user)
        r = client.post("/api/v1/keys", json={"org": org, "name": HOSTILE_TEXT[:100]}, headers=hdr)
        assert r.status_code == 201, r.text
        for bad_name in INJECTIONS:  # names are restricted: every one of these is refused, naming the field
            r = client.post(f"/api/v1/orgs/{org}/projects", json={"name": bad_name}, headers=admin)
            assert r.status_code == 422 and r.json()["error"]["field"] == "name", r.text
        spec = {"name": "hostile-job", "project": project, "entrypoint": ["python", *INJECTIONS],
                "env": {"U_X": HOSTILE_TEXT}, "tracking": {"experiment": INJECTIONS[0]}}
        r = client.post(f"/api/v1/orgs/{org}/projects/{project}/jobs", json={"spec": spec}, headers=hdr)
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        browser = portal.browser(user)
        pages = ["/", "/jobs", f"/jobs/{job_id}", "/datasets", "/endpoints"]  # /models needs an MLflow
        admin_browser = portal.browser("root")
        admin_pages = ["/admin", f"/admin/orgs/{org}", "/admin/users", "/admin/audit"]
        shown = 0
        for who, paths in ((browser, pages), (admin_browser, admin_pages)):
            for path in paths:
                page = who.get(path)
                assert page.status_code == 200, (path, page.status_code)
                _assert_inert(page.text, path)
                shown += page.text.count("ZQ{{7*7}}QZ")
        job_page = browser.get(f"/jobs/{job_id}").text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in job_page or "&lt;script&gt;" in job_page
        assert "ZQ{{7*7}}QZ" in job_page
        org_page = admin_browser.get(f"/admin/orgs/{org}").text
        assert "ZQ{{7*7}}QZ" in org_page
        assert shown > 0
        figures.record("test_hostile_names_render_inert_in_the_portal",
                       "template/HTML/JS-URL payloads stored as descriptions, display names, key names, job argv/env",
                       {"pages_checked": len(pages) + len(admin_pages), "payloads": len(INJECTIONS), "failures": 0,
                        "times_shown_escaped": shown, "evaluated": 0})
    finally:
        next(portals, None)  # runs the fixture's clean-up (the app's lifespan exits)
