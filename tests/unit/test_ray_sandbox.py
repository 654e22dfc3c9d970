"""The Ray job sandbox's command line (pure), its place in the entrypoint, and the per-org Ray policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from haihe.errors import InvalidInput, PermissionDenied
from haihe.jobs.spec import JobSpec
from haihe.platform.jobs import ray_policy
from haihe.platform.settings import Settings
from haihe.schedulers.base import Launch, Launcher, Resources
from haihe.schedulers.ray import translate
from haihe.schedulers.ray.backend import sandbox_option
from haihe.schedulers.ray.sandbox import SandboxPaths, bwrap_argv, job_dir_name, parse_args

STATE = Path("/root/.local/share/haihe")
SESSION = Path("/tmp/haihe-ray-abc/r/session_1")
WORK = SESSION / "haihe_jobs" / "job-1"
CWD = SESSION / "runtime_resources/working_dir_files/_ray_pkg_1"


def _argv(**kw: object) -> list[str]:
    paths = SandboxPaths(work_dir=WORK, mount_at=CWD, runtime=(Path("/venv"), Path("/root/.pyenv/versions/3.11.7"),
                                                               Path("/src/haihe"), Path("/usr/lib/python3")), **kw)  # type: ignore[arg-type]
    return bwrap_argv("job-1", paths, ["python", "train.py"], links=())


def _pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


def test_private_tmp_pid_ipc_and_dies_with_parent() -> None:
    argv = _argv()
    assert argv[0] == "bwrap"
    for flag in ("--unshare-pid", "--unshare-ipc", "--die-with-parent"):
        assert flag in argv
    assert "--unshare-net" not in argv and "--unshare-all" not in argv  # MLflow proxy, S3, GCS stay reachable
    assert argv[argv.index("--tmpfs") + 1] == "/tmp"
    assert argv[argv.index("--proc") + 1] == "/proc"
    assert argv[-3:] == ["--", "python", "train.py"]


def test_only_the_job_work_dir_is_writable_and_it_is_the_cwd() -> None:
    argv = _argv()
    assert _pairs(argv, "--bind") == [(str(WORK), str(CWD))]
    assert argv[argv.index("--chdir") + 1] == str(CWD)
    ro = dict(_pairs(argv, "--ro-bind"))
    assert ro == {"/venv": "/venv", "/root/.pyenv/versions/3.11.7": "/root/.pyenv/versions/3.11.7",
                  "/src/haihe": "/src/haihe"}  # /usr/lib/python3 comes with /usr
    assert ("/usr", "/usr") in _pairs(argv, "--ro-bind-try")


def test_state_dir_session_dir_and_root_are_never_bound() -> None:
    argv = _argv()
    sources = [src for flag in ("--bind", "--ro-bind", "--ro-bind-try", "--dev-bind")
               for src, _ in _pairs(argv, flag)]
    for src in sources:
        p = Path(src)
        assert p != Path("/") and p != Path("/root") and p != Path("/tmp")
        assert not (p == STATE or STATE in p.parents or p in STATE.parents)
        assert p == WORK or SESSION not in p.parents, f"{src} exposes the Ray session dir"


def test_ray_client_gets_the_sockets_read_only_logs_private_and_node_id() -> None:
    argv = _argv(ray_sockets=SESSION / "sockets", ray_logs=SESSION / "logs", ray_node_id="n1")
    assert (str(SESSION / "sockets"), str(SESSION / "sockets")) in _pairs(argv, "--ro-bind")
    assert str(SESSION / "logs") in [argv[i + 1] for i, a in enumerate(argv) if a == "--tmpfs"]
    assert ("HAIHE_RAY_NODE_ID", "n1") in _pairs(argv, "--setenv")
    assert ("HOME", str(CWD)) in _pairs(argv, "--setenv")


def test_job_dir_name_cannot_escape() -> None:
    assert job_dir_name("../../etc") == "etc"
    assert "/" not in job_dir_name("a/b/../c")
    assert job_dir_name("..") == "job"


def test_parse_args_needs_a_command() -> None:
    ns = parse_args(["--job", "t", "--ray-client", "--", "echo", "hi"])
    assert (ns.job, ns.ray_client, ns.command) == ("t", True, ["echo", "hi"])
    with pytest.raises(SystemExit):
        parse_args(["--job", "t", "--"])


def test_entrypoint_runs_inside_the_sandbox_within_the_timeout() -> None:
    plain = Launch(tag="tag-1", name="n", command=("echo", "hi"), resources=Resources(time_limit_min=1))
    line = translate.entrypoint(plain)
    assert line == "exec timeout --kill-after=30s 60s python -m haihe.schedulers.ray.sandbox --job tag-1 -- echo hi"
    train = Launch(tag="tag-2", name="n", command=("toy.py",), launcher=Launcher.RAY_TRAIN)
    assert "sandbox --job tag-2 --ray-client -- python -m haihe.schedulers.ray.train_launcher" in (
        translate.entrypoint(train))
    assert "sandbox" not in translate.entrypoint(plain, sandbox=False)


def test_sandbox_option_in_the_url() -> None:
    assert sandbox_option("ray://h:8265") is True
    assert sandbox_option("ray://h:8265?sandbox=off") is False
    with pytest.raises(InvalidInput):
        sandbox_option("ray://h:8265?sandbox=maybe")


# ---- the per-org policy ----
def _settings(**kw: object) -> Settings:
    return Settings(schedulers={"ray": "ray://127.0.0.1:8265", "slurm": "slurm+cli://",
                                "ray-acme": "ray://10.0.0.5:8265"}, **kw)  # type: ignore[arg-type]


OWN = JobSpec.model_validate({"name": "j", "entrypoint": "python x.py"})
RECIPE = JobSpec.model_validate({"name": "j", "recipe": "digits-cnn"})


def test_every_org_may_run_its_code_on_shared_ray_by_default() -> None:
    assert ray_policy.route(_settings(), "ray", "beta", OWN) == "ray"


def test_recipes_only_org_gets_403_naming_the_field() -> None:
    s = _settings(ray_shared_code_orgs="acme, gamma")
    assert ray_policy.route(s, "ray", "gamma", OWN) == "ray"
    assert ray_policy.route(s, "ray", "beta", RECIPE) == "ray"
    assert ray_policy.route(s, "slurm", "beta", OWN) == "slurm"  # Slurm jobs run as the user's own account
    with pytest.raises(PermissionDenied) as info:
        ray_policy.route(s, "ray", "beta", OWN)
    assert info.value.status == 403 and info.value.field == "entrypoint"
    with pytest.raises(PermissionDenied):
        ray_policy.route(_settings(ray_shared_code_orgs=""), "ray", "acme", OWN)


def test_an_org_with_its_own_cluster_goes_there_and_no_one_else_may() -> None:
    s = _settings(ray_org_clusters={"acme": "ray-acme"}, ray_shared_code_orgs="")
    assert ray_policy.route(s, "ray", "acme", OWN) == "ray-acme"
    assert ray_policy.route(s, "ray-acme", "acme", OWN) == "ray-acme"
    with pytest.raises(PermissionDenied) as info:
        ray_policy.route(s, "ray-acme", "beta", RECIPE)
    assert info.value.field == "scheduler"


def test_org_cluster_must_name_a_ray_scheduler() -> None:
    with pytest.raises(ValueError, match="ray_org_clusters"):
        _settings(ray_org_clusters={"acme": "slurm"})
