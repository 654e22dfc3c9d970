"""The route job runtimes report their environment to (authenticated only by the job's own token; for machines,
so it stays out of the OpenAPI document like the storage-credentials route)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from haihe.errors import AuthenticationRequired
from haihe.platform.api.deps import CtxDep
from haihe.platform.api.schemas import Body
from haihe.platform.jobs import environment

router = APIRouter(tags=["jobs"])


class EnvironmentReport(Body):
    ref: Annotated[str | None, Field(max_length=80)] = None
    lock: Annotated[str | None, Field(max_length=environment.MAX_LOCK)] = None
    seconds: Annotated[float | None, Field(ge=0, le=86_400)] = None
    cached: bool = False
    node: Annotated[str, Field(max_length=100)] = ""
    error: Annotated[str | None, Field(max_length=4000)] = None
    image: Annotated[str | None, Field(max_length=500)] = None
    bytes: Annotated[int, Field(ge=0, le=1 << 50)] = 0
    location: Annotated[str, Field(max_length=400)] = ""
    pruned: Annotated[list[Annotated[str, Field(max_length=80)]], Field(max_length=1000)] = Field(default_factory=list)


@router.post(environment.ENVIRONMENT_PATH, include_in_schema=False)
async def job_environment(job_id: str, body: EnvironmentReport, ctx: CtxDep,
                          authorization: Annotated[str, Header()] = "") -> dict[str, Any]:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip().startswith("hjt_"):
        raise AuthenticationRequired("send the job token as 'Authorization: Bearer hjt_…'")

    def keep() -> dict[str, Any]:
        with ctx.db.session() as session:
            return environment.record(session, ctx.settings.secret_key, token.strip(), job_id, ref=body.ref,
                                      lock=body.lock, seconds=body.seconds, cached=body.cached, node=body.node,
                                      error=body.error, image=body.image, size=body.bytes,
                                      location=body.location, pruned=body.pruned)

    return await run_in_threadpool(keep)
