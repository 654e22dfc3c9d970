"""Turn service results into the plain dicts templates draw: job rows, quota bars, charges, cluster capacity.

Pure functions over what the platform services return; no access decisions are made here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from haihe.platform.context import PlatformContext
from haihe.platform.jobs.cluster_status import scheduler_infos
from haihe.platform.models import Job, LedgerEntry
from haihe.schedulers.base import ClusterInfo, JobState

ACTIVE_STATES = (JobState.PENDING.value, JobState.SUBMITTED.value, JobState.QUEUED.value, JobState.RUNNING.value,
                 JobState.PREEMPTED.value)
STATE_TONE = {"PENDING": "wait", "SUBMITTED": "wait", "QUEUED": "wait", "PREEMPTED": "wait", "RUNNING": "run",
              "SUCCEEDED": "ok", "FAILED": "bad", "CANCELLED": "muted", "TIMEOUT": "bad"}
# display units of the quota fields: divide by the factor, label from the catalogue
QUOTA_UNITS = {"gpu_hours": 1.0, "cpu_hours": 1.0, "storage_bytes": 1024.0**3, "requests_per_month": 1.0,
               "max_jobs": 1.0, "max_gpus": 1.0}


def job_row(job: Job) -> dict[str, Any]:
    res = job.spec.get("resources", {})
    return {
        "id": job.id, "name": job.name, "state": job.state, "tone": STATE_TONE.get(job.state, "muted"),
        "org": job.org.name, "project": job.project.name, "user": job.user.username, "kind": job.kind,
        "scheduler": job.scheduler, "native_id": job.native_id, "partition": res.get("partition") or "",
        "nodes": res.get("nodes", 1), "gpus_per_node": res.get("gpus_per_node", 0),
        "time_limit": res.get("time_limit"), "queue_position": job.queue_position, "reason": job.reason,
        "created_at": job.created_at, "started_at": job.started_at, "ended_at": job.ended_at,
        "elapsed_s": job.elapsed_s, "exit_code": job.exit_code, "terminal": JobState(job.state).is_terminal(),
        "recipe": job.spec.get("recipe") or "", "allocated_nodes": list(job.nodes or []),
    }


def quota_bars(shown: dict[str, Any]) -> list[dict[str, Any]]:
    """One bar per resource: used and reserved as percentages of the limit (capped), and what is left."""
    bars = []
    for b in shown["balances"]:
        unit = QUOTA_UNITS.get(b["resource"], 1.0)
        limit = b["limit"]
        used, reserved = b["used"] / unit, b["reserved"] / unit
        if limit:
            pct_used = min(100.0, 100.0 * used / (limit / unit))
            pct_reserved = min(100.0 - pct_used, 100.0 * reserved / (limit / unit))
        else:
            pct_used = pct_reserved = 0.0
        bars.append({
            "resource": b["resource"], "limit": None if limit is None else limit / unit, "used": used,
            "reserved": reserved, "left": None if b["left"] is None else max(b["left"], 0) / unit,
            "pct_used": round(pct_used, 1), "pct_reserved": round(pct_reserved, 1), "warning": b["warning"],
            "over": limit is not None and (b["left"] or 0) < 0,
        })
    return bars


def job_charges(session: Session, job_id: str) -> dict[str, dict[str, float]]:
    """The job's ledger lines summed by kind and resource, in hours (reserve shows what is still held)."""
    rows = session.execute(
        select(LedgerEntry.kind, LedgerEntry.resource, func.sum(LedgerEntry.amount))
        .where(LedgerEntry.job_id == job_id, LedgerEntry.kind.in_(("reserve", "charge")))
        .group_by(LedgerEntry.kind, LedgerEntry.resource)).all()
    out: dict[str, dict[str, float]] = {"reserve": {}, "charge": {}}
    for kind, resource, total in rows:
        if resource in ("gpu_s", "cpu_s"):
            out[kind][resource.removesuffix("_s") + "_hours"] = round(float(total or 0.0) / 3600.0, 4)
    return out


def describe_all(ctx: PlatformContext, names: Iterable[str]) -> list[dict[str, Any]]:
    """Each scheduler's ``describe()`` (partitions, nodes, free GPUs), or the reason it could not answer."""
    return [{"name": name, "url": ctx.settings.schedulers.get(name, ""), "info": info, "error": error}
            for name, info, error in scheduler_infos(ctx, names)]


def partition_table(infos: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``scheduler/partition`` -> limits and free resources, for the new-job form's side panel."""
    table: dict[str, dict[str, Any]] = {}
    for entry in infos:
        info: ClusterInfo | None = entry["info"]
        if info is None:
            continue
        for p in info.partitions:
            table[f"{entry['name']}/{p.name}"] = {
                "scheduler": entry["name"], "partition": p.name, "nodes": p.nodes, "cpus_total": p.cpus_total,
                "cpus_free": p.cpus_free, "gpus_total": p.gpus_total, "gpus_free": p.gpus_free,
                "max_time_min": p.max_time_min, "default": p.default, "state": p.state, "qos": list(info.qos),
            }
    return table
