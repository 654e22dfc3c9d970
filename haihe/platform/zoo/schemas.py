"""The zoo API's bodies and answers (pydantic), shared by the router and the SDK.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from haihe.platform.api.schemas import Body

if TYPE_CHECKING:
    from haihe.model_zoo import ZooModel, ZooVersion
    from haihe.model_zoo.tracking import RunInfo

VisibilityName = Literal["private", "org", "public"]


# -- schemas ---------------------------------------------------------------------------------------------------------
class ModelPublic(BaseModel):
    ref: str
    org: str
    name: str
    visibility: str
    task: str
    description: str
    aliases: dict[str, int]
    card: dict[str, Any] | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, m: ZooModel) -> ModelPublic:
        return cls(ref=str(m.ref), org=m.org, name=m.name, visibility=m.visibility, task=m.task,
                   description=m.description, aliases=dict(m.aliases),
                   card=m.card.model_dump(mode="json") if m.card else None, created_at=m.created_at,
                   updated_at=m.updated_at)


class JobLinkPublic(BaseModel):
    id: str
    name: str
    org: str
    project: str
    state: str
    dataset: str | None


class LineagePublic(BaseModel):
    job_id: str | None
    job: JobLinkPublic | None = Field(None, description="The job, when the caller may see it.")
    run_id: str | None
    dataset: str | None
    environment: str | None = Field(None, description="sha256 of the resolved lock of the job's own environment.")
    endpoints: list[str]


@dataclass(frozen=True)
class VersionLineage:
    """Where a version came from, as far as the caller may see: job (None if not visible), run, dataset."""

    version: int
    job_id: str | None
    job: JobLinkPublic | None
    run_id: str | None
    dataset: str | None
    environment: str | None = None
    endpoints: list[str] = field(default_factory=list)  # filled once the endpoints service exposes them


class VersionPublic(BaseModel):
    ref: str
    version: int
    status: str
    source: str
    created_at: dt.datetime
    aliases: list[str]
    card: dict[str, Any] | None
    lineage: LineagePublic

    @classmethod
    def of(cls, v: ZooVersion, lineage: VersionLineage | None = None) -> VersionPublic:
        lin = LineagePublic(job_id=v.lineage.job_id, job=None, run_id=v.lineage.run_id, dataset=v.lineage.dataset,
                            environment=v.lineage.environment, endpoints=[])
        if lineage is not None:
            job = lineage.job
            lin = LineagePublic(job_id=lineage.job_id, run_id=lineage.run_id, dataset=lineage.dataset,
                                environment=lineage.environment, endpoints=list(lineage.endpoints),
                                job=job)
        return cls(ref=str(v.ref), version=v.version, status=v.status, source=v.source, created_at=v.created_at,
                   aliases=list(v.aliases), card=v.card.model_dump(mode="json") if v.card else None, lineage=lin)


class ModelDetail(ModelPublic):
    versions: list[VersionPublic]
    can_write: bool
    can_admin: bool


class AliasSet(Body):
    version: int | None = Field(description="The version the alias points at; null removes the alias.")


class VisibilitySet(Body):
    visibility: VisibilityName


class ModelRegister(Body):
    job_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    card: dict[str, Any]
    artifact_path: Annotated[str, StringConstraints(min_length=1, max_length=500)] = "model"
    run_id: Annotated[str | None, StringConstraints(pattern=r"^[0-9a-f]{32}$")] = None
    visibility: VisibilityName | None = None


class FilePublic(BaseModel):
    path: str
    size: int | None
    url: str


class DownloadPublic(BaseModel):
    ref: str
    version: int
    source: str
    presigned: bool = Field(description="True: the URLs are presigned S3 GETs (the bytes bypass the API).")
    files: list[FilePublic]


class DatasetModelPublic(BaseModel):
    model: str
    version: int
    ref: str
    job_id: str | None
    run_id: str | None


class MetricPointPublic(BaseModel):
    step: int
    value: float
    timestamp_ms: int


class RunPublic(BaseModel):
    run_id: str
    experiment_id: str
    name: str
    status: str
    start_ms: int | None
    end_ms: int | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @classmethod
    def of(cls, r: RunInfo) -> RunPublic:
        return cls(run_id=r.run_id, experiment_id=r.experiment_id, name=r.name, status=r.status, start_ms=r.start_ms,
                   end_ms=r.end_ms, params=dict(r.params), metrics=dict(r.metrics),
                   tags={k: v for k, v in r.tags.items() if not k.startswith("mlflow.log-model")})


class RunMetricsPublic(RunPublic):
    histories: dict[str, list[MetricPointPublic]]
