"""Mount the portal on the platform app: its page routers, its static files and its template environment."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from haihe.portal.web import STATIC_DIR, STATIC_PREFIX, build_environment


def mount(app: FastAPI) -> None:
    from haihe.portal.routes import (
        admin,
        admin_reports,
        auth,
        cluster,
        dashboard,
        datasets,
        endpoints,
        jobs,
        submit,
        zoo,
    )

    app.state.portal_env = build_environment()
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="portal-static")
    # submit before jobs: /jobs/new must not be taken for a job id (and /endpoints/new is declared before
    # /endpoints/{org}/{name} inside its module)
    for module in (auth, dashboard, submit, jobs, datasets, zoo, endpoints, cluster, admin, admin_reports):
        app.include_router(module.router)
