"""The reconciler's walltime backstop for schedulers that enforce none (Ray): overdue RUNNING jobs are stopped and
recorded TIMEOUT, charged for what they ran; schedulers that enforce walltime themselves (Slurm) are left alone."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from haihe.platform.models import LedgerEntry
from haihe.schedulers import walltime
from haihe.schedulers.base import JobState, JobStatus
from tests.unit import test_jobs_service
from tests.unit.test_jobs_service import Env

env = test_jobs_service.env  # the jobs suite's fixture: an API on SQLite with the fake scheduler

SPEC = {"name": "long", "entrypoint": ["python", "train.py"], "resources": {"time_limit": 10}}


def test_overdue_picks_only_running_jobs_past_limit_and_grace() -> None:
    def st(ref: str, state: JobState, started: float | None) -> JobStatus:
        return JobStatus(ref=ref, state=state, started_at=started)

    statuses = {"late": st("late", JobState.RUNNING, 0.0), "fresh": st("fresh", JobState.RUNNING, 900.0),
                "queued": st("queued", JobState.QUEUED, None), "done": st("done", JobState.SUCCEEDED, 0.0),
                "nolimit": st("nolimit", JobState.RUNNING, 0.0)}
    limits = {"late": 600.0, "fresh": 600.0, "queued": 1.0, "done": 1.0}
    assert walltime.overdue(statuses, limits, now=1000.0, grace_s=60) == ["late"]


@pytest.mark.parametrize("enforces", [False, True])
def test_the_reconciler_stops_overdue_jobs_only_where_the_scheduler_does_not(env: Env, monkeypatch: pytest.MonkeyPatch,
                                                                            enforces: bool) -> None:
    monkeypatch.setattr(type(env.fake), "ENFORCES_WALLTIME", enforces)
    late, ok = env.submit(SPEC), env.submit(SPEC)
    started_late = time.time() - (10 * 60 + walltime.DEFAULT_GRACE_S + 5)
    env.fake.set(str(late["native_id"]), JobState.RUNNING, started_at=started_late, nodes=("n1",))
    env.fake.set(str(ok["native_id"]), JobState.RUNNING, started_at=time.time() - 60, nodes=("n1",))
    reports = env.reconciler.run_once()
    assert sum(r.stopped_overdue for r in reports) == (0 if enforces else 1)
    assert env.job(ok["id"])["state"] == "RUNNING"
    stopped = env.job(late["id"])
    if enforces:  # Slurm ends it itself at its limit: the platform does not second-guess it
        assert stopped["state"] == "RUNNING"
        return
    assert stopped["state"] == "TIMEOUT"
    assert "time limit of 10 min" in str(stopped["reason"])
    assert env.fake.jobs[str(late["native_id"])].status.state is JobState.CANCELLED  # really stopped on the cluster
    env.reconciler.run_once()  # the scheduler now says CANCELLED: terminal states are final
    assert env.job(late["id"])["state"] == "TIMEOUT"
    events = env.client.get(f"/api/v1/jobs/{late['id']}/events", headers=env.user).json()
    assert [e["kind"] for e in events].count("finished") == 1
    with env.ctx.db.session() as s:  # charged once, for the ~12 minutes it ran, not the whole reservation
        charges = s.scalars(select(LedgerEntry).where(LedgerEntry.job_id == late["id"],
                                                      LedgerEntry.kind == "charge")).all()
        cpu_s = sum(c.amount for c in charges if c.resource == "cpu_s")
    assert 10 * 60 + walltime.DEFAULT_GRACE_S <= cpu_s < 10 * 60 + walltime.DEFAULT_GRACE_S + 60
