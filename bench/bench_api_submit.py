"""Issue 16's bench: API submit (POST /jobs) vs raw ``sbatch`` of the same job, same cluster, same run.

Nodes are drained so nothing runs: only the submit path is measured. The platform runs as it would at a site —
PostgreSQL, the REST transport (slurmrestd with a per-user JWT), isolation on (each job as its user's Unix account
on its ``<org>.<project>`` Slurm account), ``--workers`` API processes on one port (``python -m haihe.serve``).
The baseline submits the very script the scheduler renders, as root, with ``sbatch --parsable``.

Usage: .venv/bin/python bench/bench_api_submit.py [--n 60] [--burst 240] [--clients 16] [--workers 2] [--base 24000]
Prints p50/p95 of one client and the throughput of ``--clients`` concurrent clients, and the ratios API/raw
(targets: p50 <= 1.5x, throughput >= 0.5x). Every job is cancelled at the end. Not a pass/fail test.
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
from bench_support import make_tenant, pct

from haihe.cluster.ports import PortPlan
from haihe.cluster.postgres import PostgresServer
from haihe.cluster.procs import ManagedProcess, free_port, wait_until
from haihe.cluster.slurm import cluster_down, cluster_up
from haihe.schedulers.base import Launch, Resources
from haihe.schedulers.slurm.options import slurm_options
from haihe.schedulers.slurm.sbatch import render_script

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
    ap.add_argument("--base", type=int, default=24000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="h2-bench-submit-"))
    work.chmod(0o755)  # the cluster's daemons (mysql, slurmrestd) traverse it; the API's home inside stays private
    plan = PortPlan(args.base)
    cluster = cluster_up(work / "slurm", plan, accounting=True)
    pg = PostgresServer(work / "pg", plan.postgres)
    pg.start()
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
        scripts = [render_script(job(i), slurm_options(job(i), jobs_dir=str(cluster.jobs_dir))) for i in range(total)]

        def raw(i: int) -> str:
            out = subprocess.run(["sbatch", "--parsable"], input=scripts[i], capture_output=True, text=True, env=env,
                                 check=True)
            return out.stdout.strip()

        home = work / "api"
        home.mkdir()
        api_env = {**env, "HAIHE_HOME": str(home), "HAIHE_DATABASE_URL": pg.create_database("haihe"),
                   "HAIHE_SCHEDULERS": json.dumps({"slurm": cluster.scheduler_url(args.transport)}),
                   "HAIHE_DEFAULT_SCHEDULER": "slurm", "HAIHE_RECONCILE_INTERVAL_S": "5",
                   "HAIHE_UNIX_ACCOUNTS": "local"}
        procs, url = _api(home, api_env, args.workers)
        headers = make_tenant(url, home, api_env)
        http = httpx.Client(base_url=url, headers=headers, timeout=60,
                            limits=httpx.Limits(max_connections=args.clients + 4))

        def via_api(_i: int) -> str:
            r = http.post("/api/v1/orgs/acme/projects/vision/jobs", json={"spec": SPEC})
            r.raise_for_status()
            return str(r.json()["native_id"] or r.json()["id"])

        for i in range(3):  # warm-up: the first submit makes the account, association and user dir
            via_api(i)
            raw(i)
        raw_lat = sequential(args.n, raw)
        api_lat = sequential(args.n, via_api)
        raw_rate = concurrent(args.burst, args.clients, lambda i: raw(args.n + i))
        api_rate = concurrent(args.burst, args.clients, via_api)
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
        print(f"{args.clients} clients, {args.burst} submits: raw {raw_rate:.0f}/s; API {api_rate:.0f}/s "
              f"({args.workers} workers, PostgreSQL, {args.transport} transport)")
        print(f"ratios: p50 API/raw = {statistics.median(api_lat) / statistics.median(raw_lat):.2f}x (target <= 1.5x);"
              f" throughput API/raw = {api_rate / raw_rate:.2f}x (target >= 0.5x)")
    finally:
        for proc in procs:
            proc.stop()
        subprocess.run(["scancel", "--state=PENDING"], env={**os.environ, **cluster.env}, capture_output=True,
                       check=False)
        pg.stop()
        cluster_down(work / "slurm")


if __name__ == "__main__":
    main()
