"""Slurm-hosted endpoints through the real SlurmRuntime over the stateful fake scheduler (the Slurm backend has no
``endpoint(ref)`` hook yet, so the address comes from the job's log, as it would from a real job).

The model servers are an ``httpx.MockTransport`` that answers only for jobs the fake says are RUNNING: a job
cancelled behind the platform's back stops answering at once, like a killed process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from haihe.names import SERVING_ADDRESS_MARKER as ADDRESS_MARKER
from haihe.platform.gateway.config import GatewayConfig
from haihe.platform.gateway.hub import EndpointsHub
from haihe.platform.gateway.slurm_runtime import SlurmRuntime, find_address
from haihe.schedulers.base import JobState
from tests.fixtures.fake_scheduler import FakeScheduler
from tests.fixtures.platform import Tenancy, bearer, make_settings
from tests.unit.endpoint_fakes import FakeZoo


class Servers:
    """Model servers by address; one answers only while its job runs."""

    def __init__(self, sched: FakeScheduler) -> None:
        self.sched = sched
        self.calls = 0

    def job_of(self, request: httpx.Request) -> str | None:
        port = request.url.port
        return str(port - 40000) if port else None

    def handler(self, request: httpx.Request) -> httpx.Response:
        ref = self.job_of(request)
        job = self.sched.jobs.get(ref or "")
        if job is None or job.status.state != JobState.RUNNING:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/healthz":
            return httpx.Response(200, json={"ready": True})
        rows = json.loads(request.content)["rows"]
        self.calls += 1
        return httpx.Response(200, json={"outputs": [[sum(r)] for r in rows]})

    def start(self, ref: str) -> None:
        """The job starts and its server prints its address (port = 40000 + job id)."""
        self.sched.set(ref, JobState.RUNNING, started_at=time.time())
        self.sched.jobs[ref].log = f"loading\n{ADDRESS_MARKER}http://127.0.0.1:{40000 + int(ref)}\n"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[TestClient, EndpointsHub, FakeScheduler, Servers, str, dict[str, Any]]]:
    from haihe.server import create_app

    settings = make_settings(f"sqlite:///{tmp_path / 'haihe.db'}", schedulers={"slurm": "fake://"},
                             reconcile_interval_s=0, mlflow_url="http://127.0.0.1:9")
    app = create_app(settings)
    sched = FakeScheduler()
    servers = Servers(sched)
    transport = httpx.MockTransport(servers.handler)
    runtime = SlurmRuntime(sched, "/usr/bin/python3", time_limit_min=60, connect_timeout_s=1,
                           health=httpx.Client(transport=transport),
                           http=httpx.AsyncClient(transport=transport))
    zoo = FakeZoo()
    zoo.add("public/summer", "tabular-regression", [1, 2], aliases={"production": 1})
    with TestClient(app) as client:
        hub = EndpointsHub(app.state.ctx, GatewayConfig(drain_s=0, auth_cache_s=0, slurm_renew_before_s=120),
                           runtimes={"slurm": runtime}, zoo=zoo)
        app.state.endpoints = hub
        t = Tenancy(client).bootstrap()
        org = t.org()
        key = t.key(org, t.admin_headers, username=t.user(org, role="service_account"), scopes=["inference"])
        r = client.post(f"/api/v1/orgs/{org}/endpoints", headers=t.admin_headers,
                        json={"name": "summer", "model": "public/summer@production", "scheduler": "slurm",
                              "partition": "cpu", "time_limit_min": 60})
        assert r.status_code == 202, r.text
        yield client, hub, sched, servers, org, {"headers": t.admin_headers, "key": key}


def _infer(client: TestClient, key: dict[str, Any]) -> httpx.Response:
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}
    return client.post("/v2/models/summer/infer", json=body, headers=bearer(key))


def _state(client: TestClient, org: str, h: dict[str, Any]) -> dict[str, Any]:
    return dict(client.get(f"/api/v1/orgs/{org}/endpoints/summer", headers=h["headers"]).json())


def _running_refs(sched: FakeScheduler) -> list[str]:
    return [r for r, j in sched.jobs.items() if not j.status.state.is_terminal()]


def test_serving_job_found_by_its_log_then_cancelled_behind_our_back_comes_back(env: Any) -> None:
    client, hub, sched, servers, org, h = env
    hub.supervise_once()
    [ref] = list(sched.jobs)
    launch = sched.jobs[ref].launch
    assert launch.command[1:3] == ("-m", "haihe.jobs.serving") and "public/summer:1" in launch.command
    assert launch.partition == "cpu" and launch.resources.time_limit_min == 60
    assert launch.account == org  # the org's own Slurm account (endpoints belong to an org, not a project)
    assert _state(client, org, h)["state"] == "deploying"
    assert _infer(client, h["key"]).status_code == 503
    servers.start(ref)
    assert find_address(sched, ref) == f"http://127.0.0.1:{40000 + int(ref)}"
    hub.supervise_once()
    assert _state(client, org, h)["state"] == "ready"
    r = _infer(client, h["key"])
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [6.0]

    sched.set(ref, JobState.CANCELLED, reason="cancelled by an operator")  # behind the platform's back
    t0 = time.monotonic()
    gap = _infer(client, h["key"])  # the route still points at the dead server: fails fast, no hang
    assert gap.status_code == 503 and time.monotonic() - t0 < 5
    hub.supervise_once()  # notices, resubmits
    ep = _state(client, org, h)
    assert ep["state"] == "degraded" and "CANCELLED" in ep["reason"]
    gap = _infer(client, h["key"])
    assert gap.status_code == 503 and "not ready" in gap.json()["error"]
    [new_ref] = _running_refs(sched)
    assert new_ref != ref
    servers.start(new_ref)
    hub.supervise_once()
    assert _state(client, org, h)["state"] == "ready"
    assert _infer(client, h["key"]).status_code == 200
    hub.meter.flush()
    assert hub.meter.written == hub.meter.served == 2


def test_renewed_before_the_walltime_with_overlap(env: Any) -> None:
    client, hub, sched, servers, org, h = env
    hub.supervise_once()
    [ref] = list(sched.jobs)
    servers.start(ref)
    hub.supervise_once()
    assert _state(client, org, h)["state"] == "ready"
    with hub.ctx.db.session() as s:  # the job has been running for 59 of its 60 minutes
        from sqlalchemy import select

        from haihe.platform.endpoints.rows import Endpoint

        ep = s.scalar(select(Endpoint))
        assert ep is not None
        serving = {k: dict(v) for k, v in ep.serving.items()}
        serving[str(ep.generation)]["running_since"] = time.time() - 59 * 60
        ep.serving = serving
    hub.supervise_once()  # successor submitted; the old one keeps serving
    assert len(_running_refs(sched)) == 2
    assert _infer(client, h["key"]).status_code == 200
    successor = next(r for r in _running_refs(sched) if r != ref)
    servers.start(successor)
    hub.supervise_once()  # switch, old retired (drain 0)
    hub.supervise_once()
    assert _running_refs(sched) == [successor]
    assert sched.jobs[ref].status.state == JobState.CANCELLED
    assert _infer(client, h["key"]).status_code == 200
    assert _state(client, org, h)["generation"] == 2


def test_slurm_endpoints_refuse_more_than_one_replica(env: Any) -> None:
    client, _, _, _, org, h = env
    r = client.post(f"/api/v1/orgs/{org}/endpoints", headers=h["headers"],
                    json={"name": "multi", "model": "public/summer:2", "scheduler": "slurm", "max_replicas": 2})
    assert r.status_code == 422 and r.json()["error"]["field"] == "max_replicas"


def test_an_endpoint_with_its_own_packages_serves_from_that_environment(env: Any) -> None:
    """Issue 19: the model server of a Slurm endpoint runs in the environment its packages name (built on the
    node by haihe.jobs.runtime.envrun); a bad requirement is refused at create, naming the field."""
    import json

    client, hub, sched, _servers, org, h = env
    bad = client.post(f"/api/v1/orgs/{org}/endpoints", headers=h["headers"], json={
        "name": "extra-bad", "model": "public/summer@production", "scheduler": "slurm",
        "environment": {"pip": ["--index-url=http://elsewhere/simple"]}})
    assert bad.status_code == 422 and bad.json()["error"]["field"].startswith("environment"), bad.text
    r = client.post(f"/api/v1/orgs/{org}/endpoints", headers=h["headers"], json={
        "name": "extra", "model": "public/summer@production", "scheduler": "slurm",
        "environment": {"pip": ["scikit-learn==1.5.2"]}})
    assert r.status_code == 202, r.text
    hub.supervise_once()
    [launch] = [j.launch for j in sched.jobs.values() if j.launch.name == "serve-extra"]
    assert launch.command[:5] == ("/usr/bin/python3", "-m", "haihe.jobs.runtime.envrun", "--", "python")
    assert launch.command[5:7] == ("-m", "haihe.jobs.serving")
    assert json.loads(launch.env["HAIHE_ENVIRONMENT"]) == {"pip": ["scikit-learn==1.5.2"]}
    plain = [j.launch for j in sched.jobs.values() if j.launch.name == "serve-summer"]
    assert plain and "HAIHE_ENVIRONMENT" not in plain[0].env
