"""The route job runtimes call for their temporary S3 credentials (authenticated only by the job's own token).

Like ``/mlflow``, it is for machines, not the user API or the SDK, so it stays out of the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from haihe.errors import AuthenticationRequired
from haihe.platform.api.deps import CtxDep
from haihe.platform.api.schemas import Body
from haihe.platform.datasets import credentials as storage_credentials

router = APIRouter(tags=["jobs"])


class CredentialsRequest(Body):
    duration_s: Annotated[int | None, Field(ge=1, le=storage_credentials.STS_MAX_DURATION_S)] = Field(
        None, description="Asked lifetime (default HAIHE_JOB_CREDENTIALS_LEASE_S); never beyond walltime + margin.")


@router.post(storage_credentials.CREDENTIALS_PATH, include_in_schema=False)
async def job_storage_credentials(job_id: str, request: Request, ctx: CtxDep,
                                  body: CredentialsRequest | None = None,
                                  authorization: Annotated[str, Header()] = "") -> dict[str, Any]:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip().startswith("hjt_"):
        raise AuthenticationRequired("send the job token as 'Authorization: Bearer hjt_…'")
    # tests (and a site with its own STS) may put an issuer on app.state; else one from the settings
    issuer = getattr(request.app.state, "sts_issuer", None) or storage_credentials.issuer_from_settings(ctx.settings)

    def issue() -> dict[str, Any]:
        with ctx.db.session() as session:
            return storage_credentials.issue_for_job(session, ctx.settings, issuer, token.strip(), job_id,
                                                     duration_s=body.duration_s if body else None)

    return await run_in_threadpool(issue)
