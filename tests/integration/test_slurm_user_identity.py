"""Platform-submitted Slurm jobs run as the user's mapped Unix account on the org's project account (issue 15),
on both transports; an org over its GrpTRESMins has its job held by Slurm and the user sees why."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.live_platform import PASSWORD, LivePlatform, start_live_platform
from tests.integration.slurm_helpers import TRANSPORTS

pytestmark = [pytest.mark.slurm]
TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT"}
WHO = {"name": "who", "entrypoint": ["sh", "-c", "echo WHO uid=$(id -u) name=$(id -un) home=$HOME"],
       "resources": {"partition": "cpu", "time_limit": "00:05:00"}}


@pytest.fixture(params=TRANSPORTS)
def live(request: pytest.FixtureRequest, tmp_path: Path, slurm_cluster: Any) -> Iterator[LivePlatform]:
    tmp_path.chmod(0o700)  # the platform's state: never readable by job accounts
    yield from start_live_platform(tmp_path, schedulers={"slurm": slurm_cluster.scheduler_url(request.param)},
                                   default="slurm", extra_env={**slurm_cluster.env, "HAIHE_UNIX_ACCOUNTS": "local"})


def _slurm(cluster: Any, *argv: str) -> str:
    return subprocess.run(list(argv), env={**cluster.env, "PATH": "/usr/bin:/bin:/usr/sbin"}, capture_output=True,
                          text=True, check=True, timeout=60).stdout


def _job(live: LivePlatform, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    return dict(httpx.get(f"{live.url}/api/v1/jobs/{job_id}", headers=headers).json())


def _wait(live: LivePlatform, headers: dict[str, str], job_id: str, done: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job = _job(live, headers, job_id)
    while time.monotonic() < deadline:
        job = _job(live, headers, job_id)
        if done(job):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} not there after {timeout}s: {job}")


def _setup(live: LivePlatform, org: str, project: str, user: str) -> dict[str, str]:
    cli = live.cli()
    cli.run("admin", "init", "-u", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    cli.run("admin", "orgs", "create", org)
    cli.run("admin", "projects", "create", org, project)
    cli.run("admin", "users", "create", org, user, "--password-stdin", stdin=PASSWORD + "\n")
    return live.token(user)


def test_job_runs_as_the_mapped_user_on_the_project_account(live: LivePlatform, slurm_cluster: Any) -> None:
    h = _setup(live, "idacme", "vision", "alice")
    r = httpx.post(f"{live.url}/api/v1/orgs/idacme/projects/vision/jobs", json={"spec": WHO}, headers=h)
    assert r.status_code == 201, r.text
    job = _wait(live, h, r.json()["id"], lambda j: j["state"] in TERMINAL, timeout=120)
    logs = httpx.get(f"{live.url}/api/v1/jobs/{job['id']}/logs", headers=h).json()["data"]
    assert job["state"] == "SUCCEEDED", (job, logs)
    line = next(x for x in logs.splitlines() if x.startswith("WHO "))
    fields = dict(kv.split("=", 1) for kv in line.split()[1:])
    assert fields["name"] == "hh-idacme-alice", line
    assert fields["uid"] != "0"
    assert fields["home"] == f"{slurm_cluster.jobs_dir}/hh-idacme-alice"
    log_dir = Path(slurm_cluster.jobs_dir) / "hh-idacme-alice"
    assert oct(log_dir.stat().st_mode & 0o7777) == "0o2750"
    if slurm_cluster.accounting:
        sacct = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "hh-idacme-alice" not in sacct:
            sacct = _slurm(slurm_cluster, "sacct", "-n", "-P", "-X", "-j", job["native_id"],
                           "--format=user,account,uid")
            time.sleep(0.5)
        user, account, _uid = sacct.splitlines()[0].split("|")
        # (sacct's uid column can read 0 while slurmdbd's record is incomplete; the job's own `id -u` is above)
        assert (user, account) == ("hh-idacme-alice", "idacme.vision"), sacct


def test_org_over_its_grptresmins_is_held_and_the_user_sees_why(live: LivePlatform, slurm_cluster: Any) -> None:
    if not slurm_cluster.accounting:
        pytest.fail("this test needs the cluster with accounting (HAIHE_TEST_SLURM_ACCOUNTING must not be 0)")
    h = _setup(live, "idbroke", "vision", "bob")
    cli = live.cli()
    # sync makes the accounts of every org and project, and the members' associations, quota or not
    cli.run("admin", "quota", "sync")
    accounts = _slurm(slurm_cluster, "sacctmgr", "-n", "-P", "show", "assoc", "format=account,user")
    assert "idbroke|" in accounts and "idbroke.vision|hh-idbroke-bob" in accounts, accounts
    # the org has no CPU-minutes left in Slurm (the platform's own quota would answer 402 before Slurm could)
    _slurm(slurm_cluster, "sacctmgr", "-i", "modify", "account", "where", "name=idbroke", "set",
           "GrpTRESMins=cpu=0")
    r = httpx.post(f"{live.url}/api/v1/orgs/idbroke/projects/vision/jobs", json={"spec": WHO}, headers=h)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    try:
        job = _wait(live, h, job_id, lambda j: "AssocGrp" in (j.get("reason") or ""), timeout=60)
        assert job["state"] in ("QUEUED", "SUBMITTED"), job
        assert "AssocGrpCPUMinutesLimit" in job["reason"] or "AssocGrpCpuMin" in job["reason"], job["reason"]
        assert _slurm(slurm_cluster, "squeue", "-h", "-j", job["native_id"], "-o", "%u %a").split() == [
            "hh-idbroke-bob", "idbroke.vision"]
    finally:
        httpx.post(f"{live.url}/api/v1/jobs/{job_id}/cancel", headers=h)
