"""Routes: quotas (set, show with balances and events), usage reports, org suspension."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, Response

from haihe.platform.api.deps import CtxDep, CurrentPrincipal, SessionDep
from haihe.platform.identity import service as identity
from haihe.platform.identity.schemas import OrgPublic
from haihe.platform.models import Status
from haihe.platform.quotas import ledger as quotas
from haihe.platform.quotas import slurm_sync
from haihe.platform.quotas.schemas import QuotaSet

router = APIRouter(prefix="/api/v1", tags=["quotas"])


Month = Annotated[str | None, Query(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")]


def _limits(body: QuotaSet) -> dict[str, Any]:
    return {k: v for k, v in body.model_dump(exclude_unset=True).items()}


@router.put("/orgs/{org}/quota", operation_id="quota_set_org")
def set_org_quota(org: str, body: QuotaSet, principal: CurrentPrincipal, session: SessionDep) -> dict[str, Any]:
    quotas.set_quota(session, principal, org, None, _limits(body))
    return quotas.show(session, principal, org, None)


@router.put("/orgs/{org}/projects/{project}/quota", operation_id="quota_set_project")
def set_project_quota(org: str, project: str, body: QuotaSet, principal: CurrentPrincipal,
                      session: SessionDep) -> dict[str, Any]:
    quotas.set_quota(session, principal, org, project, _limits(body))
    return quotas.show(session, principal, org, project)


@router.get("/orgs/{org}/quota", operation_id="quota_get_org")
def get_org_quota(org: str, principal: CurrentPrincipal, session: SessionDep, month: Month = None) -> dict[str, Any]:
    return quotas.show(session, principal, org, None, month)


@router.get("/orgs/{org}/projects/{project}/quota", operation_id="quota_get_project")
def get_project_quota(org: str, project: str, principal: CurrentPrincipal, session: SessionDep,
                      month: Month = None) -> dict[str, Any]:
    return quotas.show(session, principal, org, project, month)


@router.get("/usage", operation_id="usage_report", response_model=None)
def usage_report(
    principal: CurrentPrincipal,
    session: SessionDep,
    month: Annotated[str, Query(pattern=r"^\d{4}-(0[1-9]|1[0-2])$")],
    org: Annotated[str | None, Query(max_length=63)] = None,
    format: Literal["json", "csv"] = "json",
) -> Response | list[dict[str, Any]]:
    """Per org, project, user, source (training | inference | endpoint | storage) and resource; the sum of the
    ledger. ``endpoint`` rows are serving replicas' GPU/CPU-hours."""
    rows = quotas.usage_report(session, principal, month, org)
    if format == "csv":
        return PlainTextResponse(quotas.report_csv(rows), media_type="text/csv; charset=utf-8",
                                 headers={"Content-Disposition": f'attachment; filename="usage-{month}.csv"'})
    return rows


@router.post("/admin/quota/sync", operation_id="quota_sync")
def sync_quotas(principal: CurrentPrincipal, session: SessionDep, ctx: CtxDep,
                scheduler: Annotated[str, Query(max_length=63)] = "slurm") -> dict[str, Any]:
    """Push every quota into the Slurm cluster's associations (GrpTRESMins, GrpTRES, GrpJobs)."""
    return slurm_sync.run(ctx, session, principal, scheduler, apply=True).to_dict()


@router.get("/admin/quota/check", operation_id="quota_check")
def check_quotas(principal: CurrentPrincipal, session: SessionDep, ctx: CtxDep,
                 scheduler: Annotated[str, Query(max_length=63)] = "slurm") -> dict[str, Any]:
    """Drift between the platform's quotas and Slurm's associations; changes nothing."""
    return slurm_sync.run(ctx, session, principal, scheduler, apply=False).to_dict()


@router.post("/orgs/{org}/suspend", operation_id="orgs_suspend", response_model=OrgPublic)
def suspend_org(org: str, principal: CurrentPrincipal, session: SessionDep) -> OrgPublic:
    """A suspended org can only read."""
    return OrgPublic.of(identity.set_org_status(session, principal, org, Status.SUSPENDED))


@router.post("/orgs/{org}/resume", operation_id="orgs_resume", response_model=OrgPublic)
def resume_org(org: str, principal: CurrentPrincipal, session: SessionDep) -> OrgPublic:
    return OrgPublic.of(identity.set_org_status(session, principal, org, Status.ACTIVE))
