"""Quotas and the ledger: one append-only ledger for training and inference; balances are derived from it.

A job reserves its maximum charge at submit (nodes × GPUs × walltime, likewise CPUs), inside the submit
transaction and under a lock on the quota rows it draws on (``SELECT … FOR UPDATE`` on PostgreSQL; on SQLite the
submit transaction already holds the database's single write lock), so concurrent submissions never overspend.
When the job ends the reconciler settles it: the reservation is released and the accounted usage charged
(Slurm: sacct elapsed × allocated TRES; Ray: duration × resources). Every entry carries a ``ref`` that is unique,
so settling twice (a restart, a replayed cycle) charges once.

Endpoints draw on the same ledger through ``platform.endpoint_quota`` (a reservation per window, replica-time
charged with source ``endpoint``).

Units in the ledger: ``gpu_s`` and ``cpu_s`` (seconds), ``requests``, ``storage_bytes``. Entries carry the period
(YYYY-MM) the job was created in, so a reservation and its release always meet in one period.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from haihe.errors import InvalidInput, NotFound, QuotaExceeded
from haihe.platform import access, audit
from haihe.platform.access import Principal
from haihe.platform.datasets.rows import Dataset, DatasetVersion, VersionState
from haihe.platform.models import (
    Job,
    JobEnvironment,
    LedgerEntry,
    Org,
    Project,
    Quota,
    QuotaEvent,
    User,
    utcnow,
)
from haihe.schedulers.base import JobState, JobStatus, Launch

LIMIT_FIELDS = ("gpu_hours", "cpu_hours", "storage_bytes", "requests_per_month", "max_jobs", "max_gpus")
# quota field -> (ledger resource, seconds-or-unit per quota unit, label)
METERED = {"gpu_hours": ("gpu_s", 3600.0, "GPU-hours"), "cpu_hours": ("cpu_s", 3600.0, "CPU-hours"),
           "storage_bytes": ("storage_bytes", 1.0, "bytes of storage"),
           "requests_per_month": ("requests", 1.0, "inference requests")}
ABSURD = {"gpu_hours": 1e9, "cpu_hours": 1e10, "storage_bytes": 1 << 60, "requests_per_month": 1e13,
          "max_jobs": 1_000_000, "max_gpus": 1_000_000}
MONTH_RE = re.compile(r"\d{4}-(0[1-9]|1[0-2])")
ACTIVE = (JobState.PENDING.value, JobState.SUBMITTED.value, JobState.QUEUED.value, JobState.RUNNING.value,
          JobState.PREEMPTED.value)


def period_of(when: dt.datetime | None = None) -> str:
    return (when or utcnow()).strftime("%Y-%m")


def check_month(month: str) -> str:
    if not MONTH_RE.fullmatch(month):
        raise InvalidInput(f"month {month!r} must look like 2026-11", field="month")
    return month


def job_need(launch: Launch, array_size: int = 1) -> dict[str, float]:
    """The most a job can cost: every GPU and CPU it asks for, for its whole walltime, for every array task."""
    r = launch.resources
    seconds = r.time_limit_min * 60.0 * max(1, array_size)
    return {"gpu_s": r.total_gpus * seconds, "cpu_s": r.total_cpus * seconds}


# -- balances -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Balance:
    resource: str  # quota field name
    limit: float | None
    used: float
    reserved: float
    warn_fraction: float

    @property
    def left(self) -> float | None:
        return None if self.limit is None else self.limit - self.used - self.reserved

    @property
    def fraction(self) -> float | None:
        if self.limit is None or self.limit == 0:
            return None
        return (self.used + self.reserved) / self.limit

    def to_dict(self) -> dict[str, Any]:
        return {"resource": self.resource, "limit": self.limit, "used": round(self.used, 6),
                "reserved": round(self.reserved, 6), "left": None if self.left is None else round(self.left, 6),
                "fraction": None if self.fraction is None else round(self.fraction, 4),
                "warning": self.fraction is not None and self.fraction >= self.warn_fraction}


def _sums(session: Session, org_id: int, project_id: int | None, period: str | None) -> dict[tuple[str, str], float]:
    q = select(LedgerEntry.kind, LedgerEntry.resource, func.coalesce(func.sum(LedgerEntry.amount), 0.0)).where(
        LedgerEntry.org_id == org_id)
    if project_id is not None:
        q = q.where(LedgerEntry.project_id == project_id)
    if period is not None:
        q = q.where(LedgerEntry.period == period)
    rows = session.execute(q.group_by(LedgerEntry.kind, LedgerEntry.resource)).all()
    return {(kind, res): float(total) for kind, res, total in rows}


def _active_jobs(session: Session, org_id: int, project_id: int | None, exclude: str | None) -> tuple[int, int]:
    """(count, GPUs) of the scope's jobs that hold resources or may soon: one aggregate row, whatever the number of
    queued jobs (a submit asks this of an org with a ``max_jobs``/``max_gpus`` quota, and such an org may have
    thousands queued)."""
    resources = Job.spec["resources"]
    nodes, per_node = resources["nodes"].as_integer(), resources["gpus_per_node"].as_integer()
    gpus = func.coalesce(nodes, 1) * func.coalesce(per_node, 0) * func.coalesce(func.nullif(Job.array_size, 0), 1)
    q = select(func.count(), func.coalesce(func.sum(gpus), 0)).where(Job.org_id == org_id, Job.state.in_(ACTIVE))
    if project_id is not None:
        q = q.where(Job.project_id == project_id)
    if exclude is not None:
        q = q.where(Job.id != exclude)
    count, total = session.execute(q).one()
    return int(count), int(total)


def balances(session: Session, quota: Quota | None, org_id: int, project_id: int | None,
             period: str | None = None) -> list[Balance]:
    period = period or period_of()
    sums = _sums(session, org_id, project_id, None if quota is not None and quota.period == "none" else period)
    warn = quota.warn_fraction if quota else 0.8
    out = []
    for name, (res, unit, _label) in METERED.items():
        limit = getattr(quota, name) if quota else None
        used = sums.get(("charge", res), 0.0) / unit
        reserved = sums.get(("reserve", res), 0.0) / unit
        if name == "storage_bytes":  # a level, not a flow: what the org's datasets hold now (orgs own datasets)
            used, reserved = (float(storage_held(session, org_id)) if project_id is None else 0.0), 0.0
        out.append(Balance(name, limit, used, reserved, warn))
    count, gpus = _active_jobs(session, org_id, project_id, None)
    out.append(Balance("max_jobs", quota.max_jobs if quota else None, float(count), 0.0, warn))
    out.append(Balance("max_gpus", quota.max_gpus if quota else None, float(gpus), 0.0, warn))
    return out


def storage_held(session: Session, org_id: int) -> int:
    """Bytes the org holds: its datasets' committed versions and uploads in progress (declared sizes), deleted
    datasets included until GC removes their objects, and its job environments built on nodes (not yet removed)."""
    q = (select(func.coalesce(func.sum(DatasetVersion.total_bytes), 0))
         .join(Dataset, DatasetVersion.dataset_id == Dataset.id)
         .where(Dataset.org_id == org_id,
                DatasetVersion.state.in_([VersionState.COMMITTED.value, VersionState.UPLOADING.value])))
    envs = (select(func.coalesce(func.sum(JobEnvironment.bytes), 0))
            .where(JobEnvironment.org_id == org_id, JobEnvironment.pruned_at.is_(None)))
    return int(session.scalar(q) or 0) + int(session.scalar(envs) or 0)


def check_storage(session: Session, org_id: int, adding: int) -> None:
    """Refuse a dataset version that would take the org over its storage quota; holds the quota row's lock for the
    rest of the transaction, so two uploads cannot both take the last bytes."""
    for q in _lock_quotas(session, org_id, None):
        if q.storage_bytes is None:
            continue
        held = storage_held(session, org_id)
        if held + adding > q.storage_bytes:
            left = max(q.storage_bytes - held, 0)
            raise QuotaExceeded(f"quota storage_bytes of {_scope_name(session, q)} exceeded: this version needs "
                                f"{adding} bytes, {left} of {q.storage_bytes} left", field="files",
                                quota="storage_bytes", need=adding, left=left, limit=q.storage_bytes)


# -- the gate -----------------------------------------------------------------------------------------------------
def _lock_quotas(session: Session, org_id: int, project_id: int | None) -> list[Quota]:
    """The quota rows a reservation draws on, locked for the rest of the transaction."""
    scope = (Quota.org_id == org_id) & (Quota.project_id.is_(None) | (Quota.project_id == project_id))
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        # the first write of the transaction takes SQLite's one write lock; bump the rows so that even a
        # transaction that has not written yet serialises here
        session.execute(update(Quota).where(scope).values(version=Quota.version + 1))
        return list(session.scalars(select(Quota).where(scope)).all())
    return list(session.scalars(select(Quota).where(scope).with_for_update()).all())


def _scope_name(session: Session, q: Quota) -> str:
    org = session.get(Org, q.org_id)
    name = org.name if org else str(q.org_id)
    if q.project_id is not None:
        project = session.get(Project, q.project_id)
        name += f"/{project.name if project else q.project_id}"
    return name


def check_hours(session: Session, org_id: int, project_id: int | None, need: dict[str, float], period: str, *,
                what: str, basis: str, field_name: str) -> list[Quota]:
    """Lock the quota rows ``need`` (gpu_s/cpu_s) draws on and raise QuotaExceeded, naming the quota, when any of
    them has less GPU/CPU-hours left; returns the locked rows (jobs check their concurrency limits on them)."""
    rows = _lock_quotas(session, org_id, project_id)
    for q in rows:
        sums = _sums(session, org_id, q.project_id, None if q.period == "none" else period)
        for name in ("gpu_hours", "cpu_hours"):
            limit = getattr(q, name)
            res, unit, label = METERED[name]
            if limit is None or not need.get(res):
                continue
            left = limit * unit - sums.get(("charge", res), 0.0) - sums.get(("reserve", res), 0.0)
            if need[res] > left + 1e-9:
                raise QuotaExceeded(
                    f"quota {name} of {_scope_name(session, q)} exceeded: {what} needs "
                    f"{need[res] / unit:.2f} {label} ({basis}), "
                    f"{max(left, 0) / unit:.2f} of {limit:g} left"
                    + (f" in {period}" if q.period == "monthly" else ""),
                    field=field_name, quota=name, need=round(need[res] / unit, 4),
                    left=round(max(left, 0) / unit, 4), limit=limit)
    return rows


@dataclass
class LedgerQuotaGate:
    """The QuotaGate the platform uses: reserve at submit, release or settle after."""

    now: Any = field(default=utcnow)

    def reserve(self, session: Session, job: Job, launch: Launch) -> None:
        need = job_need(launch, job.array_size)
        gpus_needed = launch.resources.total_gpus * max(1, job.array_size)
        period = period_of(job.created_at or self.now())
        locked = check_hours(session, job.org_id, job.project_id, need, period, what="this job",
                             basis="nodes × per-node × walltime", field_name="resources")
        for q in locked:
            scope_project = q.project_id
            if q.max_jobs is not None or q.max_gpus is not None:
                count, gpus = _active_jobs(session, job.org_id, scope_project, job.id)
                if q.max_jobs is not None and count + 1 > q.max_jobs:
                    raise QuotaExceeded(f"quota max_jobs of {_scope_name(session, q)} reached: {count} jobs active, "
                                        f"limit {q.max_jobs}", field="resources", quota="max_jobs", need=1,
                                        left=max(q.max_jobs - count, 0), limit=q.max_jobs)
                if q.max_gpus is not None and gpus_needed and gpus + gpus_needed > q.max_gpus:
                    raise QuotaExceeded(f"quota max_gpus of {_scope_name(session, q)} exceeded: this job needs "
                                        f"{gpus_needed} GPUs, {max(q.max_gpus - gpus, 0)} of {q.max_gpus} free",
                                        field="resources.gpus_per_node", quota="max_gpus", need=gpus_needed,
                                        left=max(q.max_gpus - gpus, 0), limit=q.max_gpus)
        for res, amount in need.items():
            if amount:
                session.add(LedgerEntry(period=period, org_id=job.org_id, project_id=job.project_id,
                                        user_id=job.user_id, job_id=job.id, kind="reserve", resource=res,
                                        amount=amount, ref=f"reserve:{attempt_key(job)}:{res}",
                                        note="maximum charge" if (job.attempt or 1) <= 1 else
                                        f"maximum charge, attempt {job.attempt}"))
        session.flush()
        record_crossings(session, job.org_id, job.project_id, period, quotas=locked)

    def release(self, session: Session, job: Job) -> None:
        self._close_many(session, [(job, {})])

    def settle(self, session: Session, job: Job, status: JobStatus) -> None:
        self.settle_many(session, [(job, status)])

    def settle_many(self, session: Session, ended: Sequence[tuple[Job, JobStatus]]) -> None:
        """Settle every job that ended in one reconcile cycle with a few queries, not a few per job."""
        self._close_many(session, [(job, _charge(job, status)) for job, status in ended])

    def _close_many(self, session: Session, items: Sequence[tuple[Job, dict[str, float]]]) -> None:
        if not items:
            return
        ids = [job.id for job, _ in items]
        keys = {job.id: attempt_key(job) for job, _ in items}
        closed: set[str] = set()
        reserved: dict[str, dict[str, float]] = {}
        with session.no_autoflush:  # the cycle's pending job updates go out in one flush below
            for chunk in _chunks(ids):
                closed.update(session.scalars(select(LedgerEntry.ref).where(
                    LedgerEntry.ref.in_([f"closed:{keys[i]}" for i in chunk]))))
                for job_id, res, total in session.execute(
                        select(LedgerEntry.job_id, LedgerEntry.resource, func.sum(LedgerEntry.amount))
                        .where(LedgerEntry.job_id.in_(chunk), LedgerEntry.kind == "reserve")
                        .group_by(LedgerEntry.job_id, LedgerEntry.resource)):
                    if total:
                        reserved.setdefault(str(job_id), {})[res] = float(total)
        scopes: set[tuple[int, int | None, str]] = set()
        rows: list[dict[str, Any]] = []
        for job, charge in items:
            key = keys[job.id]
            if f"closed:{key}" in closed:
                continue  # settled already: exactly once per attempt
            closed.add(f"closed:{key}")
            period = period_of(job.created_at)
            scopes.add((job.org_id, job.project_id, period))
            base = {"period": period, "org_id": job.org_id, "project_id": job.project_id, "user_id": job.user_id,
                    "job_id": job.id}
            of = "" if (job.attempt or 1) <= 1 else f", attempt {job.attempt}"
            rows.append({**base, "kind": "marker", "resource": "none", "amount": 0.0, "ref": f"closed:{key}",
                         "note": f"job ended {job.state}{of}"})
            for res, amount in reserved.get(str(job.id), {}).items():
                rows.append({**base, "kind": "reserve", "resource": res, "amount": -amount,
                             "ref": f"release:{key}:{res}", "note": f"reservation released{of}"})
            for res, amount in charge.items():
                if amount > 0:
                    rows.append({**base, "kind": "charge", "resource": res, "amount": amount,
                                 "ref": f"charge:{key}:{res}", "note": f"accounted usage{of}"})
        if not rows:
            return
        try:  # one executemany for the whole batch (ORM adds would be one INSERT per entry)
            session.execute(insert(LedgerEntry), rows)
        except IntegrityError:  # a concurrent settle got there first; the next cycle redoes this one's work
            session.rollback()
            return
        for org_id, project_id, period in scopes:
            record_crossings(session, org_id, project_id, period)


def attempt_key(job: Job) -> str:
    """The ledger key of a job's current attempt: its id, then ``<id>#2``, ``<id>#3`` after lost attempts."""
    return job.id if (job.attempt or 1) <= 1 else f"{job.id}#{job.attempt}"


def _charge(job: Job, status: JobStatus) -> dict[str, float]:
    """What an ended job is charged: accounted wall time × allocated GPUs and CPUs (the spec's when unreported)."""
    elapsed = status.elapsed_s
    if elapsed is None and job.started_at and job.ended_at:
        elapsed = (job.ended_at - job.started_at).total_seconds()
    elapsed = max(0.0, elapsed or 0.0)
    res = job.spec.get("resources", {})
    nodes = int(res.get("nodes", 1))
    gpus = status.alloc_gpus if status.alloc_gpus is not None else nodes * int(res.get("gpus_per_node", 0))
    cpus = status.alloc_cpus if status.alloc_cpus is not None else (
        nodes * int(res.get("tasks_per_node", 1)) * int(res.get("cpus_per_task", 1)))
    return {"gpu_s": elapsed * gpus, "cpu_s": elapsed * cpus}


def _chunks(values: Sequence[str], size: int = 500) -> Iterator[Sequence[str]]:
    for i in range(0, len(values), size):
        yield values[i:i + size]


def record_usage(session: Session, *, org_id: int, resource: str, amount: float, source: str,
                 project_id: int | None = None, user_id: int | None = None, endpoint: str | None = None,
                 ref: str | None = None, note: str = "", when: dt.datetime | None = None) -> None:
    """Charge usage that has no reservation (inference requests, storage bytes), idempotent through ``ref``."""
    if ref is not None and session.scalar(select(LedgerEntry.id).where(LedgerEntry.ref == ref)) is not None:
        return
    session.add(LedgerEntry(period=period_of(when), org_id=org_id, project_id=project_id, user_id=user_id,
                            endpoint=endpoint, kind="charge", resource=resource, amount=amount, source=source,
                            ref=ref, note=note))


def check_requests(session: Session, org_id: int, count: int = 1) -> None:
    """Refuse inference when the org's monthly request quota is spent (the gateway calls this)."""
    q = session.scalar(select(Quota).where(Quota.org_id == org_id, Quota.project_id.is_(None)))
    if q is None or q.requests_per_month is None:
        return
    used = _sums(session, org_id, None, period_of()).get(("charge", "requests"), 0.0)
    if used + count > q.requests_per_month:
        raise QuotaExceeded(f"quota requests_per_month exceeded: {int(used)} of {q.requests_per_month} used "
                            f"in {period_of()}", field="requests_per_month", quota="requests_per_month",
                            need=count, left=max(q.requests_per_month - int(used), 0), limit=q.requests_per_month)


def record_crossings(session: Session, org_id: int, project_id: int | None, period: str, *,
                     quotas: Sequence[Quota] | None = None) -> None:
    """Record (once per period) a quota crossing its warning level or reaching its limit; ``quotas``: the org's and
    project's quota rows when the caller has them already (a reservation locked them)."""
    scopes = [(org_id, None)] + ([(org_id, project_id)] if project_id is not None else [])
    for o, p in scopes:
        if quotas is not None:
            q = next((r for r in quotas if r.org_id == o and r.project_id == p), None)
        else:
            q = session.scalar(select(Quota).where(Quota.org_id == o, (Quota.project_id == p) if p is not None
                                                   else Quota.project_id.is_(None)))
        if q is None:
            continue
        for b in balances(session, q, o, p, period):
            if b.resource not in METERED or b.fraction is None:
                continue
            for level, threshold in (("warning", q.warn_fraction), ("limit", 1.0)):
                if b.fraction >= threshold - 1e-9:
                    exists = session.scalar(select(QuotaEvent.id).where(
                        QuotaEvent.org_id == o, QuotaEvent.project_id.is_(p) if p is None
                        else QuotaEvent.project_id == p, QuotaEvent.resource == b.resource,
                        QuotaEvent.level == level, QuotaEvent.period == period))
                    if exists is None:
                        session.add(QuotaEvent(org_id=o, project_id=p, resource=b.resource, level=level,
                                               period=period, message=f"{b.resource} at {b.fraction:.0%} of "
                                               f"{b.limit:g} ({level})"))


# -- administration -------------------------------------------------------------------------------------------------
def _scope(session: Session, principal: Principal, org: str, project: str | None,
           write: bool) -> tuple[Org, Project | None]:
    if write and project is None:
        access.require_platform_admin(principal)
        return access.org_for_read(session, principal, org), None
    org_row = access.org_for_admin(session, principal, org, write=False) if write else \
        access.org_for_read(session, principal, org)
    proj = access.project_for_read(session, principal, org, project) if project else None
    return org_row, proj


def set_quota(session: Session, principal: Principal, org: str, project: str | None,
              limits: dict[str, Any]) -> Quota:
    """Create or change a quota; None clears a limit. A project's limits must fit inside its org's."""
    org_row, proj = _scope(session, principal, org, project, write=True)
    for name, value in limits.items():
        if name in LIMIT_FIELDS and value is not None:
            if not math.isfinite(value):  # NaN compares false with everything: it would pass as no limit at all
                raise InvalidInput(f"{name} must be a finite number", field=name)
            if value < 0:
                raise InvalidInput(f"{name} must not be negative", field=name)
            if value > ABSURD[name]:
                raise InvalidInput(f"{name} {value} is not a plausible limit (max {ABSURD[name]:g})", field=name)
    if "period" in limits and limits["period"] not in ("monthly", "none"):
        raise InvalidInput("period must be monthly or none", field="period")
    if "warn_fraction" in limits and not 0 < float(limits["warn_fraction"]) <= 1:  # NaN fails this too
        raise InvalidInput("warn_fraction must be in (0, 1]", field="warn_fraction")
    q = session.scalar(select(Quota).where(Quota.org_id == org_row.id, Quota.project_id == proj.id if proj
                                           else Quota.project_id.is_(None)))
    if q is None:
        q = Quota(org_id=org_row.id, project_id=proj.id if proj else None, period="monthly", warn_fraction=0.8,
                  version=0)
        session.add(q)
    changes = {name: {"old": getattr(q, name, None), "new": value} for name, value in limits.items()
               if getattr(q, name, None) != value}  # what the audit log shows: each limit before and after
    for name, value in limits.items():
        setattr(q, name, value)
    if proj is not None:
        parent = session.scalar(select(Quota).where(Quota.org_id == org_row.id, Quota.project_id.is_(None)))
        for name in LIMIT_FIELDS:
            mine, theirs = getattr(q, name), getattr(parent, name) if parent else None
            if mine is not None and theirs is not None and mine > theirs:
                raise InvalidInput(f"{name} {mine:g} is above the org's limit {theirs:g}: project limits nest "
                                   "inside the org's", field=name)
    q.updated_at = utcnow()
    session.flush()
    audit.record(session, principal, "quota.set", target_type="quota",
                 target=f"{org}/{project}" if project else org, org_id=org_row.id,
                 details=changes)
    return q


def show(session: Session, principal: Principal, org: str, project: str | None,
         period: str | None = None) -> dict[str, Any]:
    org_row, proj = _scope(session, principal, org, project, write=False)
    q = session.scalar(select(Quota).where(Quota.org_id == org_row.id, Quota.project_id == proj.id if proj
                                           else Quota.project_id.is_(None)))
    period = check_month(period) if period else period_of()
    events = session.scalars(select(QuotaEvent).where(QuotaEvent.org_id == org_row.id).order_by(
        QuotaEvent.id.desc()).limit(50)).all()
    return {
        "scope": f"{org}/{project}" if project else org,
        "org_status": org_row.status,
        "period": period if not q or q.period == "monthly" else "all time",
        "quota": None if q is None else {k: getattr(q, k) for k in (*LIMIT_FIELDS, "period", "warn_fraction")},
        "balances": [b.to_dict() for b in balances(session, q, org_row.id, proj.id if proj else None, period)],
        "events": [{"at": e.at.isoformat(), "resource": e.resource, "level": e.level, "period": e.period,
                    "message": e.message, "project_id": e.project_id} for e in events
                   if proj is None or e.project_id in (None, proj.id)],
    }


REPORT_COLUMNS = ("month", "org", "project", "user", "source", "resource", "amount", "unit")
_UNITS = {"gpu_s": ("gpu_hours", 3600.0, "GPU-hours"), "cpu_s": ("cpu_hours", 3600.0, "CPU-hours"),
          "requests": ("requests", 1.0, "requests"), "storage_bytes": ("storage_bytes", 1.0, "bytes")}


def usage_report(session: Session, principal: Principal, month: str, org: str | None = None) -> list[dict[str, Any]]:
    """Charged usage of a month per org, project, user, source and resource — the sum of the ledger's charges."""
    check_month(month)
    q = (select(Org.name, Project.name, User.username, LedgerEntry.source, LedgerEntry.resource,
                func.sum(LedgerEntry.amount))
         .join(Org, Org.id == LedgerEntry.org_id)
         .outerjoin(Project, Project.id == LedgerEntry.project_id)
         .outerjoin(User, User.id == LedgerEntry.user_id)
         .where(LedgerEntry.kind == "charge", LedgerEntry.period == month))
    if org is not None:
        org_row = access.org_for_admin(session, principal, org, write=False)
        q = q.where(LedgerEntry.org_id == org_row.id)
    else:
        access.require_platform_admin(principal)
    rows = session.execute(q.group_by(Org.name, Project.name, User.username, LedgerEntry.source,
                                      LedgerEntry.resource).order_by(Org.name, Project.name, User.username)).all()
    out = []
    for org_name, project_name, username, source, resource, total in rows:
        name, unit, label = _UNITS.get(resource, (resource, 1.0, resource))
        out.append({"month": month, "org": org_name, "project": project_name or "", "user": username or "",
                    "source": source, "resource": name, "amount": round(float(total) / unit, 6), "unit": label})
    return out


def _cell(value: Any) -> Any:
    """A leading = + - @ (or tab, CR) would start a formula in a spreadsheet: neutralise it. An empty string stays
    empty (``"" in "=+-@"`` is true in Python: it once wrote an empty project as ``'``)."""
    if isinstance(value, str) and value and value[0] in "=+-@\t\r":
        return f"'{value}"
    return value


def report_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(REPORT_COLUMNS), lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buf.getvalue()


def ledger_total(session: Session, month: str, org_id: int | None = None) -> dict[str, float]:
    q = select(LedgerEntry.resource, func.sum(LedgerEntry.amount)).where(LedgerEntry.kind == "charge",
                                                                         LedgerEntry.period == month)
    if org_id is not None:
        q = q.where(LedgerEntry.org_id == org_id)
    return {res: float(total) for res, total in session.execute(q.group_by(LedgerEntry.resource)).all()}


def require_org(session: Session, name: str) -> Org:
    org = session.scalar(select(Org).where(Org.name == name))
    if org is None:
        raise NotFound(f"org {name!r} not found", field="org")
    return org
