"""The Open Inference Protocol v2 (KServe v2 / Triton HTTP) routes of the gateway.

==========================================================  =====================================================
``GET  /v2``                                                server metadata (name, version, extensions); no key
``GET  /v2/health/live``                                    200 while the process answers; no key (as ``/healthz``)
``GET  /v2/health/ready``                                   200 when API keys can be checked (database answers),
                                                            else 400; no key (as ``/readyz``)
``GET  /v2/models/{endpoint}[/versions/{v}]``               model metadata: inputs and outputs (API key)
``GET  /v2/models/{endpoint}[/versions/{v}]/ready``         200 when the endpoint can serve, else 400 (API key)
``POST /v2/models/{endpoint}[/versions/{v}]/infer``         inference, JSON or binary tensors (API key, metered)
==========================================================  =====================================================

Health answers follow the protocol: 200 is true, a 4xx is false. Every error is ``{"error": "<message>"}`` (plus
``code`` and ``field``), see ``oip_errors``. An endpoint serves one model version: the version in a path must be it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from haihe import __version__
from haihe.errors import InvalidInput, NotFound
from haihe.platform import health
from haihe.platform.gateway import oip
from haihe.platform.gateway.contract import ModelContract, check_input, check_outputs
from haihe.platform.gateway.gates import (
    admit,
    authorized_route,
    call_model,
    check_response_size,
    hub_of,
    servable,
)
from haihe.platform.gateway.hub import EndpointsHub, Route
from haihe.platform.gateway.oip_errors import OipRoute, oip_error

router = APIRouter(tags=["inference"], route_class=OipRoute)

SERVER_NAME = "haihe"
EXTENSIONS = ["binary_tensor_data"]  # Triton's binary tensor data extension (inputs and outputs)
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def _infer_schema() -> dict[str, Any]:
    """The request body schema for the OpenAPI document: the handler reads the raw body (it may carry binary
    tensors after the JSON), so FastAPI cannot derive it. References are inlined: the schema stands alone."""
    schema = oip.InferRequest.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.rsplit("/", 1)[1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


async def _contract(hub: EndpointsHub, route: Route) -> ModelContract:
    hit = hub.cached_contract(route)
    return hit if hit is not None else await run_in_threadpool(hub.contract, route)


def _check_version(route: Route, version: str | None) -> None:
    if version is not None and version != str(route.version):
        raise NotFound(f"endpoint {route.name!r} serves model version {route.version}, not {version[:40]!r}",
                       field="version")


# -- server ------------------------------------------------------------------------------------------------------
@router.get("/v2", operation_id="oip_server_metadata")
async def server_metadata() -> dict[str, Any]:
    """OIP server metadata. No API key: it names the software, nothing of any tenant."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}


@router.get("/v2/health/live", operation_id="oip_server_live")
async def server_live() -> dict[str, bool]:
    """200 while this process answers (a liveness probe; no API key, like ``/healthz``)."""
    return {"live": True}


@router.get("/v2/health/ready", operation_id="oip_server_ready", response_model=None)
async def server_ready(request: Request) -> dict[str, bool] | JSONResponse:
    """200 when the gateway can take requests: its database answers, so API keys can be checked (a readiness
    probe; no API key, like ``/readyz``). Endpoints are ready or not one by one: ``/v2/models/{name}/ready``."""
    check = health.checks(hub_of(request).ctx)["database"]
    try:
        await run_in_threadpool(check)
    except Exception:  # any failure to reach the database means "not ready", never a 5xx from the probe
        return oip_error(400, "not ready: the gateway's database does not answer, so API keys cannot be checked",
                         "not_ready")
    return {"ready": True}


# -- models ------------------------------------------------------------------------------------------------------
async def _metadata(request: Request, endpoint: str, version: str | None) -> dict[str, Any]:
    hub, route = await authorized_route(request, endpoint)
    _check_version(route, version)
    contract = await _contract(hub, route)
    return {"name": route.name, "versions": [str(route.version)], "platform": f"haihe-{route.scheduler}",
            "inputs": [s.to_dict() for s in contract.inputs], "outputs": [s.to_dict() for s in contract.outputs],
            # beyond the protocol: what the endpoint serves and whether it can now
            "model": route.model, "task": route.task, "contract": contract.source, "ready": servable(route),
            "state": route.state, "reason": route.reason}


@router.get("/v2/models/{endpoint}", operation_id="model_metadata")
async def model_metadata(endpoint: str, request: Request) -> dict[str, Any]:
    """OIP model metadata: input and output names, datatypes and shapes (-1: any size), plus the endpoint's state."""
    return await _metadata(request, endpoint, None)


@router.get("/v2/models/{endpoint}/versions/{version}", operation_id="model_version_metadata")
async def model_version_metadata(endpoint: str, version: str, request: Request) -> dict[str, Any]:
    """Model metadata of the version the endpoint serves (404 for any other version)."""
    return await _metadata(request, endpoint, version)


async def _ready(request: Request, endpoint: str, version: str | None) -> dict[str, Any] | JSONResponse:
    hub, route = await authorized_route(request, endpoint)
    _check_version(route, version)
    if not servable(route):
        route = await run_in_threadpool(hub.reread, route)
    if not servable(route):
        why = f": {route.reason}" if route.reason else ""
        return oip_error(400, f"endpoint {endpoint!r} is not ready ({route.state}){why}", "not_ready", "endpoint")
    return {"name": route.name, "ready": True}


@router.get("/v2/models/{endpoint}/ready", operation_id="model_ready", response_model=None)
async def model_ready(endpoint: str, request: Request) -> dict[str, Any] | JSONResponse:
    """200 when the endpoint can serve, else 400 with the state and reason (the protocol's "false")."""
    return await _ready(request, endpoint, None)


@router.get("/v2/models/{endpoint}/versions/{version}/ready", operation_id="model_version_ready",
            response_model=None)
async def model_version_ready(endpoint: str, version: str, request: Request) -> dict[str, Any] | JSONResponse:
    return await _ready(request, endpoint, version)


async def _infer(request: Request, endpoint: str, version: str | None) -> Response:
    # the body first, whoever sends it: a client that dribbles it is cut off (408) by the body limits, not left
    # holding a connection behind an early answer
    try:
        received = await request.body()
    except ClientDisconnect:  # cut off by the body limits, which answer for us (408), or gone
        raise InvalidInput("the request body was not received in full", field="body") from None
    hub, principal, route = await admit(request, endpoint)
    try:
        _check_version(route, version)
        raw = oip.decode_content(received, request.headers.get("content-encoding"), hub.config.max_body_bytes)
        body = oip.parse_infer(raw, request.headers.get(oip.HEADER_LENGTH))
        contract = await _contract(hub, route)
        t = body.request.inputs[0]
        check_input(contract, 0, t.name, t.datatype, t.shape)
        check_outputs(contract, oip.requested_outputs(body.request))
        rows = oip.oip_rows(body, hub.config.max_rows)
    except BaseException:
        hub.book.finish(route.org_id, False)
        raise
    outputs = await call_model(request, hub, principal, route, rows)
    out, blobs = oip.oip_response(route.name, route.version, body.request, outputs, route.task, contract)
    data, header_length = oip.encode(out, blobs)
    check_response_size(hub, len(data))
    if header_length is None:
        return Response(data, media_type="application/json")
    return Response(data, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(header_length)})


@router.post("/v2/models/{endpoint}/infer", operation_id="infer", openapi_extra=_infer_schema())
async def infer(endpoint: str, request: Request) -> Response:
    """OIP inference: one input tensor (JSON ``data`` or binary after the JSON) in; the model's output (and
    ``label`` for classifiers) out. The input must match the model's metadata, else 400 naming it."""
    return await _infer(request, endpoint, None)


@router.post("/v2/models/{endpoint}/versions/{version}/infer", operation_id="infer_version",
             openapi_extra=_infer_schema())
async def infer_version(endpoint: str, version: str, request: Request) -> Response:
    """Inference on the version the endpoint serves (404 for any other version)."""
    return await _infer(request, endpoint, version)


# -- anything else under /v2 -------------------------------------------------------------------------------------
@router.get("/v2/", include_in_schema=False)
async def server_metadata_slash() -> dict[str, Any]:
    return await server_metadata()


@router.api_route("/v2/{rest:path}", methods=_METHODS, include_in_schema=False)
async def not_an_oip_route(rest: str, request: Request) -> JSONResponse:
    """404/405 in OIP's envelope (Triton's client cannot read the platform's), e.g. for Triton-only extensions."""
    allowed = sorted({m for r in router.routes if r.endpoint is not not_an_oip_route  # type: ignore[attr-defined]
                      and r.matches(request.scope)[0] == Match.PARTIAL
                      for m in getattr(r, "methods", None) or ()})
    if allowed:
        return oip_error(405, f"{request.method} is not allowed on {request.url.path}; use {', '.join(allowed)}",
                         "method_not_allowed", headers={"Allow": ", ".join(allowed)})
    return oip_error(404, f"no such route: {request.method} {request.url.path} (this gateway serves the Open "
                     f"Inference Protocol's health, metadata and infer routes)", "not_found")
