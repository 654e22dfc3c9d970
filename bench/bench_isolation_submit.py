"""Issue 15's bench: API submit latency with workload isolation on vs off, same cluster, same run.

"Off" is the platform before isolation: jobs submitted as the API's own user with no account
(``HAIHE_UNIX_ACCOUNTS=none``). "On" is the default: each job as its user's Unix account (``setpriv`` or a minted JWT)
on its ``<org>.<project>`` Slurm account, with the storage-credentials URL and job token rendered into its
environment. Credentials themselves are minted when the job starts, not at submit; their cost (one STS AssumeRole
through the platform) is printed on its own.

Usage: .venv/bin/python bench/bench_isolation_submit.py [--n 60] [--transport cli|rest] [--base 23000]
Nodes are drained so nothing runs; every job is cancelled at the end. Not a pass/fail test: read the ratios.
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
from pathlib import Path

import httpx
from bench_support import make_tenant, pct

from haihe.cluster.ports import PortPlan
from haihe.cluster.procs import ManagedProcess, free_port, wait_until
from haihe.cluster.s3 import S3Server
from haihe.cluster.slurm import cluster_down, cluster_up


def _api(home: Path, env: dict[str, str]) -> tuple[ManagedProcess, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**env, "HAIHE_PUBLIC_URL": url}
    proc = ManagedProcess("api", [sys.executable, "-m", "uvicorn", "haihe.server:create_app", "--factory", "--host",
                                  "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                          log_path=home / "api.log", pid_path=home / "api.pid", env=env)
    proc.start()
    wait_until(lambda: httpx.get(url + "/healthz", timeout=2).status_code == 200, timeout=90, what="api",
               log_path=proc.log_path, alive=proc.is_running)
    return proc, url


def _submit_many(url: str, headers: dict[str, str], n: int) -> tuple[list[float], list[str]]:
    spec = {"name": "bench", "entrypoint": ["true"], "resources": {"partition": "cpu", "time_limit": 1}}
    lat, ids = [], []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        for _ in range(3):  # warm-up: first submits create the account and association
            http.post("/api/v1/orgs/acme/projects/vision/jobs", json={"spec": spec}).raise_for_status()
        for _ in range(n):
            t = time.perf_counter()
            r = http.post("/api/v1/orgs/acme/projects/vision/jobs", json={"spec": spec})
            lat.append(time.perf_counter() - t)
            r.raise_for_status()
            ids.append(r.json()["id"])
    return lat, ids


def _mint(url: str, job_id: str, n: int) -> list[float]:
    """The storage-credentials call a starting job makes (STS AssumeRole behind the platform), with the job's token
    as the platform renders it (the bench's API runs with the development secret)."""
    from haihe.platform.datasets.credentials import credentials_url
    from haihe.platform.settings import DEV_SECRET
    from haihe.platform.tracking.proxy import JobScope, issue_token

    token = issue_token(DEV_SECRET, JobScope(job_id, "acme", "vision"))
    out = []
    with httpx.Client(timeout=30) as http:
        for _ in range(n):
            t = time.perf_counter()
            http.post(credentials_url(url, job_id), headers={"Authorization": f"Bearer {token}"}).raise_for_status()
            out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--transport", choices=("cli", "rest"), default="cli")
    ap.add_argument("--base", type=int, default=23000)
    ap.add_argument("--rounds", type=int, default=2, help="alternate off/on this many times; medians are printed")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="h2-bench-iso-"))
    work.chmod(0o755)  # the cluster's daemons (mysql, slurm, nobody) traverse it; the API homes inside stay private
    plan = PortPlan(args.base)
    cluster = cluster_up(work / "slurm", plan, accounting=True)
    s3 = S3Server(work / "s3", plan.s3, "benchadmin", "benchadmin-secret", broker_access_key="benchbroker",
                  broker_secret_key="benchbroker-secret")
    s3.start()
    s3.ensure_buckets(("haihe-datasets", "haihe-code"))
    s3.ensure_broker(("haihe-datasets", "haihe-code"))
    try:
        env = {**os.environ, **cluster.env}
        for node in ("cn1", "cn2", "gn1", "gn2", "fn1"):  # nothing runs: only the submit path is measured
            subprocess.run(["scontrol", "update", f"nodename={node}", "state=drain", "reason=bench"], env=env,
                           capture_output=True, check=False)
        base = {**env, "HAIHE_SCHEDULERS": json.dumps({"slurm": cluster.scheduler_url(args.transport)}),
                "HAIHE_DEFAULT_SCHEDULER": "slurm", "HAIHE_RECONCILE_INTERVAL_S": "0",
                "HAIHE_S3_ENDPOINT": s3.endpoint, "HAIHE_S3_ACCESS_KEY": s3.access_key,
                "HAIHE_S3_SECRET_KEY": s3.secret_key, "HAIHE_S3_STS_ACCESS_KEY": "benchbroker",
                "HAIHE_S3_STS_SECRET_KEY": "benchbroker-secret"}
        figures: dict[str, list[float]] = {"off": [], "on": []}
        mint: list[float] = []
        for r in range(args.rounds):
            for mode in ("off", "on"):
                home = work / f"{mode}-{r}"
                home.mkdir()
                menv = {**base, "HAIHE_HOME": str(home), "HAIHE_DATABASE_URL": f"sqlite:///{home / 'haihe.db'}",
                        "HAIHE_UNIX_ACCOUNTS": "none" if mode == "off" else "local"}
                proc, url = _api(home, menv)
                try:
                    h = make_tenant(url, home, menv)
                    lat, ids = _submit_many(url, h, args.n)
                    figures[mode].append(statistics.median(lat))
                    print(f"round {r} {mode:>3}: p50 {statistics.median(lat) * 1000:6.1f} ms  "
                          f"p95 {pct(lat, 95) * 1000:6.1f} ms  ({args.n} submits)")
                    if mode == "on" and not mint:
                        mint = _mint(url, ids[0], 20)
                finally:
                    proc.stop()
        off, on = statistics.median(figures["off"]), statistics.median(figures["on"])
        print(f"\nsubmit p50, isolation off: {off * 1000:.1f} ms; on: {on * 1000:.1f} ms; "
              f"ratio on/off = {on / off:.2f}x (target <= 1.1x) [{args.transport}]")
        if mint:
            print(f"storage credentials at job start (STS via the platform): p50 {statistics.median(mint) * 1000:.1f}"
                  " ms, not on the submit path")
    finally:
        s3.stop()
        cluster_down(work / "slurm")


if __name__ == "__main__":
    main()
