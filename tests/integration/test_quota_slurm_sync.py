"""The second wall: quotas pushed into Slurm's accounting hold a job submitted straight to Slurm with sbatch."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.live_platform import PASSWORD, LivePlatform, start_live_platform

pytestmark = [pytest.mark.slurm]


@pytest.fixture
def live(tmp_path: Path, slurm_cluster: Any) -> Iterator[LivePlatform]:
    yield from start_live_platform(tmp_path, schedulers={"slurm": slurm_cluster.scheduler_url("cli")},
                                   default="slurm", extra_env=dict(slurm_cluster.env))


def _slurm(cluster: Any, *argv: str) -> str:
    return subprocess.run(list(argv), env={**cluster.env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          check=True, timeout=60).stdout


def test_quota_sync_holds_an_over_budget_sbatch(live: LivePlatform, slurm_cluster: Any) -> None:
    if not slurm_cluster.accounting:
        pytest.fail("this test needs the cluster with accounting (HAIHE_TEST_SLURM_ACCOUNTING must not be 0)")
    cli = live.cli()
    org = f"q{uuid.uuid4().hex[:8]}"
    cli.run("admin", "init", "-u", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    cli.run("admin", "orgs", "create", org)
    cli.run("admin", "projects", "create", org, "vision")
    cli.run("admin", "quota", "set", org, "--gpu-hours", "1", "--cpu-hours", "100", "--max-gpus", "8")
    cli.run("admin", "quota", "set", f"{org}/vision", "--gpu-hours", "0.5")
    out = cli.run("admin", "quota", "check", ok=False)  # drift: the accounts do not exist yet
    assert org in out
    cli.run("admin", "quota", "sync")
    assert "in sync: 2" in cli.run("admin", "quota", "check")
    assoc = _slurm(slurm_cluster, "sacctmgr", "-n", "-P", "show", "assoc", f"account={org}",
                   "format=account,grptresmins,grptres")
    assert "gres/gpu=60" in assoc and "cpu=6000" in assoc
    # straight to Slurm, no platform: 4 GPUs x 30 min = 120 GPU-minutes > the 60 the org has
    job = _slurm(slurm_cluster, "sbatch", "--parsable", "-A", org, "-p", "gpu", "--gres=gpu:4", "-t", "30",
                 "-o", "/dev/null", "--wrap", "true").strip()
    try:
        reason = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = _slurm(slurm_cluster, "squeue", "-h", "-j", job, "-o", "%T %r").strip()
            reason = state
            if state.startswith("PENDING") and "Assoc" in state:
                break
            time.sleep(0.5)
        assert reason.startswith("PENDING") and "AssocGrpGRESMinutes" in reason, reason
    finally:
        subprocess.run(["scancel", job], env={**slurm_cluster.env, "PATH": "/usr/bin:/bin"}, check=False)
    events = cli.json("admin", "audit", "--action", "quota.sync")
    assert len(events) == 1
