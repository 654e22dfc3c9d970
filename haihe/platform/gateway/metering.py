"""Metering: every served request is counted in memory per key, endpoint and minute, and flushed in batches.

A flush writes one ledger charge (``record_usage``, resource ``requests``) and one ``endpoint_usage`` row (requests,
errors, latency) per (key, endpoint, minute) seen since the last flush, in one transaction. Each entry's ``ref`` is
``gw:<boot>:<flush-seq>:<key>:<endpoint>:<minute>``, so a flush that is retried after a database error charges once.
After a clean drain (``flush()`` at shutdown) the metered count equals the served count; a crash loses at most
the requests of the last ``flush_interval_s``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select

from haihe.platform.db import Database
from haihe.platform.endpoints.rows import Endpoint, EndpointUsage
from haihe.platform.gateway.limits import QuotaBook
from haihe.platform.models import Quota, utcnow
from haihe.platform.quotas import ledger as quotas

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeterKey:
    endpoint_id: int
    endpoint: str
    org_id: int
    credential_id: int | None
    key_prefix: str
    user_id: int | None
    minute: dt.datetime


@dataclass
class Counts:
    requests: int = 0  # served (2xx): what is charged
    errors: int = 0  # reached the model and failed
    latency_ms_sum: float = 0.0
    latency_ms_max: float = 0.0


def minute_of(when: dt.datetime) -> dt.datetime:
    return when.replace(second=0, microsecond=0)


def load_request_quota(db: Database) -> Callable[[int], tuple[int | None, float]]:
    """The QuotaBook loader: (monthly request limit of the org, requests charged this month)."""

    def load(org_id: int) -> tuple[int | None, float]:
        with db.session() as s:
            q = s.scalar(select(Quota).where(Quota.org_id == org_id, Quota.project_id.is_(None)))
            used = quotas.ledger_total(s, quotas.period_of(), org_id).get("requests", 0.0)
            return (q.requests_per_month if q is not None else None), used

    return load


class Meter:
    def __init__(self, db: Database, book: QuotaBook, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self._db = db
        self._book = book
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[MeterKey, Counts] = {}
        self._unwritten: list[tuple[int, dict[MeterKey, Counts]]] = []  # failed flushes, retried with their seq
        self._boot = uuid.uuid4().hex[:10]
        self._seq = 0
        self.served = 0  # since start: what a drain must have written
        self.written = 0

    def record(self, *, endpoint_id: int, endpoint: str, org_id: int, credential_id: int | None, key_prefix: str,
               user_id: int | None, ok: bool, latency_ms: float) -> None:
        key = MeterKey(endpoint_id, endpoint, org_id, credential_id, key_prefix, user_id, minute_of(self._clock()))
        with self._lock:
            c = self._pending.get(key)
            if c is None:
                c = self._pending[key] = Counts()
            if ok:
                c.requests += 1
                self.served += 1
            else:
                c.errors += 1
            c.latency_ms_sum += latency_ms
            c.latency_ms_max = max(c.latency_ms_max, latency_ms)

    def flush(self) -> int:
        """Write what has been counted; returns the number of requests charged. Safe to call from any thread."""
        with self._book.load_lock:
            with self._lock:
                if self._pending:
                    self._seq += 1
                    self._unwritten.append((self._seq, self._pending))
                    self._pending = {}
                batches, self._unwritten = self._unwritten, []
            charged = 0
            for i, (seq, snapshot) in enumerate(batches):
                try:
                    charged += self._write(seq, snapshot)
                except Exception:
                    log.exception("metering flush %s failed; it will be retried with the same refs", seq)
                    with self._lock:
                        self._unwritten = batches[i:] + self._unwritten
                    break
            return charged

    def _write(self, seq: int, snapshot: dict[MeterKey, Counts]) -> int:
        per_org: dict[int, int] = {}
        with self._db.session() as s:
            for key, c in snapshot.items():
                ref = (f"gw:{self._boot}:{seq}:{key.credential_id or 0}:{key.endpoint_id}:"
                       f"{key.minute:%Y%m%d%H%M}")
                if s.scalar(select(EndpointUsage.id).where(EndpointUsage.ref == ref)) is not None:
                    continue  # written by an earlier try whose commit we did not see
                if c.requests:
                    quotas.record_usage(s, org_id=key.org_id, resource="requests", amount=float(c.requests),
                                        source="inference", user_id=key.user_id, endpoint=key.endpoint, ref=ref,
                                        note=f"key {key.key_prefix}", when=key.minute)
                if s.get(Endpoint, key.endpoint_id) is None:
                    # deleted since the requests were served: the ledger keeps the charge (above), the per-minute
                    # usage row has nothing left to point at; writing it would fail this batch and every later one
                    per_org[key.org_id] = per_org.get(key.org_id, 0) + c.requests
                    continue
                s.add(EndpointUsage(endpoint_id=key.endpoint_id, org_id=key.org_id, credential_id=key.credential_id,
                                    key_prefix=key.key_prefix, minute=key.minute, requests=c.requests,
                                    errors=c.errors, latency_ms_sum=c.latency_ms_sum,
                                    latency_ms_max=c.latency_ms_max, ref=ref))
                per_org[key.org_id] = per_org.get(key.org_id, 0) + c.requests
            s.flush()
            period = quotas.period_of()
            for org_id in per_org:
                quotas.record_crossings(s, org_id, None, period)
            used = {o: quotas.ledger_total(s, period, o).get("requests", 0.0) for o in per_org}
        self._book.flushed(per_org, used)
        n = sum(per_org.values())
        with self._lock:
            self.written += n
        return n


class Flusher:
    """A daemon thread that flushes the meter every ``interval_s``, and once more when stopped (the drain)."""

    def __init__(self, meter: Meter, interval_s: float) -> None:
        self._meter = meter
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gateway-metering", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._meter.flush()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._meter.flush()
