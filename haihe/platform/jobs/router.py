"""Routes: submit, list (keyset pages), show, timeline, logs, cancel, resubmit; code bundle uploads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from haihe.platform.api.deps import CtxDep, CurrentPrincipal, SessionDep, require_principal
from haihe.platform.jobs import code, environment
from haihe.platform.jobs import service as jobs
from haihe.platform.jobs.schemas import (
    CodeUploadCreate,
    CodeUploadPublic,
    EnvironmentPublic,
    JobEventPublic,
    JobPage,
    JobPublic,
    JobSubmit,
    LogsPublic,
)

router = APIRouter(prefix="/api/v1", tags=["jobs"])


@router.get("/orgs/{org}/environments", operation_id="environments_list", response_model=list[EnvironmentPublic])
def list_environments(org: str, principal: CurrentPrincipal, session: SessionDep,
                      pruned: Annotated[bool, Query(description="Also those nodes removed.")] = False
                      ) -> list[EnvironmentPublic]:
    """The org's job environments (spec ``environment``) on the nodes, with the storage they hold (org admins)."""
    return [EnvironmentPublic.model_validate(e)
            for e in environment.list_for_org(session, principal, org, include_pruned=pruned)]


IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=128)]


Prefer = Annotated[str | None, Header(max_length=200, description=(
    "`respond-async`: answer 202 as soon as the job is stored (state PENDING, no native id yet); the API process "
    "submits it to the scheduler right after. Without it the answer waits for the scheduler (201, SUBMITTED)."))]


@router.post("/orgs/{org}/projects/{project}/jobs", operation_id="jobs_submit", status_code=201,
             response_model=JobPublic, responses={202: {"model": JobPublic, "description": "stored, submitting"}})
async def submit_job(org: str, project: str, body: JobSubmit, request: Request, ctx: CtxDep, response: Response,
                     idempotency_key: IdempotencyKey = None, prefer: Prefer = None) -> JobPublic:
    # The hot path of a busy centre: authentication, the submit and the commit in ONE thread-pool call, not one
    # per sync dependency (session, caller, route: each a hop through the pool's queue). Same rules as
    # CurrentPrincipal + SessionDep: the caller is checked first, the transaction commits before the answer.
    asynchronous = "respond-async" in [p.strip().lower() for p in (prefer or "").split(",")]

    def submit() -> JobPublic:
        with ctx.db.session() as session:
            principal = require_principal(request, ctx, session)
            job = jobs.submit(ctx, session, principal, org, project, body.spec, idempotency_key=idempotency_key,
                              code_uri=body.code_uri, wait=not asynchronous)
            return JobPublic.of(job)  # as written (the session does not expire what it commits): no re-read

    out = await run_in_threadpool(submit)
    if asynchronous:
        response.status_code = 202
        response.headers["Preference-Applied"] = "respond-async"
    return out


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
