"""Storage credentials for jobs: the platform is a broker between a job's token and short-lived S3 credentials.

A job never receives the platform's S3 keys. Its environment carries its signed job token (the one the MLflow
proxy checks, :mod:`haihe.platform.tracking.proxy`) and ``HAIHE_STORAGE_CREDENTIALS_URL``. The runtime posts the
token there when it starts and before its credentials expire; :func:`issue_for_job` answers with temporary
credentials from the store's STS (AssumeRole by the broker user) under a session policy that allows exactly:

* reading the dataset version the job was resolved to at submit (its own org's, a shared or a public one),
* reading its code bundle object,
* reading, writing, listing and deleting under its own checkpoint and output prefixes,

all until a deadline (``aws:CurrentTime`` condition), so they die with the job: ``min(now + lease, walltime end
+ margin, job end + margin)``. A finished job gets nothing once its margin has passed. docs/storage-credentials.md
holds the reasons and what a site configures.

:func:`policy_document` is pure; STS is behind the :class:`StsIssuer` seam (unit tests use a fake).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from haihe.errors import (
    AuthenticationRequired,
    InvalidInput,
    PermissionDenied,
    ServiceUnavailable,
    StorageUnavailable,
)
from haihe.jobs.runtime.contract import parse_dataset
from haihe.platform.models import Job, Status, utcnow
from haihe.platform.settings import Settings
from haihe.platform.tracking.proxy import verify_token
from haihe.schedulers.base import JobState

log = logging.getLogger(__name__)

STS_MIN_DURATION_S = 900  # AWS and MinIO refuse (or clamp up to) shorter sessions: the policy's deadline cuts them
STS_MAX_DURATION_S = 7 * 24 * 3600  # MinIO's cap for AssumeRole
CREDENTIALS_PATH = "/api/v1/jobs/{job_id}/storage-credentials"


def credentials_url(public_url: str, job_id: str) -> str:
    return public_url.rstrip("/") + CREDENTIALS_PATH.format(job_id=job_id)


# -- what a job may touch (pure) -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobGrant:
    """S3 resources of one job, as ``bucket/key`` (objects) and ``bucket/prefix/`` (prefixes)."""

    read_objects: tuple[str, ...] = ()
    read_prefixes: tuple[str, ...] = ()
    write_prefixes: tuple[str, ...] = ()


def _s3_object(uri: str, what: str) -> str:
    parts = urlsplit(uri)
    key = parts.path.lstrip("/")
    if parts.scheme != "s3" or not parts.netloc or not key or "*" in key or "?" in key:
        raise InvalidInput(f"{what} {uri!r} is not s3://bucket/key", field=what)
    return f"{parts.netloc}/{key}"


def job_prefixes(code_bucket: str, org: str, job_id: str) -> tuple[str, str]:
    """``(checkpoint, output)`` prefixes of a job, as ``bucket/prefix/`` (the runtime's HAIHE_*_URI)."""
    return f"{code_bucket}/checkpoints/{org}/{job_id}/", f"{code_bucket}/outputs/{org}/{job_id}/"


def grant_for(*, dataset: str | None, code_uri: str | None, org: str, job_id: str, datasets_bucket: str,
              code_bucket: str) -> JobGrant:
    """The grant of a stored job: its dataset (``org/name@vN`` resolved at submit, access checked then), its code
    bundle and its own prefixes."""
    read_prefixes: list[str] = []
    if dataset:
        ref = parse_dataset(str(dataset))
        if ref.version is None:
            raise InvalidInput(f"dataset {dataset!r} was not resolved to a version at submit", field="dataset")
        read_prefixes.append(f"{datasets_bucket}/{ref.org}/{ref.name}/v{ref.version}/")
    objects = (_s3_object(code_uri, "code_uri"),) if code_uri else ()
    return JobGrant(read_objects=objects, read_prefixes=tuple(read_prefixes),
                    write_prefixes=job_prefixes(code_bucket, org, job_id))


def _iso(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def policy_document(grant: JobGrant, deadline: dt.datetime) -> dict[str, Any]:
    """The session policy: each statement allows only until ``deadline`` (MinIO and AWS both evaluate
    ``aws:CurrentTime`` per request, so the credentials stop working then even though STS sessions last at least
    15 minutes). Nothing else: no ListAllMyBuckets, no bucket-wide reads, no other prefix."""
    until = {"DateLessThan": {"aws:CurrentTime": _iso(deadline)}}
    arn = "arn:aws:s3:::"
    readable = [arn + o for o in grant.read_objects]
    readable += [arn + p + "*" for p in grant.read_prefixes + grant.write_prefixes]
    statements: list[dict[str, Any]] = [
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": readable, "Condition": until},
    ]
    if grant.write_prefixes:
        statements.append({
            "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
            "Resource": [arn + p + "*" for p in grant.write_prefixes],
            "Condition": until,
        })
    by_bucket: dict[str, list[str]] = {}
    for prefix in grant.read_prefixes + grant.write_prefixes:
        bucket, _, key = prefix.partition("/")
        by_bucket.setdefault(bucket, []).extend([key, key + "*"])
    for bucket, keys in sorted(by_bucket.items()):
        # listing only inside the granted prefixes (the checkpointer lists its own; staging reads by manifest)
        statements.append({
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": [arn + bucket],
            "Condition": {**until, "StringLike": {"s3:prefix": keys}},
        })
    return {"Version": "2012-10-17", "Statement": statements}


# -- the deadline (pure) ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobClock:
    """What the deadline depends on, read from the job row."""

    state: JobState
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    time_limit_min: int | None
    restartable: bool  # arrays and requeueable jobs (re)start later than started_at says


def deadline_for(clock: JobClock, now: dt.datetime, *, lease_s: float, margin_s: float) -> dt.datetime:
    """``min(now + lease, walltime end + margin, end + margin)``; PermissionDenied once the job is over."""
    margin = dt.timedelta(seconds=margin_s)
    candidates = [now + dt.timedelta(seconds=lease_s)]
    if clock.state.is_terminal():
        ended = clock.ended_at or now
        if now >= ended + margin:
            raise PermissionDenied(f"the job ended ({clock.state.value}) at {_iso(ended)}; its storage "
                                   f"credentials were issued until {_iso(ended + margin)}")
        candidates.append(ended + margin)
    if clock.time_limit_min:
        start = now if clock.restartable or clock.started_at is None else clock.started_at
        walltime_end = start + dt.timedelta(minutes=clock.time_limit_min)
        if now >= walltime_end + margin:
            raise PermissionDenied(f"the job is past its walltime ({clock.time_limit_min} min from "
                                   f"{_iso(start)}) and its margin")
        candidates.append(walltime_end + margin)
    return min(candidates)


# -- STS (the seam) --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class IssuedCredentials:
    access_key: str
    secret_key: str = field(repr=False)
    session_token: str = field(repr=False)


class StsIssuer(Protocol):
    def assume(self, policy: str, duration_s: int) -> IssuedCredentials: ...


class MinioSts:
    """AssumeRole against a MinIO-compatible STS endpoint (also the JuiceFS gateway) with the broker's keys."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._access_key = access_key
        self._secret_key = secret_key

    def assume(self, policy: str, duration_s: int) -> IssuedCredentials:
        import urllib3
        from minio.credentials import AssumeRoleProvider

        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=3.0, read=10.0),
                                   retries=urllib3.Retry(total=1, backoff_factor=0.2))
        try:
            c = AssumeRoleProvider(sts_endpoint=self.endpoint, access_key=self._access_key,
                                   secret_key=self._secret_key, duration_seconds=duration_s, policy=policy,
                                   http_client=http).retrieve()
        except (ValueError, OSError, urllib3.exceptions.HTTPError) as exc:
            # minio raises ValueError with STS's error document; it names no secret
            raise StorageUnavailable(f"the S3 store's STS refused or failed: {str(exc)[:300]}",
                                     component="s3") from exc
        finally:
            http.clear()
        return IssuedCredentials(c.access_key, c.secret_key, c.session_token or "")


def issuer_from_settings(settings: Settings) -> StsIssuer:
    if not settings.s3_endpoint:
        raise ServiceUnavailable("this platform has no S3 store", component="s3")
    if not settings.s3_sts_access_key or not settings.s3_sts_secret_key:
        raise ServiceUnavailable("this platform issues no storage credentials to jobs: set HAIHE_S3_STS_ACCESS_KEY "
                                 "and HAIHE_S3_STS_SECRET_KEY (docs/storage-credentials.md)", component="s3")
    return MinioSts(settings.s3_sts_endpoint or settings.s3_endpoint, settings.s3_sts_access_key,
                    settings.s3_sts_secret_key)


# -- the service -----------------------------------------------------------------------------------------------------
def job_clock(job: Job) -> JobClock:
    resources = job.spec.get("resources") or {}
    limit = resources.get("time_limit")
    return JobClock(state=JobState(job.state), started_at=job.started_at, ended_at=job.ended_at,
                    time_limit_min=int(limit) if limit else None,
                    restartable=bool(job.array_size) or bool(job.spec.get("checkpoint")))


def issue_for_job(session: Any, settings: Settings, issuer: StsIssuer, token: str, job_id: str, *,
                  duration_s: int | None = None, now: dt.datetime | None = None) -> dict[str, Any]:
    """Temporary S3 credentials for the job ``token`` was issued to (and only for it)."""
    now = now or utcnow()
    scope = verify_token(settings.secret_key, token, now=now.timestamp())
    if scope.job_id != job_id:
        raise AuthenticationRequired("invalid or expired job token")
    job = session.get(Job, job_id)
    if job is None or job.org.name != scope.org or job.project.name != scope.project:
        raise AuthenticationRequired("invalid or expired job token")
    if job.org.status != Status.ACTIVE.value or job.project.status != Status.ACTIVE.value:
        raise PermissionDenied("the job's org or project is suspended: no storage credentials")
    lease = min(duration_s, STS_MAX_DURATION_S) if duration_s else settings.job_credentials_lease_s
    deadline = deadline_for(job_clock(job), now, lease_s=lease, margin_s=settings.job_credentials_margin_s)
    grant = grant_for(dataset=job.dataset_ref, code_uri=job.code_uri, org=scope.org, job_id=job.id,
                      datasets_bucket=settings.datasets_bucket, code_bucket=settings.code_bucket)
    policy = json.dumps(policy_document(grant, deadline), separators=(",", ":"))
    seconds = max(STS_MIN_DURATION_S, min(STS_MAX_DURATION_S, math.ceil((deadline - now).total_seconds())))
    issued = issuer.assume(policy, seconds)
    log.info("storage credentials for job %s until %s", job.id, _iso(deadline))
    return {
        "access_key": issued.access_key,
        "secret_key": issued.secret_key,
        "session_token": issued.session_token,
        "expiration": _iso(deadline),
        "endpoint": settings.s3_endpoint,
        "region": settings.s3_region,
    }
