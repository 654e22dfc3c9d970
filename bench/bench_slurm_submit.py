"""Submit latency (p50, p95) and sustained submissions/s: raw sbatch vs SlurmScheduler (CLI and REST), one run.

Usage: .venv/bin/python bench/bench_slurm_submit.py [--n 40] [--state /tmp/h2-slurm-bench] [--base 22000]
Brings the local cluster up (or reuses one in --state), submits tiny held jobs so nothing runs, cancels them, and
prints each transport's figures and its ratio to raw sbatch. Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable

from haihe.cluster.ports import PortPlan
from haihe.cluster.slurm import cluster_down, cluster_up
from haihe.schedulers.base import Launch, Resources
from haihe.schedulers.registry import create_scheduler
from haihe.schedulers.slurm.options import slurm_options
from haihe.schedulers.slurm.sbatch import render_script


def measure(n: int, submit: Callable[[int], str]) -> tuple[list[float], float, list[str]]:
    lat, refs = [], []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        refs.append(submit(i))
        lat.append(time.perf_counter() - t)
    return lat, n / (time.perf_counter() - t0), refs


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--state", default="/tmp/h2-slurm-bench")
    ap.add_argument("--base", type=int, default=22000)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    cluster = cluster_up(args.state, PortPlan(args.base), accounting=False)
    env = cluster.command_env()

    def job(i: int) -> Launch:
        return Launch(tag=f"b-{uuid.uuid4().hex}", name=f"bench{i}", command=("true",),
                      resources=Resources(time_limit_min=1))

    # the baseline submits the very script the scheduler would send (rendered outside the timed loop)
    scripts = [render_script(job(i), slurm_options(job(i), jobs_dir=str(cluster.jobs_dir))) for i in range(args.n)]

    def raw(i: int) -> str:
        out = subprocess.run(["sbatch", "--parsable"], input=scripts[i], capture_output=True, text=True,
                             env=env, check=True)
        return out.stdout.strip()

    def drain(refs: list[str]) -> None:
        """Cancel a path's jobs and wait for an empty queue, so every path starts from the same state."""
        subprocess.run(["scancel", *refs], env=env, check=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and subprocess.run(
                ["squeue", "-h", "-t", "PD,R,CG"], env=env, capture_output=True, text=True).stdout.strip():
            time.sleep(0.5)

    results: dict[str, tuple[list[float], float, list[str]]] = {"raw sbatch": measure(args.n, raw)}
    drain(results["raw sbatch"][2])
    for transport in ("cli", "rest"):
        sched = create_scheduler(cluster.scheduler_url(transport))
        sched.describe()  # warm the admission cache, as a long-running service would have it

        def via(i: int, s=sched) -> str:  # type: ignore[no-untyped-def]
            return s.submit(job(i))

        results[f"slurm+{transport}"] = measure(args.n, via)
        drain(results[f"slurm+{transport}"][2])
    base = results["raw sbatch"]
    print(f"{'path':<12} {'p50 ms':>8} {'p95 ms':>8} {'subs/s':>8} {'p50 x':>7} {'p95 x':>7} {'rate x':>7}")
    for name, (lat, rate, _) in results.items():
        print(f"{name:<12} {pct(lat, 50) * 1e3:8.1f} {pct(lat, 95) * 1e3:8.1f} {rate:8.1f} "
              f"{pct(lat, 50) / pct(base[0], 50):7.2f} {pct(lat, 95) / pct(base[0], 95):7.2f} "
              f"{base[1] / rate:7.2f}")
    if not args.keep:
        cluster_down(args.state)


if __name__ == "__main__":
    main()
