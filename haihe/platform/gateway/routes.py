"""Gateway routes: ``POST /v2/models/{endpoint}/infer``, ``GET /v2/models/{endpoint}[/ready]``, ``POST /v1/embeddings``.

Every request passes the same gates, in this order, before anything reaches a model: API key (401), endpoint in
the key's org (404, also for another org's endpoint), key scope (403), per-key token bucket (429 + Retry-After),
monthly request quota (402 naming ``requests_per_month``), endpoint readiness (503 with the reason). Payloads are
never logged.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from haihe.errors import NotFound, PayloadTooLarge, ServiceUnavailable
from haihe.platform import security
from haihe.platform.access import Principal
from haihe.platform.gateway import oip
from haihe.platform.gateway.auth import bearer, check_principal, check_scope
from haihe.platform.gateway.hub import EndpointsHub, Route

log = logging.getLogger(__name__)

router = APIRouter(tags=["inference"])

SERVABLE = ("ready", "degraded")


def _hub(request: Request) -> EndpointsHub:
    hub: EndpointsHub = request.app.state.endpoints
    return hub


async def _principal(request: Request, hub: EndpointsHub) -> Principal:
    presented = bearer(request.headers.get("authorization"))
    parts = security.split_credential(presented)
    request.state.key_prefix = parts[1] if parts else ""
    result = hub.keys.cached(presented)
    if result is None:
        ip = request.client.host if request.client else ""
        result = await run_in_threadpool(hub.keys.resolve, presented, ip)
    return check_principal(result)


async def _route(hub: EndpointsHub, principal: Principal, name: str) -> Route:
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


async def _admit(request: Request, name: str) -> tuple[EndpointsHub, Principal, Route]:
    hub = _hub(request)
    principal = await _principal(request, hub)
    route = await _route(hub, principal, name)
    cfg = hub.config
    hub.buckets.take((principal.credential_id or -principal.user_id, route.endpoint_id),
                     route.rate_per_s or cfg.rate_per_s, route.burst or cfg.burst)
    if hub.book.needs_refresh(route.org_id):
        await run_in_threadpool(hub.book.refresh, route.org_id)
    hub.book.admit(route.org_id)
    if route.target is None or route.state not in SERVABLE:
        hub.book.finish(route.org_id, False)
        why = f": {route.reason}" if route.reason else ""
        raise ServiceUnavailable(f"endpoint {name!r} is not ready ({route.state}){why}", field="endpoint",
                                 state=route.state)
    return hub, principal, route


async def _call(request: Request, hub: EndpointsHub, principal: Principal, route: Route,
                rows: list[Any]) -> list[Any]:
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


def _json(hub: EndpointsHub, body: dict[str, Any]) -> Response:
    data = json.dumps(body, separators=(",", ":")).encode()
    if len(data) > hub.config.max_response_bytes:
        raise PayloadTooLarge(f"the response would be {len(data)} bytes, over the gateway's "
                              f"{hub.config.max_response_bytes}-byte limit: send fewer rows", field="inputs")
    return Response(data, media_type="application/json")


@router.post("/v2/models/{endpoint}/infer", operation_id="infer")
async def infer(endpoint: str, body: oip.InferRequest, request: Request) -> Response:
    """Open Inference Protocol v2: one input tensor in, the model's outputs (and ``label`` for classifiers) out."""
    hub, principal, route = await _admit(request, endpoint)
    try:
        rows = oip.oip_rows(body, hub.config.max_rows)
    except BaseException:
        hub.book.finish(route.org_id, False)
        raise
    outputs = await _call(request, hub, principal, route, rows)
    return _json(hub, oip.oip_response(route.name, route.version, body.id, outputs, route.task))


@router.get("/v2/models/{endpoint}", operation_id="model_metadata")
async def model_metadata(endpoint: str, request: Request) -> dict[str, Any]:
    """OIP model metadata, plus the endpoint's state (``ready``) and why it is not ready."""
    hub = _hub(request)
    route = await _route(hub, await _principal(request, hub), endpoint)
    return {"name": route.name, "versions": [str(route.version)], "platform": f"haihe-{route.scheduler}",
            "model": route.model, "task": route.task, "ready": route.state in SERVABLE and route.target is not None,
            "state": route.state, "reason": route.reason,
            "inputs": [{"name": "input-0", "datatype": "BYTES" if "text" in route.task else "FP32",
                        "shape": [-1]}]}


@router.get("/v2/models/{endpoint}/ready", operation_id="model_ready")
async def model_ready(endpoint: str, request: Request) -> dict[str, Any]:
    """200 when the endpoint can serve, else 503 with the reason (KServe's readiness probe)."""
    hub = _hub(request)
    route = await _route(hub, await _principal(request, hub), endpoint)
    if route.state not in SERVABLE or route.target is None:
        raise ServiceUnavailable(f"endpoint {endpoint!r} is not ready ({route.state}): {route.reason}",
                                 field="endpoint", state=route.state)
    return {"name": route.name, "ready": True}


@router.post("/v1/embeddings", operation_id="create_embeddings")
async def create_embeddings(body: oip.EmbeddingsRequest, request: Request) -> Response:
    """OpenAI-compatible embeddings: ``model`` is the endpoint's name (works with the official ``openai`` client)."""
    hub, principal, route = await _admit(request, body.model)
    try:
        texts = oip.embedding_rows(body, hub.config.max_rows)
    except BaseException:
        hub.book.finish(route.org_id, False)
        raise
    outputs = await _call(request, hub, principal, route, list(texts))
    return _json(hub, oip.embeddings_response(route.name, texts, outputs, body.encoding_format, body.dimensions))
