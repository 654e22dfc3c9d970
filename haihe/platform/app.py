"""The platform's app factory: settings → context → FastAPI app with the API routers, errors, limits and metrics.

Nothing is created at import time; ``create_app`` builds everything and the lifespan migrates and disposes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from haihe import __version__
from haihe.platform.api import errors, system
from haihe.platform.api.limits import BodyLimit
from haihe.platform.context import PlatformContext
from haihe.platform.datasets import credentials_router as storage_credentials
from haihe.platform.datasets import router as datasets
from haihe.platform.endpoints import router as endpoints
from haihe.platform.gateway import routes as gateway_routes
from haihe.platform.gateway.hub import EndpointsHub
from haihe.platform.identity import auth_router as auth
from haihe.platform.identity import keys_router as keys
from haihe.platform.identity import tenancy_router as tenancy
from haihe.platform.jobs import cluster_router as cluster
from haihe.platform.jobs import environment_router as job_environment
from haihe.platform.jobs import router as jobs
from haihe.platform.jobs.reconciler import PeriodicThread, ReconcilerThread
from haihe.platform.lease import LeaderLease
from haihe.platform.metrics import Metrics, MetricsMiddleware
from haihe.platform.quotas import router as quotas
from haihe.platform.settings import Settings
from haihe.platform.tracking import router as mlflow_proxy
from haihe.platform.zoo import router as zoo

log = logging.getLogger(__name__)

API_ROUTERS = (system.router, auth.router, tenancy.router, keys.router, jobs.router, datasets.router, quotas.router,
               zoo.router, mlflow_proxy.router, endpoints.router, gateway_routes.router,
               storage_credentials.router, job_environment.router, cluster.router)


def create_platform_app(settings: Settings | None = None, *, migrate: bool = True,
                        ctx: PlatformContext | None = None) -> FastAPI:
    settings = settings or (ctx.settings if ctx else Settings())
    ctx = ctx or PlatformContext.from_settings(settings)
    if migrate:
        ctx.db.migrate()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("haihe %s up (database %s)", __version__, ctx.db.engine.dialect.name)
        # several API processes may share the database: only the lease holder runs the background work
        lease = LeaderLease(ctx.db, max(settings.leader_lease_s, 3 * settings.reconcile_interval_s))
        loop = None
        if settings.reconcile_interval_s > 0 and settings.schedulers:
            loop = ReconcilerThread(ctx, settings.reconcile_interval_s, leader=lease)
            loop.start()
        upkeep = None
        if settings.maintenance_interval_s > 0 and settings.s3_endpoint:
            upkeep = PeriodicThread("haihe-maintenance", settings.maintenance_interval_s,
                                    lease.guard(lambda: _maintenance(app)))
            upkeep.start()
        # metering flusher (every process meters what it serves) + endpoint supervisor (the leader steps endpoints)
        hub.start(supervise=settings.reconcile_interval_s > 0, leader=lease)
        try:
            yield
        finally:
            for thread in (loop, upkeep):
                if thread is not None:
                    thread.stop()
            hub.stop()  # drains the meter into the ledger
            await mlflow_proxy.close_http(app.state)
            lease.release()
            ctx.close()

    app = FastAPI(
        title="Haihe",
        version=__version__,
        description="AI supercomputing as a service: jobs on Slurm and Ray, datasets, model zoo, endpoints.",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    hub = EndpointsHub(ctx)
    app.state.endpoints = hub
    app.state.metrics = Metrics()
    errors.install(app)
    for router in API_ROUTERS:
        app.include_router(router)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, overrides={
        "/mlflow/": mlflow_proxy.MAX_UPLOAD, "/v2/models/": hub.config.max_body_bytes,
        "/v1/embeddings": hub.config.max_body_bytes})
    return app


def _maintenance(app: FastAPI) -> None:
    """Dataset GC past the retention window and expiry of abandoned uploads."""
    from haihe.platform.datasets.service import collect_garbage, storage

    ctx: PlatformContext = app.state.ctx
    with ctx.db.sessions() as session:
        report = collect_garbage(session, storage(ctx), ctx.settings)
    log.info("maintenance: %s", report)
