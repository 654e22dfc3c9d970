"""The endpoints API's bodies and answers (pydantic), shared by the router and the SDK.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, Field, field_validator

from haihe.platform.api.schemas import Body, Name, Out

if TYPE_CHECKING:
    from haihe.platform.endpoints.rows import Endpoint

ModelRef = Annotated[str, Field(min_length=3, max_length=200, examples=["public/minilm-l6@production"])]


class EndpointEnvironment(Body):
    pip: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(min_length=1, max_length=200)

    @field_validator("pip")
    @classmethod
    def _requirements(cls, v: list[str]) -> list[str]:
        from haihe.jobs.spec import check_requirements

        return check_requirements(v)  # the jobs' one rule for requirement strings


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
    environment: EndpointEnvironment | None = Field(
        None, description="Python packages the model needs beyond the platform's (Slurm endpoints): built once by "
        "uv on the node, cached by their lock (docs/environments.md).")


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
