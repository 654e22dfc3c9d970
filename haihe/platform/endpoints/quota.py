"""Endpoints under quota: serving replicas reserve and are charged GPU/CPU-hours in the same ledger as jobs.

The unit is a *window* (``HAIHE_GATEWAY_QUOTA_WINDOW_S``, one hour). Deploying or scaling up reserves one window
of the endpoint's maximum charge — max_replicas × per-replica GPUs and CPUs × window — or is refused with
QuotaExceeded (402, naming the quota) inside the request's transaction, so nothing is stored. Scaling down gives
back the difference at once; scaling to zero or deleting gives back all of it.

The supervisor (leader only) accrues replica-time while generations hold resources (the replicas Ray Serve reports
running; a Slurm serving job from its start, two of them during a renewal's overlap) and, when a window ends,
charges it (``source="endpoint"``), releases what is left of the window's reservation and reserves the next one.
An endpoint whose next window does not fit in the quota is stopped with the quota named as its reason.

Exactly once: the endpoint row holds the window's start and the accrual so far (``options["metering"]``, written
only by the supervisor after create), in the same transaction as the ledger entries; every entry's ref is
``epq:<endpoint id>:<window start ms>:<what>:<resource>``, so a restart resumes from the last committed window and
a replayed window hits the ledger's unique ref instead of charging twice.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from haihe.errors import QuotaExceeded
from haihe.platform.endpoints.rows import Endpoint
from haihe.platform.models import LedgerEntry
from haihe.platform.quotas.ledger import check_hours, period_of, record_crossings

RESOURCES = ("gpu_s", "cpu_s")
SOURCE = "endpoint"
BASIS = "replicas × per-replica × {window}"


def _when(now: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(now, dt.UTC)


def _prefix(ep: Endpoint) -> str:
    return f"epq:{ep.id}:"


def per_replica(ep: Endpoint) -> dict[str, float]:
    """GPUs and CPUs one replica holds: a Slurm job's whole CPUs and GPUs; a Ray replica's (fractional) CPUs."""
    if ep.backend == "slurm":
        gpus = int((ep.options or {}).get("gpus") or 0)
        return {"gpu_s": float(gpus), "cpu_s": float(max(1, math.ceil(ep.cpus_per_replica)))}
    return {"gpu_s": 0.0, "cpu_s": float(ep.cpus_per_replica)}


def window_need(ep: Endpoint, window_s: float) -> dict[str, float]:
    """The most an endpoint can cost in one window: every replica it may scale to, all the window long."""
    rate = per_replica(ep)
    return {res: ep.max_replicas * rate[res] * window_s for res in RESOURCES}


def running_replicas(ep: Endpoint) -> int:
    """Replicas holding resources now, over every live generation (an old one draining, a renewal's overlap)."""
    total = 0
    for rec in (ep.serving or {}).values():
        if rec.get("dead"):
            continue
        reported = rec.get("replicas")
        if isinstance(reported, int):
            total += reported
        elif rec.get("was_ready") or rec.get("running_since") is not None:
            total += 1 if ep.backend == "slurm" else max(ep.min_replicas, 1)
    return total


def outstanding(session: Session, ep: Endpoint) -> dict[tuple[str, str], float]:
    """(period, resource) → what the endpoint holds reserved (reservations minus releases)."""
    rows = session.execute(
        select(LedgerEntry.period, LedgerEntry.resource, func.sum(LedgerEntry.amount))
        .where(LedgerEntry.org_id == ep.org_id, LedgerEntry.kind == "reserve",
               LedgerEntry.ref.like(f"{_prefix(ep)}%"))
        .group_by(LedgerEntry.period, LedgerEntry.resource)).all()
    return {(period, res): float(total) for period, res, total in rows if total and float(total) > 1e-9}


def _entry(ep: Endpoint, *, period: str, kind: str, resource: str, amount: float, ref: str,
           note: str) -> LedgerEntry:
    return LedgerEntry(period=period, org_id=ep.org_id, project_id=None, user_id=ep.created_by_id,
                       endpoint=ep.name, kind=kind, resource=resource, amount=amount, source=SOURCE,
                       ref=f"{_prefix(ep)}{ref}:{resource}", note=note)


def _reserve(session: Session, ep: Endpoint, need: dict[str, float], window_s: float, now: float,
             tag: str) -> None:
    need = {res: amount for res, amount in need.items() if amount > 1e-9}
    if not need:
        return
    period = period_of(_when(now))
    check_hours(session, ep.org_id, None, need, period, what=f"endpoint {ep.name}",
                basis=BASIS.format(window=f"{window_s / 3600:g} h window"), field_name="max_replicas")
    for res, amount in need.items():
        session.add(_entry(ep, period=period, kind="reserve", resource=res, amount=amount, ref=tag,
                           note="endpoint window reserved"))


def _release(session: Session, ep: Endpoint, amounts: dict[str, float] | None, tag: str) -> set[str]:
    """Give back ``amounts`` (all of it when None), oldest period first; returns the periods touched."""
    left = dict(amounts) if amounts is not None else None
    touched: set[str] = set()
    for (period, res), held in sorted(outstanding(session, ep).items()):
        take = held if left is None else min(held, left.get(res, 0.0))
        if take <= 1e-9:
            continue
        if left is not None:
            left[res] -= take
        session.add(_entry(ep, period=period, kind="reserve", resource=res, amount=-take,
                           ref=f"{tag}:{period}", note="endpoint reservation released"))
        touched.add(period)
    return touched


def _lock(session: Session, ep: Endpoint) -> dict[str, Any] | None:
    """Lock the endpoint's row for the rest of the transaction (the API and the supervisor both write its window)
    and read its metering state afresh; None when the row is gone (deleted meanwhile)."""
    done = session.execute(update(Endpoint).where(Endpoint.id == ep.id).values(updated_at=Endpoint.updated_at)
                           .execution_options(synchronize_session=False))
    if not getattr(done, "rowcount", 1):
        return None
    options = session.scalar(select(Endpoint.options).where(Endpoint.id == ep.id))
    return dict((options or {}).get("metering") or {})


def fit_reservation(session: Session, ep: Endpoint, window_s: float, now: float) -> None:
    """Create, scale or delete (max_replicas 0): hold exactly one window of the endpoint's maximum charge.
    Raises QuotaExceeded before writing anything when more is needed than the quota has left."""
    _lock(session, ep)
    need = window_need(ep, window_s)
    held: dict[str, float] = dict.fromkeys(RESOURCES, 0.0)
    for (_period, res), amount in outstanding(session, ep).items():
        held[res] = held.get(res, 0.0) + amount
    tag = f"fit{uuid.uuid4().hex[:12]}"
    more = {res: need[res] - held[res] for res in RESOURCES if need[res] - held[res] > 1e-9}
    less = {res: held[res] - need[res] for res in RESOURCES if held[res] - need[res] > 1e-9}
    _reserve(session, ep, more, window_s, now, tag)
    touched = _release(session, ep, less, tag) if less else set()
    session.flush()
    for period in touched | ({period_of(_when(now))} if more else set()):
        record_crossings(session, ep.org_id, None, period)


def _state(ep: Endpoint) -> dict[str, Any]:
    return dict((ep.options or {}).get("metering") or {})


def _accrued_until(m: dict[str, Any], now: float) -> dict[str, float]:
    elapsed = max(0.0, now - float(m["last"]))
    return {res: float(m["accrued"].get(res, 0.0)) + float(m["rate"].get(res, 0.0)) * elapsed for res in RESOURCES}


def _charge(session: Session, ep: Endpoint, m: dict[str, Any], accrued: dict[str, float], now: float) -> str:
    window = f"{int(float(m['start']) * 1000)}"
    period = period_of(_when(now))
    for res, amount in accrued.items():
        if amount > 1e-9:
            session.add(_entry(ep, period=period, kind="charge", resource=res, amount=amount,
                               ref=f"{window}:charge", note="endpoint replica time"))
    return window


def meter(session: Session, ep: Endpoint, window_s: float, now: float) -> None:
    """One supervisor cycle for one endpoint: accrue replica-time, and at a window's end settle and renew."""
    rate_per = per_replica(ep)
    replicas = running_replicas(ep)
    rate = {res: replicas * rate_per[res] for res in RESOURCES}
    m = _state(ep)
    if m and (now - float(m["start"]) >= window_s or (ep.max_replicas == 0 and replicas == 0 and any(
            a > 1e-9 for a in _accrued_until(m, now).values()))):
        fresh = _lock(session, ep)  # about to write the ledger: serialise with a concurrent scale or delete
        if fresh is None:
            return
        m = fresh
    if not m:
        _save(ep, {"start": now, "last": now, "rate": rate, "accrued": dict.fromkeys(RESOURCES, 0.0)})
        return
    accrued = _accrued_until(m, now)
    stopped_idle = ep.max_replicas == 0 and replicas == 0 and any(a > 1e-9 for a in accrued.values())
    if now - float(m["start"]) < window_s and not stopped_idle:
        if rate != m["rate"]:  # replicas changed: close the stretch at the old rate
            _save(ep, {**m, "last": now, "rate": rate, "accrued": accrued})
        return
    window = _charge(session, ep, m, accrued, now)
    touched = _release(session, ep, None, f"{window}:release")
    if ep.max_replicas > 0 and ep.state != "failed":  # a failed endpoint holds nothing until it is updated
        try:
            _reserve(session, ep, window_need(ep, window_s), window_s, now, f"{window}:renew")
        except QuotaExceeded as exc:
            ep.min_replicas = ep.max_replicas = 0
            ep.state, ep.reason = "stopped", f"stopped: {exc.message}"
    _save(ep, {"start": now, "last": now, "rate": rate, "accrued": dict.fromkeys(RESOURCES, 0.0)})
    session.flush()
    for period in touched | {period_of(_when(now))}:
        record_crossings(session, ep.org_id, None, period)


def close(session: Session, ep: Endpoint, now: float) -> None:
    """The endpoint is being deleted: charge the replica-time of its last (partial) window, release the rest."""
    m = _lock(session, ep) or {}
    window = _charge(session, ep, m, _accrued_until(m, now), now) if m else f"{int(now * 1000)}"
    touched = _release(session, ep, None, f"{window}:release")
    session.flush()
    for period in touched | {period_of(_when(now))}:
        record_crossings(session, ep.org_id, None, period)


def _save(ep: Endpoint, m: dict[str, Any]) -> None:
    ep.options = {**(ep.options or {}), "metering": m}
