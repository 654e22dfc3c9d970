"""What every signed-in user may see of the compute side (issue 17): each scheduler's partitions, nodes, free
CPUs and GPUs, how many jobs wait and run, and the caller's own waiting jobs with why they wait, in words.

Cluster figures are no tenant's data (every user of a partition sees its load in ``sinfo`` too); the job list is
the caller's own. ``describe()`` answers from each scheduler's short-lived cache, so the page is cheap to poll.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

from sqlalchemy.orm import Session

from haihe.errors import HaiheError
from haihe.platform.access import Principal
from haihe.platform.context import PlatformContext
from haihe.platform.jobs import service as jobs
from haihe.schedulers.base import ClusterInfo, JobState
from haihe.schedulers.slurm.reasons import explain

WAITING = (JobState.PENDING.value, JobState.SUBMITTED.value, JobState.QUEUED.value)


def scheduler_infos(ctx: PlatformContext, names: Iterable[str]) -> list[tuple[str, ClusterInfo | None, str]]:
    """Each named scheduler's ``describe()``, or the reason it could not answer (one outage never hides the others)."""
    out: list[tuple[str, ClusterInfo | None, str]] = []
    for name in names:
        try:
            out.append((name, ctx.scheduler(name).describe(), ""))
        except HaiheError as exc:
            out.append((name, None, exc.message))
    return out


def describe_schedulers(ctx: PlatformContext) -> list[dict[str, Any]]:
    """Every configured scheduler's partitions, nodes and load, as the API serves them."""
    out = []
    for name, info, error in scheduler_infos(ctx, sorted(ctx.settings.schedulers)):
        entry: dict[str, Any] = {"name": name, "ok": info is not None, "error": error}
        if info is not None:
            entry.update(
                partitions=[asdict(p) for p in info.partitions], nodes=[asdict(n) for n in info.nodes],
                waiting=info.queue_length, running=info.running, cpus_total=info.cpus_total,
                gpus_total=info.gpus_total, gpus_free=sum(n.gpus_free for n in info.nodes))
        out.append(entry)
    return out


def my_waiting_jobs(session: Session, principal: Principal, limit: int = 50) -> list[dict[str, Any]]:
    page = jobs.list_jobs(session, principal, states=WAITING, mine=True, limit=limit)
    return [{"id": j.id, "name": j.name, "org": j.org.name, "project": j.project.name, "scheduler": j.scheduler,
             "state": j.state, "queue_position": j.queue_position, "reason": j.reason or "",
             "why": explain(j.reason) or ("waiting to be handed to the scheduler" if j.state == "PENDING" else "")}
            for j in page.items]


def cluster_status(ctx: PlatformContext, session: Session, principal: Principal) -> dict[str, Any]:
    return {"schedulers": describe_schedulers(ctx), "my_waiting_jobs": my_waiting_jobs(session, principal)}
