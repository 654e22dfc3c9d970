"""A real platform process for the endpoint tests: uvicorn in a thread, on the session's Ray head and MLflow server.

The gateway joins the Ray cluster from this process (lazily, on the first endpoint), exactly as in ``haihe up``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from haihe.cluster.procs import free_port
from haihe.platform.gateway.hub import EndpointsHub
from tests.fixtures.platform import Tenancy, make_settings


@dataclass
class Platform:
    url: str
    http: httpx.Client
    hub: EndpointsHub
    tenancy: Tenancy

    def wait_state(self, org: str, name: str, states: tuple[str, ...], timeout: float = 420.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            r = self.http.get(f"/api/v1/orgs/{org}/endpoints/{name}", headers=self.tenancy.admin_headers)
            last = r.json()
            if last.get("state") in states:
                return last
            if last.get("state") == "failed":
                raise AssertionError(f"endpoint failed: {last.get('reason')}")
            time.sleep(0.5)
        raise AssertionError(f"endpoint {org}/{name} never reached {states}: {last}")


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def platform_process(tmp: Path, *, schedulers: dict[str, str], mlflow_url: str) -> Iterator[Platform]:
    import uvicorn

    from haihe.server import create_app

    port = free_port()
    # public_url: model servers load zoo models through this platform's MLflow proxy
    settings = make_settings(f"sqlite:///{tmp / 'haihe.db'}", schedulers=schedulers, mlflow_url=mlflow_url,
                             reconcile_interval_s=0.5, default_scheduler=next(iter(schedulers)),
                             public_url=f"http://127.0.0.1:{port}")
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", access_log=False))
    thread = threading.Thread(target=server.run, name="platform-under-test", daemon=True)
    thread.start()
    wait_for(lambda: server.started, 60, "the platform to start")
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=url, timeout=60) as http:
        tenancy = Tenancy(http).bootstrap()  # type: ignore[arg-type] - httpx.Client speaks TestClient's API
        try:
            yield Platform(url, http, app.state.endpoints, tenancy)
        finally:
            for ep in http.get("/api/v1/endpoints", headers=tenancy.admin_headers).json().get("items", []):
                http.delete(f"/api/v1/orgs/{ep['org']}/endpoints/{ep['name']}", headers=tenancy.admin_headers)
            server.should_exit = True
            thread.join(timeout=60)
