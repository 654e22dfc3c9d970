"""The job service: submit (idempotent, quota-gated, never a ghost), list, show, timeline, logs, cancel, resubmit.

Submission order, and why: validate the spec and check it against the scheduler's abilities (4xx, nothing stored);
take the quota reservation and commit the job row as PENDING with its UUID (so a crash after this point leaves a
job the reconciler can find by tag); call the scheduler; store the native id as SUBMITTED. If the scheduler cannot
be reached the job stays PENDING with a visible reason and the reconciler submits it later (after asking the
scheduler whether the tag already exists, so it is never submitted twice).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from haihe.errors import (
    Conflict,
    HaiheError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    TrackingUnavailable,
)
from haihe.jobs.render import RenderContext, render_launch
from haihe.jobs.spec import JobSpec, validate_spec
from haihe.platform import access, audit
from haihe.platform.access import Principal
from haihe.platform.context import PlatformContext
from haihe.platform.datasets.credentials import credentials_url
from haihe.platform.identity import unix_accounts
from haihe.platform.jobs import code, ray_policy
from haihe.platform.jobs.dispatcher import Dispatcher
from haihe.platform.jobs.environment import environment_url
from haihe.platform.models import Job, JobEvent, Org, Project, Role, User, utcnow
from haihe.platform.settings import Settings
from haihe.platform.tracking.proxy import JobScope, issue_token, job_tracking
from haihe.platform.zoo import catalog as zoo_catalog
from haihe.schedulers.base import Feature, JobState, JobStatus, Launch, LogChunk
from haihe.schedulers.slurm.accounts import account_name

log = logging.getLogger(__name__)
SUBMIT_LEASE = dt.timedelta(minutes=2)  # longer than any scheduler call may take (slurmrestd's timeouts)


def add_event(session: Session, job: Job, kind: str, message: str = "", **data: Any) -> None:
    session.add(JobEvent(job_id=job.id, kind=kind, state=job.state, message=message[:2000], data=data))


def _render_context(ctx: PlatformContext, job: Job, org: Org, project: Project, user: User,
                    unix_user: str | None = None, account: str | None = None) -> RenderContext:
    s = ctx.settings
    # jobs reach MLflow only through the platform's proxy, with a token for their own project (docs/tracking.md)
    scope = JobScope(job.id, org.name, project.name)
    mlflow_url, mlflow_token = job_tracking(s.mlflow_url, s.public_url, s.secret_key, scope)
    # no S3 keys for jobs: their token buys short-lived, job-scoped credentials (docs/storage-credentials.md)
    job_token = mlflow_token or issue_token(s.secret_key, scope)
    return RenderContext(
        job_id=job.id,
        org=org.name,
        project=project.name,
        user=user.username,
        node_python=s.node_python,
        mlflow_url=mlflow_url,
        mlflow_token=mlflow_token,
        s3_endpoint=s.s3_endpoint,
        # the token buys storage credentials, and reports the job's own environment (spec environment)
        job_token=job_token if s.s3_endpoint or job.spec.get("environment") else "",
        storage_credentials_url=credentials_url(s.public_url, job.id) if s.s3_endpoint else "",
        code_uri=job.code_uri,
        checkpoint_uri=f"s3://{s.code_bucket}/checkpoints/{org.name}/{job.id}" if s.s3_endpoint else None,
        output_uri=f"s3://{s.code_bucket}/outputs/{org.name}/{job.id}" if s.s3_endpoint else None,
        datasets_bucket=s.datasets_bucket,
        dataset=job.dataset_ref,
        account=account,
        unix_user=unix_user,
        attempt=job.attempt or 1,
        environment_lock=job.environment_lock,
        environment_ref=job.environment_ref,
        container=container_config(s),
        env_keep_days=s.environment_keep_days,
        environment_url=environment_url(s.public_url, job.id),
    )


def container_config(settings: Settings) -> str:
    """``HAIHE_CONTAINER``: how the nodes run images, from the site's settings (JSON; empty when none)."""
    if not settings.container_runtime:
        return ""
    return json.dumps({"runtime": settings.container_runtime, "args": list(settings.container_args)})


def launch_for(ctx: PlatformContext, session: Session, job: Job, spec: JobSpec | None = None) -> Launch:
    """The job's Launch. ``spec``: the one the request has just validated (a stored job's spec is parsed here)."""
    spec = spec or validate_spec(job.spec)
    org = session.get(Org, job.org_id)
    project = session.get(Project, job.project_id)
    user = session.get(User, job.user_id)
    assert org is not None and project is not None and user is not None
    scheduler = ctx.scheduler(job.scheduler)
    # a scheduler that runs jobs as a user needs the user's Unix account (a 4xx naming "user" when there is none);
    # one with accounts gets the org's project account (Slurm: <org>.<project>)
    unix_user = unix_accounts.for_job(ctx, session, org, user) if unix_accounts.runs_as_user(scheduler) else None
    account = None if Feature.ACCOUNTS in scheduler.unsupported else account_name(org.name, project.name)
    launch = render_launch(spec, _render_context(ctx, job, org, project, user, unix_user, account))
    return replace(launch, tag=attempt_tag(job))


def attempt_tag(job: Job) -> str:
    """The scheduler tag of the job's current attempt: the job id, then ``<id>.2``, ``<id>.3``: a new attempt is a
    new scheduler job, and the lost one (Slurm may still list it) is never adopted as the new one."""
    return job.id if (job.attempt or 1) <= 1 else f"{job.id}.{job.attempt}"


def retry_lost(ctx: PlatformContext, session: Session, job: Job, st: JobStatus) -> bool:
    """The scheduler lost the job's current attempt (``st.lost``): if the spec's ``retries`` allow another, settle
    this attempt (charged for what it ran), reserve the next and leave the job PENDING for the reconciler to submit
    as attempt n+1; returns False (the caller ends the job) when no retry is left or the quota has no room."""
    retries = int(job.spec.get("retries", 0) or 0)
    attempt = job.attempt or 1
    if not st.lost or attempt > retries:
        return False
    now = utcnow()
    prev_state = job.state
    # charge the lost attempt for what it ran: start to now when the scheduler reported no accounting
    job.ended_at = dt.datetime.fromtimestamp(st.ended_at, dt.UTC) if st.ended_at else now
    job.state = JobState.FAILED.value  # what the settled attempt ended as (the ledger note says so)
    ctx.quota.settle(session, job, st)
    why = st.reason or "lost by the scheduler"
    job.attempt = attempt + 1
    try:
        ctx.quota.reserve(session, job, launch_for(ctx, session, job))
    except HaiheError as exc:  # no room for another attempt: the job ends, and the timeline says why
        job.attempt = attempt
        job.state = prev_state
        add_event(session, job, "retry_refused", f"attempt {attempt} lost ({why}); not run again: {exc.message}")
        return False
    add_event(session, job, "retrying", f"attempt {attempt} lost ({why}); running again as attempt "
              f"{attempt + 1} of {retries + 1}", attempt=attempt + 1, lost_native_id=job.native_id)
    job.state = JobState.PENDING.value
    job.native_id = None
    job.reason = f"attempt {attempt} lost; waiting to submit attempt {attempt + 1}"
    job.started_at = job.ended_at = None
    job.nodes = []
    job.exit_code = None
    job.elapsed_s = None
    job.queue_position = None
    job.submit_attempts = max(job.submit_attempts, 1)  # submitted at once by the next cycle, no grace
    job.updated_at = now
    return True


def _scheduler_name(ctx: PlatformContext, spec: JobSpec) -> str:
    name = spec.scheduler or ctx.settings.default_scheduler
    if not name:
        raise InvalidInput("no scheduler named and the platform has no default scheduler", field="scheduler")
    if name not in ctx.settings.schedulers:
        valid = ", ".join(sorted(ctx.settings.schedulers)) or "none configured"
        raise InvalidInput(f"unknown scheduler {name!r}; valid: {valid}", field="scheduler")
    return name


def submit(
    ctx: PlatformContext,
    session: Session,
    principal: Principal,
    org_name: str,
    project_name: str,
    raw_spec: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    code_uri: str | None = None,
    resubmitted_from: str | None = None,
    environment: tuple[str | None, str] | None = None,
    wait: bool = True,
) -> Job:
    """Admit, store (row, quota reservation, timeline, audit: one commit) and hand to the scheduler. ``wait``
    False: return the stored PENDING job at once; the process's dispatcher submits it
    (``haihe.platform.jobs.dispatcher``).
    """
    spec = validate_spec(raw_spec)
    project = access.project_for_write(session, principal, org_name, project_name)  # members with a write role
    if idempotency_key:
        if len(idempotency_key) > 128:
            raise InvalidInput("Idempotency-Key is longer than 128 characters", field="idempotency_key")
        existing = session.scalar(select(Job).where(Job.user_id == principal.user_id,
                                                    Job.idempotency_key == idempotency_key))
        if existing is not None:
            if existing.project_id != project.id or existing.spec.get("name") != spec.name:
                raise Conflict("Idempotency-Key already used for a different job", field="idempotency_key")
            return existing
    if code_uri is not None:
        code.check_bundle(ctx, code_uri, org_name, project_name)
    if spec.workdir and code_uri is None:
        raise InvalidInput("workdir is packed and uploaded by the CLI; submit with its code_uri", field="workdir")
    if spec.environment and (spec.environment.requirements or spec.environment.lock) and code_uri is None:
        which = "requirements" if spec.environment.requirements else "lock"
        raise InvalidInput(f"environment.{which} names a file of the job's code; submit it with its workdir "
                           "(or give environment.pip)", field=f"environment.{which}")
    if spec.environment and spec.environment.image and not ctx.settings.container_runtime:
        raise InvalidInput("this platform runs no container images (its admins set HAIHE_CONTAINER_RUNTIME to "
                           "podman or apptainer to allow them)", field="environment.image")
    _require_tracking(ctx, spec)
    _check_base_model(ctx, session, principal, spec)
    scheduler_name = ray_policy.route(ctx.settings, _scheduler_name(ctx, spec), org_name, spec)
    scheduler = ctx.scheduler(scheduler_name)
    stored = spec.model_dump(mode="json", exclude_none=True, by_alias=True)
    dataset_ref = _resolve_dataset(session, principal, org_name, spec) if spec.dataset is not None else None
    job = Job(
        id=str(uuid.uuid4()),
        org_id=project.org_id,
        project_id=project.id,
        user_id=principal.user_id,
        name=spec.name,
        kind=spec.kind,
        scheduler=scheduler_name,
        state=JobState.PENDING.value,
        spec=stored,
        code_uri=code_uri or None,
        dataset_ref=dataset_ref,
        idempotency_key=idempotency_key,
        array_size=spec.sweep_size(),
        resubmitted_from=resubmitted_from,
        # a resubmit installs exactly the lock the first run resolved (spec environment)
        environment_ref=environment[0] if environment and spec.environment else None,
        environment_lock=environment[1] if environment and spec.environment else None,
    )
    launch = launch_for(ctx, session, job, spec)  # validated once, above
    scheduler.check(launch)  # refuse what the backend cannot do: a 4xx, nothing stored
    # ... or what the live cluster cannot run (partition, GPUs per node, walltime). A cluster that cannot be asked
    # now: the job is stored, and submitted (and admitted) once it answers.
    with contextlib.suppress(ServiceUnavailable):
        scheduler.admit(launch)
    session.add(job)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent request with the same key won the race
        session.rollback()
        raise Conflict("a job with this Idempotency-Key is being submitted", field="idempotency_key") from exc
    ctx.quota.reserve(session, job, launch)
    add_event(session, job, "created", f"job {spec.name} created", scheduler=scheduler_name)
    audit.record(session, principal, "job.submit", target_type="job", target=job.id, org_id=job.org_id,
                 details={"name": spec.name, "scheduler": scheduler_name})
    session.commit()  # the row exists before the scheduler hears of it
    if wait:
        dispatch(ctx, session, job, launch)
    else:
        dispatcher(ctx).put(job.id, launch)
    return job


def _require_tracking(ctx: PlatformContext, spec: JobSpec) -> None:
    """A job that must register a model or load one from the zoo cannot do without MLflow: refuse it now, with the
    reason, instead of letting it fail on the node (a job that only logs metrics runs on and logs nothing)."""
    needs = "registers a model in the zoo" if spec.registration else "loads a zoo model" if spec.model else None
    if needs is None or not ctx.settings.mlflow_url:
        return
    import httpx

    try:
        ok = httpx.get(ctx.settings.mlflow_url.rstrip("/") + "/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        ok = False
    if not ok:
        raise TrackingUnavailable(f"tracking (MLflow) is unavailable and this job {needs}; nothing was submitted, "
                                  "try again when it is back", component="mlflow")


def _check_base_model(ctx: PlatformContext, session: Session, principal: Principal, spec: JobSpec) -> None:
    """``model.from_zoo`` names a model (and alias or version) the submitter may read, or nothing is stored."""
    if spec.model is None or not ctx.settings.mlflow_url:
        return
    ref = spec.model.from_zoo
    try:
        zoo_catalog.get_model(zoo_catalog.services(ctx), session, principal, ref)
    except InvalidInput as exc:
        raise InvalidInput(f"model {ref}: {exc.message}", field="model.from_zoo") from None
    except NotFound:
        raise InvalidInput(f"model {ref} is not in the zoo, or not visible to you; `haihe zoo list` shows the "
                           "models you may use", field="model.from_zoo") from None


def _resolve_dataset(session: Session, principal: Principal, org_name: str, spec: JobSpec) -> str:
    """``org/name@vN`` of a committed version the submitter may read; "latest" is pinned now, at submit."""
    from haihe.platform.datasets import service as datasets_service

    assert spec.dataset is not None
    name = spec.dataset.name if "/" in spec.dataset.name else f"{org_name}/{spec.dataset.name}"
    version = spec.dataset.version
    ref = f"{name}@v{version}" if version != "latest" else f"{name}@latest"
    try:
        org, ds, number = datasets_service.resolve_ref(session, principal, ref)
    except (NotFound, InvalidInput) as exc:
        field = "dataset.version" if "version" in exc.message else "dataset.name"
        raise InvalidInput(f"dataset {ref}: {exc.message}", field=field) from None
    return f"{org}/{ds}@v{number}"


def claim(session: Session, job: Job, lease: dt.timedelta = SUBMIT_LEASE) -> bool:
    """Take a stored PENDING job for one submit attempt: a lease set by compare-and-set and committed before the
    scheduler hears of it, so the dispatcher and the reconciler (of this process or another) never both submit it.
    The attempt ends the lease (submitted, deferred or refused); a submitter that dies holding it loses it after
    ``lease``. False: someone else holds it, or it is no longer PENDING."""
    now = utcnow()
    result = session.execute(update(Job).where(
        Job.id == job.id, Job.state == JobState.PENDING.value, Job.native_id.is_(None),
        or_(Job.submit_claimed_until.is_(None), Job.submit_claimed_until < now),
    ).values(submit_claimed_until=now + lease))
    session.commit()
    won = getattr(result, "rowcount", 0) == 1
    if won:
        set_committed_value(job, "submit_claimed_until", now + lease)
    return won


def dispatch(ctx: PlatformContext, session: Session, job: Job, launch: Launch | None = None) -> None:
    """Hand a PENDING job to its scheduler; on an outage leave it PENDING with the reason (the reconciler retries).
    The dispatcher and the reconciler :func:`claim` the job first; the submitting request needs not (no one else
    looks at a job within the reconciler's grace)."""
    scheduler = ctx.scheduler(job.scheduler)
    launch = launch or launch_for(ctx, session, job)
    job.submit_attempts += 1
    job.submit_claimed_until = None  # the attempt's outcome is committed with it: the lease ends there
    try:
        ref = scheduler.submit(launch)
    except ServiceUnavailable as exc:
        job.reason = f"waiting to submit: {exc.message}"
        add_event(session, job, "submit_deferred", job.reason)
        session.commit()
        return
    except HaiheError as exc:  # the scheduler refused it: a clear final state, nothing running
        _finish(session, job, JobState.FAILED, f"scheduler refused the job: {exc.message}")
        ctx.quota.release(session, job)
        session.commit()
        return
    job.native_id = ref
    job.state = JobState.SUBMITTED.value
    job.submitted_at = utcnow()
    job.reason = ""
    job.updated_at = utcnow()
    add_event(session, job, "submitted", f"submitted to {job.scheduler} as {ref}", native_id=ref)
    session.commit()


def dispatcher(ctx: PlatformContext) -> Dispatcher:
    """The process's dispatcher of stored jobs (``Prefer: respond-async``): it runs :func:`dispatch`."""
    def submit(session: Session, job: Job, launch: Launch | None) -> None:
        if claim(session, job):
            dispatch(ctx, session, job, launch)

    return ctx.service("dispatcher", lambda: Dispatcher(ctx, submit))


def _finish(session: Session, job: Job, state: JobState, reason: str, exit_code: int | None = None) -> None:
    job.state = state.value
    job.reason = reason
    job.exit_code = exit_code
    job.ended_at = job.ended_at or utcnow()
    job.updated_at = utcnow()
    add_event(session, job, "finished", reason or state.value.lower(), exit_code=exit_code)


# -- reading ----------------------------------------------------------------------------------------------------
def get_job(session: Session, principal: Principal, job_id: str) -> Job:
    try:
        uuid.UUID(job_id)
    except ValueError:
        raise NotFound(f"job {job_id!r} not found", field="job_id") from None
    job = session.get(Job, job_id)
    if job is None or not principal.can_see_org(job.org_id):
        raise NotFound(f"job {job_id!r} not found", field="job_id")
    return job


@dataclass(frozen=True)
class Page:
    items: Sequence[Job]
    next_cursor: str | None


def _encode_cursor(job: Job) -> str:
    return base64.urlsafe_b64encode(f"{job.created_at.isoformat()}|{job.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        created, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return dt.datetime.fromisoformat(created), job_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("invalid cursor", field="cursor") from None


def list_jobs(
    session: Session,
    principal: Principal,
    *,
    org: str | None = None,
    project: str | None = None,
    states: Sequence[str] = (),
    mine: bool = False,
    cursor: str | None = None,
    limit: int = 50,
) -> Page:
    """Newest first, keyset-paginated on (created_at, id) so page N costs the same as page 1."""
    q = select(Job)
    if org is not None:
        org_row = access.org_for_read(session, principal, org)
        q = q.where(Job.org_id == org_row.id)
        if project is not None:
            proj = access.project_for_read(session, principal, org, project)
            q = q.where(Job.project_id == proj.id)
    else:
        visible = principal.visible_org_ids()
        if visible is not None:
            q = q.where(Job.org_id.in_(visible))
        if project is not None:
            raise InvalidInput("filtering by project needs org", field="project")
    if mine:
        q = q.where(Job.user_id == principal.user_id)
    valid = {s.value for s in JobState}
    for s in states:
        if s not in valid:
            raise InvalidInput(f"unknown state {s!r}; valid: {', '.join(sorted(valid))}", field="state")
    if states:
        q = q.where(Job.state.in_(states))
    if cursor:
        created, job_id = _decode_cursor(cursor)
        q = q.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id)))
    rows = session.scalars(q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)).all()
    items = rows[:limit]
    return Page(items, _encode_cursor(items[-1]) if len(rows) > limit else None)


def events(session: Session, principal: Principal, job_id: str) -> Sequence[JobEvent]:
    job = get_job(session, principal, job_id)
    return session.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id)).all()


def logs(ctx: PlatformContext, session: Session, principal: Principal, job_id: str, offset: int) -> LogChunk:
    job = get_job(session, principal, job_id)
    if job.native_id is None:
        return LogChunk("", offset, complete=JobState(job.state).is_terminal())
    chunk = ctx.scheduler(job.scheduler).logs(job.native_id, offset)
    if JobState(job.state).is_terminal() and not chunk.data:
        return LogChunk("", chunk.offset, complete=True)
    return chunk


def cancel(ctx: PlatformContext, session: Session, principal: Principal, job_id: str) -> Job:
    job = get_job(session, principal, job_id)
    role = principal.role_in(job.org_id)
    if job.user_id != principal.user_id and role != Role.ORG_ADMIN and not principal.is_platform_admin:
        raise PermissionDenied("only the job's owner or an org admin may cancel it")
    if JobState(job.state).is_terminal():
        return job
    if job.native_id is not None:
        ctx.scheduler(job.scheduler).cancel(job.native_id)
        add_event(session, job, "cancel_requested", f"cancel sent to {job.scheduler}")
    else:
        _finish(session, job, JobState.CANCELLED, "cancelled before it reached the scheduler")
        ctx.quota.release(session, job)
    audit.record(session, principal, "job.cancel", target_type="job", target=job.id, org_id=job.org_id)
    session.commit()
    return job


def resubmit(ctx: PlatformContext, session: Session, principal: Principal, job_id: str,
             idempotency_key: str | None = None) -> Job:
    old = get_job(session, principal, job_id)
    org = session.get(Org, old.org_id)
    project = session.get(Project, old.project_id)
    assert org is not None and project is not None
    return submit(ctx, session, principal, org.name, project.name, dict(old.spec), idempotency_key=idempotency_key,
                  code_uri=old.code_uri, resubmitted_from=old.id,
                  environment=(old.environment_ref, old.environment_lock) if old.environment_lock else None)
