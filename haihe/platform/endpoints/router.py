"""Routes: inference endpoints (management). Thin: body → ``platform.endpoints`` → response schema.

The data path (``/v2/models/…``, ``/v1/embeddings``) is the gateway's (``platform.gateway.routes``).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from haihe.platform.api.deps import CurrentPrincipal, SessionDep
from haihe.platform.api.schemas import Body, Name, Out
from haihe.platform.endpoints import service as svc
from haihe.platform.endpoints.rows import Endpoint
from haihe.platform.gateway.hub import EndpointsHub

router = APIRouter(prefix="/api/v1", tags=["endpoints"])
ModelRef = Annotated[str, Field(min_length=3, max_length=200, examples=["public/minilm-l6@production"])]


def get_hub(request: Request) -> EndpointsHub:
    hub: EndpointsHub = request.app.state.endpoints
    return hub


HubDep = Annotated[EndpointsHub, Depends(get_hub)]


class EndpointCreate(Body):
    name: Name
    model: ModelRef
    scheduler: Name | None = None
    min_replicas: int = Field(1, ge=0, le=64)
    max_replicas: int = Field(1, ge=0, le=64)
    max_batch_size: int = Field(16, ge=1, le=1024)
    batch_wait_ms: float = Field(5.0, ge=0, le=1000)
    cpus_per_replica: float = Field(0.5, ge=0.05, le=64)
    rate_limit_per_s: float | None = Field(None, gt=0, le=1_000_000, description="Per key; default: the gateway's.")
    rate_limit_burst: int | None = Field(None, ge=1, le=1_000_000)
    partition: Name | None = Field(None, description="Slurm partition of the serving job.")
    gpus: int = Field(0, ge=0, le=16, description="GPUs of the Slurm serving job.")
    time_limit_min: int | None = Field(None, ge=5, le=60 * 24 * 30, description="Walltime of each Slurm job.")


class EndpointUpdate(Body):
    model: ModelRef | None = None
    max_batch_size: int | None = Field(None, ge=1, le=1024)
    batch_wait_ms: float | None = Field(None, ge=0, le=1000)
    rate_limit_per_s: float | None = Field(None, gt=0, le=1_000_000)
    rate_limit_burst: int | None = Field(None, ge=1, le=1_000_000)


class EndpointScale(Body):
    min_replicas: int = Field(ge=0, le=64)
    max_replicas: int = Field(ge=0, le=64)


class EndpointPublic(Out):
    org: str
    name: str
    model: str
    model_version: int
    task: str
    scheduler: str
    backend: Literal["ray", "slurm"]
    state: str
    reason: str
    min_replicas: int
    max_replicas: int
    max_batch_size: int
    batch_wait_ms: float
    cpus_per_replica: float
    rate_limit_per_s: float | None
    rate_limit_burst: int | None
    generation: int
    target_generation: int
    infer_path: str
    created_by: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, ep: Endpoint) -> EndpointPublic:
        return cls(org=ep.org.name, name=ep.name, model=ep.model_ref, model_version=ep.model_version, task=ep.task,
                   scheduler=ep.scheduler, backend=ep.backend, state=ep.state,
                   reason=ep.reason, min_replicas=ep.min_replicas, max_replicas=ep.max_replicas,
                   max_batch_size=ep.max_batch_size, batch_wait_ms=ep.batch_wait_ms,
                   cpus_per_replica=ep.cpus_per_replica, rate_limit_per_s=ep.rate_per_s, rate_limit_burst=ep.burst,
                   generation=ep.generation, target_generation=ep.target_generation,
                   infer_path=f"/v2/models/{ep.name}/infer",
                   created_by=ep.created_by.username if ep.created_by else None, created_at=ep.created_at,
                   updated_at=ep.updated_at)


class EndpointList(BaseModel):
    items: list[EndpointPublic]


@router.post("/orgs/{org}/endpoints", status_code=202, operation_id="create_endpoint")
def create_endpoint(org: str, body: EndpointCreate, principal: CurrentPrincipal, session: SessionDep,
                    hub: HubDep) -> EndpointPublic:
    """Deploy a zoo model as an endpoint; returns at once in state ``deploying`` (watch it with GET)."""
    options: dict[str, Any] = {k: v for k, v in (("partition", body.partition), ("gpus", body.gpus),
                                                 ("time_limit_min", body.time_limit_min)) if v}
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
