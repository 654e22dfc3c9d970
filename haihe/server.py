"""The one ASGI app: the platform's API routers plus the portal's pages (the top floor of the imports).

Run it with ``uvicorn haihe.server:create_app --factory`` (``haihe up`` does).
"""

from __future__ import annotations

from fastapi import FastAPI

from haihe.platform.app import create_platform_app
from haihe.platform.context import PlatformContext
from haihe.platform.settings import Settings


def create_app(settings: Settings | None = None, ctx: PlatformContext | None = None) -> FastAPI:
    app = create_platform_app(settings, ctx=ctx)
    from haihe.portal.pages import mount

    mount(app)
    return app
