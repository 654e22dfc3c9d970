"""Gateway vs Ray Serve's own HTTP proxy, same model and load in one run; and dynamic batching's gain.

    HAIHE_BENCH_PORT_BASE=28500 python bench/bench_gateway.py [--seconds 15] [--clients 32]

Brings up (under /tmp, stopped by pid at the end) an S3 server, MLflow and a Ray head with haihe.cluster; registers
an MLP (512 → 4096 × 3 → 10 by default, ~42M parameters); runs the platform as its own uvicorn process; deploys
two endpoints (max_batch_size 32 and 1) and drives each path with ``--clients`` concurrent keep-alive clients; the
gateway and Serve's proxy take turns (``--rounds`` windows each), so the box's drift falls on both.
Prints p50/p99/throughput and the ratios (targets: gateway ≥ 1.0x direct throughput (issue 16), p50 ≤ 1.15x; batching
≥ 3x), and for each endpoint what batching actually formed, read from the replica: model calls, the histogram of
requests per call, time per call and how busy the model was. Not a pass/fail test.

Why the model is this big: with the earlier 512 → 2048 × 2 → 10 MLP (3.5 ms per call) the model was busy 17 % of
the window on a 2-core host and batches averaged 1.9 requests: per-request serving cost (the bench's clients, the
gateway, Serve's router and the replica's actor calls, all sharing the two cores) was the bottleneck, so batching
had little to save (1.35-2.25x). Batching pays where the model dominates, as a real model does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from bench_support import py_spy


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def drive(url: str, body: dict[str, Any], headers: dict[str, str], seconds: float, clients: int
                ) -> dict[str, float]:
    lat: list[float] = []
    codes: dict[int, int] = {}
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as client:
        async def worker() -> None:
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                r = await client.post(url, json=body, headers=headers)
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    lat.append((time.perf_counter() - t0) * 1000)

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.monotonic() - t0
    return _summary(lat, wall, sum(v for k, v in codes.items() if k != 200))


def _summary(lat: list[float], wall: float, non200: int) -> dict[str, Any]:
    return {"rps": len(lat) / wall, "p50_ms": _pct(lat, 0.5), "p99_ms": _pct(lat, 0.99),
            "mean_ms": statistics.fmean(lat) if lat else float("nan"), "non200": non200, "lat": lat, "wall": wall}


def _merged(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Windows of one path taken in turns with the other, as one figure."""
    return _summary([x for p in parts for x in p["lat"]], sum(p["wall"] for p in parts),
                    sum(p["non200"] for p in parts))


def register_model(mlflow_url: str, hidden: int = 2048, depth: int = 2) -> str:
    import mlflow
    import torch

    from haihe.model_zoo import ModelZoo

    torch.manual_seed(0)
    layers: list[torch.nn.Module] = [torch.nn.Linear(512, hidden), torch.nn.ReLU()]
    for _ in range(depth - 1):
        layers += [torch.nn.Linear(hidden, hidden), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(hidden, 10))
    mlflow.set_tracking_uri(mlflow_url)
    mlflow.set_experiment("bench/gateway")
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", pip_requirements=["torch"])
    card = {"task": "tabular-classification", "description": "benchmark MLP", "license": "Apache-2.0",
            "owner": "bench", "intended_use": "benchmarks", "limitations": "random weights",
            "input_schema": [{"name": "x", "type": "tensor", "dtype": "float32", "shape": [-1, 512]}],
            "output_schema": [{"name": "logits", "type": "tensor", "dtype": "float32", "shape": [-1, 10]}]}
    zoo = ModelZoo.connect(mlflow_url)
    version = zoo.register("bench/mlp", card, model_uri=info.model_uri, visibility="public")
    return f"bench/mlp:{version.version}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=4096, help="MLP width: 512 -> hidden x depth -> 10")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2,
                        help="gateway and Serve's proxy take turns, this many windows of --seconds each (the box "
                             "drifts: one window each puts the drift into the ratio)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="also: py-spy the platform's process (collapsed stacks) while the gateway serves mlp")
    args = parser.parse_args()

    from haihe.cluster.mlflow_server import MlflowServer
    from haihe.cluster.ports import PortPlan
    from haihe.cluster.procs import wait_until
    from haihe.cluster.ray_head import RayHead, loopback_env
    from haihe.cluster.s3 import S3Server
    from haihe.cluster.stack import DEFAULT_BUCKETS
    from haihe.platform.gateway.ray_runtime import RayServeRuntime

    plan = PortPlan(int(os.environ.get("HAIHE_BENCH_PORT_BASE", "28500")))
    home = Path(f"/tmp/haihe-bench-gw-{plan.base}")
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    s3 = S3Server(home / "s3", plan.s3, access_key="bench", secret_key=secrets.token_hex(16))
    mlflow_server = ray = api = None
    try:
        s3.start(timeout=120)
        s3.ensure_buckets(DEFAULT_BUCKETS)
        mlflow_server = MlflowServer(home / "mlflow", plan.mlflow, s3_endpoint=s3.endpoint,
                                     access_key=s3.access_key, secret_key=s3.secret_key, bucket="mlflow")
        mlflow_server.start(timeout=120)
        ray = RayHead(home / "ray", plan, num_cpus=4, object_store_bytes=300 * 2**20)
        ray.start(timeout=180)
        model = register_model(mlflow_server.url, args.hidden, args.depth)
        env = loopback_env() | {"HAIHE_DATABASE_URL": f"sqlite:///{home / 'haihe.db'}",
                                "HAIHE_SCHEDULERS": json.dumps({"ray": ray.scheduler_url}),
                                "HAIHE_MLFLOW_URL": mlflow_server.url, "HAIHE_RECONCILE_INTERVAL_S": "0.5",
                                "HAIHE_PUBLIC_URL": f"http://127.0.0.1:{plan.api}",  # replicas load via its proxy
                                "HAIHE_GATEWAY_RATE_PER_S": "1000000", "HAIHE_GATEWAY_BURST": "1000000"}
        log = (home / "api.log").open("w")
        api = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "haihe.server:create_app", "--host",
                                "127.0.0.1", "--port", str(plan.api), "--log-level", "warning", "--no-access-log"],
                               env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{plan.api}"
        wait_until(lambda: _up(base), timeout=60, what="the API")
        http = httpx.Client(base_url=base, timeout=60)
        assert http.post("/api/v1/setup", json={"username": "root", "password": "bench-password-1"}).is_success
        tok = http.post("/api/v1/auth/token", json={"username": "root", "password": "bench-password-1"}).json()
        admin = {"Authorization": f"Bearer {tok['token']}"}
        http.post("/api/v1/orgs", json={"name": "bench"}, headers=admin)
        key = http.post("/api/v1/keys", json={"org": "bench", "name": "bench", "scopes": ["inference"]},
                        headers=admin).json()["key"]
        rows = [[0.01 * (i % 7) for i in range(512)]]
        results: dict[str, dict[str, float]] = {}
        batching: dict[str, str] = {}
        runtime = RayServeRuntime(ray.gcs_address, plan.serve_http)  # the replica's own counters: batches formed
        for name, batch in (("mlp", 32), ("mlp1", 1)):
            r = http.post("/api/v1/orgs/bench/endpoints", headers=admin,
                          json={"name": name, "model": model, "max_batch_size": batch, "batch_wait_ms": 3,
                                "cpus_per_replica": 1})
            assert r.status_code == 202, r.text
            deadline = time.monotonic() + 600
            while http.get(f"/api/v1/orgs/bench/endpoints/{name}", headers=admin).json()["state"] != "ready":
                assert time.monotonic() < deadline, "endpoint never became ready"
                time.sleep(1)
            oip = {"inputs": [{"name": "x", "shape": [1, 512], "datatype": "FP32", "data": rows[0]}]}
            auth = {"Authorization": f"Bearer {key}"}
            asyncio.run(drive(f"{base}/v2/models/{name}/infer", oip, auth, 3, args.clients))  # warm-up
            app = _serve_apps(ray)[0]
            spy = None
            if args.profile and name == "mlp":
                spy = py_spy(api.pid, args.profile / "gateway.txt", 200, int(args.seconds))
            rounds = args.rounds if name == "mlp" else 1
            direct = f"http://127.0.0.1:{plan.serve_http}/{app}"
            if name == "mlp":
                asyncio.run(drive(direct, {"rows": rows}, {}, 3, args.clients))  # warm-up
            gateway_parts: list[dict[str, Any]] = []
            direct_parts: list[dict[str, Any]] = []
            windows: list[tuple[dict[str, Any], dict[str, Any]]] = []  # the replica's counters around each
            for _ in range(rounds):
                mark = runtime.stats(app)
                gateway_parts.append(asyncio.run(drive(f"{base}/v2/models/{name}/infer", oip, auth, args.seconds,
                                                       args.clients)))
                windows.append((mark, runtime.stats(app)))
                if name == "mlp":
                    direct_parts.append(asyncio.run(drive(direct, {"rows": rows}, {}, args.seconds, args.clients)))
            results[f"gateway:{name}"] = _merged(gateway_parts)
            batching[name] = _batching(windows, args.seconds * rounds)
            if spy is not None:
                spy.wait(60)
            if direct_parts:
                results["direct:mlp"] = _merged(direct_parts)
            http.delete(f"/api/v1/orgs/bench/endpoints/{name}", headers=admin)
        for k, v in results.items():
            print(f"{k:14s} {v['rps']:8.1f} req/s  p50 {v['p50_ms']:7.2f} ms  p99 {v['p99_ms']:7.2f} ms  "
                  f"non-200 {int(v['non200'])}")
        g, d, b1 = results["gateway:mlp"], results["direct:mlp"], results["gateway:mlp1"]
        print(f"gateway and Serve's proxy took turns, {args.rounds} windows of {args.seconds:g} s each")
        print(f"gateway/direct throughput {g['rps'] / d['rps']:.2f}x (target >= 1.0x); "
              f"p50 {g['p50_ms'] / d['p50_ms']:.2f}x (target <= 1.15x); p99 {g['p99_ms'] / d['p99_ms']:.2f}x")
        for name, line in batching.items():
            print(f"batches formed, {name}: {line}")
        print(f"dynamic batching (32 vs 1) at {args.clients} clients: {g['rps'] / b1['rps']:.2f}x (target >= 3x)")
    finally:
        if api is not None:
            api.terminate()
            api.wait(timeout=30)
        for svc in (ray, mlflow_server, s3):
            if svc is not None:
                svc.stop()
        shutil.rmtree(home, ignore_errors=True)


def _batching(windows: list[tuple[dict[str, Any], dict[str, Any]]], seconds: float) -> str:
    """The batch-size histogram of the measured (gateway) windows, and how much of them the model itself took."""
    sizes: dict[int, int] = {}
    model_s = 0.0
    for before, after in windows:
        for k, v in after["batch_sizes"].items():
            sizes[int(k)] = sizes.get(int(k), 0) + v - int(before["batch_sizes"].get(k, 0))
        model_s += after["predict_s"] - before["predict_s"]
    sizes = {k: v for k, v in sorted(sizes.items()) if v > 0}
    calls = sum(sizes.values()) or 1
    mean = sum(k * v for k, v in sizes.items()) / calls
    hist = " ".join(f"{k}:{v}" for k, v in sizes.items())
    return (f"{calls} model calls, mean {mean:.1f} requests per call, {1000 * model_s / calls:.2f} ms per call, "
            f"model busy {100 * model_s / seconds:.0f}% of the window; sizes {hist}")


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _serve_apps(ray: Any) -> list[str]:
    """The Serve apps on the cluster (for the direct proxy route), asked of the dashboard's Serve API."""
    r = httpx.get(f"{ray.dashboard_url}/api/serve/applications/", timeout=10).json()
    return sorted(r.get("applications", {}))


if __name__ == "__main__":
    main()
