"""The jobs API's bodies and answers (pydantic), shared by the router and the SDK.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, Field

from haihe.platform.api.schemas import Body, Out

if TYPE_CHECKING:
    from haihe.platform.models import Job, JobEvent


class JobSubmit(Body):
    spec: dict[str, Any] = Field(description="The job spec (the YAML a researcher writes, as JSON).")
    code_uri: Annotated[str | None, Field(max_length=1024)] = None


class JobPublic(Out):
    id: str
    org: str
    project: str
    user: str
    name: str
    kind: str
    scheduler: str
    native_id: str | None
    state: str
    reason: str
    exit_code: int | None
    array_size: int
    nodes: list[str]
    queue_position: int | None
    created_at: dt.datetime
    submitted_at: dt.datetime | None
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    elapsed_s: float | None
    resubmitted_from: str | None
    attempt: int = 1  # 2, 3, ... after attempts the infrastructure lost (spec "retries")
    environment_ref: str | None = Field(None, description="sha256 of the resolved lock of the job's own Python "
                                        "environment (spec environment), once its nodes have it.")
    spec: dict[str, Any]

    @classmethod
    def of(cls, j: Job) -> JobPublic:
        return cls(id=j.id, org=j.org.name, project=j.project.name, user=j.user.username, name=j.name, kind=j.kind,
                   scheduler=j.scheduler, native_id=j.native_id, state=j.state, reason=j.reason,
                   exit_code=j.exit_code, array_size=j.array_size, nodes=list(j.nodes or []),
                   queue_position=j.queue_position, created_at=j.created_at, submitted_at=j.submitted_at,
                   started_at=j.started_at, ended_at=j.ended_at, elapsed_s=j.elapsed_s,
                   resubmitted_from=j.resubmitted_from, attempt=j.attempt or 1,
                   environment_ref=j.environment_ref, spec=j.spec)


class JobPage(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None


class EnvironmentPublic(Out):
    """A job environment built on a node: where, what it holds, who used it and when."""

    ref: str
    location: str = Field(description="node:path of the environment.")
    bytes: int
    jobs: int = Field(description="Jobs that used it there.")
    first_job_id: str | None
    built_at: dt.datetime
    last_used_at: dt.datetime
    pruned_at: dt.datetime | None = Field(description="When a node removed it (unused for a while).")


class JobEventPublic(Out):
    id: int
    at: dt.datetime
    kind: str
    state: str
    message: str
    data: dict[str, Any]

    @classmethod
    def of(cls, e: JobEvent) -> JobEventPublic:
        return cls.model_validate(e)


class LogsPublic(BaseModel):
    data: str
    offset: int
    complete: bool


class CodeUploadCreate(Body):
    size: int = Field(ge=1, description="Bytes of the packed workdir (tar.gz).")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class CodeUploadPublic(BaseModel):
    code_uri: str
    upload_url: str
    max_bytes: int
