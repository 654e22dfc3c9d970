"""Admission in memory: per-key token buckets (429 + Retry-After) and the org's monthly request quota (402).

The quota book counts exactly in one process: ``used`` (the ledger, re-read after every flush) + requests metered
but not yet flushed + requests admitted and still running. Several gateway processes may overshoot a quota by at
most what each admits between two flushes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from haihe.errors import QuotaExceeded, RateLimited


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class TokenBuckets:
    """One bucket per (key, endpoint): ``rate`` tokens a second up to ``burst``; an empty bucket says when to retry."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._buckets: dict[tuple[int, int], _Bucket] = {}
        self._lock = threading.Lock()
        self._max_keys = max_keys

    def take(self, key: tuple[int, int], rate: float, burst: int) -> None:
        now = self._clock()
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                if len(self._buckets) >= self._max_keys:
                    self._buckets.clear()  # a flood of keys: forget idle buckets rather than grow without bound
                b = self._buckets[key] = _Bucket(float(burst), now)
            b.tokens = min(float(burst), b.tokens + (now - b.stamp) * rate)
            b.stamp = now
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                return
            wait = (1.0 - b.tokens) / rate
        raise RateLimited(f"rate limit of {rate:g} requests/s (burst {burst}) for this key exceeded; "
                          f"retry in {wait:.2f}s", retry_after=wait, limit_per_s=rate, burst=burst)


@dataclass
class _OrgQuota:
    limit: int | None
    used: float  # in the ledger, as last read
    pending: int = 0  # metered, not yet in the ledger (or being written)
    running: int = 0  # admitted, not finished
    fetched: float = 0.0


class QuotaBook:
    """Per-org request counts against ``requests_per_month``; ``loader(org_id) -> (limit, used)`` reads the DB."""

    def __init__(self, loader: Callable[[int], tuple[int | None, float]], refresh_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._loader = loader
        self._refresh_s = refresh_s
        self._clock = clock
        self._orgs: dict[int, _OrgQuota] = {}
        self._lock = threading.Lock()
        self.load_lock = threading.Lock()  # held while the ledger is written or read, so counts never overlap

    def needs_refresh(self, org_id: int) -> bool:
        q = self._orgs.get(org_id)
        return q is None or self._clock() - q.fetched > self._refresh_s

    def refresh(self, org_id: int) -> None:
        """Re-read the limit and the ledger (blocking: call from a worker thread)."""
        with self.load_lock:
            limit, used = self._loader(org_id)
            with self._lock:
                q = self._orgs.setdefault(org_id, _OrgQuota(limit, used))
                q.limit, q.used, q.fetched = limit, used, self._clock()

    def admit(self, org_id: int) -> None:
        """Count one running request, or raise QuotaExceeded naming the quota."""
        with self._lock:
            q = self._orgs.get(org_id)
            if q is None:
                raise RuntimeError("refresh the org's quota before admitting")
            if q.limit is not None:
                used = int(q.used) + q.pending + q.running
                if used + 1 > q.limit:
                    raise QuotaExceeded(
                        f"quota requests_per_month exceeded: {used} of {q.limit} used this month",
                        field="requests_per_month", quota="requests_per_month", need=1,
                        left=max(q.limit - used, 0), limit=q.limit)
            q.running += 1

    def finish(self, org_id: int, served: bool) -> None:
        with self._lock:
            q = self._orgs[org_id]
            q.running -= 1
            if served:
                q.pending += 1

    def flushed(self, counts: dict[int, int], used: dict[int, float]) -> None:
        """After a flush: ``counts`` moved from pending into the ledger, whose totals are now ``used``."""
        with self._lock:
            for org_id, n in counts.items():
                q = self._orgs.get(org_id)
                if q is not None:
                    q.pending -= n
                    q.used = used.get(org_id, q.used)
