"""The gateway and the endpoint service on a real app and database, with a fake serving runtime and zoo.

Gates in order (401, 404, 403, 429, 402, 503) must stop a request before the model: the fake counts what arrives.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from haihe.platform.endpoints.rows import EndpointUsage
from haihe.platform.gateway.config import GatewayConfig
from haihe.platform.gateway.hub import EndpointsHub
from haihe.platform.models import LedgerEntry
from tests.fixtures.platform import Tenancy, bearer, make_settings
from tests.unit.endpoint_fakes import FakeRuntime, FakeZoo


@dataclass
class World:
    client: TestClient
    hub: EndpointsHub
    runtime: FakeRuntime
    zoo: FakeZoo
    t: Tenancy
    org: str
    admin: dict[str, str]
    key: dict[str, Any]

    def create(self, name: str, model: str = "acme-models/digits@production", **body: Any) -> dict[str, Any]:
        r = self.client.post(f"/api/v1/orgs/{self.org}/endpoints", json={"name": name, "model": model, **body},
                             headers=self.admin)
        assert r.status_code == 202, r.text
        return dict(r.json())

    def show(self, name: str) -> dict[str, Any]:
        r = self.client.get(f"/api/v1/orgs/{self.org}/endpoints/{name}", headers=self.admin)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def infer(self, name: str, key: dict[str, Any] | None = None, rows: int = 1) -> Any:
        body = {"inputs": [{"name": "x", "shape": [rows, 2], "datatype": "FP32", "data": [1.0, 2.0] * rows}]}
        headers = bearer(key) if key is not None else {}
        return self.client.post(f"/v2/models/{name}/infer", json=body, headers=headers)

    def ledger_requests(self) -> float:
        with self.hub.ctx.db.session() as s:
            return float(s.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0.0))
                                  .where(LedgerEntry.resource == "requests", LedgerEntry.kind == "charge")) or 0)


@contextmanager
def open_world(tmp_path: Path, zoo: FakeZoo | None = None) -> Iterator[World]:
    """A platform app with the gateway on a fake runtime and zoo (default: digits, MiniLM, another org's model)."""
    from haihe.server import create_app

    settings = make_settings(f"sqlite:///{tmp_path / 'haihe.db'}", schedulers={"ray": "ray://127.0.0.1:28101"},
                             reconcile_interval_s=0, mlflow_url="http://127.0.0.1:9")
    app = create_app(settings)
    runtime = FakeRuntime()
    if zoo is None:
        zoo = FakeZoo()
        zoo.add("acme-models/digits", "image-classification", [1, 2], visibility="public",
                aliases={"production": 1})
        zoo.add("public/minilm-l6", "text-embedding", [1], aliases={"production": 1})
        zoo.add("other/secret", "image-classification", [1], visibility="private")
    with TestClient(app) as client:
        hub = EndpointsHub(app.state.ctx, GatewayConfig(auth_cache_s=0, drain_s=0, rate_per_s=1000, burst=1000),
                           runtimes={"ray": runtime}, zoo=zoo)
        app.state.endpoints = hub
        t = Tenancy(client).bootstrap()
        org = t.org()
        sa = t.user(org, role="service_account")
        key = t.key(org, t.admin_headers, username=sa, scopes=["inference"])
        yield World(client, hub, runtime, zoo, t, org, t.admin_headers, key)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with open_world(tmp_path) as w:
        yield w


def _ready(w: World, name: str, cycles: int = 3) -> dict[str, Any]:
    for _ in range(cycles):
        w.hub.supervise_once()
    return w.show(name)


def test_create_deploys_then_serves_and_meters_into_the_ledger(world: World) -> None:
    w = world
    ep = w.create("digits", max_batch_size=8)
    assert ep["state"] == "deploying" and ep["model_version"] == 1 and ep["backend"] == "ray"
    r = w.infer("digits", w.key)
    assert r.status_code == 503 and "not ready" in r.json()["error"]  # OIP: the error is a string
    assert _ready(w, "digits")["state"] == "ready"
    for _ in range(5):
        r = w.infer("digits", w.key, rows=2)
        assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == "digits" and out["model_version"] == "1"
    assert out["outputs"][0]["shape"] == [2, 2] and out["outputs"][0]["data"] == [2.0, 4.0, 2.0, 4.0]
    assert out["outputs"][1]["name"] == "label"  # a classifier also gets its argmax
    assert w.runtime.calls == 5
    assert w.ledger_requests() == 0  # not yet flushed: no database write per request
    assert w.hub.meter.flush() == 5
    assert w.ledger_requests() == 5
    assert w.hub.meter.flush() == 0  # nothing counted twice
    usage = w.client.get(f"/api/v1/orgs/{w.org}/endpoints/digits/usage", headers=w.admin).json()
    assert usage["requests"] == 5 and usage["by_key"][0]["key"] == w.key["prefix"]


def test_a_worker_whose_routes_lag_the_leader_serves_what_the_leader_made_ready(world: World) -> None:
    """`endpoints create --wait` returns once the row says ready; the next request may reach a worker whose routes
    are a cycle old (it said 503 deploying in CI). A route held as not servable is read again before refusing."""
    w = world
    w.create("lagging")
    assert _ready(w, "lagging")["state"] == "ready"
    key = next(k for k in w.hub.routes if k[1] == "lagging")
    w.hub.routes[key] = replace(w.hub.routes[key], state="deploying", reason="Serve application deploying")
    w.hub._reread_at.clear()
    assert w.client.get("/v2/models/lagging/ready", headers=bearer(w.key)).status_code == 200
    w.hub.routes[key] = replace(w.hub.routes[key], state="deploying")
    w.hub._reread_at.clear()
    r = w.infer("lagging", w.key)
    assert r.status_code == 200, r.text
    assert w.hub.routes[key].state == "ready"


def test_gates_stop_requests_before_the_model(world: World) -> None:
    w = world
    w.create("gated", rate_limit_per_s=0.001, rate_limit_burst=3)
    _ready(w, "gated")
    base = w.runtime.calls
    assert w.infer("gated", None).status_code == 401  # no key
    bogus = dict(w.key, key=w.key["key"][:-4] + "zzzz")
    assert w.infer("gated", bogus).status_code == 401
    other_org = w.t.org()
    other_sa = w.t.user(other_org, role="service_account")
    other_key = w.t.key(other_org, w.admin, username=other_sa, scopes=["inference"])
    r = w.infer("gated", other_key)
    assert r.status_code == 404, r.text  # another org's endpoint does not exist for this key
    api_only = w.t.key(w.org, w.admin, username=w.t.user(w.org, role="service_account"), scopes=["api"])
    assert w.infer("gated", api_only).status_code == 403
    scoped = w.t.key(w.org, w.admin, username=w.t.user(w.org, role="service_account"), scopes=["endpoint:gated"])
    assert w.infer("gated", scoped).status_code == 200
    revoked = w.t.key(w.org, w.admin, username=w.t.user(w.org, role="service_account"), scopes=["inference"])
    assert w.client.delete(f"/api/v1/keys/{revoked['prefix']}", headers=w.admin).status_code == 200
    assert w.infer("gated", revoked).status_code == 401
    assert w.runtime.calls == base + 1  # only the scoped key's request arrived
    codes = [w.infer("gated", w.key).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
    limited = w.infer("gated", w.key)
    assert int(limited.headers["Retry-After"]) >= 1
    assert w.runtime.calls == base + 4


def test_monthly_quota_names_itself_and_counts_unflushed_requests(world: World) -> None:
    w = world
    w.create("quota")
    _ready(w, "quota")
    r = w.client.put(f"/api/v1/orgs/{w.org}/quota", json={"requests_per_month": 3}, headers=w.admin)
    assert r.status_code == 200, r.text
    assert [w.infer("quota", w.key).status_code for _ in range(3)] == [200, 200, 200]
    over = w.infer("quota", w.key)  # none flushed yet: the in-memory count already holds the 3
    assert over.status_code == 402
    assert "requests_per_month" in over.json()["error"] and over.json()["code"] == "quota_exceeded"
    w.hub.meter.flush()
    w.hub.book.refresh(w.hub.routes[next(iter(w.hub.routes))].org_id)
    assert w.infer("quota", w.key).status_code == 402
    assert w.runtime.calls == 3 and w.ledger_requests() == 3


def test_rolling_update_keeps_serving_and_retires_the_old_generation(world: World) -> None:
    w = world
    w.create("roll")
    _ready(w, "roll")
    w.runtime.next_state = "starting"  # the new generation takes its time to come up
    r = w.client.patch(f"/api/v1/orgs/{w.org}/endpoints/roll", json={"model": "acme-models/digits:2"},
                       headers=w.admin)
    assert r.status_code == 200 and r.json()["target_generation"] == 2
    for _ in range(3):
        w.hub.supervise_once()
        assert w.infer("roll", w.key).status_code == 200  # still generation 1
    assert len(w.runtime.apps) == 2
    new_app = next(a for a in w.runtime.apps if a.endswith("g2"))
    w.runtime.apps[new_app]["state"] = "ready"
    w.hub.supervise_once()  # switch
    assert w.show("roll")["generation"] == 2
    w.hub.supervise_once()  # retire (drain 0, nothing in flight)
    assert list(w.runtime.apps) == [new_app]
    r = w.infer("roll", w.key)
    assert r.status_code == 200 and r.json()["model_version"] == "2"


def test_scale_delete_and_model_checks(world: World) -> None:
    w = world
    r = w.client.post(f"/api/v1/orgs/{w.org}/endpoints", json={"name": "x", "model": "public/minilm-l6@nope"},
                      headers=w.admin)
    assert r.status_code == 404
    r = w.client.post(f"/api/v1/orgs/{w.org}/endpoints", json={"name": "x", "model": "other/secret:1"},
                      headers=w.admin)
    assert r.status_code == 404  # private to another org
    w.zoo.models.pop(("public", "minilm-l6"))
    r = w.client.post(f"/api/v1/orgs/{w.org}/endpoints", json={"name": "x", "model": "public/minilm-l6@production"},
                      headers=w.admin)
    assert r.status_code == 404 and "haihe up" in r.json()["error"]["message"]
    w.create("sc", min_replicas=1, max_replicas=2)
    r = w.client.post(f"/api/v1/orgs/{w.org}/endpoints", json={"name": "sc", "model": "acme-models/digits:1"},
                      headers=w.admin)
    assert r.status_code == 409
    _ready(w, "sc")
    r = w.client.post(f"/api/v1/orgs/{w.org}/endpoints/sc/scale", json={"min_replicas": 2, "max_replicas": 4},
                      headers=w.admin)
    assert r.status_code == 200
    w.hub.supervise_once()
    assert next(iter(w.runtime.apps.values()))["rescaled"] == 1
    r = w.client.post(f"/api/v1/orgs/{w.org}/endpoints/sc/scale", json={"min_replicas": 0, "max_replicas": 0},
                      headers=w.admin)
    w.hub.supervise_once()
    assert w.show("sc")["state"] == "stopped" and not w.runtime.apps
    assert w.infer("sc", w.key).status_code == 503
    assert w.client.delete(f"/api/v1/orgs/{w.org}/endpoints/sc", headers=w.admin).status_code == 204
    assert w.client.get(f"/api/v1/orgs/{w.org}/endpoints/sc", headers=w.admin).status_code == 404
    listed = w.client.get("/api/v1/endpoints", headers=w.admin).json()["items"]
    assert "sc" not in [e["name"] for e in listed]


def test_openai_embeddings_float_and_base64(world: World) -> None:
    w = world
    w.create("mini", model="public/minilm-l6@production")
    _ready(w, "mini")
    r = w.client.post("/v1/embeddings", json={"model": "mini", "input": ["ab", "abcd"]}, headers=bearer(w.key))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and [d["embedding"] for d in body["data"]] == [[2.0, 1.0], [4.0, 1.0]]
    r = w.client.post("/v1/embeddings", json={"model": "mini", "input": "abc", "encoding_format": "base64"},
                      headers=bearer(w.key))
    vec = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), dtype="<f4")
    assert vec.tolist() == [3.0, 1.0]
    assert w.client.post("/v1/embeddings", json={"model": "nope", "input": "x"}, headers=bearer(w.key)).status_code \
        == 404
    meta = w.client.get("/v2/models/mini", headers=bearer(w.key)).json()
    assert meta["ready"] is True and meta["versions"] == ["1"]


def test_metering_survives_a_failed_flush_and_charges_once(world: World) -> None:
    w = world
    w.create("m")
    _ready(w, "m")
    for _ in range(4):
        assert w.infer("m", w.key).status_code == 200
    w.runtime.fail_infer = True
    assert w.infer("m", w.key).status_code == 503  # an error: counted, not charged
    w.runtime.fail_infer = False
    assert w.hub.meter.flush() == 4
    assert w.hub.meter.served == 4 == w.hub.meter.written == w.ledger_requests()
    with w.hub.ctx.db.session() as s:
        assert s.scalar(select(func.sum(EndpointUsage.errors))) == 1


def test_payload_checks(world: World) -> None:
    w = world
    w.create("p")
    _ready(w, "p")
    bad = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1.0]}]}
    r = w.client.post("/v2/models/p/infer", json=bad, headers=bearer(w.key))
    assert r.status_code == 400 and r.json()["field"] == "inputs.0.data" and isinstance(r.json()["error"], str)
    big = {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a" * (5 * 2**20)]}]}
    r = w.client.post("/v2/models/p/infer", json=big, headers=bearer(w.key))
    assert r.status_code == 413


def test_a_deleted_endpoint_does_not_block_metering_of_the_others(world: World) -> None:
    w = world
    w.create("gone")
    w.create("stays")
    _ready(w, "gone")
    _ready(w, "stays")
    assert w.infer("gone", w.key).status_code == 200
    assert w.client.delete(f"/api/v1/orgs/{w.org}/endpoints/gone", headers=w.admin).status_code == 204
    w.hub.supervise_once()
    assert w.hub.meter.flush() == 1  # the request served before the delete is still charged
    assert w.infer("stays", w.key).status_code == 200
    assert w.hub.meter.flush() == 1  # and the next batch is not stuck behind it
    assert w.ledger_requests() == 2
    usage = w.client.get(f"/api/v1/orgs/{w.org}/endpoints/stays/usage", headers=w.admin).json()
    assert usage["requests"] == 1


def test_the_ray_cluster_of_the_gateway_comes_from_its_scheduler_url() -> None:
    from haihe.cluster.ports import PortPlan
    from haihe.cluster.ray_head import RayHead
    from haihe.platform.gateway.ray_runtime import serve_addresses
    from haihe.platform.settings import Settings

    head = RayHead(Path("/nonexistent"), PortPlan(24000))
    assert serve_addresses(head.scheduler_url) == (head.gcs_address, PortPlan(24000).serve_http)
    assert serve_addresses("ray://10.0.0.5:8265") == ("10.0.0.5:6379", 8000)  # Ray's own defaults at a site
    settings = Settings(schedulers={"ray": "ray://h:8265"}, gateway=GatewayConfig(rate_per_s=7))
    assert settings.gateway.rate_per_s == 7


def test_each_process_warms_a_ready_target_once_and_a_failed_warm_again_later(world: World,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor's cycle makes one round trip to every target that became ready (leader or not), so a
    process's first request does not pay for joining the cluster; a target that could not be warmed is tried
    again after WARM_RETRY_S, not on every cycle."""
    from haihe.platform.gateway import hub as hub_module

    w = world
    w.create("warmed")
    assert _ready(w, "warmed")["state"] == "ready"
    target = next(v.target for k, v in w.hub.routes.items() if k[1] == "warmed")
    assert w.runtime.warmed == [target]
    for _ in range(3):
        w.hub.supervise_once()
    assert w.runtime.warmed == [target]  # once

    clock = [1000.0]
    monkeypatch.setattr(hub_module.time, "monotonic", lambda: clock[0])
    failures: list[str] = []

    def cold(name: str, timeout_s: float) -> None:
        failures.append(name)
        raise ConnectionError("cluster away")

    w.create("cold")
    monkeypatch.setattr(w.runtime, "warm", cold)
    _ready(w, "cold")
    assert len(failures) == 1  # the failure is remembered: the cycles after it do not ask again
    clock[0] += hub_module.WARM_RETRY_S + 1
    w.hub.supervise_once()
    assert len(failures) == 2
    assert w.infer("cold", w.key).status_code == 200  # requests are served meanwhile (their own path)
