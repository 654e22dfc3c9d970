"""Browser fixtures: the real app under uvicorn (demo scheduler), tenants made through the API, and Chromium.

Chromium is Debian's (/usr/bin/chromium) driven by Playwright's sync API directly (no pytest-playwright plugin), a
fresh profile per test, no video. Screenshots go to ``test-artifacts/portal/`` (CI keeps them as artifacts).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from haihe.cluster.procs import free_port, wait_until
from haihe.serve import api_process
from tests.fixtures.platform import PASSWORD, unique

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(os.environ.get("HAIHE_TEST_ARTIFACTS", "test-artifacts")) / "portal"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    url: str
    admin_token: str

    def api(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.admin_token}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kw)

    def tenant(self) -> tuple[str, str, str]:
        """A fresh org with a project and a researcher (password PASSWORD)."""
        org, project, user = unique("org"), unique("p"), unique("u")
        assert self.api("POST", "/api/v1/orgs", json={"name": org}).status_code == 201
        assert self.api("POST", f"/api/v1/orgs/{org}/projects", json={"name": project}).status_code == 201
        r = self.api("POST", f"/api/v1/orgs/{org}/users", json={"username": user, "role": "researcher",
                                                                 "password": PASSWORD})
        assert r.status_code == 201, r.text
        return org, project, user


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("portal-server")
    port = free_port()
    env = {**os.environ, "HAIHE_DATABASE_URL": f"sqlite:///{home / 'haihe.db'}", "HAIHE_HOME": str(home),
           "PYTHONPATH": str(REPO)}
    proc = api_process("server", port, log_dir=home, env=env, app="tests.browser.app_factory:create", cwd=REPO)
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(url + "/healthz").status_code == 200, timeout=90, what="portal server",
                   log_path=proc.log_path, alive=proc.is_running)
        r = httpx.post(url + "/api/v1/setup", json={"username": "root", "password": PASSWORD})
        assert r.status_code == 201, r.text
        token = httpx.post(url + "/api/v1/auth/token", json={"username": "root", "password": PASSWORD}).json()
        yield Server(url, token["token"])
    finally:
        proc.stop()


@pytest.fixture
def browser_context(tmp_path: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1366, "height": 900}, locale="en-US")
        try:
            yield context
        finally:
            context.close()


def shoot(page: Any, name: str) -> Path:
    """A full-page screenshot under test-artifacts/portal/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
