"""What a job's nodes report about its own Python environment (spec ``environment:``), kept on the job.

The runtime builds the environment on the node (``haihe.jobs.runtime.environment``) and posts, with the job's own
token, the ref (``sha256:…`` of the resolved lock), the lock, how long it took and whether the cache had it — or
why the build failed. The first ref is the job's (a resubmit starts from it and installs exactly that lock); every
report is a timeline event, so "built in 41 s on gn1" and "reused (cached)" are visible where the job is watched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from haihe.errors import AuthenticationRequired, InvalidInput
from haihe.platform import access
from haihe.platform.access import Principal
from haihe.platform.models import Job, JobEnvironment, JobEvent, utcnow
from haihe.platform.tracking.proxy import verify_token

ENVIRONMENT_PATH = "/api/v1/jobs/{job_id}/environment"
REF_RE = re.compile(r"sha256:[0-9a-f]{64}")
MAX_LOCK = 1_000_000
FAILED_PREFIX = "environment could not be built"


def list_for_org(session: Session, principal: Principal, org_name: str, *, include_pruned: bool = False
                 ) -> list[JobEnvironment]:
    """The org's environments (its admins and platform admins), newest use first."""
    org = access.org_for_admin(session, principal, org_name, write=False)
    q = select(JobEnvironment).where(JobEnvironment.org_id == org.id)
    if not include_pruned:
        q = q.where(JobEnvironment.pruned_at.is_(None))
    return list(session.scalars(q.order_by(JobEnvironment.last_used_at.desc()).limit(1000)))


def environment_url(public_url: str, job_id: str) -> str:
    return public_url.rstrip("/") + ENVIRONMENT_PATH.format(job_id=job_id)


def record(session: Session, secret_key: str, token: str, job_id: str, *, ref: str | None, lock: str | None,
           seconds: float | None, cached: bool, node: str, error: str | None, image: str | None = None,
           size: int = 0, location: str = "", pruned: Sequence[str] = ()) -> dict[str, Any]:
    """Keep one node's report on the job (authenticated by the job's own token only)."""
    scope = verify_token(secret_key, token)
    job = session.get(Job, job_id)
    if scope.job_id != job_id or job is None:
        raise AuthenticationRequired("invalid or expired job token")
    node = node[:100]
    where = f" on {node}" if node else ""
    if error is not None:
        message = f"{FAILED_PREFIX}{where}: {error}"
        job.reason = message[:1000]  # the job's reason names the package; the reconciler keeps it when it ends
        session.add(JobEvent(job_id=job.id, kind="environment_failed", state=job.state, message=message[:2000],
                             data={"node": node}))
        session.commit()
        return {"ok": True}
    if ref is None or not REF_RE.fullmatch(ref):
        raise InvalidInput("ref must be sha256:<64 hex digits>", field="ref")
    if lock is None or len(lock) > MAX_LOCK:
        raise InvalidInput(f"lock is required and at most {MAX_LOCK} characters", field="lock")
    kept = job.environment_ref
    if kept is None:
        job.environment_ref, job.environment_lock = ref, lock
    how = "reused (cached)" if cached else f"built in {seconds or 0:.1f} s"
    message = f"environment {ref[:19]}… {how}{where}"
    if image:
        message = f"image {image[:200]} ({ref[:19]}…) ready in {seconds or 0:.1f} s{where}"
    if kept is not None and kept != ref:
        message += f" — differs from the job's {kept[:19]}…"
    session.add(JobEvent(job_id=job.id, kind="environment", state=job.state, message=message,
                         data={"ref": ref, "cached": cached, "seconds": round(seconds or 0.0, 3), "node": node,
                               **({"image": image[:500]} if image else {})}))
    if location and not image:
        _account(session, job, ref, location[:400], size, cached, pruned)
    session.commit()
    return {"ok": True, "ref": job.environment_ref}


def _account(session: Session, job: Job, ref: str, location: str, size: int, cached: bool,
             pruned: Sequence[str]) -> None:
    """Keep where the org's environments are and what they hold (its storage quota counts them)."""
    now = utcnow()
    row = session.scalar(select(JobEnvironment).where(JobEnvironment.org_id == job.org_id, JobEnvironment.ref == ref,
                                                      JobEnvironment.location == location))
    if row is None:
        row = JobEnvironment(org_id=job.org_id, ref=ref, location=location, bytes=size, first_job_id=job.id, jobs=0,
                             built_at=now, last_used_at=now)
        session.add(row)
    elif not cached:  # built again here (it had been removed): what it holds now
        row.bytes, row.built_at, row.pruned_at = size, now, None
    row.jobs = (row.jobs or 0) + 1
    row.last_used_at = now
    if pruned:  # this cache removed environments nobody used for a while: they hold nothing any more
        node_root = location.rsplit("/", 1)[0]
        for gone in pruned:
            if REF_RE.fullmatch(gone):
                session.execute(update(JobEnvironment).where(
                    JobEnvironment.org_id == job.org_id, JobEnvironment.ref == gone,
                    JobEnvironment.location == f"{node_root}/{gone[7:39]}", JobEnvironment.pruned_at.is_(None),
                ).values(pruned_at=now))

