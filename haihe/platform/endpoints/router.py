"""Routes: inference endpoints (management). Thin: body → ``platform.endpoints`` → response schema.

The data path (``/v2/models/…``, ``/v1/embeddings``) is the gateway's (``platform.gateway.routes``).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response

from haihe.platform.api.deps import CurrentPrincipal, SessionDep
from haihe.platform.endpoints import service as svc
from haihe.platform.endpoints.schemas import (
    EndpointCreate,
    EndpointList,
    EndpointPublic,
    EndpointScale,
    EndpointUpdate,
)
from haihe.platform.gateway.hub import EndpointsHub

router = APIRouter(prefix="/api/v1", tags=["endpoints"])


async def get_hub(request: Request) -> EndpointsHub:
    hub: EndpointsHub = request.app.state.endpoints
    return hub


HubDep = Annotated[EndpointsHub, Depends(get_hub)]


@router.post("/orgs/{org}/endpoints", status_code=202, operation_id="create_endpoint")
def create_endpoint(org: str, body: EndpointCreate, principal: CurrentPrincipal, session: SessionDep,
                    hub: HubDep) -> EndpointPublic:
    """Deploy a zoo model as an endpoint; returns at once in state ``deploying`` (watch it with GET)."""
    options: dict[str, Any] = {k: v for k, v in (("partition", body.partition), ("gpus", body.gpus),
                                                 ("time_limit_min", body.time_limit_min)) if v}
    if body.environment is not None:
        options["environment"] = body.environment.model_dump()
    ep = svc.create(hub, session, principal, org, name=body.name, model=body.model, scheduler=body.scheduler,
                    min_replicas=body.min_replicas, max_replicas=body.max_replicas,
                    max_batch_size=body.max_batch_size, batch_wait_ms=body.batch_wait_ms,
                    cpus_per_replica=body.cpus_per_replica, rate_per_s=body.rate_limit_per_s,
                    burst=body.rate_limit_burst, options=options)
    return EndpointPublic.of(ep)


@router.get("/endpoints", operation_id="list_endpoints")
def list_endpoints(principal: CurrentPrincipal, session: SessionDep,
                   org: Annotated[str | None, Query(max_length=63)] = None) -> EndpointList:
    return EndpointList(items=[EndpointPublic.of(e) for e in svc.list_endpoints(session, principal, org)])


@router.get("/orgs/{org}/endpoints/{name}", operation_id="get_endpoint")
def get_endpoint(org: str, name: str, principal: CurrentPrincipal, session: SessionDep) -> EndpointPublic:
    return EndpointPublic.of(svc.get(session, principal, org, name))


@router.patch("/orgs/{org}/endpoints/{name}", operation_id="update_endpoint")
def update_endpoint(org: str, name: str, body: EndpointUpdate, principal: CurrentPrincipal, session: SessionDep,
                    hub: HubDep) -> EndpointPublic:
    """Change the model version or batching (a rolling switch: no failed requests) or the per-key rate limit."""
    ep = svc.update(hub, session, principal, org, name, model=body.model, max_batch_size=body.max_batch_size,
                    batch_wait_ms=body.batch_wait_ms, rate_per_s=body.rate_limit_per_s, burst=body.rate_limit_burst)
    return EndpointPublic.of(ep)


@router.post("/orgs/{org}/endpoints/{name}/scale", operation_id="scale_endpoint")
def scale_endpoint(org: str, name: str, body: EndpointScale, principal: CurrentPrincipal, session: SessionDep,
                   hub: HubDep) -> EndpointPublic:
    """Set the replica bounds (autoscaling between them on Ray); 0/0 stops the endpoint, keeping its settings."""
    ep = svc.scale(hub, session, principal, org, name, min_replicas=body.min_replicas,
                   max_replicas=body.max_replicas)
    return EndpointPublic.of(ep)


@router.delete("/orgs/{org}/endpoints/{name}", status_code=204, operation_id="delete_endpoint")
def delete_endpoint(org: str, name: str, principal: CurrentPrincipal, session: SessionDep, hub: HubDep) -> Response:
    svc.delete(hub, session, principal, org, name)
    return Response(status_code=204)


@router.get("/orgs/{org}/endpoints/{name}/usage", operation_id="endpoint_usage")
def endpoint_usage(org: str, name: str, principal: CurrentPrincipal, session: SessionDep,
                   since: dt.datetime | None = None) -> dict[str, Any]:
    """Requests, errors and latency per key (as flushed by the gateway's meter)."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    return svc.usage(session, principal, org, name, since)
