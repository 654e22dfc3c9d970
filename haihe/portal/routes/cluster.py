"""Page: the cluster for every signed-in user — partitions, free GPUs, the queue, and why my jobs wait."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from haihe.platform.jobs import cluster_status
from haihe.portal.summaries import describe_all
from haihe.portal.web import PortalRoute, SignedIn

router = APIRouter(route_class=PortalRoute, include_in_schema=False)


@router.get("/cluster", response_class=HTMLResponse)
def cluster_page(page: SignedIn) -> HTMLResponse:
    clusters = describe_all(page.ctx, sorted(page.ctx.settings.schedulers))
    waiting = cluster_status.my_waiting_jobs(page.session, page.principal)
    return page.render("cluster.html", nav="cluster", clusters=clusters, waiting=waiting)
