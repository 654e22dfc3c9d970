"""The app the browser tests run under uvicorn: the real server, with the demo scheduler on the clock.

``uvicorn tests.browser.app_factory:create --factory`` — settings come from the usual ``HAIHE_*`` variables.
"""

from __future__ import annotations

from fastapi import FastAPI

from haihe.platform.context import PlatformContext
from haihe.platform.settings import Settings
from tests.browser.demo_scheduler import DemoScheduler


def create() -> FastAPI:
    from haihe.server import create_app

    settings = Settings(schedulers={"demo": "demo://"}, default_scheduler="demo", reconcile_interval_s=0.5)
    ctx = PlatformContext.from_settings(settings)
    scheduler = DemoScheduler(auto=True, tick_s=0.7, steps=12)
    ctx.registry.register("demo", lambda url, **_: scheduler)
    return create_app(settings, ctx=ctx)
