"""Walltime backstop for Ray, which enforces none of its own.

The first wall is inside each job: the entrypoint runs under coreutils ``timeout`` (translate.entrypoint), so a
job stops at its limit even if the platform is down, and exits 124 → TIMEOUT. This helper is the second wall,
for the reconciler: given this cycle's statuses and each job's limit, it stops jobs still RUNNING past the limit
plus a grace (a wrapper that could not kill its command, a job submitted by an older version).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from haihe.schedulers.base import JobState, JobStatus, Scheduler

log = logging.getLogger(__name__)

# The in-job wrapper gets the first go: SIGTERM at the limit, SIGKILL 30 s later.
DEFAULT_GRACE_S = 120.0


def overdue(
    statuses: Mapping[str, JobStatus],
    limits_s: Mapping[str, float],
    *,
    now: float | None = None,
    grace_s: float = DEFAULT_GRACE_S,
) -> list[str]:
    """Refs RUNNING longer than their limit plus ``grace_s`` (Ray's start time counts from acceptance)."""
    t = time.time() if now is None else now
    late: list[str] = []
    for ref, st in statuses.items():
        limit = limits_s.get(ref)
        if limit is None or st.state is not JobState.RUNNING or st.started_at is None:
            continue
        if t - st.started_at > limit + grace_s:
            late.append(ref)
    return sorted(late)


def stop_overdue(
    scheduler: Scheduler,
    statuses: Mapping[str, JobStatus],
    limits_s: Mapping[str, float],
    *,
    now: float | None = None,
    grace_s: float = DEFAULT_GRACE_S,
    on_stop: Callable[[str], None] | None = None,
) -> list[str]:
    """Cancel every overdue job; the caller records them as TIMEOUT (Ray itself will say STOPPED)."""
    late = overdue(statuses, limits_s, now=now, grace_s=grace_s)
    for ref in late:
        log.warning("stopping %s on %s: past its walltime", ref, scheduler.url)
        scheduler.cancel(ref)
        if on_stop is not None:
            on_stop(ref)
    return late
