"""The gates every inference request passes, in this order, before anything reaches a model: API key (401), endpoint
in the key's org (404, also for another org's endpoint), key scope (403), per-key token bucket (429 + Retry-After),
monthly request quota (402 naming ``requests_per_month``), endpoint readiness (503 with the reason). Then the call,
metered whatever its outcome. Payloads are never logged. Shared by the OIP (``oip_routes``) and OpenAI
(``routes``) routes.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from haihe.errors import NotFound, PayloadTooLarge, ServiceUnavailable
from haihe.platform.access import Principal
from haihe.platform.gateway.auth import bearer, check_principal, check_scope
from haihe.platform.gateway.hub import SERVABLE, EndpointsHub, Route
from haihe.platform.identity import security


def hub_of(request: Request) -> EndpointsHub:
    hub: EndpointsHub = request.app.state.endpoints
    return hub


def servable(route: Route) -> bool:
    return route.state in SERVABLE and route.target is not None


async def principal_of(request: Request, hub: EndpointsHub) -> Principal:
    presented = bearer(request.headers.get("authorization"))
    parts = security.split_credential(presented)
    request.state.key_prefix = parts[1] if parts else ""
    result = hub.keys.cached(presented)
    if result is None:
        ip = request.client.host if request.client else ""
        result = await run_in_threadpool(hub.keys.resolve, presented, ip)
    return check_principal(result)


async def find_route(hub: EndpointsHub, principal: Principal, name: str) -> Route:
    if principal.bound_org_id is not None:
        orgs: list[int] | None = [principal.bound_org_id]
    else:
        visible = principal.visible_org_ids()
        orgs = sorted(visible) if visible is not None else None
    if orgs is None:  # a platform admin's token: any org
        found = sorted((r for (o, n), r in hub.routes.items() if n == name), key=lambda r: r.org_id)
        route = found[0] if found else None
    else:
        route = None
        for org_id in orgs:
            route = hub.routes.get((org_id, name)) or await run_in_threadpool(hub.lookup, org_id, name)
            if route is not None:
                break
    if route is None:
        raise NotFound(f"endpoint {name!r} not found", field="endpoint")
    check_scope(principal, name)
    return route


async def authorized_route(request: Request, name: str) -> tuple[EndpointsHub, Route]:
    """Key, org and scope checks only (metadata and readiness: nothing is metered or rate limited)."""
    hub = hub_of(request)
    return hub, await find_route(hub, await principal_of(request, hub), name)


async def admit(request: Request, name: str) -> tuple[EndpointsHub, Principal, Route]:
    """Every gate; on success the request counts against the org's quota until ``hub.book.finish``."""
    hub = hub_of(request)
    principal = await principal_of(request, hub)
    route = await find_route(hub, principal, name)
    cfg = hub.config
    hub.buckets.take((principal.credential_id or -principal.user_id, route.endpoint_id),
                     route.rate_per_s or cfg.rate_per_s, route.burst or cfg.burst)
    if hub.book.needs_refresh(route.org_id):
        await run_in_threadpool(hub.book.refresh, route.org_id)
    hub.book.admit(route.org_id)
    if not servable(route):
        route = await run_in_threadpool(hub.reread, route)
    if not servable(route):
        hub.book.finish(route.org_id, False)
        why = f": {route.reason}" if route.reason else ""
        raise ServiceUnavailable(f"endpoint {name!r} is not ready ({route.state}){why}", field="endpoint",
                                 state=route.state)
    return hub, principal, route


async def call_model(request: Request, hub: EndpointsHub, principal: Principal, route: Route,
                     rows: list[Any]) -> list[Any]:
    """The model's outputs for ``rows``; settles the quota admission and meters the call, served or not."""
    assert route.target is not None
    runtime = hub.runtime(route.scheduler)
    ok = False
    t0 = time.perf_counter()
    hub.enter(route.target)
    try:
        outputs = await runtime.infer(route.target, rows, hub.config.request_timeout_s)
        ok = True
        return outputs
    finally:
        hub.leave(route.target)
        hub.book.finish(route.org_id, ok)
        hub.meter.record(endpoint_id=route.endpoint_id, endpoint=route.name, org_id=route.org_id,
                         credential_id=principal.credential_id,
                         key_prefix=getattr(request.state, "key_prefix", ""), user_id=principal.user_id, ok=ok,
                         latency_ms=(time.perf_counter() - t0) * 1000.0)


def check_response_size(hub: EndpointsHub, size: int) -> None:
    if size > hub.config.max_response_bytes:
        raise PayloadTooLarge(f"the response would be {size} bytes, over the gateway's "
                              f"{hub.config.max_response_bytes}-byte limit: send fewer rows", field="inputs")
