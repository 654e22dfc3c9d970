"""Routes: submit, list (keyset pages), show, timeline, logs, cancel, resubmit; code bundle uploads."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from pydantic import BaseModel, Field

from haihe.platform.api.deps import CtxDep, CurrentPrincipal, SessionDep
from haihe.platform.api.schemas import Body, Out
from haihe.platform.jobs import code
from haihe.platform.jobs import service as jobs
from haihe.platform.models import Job, JobEvent

router = APIRouter(prefix="/api/v1", tags=["jobs"])


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
    spec: dict[str, Any]

    @classmethod
    def of(cls, j: Job) -> JobPublic:
        return cls(id=j.id, org=j.org.name, project=j.project.name, user=j.user.username, name=j.name, kind=j.kind,
                   scheduler=j.scheduler, native_id=j.native_id, state=j.state, reason=j.reason,
                   exit_code=j.exit_code, array_size=j.array_size, nodes=list(j.nodes or []),
                   queue_position=j.queue_position, created_at=j.created_at, submitted_at=j.submitted_at,
                   started_at=j.started_at, ended_at=j.ended_at, elapsed_s=j.elapsed_s,
                   resubmitted_from=j.resubmitted_from, attempt=j.attempt or 1,
                   spec={k: v for k, v in j.spec.items() if not k.startswith("_")})


class JobPage(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None


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


IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=128)]


Prefer = Annotated[str | None, Header(max_length=200, description=(
    "`respond-async`: answer 202 as soon as the job is stored (state PENDING, no native id yet); the API process "
    "submits it to the scheduler right after. Without it the answer waits for the scheduler (201, SUBMITTED)."))]


@router.post("/orgs/{org}/projects/{project}/jobs", operation_id="jobs_submit", status_code=201,
             response_model=JobPublic, responses={202: {"model": JobPublic, "description": "stored, submitting"}})
def submit_job(org: str, project: str, body: JobSubmit, principal: CurrentPrincipal, session: SessionDep,
               ctx: CtxDep, response: Response, idempotency_key: IdempotencyKey = None,
               prefer: Prefer = None) -> JobPublic:
    asynchronous = "respond-async" in [p.strip().lower() for p in (prefer or "").split(",")]
    job = jobs.submit(ctx, session, principal, org, project, body.spec, idempotency_key=idempotency_key,
                      code_uri=body.code_uri, wait=not asynchronous)
    if asynchronous:
        response.status_code = 202
        response.headers["Preference-Applied"] = "respond-async"
    return JobPublic.of(job)  # as written (the session does not expire what it commits): no re-read


@router.post("/orgs/{org}/projects/{project}/code", operation_id="code_upload_create", status_code=201,
             response_model=CodeUploadPublic)
def create_code_upload(org: str, project: str, body: CodeUploadCreate, principal: CurrentPrincipal,
                       session: SessionDep, ctx: CtxDep) -> CodeUploadPublic:
    """A presigned PUT URL for the packed workdir: the bytes go straight to S3, never through the API."""
    upload = code.create_upload(ctx, session, principal, org, project, body.size, body.sha256)
    return CodeUploadPublic(code_uri=upload.code_uri, upload_url=upload.url, max_bytes=upload.max_bytes)


@router.get("/jobs", operation_id="jobs_list", response_model=JobPage)
def list_jobs(
    principal: CurrentPrincipal,
    session: SessionDep,
    org: Annotated[str | None, Query(max_length=63)] = None,
    project: Annotated[str | None, Query(max_length=63)] = None,
    state: Annotated[list[str] | None, Query(max_length=10)] = None,
    mine: bool = False,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobPage:
    page = jobs.list_jobs(session, principal, org=org, project=project, states=state or (), mine=mine,
                          cursor=cursor, limit=limit)
    return JobPage(items=[JobPublic.of(j) for j in page.items], next_cursor=page.next_cursor)


@router.get("/jobs/{job_id}", operation_id="jobs_get", response_model=JobPublic)
def get_job(job_id: str, principal: CurrentPrincipal, session: SessionDep) -> JobPublic:
    return JobPublic.of(jobs.get_job(session, principal, job_id))


@router.get("/jobs/{job_id}/events", operation_id="jobs_events", response_model=list[JobEventPublic])
def job_events(job_id: str, principal: CurrentPrincipal, session: SessionDep) -> list[JobEventPublic]:
    return [JobEventPublic.of(e) for e in jobs.events(session, principal, job_id)]


@router.get("/jobs/{job_id}/logs", operation_id="jobs_logs", response_model=LogsPublic)
def job_logs(job_id: str, principal: CurrentPrincipal, session: SessionDep, ctx: CtxDep,
             offset: Annotated[int, Query(ge=0)] = 0) -> LogsPublic:
    chunk = jobs.logs(ctx, session, principal, job_id, offset)
    return LogsPublic(data=chunk.data, offset=chunk.offset, complete=chunk.complete)


@router.post("/jobs/{job_id}/cancel", operation_id="jobs_cancel", response_model=JobPublic)
def cancel_job(job_id: str, principal: CurrentPrincipal, session: SessionDep, ctx: CtxDep) -> JobPublic:
    return JobPublic.of(jobs.cancel(ctx, session, principal, job_id))


@router.post("/jobs/{job_id}/resubmit", operation_id="jobs_resubmit", status_code=201, response_model=JobPublic)
def resubmit_job(job_id: str, principal: CurrentPrincipal, session: SessionDep, ctx: CtxDep,
                 idempotency_key: IdempotencyKey = None) -> JobPublic:
    job = jobs.resubmit(ctx, session, principal, job_id, idempotency_key)
    session.refresh(job)
    return JobPublic.of(job)
