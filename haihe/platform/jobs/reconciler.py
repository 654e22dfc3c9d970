"""The reconciler: one loop per scheduler, one batched status call per cycle, the job state machine in one place.

Each cycle, per scheduler:
1. PENDING jobs (committed, not yet accepted by the scheduler; past the submit grace, or deferred by an outage):
   ask the scheduler which of their tags it already knows (``find``: one call) and adopt those native ids — the
   platform may have crashed between the scheduler's accept and its own commit; submit the rest, so no job is lost
   and none is submitted twice.
2. Live jobs: ONE ``status(refs)`` call; apply each answer through :func:`transition` (terminal states are final),
   writing the timeline (queued with reason and position, started on nodes, requeued, finished with exit code) and
   settling the quota reservation of every job that ended — exactly once, because settling happens in the same
   transaction that makes the job terminal. On a scheduler that enforces no walltime (Ray), jobs RUNNING past their
   limit plus a grace are stopped here and recorded TIMEOUT (``haihe.schedulers.walltime``).
A scheduler that cannot be reached leaves its jobs as they are and is retried next cycle.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from haihe.errors import HaiheError, ServiceUnavailable
from haihe.platform.context import PlatformContext
from haihe.platform.jobs import environment
from haihe.platform.jobs.service import add_event, attempt_tag, claim, dispatch, retry_lost
from haihe.platform.lease import LeaderLease
from haihe.platform.models import Job, utcnow
from haihe.schedulers import walltime
from haihe.schedulers.base import JobState, JobStatus, Scheduler

log = logging.getLogger(__name__)

LIVE_STATES = (JobState.SUBMITTED.value, JobState.QUEUED.value, JobState.RUNNING.value, JobState.PREEMPTED.value)
SUBMIT_GRACE = dt.timedelta(seconds=20)  # a PENDING job younger than this may still be inside its submit request
MISSES_BEFORE_LOST = 3


@dataclass
class CycleReport:
    scheduler: str
    live: int = 0
    adopted: int = 0
    submitted: int = 0
    transitions: int = 0
    lost: int = 0
    error: str | None = None
    scheduler_calls: int = 0
    stopped_overdue: int = 0


def transition(session: Session, ctx: PlatformContext, job: Job, st: JobStatus,
               ended: list[tuple[Job, JobStatus]] | None = None) -> bool:
    """Apply a scheduler's view of a job; returns True if anything changed. Terminal states are never left.

    A job that ended is settled at once, or appended to ``ended`` for the caller to settle as a batch."""
    current = JobState(job.state)
    if current.is_terminal():
        return False
    new = st.state
    changed = False
    now = utcnow()
    if st.queue_position != job.queue_position and new == JobState.QUEUED:
        job.queue_position = st.queue_position
        changed = True
    if new.is_terminal() and st.lost and retry_lost(ctx, session, job, st):
        return True  # PENDING again: the next cycle submits the new attempt
    if new != current:
        if new == JobState.QUEUED and current == JobState.RUNNING:
            add_event(session, job, "requeued", st.reason or "requeued by the scheduler")
        job.state = new.value
        changed = True
        if new == JobState.QUEUED:
            job.reason = st.reason or ""
            add_event(session, job, "queued", _queued_message(st), reason=st.reason, position=st.queue_position)
        elif new == JobState.RUNNING:
            job.started_at = job.started_at or _ts(st.started_at) or now
            job.nodes = list(st.nodes)
            job.queue_position = None
            job.reason = ""
            add_event(session, job, "started", f"started on {', '.join(st.nodes) or 'the cluster'}",
                      nodes=list(st.nodes))
        elif new == JobState.PREEMPTED:
            add_event(session, job, "requeued", st.reason or "preempted; will run again", reason=st.reason)
        elif new.is_terminal():
            job.ended_at = _ts(st.ended_at) or now
            job.started_at = job.started_at or _ts(st.started_at)
            job.exit_code = st.exit_code
            job.elapsed_s = st.elapsed_s
            job.alloc_cpus = st.alloc_cpus
            job.alloc_gpus = st.alloc_gpus
            job.queue_position = None
            if not (new == JobState.FAILED and job.reason.startswith(environment.FAILED_PREFIX)):  # keep its words
                job.reason = st.reason or ("" if new == JobState.SUCCEEDED else new.value.lower())
            add_event(session, job, "finished", _finished_message(new, st), exit_code=st.exit_code,
                      elapsed_s=st.elapsed_s)
            if ended is None:
                ctx.quota.settle(session, job, st)
            else:
                ended.append((job, st))
    elif new == JobState.QUEUED and (st.reason or "") != job.reason:
        job.reason = st.reason or ""
        add_event(session, job, "queued", _queued_message(st), reason=st.reason, position=st.queue_position)
        changed = True
    if changed:
        job.updated_at = now
    return changed


def _ts(value: float | None) -> dt.datetime | None:
    return dt.datetime.fromtimestamp(value, dt.UTC) if value else None


def _queued_message(st: JobStatus) -> str:
    pos = f", position {st.queue_position}" if st.queue_position else ""
    return f"queued ({st.reason or 'waiting for resources'}{pos})"


def _finished_message(state: JobState, st: JobStatus) -> str:
    code = f" with exit code {st.exit_code}" if st.exit_code is not None else ""
    why = f": {st.reason}" if st.reason and state != JobState.SUCCEEDED else ""
    return f"{state.value.lower()}{code}{why}"


def _stop_overdue(scheduler: Scheduler, jobs: Sequence[Job], statuses: dict[str, JobStatus]) -> int:
    """The walltime backstop of a scheduler that enforces none: stop every job RUNNING past its limit plus the
    grace, and make this cycle's answer for it TIMEOUT (terminal states are final: the scheduler's later
    "stopped" changes nothing). Returns how many were stopped; one that cannot be stopped now is tried next cycle."""
    limits = {j.native_id: 60.0 * int(j.spec.get("resources", {}).get("time_limit", 30))
              for j in jobs if j.native_id}
    stopped = 0
    for ref in walltime.overdue(statuses, limits):
        try:
            scheduler.cancel(ref)
        except HaiheError as exc:
            log.warning("could not stop overdue job %s on %s: %s", ref, scheduler.url, exc.message)
            continue
        st = statuses[ref]
        minutes = int(limits[ref] // 60)
        statuses[ref] = replace(
            st, state=JobState.TIMEOUT, ended_at=time.time(),
            reason=f"stopped by the platform: still running {walltime.DEFAULT_GRACE_S / 60:.0f} min after its "
                   f"time limit of {minutes} min")
        stopped += 1
    return stopped


@dataclass
class Reconciler:
    ctx: PlatformContext
    _misses: dict[str, int] = field(default_factory=dict)

    def cycle(self, scheduler_name: str) -> CycleReport:
        report = CycleReport(scheduler_name)
        try:
            self.ctx.scheduler(scheduler_name)  # a scheduler that cannot be built is reported, not raised
        except HaiheError as exc:
            report.error = exc.message
            return report
        with self.ctx.db.sessions() as session:
            try:
                self._pending(session, scheduler_name, report)
                self._live(session, scheduler_name, report)
            except ServiceUnavailable as exc:
                session.rollback()
                report.error = exc.message
                log.warning("reconcile %s: %s", scheduler_name, exc.message)
        return report

    def _pending(self, session: Session, name: str, report: CycleReport) -> None:
        # A job whose submit attempt already failed (its count was committed with the deferral) is in no request's
        # hands: retry it at once, so deferred work leaves within a cycle of the scheduler coming back. Only a job
        # never attempted may still be inside its submit request, and waits out the grace.
        cutoff = utcnow() - SUBMIT_GRACE
        pending = session.scalars(select(Job).where(
            Job.scheduler == name, Job.state == JobState.PENDING.value,
            or_(Job.created_at < cutoff, Job.submit_attempts > 0))).all()
        if not pending:
            return
        scheduler = self.ctx.scheduler(name)
        found = scheduler.find([attempt_tag(j) for j in pending])
        report.scheduler_calls += 1
        for job in pending:
            ref = found.get(attempt_tag(job))
            if ref is not None:
                job.native_id = ref
                job.state = JobState.SUBMITTED.value
                job.submitted_at = job.submitted_at or utcnow()
                job.reason = ""
                add_event(session, job, "submitted", f"found on {name} as {ref} after a restart (not resubmitted)",
                          native_id=ref)
                report.adopted += 1
        session.commit()
        for job in pending:
            if job.native_id is None and claim(session, job):  # not if the dispatcher has just taken it
                dispatch(self.ctx, session, job)
                report.submitted += 1

    def _live(self, session: Session, name: str, report: CycleReport) -> None:
        jobs: Sequence[Job] = session.scalars(
            select(Job).where(Job.scheduler == name, Job.state.in_(LIVE_STATES), Job.native_id.is_not(None))
        ).all()
        report.live = len(jobs)
        if not jobs:
            return
        scheduler = self.ctx.scheduler(name)
        statuses = scheduler.status([j.native_id for j in jobs if j.native_id])
        report.scheduler_calls += 1
        if not scheduler.enforces_walltime:
            report.stopped_overdue = _stop_overdue(scheduler, jobs, statuses)
        ended: list[tuple[Job, JobStatus]] = []
        for job in jobs:
            assert job.native_id is not None
            st = statuses.get(job.native_id)
            if st is None:
                misses = self._misses.get(job.id, 0) + 1
                self._misses[job.id] = misses
                if misses >= MISSES_BEFORE_LOST:
                    lost = JobStatus(ref=job.native_id, state=JobState.FAILED, lost=True,
                                     reason=f"lost: {name} has no record of job {job.native_id}")
                    transition(session, self.ctx, job, lost, ended)
                    self._misses.pop(job.id, None)
                    report.lost += 1
                continue
            self._misses.pop(job.id, None)
            if transition(session, self.ctx, job, st, ended):
                report.transitions += 1
        self.ctx.quota.settle_many(session, ended)
        session.commit()

    def run_once(self) -> list[CycleReport]:
        return [self.cycle(name) for name in self.ctx.settings.schedulers]


class PeriodicThread:
    """Runs ``work`` every ``interval`` seconds in a daemon thread until stopped; a failing run is logged."""

    def __init__(self, name: str, interval: float, work: Callable[[], object]) -> None:
        self.interval = interval
        self.work = work
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.work()
            except Exception:  # never let one bad run end the loop
                log.exception("%s failed", self._thread.name)


class ReconcilerThread(PeriodicThread):
    """The reconciler every ``interval`` seconds (started by the app's lifespan)."""

    def __init__(self, ctx: PlatformContext, interval: float, leader: LeaderLease | None = None) -> None:
        self.reconciler = Reconciler(ctx)
        work = leader.guard(self.reconciler.run_once) if leader else self.reconciler.run_once
        super().__init__("haihe-reconciler", interval, work)
