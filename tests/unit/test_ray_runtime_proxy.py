"""Until an API process has warmed an app's handle, requests go through Serve's HTTP proxy; the handle after."""

from __future__ import annotations

import asyncio
import json
import sys
import types
from typing import Any

import httpx
import numpy as np
import pytest

from haihe.errors import ServiceUnavailable
from haihe.platform.gateway.ray_runtime import RayServeRuntime


class _Proxy:
    """Serve's HTTP proxy as a transport: answers ``POST /<app>`` with what ``status`` says."""

    def __init__(self, status: int = 200, refuse: bool = False) -> None:
        self.status, self.refuse = status, refuse
        self.calls: list[tuple[str, Any]] = []
        self.attempts = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.attempts += 1
        if self.refuse:
            raise httpx.ConnectError("connection refused", request=request)
        body = json.loads(request.content)
        self.calls.append((request.url.path, body))
        if self.status != 200:
            return httpx.Response(self.status, text="no")
        return httpx.Response(200, json={"outputs": [[len(str(r))] for r in body["rows"]]})


class _Handle:
    """A DeploymentHandle: ``predict.remote`` and ``stats.remote().result``."""

    def __init__(self) -> None:
        self.rows: list[Any] = []
        self.stats_calls = 0
        outer = self

        class _Predict:
            @staticmethod
            def remote(rows: list[Any]) -> Any:
                outer.rows.extend(rows)

                async def answer() -> list[Any]:
                    return [["handle"] for _ in rows]

                return answer()

        class _Stats:
            @staticmethod
            def remote() -> Any:
                outer.stats_calls += 1

                class _Response:
                    @staticmethod
                    def result(timeout_s: float) -> dict[str, int]:
                        return {"calls": 0}

                return _Response()

        self.predict, self.stats = _Predict, _Stats


def _runtime(proxy: _Proxy, monkeypatch: pytest.MonkeyPatch) -> tuple[RayServeRuntime, _Handle]:
    rt = RayServeRuntime("10.1.2.3:6379", 8123,
                         proxy=httpx.AsyncClient(base_url="http://10.1.2.3:8123", transport=httpx.MockTransport(proxy)))
    handle = _Handle()
    monkeypatch.setattr(rt, "handle", lambda name: handle)  # joining the cluster: not in a unit test
    return rt, handle


def test_the_proxy_is_on_the_heads_host_at_the_serve_port() -> None:
    assert RayServeRuntime("10.1.2.3:6379", 8123)._proxy_url == "http://10.1.2.3:8123"


def test_before_warming_the_rows_go_through_the_proxy_then_through_the_handle(
        monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = _Proxy()
    rt, handle = _runtime(proxy, monkeypatch)
    out = asyncio.run(rt.infer("app-1", [np.array([1.5, 2.0]), "text"], 5.0))
    assert proxy.calls == [("/app-1", {"rows": [[1.5, 2.0], "text"]})]  # arrays as JSON lists
    assert out == [[len("[1.5, 2.0]")], [len("text")]] and handle.rows == []
    rt.warm("app-1", 5.0)
    assert handle.stats_calls == 1  # one round trip through the handle
    assert asyncio.run(rt.infer("app-1", ["x"], 5.0)) == [["handle"]]
    assert len(proxy.calls) == 1 and handle.rows == ["x"]


@pytest.mark.parametrize("proxy", [_Proxy(refuse=True), _Proxy(status=404), _Proxy(status=503)],
                         ids=["unreachable", "unknown-route", "shedding"])
def test_a_proxy_that_cannot_take_the_call_leaves_it_to_the_handle(proxy: _Proxy,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    rt, handle = _runtime(proxy, monkeypatch)
    assert asyncio.run(rt.infer("app-1", ["x"], 5.0)) == [["handle"]]
    assert handle.rows == ["x"]
    asyncio.run(rt.infer("app-1", ["y"], 5.0))  # an unreachable proxy is not tried again; a 404/503 one is
    assert proxy.attempts == (1 if proxy.refuse else 2)


def test_rows_json_cannot_carry_go_through_the_handle(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = _Proxy()
    rt, handle = _runtime(proxy, monkeypatch)
    assert asyncio.run(rt.infer("app-1", [b"raw"], 5.0)) == [["handle"]]
    assert proxy.calls == [] and handle.rows == [b"raw"]


def test_a_model_error_behind_the_proxy_is_a_503_not_a_second_try(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = _Proxy(status=500)
    rt, handle = _runtime(proxy, monkeypatch)
    with pytest.raises(ServiceUnavailable, match="answered 500"):
        asyncio.run(rt.infer("app-1", ["x"], 5.0))
    assert handle.rows == []  # the model is not asked twice


def test_removing_an_app_forgets_it_was_warm(monkeypatch: pytest.MonkeyPatch) -> None:
    rt, _handle = _runtime(_Proxy(), monkeypatch)
    rt.warm("app-1", 5.0)

    class _Serve:
        @staticmethod
        def delete(name: str, _blocking: bool) -> None:
            pass

    monkeypatch.setattr(rt, "connect", lambda: None)
    monkeypatch.setitem(sys.modules, "ray", types.SimpleNamespace(serve=_Serve))  # `from ray import serve`
    rt.remove({"app": "app-1"})
    assert "app-1" not in rt._warm
