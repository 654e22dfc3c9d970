"""The platform's walltime backstop, for schedulers that enforce none of their own (Ray).

The first wall is inside each job: on such a scheduler the entrypoint runs under coreutils ``timeout``, so a job
stops at its limit even while the platform is down, and exits 124 → TIMEOUT. This is the second wall, used by the
reconciler each cycle: jobs still RUNNING past their limit plus a grace (a wrapper that could not kill its command,
a program that ignores SIGTERM and outlives the KILL, a job submitted by an older version) are stopped by the
platform and recorded as TIMEOUT.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from haihe.schedulers.base import JobState, JobStatus

# The in-job wrapper gets the first go: SIGTERM at the limit, SIGKILL 30 s later.
DEFAULT_GRACE_S = 120.0


def overdue(
    statuses: Mapping[str, JobStatus],
    limits_s: Mapping[str, float],
    *,
    now: float | None = None,
    grace_s: float = DEFAULT_GRACE_S,
) -> list[str]:
    """Refs RUNNING longer than their limit plus ``grace_s`` (a start time the scheduler reports, epoch seconds)."""
    t = time.time() if now is None else now
    late: list[str] = []
    for ref, st in statuses.items():
        limit = limits_s.get(ref)
        if limit is None or st.state is not JobState.RUNNING or st.started_at is None:
            continue
        if t - st.started_at > limit + grace_s:
            late.append(ref)
    return sorted(late)
