"""Pages: the jobs list (keyset pages), a job (timeline, live logs as server-sent events, charts), cancel, resubmit."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse

from haihe.errors import HaiheError, ServiceUnavailable
from haihe.platform.access import Principal
from haihe.platform.context import PlatformContext
from haihe.platform.identity import service as identity
from haihe.platform.jobs import service as jobs
from haihe.platform.models import Job
from haihe.portal import extensions
from haihe.portal.summaries import STATE_TONE, job_charges, job_row
from haihe.portal.timeline import timeline
from haihe.portal.web import Page, PortalRoute, SignedIn, format_duration, format_when, redirect
from haihe.schedulers.base import JobState, LogChunk

router = APIRouter(route_class=PortalRoute, include_in_schema=False)
log = logging.getLogger(__name__)

PAGE_SIZE = 50
POLL_S = 1.0
KEEPALIVE_EVERY = 15  # polls between comments that keep proxies from closing an idle stream
MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
METRICS_EVERY = 2  # polls between re-reads of the run's metrics while the job runs (MLflow gets ~4 calls)
END_WAIT_POLLS = 60  # polls a finished log waits for the reconciler to record the job's final state
TERMINAL_STATES = frozenset(st.value for st in JobState if st.is_terminal())


@router.get("/jobs", response_class=HTMLResponse)
def jobs_list(
    page: SignedIn,
    org: Annotated[str, Query(max_length=63)] = "",
    state: Annotated[str, Query(max_length=16)] = "",
    mine: bool = False,
    cursor: Annotated[str, Query(max_length=200)] = "",
) -> HTMLResponse:
    s, p = page.session, page.principal
    orgs = [o.name for o in identity.list_orgs(s, p)]
    # default to one org: the list query then walks the (org_id, created_at, id) index from the top
    if not org and not p.is_platform_admin and orgs:
        org = orgs[0]
    result = jobs.list_jobs(s, p, org=org or None, states=(state,) if state else (), mine=mine,
                            cursor=cursor or None, limit=PAGE_SIZE)
    return page.render("jobs.html", nav="jobs", rows=[job_row(j) for j in result.items],
                       next_cursor=result.next_cursor, orgs=orgs, org=org, state=state, mine=mine,
                       states=[st.value for st in JobState], first_page=not cursor)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(job_id: str, page: SignedIn, done: str = "") -> HTMLResponse:
    s, p = page.session, page.principal
    job = jobs.get_job(s, p, job_id)
    events = jobs.events(s, p, job_id)
    spec_yaml = yaml.safe_dump(job.spec, sort_keys=False,
                               allow_unicode=True)
    return page.render("job.html", nav="jobs", job=job_row(job), timeline=timeline(events, page.t, job.scheduler,
                                                                                   format_when),
                       spec_yaml=spec_yaml,
                       charges=job_charges(s, job.id), metrics=extensions.job_metrics(page, job.id),
                       run_links=extensions.run_links(page, job.id),
                       done=done if done in ("cancelled", "submitted", "resubmitted") else "",
                       can_cancel=not JobState(job.state).is_terminal(), resubmitted_from=job.resubmitted_from,
                       environment_ref=job.environment_ref,
                       attempt=job.attempt or 1, attempt_limit=1 + int(job.spec.get("retries", 0) or 0),
                       produced=produced_versions(page, job),
                       state_names={st.value: page.t(f"state.{st.value}") for st in JobState})


def produced_versions(page: Page, job: Job) -> list[dict[str, Any]]:
    """The zoo versions this job registered (``register:`` in its spec), found by the job id in their lineage."""
    target = (job.spec.get("register") or {}).get("name") if isinstance(job.spec.get("register"), dict) else None
    if not target or job.state != JobState.SUCCEEDED.value or not page.ctx.settings.mlflow_url:
        return []
    from haihe.platform.zoo import catalog as zoo_catalog
    from haihe.platform.zoo.router import get_services

    ref = f"{job.org.name}/{target}"
    try:
        detail = zoo_catalog.get_model(get_services(page.request, page.ctx), page.session, page.principal, ref)
    except (HaiheError, OSError) as exc:
        log.info("zoo versions of job %s unavailable: %s", job.id, exc)
        return []
    return [{"org": job.org.name, "name": target, "version": v.version} for v in detail.versions
            if v.lineage.job_id == job.id]


def _read_logs(ctx: PlatformContext, principal: Principal, job_id: str, offset: int) -> tuple[LogChunk, str, str]:
    """One poll: the next chunk and the job's state; an unreachable scheduler is a notice, not the end."""
    with ctx.db.session() as s:
        try:
            chunk = jobs.logs(ctx, s, principal, job_id, offset)
            notice = ""
        except ServiceUnavailable as exc:
            chunk, notice = LogChunk("", offset, complete=False), exc.message
        job = s.get(Job, job_id)
        return chunk, job.state if job else "", notice


def _job_state(ctx: PlatformContext, job_id: str) -> str:
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        return job.state if job else ""


def job_snapshot(page: Page, ctx: PlatformContext, job_id: str) -> dict[str, Any]:
    """What the job page shows that changes while the job runs, rendered as the page renders it: state, reason,
    nodes, elapsed time, timeline and which actions fit the state. Sent as one ``job`` event when it changes."""
    with ctx.db.session() as s:
        job = jobs.get_job(s, page.principal, job_id)
        row = job_row(job)
        events = jobs.events(s, page.principal, job_id)
        entries = timeline(events, page.t, job.scheduler, format_when)
    return {"state": row["state"], "label": page.t(f"state.{row['state']}"), "tone": row["tone"],
            "terminal": row["terminal"], "reason": row["reason"] or "",
            "nodes": ", ".join(row["allocated_nodes"]) or "—", "elapsed": format_duration(row["elapsed_s"]),
            "timeline": entries}


def _metrics_now(page: Page, ctx: PlatformContext, job_id: str) -> dict[str, list[list[float]]]:
    with ctx.db.session() as s:
        return extensions.job_metrics(page, job_id, session=s)


def _sse(event: str, data: dict[str, Any], event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


@router.get("/jobs/{job_id}/logs/stream")
async def log_stream(job_id: str, request: Request, page: SignedIn,
                     offset: Annotated[int, Query(ge=0)] = 0) -> StreamingResponse:
    """Server-sent events, the job page's one live source: ``log`` chunks (the id is the offset to resume from),
    ``state`` changes, ``job`` (state, reason, nodes, elapsed, timeline, actions) when it changes, ``metrics``
    (the curves, re-read every few seconds while the job runs), then ``end``."""
    await run_in_threadpool(jobs.get_job, page.session, page.principal, job_id)  # 404 for other tenants
    page.session.close()  # the stream polls with short sessions of its own
    last = request.headers.get("last-event-id", "")
    start = int(last) if last.isdigit() else offset
    ctx, principal = page.ctx, page.principal

    async def live(polls: int, final: bool, sent: dict[str, str]) -> AsyncIterator[str]:
        """``job`` and ``metrics`` events for what changed since they were last sent."""
        snapshot = await run_in_threadpool(job_snapshot, page, ctx, job_id)
        if (text := json.dumps(snapshot, sort_keys=True)) != sent.get("job"):
            sent["job"] = text
            yield _sse("job", snapshot)
        if final or polls % METRICS_EVERY == 0:
            metrics = await run_in_threadpool(_metrics_now, page, ctx, job_id)
            if metrics and (text := json.dumps(metrics, sort_keys=True)) != sent.get("metrics"):
                sent["metrics"] = text
                yield _sse("metrics", {"series": metrics})

    async def events() -> AsyncIterator[str]:
        # Starlette cancels this generator when the browser goes away (it listens for http.disconnect)
        pos, state, polls = start, "", 0
        sent: dict[str, str] = {}
        while True:
            chunk, new_state, notice = await run_in_threadpool(_read_logs, ctx, principal, job_id, pos)
            if new_state != state:
                state = new_state
                yield _sse("state", {"state": state, "tone": STATE_TONE.get(state, "muted")})
            async for event in live(polls, False, sent):
                yield event
            if notice:
                yield _sse("notice", {"message": notice})
            if chunk.data:
                yield _sse("log", {"text": chunk.data}, chunk.offset)
            pos = chunk.offset
            if chunk.complete:
                # The scheduler can call the job over a moment before the reconciler records it: hold the end
                # until the platform's own state is final, so the page's badge shows how the job ended.
                for _ in range(END_WAIT_POLLS):
                    if state in TERMINAL_STATES or not state:
                        break
                    await asyncio.sleep(POLL_S)
                    new_state = await run_in_threadpool(_job_state, ctx, job_id)
                    if new_state != state:
                        state = new_state
                        yield _sse("state", {"state": state, "tone": STATE_TONE.get(state, "muted")})
                async for event in live(polls, True, sent):
                    yield event
                yield _sse("end", {"state": state})
                return
            polls += 1
            if polls % KEEPALIVE_EVERY == 0:
                yield ": keepalive\n\n"
            await asyncio.sleep(POLL_S)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/jobs/{job_id}/logs.txt")
def download_logs(job_id: str, page: SignedIn) -> Response:
    job = jobs.get_job(page.session, page.principal, job_id)
    parts, offset, size = [], 0, 0
    while size < MAX_DOWNLOAD_BYTES:
        chunk = jobs.logs(page.ctx, page.session, page.principal, job_id, offset)
        if not chunk.data or chunk.offset == offset:
            break
        parts.append(chunk.data)
        size += len(chunk.data)
        offset = chunk.offset
    return PlainTextResponse("".join(parts), headers={
        "Content-Disposition": f'attachment; filename="{job.name}-{job.id[:8]}.log"'})


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, page: SignedIn) -> Response:
    jobs.cancel(page.ctx, page.session, page.principal, job_id)
    return redirect(f"/jobs/{job_id}?done=cancelled")


@router.post("/jobs/{job_id}/resubmit")
def resubmit_job(job_id: str, page: SignedIn) -> Response:
    try:
        new = jobs.resubmit(page.ctx, page.session, page.principal, job_id)
    except HaiheError:
        page.session.rollback()  # nothing half-made survives a refusal (quota, validation)
        raise
    return redirect(f"/jobs/{new.id}?done=resubmitted")
