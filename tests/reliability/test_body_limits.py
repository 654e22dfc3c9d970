"""Body size limits on EVERY route: each API operation (from the OpenAPI) and each portal form POST answers 413
to a body over its limit, declared (Content-Length) or chunked, before any handler runs.

"Before any handler" is checked through the metrics middleware, which sits inside the limit: a refused request
never reaches it, so the request counter does not move.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from haihe.platform.api.limits import BUFFER_MAX, BodyLimit
from tests.fixtures.figures import Figures
from tests.fixtures.platform import make_settings

CHUNK = 256 * 1024


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    from haihe.server import create_app

    db = tmp_path_factory.mktemp("limits") / "haihe.db"
    application = create_app(make_settings(f"sqlite:///{db}", reconcile_interval_s=0))
    with TestClient(application):
        yield application


def _limits(app: FastAPI) -> BodyLimit:
    """The BodyLimit as the app configured it (rebuilt from its middleware entry, around a dummy app)."""
    entry = next(m for m in app.user_middleware if m.cls is BodyLimit)

    async def dummy(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
        raise AssertionError

    kwargs: dict[str, Any] = dict(entry.kwargs)
    args: tuple[Any, ...] = tuple(entry.args)
    return BodyLimit(dummy, *args, **kwargs)


def _operations(app: FastAPI) -> list[tuple[str, str]]:
    # FastAPI 0.165 includes routers lazily: the OpenAPI is the reliable list of operations
    ops = []
    for path, item in app.openapi()["paths"].items():
        for method in item:
            if method in ("get", "put", "post", "patch", "delete"):
                ops.append((method.upper(), path))
    return ops


def _portal_posts() -> list[tuple[str, str]]:
    from haihe.portal.routes import admin, admin_reports, auth, dashboard, datasets, endpoints, jobs, submit, zoo

    posts = []
    for module in (auth, dashboard, submit, jobs, datasets, zoo, endpoints, admin, admin_reports):
        for route in module.router.routes:
            methods: set[str] = getattr(route, "methods", None) or set()
            if "POST" in methods:
                posts.append(("POST", str(getattr(route, "path", ""))))
    return posts


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}/]+(?::path)?\}", "x1", path)


def _requests_counted(app: FastAPI) -> float:
    total = 0.0
    for metric in app.state.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "haihe_http_requests_total":
                total += sample.value
    return total


def _assert_refused(r: Any, what: str) -> None:
    assert r.status_code == 413, f"{what}: {r.status_code} {r.text[:200]}"
    err = r.json()["error"]
    assert err["code"] == "payload_too_large" and err["field"] == "body", what
    assert "limit" in err["message"], what


def test_every_route_refuses_an_oversized_body_before_its_handler(app: FastAPI, figures: Figures) -> None:
    limits = _limits(app)
    routes = _operations(app) + _portal_posts()
    assert len(_operations(app)) >= 40, "the OpenAPI lists fewer operations than the platform has"
    assert len(_portal_posts()) >= 10, "the portal's form routes were not found"
    before = _requests_counted(app)
    checked = 0
    with TestClient(app) as client:
        for method, path in routes:
            url = _concrete(path)
            limit = limits._limit(url)
            # (a) a declared length over the limit: refused from the headers, nothing read
            r = client.request(method, url, headers={"content-type": "application/json",
                                                     "content-length": str(limit + 1)}, content=b"")
            _assert_refused(r, f"declared {method} {path}")
            # (b) chunked, no length: refused once the limit is passed (buffered before the app)
            assert limit <= BUFFER_MAX, f"{path}: limit {limit} is counted while streaming, not buffered"

            def chunks(n: int = limit + 1) -> Iterator[bytes]:
                while n > 0:
                    yield b"a" * min(CHUNK, n)
                    n -= CHUNK

            r = client.request(method, url, headers={"content-type": "application/json"}, content=chunks())
            _assert_refused(r, f"chunked {method} {path}")
            checked += 1
    assert _requests_counted(app) == before, "a refused request reached the app"
    figures.record("test_every_route_refuses_an_oversized_body_before_its_handler",
                   "body of limit+1 bytes, declared and chunked, on every operation and portal form POST",
                   {"routes_checked_for_413": checked, "api_operations": len(_operations(app)),
                    "portal_form_posts": len(_portal_posts()), "json_limit_bytes": limits.max_bytes,
                    "gateway_limit_bytes": limits._limit("/v2/models/x/infer"), "reached_handler": 0})


def test_html_forms_get_the_same_refusal(app: FastAPI) -> None:
    """A form post over the limit (urlencoded and multipart) is refused like JSON."""
    limits = _limits(app)
    with TestClient(app) as client:
        for ctype in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
            r = client.post("/jobs/new", headers={"content-type": ctype,
                                                  "content-length": str(limits.max_bytes + 1)}, content=b"")
            _assert_refused(r, ctype)


def test_limits_are_where_they_should_be(app: FastAPI) -> None:
    """JSON routes share the platform limit; inference has its own bounded one; dataset bytes never pass through."""
    limits = _limits(app)
    assert limits.max_bytes == app.state.ctx.settings.max_body_bytes
    gateway = limits._limit("/v2/models/x/infer")
    assert limits._limit("/v1/embeddings") == gateway
    assert 1 * 2**20 <= gateway <= 64 * 2**20, f"gateway limit {gateway} is not sensible"
    # dataset files go straight to S3 over presigned URLs: no dataset operation takes a byte stream
    schema = app.openapi()
    for path, item in schema["paths"].items():
        for method, op in item.items():
            if not isinstance(op, dict) or "requestBody" not in op:
                continue
            types = set(op["requestBody"].get("content", {}))
            assert types <= {"application/json"}, f"{method.upper()} {path} accepts {types}"
            assert limits._limit(path) in (limits.max_bytes, gateway), path
    # the one prefix above the buffer cap is the MLflow artifact proxy, which streams and counts
    assert limits._limit("/mlflow/api/2.0/mlflow-artifacts/artifacts/x") > BUFFER_MAX


def test_a_streamed_prefix_counts_the_body_instead_of_buffering_it() -> None:
    """Above BUFFER_MAX a chunked body is not held in memory: the app streams it and is cut off at the limit."""
    seen: list[int] = []

    async def streaming_app(scope: Any, receive: Any, send: Any) -> None:
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            total += len(message.get("body", b""))
            seen.append(total)
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"streamed"})

    limit = BUFFER_MAX + 1
    wrapped = BodyLimit(streaming_app, max_bytes=1024, overrides={"/big/": limit})

    def post(total: int) -> list[dict[str, Any]]:
        """Drive the middleware as a server would: the body in 1 MiB messages, no Content-Length."""
        pieces = [min(2**20, total - off) for off in range(0, total, 2**20)]
        messages = [{"type": "http.request", "body": b"a" * n, "more_body": i < len(pieces) - 1}
                    for i, n in enumerate(pieces)]
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            sent.append(dict(message))

        scope = {"type": "http", "method": "POST", "path": "/big/x", "headers": []}
        asyncio.run(wrapped(scope, receive, send))
        return sent

    ok = post(3 * 2**20)
    assert ok[0]["status"] == 200 and ok[1]["body"] == b"streamed"
    assert seen[:3] == [2**20, 2 * 2**20, 3 * 2**20], "the body did not stream through: it was buffered"
    seen.clear()
    refused = post(limit + 2**20)
    assert refused[0]["status"] == 413 and len([m for m in refused if m["type"] == "http.response.start"]) == 1
    assert b"payload_too_large" in refused[1]["body"]
    assert seen and max(seen) <= limit  # the app never saw a byte past the limit
