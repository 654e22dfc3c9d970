"""Issue 19 on the real Slurm cluster and the real Ray head, with uv and PyPI: a job names its own Python environment
(a scikit-learn other than the platform's), the runtime builds it once per lock, later jobs reuse it, the resolved
lock is kept on the job, tagged on the run and on the zoo version, and a resubmit installs exactly the same lock."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.live_platform import LivePlatform, job_log, start_live_platform

pytestmark = [pytest.mark.slurm, pytest.mark.ray, pytest.mark.s3, pytest.mark.mlflow, pytest.mark.slow]

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT"}
OTHER_SKLEARN = "1.5.2"  # the platform's own is newer (pyproject: scikit-learn>=1.5, resolved to the latest)
MARKER = "only-in-the-haihe-test-image"
PIP = {"pip": [f"scikit-learn=={OTHER_SKLEARN}"]}
PRINT = ["python", "-c", "import os, sklearn; print('SKLEARN', sklearn.__version__, "
                         "os.environ.get('SLURMD_NODENAME', 'ray'), flush=True)"]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, slurm_cluster: Any, ray_head: Any, s3_server: Any,
         mlflow_server: Any) -> Iterator[LivePlatform]:
    home = tmp_path_factory.mktemp("environments-platform")
    # rootless podman as the job's user; this VM refuses to raise rlimits and crun its hybrid cgroups: runc, and
    # limits no higher than the node's (the site's own options, HAIHE_CONTAINER_ARGS)
    container = {"HAIHE_CONTAINER_RUNTIME": "podman", "HAIHE_CONTAINER_ARGS": json.dumps(
        ["--runtime", "runc", "run", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"])}
    yield from start_live_platform(
        home, schedulers={"slurm": slurm_cluster.scheduler_url("cli"), "ray": ray_head.scheduler_url},
        default="slurm", s3=s3_server, mlflow=mlflow_server, extra_env={**slurm_cluster.env, **container})


@pytest.fixture(scope="module")
def image_archive() -> Iterator[str]:
    """An image built here, offline: busybox and a file no other filesystem has, as an OCI archive the job's
    user can read (a site would keep images on shared storage or in a registry)."""
    work = Path(tempfile.mkdtemp(prefix="haihe-test-image-"))
    os.chmod(work, 0o755)
    root = work / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for tool in ("sh", "cat", "id", "echo"):
        (root / "bin" / tool).symlink_to("busybox")
    (root / "etc" / "haihe-image-marker").write_text(MARKER + "\n")
    tag = f"localhost/haihe-test-{os.getpid()}:1"
    subprocess.run(["tar", "-C", str(root), "-cf", str(work / "rootfs.tar"), "."], check=True)
    subprocess.run(["podman", "import", "-q", str(work / "rootfs.tar"), tag], check=True, capture_output=True)
    archive = work / "image.tar"
    subprocess.run(["podman", "save", "-q", "--format", "oci-archive", "-o", str(archive), tag], check=True)
    subprocess.run(["podman", "rmi", "-f", tag], capture_output=True)
    os.chmod(archive, 0o644)
    try:
        yield f"oci-archive:{archive}"
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def alice(live: LivePlatform) -> dict[str, str]:
    live.cli().bootstrap("envorg", "lab", "alice")
    return live.token("alice")


def _forget_environments(org: str, user: str) -> None:
    """Remove what an earlier run on this host left in the job account's node-local environment cache (the
    default, ``$TMPDIR/haihe-cache-<uid>/envs``: the account and its cache outlive a test session), so the first
    job below builds and the later ones are seen to reuse it."""
    from haihe.cluster.unix import local_account_name, lookup

    account = lookup(local_account_name(org, user))
    if account is not None:
        shutil.rmtree(Path(tempfile.gettempdir()) / f"haihe-cache-{account.uid}" / "envs", ignore_errors=True)


def _submit(live: LivePlatform, h: dict[str, str], spec: dict[str, Any]) -> str:
    r = httpx.post(f"{live.url}/api/v1/orgs/envorg/projects/lab/jobs", json={"spec": spec}, headers=h, timeout=30)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _final(live: LivePlatform, h: dict[str, str], job_id: str, timeout: float = 420) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = httpx.get(f"{live.url}/api/v1/jobs/{job_id}", headers=h, timeout=10).json()
        if job["state"] in TERMINAL:
            return job
        time.sleep(1)
    raise AssertionError(f"job {job_id} not final in {timeout}s: {job.get('state')} {job.get('reason')}")


def _log(live: LivePlatform, h: dict[str, str], job_id: str) -> str:
    return job_log(live, h, job_id)


def _events(live: LivePlatform, h: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{live.url}/api/v1/jobs/{job_id}/events", headers=h, timeout=10).json())


def _built_seconds(events: list[dict[str, Any]]) -> list[float]:
    return [float(e["data"]["seconds"]) for e in events if e["kind"] == "environment"]


def test_slurm_two_nodes_cache_lineage_resubmit_and_a_bad_package(live: LivePlatform, alice: dict[str, str],
                                                                  mlflow_server: Any) -> None:
    import sklearn

    assert sklearn.__version__ != OTHER_SKLEARN  # the job must really get a different one
    _forget_environments("envorg", "alice")
    two = _submit(live, alice, {"name": "env-two-nodes", "entrypoint": PRINT, "launcher": "mpi", "environment": PIP,
                                "resources": {"partition": "cpu", "nodes": 2, "time_limit": 15}})
    bad = _submit(live, alice, {"name": "env-bad", "entrypoint": ["python", "-c", "print('never')"],
                                "environment": {"pip": ["haihe-no-such-package-zz==1.0"]},
                                "resources": {"partition": "cpu", "time_limit": 5}})
    job = _final(live, alice, two)
    log = _log(live, alice, two)
    assert job["state"] == "SUCCEEDED", (job["reason"], log[-3000:])
    printed = re.findall(r"^SKLEARN (\S+) (\S+)$", log, re.M)
    assert {v for v, _ in printed} == {OTHER_SKLEARN} and len({n for _, n in printed}) == 2, log[-3000:]
    assert set(job["nodes"]) == {n for _, n in printed}
    ref = job["environment_ref"]
    assert ref and re.fullmatch(r"sha256:[0-9a-f]{64}", ref)
    first = _events(live, alice, two)
    assert len([e for e in first if e["kind"] == "environment"]) == 2  # each node says how it got it
    # the bad package: the job fails, the timeline names the package, nothing stays reserved
    failed = _final(live, alice, bad)
    assert failed["state"] == "FAILED" and "environment" in failed["reason"], failed
    said = [e["message"] for e in _events(live, alice, bad) if e["kind"] == "environment_failed"]
    assert said and "haihe-no-such-package-zz" in said[0], said
    assert failed["environment_ref"] is None
    # a recipe in the same environment: reused at once, registered with its environment in the lineage
    cnn = _submit(live, alice, {"name": "env-cnn", "recipe": "digits-cnn", "environment": PIP,
                                "resources": {"partition": "cpu", "time_limit": 15},
                                "register": {"name": "digits-env"}})
    job = _final(live, alice, cnn)
    assert job["state"] == "SUCCEEDED", (job["reason"], _log(live, alice, cnn)[-3000:])
    assert job["environment_ref"] == ref  # the same lock: the same environment
    events = _events(live, alice, cnn)
    reused = [e for e in events if e["kind"] == "environment"]
    assert reused and all(e["data"]["cached"] for e in reused), reused
    assert max(_built_seconds(events)) < max(_built_seconds(first)), (events, first)
    model = httpx.get(f"{live.url}/api/v1/models/envorg/digits-env", headers=alice, timeout=30).json()
    version = model["versions"][0]
    assert version["lineage"]["environment"] == ref, version["lineage"]
    runs = httpx.post(f"{mlflow_server.url}/api/2.0/mlflow/runs/search", json={
        "experiment_ids": [_experiment(mlflow_server.url, "envorg/lab")],
        "filter": f"tags.`haihe.job_id` = '{cnn}'"}).json()["runs"]
    tags = {t["key"]: t["value"] for t in runs[0]["data"]["tags"]}
    assert tags["haihe.environment"] == ref
    # resubmit: the same lock, installed as it is (no new resolution), the same environment
    r = httpx.post(f"{live.url}/api/v1/jobs/{two}/resubmit", headers=alice, timeout=30)
    assert r.status_code == 201, r.text
    again = _final(live, alice, r.json()["id"])
    assert again["state"] == "SUCCEEDED" and again["environment_ref"] == ref, (again["reason"],
                                                                              _log(live, alice, again["id"]))
    assert set(re.findall(r"^SKLEARN (\S+) ", _log(live, alice, again["id"]), re.M)) == {OTHER_SKLEARN}


def _experiment(mlflow_url: str, name: str) -> str:
    r = httpx.get(f"{mlflow_url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name})
    return str(r.json()["experiment"]["experiment_id"])


def test_ray_builds_once_and_reuses(live: LivePlatform, alice: dict[str, str]) -> None:
    spec = {"name": "env-ray", "scheduler": "ray", "entrypoint": PRINT, "environment": PIP,
            "resources": {"time_limit": 15}}
    first = _final(live, alice, _submit(live, alice, spec))
    log = _log(live, alice, first["id"])
    assert first["state"] == "SUCCEEDED", (first["reason"], log[-3000:])
    assert re.findall(r"^SKLEARN (\S+) ray$", log, re.M) == [OTHER_SKLEARN], log[-3000:]
    second = _final(live, alice, _submit(live, alice, {**spec, "name": "env-ray-2"}))
    assert second["state"] == "SUCCEEDED" and second["environment_ref"] == first["environment_ref"]
    events = _events(live, alice, second["id"])
    assert [e["data"]["cached"] for e in events if e["kind"] == "environment"] == [True], events


def test_slurm_runs_the_command_inside_a_locally_built_image(live: LivePlatform, alice: dict[str, str],
                                                              image_archive: str) -> None:
    spec = {"name": "env-image", "environment": {"image": image_archive},
            "entrypoint": ["sh", "-c", "cat /etc/haihe-image-marker; echo uid=$(id -u) job=$HAIHE_JOB_ID"],
            "resources": {"partition": "cpu", "time_limit": 5}}
    job = _final(live, alice, _submit(live, alice, spec))
    log = _log(live, alice, job["id"])
    assert job["state"] == "SUCCEEDED", (job["reason"], log[-3000:])
    assert MARKER in log and f"job={job['id']}" in log, log[-3000:]  # inside the image, with the job's variables
    assert "uid=0" not in log  # as the job's own user, never root
    assert not Path("/etc/haihe-image-marker").exists()  # the file is the image's only
    ref = job["environment_ref"]
    assert ref and re.fullmatch(r"sha256:[0-9a-f]{64}", ref)
    events = [e for e in _events(live, alice, job["id"]) if e["kind"] == "environment"]
    assert events and events[0]["data"].get("image") == image_archive
    r = httpx.post(f"{live.url}/api/v1/jobs/{job['id']}/resubmit", headers=alice, timeout=30)
    assert r.status_code == 201, r.text
    again = _final(live, alice, r.json()["id"])
    assert again["state"] == "SUCCEEDED" and again["environment_ref"] == ref, (again["reason"],
                                                                              _log(live, alice, again["id"]))
