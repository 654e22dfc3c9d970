"""Issue 5 on the real Slurm cluster, through the real API process and the CLI:
- digits-cnn on 2 nodes with torchrun (DDP, gloo): accuracy > 0.9 in MLflow, a zoo version with lineage;
- 20 jobs live, the platform SIGKILLed and restarted: every job reaches its true final state, none submitted twice,
  every timeline complete;
- `scontrol requeue` during training: a checkpoint is written, the job requeues, resumes and finishes with the full
  step count."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.live_platform import LivePlatform, portal_client, start_live_platform

pytestmark = [pytest.mark.slurm, pytest.mark.mlflow, pytest.mark.s3, pytest.mark.slow]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT"}


@pytest.fixture
def live(tmp_path: Path, slurm_cluster: Any, s3_server: Any, mlflow_server: Any) -> Iterator[LivePlatform]:
    yield from start_live_platform(tmp_path, schedulers={"slurm": slurm_cluster.scheduler_url("cli")},
                                   default="slurm", s3=s3_server, mlflow=mlflow_server,
                                   extra_env=dict(slurm_cluster.env))


def _wait(live: LivePlatform, headers: dict[str, str], job_ids: list[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    jobs: dict[str, Any] = {}
    while time.monotonic() < deadline:
        jobs = {j: httpx.get(f"{live.url}/api/v1/jobs/{j}", headers=headers).json() for j in job_ids}
        if all(job["state"] in TERMINAL for job in jobs.values()):
            return jobs
        time.sleep(1)
    raise AssertionError(f"not terminal after {timeout}s: {[(j['name'], j['state']) for j in jobs.values()]}")


def _until_running(live: LivePlatform, headers: dict[str, str], job_ids: list[str], timeout: float = 60) -> None:
    """Until the platform has seen one of the jobs start (work is in flight on the cluster)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = httpx.get(f"{live.url}/api/v1/jobs", params={"org": "acme", "state": "RUNNING", "limit": 200},
                         headers=headers).json()
        if any(j["id"] in job_ids for j in page["items"]):
            return
        time.sleep(0.2)
    raise AssertionError(f"none of {len(job_ids)} jobs was seen RUNNING within {timeout}s")


def test_digits_cnn_on_two_nodes_with_torchrun(live: LivePlatform, tmp_path: Path, mlflow_server: Any) -> None:
    cli = live.cli()
    cli.bootstrap("acme", "vision", "alice")
    spec = tmp_path / "digits.yaml"
    spec.write_text("name: digits\nproject: acme/vision\nrecipe: digits-cnn\nlauncher: torchrun\n"
                    "resources: {partition: cpu, nodes: 2, cpus_per_task: 1, time_limit: 20}\n"
                    "register: {name: digits-cnn}\n")
    out = cli.run("submit", str(spec), "--follow", as_user="alice", timeout=900)
    assert "SUCCEEDED" in out, out[-3000:]
    job_id = UUID.search(out)
    assert job_id
    job = cli.json("jobs", "show", job_id.group(0), as_user="alice")
    assert len(job["nodes"]) == 2
    results = [json.loads(line.split("HAIHE_RESULT ", 1)[1]) for line in out.splitlines() if "HAIHE_RESULT " in line]
    by_rank = {r["rank"]: r for r in results}
    assert set(by_rank) == {0, 1}
    assert by_rank[0]["final_loss"] == pytest.approx(by_rank[1]["final_loss"])
    exp = httpx.get(f"{mlflow_server.url}/api/2.0/mlflow/experiments/get-by-name",
                    params={"experiment_name": "acme/vision"}).json()["experiment"]["experiment_id"]
    runs = httpx.post(f"{mlflow_server.url}/api/2.0/mlflow/runs/search", json={
        "experiment_ids": [exp], "filter": f"tags.`haihe.job_id` = '{job_id.group(0)}'"}).json()["runs"]
    metrics = {m["key"]: m["value"] for m in runs[0]["data"]["metrics"]}
    assert metrics["test_accuracy"] > 0.9
    versions = httpx.get(f"{mlflow_server.url}/api/2.0/mlflow/model-versions/search",
                         params={"filter": "name = 'acme~digits-cnn'"}).json()["model_versions"]
    tags = {t["key"]: t["value"] for t in versions[0]["tags"]}
    assert tags["haihe.job_id"] == job_id.group(0) and tags["haihe.run_id"] == runs[0]["info"]["run_id"]
    assert tags["haihe.dataset"] == "builtin:sklearn.datasets.load_digits"


def test_platform_sigkill_with_20_live_jobs(live: LivePlatform, slurm_cluster: Any) -> None:
    cli = live.cli()
    cli.bootstrap("acme", "vision", "alice")
    h = live.token("alice")
    ids: list[str] = []
    expected: dict[str, str] = {}
    for i in range(20):
        code = 3 if i % 5 == 4 else 0  # every fifth job fails: its true final state is FAILED
        spec = {"name": f"sleeper-{i}", "entrypoint": ["bash", "-c", f"sleep 8; exit {code}"],
                "resources": {"partition": "cpu", "time_limit": 5}}
        r = httpx.post(f"{live.url}/api/v1/orgs/acme/projects/vision/jobs", json={"spec": spec},
                       headers={**h, "Idempotency-Key": f"k-{i}"})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
        expected[r.json()["id"]] = "FAILED" if code else "SUCCEEDED"
    _until_running(live, h, ids)
    live.restart(kill=True)  # SIGKILL mid-flight, then start again on the same database
    jobs = _wait(live, h, ids, timeout=600)
    assert {j: jobs[j]["state"] for j in ids} == expected
    # none submitted twice: Slurm holds exactly one job per platform tag
    out = subprocess.run(["squeue", "--json"], env={**slurm_cluster.env, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout
    sacct = subprocess.run(["sacct", "-n", "-X", "-S", "now-1hour", "-o", "Comment%60", "-a"],
                           env={**slurm_cluster.env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    seen = [line.strip() for line in (sacct.stdout or "").splitlines() if line.strip() in ids] or \
        [j["comment"] for j in json.loads(out)["jobs"] if j.get("comment") in ids]
    natives = {jobs[j]["native_id"] for j in ids}
    assert len(natives) == 20
    if seen:
        assert len(seen) == len(set(seen))
    for j in ids:
        kinds = [e["kind"] for e in httpx.get(f"{live.url}/api/v1/jobs/{j}/events", headers=h).json()]
        assert kinds[0] == "created" and "submitted" in kinds and kinds[-1] == "finished", (j, kinds)


def test_requeue_resumes_from_checkpoint(live: LivePlatform, slurm_cluster: Any, tmp_path: Path) -> None:
    cli = live.cli()
    cli.bootstrap("acme", "vision", "alice")
    h = live.token("alice")
    spec = {"name": "resumable", "recipe": "digits-cnn", "checkpoint": {"every": 5, "keep": 2},
            "resources": {"partition": "cpu", "time_limit": 20}}
    r = httpx.post(f"{live.url}/api/v1/orgs/acme/projects/vision/jobs", json={"spec": spec}, headers=h)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + 300
    offset, log = 0, ""
    while time.monotonic() < deadline and "step" not in log:  # wait until training is under way
        chunk = httpx.get(f"{live.url}/api/v1/jobs/{job_id}/logs?offset={offset}", headers=h).json()
        offset, log = chunk["offset"], log + chunk["data"]
        time.sleep(1)
    native = httpx.get(f"{live.url}/api/v1/jobs/{job_id}", headers=h).json()["native_id"]
    subprocess.run(["scontrol", "requeue", native], env={**slurm_cluster.env, "PATH": "/usr/bin:/bin"}, check=True)
    job = _wait(live, h, [job_id], timeout=900)[job_id]
    assert job["state"] == "SUCCEEDED", job
    kinds = [e["kind"] for e in httpx.get(f"{live.url}/api/v1/jobs/{job_id}/events", headers=h).json()]
    assert "requeued" in kinds
    full = httpx.get(f"{live.url}/api/v1/jobs/{job_id}/logs", headers=h).json()["data"]
    results = [json.loads(line.split("HAIHE_RESULT ", 1)[1]) for line in full.splitlines() if "HAIHE_RESULT " in line]
    assert results and results[-1]["resumed_from"] > 0
    steps = [tuple(map(int, m)) for m in re.findall(r"step (\d+)/(\d+)", full)]
    assert steps and steps[-1][0] == steps[-1][1] == results[-1]["steps"]


def test_impossible_requests_are_refused_before_anything_is_stored(live: LivePlatform, tmp_path: Path) -> None:
    """Issue 17, against the real cluster (its partitions as sinfo/slurmrestd report them): 2 GPUs per node on the
    GPU-less `cpu` partition, an unknown partition, a walltime over the partition's limit and a base model that is
    not in the zoo are each a 422 naming the field, through the API, the CLI and the portal's form, with no job row
    and no reservation left behind."""
    cli = live.cli()
    cli.bootstrap("acme", "vision", "alice")
    h = live.token("alice")
    admin = live.token("admin")

    def footprint() -> tuple[int, float]:
        jobs = httpx.get(f"{live.url}/api/v1/jobs", params={"org": "acme", "limit": 200}, headers=h).json()
        quota = httpx.get(f"{live.url}/api/v1/orgs/acme/quota", headers=admin).json()
        reserved = sum(float(b.get("reserved") or 0) for b in quota.get("balances", []))
        return len(jobs["items"]), reserved

    r = httpx.put(f"{live.url}/api/v1/orgs/acme/quota", json={"gpu_hours": 100, "cpu_hours": 100}, headers=admin)
    assert r.status_code == 200, r.text  # with a quota, a stored job would also hold a reservation
    before = footprint()
    cases = [({"partition": "cpu", "gpus_per_node": 2}, "resources.gpus_per_node"),
             ({"partition": "nope"}, "partition"),
             ({"partition": "cpu", "time_limit": "2-00:00:00"}, "resources.time_limit_min")]
    for resources, field in cases:
        spec = {"name": "impossible", "entrypoint": ["true"], "resources": {"time_limit": 5, **resources}}
        r = httpx.post(f"{live.url}/api/v1/orgs/acme/projects/vision/jobs", json={"spec": spec}, headers=h, timeout=30)
        assert r.status_code == 422, (resources, r.text)
        assert r.json()["error"]["field"] == field, (resources, r.json())
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nproject: acme/vision\nentrypoint: [\"true\"]\n"
                    "resources: {partition: cpu, gpus_per_node: 2, time_limit: 5}\n")
    out = cli.run("submit", str(path), as_user="alice", ok=False)
    assert "gpus_per_node" in out and "cpu" in out, out
    # a base model that does not exist (MLflow is live here): refused, not silently ignored
    spec = {"name": "impossible", "entrypoint": ["true"], "model": {"from_zoo": "acme/no-such-model@production"},
            "resources": {"partition": "cpu", "time_limit": 5}}
    r = httpx.post(f"{live.url}/api/v1/orgs/acme/projects/vision/jobs", json={"spec": spec}, headers=h, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["field"] == "model.from_zoo", r.text
    # the portal's form, posted as a browser does: the refusal next to its field, the form kept
    portal = portal_client(live, "alice")
    form = {"csrf_token": str(portal.cookies.get("haihe_csrf")), "mode": "form", "target": "acme/vision",
            "name": "impossible", "source": "own", "entrypoint": "true", "nodes": "1", "tasks_per_node": "1",
            "cpus_per_task": "1", "gpus_per_node": "0", "time_limit": "00:05:00", "launcher": "none"}
    for fields, where in (({"partition": "cpu", "gpus_per_node": "2"}, "gpus_per_node"),
                          ({"partition": "nope"}, "partition"),
                          ({"partition": "cpu", "model": "acme/no-such-model@production"}, "model")):
        r = portal.post("/jobs/new", data={**form, **fields})
        assert r.status_code == 422, (fields, r.status_code)
        shown = re.search(rf'id="err-{where}" role="alert"\s*>(.*?)</div>', r.text, re.S)
        assert shown and shown.group(1).strip(), (fields, where)  # said at the field, not hidden
    assert footprint() == before
