"""The Ray endpoint runtime asks Serve for its status often while something changes, rarely while all is steady."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from haihe.errors import ServiceUnavailable
from haihe.platform.gateway import ray_runtime
from haihe.platform.gateway.ray_runtime import RayServeRuntime


@dataclass
class _Dep:
    status: str
    replica_states: dict[str, int] = field(default_factory=lambda: {"RUNNING": 1})


@dataclass
class _App:
    status: str
    deployments: dict[str, _Dep]
    message: str = ""


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> tuple[RayServeRuntime, list[int], dict[str, _App], _Clock]:
    clock = _Clock()
    monkeypatch.setattr(ray_runtime.time, "monotonic", clock)
    rt = RayServeRuntime("127.0.0.1:1", 1)
    apps: dict[str, _App] = {}
    reads: list[int] = []

    def read() -> dict[str, Any]:
        reads.append(1)
        return dict(apps)

    monkeypatch.setattr(rt, "_read_statuses", read)
    monkeypatch.setattr(rt, "handle", lambda name: object())
    return rt, reads, apps, clock


def test_a_deploying_app_is_asked_about_every_half_second(runtime: Any) -> None:
    rt, reads, apps, clock = runtime
    apps["a"] = _App("DEPLOYING", {"M": _Dep("UPDATING")})
    assert rt.probe({"app": "a"}).state == "starting"
    clock.now += 0.4
    rt.probe({"app": "a"})
    assert len(reads) == 1
    clock.now += 0.2
    apps["a"] = _App("RUNNING", {"M": _Dep("HEALTHY")})
    assert rt.probe({"app": "a"}).state == "ready" and len(reads) == 2


def test_steady_apps_are_asked_about_every_five_seconds_and_a_failed_call_asks_again(runtime: Any) -> None:
    rt, reads, apps, clock = runtime
    apps["a"] = _App("RUNNING", {"M": _Dep("HEALTHY")})
    for _ in range(9):  # the supervisor's cycle: once a second
        assert rt.probe({"app": "a"}).state == "ready"
        clock.now += 1.0
    assert len(reads) == 2  # at 0 s and at 5 s
    apps["a"] = _App("RUNNING", {"M": _Dep("UPSCALING", {"RUNNING": 1, "STARTING": 1})})  # scaling: watched closely
    clock.now += 1.0
    rt.probe({"app": "a"})
    clock.now += 0.6
    rt.probe({"app": "a"})
    assert len(reads) == 4

    class Broken:
        class predict:  # a handle's method
            @staticmethod
            def remote(rows: list[Any]) -> Any:
                async def died() -> None:  # as a DeploymentResponse does: the error comes with the answer
                    raise RuntimeError("replica died")

                return died()

    apps["a"] = _App("RUNNING", {"M": _Dep("HEALTHY")})
    clock.now += 1.0
    rt.probe({"app": "a"})
    reads.clear()
    rt._handles["a"] = Broken()
    with pytest.raises(ServiceUnavailable):
        asyncio.run(rt.infer("a", [[0.0]], 1.0))
    rt.probe({"app": "a"})
    assert len(reads) == 1  # at once, not 5 s later


def test_an_app_the_last_read_did_not_hold_is_asked_about_at_once(runtime: Any) -> None:
    rt, reads, apps, _clock = runtime
    apps["a"] = _App("RUNNING", {"M": _Dep("HEALTHY")})
    rt.probe({"app": "a"})
    apps["b"] = _App("RUNNING", {"M": _Dep("HEALTHY")})  # deployed by another process
    assert rt.probe({"app": "b"}).state == "ready" and len(reads) == 2
