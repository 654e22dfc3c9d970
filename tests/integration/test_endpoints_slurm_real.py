"""Slurm-hosted endpoints on the real local Slurm cluster, with a digits classifier from the real MLflow zoo.

The serving job (``python -m haihe.jobs.serving`` under sbatch) reports its address in its log; the platform finds
it through ``SlurmScheduler.endpoint``, health-checks it and routes OIP v2 calls to it.
- The job is cancelled behind the platform's back with ``scancel``: requests in the gap answer 503 at once (never
  hang), and the supervisor resubmits the job by itself until a request succeeds again.
- A job near its walltime is renewed: the successor runs beside it before it is cancelled, and no request fails.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from haihe.cluster.mlflow_server import MlflowServer
from haihe.model_zoo import ModelZoo
from haihe.platform.endpoints.rows import Endpoint
from tests.fixtures.platform import bearer
from tests.integration.endpoint_stack import Platform, platform_process
from tests.integration.test_endpoints_ray import register_digits

pytestmark = [pytest.mark.slurm, pytest.mark.mlflow, pytest.mark.s3, pytest.mark.slow]

WALLTIME_MIN = 10  # serving jobs of the scancel test: renewed at 10 min - 270 s, long after the test is over
RENEW_WALLTIME_MIN = 5  # the renewal test's jobs (the API's minimum): renewed after 30 s of running
RENEW_BEFORE_S = 270
CLIENT_TIMEOUT_S = 30.0  # far above a 503's answer time (connect timeout 2 s): a hang shows as a timeout
READY_TIMEOUT_S = 420.0  # generous: several engineers share a 2-core host


@pytest.fixture(scope="module")
def stack(slurm_cluster: Any, mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("slurm-endpoints")
    with pytest.MonkeyPatch.context() as mp:
        # GatewayConfig reads these when the app is built
        mp.setenv("HAIHE_GATEWAY_SLURM_TIME_LIMIT_MIN", str(WALLTIME_MIN))
        mp.setenv("HAIHE_GATEWAY_SLURM_RENEW_BEFORE_S", str(RENEW_BEFORE_S))
        mp.setenv("HF_HUB_OFFLINE", "1")
        with platform_process(tmp, schedulers={"slurm": slurm_cluster.scheduler_url("cli")},
                              mlflow_url=mlflow_server.url) as platform:
            yield platform


@pytest.fixture(scope="module")
def tenant(stack: Platform, slurm_cluster: Any, mlflow_server: MlflowServer,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An org with a service-account key and its own digits classifier in the zoo (trained once per module)."""
    t = stack.tenancy
    org = t.org(f"hpc{uuid.uuid4().hex[:6]}")
    key = t.key(org, t.admin_headers, username=t.user(org, role="service_account"), scopes=["inference"])
    # serving jobs run on the org's Slurm account: a quota and a sync make it (and the submitter's association)
    r = stack.http.put(f"/api/v1/orgs/{org}/quota", json={"cpu_hours": 1000}, headers=t.admin_headers)
    assert r.status_code == 200, r.text
    if slurm_cluster.accounting:
        r = stack.http.post("/api/v1/admin/quota/sync", params={"scheduler": "slurm"}, headers=t.admin_headers)
        assert r.status_code == 200, r.text
    t0 = time.monotonic()
    zoo = ModelZoo.connect(mlflow_server.url, cache_dir=tmp_path_factory.mktemp("zoo"))
    version, x, y = register_digits(zoo, mlflow_server.url, org, seed=3)
    print(f"digits model trained and registered in {time.monotonic() - t0:.1f}s")
    return {"org": org, "key": key, "version": version, "x": x, "y": y}


def _create(stack: Platform, org: str, name: str, walltime_min: int) -> None:
    r = stack.http.post(f"/api/v1/orgs/{org}/endpoints", headers=stack.tenancy.admin_headers,
                        json={"name": name, "model": f"{org}/digits@production", "scheduler": "slurm",
                              "partition": "cpu", "time_limit_min": walltime_min, "cpus_per_replica": 1,
                              "max_batch_size": 8, "batch_wait_ms": 2})
    assert r.status_code == 202, r.text
    assert r.json()["backend"] == "slurm"


def _delete(stack: Platform, org: str, name: str) -> None:
    # Flush first: a metering batch that still counts a deleted endpoint fails its foreign key and, retried first
    # on every flush, holds back all later metering (reported to the lead; gateway/metering.py)
    stack.hub.meter.flush()
    r = stack.http.delete(f"/api/v1/orgs/{org}/endpoints/{name}", headers=stack.tenancy.admin_headers)
    assert r.status_code in (200, 204), r.text


def _infer(stack: Platform, key: dict[str, Any], rows: Any, name: str) -> tuple[httpx.Response, float]:
    body = {"inputs": [{"name": "pixels", "shape": list(rows.shape), "datatype": "FP32",
                        "data": rows.reshape(-1).tolist()}]}
    t0 = time.monotonic()
    r = httpx.post(f"{stack.url}/v2/models/{name}/infer", json=body, headers=bearer(key), timeout=CLIENT_TIMEOUT_S)
    return r, time.monotonic() - t0


def _correct(r: httpx.Response, y: Any) -> int:
    labels = next(o for o in r.json()["outputs"] if o["name"] == "label")["data"]
    return sum(int(int(a) == int(b)) for a, b in zip(labels, y, strict=True))


def _serving_job(stack: Platform, org: str, name: str) -> tuple[int, str]:
    """(generation, native Slurm job id) of the generation the gateway routes to, from the platform's own row."""
    with stack.hub.ctx.db.session() as s:
        ep = s.scalar(select(Endpoint).where(Endpoint.name == name, Endpoint.org.has(name=org)))
        assert ep is not None
        return ep.generation, str(ep.serving[str(ep.generation)]["ref"])


def _squeue(cluster: Any, refs: list[str], fmt: str) -> dict[str, str]:
    """``squeue`` fields of jobs (slurmctld keeps ended ones for MinJobAge), by job id; no accounting needed."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", ",".join(refs), "-o", f"%i|{fmt}"],
                         env=cluster.command_env(),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return dict(line.split("|", 1) for line in out.stdout.split())


def test_slurm_endpoint_serves_and_comes_back_after_scancel(stack: Platform, slurm_cluster: Any,
                                                            tenant: dict[str, Any]) -> None:
    org, key, x, y = tenant["org"], tenant["key"], tenant["x"], tenant["y"]
    name = f"dig{uuid.uuid4().hex[:6]}"
    t0 = time.monotonic()
    _create(stack, org, name, WALLTIME_MIN)
    ep = stack.wait_state(org, name, ("ready",), timeout=READY_TIMEOUT_S)
    first_ready_s = time.monotonic() - t0
    generation, ref = _serving_job(stack, org, name)
    assert ep["generation"] == generation == 1
    assert _squeue(slurm_cluster, [ref], "%T|%a") == {ref: f"RUNNING|{org}"}  # on the org's account

    r, first_call_s = _infer(stack, key, x[:8], name)
    assert r.status_code == 200, r.text
    assert r.json()["model_name"] == name and r.json()["model_version"] == str(tenant["version"])
    assert _correct(r, y[:8]) >= 7
    meta = httpx.get(f"{stack.url}/v2/models/{name}", headers=bearer(key), timeout=CLIENT_TIMEOUT_S).json()
    assert meta["ready"] is True

    # behind the platform's back: an operator (or the node) kills the serving job
    cancelled = subprocess.run(["scancel", ref], env=slurm_cluster.command_env(), capture_output=True, text=True,
                               timeout=30)
    assert cancelled.returncode == 0, cancelled.stderr
    t_cancel = time.monotonic()
    gap: list[tuple[float, str]] = []
    recovered: httpx.Response | None = None
    served = 1
    while recovered is None and time.monotonic() < t_cancel + READY_TIMEOUT_S:
        r, took = _infer(stack, key, x[8:16], name)  # a hang would raise httpx.ReadTimeout here
        assert r.status_code in (200, 503), r.text
        served += int(r.status_code == 200)
        if r.status_code == 503:
            gap.append((took, r.json()["error"]))  # OIP v2: the error is a string
        elif gap:
            recovered = r  # served again after the gap
        time.sleep(0.5)
    back_s = time.monotonic() - t_cancel
    print(f"scancel test: first ready {first_ready_s:.1f}s, first call {first_call_s * 1000:.0f}ms, "
          f"{len(gap)} 503s in the gap (slowest {max((g[0] for g in gap), default=0) * 1000:.0f}ms), "
          f"served again {back_s:.1f}s after scancel; reasons: {sorted({why for _, why in gap})}")
    assert gap, "no request saw the gap"
    assert all(took < CLIENT_TIMEOUT_S / 2 for took, _ in gap)  # answered, not left to time out
    assert all("not ready" in why or "unreachable" in why for _, why in gap), gap
    assert recovered is not None, f"the endpoint did not come back within {READY_TIMEOUT_S}s"
    assert _correct(recovered, y[8:16]) >= 7

    new_generation, new_ref = _serving_job(stack, org, name)
    assert new_generation > generation and new_ref != ref  # a new serving job, submitted by the platform
    states = _squeue(slurm_cluster, [ref, new_ref], "%T")
    assert states[new_ref] == "RUNNING" and states[ref] in ("CANCELLED", "COMPLETING"), states
    ep = stack.wait_state(org, name, ("ready",), timeout=60)
    assert ep["generation"] == new_generation and ep["reason"] == ""
    stack.hub.meter.flush()
    usage = stack.http.get(f"/api/v1/orgs/{org}/endpoints/{name}/usage",
                           headers=stack.tenancy.admin_headers).json()
    assert usage["requests"] == served  # every served call metered once; the 503s were never charged
    _delete(stack, org, name)


def test_slurm_endpoint_renewed_before_walltime_without_a_gap(stack: Platform, slurm_cluster: Any,
                                                              tenant: dict[str, Any]) -> None:
    org, key, x, y = tenant["org"], tenant["key"], tenant["x"], tenant["y"]
    name = f"ren{uuid.uuid4().hex[:6]}"
    _create(stack, org, name, RENEW_WALLTIME_MIN)
    stack.wait_state(org, name, ("ready",), timeout=READY_TIMEOUT_S)
    generation, ref = _serving_job(stack, org, name)
    t0 = time.monotonic()
    codes: list[int] = []
    new_ref = ref
    while new_ref == ref and time.monotonic() < t0 + READY_TIMEOUT_S:
        r, _ = _infer(stack, key, x[:4], name)
        codes.append(r.status_code)
        assert r.status_code == 200 and _correct(r, y[:4]) >= 3, r.text
        new_generation, new_ref = _serving_job(stack, org, name)
        time.sleep(0.2)
    switched_s = time.monotonic() - t0
    assert new_ref != ref, "the serving job was not renewed"
    assert new_generation == generation + 1
    deadline = time.monotonic() + 60  # the old job is cancelled by the platform once drained
    while _squeue(slurm_cluster, [ref], "%T").get(ref) != "CANCELLED" and time.monotonic() < deadline:
        r, _ = _infer(stack, key, x[:4], name)
        codes.append(r.status_code)
        assert r.status_code == 200, r.text
        time.sleep(0.2)
    states = _squeue(slurm_cluster, [ref, new_ref], "%T|%S|%e")
    old_state, _, old_end = states[ref].split("|")
    new_state, new_start, _ = states[new_ref].split("|")
    print(f"renewal test: switched to job {new_ref} after {switched_s:.1f}s; {len(codes)} requests, all 200; "
          f"old job ended {old_end}, successor started {new_start}")
    assert old_state == "CANCELLED" and new_state == "RUNNING"
    assert new_start < old_end  # overlap: ISO timestamps, the successor ran before the old job ended
    _delete(stack, org, name)


def test_no_gpu_hours_left_refuses_a_gpu_endpoint(stack: Platform, tenant: dict[str, Any]) -> None:
    t, org = stack.tenancy, tenant["org"]
    r = stack.http.put(f"/api/v1/orgs/{org}/quota", json={"gpu_hours": 0}, headers=t.admin_headers)
    assert r.status_code == 200, r.text  # CPU-hours stay as they were: the other tests' CPU endpoints still fit
    name = f"gpu{uuid.uuid4().hex[:6]}"
    r = stack.http.post(f"/api/v1/orgs/{org}/endpoints", headers=t.admin_headers,
                        json={"name": name, "model": f"{org}/digits@production", "scheduler": "slurm",
                              "partition": "gpu", "gpus": 1})
    assert r.status_code == 402, r.text
    assert r.json()["error"]["code"] == "quota_exceeded" and "gpu_hours" in r.json()["error"]["message"]
    assert stack.http.get(f"/api/v1/orgs/{org}/endpoints/{name}", headers=t.admin_headers).status_code == 404
    shown = stack.http.get(f"/api/v1/orgs/{org}/quota", headers=t.admin_headers).json()
    gpu = next(b for b in shown["balances"] if b["resource"] == "gpu_hours")
    assert gpu["reserved"] == 0 and gpu["used"] == 0  # nothing reserved, nothing submitted to charge
