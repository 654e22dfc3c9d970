"""Endpoints under quota, on a real app and database with fake serving runtimes and a clock the test moves.

Deploying or scaling reserves one window (max_replicas × per-replica GPUs/CPUs × 1 h) or answers 402 naming the
quota with nothing stored; the supervisor charges replica-time once per window — never twice, across cycles and a
restart — and the usage report shows it as its own ``endpoint`` rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from haihe.platform.endpoints.rows import Endpoint
from haihe.platform.gateway.config import GatewayConfig
from haihe.platform.gateway.hub import EndpointsHub
from haihe.platform.models import LedgerEntry, Org
from tests.fixtures.platform import Tenancy, make_settings
from tests.unit.endpoint_fakes import FakeRuntime, FakeZoo

START = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC).timestamp()
MONTH = "2026-03"
WINDOW_S = 3600.0


@dataclass
class Clock:
    now: float = START

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    client: TestClient
    hub: EndpointsHub
    clock: Clock
    runtimes: dict[str, FakeRuntime]
    zoo: FakeZoo
    t: Tenancy
    org: str

    def create(self, name: str, **body: Any) -> Any:
        return self.client.post(f"/api/v1/orgs/{self.org}/endpoints", headers=self.t.admin_headers,
                                json={"name": name, "model": "public/digits@production", **body})

    def scale(self, name: str, lo: int, hi: int) -> Any:
        return self.client.post(f"/api/v1/orgs/{self.org}/endpoints/{name}/scale", headers=self.t.admin_headers,
                                json={"min_replicas": lo, "max_replicas": hi})

    def show(self, name: str) -> dict[str, Any]:
        r = self.client.get(f"/api/v1/orgs/{self.org}/endpoints/{name}", headers=self.t.admin_headers)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def quota(self, **limits: Any) -> None:
        r = self.client.put(f"/api/v1/orgs/{self.org}/quota", json=limits, headers=self.t.admin_headers)
        assert r.status_code == 200, r.text

    def counts(self) -> tuple[int, int]:
        """(endpoints, ledger entries) of the org."""
        with self.hub.ctx.db.session() as s:
            org_id = s.scalar(select(Org.id).where(Org.name == self.org))
            return (int(s.scalar(select(func.count()).select_from(Endpoint).where(Endpoint.org_id == org_id)) or 0),
                    int(s.scalar(select(func.count()).select_from(LedgerEntry)
                                 .where(LedgerEntry.org_id == org_id)) or 0))

    def ledger(self, kind: str, resource: str, endpoint: str | None = None) -> tuple[int, float]:
        """(entries, sum) of the org's endpoint entries of one kind and resource."""
        with self.hub.ctx.db.session() as s:
            org_id = s.scalar(select(Org.id).where(Org.name == self.org))
            q = select(func.count(), func.coalesce(func.sum(LedgerEntry.amount), 0.0)).where(
                LedgerEntry.org_id == org_id, LedgerEntry.kind == kind, LedgerEntry.resource == resource,
                LedgerEntry.source == "endpoint")
            if endpoint is not None:
                q = q.where(LedgerEntry.endpoint == endpoint)
            n, total = s.execute(q).one()
            return int(n), float(total)

    def report(self) -> list[dict[str, Any]]:
        r = self.client.get("/api/v1/usage", params={"month": MONTH, "org": self.org}, headers=self.t.admin_headers)
        assert r.status_code == 200, r.text
        return [row for row in r.json() if row["source"] == "endpoint"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    from haihe.server import create_app

    settings = make_settings(f"sqlite:///{tmp_path / 'haihe.db'}",
                             schedulers={"ray": "ray://127.0.0.1:28101", "slurm": "fake://"},
                             reconcile_interval_s=0, mlflow_url="http://127.0.0.1:9")
    app = create_app(settings)
    runtimes = {"ray": FakeRuntime("ray"), "slurm": FakeRuntime("slurm")}
    zoo = FakeZoo()
    zoo.add("public/digits", "image-classification", [1], aliases={"production": 1})
    clock = Clock()
    with TestClient(app) as client:
        hub = EndpointsHub(app.state.ctx, GatewayConfig(auth_cache_s=0, drain_s=0, quota_window_s=WINDOW_S),
                           runtimes=dict(runtimes), zoo=zoo, clock=clock)
        app.state.endpoints = hub
        t = Tenancy(client).bootstrap()
        yield World(client, hub, clock, runtimes, zoo, t, t.org())


def test_no_gpu_hours_left_refuses_a_gpu_endpoint_with_402_and_stores_nothing(world: World) -> None:
    world.quota(gpu_hours=0)
    before = world.counts()
    r = world.create("big", scheduler="slurm", gpus=1, partition="gpu")
    assert r.status_code == 402, r.text
    err = r.json()["error"]
    assert err["code"] == "quota_exceeded" and "gpu_hours" in err["message"] and "endpoint big" in err["message"]
    assert world.counts() == before == (0, 0)  # no endpoint row, no ledger entry
    # GPU-hours gate GPU endpoints only: a CPU endpoint still deploys, reserving one window of its CPUs
    r = world.create("small", scheduler="ray", min_replicas=1, max_replicas=2, cpus_per_replica=0.5)
    assert r.status_code == 202, r.text
    assert world.ledger("reserve", "cpu_s") == (1, 2 * 0.5 * WINDOW_S)
    assert world.ledger("reserve", "gpu_s") == (0, 0.0)


def test_scale_up_without_hours_left_is_402_and_changes_nothing(world: World) -> None:
    world.quota(gpu_hours=1, cpu_hours=100)
    assert world.create("a", scheduler="slurm", gpus=1).status_code == 202  # takes the 1 GPU-hour window
    assert world.ledger("reserve", "gpu_s") == (1, WINDOW_S)
    assert world.scale("a", 0, 0).status_code == 200  # scaled down: the window goes back at once
    assert world.ledger("reserve", "gpu_s") == (2, 0.0)
    assert world.create("b", scheduler="slurm", gpus=1).status_code == 202  # takes it instead
    before = world.counts()
    r = world.scale("a", 1, 1)
    assert r.status_code == 402, r.text
    assert r.json()["error"]["code"] == "quota_exceeded" and "gpu_hours" in r.json()["error"]["message"]
    assert world.counts() == before
    a = world.show("a")
    assert (a["state"], a["min_replicas"], a["max_replicas"]) == ("stopped", 0, 0)

    # CPU-hours the same way on Ray. b's Slurm job holds 1 CPU-h; r (1 replica × 0.5 CPU) takes 0.5 more; 3
    # replicas of r would need another 1.0 where 0.5 is left
    world.quota(gpu_hours=1, cpu_hours=2)
    assert world.create("r", scheduler="ray", cpus_per_replica=0.5).status_code == 202
    before = world.counts()
    r = world.scale("r", 1, 3)
    assert r.status_code == 402 and "cpu_hours" in r.json()["error"]["message"], r.text
    assert world.counts() == before and world.show("r")["max_replicas"] == 1


def test_replica_hours_are_charged_once_per_window_across_cycles_and_a_restart(world: World) -> None:
    assert world.create("svc", scheduler="ray", min_replicas=2, max_replicas=2,
                        cpus_per_replica=0.5).status_code == 202
    world.hub.supervise_once()  # deploys
    world.hub.supervise_once()  # ready: 2 replicas × 0.5 CPU start accruing
    assert world.show("svc")["state"] == "ready"
    world.clock.now += WINDOW_S / 2
    world.hub.supervise_once()
    assert world.ledger("charge", "cpu_s") == (0, 0.0)  # charged when the window ends
    world.clock.now += WINDOW_S / 2
    world.hub.supervise_once()
    world.hub.supervise_once()  # a second cycle at the same instant charges nothing more
    assert world.ledger("charge", "cpu_s") == (1, 1.0 * WINDOW_S)

    # a restarted platform (a new hub on the same database; Serve kept running) resumes from the stored window
    restarted = EndpointsHub(world.hub.ctx, world.hub.config, runtimes=dict(world.runtimes), zoo=world.zoo,
                             clock=world.clock)
    restarted.supervise_once()
    restarted.supervise_once()
    assert world.ledger("charge", "cpu_s") == (1, 1.0 * WINDOW_S)
    # the window was renewed: one window held (reserve, release, renew)
    assert world.ledger("reserve", "cpu_s") == (3, 1.0 * WINDOW_S)

    world.clock.now += WINDOW_S
    restarted.supervise_once()
    assert world.ledger("charge", "cpu_s") == (2, 2.0 * WINDOW_S)
    rows = world.report()
    assert [(r["resource"], r["amount"], r["unit"]) for r in rows] == [("cpu_hours", 2.0, "CPU-hours")]

    # deleting charges the last, partial window and gives the reservation back
    world.clock.now += WINDOW_S / 4
    world.hub.meter.flush()
    r = world.client.delete(f"/api/v1/orgs/{world.org}/endpoints/svc", headers=world.t.admin_headers)
    assert r.status_code == 204, r.text
    assert world.ledger("charge", "cpu_s") == (3, 2.25 * WINDOW_S)
    assert world.ledger("reserve", "cpu_s")[1] == 0.0
    assert world.report()[0]["amount"] == 2.25


def test_slurm_gpu_replica_hours_and_scaling_to_zero(world: World) -> None:
    world.quota(gpu_hours=10)
    assert world.create("g", scheduler="slurm", gpus=2, cpus_per_replica=1).status_code == 202
    world.hub.supervise_once()
    world.hub.supervise_once()
    world.clock.now += 900
    assert world.scale("g", 0, 0).status_code == 200  # the reservation goes back now ...
    assert world.ledger("reserve", "gpu_s")[1] == 0.0
    world.hub.supervise_once()  # ... the job is stopped and its 15 minutes charged
    assert world.runtimes["slurm"].removed
    assert world.ledger("charge", "gpu_s") == (1, 2 * 900.0)
    assert world.ledger("charge", "cpu_s") == (1, 900.0)
    world.clock.now += WINDOW_S
    world.hub.supervise_once()
    assert world.ledger("charge", "gpu_s") == (1, 2 * 900.0)  # stopped: nothing more
    report = {r["resource"]: r["amount"] for r in world.report()}
    assert report == {"gpu_hours": 0.5, "cpu_hours": 0.25}


def test_an_endpoint_whose_next_window_does_not_fit_is_stopped_naming_the_quota(world: World) -> None:
    world.quota(cpu_hours=1.5)
    assert world.create("tight", scheduler="ray", min_replicas=2, max_replicas=2,
                        cpus_per_replica=0.5).status_code == 202  # 1 CPU-h window of 1.5
    world.hub.supervise_once()
    world.hub.supervise_once()
    world.clock.now += WINDOW_S
    world.hub.supervise_once()  # charged 1 CPU-h: 0.5 left, the next window needs 1
    ep = world.show("tight")
    assert ep["state"] == "stopped" and "cpu_hours" in ep["reason"] and ep["max_replicas"] == 0
    world.hub.supervise_once()  # the supervisor takes the replicas down and keeps the reason
    ep = world.show("tight")
    assert ep["state"] == "stopped" and "cpu_hours" in ep["reason"]
    assert world.runtimes["ray"].apps == {}
    assert world.ledger("charge", "cpu_s") == (1, WINDOW_S)
    assert world.ledger("reserve", "cpu_s")[1] == 0.0
    r = world.scale("tight", 2, 2)
    assert r.status_code == 402 and "cpu_hours" in r.json()["error"]["message"]
