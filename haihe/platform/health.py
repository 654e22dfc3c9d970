"""Liveness and readiness: /readyz probes the database, S3, MLflow and every configured scheduler in parallel."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import httpx
from sqlalchemy import text

from haihe.platform.context import PlatformContext


@dataclass(frozen=True)
class Probe:
    ok: bool
    detail: str
    latency_ms: float


def _database(ctx: PlatformContext) -> str:
    with ctx.db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return ctx.db.engine.dialect.name


def _s3(ctx: PlatformContext) -> str:
    s = ctx.settings
    # an unsigned request is enough to prove the server answers S3 (it returns 403 AccessDenied XML)
    r = httpx.get(s.s3_endpoint.rstrip("/") + "/minio/health/live", timeout=s.readiness_timeout_s)
    if r.status_code >= 500:
        raise RuntimeError(f"HTTP {r.status_code}")
    return s.s3_endpoint


def _mlflow(ctx: PlatformContext) -> str:
    url = ctx.settings.mlflow_url.rstrip("/")
    r = httpx.get(url + "/health", timeout=ctx.settings.readiness_timeout_s)
    r.raise_for_status()
    return url


def _scheduler(ctx: PlatformContext, name: str) -> str:
    info = ctx.scheduler(name).describe()
    return f"{len(info.nodes)} nodes, {info.cpus_total} CPUs, {info.gpus_total} GPUs"


def checks(ctx: PlatformContext) -> dict[str, Callable[[], str]]:
    out: dict[str, Callable[[], str]] = {"database": lambda: _database(ctx)}
    if ctx.settings.s3_endpoint:
        out["s3"] = lambda: _s3(ctx)
    if ctx.settings.mlflow_url:
        out["mlflow"] = lambda: _mlflow(ctx)
    for name in ctx.settings.schedulers:
        out[f"scheduler:{name}"] = lambda n=name: _scheduler(ctx, n)  # type: ignore[misc]
    return out


def readiness(ctx: PlatformContext) -> dict[str, Probe]:
    probes = checks(ctx)
    timeout = ctx.settings.readiness_timeout_s + 1.0
    results: dict[str, Probe] = {}

    def timed(fn: Callable[[], str]) -> Probe:
        t0 = time.perf_counter()
        try:
            detail = fn()
            return Probe(True, detail, (time.perf_counter() - t0) * 1000)
        except Exception as exc:  # a probe's failure is data, reported per component
            return Probe(False, f"{type(exc).__name__}: {exc}"[:300], (time.perf_counter() - t0) * 1000)

    pool = ThreadPoolExecutor(max_workers=max(1, len(probes)), thread_name_prefix="readyz")
    try:
        futures = {name: pool.submit(timed, fn) for name, fn in probes.items()}
        for name, fut in futures.items():
            try:
                results[name] = fut.result(timeout=timeout)
            except FutureTimeout:
                results[name] = Probe(False, f"no answer within {timeout:.0f}s", timeout * 1000)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return results
