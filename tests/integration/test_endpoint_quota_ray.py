"""Endpoints under quota on the real Ray head: a running endpoint's replica-hours reach the usage report.

One platform process with a short quota window (so windows end during the test): the org's CPU-hours gate the
deploy (402 naming ``cpu_hours`` when a window does not fit, nothing stored); the supervisor charges the replicas
Serve reports running, window after window, and the usage report shows them as ``endpoint`` rows; deleting the
endpoint charges its last partial window and gives the reservation back.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from haihe.cluster.mlflow_server import MlflowServer
from haihe.cluster.ray_head import RayHead
from haihe.model_zoo import ModelZoo
from haihe.platform.models import LedgerEntry, Org
from tests.integration.endpoint_stack import Platform, platform_process, wait_for
from tests.integration.test_endpoints_ray import register_digits

pytestmark = [pytest.mark.ray, pytest.mark.mlflow, pytest.mark.s3]

WINDOW_S = 4.0
CPUS = 0.5


@pytest.fixture(scope="module")
def stack(ray_head: RayHead, mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("endpoint-quota")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HAIHE_GATEWAY_QUOTA_WINDOW_S", str(WINDOW_S))  # GatewayConfig reads it when the app is built
        mp.setenv("HF_HUB_OFFLINE", "1")
        with platform_process(tmp, schedulers={"ray": ray_head.scheduler_url}, mlflow_url=mlflow_server.url) as p:
            yield p


def _usage(stack: Platform, org: str) -> list[dict[str, Any]]:
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    r = stack.http.get("/api/v1/usage", params={"month": month, "org": org}, headers=stack.tenancy.admin_headers)
    assert r.status_code == 200, r.text
    return [row for row in r.json() if row["source"] == "endpoint"]


def _org_rows(stack: Platform, org: str) -> tuple[int, float]:
    """(ledger entries, what the org holds reserved) straight from the platform's database."""
    with stack.hub.ctx.db.session() as s:
        org_id = s.scalar(select(Org.id).where(Org.name == org))
        n = s.scalar(select(func.count()).select_from(LedgerEntry).where(LedgerEntry.org_id == org_id))
        held = s.scalar(select(func.coalesce(func.sum(LedgerEntry.amount), 0.0)).where(
            LedgerEntry.org_id == org_id, LedgerEntry.kind == "reserve"))
        return int(n or 0), float(held or 0.0)


def test_running_endpoint_replica_hours_appear_in_the_usage_report(
        stack: Platform, mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t = stack.tenancy
    org = t.org(f"eq{uuid.uuid4().hex[:6]}")
    zoo = ModelZoo.connect(mlflow_server.url, cache_dir=tmp_path_factory.mktemp("zoo"))
    register_digits(zoo, mlflow_server.url, org, seed=5)
    # one replica's window is 0.5 CPU × 4 s: allow 40 of them (the test needs a few); 64 replicas do not fit
    limit_h = 40 * CPUS * WINDOW_S / 3600
    r = stack.http.put(f"/api/v1/orgs/{org}/quota", json={"cpu_hours": limit_h, "period": "monthly"},
                       headers=t.admin_headers)
    assert r.status_code == 200, r.text
    body = {"model": f"{org}/digits@production", "cpus_per_replica": CPUS}

    refused = stack.http.post(f"/api/v1/orgs/{org}/endpoints", headers=t.admin_headers,
                              json={"name": "wide", "max_replicas": 64, **body})
    assert refused.status_code == 402, refused.text
    assert "cpu_hours" in refused.json()["error"]["message"]
    assert _org_rows(stack, org) == (0, 0.0)
    assert stack.http.get(f"/api/v1/orgs/{org}/endpoints/wide", headers=t.admin_headers).status_code == 404

    r = stack.http.post(f"/api/v1/orgs/{org}/endpoints", headers=t.admin_headers, json={"name": "digits", **body})
    assert r.status_code == 202, r.text
    # the request's transaction commits as its dependency closes, which may be just after the 202 is sent
    wait_for(lambda: _org_rows(stack, org)[1] == pytest.approx(CPUS * WINDOW_S), 10, "the first window reserved")
    stack.wait_state(org, "digits", ("ready",))

    def charged() -> float:
        return sum(row["amount"] for row in _usage(stack, org) if row["resource"] == "cpu_hours")

    # at least one whole window with its replica RUNNING is charged (0.5 CPU × 4 s = 0.000556 CPU-h)
    wait_for(lambda: charged() >= CPUS * WINDOW_S / 3600 * 0.99, 60, "a window's replica-hours in the report")
    rows = _usage(stack, org)
    assert {(row["resource"], row["unit"]) for row in rows} == {("cpu_hours", "CPU-hours")}
    assert _org_rows(stack, org)[1] == pytest.approx(CPUS * WINDOW_S)  # the next window is held, one at a time

    before = charged()
    stack.hub.meter.flush()
    r = stack.http.delete(f"/api/v1/orgs/{org}/endpoints/digits", headers=t.admin_headers)
    assert r.status_code == 204, r.text
    # the request's transaction commits as its dependency closes, which may be just after the 204 is sent
    wait_for(lambda: abs(_org_rows(stack, org)[1]) < 1e-6, 10, "the reservation to be given back")
    assert charged() >= before
