"""Admin pages: usage report (chart per org and per month, CSV), audit log search, cluster view."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from haihe import names
from haihe.errors import PermissionDenied
from haihe.platform import audit
from haihe.platform.jobs import service as jobs
from haihe.platform.models import Role
from haihe.platform.quotas import ledger as quotas
from haihe.portal.routes.admin import require_admin_area
from haihe.portal.summaries import describe_all, job_row
from haihe.portal.web import Page, PortalRoute, SignedIn

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

MONTH = r"^\d{4}-(0[1-9]|1[0-2])$"
TREND_MONTHS = 6
CHART_RESOURCES = ("gpu_hours", "cpu_hours", "requests")


def _months_back(month: str, count: int) -> list[str]:
    y, m = int(month[:4]), int(month[5:])
    out = []
    for _ in range(count):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    return out[::-1]


def _admin_org(page: Page) -> str | None:
    """A platform admin reports on every org; an org admin on the first org they administer."""
    if page.is_admin:
        return None
    for org_id, role in page.principal.roles.items():
        if role == Role.ORG_ADMIN:
            from haihe.platform.models import Org

            org = page.session.get(Org, org_id)
            if org is not None:
                return org.name
    raise PermissionDenied("the usage report needs an administrator")


def bar_chart(totals: dict[str, float]) -> list[dict[str, Any]]:
    """Rows of a horizontal bar chart, widths as percentages of the largest value."""
    top = max(totals.values(), default=0.0) or 1.0
    return [{"label": k, "value": round(v, 3), "pct": round(100.0 * v / top, 1)}
            for k, v in sorted(totals.items(), key=lambda kv: -kv[1])]


@router.get("/admin/usage", response_class=HTMLResponse)
def usage_page(page: SignedIn, month: Annotated[str, Query(pattern=MONTH)] = "",
               resource: Annotated[str, Query(max_length=32)] = "gpu_hours") -> HTMLResponse:
    require_admin_area(page)
    month = month or dt.datetime.now(dt.UTC).strftime("%Y-%m")
    resource = resource if resource in CHART_RESOURCES else "gpu_hours"
    org = _admin_org(page)
    rows = quotas.usage_report(page.session, page.principal, month, org)
    per_org: dict[str, float] = defaultdict(float)
    for r in rows:
        if r["resource"] == resource:
            per_org[r["org"]] += r["amount"]
    trend: dict[str, float] = {}
    for m in _months_back(month, TREND_MONTHS):
        trend[m] = sum(r["amount"] for r in quotas.usage_report(page.session, page.principal, m, org)
                       if r["resource"] == resource)
    top = max(trend.values(), default=0.0) or 1.0
    columns = [{"label": m, "value": round(v, 3), "pct": round(100.0 * v / top, 1)} for m, v in trend.items()]
    return page.render("admin_usage.html", nav="admin", sub="usage", month=month, rows=rows,
                       per_org=bar_chart(dict(per_org)), columns=columns, resource=resource,
                       resources=CHART_RESOURCES, org=org or "")


@router.get("/admin/usage.csv")
def usage_csv(page: SignedIn, month: Annotated[str, Query(pattern=MONTH)]) -> Response:
    require_admin_area(page)
    rows = quotas.usage_report(page.session, page.principal, month, _admin_org(page))
    return PlainTextResponse(quotas.report_csv(rows), media_type="text/csv; charset=utf-8",
                             headers={"Content-Disposition": f'attachment; filename="usage-{month}.csv"'})


@router.get("/admin/audit", response_class=HTMLResponse)
def audit_page(page: SignedIn, action: Annotated[str, Query(max_length=64)] = "",
               actor: Annotated[str, Query(max_length=100)] = "",
               before: Annotated[int | None, Query(ge=1, le=names.MAX_ROW_ID)] = None) -> HTMLResponse:
    require_admin_area(page)
    p = page.principal
    org_ids = None if p.is_platform_admin else {o for o, r in p.roles.items() if r == Role.ORG_ADMIN}
    limit = 50
    events = audit.search(page.session, org_ids=org_ids, action=action or None, actor=actor or None,
                          before_id=before, limit=limit)
    older = events[-1].id if len(events) == limit else None
    return page.render("admin_audit.html", nav="admin", sub="audit", events=events, action=action, actor=actor,
                       older=older)


@router.get("/admin/cluster", response_class=HTMLResponse)
def cluster_page(page: SignedIn) -> HTMLResponse:
    require_admin_area(page)
    clusters = describe_all(page.ctx, sorted(page.ctx.settings.schedulers))
    queue = jobs.list_jobs(page.session, page.principal, states=("PENDING", "SUBMITTED", "QUEUED"), limit=50)
    running = jobs.list_jobs(page.session, page.principal, states=("RUNNING",), limit=50)
    return page.render("admin_cluster.html", nav="admin", sub="cluster", clusters=clusters,
                       queue=[job_row(j) for j in queue.items], running=[job_row(j) for j in running.items])
