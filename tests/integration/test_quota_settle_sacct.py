"""Settlement from Slurm's accounting: a job that runs 45 s of its 3 reserved minutes is charged what sacct reports
(elapsed × allocated CPUs), and the rest of the reservation is released."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.live_platform import LivePlatform, start_live_platform

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


@pytest.fixture
def live(tmp_path: Path, slurm_cluster: Any) -> Iterator[LivePlatform]:
    yield from start_live_platform(tmp_path, schedulers={"slurm": slurm_cluster.scheduler_url("cli")},
                                   default="slurm", extra_env=dict(slurm_cluster.env))


def test_45_seconds_of_three_minutes_charged_from_sacct(live: LivePlatform, slurm_cluster: Any) -> None:
    cli = live.cli()
    cli.bootstrap("acme", "vision", "alice")
    cli.run("admin", "quota", "set", "acme", "--cpu-hours", "10")
    h = live.token("alice")
    spec = {"name": "forty-five-seconds", "entrypoint": ["bash", "-c", "sleep 45"],
            "resources": {"partition": "cpu", "time_limit": 3, "cpus_per_task": 1}}
    r = httpx.post(f"{live.url}/api/v1/orgs/acme/projects/vision/jobs", json={"spec": spec}, headers=h)
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    quota = httpx.get(f"{live.url}/api/v1/orgs/acme/quota", headers=h).json()
    cpu = next(b for b in quota["balances"] if b["resource"] == "cpu_hours")
    assert cpu["reserved"] == pytest.approx(3 / 60, abs=1e-4)  # 1 CPU x 3 minutes reserved at submit
    deadline = time.monotonic() + 600
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = httpx.get(f"{live.url}/api/v1/jobs/{job_id}", headers=h).json()
        if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT"):
            break
        time.sleep(2)
    assert job["state"] == "SUCCEEDED", job
    out = subprocess.run(["sacct", "-j", job["native_id"], "-X", "-n", "-P", "-o", "ElapsedRaw,AllocCPUS"],
                         env={**slurm_cluster.env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                         check=True).stdout.strip().splitlines()[0]
    elapsed_s, alloc = (int(x) for x in out.split("|"))
    assert 44 <= elapsed_s <= 100
    quota = httpx.get(f"{live.url}/api/v1/orgs/acme/quota", headers=h).json()
    cpu = next(b for b in quota["balances"] if b["resource"] == "cpu_hours")
    assert cpu["used"] * 3600 == pytest.approx(elapsed_s * alloc, abs=alloc * 2.0)
    assert cpu["used"] * 60 / alloc < 2.0  # well under the 3 reserved minutes per allocated CPU
    assert cpu["reserved"] == pytest.approx(0, abs=1e-9)  # the rest of the reservation released
