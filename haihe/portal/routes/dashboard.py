"""Page: the dashboard — my queued and running jobs, quota bars per org, recent runs (and endpoints, when present)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from haihe.errors import HaiheError
from haihe.platform.identity import service as identity
from haihe.platform.jobs import service as jobs
from haihe.platform.quotas import ledger as quotas
from haihe.portal import extensions
from haihe.portal.summaries import ACTIVE_STATES, job_row, quota_bars
from haihe.portal.web import PortalRoute, SignedIn

router = APIRouter(route_class=PortalRoute, include_in_schema=False)

MAX_QUOTA_CARDS = 6


@router.get("/", response_class=HTMLResponse)
def dashboard(page: SignedIn) -> HTMLResponse:
    s, p = page.session, page.principal
    orgs = identity.list_orgs(s, p)
    member_orgs = [o for o in orgs if o.id in p.roles] or list(orgs)
    active = [job_row(j) for j in jobs.list_jobs(s, p, mine=True, states=ACTIVE_STATES, limit=20).items]
    recent = [job_row(j) for j in jobs.list_jobs(s, p, mine=True, limit=8).items]
    cards = []
    for org in member_orgs[:MAX_QUOTA_CARDS]:
        try:
            shown = quotas.show(s, p, org.name, None)
        except HaiheError:
            continue
        cards.append({"org": org.name, "status": shown["org_status"], "period": shown["period"],
                      "bars": quota_bars(shown)})
    metrics = extensions.headline_metrics(page, [r["id"] for r in recent])
    for r in recent:
        r["metric"] = metrics.get(r["id"])
    endpoints = extensions.endpoint_summaries(page)
    return page.render("dashboard.html", nav="dashboard", active=active, recent=recent, cards=cards,
                       endpoints=endpoints, show_endpoints=extensions.available("endpoints"),
                       orgs=[o.name for o in member_orgs])
