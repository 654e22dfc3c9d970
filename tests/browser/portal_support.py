"""Shared set-up of the portal unit tests: the real app on SQLite with the demo scheduler, and signed-in browsers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from haihe.platform.context import PlatformContext
from haihe.platform.jobs.reconciler import Reconciler
from haihe.platform.settings import Settings
from tests.browser.demo_scheduler import DemoScheduler
from tests.fixtures.platform import PASSWORD, Tenancy

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Portal:
    app: FastAPI
    tenancy: Tenancy
    scheduler: DemoScheduler
    ctx: PlatformContext

    def browser(self, username: str, password: str = PASSWORD) -> TestClient:
        """A separate cookie jar signed in through the sign-in form, like a person at a browser."""
        client = TestClient(self.app, base_url="http://testserver")
        r = client.get("/login")
        token = re.search(r'name="login_token" value="([^"]+)"', r.text)
        assert token, r.text
        r = client.post("/login", data={"username": username, "password": password, "login_token": token.group(1),
                                        "next": "/"}, follow_redirects=False)
        assert r.status_code == 303, r.text
        return client

    def reconcile(self) -> None:
        Reconciler(self.ctx).run_once()


def csrf_of(html: str) -> str:
    m = CSRF_RE.search(html)
    assert m, "page has no CSRF field"
    return m.group(1)


def make_portal(tmp_path: Path) -> Iterator[Portal]:
    from haihe.server import create_app

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'haihe.db'}", schedulers={"demo": "demo://"},
                        default_scheduler="demo", reconcile_interval_s=0, home=tmp_path)
    ctx = PlatformContext.from_settings(settings)
    scheduler = DemoScheduler()
    ctx.registry.register("demo", lambda url, **_: scheduler)
    app = create_app(settings, ctx=ctx)
    with TestClient(app) as admin_api:
        yield Portal(app, Tenancy(admin_api).bootstrap(), scheduler, ctx)

