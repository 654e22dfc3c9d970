"""The API's Prometheus metrics: each request counted once under its route template and status, timed."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.testclient import TestClient

from haihe.platform.metrics import Metrics, MetricsMiddleware
from tests.fixtures.platform import Tenancy


def _count(text: str, method: str, route: str, status: str) -> float:
    pattern = (rf'^haihe_http_requests_total\{{method="{method}",route="{re.escape(route)}",'
               rf'status="{status}"\}} (\S+)$')
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def test_requests_are_counted_by_route_template_and_status(tenancy: Tenancy) -> None:
    c, admin = tenancy.client, tenancy.admin_headers
    before = c.get("/metrics").text
    for _ in range(3):
        assert c.get("/api/v1/jobs/no-such-job", headers=admin).status_code == 404
    assert c.post("/api/v1/orgs", content=b'{"name": ', headers={**admin, "content-type": "application/json"}
                  ).status_code == 400
    assert c.get("/nowhere").status_code == 404
    after = c.get("/metrics").text
    route = "/api/v1/jobs/{job_id}"
    assert _count(after, "GET", route, "404") - _count(before, "GET", route, "404") == 3
    assert _count(after, "POST", "/api/v1/orgs", "400") - _count(before, "POST", "/api/v1/orgs", "400") == 1
    assert _count(after, "GET", "unmatched", "404") - _count(before, "GET", "unmatched", "404") == 1
    timed = re.search(rf'^haihe_http_request_seconds_count\{{method="GET",route="{re.escape(route)}"\}} (\S+)$',
                      after, re.M)
    assert timed and float(timed.group(1)) >= 3


def test_an_app_that_raises_counts_as_500_and_the_error_still_propagates() -> None:
    metrics = Metrics()
    app = FastAPI()

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/boom").status_code == 500
    assert _count(metrics.render().decode(), "GET", "/boom", "500") == 1
