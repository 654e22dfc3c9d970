"""The platform's app factory: settings → context → FastAPI app with the API routers, errors, limits and metrics.

Nothing is created at import time; ``create_app`` builds everything and the lifespan migrates and disposes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from haihe import __version__
from haihe.platform.api import auth, datasets, errors, jobs, keys, quotas, system, tenancy
from haihe.platform.api.limits import BodyLimit
from haihe.platform.context import PlatformContext
from haihe.platform.metrics import Metrics, MetricsMiddleware
from haihe.platform.reconciler import ReconcilerThread
from haihe.platform.settings import Settings

log = logging.getLogger(__name__)

API_ROUTERS = (system.router, auth.router, tenancy.router, keys.router, jobs.router, datasets.router, quotas.router)


def create_platform_app(settings: Settings | None = None, *, migrate: bool = True,
                        ctx: PlatformContext | None = None) -> FastAPI:
    settings = settings or (ctx.settings if ctx else Settings())
    ctx = ctx or PlatformContext.from_settings(settings)
    if migrate:
        ctx.db.migrate()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("haihe %s up (database %s)", __version__, ctx.db.engine.dialect.name)
        loop = None
        if settings.reconcile_interval_s > 0 and settings.schedulers:
            loop = ReconcilerThread(ctx, settings.reconcile_interval_s)
            loop.start()
        try:
            yield
        finally:
            if loop is not None:
                loop.stop()
            ctx.close()

    app = FastAPI(
        title="Haihe",
        version=__version__,
        description="AI supercomputing as a service: jobs on Slurm and Ray, datasets, model zoo, endpoints.",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.state.metrics = Metrics()
    errors.install(app)
    for router in API_ROUTERS:
        app.include_router(router)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
