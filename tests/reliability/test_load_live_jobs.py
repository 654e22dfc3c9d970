"""Load: 10,000 live jobs on a real Slurm cluster, tracked by the platform; one reconcile cycle costs at most two
scheduler calls (squeue + at most one sacct) whatever the number of jobs, and every job row gets its state.

The jobs are cheap to create: ten held Slurm job arrays of 1,000 tasks (nothing runs). The platform's rows are
inserted straight into its database, each mapped to one array task (``<array id>_<task>``), as the reconciler
would find them after submission. Pending array tasks share ONE squeue record (``array_task_string``), which the
Slurm backend expands; a job row whose task were not found would be declared lost after three cycles.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from haihe.platform.context import PlatformContext
from haihe.platform.jobs.reconciler import Reconciler
from haihe.platform.models import Job, JobEvent, Membership, Org, Project, User, utcnow
from haihe.platform.settings import Settings
from haihe.schedulers.base import JobState
from haihe.schedulers.slurm.scheduler import SlurmScheduler
from haihe.schedulers.slurm.transport import CountingTransport
from tests.fixtures.figures import Figures

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
ARRAYS, TASKS = 10, 1000  # MaxArraySize defaults to 1001; MaxJobCount is raised in the cluster description


def _slurm(cluster: Any, *argv: str) -> str:
    out = subprocess.run(list(argv), capture_output=True, text=True, env=cluster.command_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


class LoadEnv:
    """A platform context on a fresh SQLite database whose "slurm" scheduler counts its transport's calls."""

    def __init__(self, cluster: Any, db_path: Path, transport: str) -> None:
        settings = Settings(database_url=f"sqlite:///{db_path}",
                            schedulers={"slurm": cluster.scheduler_url(transport)},
                            default_scheduler="slurm", reconcile_interval_s=0)
        self.ctx = PlatformContext.from_settings(settings)
        self.ctx.db.migrate()
        sched = self.ctx.scheduler("slurm")
        assert isinstance(sched, SlurmScheduler)
        self.counter = CountingTransport(sched.transport)
        sched.transport = self.counter  # the public seam: every Slurm round trip of the cycle passes here
        self.reconciler = Reconciler(self.ctx)
        self.transport = transport

    def owners(self) -> tuple[int, int, int]:
        name = f"load-{uuid.uuid4().hex[:8]}"
        with self.ctx.db.session() as s:
            org = Org(name=name)
            user = User(username=name)
            s.add_all([org, user])
            s.flush()
            project = Project(org_id=org.id, name="p")
            s.add_all([project, Membership(user_id=user.id, org_id=org.id, role="researcher")])
            s.flush()
            return org.id, project.id, user.id

    def track(self, refs: list[str]) -> dict[str, str]:
        """One platform job row per Slurm ref, SUBMITTED as right after sbatch; returns ref → job id."""
        org, project, user = self.owners()
        now = utcnow()
        ids = {ref: str(uuid.uuid4()) for ref in refs}
        spec = {"name": "load", "entrypoint": "true", "resources": {"nodes": 1, "cpus_per_task": 1,
                                                                     "time_limit": 1}}
        with self.ctx.db.session() as s:
            s.execute(insert(Job), [
                {"id": jid, "org_id": org, "project_id": project, "user_id": user, "name": f"load-{ref}",
                 "kind": "train", "scheduler": "slurm", "native_id": ref, "state": JobState.SUBMITTED.value,
                 "reason": "", "spec": spec, "array_size": 1, "nodes": [], "submit_attempts": 1,
                 "created_at": now, "submitted_at": now, "updated_at": now}
                for ref, jid in ids.items()])
        return ids

    def states(self, ids: dict[str, str]) -> dict[str, tuple[str, str]]:
        with self.ctx.db.session() as s:
            rows = s.execute(select(Job.native_id, Job.state, Job.reason).where(Job.id.in_(list(ids.values()))))
            return {str(r[0]): (r[1], r[2]) for r in rows}

    def cycle(self) -> tuple[Any, float]:
        self.counter.reset()
        t0 = time.perf_counter()
        report = self.reconciler.cycle("slurm")
        return report, time.perf_counter() - t0


@pytest.fixture(params=["cli", "rest"])
def load_env(request: pytest.FixtureRequest, slurm_cluster: Any, tmp_path: Path) -> Iterator[LoadEnv]:
    """squeue --json and slurmrestd's /jobs share the collapsed array record: both transports are loaded."""
    env = LoadEnv(slurm_cluster, tmp_path / "haihe.db", request.param)
    yield env
    env.ctx.close()


def test_10k_live_jobs_one_cycle_two_calls(slurm_cluster: Any, load_env: LoadEnv, figures: Figures) -> None:
    tag = f"load{uuid.uuid4().hex[:6]}"
    arrays: list[str] = []
    try:
        t0 = time.perf_counter()
        for _ in range(ARRAYS):
            arrays.append(_slurm(slurm_cluster, "sbatch", "--parsable", "--hold", f"--array=0-{TASKS - 1}",
                                 f"--job-name={tag}", "--time=1", "-o", "/dev/null", "--wrap", "true")
                          .strip().split(";")[0])
        submit_s = time.perf_counter() - t0
        refs = [f"{a}_{i}" for a in arrays for i in range(TASKS)]
        ids = load_env.track(refs)
        n = len(ids)
        assert n == ARRAYS * TASKS

        report, cycle_s = load_env.cycle()
        assert report.error is None, report.error
        assert report.live == n
        assert load_env.counter.total <= 2, load_env.counter.calls
        assert load_env.counter.calls.get("jobs") == 1, load_env.counter.calls
        states = load_env.states(ids)
        assert Counter(s for s, _ in states.values()) == {JobState.QUEUED.value: n}
        assert {r for _, r in states.values()} == {"JobHeldUser"}
        assert report.transitions == n
        first_calls = dict(load_env.counter.calls)
        t1 = time.perf_counter()
        raw = _slurm(slurm_cluster, "squeue", "-r", "-h", "-o", "%i %T %r")  # the same jobs, one per line
        raw_squeue_s = time.perf_counter() - t1
        assert sum(line.split("_")[0] in arrays for line in raw.splitlines()) == n

        # a second cycle with nothing changed: still one call, no writes
        report2, idle_s = load_env.cycle()
        assert report2.error is None and report2.transitions == 0
        assert load_env.counter.total <= 2, load_env.counter.calls

        # cancel two arrays: their 2,000 jobs end CANCELLED (quota settled) in one cycle; the rest stay queued
        cancelled, kept = arrays[:2], arrays[2:]
        _slurm(slurm_cluster, "scancel", *cancelled)
        report3, cancel_s = load_env.cycle()
        assert report3.error is None, report3.error
        assert load_env.counter.total <= 2, load_env.counter.calls
        states = load_env.states(ids)
        by_array = Counter((ref.split("_")[0] in cancelled, state) for ref, (state, _) in states.items())
        ended = len(cancelled) * TASKS
        assert by_array == {(True, JobState.CANCELLED.value): ended, (False, JobState.QUEUED.value): n - ended}
        assert report3.transitions >= ended  # the held rest moved up the queue too (queue_position is rewritten)
        with load_env.ctx.db.session() as s:
            finished = s.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.kind == "finished"))
        assert finished == ended  # one timeline event per ended job, none for the others
        assert not kept or all(states[f"{a}_0"][0] == JobState.QUEUED.value for a in kept)
    finally:
        if arrays:
            subprocess.run(["scancel", *arrays], env=slurm_cluster.command_env(), capture_output=True, timeout=60)
    figures.record(
        f"test_10k_live_jobs_one_cycle_two_calls[{load_env.transport}]",
        f"{n:,} live jobs ({ARRAYS} held Slurm arrays of {TASKS}) tracked in SQLite, real Slurm 22.05 "
        f"({load_env.transport} transport)",
        {"jobs": n, "scheduler_calls": sum(first_calls.values()), "calls": first_calls,
         "cycle_s": round(cycle_s, 2), "idle_cycle_s": round(idle_s, 2),
         "cancel_cycle_s": round(cancel_s, 2), "cancelled": ended,
         "raw_squeue_s": round(raw_squeue_s, 3), "ratio": round(cycle_s / raw_squeue_s, 1),
         "sbatch_arrays_s": round(submit_s, 2)})
