"""Issue 19, the parts with no cluster: the spec's ``environment:``, the builder's cache and errors (uv behind a
seam), what the platform keeps from a node's report, and a resubmit that installs exactly the first run's lock."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from haihe.errors import InvalidInput
from haihe.jobs.runtime import environment as envs
from haihe.jobs.runtime.contract import EnvironmentBuildError, ExitCode, RuntimeEnv, exit_code_for
from haihe.jobs.spec import validate_spec
from tests.unit.test_jobs_service import Env, make_env


@pytest.fixture
def jobs(tmp_path: Path) -> Iterator[Env]:
    yield from make_env(tmp_path)


BASE = {"name": "env-job", "entrypoint": ["python", "-c", "import sklearn"]}


# ---- the spec ----
@pytest.mark.parametrize(("environment", "needle"), [
    ({"pip": ["-e ."]}, "options"),
    ({"pip": ["--index-url=http://evil/simple", "x"]}, "options"),
    ({"pip": ["numpy\n--extra-index-url http://evil"]}, "line breaks"),
    ({"pip": ["scikit-learn==="]}, "not a requirement"),
    ({"pip": ["a"], "lock": "uv.lock.txt"}, "exactly one"),
    ({}, "exactly one"),
    ({"requirements": "/etc/passwd"}, "relative path"),
    ({"lock": "../other/lock.txt"}, "relative path"),
    ({"conda": ["numpy"]}, "unknown field"),
])
def test_bad_environments_are_refused_naming_the_field(environment: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidInput) as info:
        validate_spec({**BASE, "environment": environment})
    assert info.value.field is not None and info.value.field.startswith("environment"), info.value.field
    assert needle in info.value.message, info.value.message


def test_an_environment_with_ray_train_is_refused_in_words() -> None:
    with pytest.raises(InvalidInput) as info:
        validate_spec({**BASE, "launcher": "ray_train", "environment": {"pip": ["numpy"]}})
    assert "ray_train" in info.value.message


def test_a_good_environment_is_kept() -> None:
    spec = validate_spec({**BASE, "environment": {"pip": [" scikit-learn==1.5.2 ", "numpy<3; python_version>'3'"]}})
    assert spec.environment is not None and spec.environment.pip == ["scikit-learn==1.5.2",
                                                                     "numpy<3; python_version>'3'"]


# ---- the builder (uv behind the runner seam) ----
class FakeUv:
    def __init__(self, fail: str = "") -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, argv: Sequence[str], stdin: str | None, environ: Mapping[str, str]) -> tuple[int, str, str]:
        argv = list(argv)
        self.calls.append(argv)
        assert environ["UV_CACHE_DIR"].endswith(".uv-cache") and environ["UV_PYTHON_DOWNLOADS"] == "never"
        if argv[1:3] == ["pip", "compile"]:
            if self.fail:
                return 1, "", ("  × No solution found when resolving dependencies:\n  ╰─▶ Because "
                               f"{self.fail} was not found in the package registry and you require {self.fail}, "
                               "we can conclude that your requirements are unsatisfiable.")
            assert stdin is not None
            return 0, "".join(f"{line.strip()}\n" for line in stdin.splitlines() if line.strip()), ""
        if argv[1] == "venv":
            prefix = Path(argv[2])
            (prefix / "bin").mkdir(parents=True)
            (prefix / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
            return 0, "", ""
        if argv[1:3] == ["pip", "sync"]:
            assert Path(argv[3]).is_file()
            return 0, "", ""
        raise AssertionError(argv)


def test_the_first_job_builds_the_second_reuses_without_resolving(tmp_path: Path) -> None:
    uv = FakeUv()
    builder = envs.Builder(tmp_path / "envs", python="/usr/bin/python3", uv="uv", runner=uv,
                           site_dirs=["/opt/platform/site-packages"])
    first = builder.prepare(envs.Request(pip=("scikit-learn==1.5.2",)))
    assert not first.cached and first.ref.startswith("sha256:") and len(first.ref) == 71
    assert [c[1] for c in uv.calls] == ["pip", "venv", "pip"]  # compile, venv, sync: argv lists, no shell
    pth = next(first.prefix.glob("lib/python*/site-packages")) / envs.PTH_FILE
    assert "site.addsitedir('/opt/platform/site-packages')" in pth.read_text()  # the platform, last on the path
    assert (first.prefix / envs.LOCK_FILE).read_text() == "scikit-learn==1.5.2\n"
    uv.calls.clear()
    second = builder.prepare(envs.Request(pip=("scikit-learn==1.5.2",)))
    assert second.cached and second.ref == first.ref and second.prefix == first.prefix
    assert uv.calls == []  # neither resolved nor installed again
    # a resubmit hands the lock itself: the same environment, no resolution
    again = builder.prepare(envs.Request(locked=first.lock))
    assert again.ref == first.ref and uv.calls == []


def test_a_package_that_does_not_exist_is_named_and_leaves_nothing(tmp_path: Path) -> None:
    builder = envs.Builder(tmp_path / "envs", python="/usr/bin/python3", uv="uv",
                           runner=FakeUv(fail="haihe-no-such-pkg-zz"), site_dirs=[])
    with pytest.raises(EnvironmentBuildError) as info:
        builder.prepare(envs.Request(pip=("haihe-no-such-pkg-zz==1.0", "numpy")))
    assert "for haihe-no-such-pkg-zz:" in info.value.message and "numpy," not in info.value.message
    assert exit_code_for(info.value) == ExitCode.ENVIRONMENT
    assert not [p for p in (tmp_path / "envs").iterdir() if p.is_dir() and p.name != "requests"]


def test_a_lock_file_must_be_inside_the_code(tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "uv.lock.txt").write_text("numpy==2.0.0\n")
    (tmp_path / "secret.txt").write_text("x\n")
    uv = FakeUv()
    builder = envs.Builder(tmp_path / "envs", python="/usr/bin/python3", uv="uv", runner=uv, site_dirs=[])
    prepared = builder.prepare(envs.Request(lock="uv.lock.txt"), code)
    assert prepared.lock == "numpy==2.0.0\n" and not any(c[1:3] == ["pip", "compile"] for c in uv.calls)
    with pytest.raises(InvalidInput):
        builder.prepare(envs.Request(lock="../secret.txt"), code)


def test_activation_puts_the_environment_first_and_names_its_ref(tmp_path: Path) -> None:
    p = envs.Prepared(tmp_path / "e", "sha256:" + "a" * 64, "x==1\n", 0.0, True)
    active = envs.activate({"PATH": "/usr/bin", "PYTHONHOME": "/bad", "PYTHONPATH": "/code"}, p)
    assert active["PATH"].split(":")[0] == str(tmp_path / "e" / "bin") and "PYTHONHOME" not in active
    assert active["PYTHONPATH"] == "/code" and active["HAIHE_ENVIRONMENT_REF"] == p.ref
    tags = RuntimeEnv.from_environ({**active, "HAIHE_CACHE_DIR": str(tmp_path)}).tags()
    assert tags["haihe.environment"] == p.ref


# ---- the platform: render, report, resubmit ----
def test_the_job_gets_its_request_reports_it_and_a_resubmit_installs_the_same_lock(jobs: Env) -> None:
    spec = {**BASE, "environment": {"pip": ["scikit-learn==1.5.2"]}}
    job = jobs.submit(spec)
    launch = jobs.fake.jobs[str(job["native_id"])].launch
    assert json.loads(launch.env["HAIHE_ENVIRONMENT"]) == {"pip": ["scikit-learn==1.5.2"]}
    url = launch.env["HAIHE_ENVIRONMENT_URL"]
    assert url.endswith(f"/api/v1/jobs/{job['id']}/environment")
    token = launch.env["HAIHE_JOB_TOKEN"]
    path = url[url.index("/api/"):]
    ref = "sha256:" + "b" * 64
    lock = "scikit-learn==1.5.2\nnumpy==2.4.6\n"
    # the route takes the job's own token only
    assert jobs.client.post(path, json={"ref": ref, "lock": lock}).status_code == 401
    assert jobs.client.post(path, json={"ref": ref, "lock": lock}, headers=jobs.user).status_code == 401
    other = jobs.submit(spec)
    other_token = jobs.fake.jobs[str(other["native_id"])].launch.env["HAIHE_JOB_TOKEN"]
    assert jobs.client.post(path, json={"ref": ref, "lock": lock},
                           headers={"Authorization": f"Bearer {other_token}"}).status_code == 401
    bad = jobs.client.post(path, json={"ref": "sha256:zz", "lock": lock}, headers={"Authorization": f"Bearer {token}"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "ref"
    r = jobs.client.post(path, json={"ref": ref, "lock": lock, "seconds": 12.5, "cached": False, "node": "gn1"},
                        headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    r = jobs.client.post(path, json={"ref": ref, "lock": lock, "seconds": 0.01, "cached": True, "node": "gn2"},
                        headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    assert jobs.job(job["id"])["environment_ref"] == ref
    events = jobs.client.get(f"/api/v1/jobs/{job['id']}/events", headers=jobs.user).json()
    said = [e["message"] for e in events if e["kind"] == "environment"]
    assert any("built in 12.5 s on gn1" in m for m in said) and any("reused (cached) on gn2" in m for m in said)
    again = jobs.client.post(f"/api/v1/jobs/{job['id']}/resubmit", headers=jobs.user)
    assert again.status_code == 201, again.text
    assert again.json()["environment_ref"] == ref
    relaunch = jobs.fake.jobs[str(again.json()["native_id"])].launch
    assert json.loads(relaunch.env["HAIHE_ENVIRONMENT"]) == {"locked": lock}


def test_a_failed_build_is_on_the_timeline(jobs: Env) -> None:
    job = jobs.submit({**BASE, "environment": {"pip": ["haihe-no-such-pkg-zz"]}})
    launch = jobs.fake.jobs[str(job["native_id"])].launch
    url = launch.env["HAIHE_ENVIRONMENT_URL"]
    r = jobs.client.post(url[url.index("/api/"):], json={"error": "resolving failed for haihe-no-such-pkg-zz",
                                                        "node": "gn1"},
                        headers={"Authorization": f"Bearer {launch.env['HAIHE_JOB_TOKEN']}"})
    assert r.status_code == 200, r.text
    events = jobs.client.get(f"/api/v1/jobs/{job['id']}/events", headers=jobs.user).json()
    assert any(e["kind"] == "environment_failed" and "haihe-no-such-pkg-zz" in e["message"] for e in events)
    assert jobs.job(job["id"])["environment_ref"] is None
    from haihe.schedulers.base import JobState

    jobs.fake.set(str(job["native_id"]), JobState.FAILED, exit_code=9, reason="NonZeroExitCode")
    jobs.reconciler.run_once()
    ended = jobs.job(job["id"])
    assert ended["state"] == "FAILED" and "haihe-no-such-pkg-zz" in ended["reason"], ended  # not NonZeroExitCode


def test_a_requirements_file_needs_the_jobs_code(jobs: Env) -> None:
    r = jobs.client.post(f"/api/v1/orgs/{jobs.org}/projects/{jobs.project}/jobs",
                        json={"spec": {**BASE, "environment": {"requirements": "requirements.txt"}}}, headers=jobs.user)
    assert r.status_code == 422 and r.json()["error"]["field"] == "environment.requirements", r.text
    assert jobs.count_jobs() == 0


# ---- container images ----
def test_an_image_needs_an_entrypoint_and_a_sane_reference() -> None:
    with pytest.raises(InvalidInput) as info:
        validate_spec({"name": "x", "recipe": "digits-cnn", "environment": {"image": "localhost/lab:1"}})
    assert "entrypoint" in info.value.message
    with pytest.raises(InvalidInput) as info:
        validate_spec({**BASE, "environment": {"image": "--privileged"}})
    assert info.value.field == "environment.image"
    with pytest.raises(InvalidInput):
        validate_spec({**BASE, "environment": {"image": "ok:1 ; rm -rf /"}})
    spec = validate_spec({**BASE, "environment": {"image": "oci-archive:/shared/images/lab.tar"}})
    assert spec.environment is not None and spec.environment.image == "oci-archive:/shared/images/lab.tar"


def test_images_are_refused_where_the_site_runs_none(jobs: Env) -> None:
    r = jobs.client.post(f"/api/v1/orgs/{jobs.org}/projects/{jobs.project}/jobs",
                        json={"spec": {**BASE, "environment": {"image": "localhost/lab:1"}}}, headers=jobs.user)
    assert r.status_code == 422 and r.json()["error"]["field"] == "environment.image", r.text
    assert "HAIHE_CONTAINER_RUNTIME" in r.json()["error"]["message"] and jobs.count_jobs() == 0


def test_podman_command_line_binds_the_job_and_hides_its_variables(tmp_path: Path) -> None:
    from haihe.jobs.runtime import container as containers

    cfg = containers.ContainerConfig.parse(json.dumps({"runtime": "podman", "args": [
        "--runtime", "runc", "run", "--ulimit", "nproc=4096:4096"]}))
    assert cfg.global_args == ("--runtime", "runc") and cfg.run_args == ("--ulimit", "nproc=4096:4096")
    box = containers.Container(cfg, "localhost/lab:1", "sha256:" + "c" * 64, 0.1, tmp_path / "store",
                               tmp_path / "run")
    env_file = containers.write_env_file(tmp_path / "job.env", {
        "HAIHE_JOB_TOKEN": "hjt_secret", "PATH": "/node/bin", "MULTI": "a\nb", "LR": "0.1"})
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    assert env_file.read_text() == "HAIHE_JOB_TOKEN=hjt_secret\nLR=0.1\n"  # no node PATH, no broken lines
    argv = box.command(["python", "train.py"], env_file=env_file, workdir="/code", binds={"/code": "/code"})
    run = argv.index("run")
    assert argv[1:3] == ["--runtime", "runc"] and "--root" in argv[:run]
    assert argv[run:run + 7] == ["run", "--rm", "--network", "host", "--userns", "keep-id", "--env-file"]
    assert argv[-3:] == ["c" * 64, "python", "train.py"] and "hjt_secret" not in " ".join(argv)
    assert argv[argv.index("-v"):argv.index("-v") + 2] == ["-v", "/code:/code"]
    apptainer = containers.Container(containers.ContainerConfig("apptainer"), "/shared/lab.sif", "sha256:" + "d" * 64,
                                     0.0, tmp_path, tmp_path)
    assert apptainer.command(["true"], env_file=env_file, workdir=None, binds={})[:3] == ["apptainer", "exec",
                                                                                         "--cleanenv"]


def test_a_pinned_image_that_changed_is_refused(tmp_path: Path) -> None:
    from haihe.jobs.runtime import container as containers

    def podman(argv: Sequence[str], stdin: str | None, environ: Mapping[str, str]) -> tuple[int, str, str]:
        assert "pull" in argv and environ["XDG_RUNTIME_DIR"] == str(tmp_path / "run")
        return 0, "Copying blob…\n" + "e" * 64 + "\n", ""

    cfg = containers.ContainerConfig("podman")
    box = containers.prepare(cfg, "localhost/lab:1", env_dir=tmp_path, runroot=tmp_path / "run", runner=podman)
    assert box.ref == "sha256:" + "e" * 64
    with pytest.raises(EnvironmentBuildError) as info:
        containers.prepare(cfg, "localhost/lab:1", env_dir=tmp_path, runroot=tmp_path / "run", runner=podman,
                           pinned="sha256:" + "f" * 64)
    assert "not the" in info.value.message


def test_images_are_not_sent_to_ray_yet() -> None:
    from haihe.platform.jobs import ray_policy
    from haihe.platform.settings import Settings

    settings = Settings(schedulers={"ray": "ray://127.0.0.1:8265"}, default_scheduler="ray",
                        ray_shared_code_orgs="acme")
    spec = validate_spec({**BASE, "environment": {"image": "localhost/lab:1"}})
    with pytest.raises(InvalidInput) as info:
        ray_policy.route(settings, "ray", "acme", spec)
    assert info.value.field == "environment.image"
    # and Python packages are the org's own code: an org without shared code may not run them there
    recipe = validate_spec({"name": "r", "recipe": "digits-cnn", "environment": {"pip": ["numpy"]}})
    assert ray_policy.runs_own_code(recipe) == "environment"


def test_the_new_job_form_names_packages_or_an_image() -> None:
    from haihe.portal.forms import FormErrors, form_from_spec, spec_from_form

    def t(key: str, **_: object) -> str:
        return key

    errors = FormErrors()
    spec = spec_from_form({"name": "f", "source": "own", "entrypoint": "python a.py",
                           "packages": "scikit-learn==1.5.2\nnumpy<3, pandas"}, errors, t)
    assert not errors and spec["environment"] == {"pip": ["scikit-learn==1.5.2", "numpy<3", "pandas"]}
    assert form_from_spec(spec)["packages"] == "scikit-learn==1.5.2\nnumpy<3\npandas"
    errors = FormErrors()
    spec_from_form({"name": "f", "source": "own", "entrypoint": "x", "packages": "numpy", "image": "lab:1"}, errors, t)
    assert errors.get("image") == ["form.err.packages_or_image"]


def test_environments_count_against_storage_are_listed_and_pruned_ones_stop_counting(jobs: Env) -> None:
    spec = {**BASE, "environment": {"pip": ["numpy"]}}
    job = jobs.submit(spec)
    launch = jobs.fake.jobs[str(job["native_id"])].launch
    url = launch.env["HAIHE_ENVIRONMENT_URL"]
    auth = {"Authorization": f"Bearer {launch.env['HAIHE_JOB_TOKEN']}"}
    old, new = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    root = "gn1:/tmp/haihe-cache-1001/envs"
    for ref, size, pruned in ((old, 100_000, []), (new, 250_000, [old])):
        r = jobs.client.post(url[url.index("/api/"):], json={
            "ref": ref, "lock": "numpy==2.0.0\n", "seconds": 3.0, "cached": False, "node": "gn1", "bytes": size,
            "location": f"{root}/{ref[7:39]}", "pruned": pruned}, headers=auth)
        assert r.status_code == 200, r.text
    admin = jobs.t.admin_headers
    listed = jobs.client.get(f"/api/v1/orgs/{jobs.org}/environments", headers=admin)
    assert listed.status_code == 200, listed.text
    assert [(e["ref"], e["bytes"]) for e in listed.json()] == [(new, 250_000)]  # the removed one is gone
    everything = jobs.client.get(f"/api/v1/orgs/{jobs.org}/environments", params={"pruned": True}, headers=admin).json()
    assert {e["ref"]: e["pruned_at"] is not None for e in everything} == {old: True, new: False}
    quota = jobs.client.get(f"/api/v1/orgs/{jobs.org}/quota", headers=admin).json()
    storage = next(b for b in quota["balances"] if b["resource"] == "storage_bytes")
    assert storage["used"] == 250_000
    # a researcher is no org admin: the list is not theirs
    assert jobs.client.get(f"/api/v1/orgs/{jobs.org}/environments", headers=jobs.user).status_code in (403, 404)


def test_a_cache_removes_environments_unused_for_its_keep_days(tmp_path: Path) -> None:
    import os
    import time

    builder = envs.Builder(tmp_path / "envs", python="/usr/bin/python3", uv="uv", runner=FakeUv(), site_dirs=[],
                           keep_days=7)
    stale = builder.prepare(envs.Request(pip=("a==1",)))
    assert stale.bytes > 0 and not stale.pruned
    week_ago = time.time() - 8 * 86400
    os.utime(stale.prefix / envs.LAST_USED, (week_ago, week_ago))
    fresh = builder.prepare(envs.Request(pip=("b==2",)))
    assert fresh.pruned == (stale.ref,) and not stale.prefix.exists() and fresh.prefix.exists()
    again = builder.prepare(envs.Request(pip=("a==1",)))  # asked for again: built again, not taken half-removed
    assert not again.cached and again.prefix.exists()


def test_envrun_runs_the_command_with_the_environment_first(tmp_path: Path) -> None:
    """What a Slurm endpoint's server starts through: a cached environment found without uv, the command on its
    PATH; a request it cannot build is exit 9 with the reason."""
    import os
    import subprocess
    import sys

    root = tmp_path / "envs"
    builder = envs.Builder(root, python=sys.executable, uv="uv", runner=FakeUv(), site_dirs=[])
    prepared = builder.prepare(envs.Request(pip=("six==1.16.0",)))
    (prepared.prefix / "bin" / "python").symlink_to(sys.executable)
    environ = {**os.environ, "HAIHE_ENVIRONMENT": json.dumps({"pip": ["six==1.16.0"]}), "HAIHE_ENV_DIR": str(root)}
    p = subprocess.run([sys.executable, "-m", "haihe.jobs.runtime.envrun", "--", "python", "-c",
                        "import os, shutil; print(os.environ['VIRTUAL_ENV'], shutil.which('python'))"],
                       env=environ, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(prepared.prefix), str(prepared.prefix / "bin" / "python")]
    assert "reused (cached)" in p.stderr
    environ["HAIHE_ENVIRONMENT"] = json.dumps({"requirements": "r.txt"})
    p = subprocess.run([sys.executable, "-m", "haihe.jobs.runtime.envrun", "--", "true"], env=environ,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == ExitCode.ENVIRONMENT and "pip or locked" in p.stderr


def test_admission_errors_land_next_to_the_form_field_they_name() -> None:
    """An unknown partition (admission's field "partition") and a walltime over the partition's limit
    ("resources.time_limit_min") were shown next to no field of the portal's form."""
    from haihe.portal.forms import form_field

    assert form_field("partition") == "partition"
    assert form_field("resources.time_limit_min") == "time_limit"
    assert form_field("resources.gpus_per_node") == "gpus_per_node"
    assert form_field("model.from_zoo") == "model"
    assert (form_field("environment.image"), form_field("environment.pip")) == ("image", "packages")
