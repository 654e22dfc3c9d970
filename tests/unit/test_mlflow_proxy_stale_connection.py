"""The MLflow proxy's pooled client after an MLflow restart: a connection MLflow closed is used once more by the
pool and fails before any answer; the proxy sends the call again instead of telling the job MLflow is down (the
README tour's job failed to register its model this way after `haihe up` restarted MLflow)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from haihe.platform.tracking.router import _send


def _flaky(fail_first: int) -> tuple[httpx.AsyncClient, list[str]]:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        if len(seen) <= fail_first:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return httpx.Response(200, json={"ok": True})

    return httpx.AsyncClient(transport=httpx.MockTransport(handler)), seen


def test_a_call_on_a_stale_pooled_connection_is_sent_again_once() -> None:
    async def go() -> None:
        http, seen = _flaky(1)
        r = await _send(http, http.build_request("POST", "http://mlflow/api/2.0/mlflow/runs/log-batch", json={}),
                        stream=False)
        assert r.status_code == 200 and seen == ["POST", "POST"]

    asyncio.run(go())


def test_a_second_failure_or_an_unreplayable_body_is_reported() -> None:
    async def go() -> None:
        http, seen = _flaky(2)
        with pytest.raises(httpx.RemoteProtocolError):
            await _send(http, http.build_request("GET", "http://mlflow/health"), stream=False)
        assert len(seen) == 2
        http, seen = _flaky(1)
        with pytest.raises(httpx.RemoteProtocolError):
            await _send(http, http.build_request("PUT", "http://mlflow/a"), stream=True, replayable=False)
        assert len(seen) == 1

    asyncio.run(go())
