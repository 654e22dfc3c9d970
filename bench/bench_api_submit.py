"""Issue 16's bench: API submit (POST /jobs) vs raw ``sbatch`` of the same job, same cluster, same run.

Nodes are drained so nothing runs: only the submit path is measured. The platform runs as it would at a site —
PostgreSQL, the REST transport (slurmrestd with a per-user JWT), isolation on (each job as its user's Unix account
on its ``<org>.<project>`` Slurm account), ``--workers`` API processes on one port (``python -m haihe.serve``).
The baseline submits the very script the scheduler renders, as root, with ``sbatch --parsable``.

Then the API's responsiveness while jobs log: ``--loggers`` of the submitted jobs (real rows, queued in Slurm) each
log a batch of metrics through the platform's MLflow proxy every ``--log-every`` seconds with their own job token,
as a training loop does, for ``--log-for`` seconds; meanwhile one client calls ``GET /me``. Its p50 is compared with
the quiet p50 (target <= 2x). The jobs do not run on nodes here: the bench isolates the API's side of the load
(token check, policy, proxying) from what the jobs' computation would cost a 2-core box.

Usage: .venv/bin/python bench/bench_api_submit.py [--n 60] [--burst 240] [--clients 16] [--workers 2]
       [--loggers 200] [--log-every 1.0] [--log-for 20] [--base 24000]
Prints p50/p95 of one client and the throughput of ``--clients`` concurrent clients, and the ratios API/raw
(targets: p50 <= 1.5x, throughput >= 0.5x), then GET /me quiet and under logging. Every job is cancelled at the
end. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from bench_support import cpu_line, cpu_per_item, cpu_snapshot, make_tenant, pct, py_spy

from haihe.cluster.mlflow_server import MlflowServer
from haihe.cluster.ports import PortPlan
from haihe.cluster.postgres import PostgresServer
from haihe.cluster.procs import ManagedProcess, free_port, wait_until
from haihe.cluster.slurm import cluster_down, cluster_up
from haihe.schedulers.base import Launch, Resources
from haihe.schedulers.registry import create_scheduler
from haihe.schedulers.slurm.options import slurm_options
from haihe.schedulers.slurm.sbatch import render_script
from haihe.schedulers.slurm.scheduler import SlurmScheduler

SPEC = {"name": "bench", "entrypoint": ["true"], "resources": {"partition": "cpu", "time_limit": 1}}


def sequential(n: int, one: Callable[[int], object]) -> list[float]:
    lat = []
    for i in range(n):
        t = time.perf_counter()
        one(i)
        lat.append(time.perf_counter() - t)
    return lat


def concurrent(n: int, clients: int, one: Callable[[int], object]) -> float:
    """Submissions per second with ``clients`` threads submitting ``n`` jobs in all."""
    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(n)))
    return n / (time.perf_counter() - t)


def me_latencies(http: httpx.Client, seconds: float) -> list[float]:
    """GET /me, one call after another, for ``seconds``."""
    lat = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        http.get("/api/v1/me").raise_for_status()
        lat.append(time.perf_counter() - t)
    return lat


async def _log_like_jobs(api: str, tokens: list[str], every: float, seconds: float) -> tuple[int, list[str]]:
    """Each token: create a run in its project's experiment, then log a batch of metrics every ``every`` s.
    ``api``: MLflow's REST root, through the platform's proxy (``<url>/mlflow/api/2.0/mlflow``) or direct."""
    import asyncio
    import random

    done = 0
    errors: list[str] = []
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
        h0 = {"Authorization": f"Bearer {tokens[0]}"}
        r = await client.get(api + "/experiments/get-by-name", params={"experiment_name": "acme/vision"}, headers=h0)
        if r.status_code == 404:
            r = await client.post(api + "/experiments/create", json={"name": "acme/vision"}, headers=h0)
            exp = r.json()["experiment_id"]
        else:
            exp = r.json()["experiment"]["experiment_id"]

        async def job(token: str) -> None:
            nonlocal done
            h = {"Authorization": f"Bearer {token}"}
            end = time.monotonic() + seconds
            await asyncio.sleep(random.uniform(0, every))
            try:
                r = await client.post(api + "/runs/create", json={"experiment_id": exp}, headers=h)
            except httpx.HTTPError as exc:
                errors.append(f"runs/create: {type(exc).__name__}")
                return
            if r.status_code != 200:
                errors.append(f"runs/create {r.status_code}: {r.text[:120]}")
                return
            run_id = r.json()["run"]["info"]["run_id"]
            step = 0
            while time.monotonic() < end:
                now = int(time.time() * 1000)
                metrics = [{"key": k, "value": random.random(), "timestamp": now, "step": step}
                           for k in ("loss", "accuracy", "lr")]
                try:
                    r = await client.post(api + "/runs/log-batch", json={"run_id": run_id, "metrics": metrics},
                                          headers=h, timeout=max(5.0, end - time.monotonic()))
                    if r.status_code == 200:
                        done += 1
                    else:
                        errors.append(f"runs/log-batch {r.status_code}: {r.text[:120]}")
                except httpx.HTTPError as exc:
                    errors.append(f"runs/log-batch: {type(exc).__name__}")
                step += 1
                await asyncio.sleep(every)

        await asyncio.gather(*(job(t) for t in tokens))
    return done, errors


def under_logging(http: httpx.Client, url: str, mlflow_url: str, secret: str, loggers: int, every: float,
                  seconds: float) -> None:
    import asyncio
    import threading

    from haihe.platform.tracking.proxy import JobScope, issue_token

    ids: list[str] = []
    cursor = None
    while len(ids) < loggers:
        page = http.get("/api/v1/jobs", params={"org": "acme", "limit": 200, "state": ["SUBMITTED", "QUEUED"],
                                                **({"cursor": cursor} if cursor else {})}).json()
        ids += [j["id"] for j in page["items"]]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    tokens = [issue_token(secret, JobScope(i, "acme", "vision")) for i in ids[:loggers]]
    quiet = me_latencies(http, 10)
    outcome: list[tuple[int, list[str]]] = []
    warm = min(every * 2, seconds / 4)  # by then every job has its run and is logging
    t = threading.Thread(target=lambda: outcome.append(asyncio.run(_log_like_jobs(
        url + "/mlflow/api/2.0/mlflow", tokens, every, seconds))), daemon=True)
    t.start()
    time.sleep(warm)
    loaded = me_latencies(http, seconds - warm - 1)
    t.join()
    done, errors = outcome[0] if outcome else (0, ["the loggers crashed"])
    # the same load straight to MLflow (no token check, no proxy): what the tracking server itself takes here
    direct, direct_errors = asyncio.run(_log_like_jobs(mlflow_url + "/api/2.0/mlflow", tokens, every, seconds))
    print(f"{len(tokens)} jobs logging a batch every {every:g} s for {seconds:g} s: through the platform's proxy "
          f"{done / seconds:.0f} calls/s answered ({len(errors)} errors {sorted(set(errors))[:3]}); straight to "
          f"MLflow {direct / seconds:.0f}/s ({len(direct_errors)} errors); proxy/direct = "
          f"{done / max(direct, 1):.2f}x")
    print(f"GET /me: quiet p50 {statistics.median(quiet) * 1000:.1f} ms (p95 {pct(quiet, 95) * 1000:.1f}); "
          f"under logging p50 {statistics.median(loaded) * 1000:.1f} ms (p95 {pct(loaded, 95) * 1000:.1f}); "
          f"ratio {statistics.median(loaded) / statistics.median(quiet):.2f}x (target <= 2x)")


def _api(home: Path, env: dict[str, str], workers: int) -> tuple[list[ManagedProcess], str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**env, "HAIHE_PUBLIC_URL": url}
    procs = []
    for i in range(workers):
        ready = home / f"api-{i}.ready"
        proc = ManagedProcess(f"api-{i}", [sys.executable, "-m", "haihe.serve", "--port", str(port), "--ready-file",
                                           str(ready), "--log-level", "warning"],
                              log_path=home / f"api-{i}.log", pid_path=home / f"api-{i}.pid", env=env)
        proc.start()

        def serving(r: Path = ready, p: ManagedProcess = proc) -> bool:
            return r.exists() and r.read_text() == str(p.pid())

        wait_until(serving, timeout=120, what=f"api worker {i}", log_path=proc.log_path, alive=proc.is_running)
        procs.append(proc)
    return procs, url


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60, help="sequential submissions per side (p50, p95)")
    ap.add_argument("--burst", type=int, default=240, help="submissions per side for the concurrent figure")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2, help="API processes on the one port")
    ap.add_argument("--transport", choices=("rest", "cli"), default="rest")
    ap.add_argument("--loggers", type=int, default=200, help="queued jobs that log through the MLflow proxy (0: skip)")
    ap.add_argument("--log-every", type=float, default=1.0, help="seconds between one job's log-batch calls")
    ap.add_argument("--log-for", type=float, default=20.0)
    ap.add_argument("--mlflow-workers", type=int, default=2)
    ap.add_argument("--base", type=int, default=24000)
    ap.add_argument("--profile", type=Path, default=None,
                    help="also: py-spy each API worker (collapsed stacks, one file each) over --n more sync submits")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="h2-bench-submit-"))
    work.chmod(0o755)  # the cluster's daemons (mysql, slurmrestd) traverse it; the API's home inside stays private
    plan = PortPlan(args.base)
    cluster = cluster_up(work / "slurm", plan, accounting=True)
    pg = PostgresServer(work / "pg", plan.postgres)
    pg.start()
    # jobs log through the platform's proxy to this server (metrics only: its artifact store is never reached)
    # (its store in PostgreSQL, as at a site: MLflow's default SQLite takes a few writes a second)
    mlflow = MlflowServer(work / "mlflow", plan.mlflow, s3_endpoint="http://127.0.0.1:9", access_key="unused",
                          secret_key="unused", backend_store_uri=pg.create_database("mlflow"),
                          workers=args.mlflow_workers)
    mlflow.start()
    secret = uuid.uuid4().hex + uuid.uuid4().hex
    procs: list[ManagedProcess] = []
    try:
        env = {**os.environ, **cluster.env}
        for node in ("cn1", "cn2", "gn1", "gn2", "fn1"):  # nothing runs: only the submit path is measured
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=drain", "reason=bench"], env=env,
                           capture_output=True, check=False)

        def job(i: int) -> Launch:
            return Launch(tag=f"b-{uuid.uuid4().hex}", name=f"bench{i}", command=("true",),
                          resources=Resources(time_limit_min=1), partition="cpu")

        total = args.n + args.burst
        options = [slurm_options(job(i), jobs_dir=str(cluster.jobs_dir)) for i in range(total)]
        scripts = [render_script(job(i), options[i]) for i in range(total)]
        # the same scripts straight to slurmrestd through the platform's REST transport (as root, no API): the
        # floor the REST transport sets under the API, beside the CLI's
        os.environ.update(cluster.env)
        rest = create_scheduler(cluster.scheduler_url("rest"))
        assert isinstance(rest, SlurmScheduler)

        def raw_rest(i: int) -> str:
            return rest.transport.submit(scripts[i], options[i], rest.job_env or {"PATH": "/usr/bin:/bin"}, None)

        def raw(i: int) -> str:
            out = subprocess.run(["sbatch", "--parsable"], input=scripts[i], capture_output=True, text=True, env=env,
                                 check=True)
            return out.stdout.strip()

        home = work / "api"
        home.mkdir()
        api_env = {**env, "HAIHE_HOME": str(home), "HAIHE_DATABASE_URL": pg.create_database("haihe"),
                   "HAIHE_SCHEDULERS": json.dumps({"slurm": cluster.scheduler_url(args.transport)}),
                   "HAIHE_DEFAULT_SCHEDULER": "slurm", "HAIHE_RECONCILE_INTERVAL_S": "5",
                   "HAIHE_UNIX_ACCOUNTS": "local", "HAIHE_MLFLOW_URL": mlflow.url, "HAIHE_SECRET_KEY": secret}
        procs, url = _api(home, api_env, args.workers)
        headers = make_tenant(url, home, api_env)
        http = httpx.Client(base_url=url, headers=headers, timeout=60,
                            limits=httpx.Limits(max_connections=args.clients + 4))

        def via_api(_i: int) -> str:
            r = http.post("/api/v1/orgs/acme/projects/vision/jobs", json={"spec": SPEC})
            r.raise_for_status()
            return str(r.json()["native_id"] or r.json()["id"])

        def via_api_async(_i: int) -> str:  # Prefer: respond-async: 202 once stored, submitted right after
            r = http.post("/api/v1/orgs/acme/projects/vision/jobs", json={"spec": SPEC},
                          headers={"Prefer": "respond-async"})
            r.raise_for_status()
            return str(r.json()["id"])

        def none_pending() -> bool:
            return not http.get("/api/v1/jobs", params={"org": "acme", "state": "PENDING", "limit": 1}).json()["items"]

        for i in range(3):  # warm-up: the first submit makes the account, association and user dir
            via_api(i)
            raw(i)
        raw_lat = sequential(args.n, raw)
        rest_lat = sequential(args.n, raw_rest)
        rest_rate = concurrent(args.burst, args.clients, raw_rest)
        cpu_seq = cpu_snapshot()
        api_lat = sequential(args.n, via_api)
        cpu0 = cpu_snapshot()
        raw_rate = concurrent(args.burst, args.clients, lambda i: raw(args.n + i))
        cpu1 = cpu_snapshot()
        api_rate = concurrent(args.burst, args.clients, via_api)
        cpu2 = cpu_snapshot()
        async_lat = sequential(args.n, via_api_async)
        wait_until(none_pending, timeout=120, what="the async submits to reach Slurm")
        t_async = time.perf_counter()
        async_rate = concurrent(args.burst, args.clients, via_api_async)
        wait_until(none_pending, timeout=300, interval=0.05, what="the async submits to reach Slurm")
        async_in_slurm_rate = args.burst / (time.perf_counter() - t_async)
        states: dict[str, int] = {}
        reasons: dict[str, int] = {}
        cursor = None
        while True:  # every submit must have reached Slurm: a refusal would make the API look fast for nothing
            page = http.get("/api/v1/jobs", params={"org": "acme", "limit": 200,
                                                    **({"cursor": cursor} if cursor else {})}).json()
            for j in page["items"]:
                states[j["state"]] = states.get(j["state"], 0) + 1
                if j["state"] != "SUBMITTED":
                    reasons[j["reason"][:120]] = reasons.get(j["reason"][:120], 0) + 1
            cursor = page.get("next_cursor")
            if not cursor:
                break
        print(f"API jobs by state: {states}; other reasons: {reasons}")
        print(f"one client, {args.n} submits: raw sbatch p50 {statistics.median(raw_lat) * 1000:.1f} ms "
              f"(p95 {pct(raw_lat, 95) * 1000:.1f}); API p50 {statistics.median(api_lat) * 1000:.1f} ms "
              f"(p95 {pct(api_lat, 95) * 1000:.1f})")
        rest_p50, raw_p50 = statistics.median(rest_lat), statistics.median(raw_lat)
        print(f"slurmrestd alone (the REST transport, as root, no API): one client p50 {rest_p50 * 1000:.1f} ms = "
              f"{rest_p50 / raw_p50:.2f}x raw; {args.clients} clients {rest_rate:.0f}/s = {rest_rate / raw_rate:.2f}x "
              f"raw; API/slurmrestd: p50 {statistics.median(api_lat) / rest_p50:.2f}x, throughput "
              f"{api_rate / rest_rate:.2f}x")
        print(f"{args.clients} clients, {args.burst} submits: raw {raw_rate:.0f}/s; API {api_rate:.0f}/s "
              f"({args.workers} workers, PostgreSQL, {args.transport} transport)")
        print(f"ratios: p50 API/raw = {statistics.median(api_lat) / statistics.median(raw_lat):.2f}x (target <= 1.5x);"
              f" throughput API/raw = {api_rate / raw_rate:.2f}x (target >= 0.5x)")
        print(f"CPU, one client: API {cpu_line(cpu_per_item(cpu_seq, cpu0, args.n))}")
        print(f"CPU, {args.clients} clients: raw sbatch {cpu_line(cpu_per_item(cpu0, cpu1, args.burst))}")
        print(f"CPU, {args.clients} clients: API {cpu_line(cpu_per_item(cpu1, cpu2, args.burst))}")
        async_p50 = statistics.median(async_lat)
        print(f"async (Prefer: respond-async): one client p50 {async_p50 * 1000:.1f} ms "
              f"(p95 {pct(async_lat, 95) * 1000:.1f}) = {async_p50 / statistics.median(raw_lat):.2f}x raw; "
              f"{args.clients} clients {async_rate:.0f}/s answered = {async_rate / raw_rate:.2f}x raw, all "
              f"{args.burst} in Slurm at {async_in_slurm_rate:.0f}/s = {async_in_slurm_rate / raw_rate:.2f}x raw")
        if args.profile:
            spies = [py_spy(proc.pid() or 0, args.profile / f"{proc.name}.txt", 500) for proc in procs]
            time.sleep(2)  # py-spy attached
            sequential(args.n, via_api)
            for spy in spies:
                spy.send_signal(2)
                spy.wait(30)
            print(f"profiles (collapsed stacks) in {args.profile}")
        if args.loggers:
            under_logging(http, url, mlflow.url, secret, args.loggers, args.log_every, args.log_for)
    finally:
        for proc in procs:
            proc.stop()
        subprocess.run(["scancel", "--state=PENDING"], env={**os.environ, **cluster.env}, capture_output=True,
                       check=False)
        pg.stop()
        mlflow.stop()
        cluster_down(work / "slurm")


if __name__ == "__main__":
    main()
