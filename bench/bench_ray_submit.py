"""Ray backend vs a raw JobSubmissionClient, measured in the same run on a local head (not a test).

1. submit → RUNNING latency: RayScheduler.submit + status polling against JobSubmissionClient.submit_job +
   get_job_status polling, alternating rounds, the same trivial job (target: within 1.2x).
2. status polling with 1,000 jobs: one RayScheduler.status(refs) cycle (one list call) against the raw SDK's
   list_jobs() and against the naive one get_job_status per job. The 1,000 jobs are made cheap: each asks for a
   custom resource no node has, so it stays PENDING without starting a process.

    .venv/bin/python bench/bench_ray_submit.py [--port-base 23000] [--rounds 8] [--jobs 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from haihe.cluster.ports import PortPlan
from haihe.cluster.ray_head import RayHead, loopback_env
from haihe.schedulers.base import JobState, Launch, Resources
from haihe.schedulers.ray.backend import build

POLL_S = 0.05


def until(pred: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(POLL_S)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-base", type=int, default=int(os.environ.get("HAIHE_TEST_PORT_BASE", "21000")))
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=1000)
    ns = ap.parse_args()
    os.environ.update(loopback_env())
    from ray.job_submission import JobStatus, JobSubmissionClient

    home = Path(tempfile.mkdtemp(prefix="hb-", dir="/tmp"))
    head = RayHead(home, PortPlan(ns.port_base), num_cpus=4, object_store_bytes=300 * 2**20)
    t0 = time.perf_counter()
    head.start(timeout=180)
    print(f"head ready in {time.perf_counter() - t0:.1f}s at {head.dashboard_url}")
    calls: list[str] = []
    client = httpx.Client(timeout=30.0, event_hooks={"request": [lambda r: calls.append(r.url.path)]})
    sched = build(head.scheduler_url, client=client)
    raw = JobSubmissionClient(head.dashboard_url)
    try:
        # -- 1. submit → RUNNING -------------------------------------------------------------------------------
        ours: list[float] = []
        theirs: list[float] = []
        for i in range(ns.rounds + 1):  # round 0 warms both paths up and is not counted
            tag = f"bench-{uuid.uuid4().hex}"
            t = time.perf_counter()
            sched.submit(Launch(tag=tag, name=tag, command=("sleep", "30"), resources=Resources(cpus_per_task=1)))
            until(lambda tag=tag: sched.status([tag])[tag].state is JobState.RUNNING)
            d_ours = time.perf_counter() - t
            sched.cancel(tag)
            until(lambda tag=tag: sched.status([tag])[tag].state.is_terminal())

            sid = f"raw-{uuid.uuid4().hex}"
            t = time.perf_counter()
            raw.submit_job(entrypoint="sleep 30", submission_id=sid, entrypoint_num_cpus=1)
            until(lambda sid=sid: raw.get_job_status(sid) == JobStatus.RUNNING)
            d_raw = time.perf_counter() - t
            raw.stop_job(sid)
            until(lambda sid=sid: raw.get_job_status(sid).is_terminal())
            if i:
                ours.append(d_ours)
                theirs.append(d_raw)
        m_ours, m_raw = statistics.median(ours), statistics.median(theirs)
        print(
            f"submit→RUNNING median over {ns.rounds}: backend {m_ours:.3f}s, raw JobSubmissionClient "
            f"{m_raw:.3f}s, ratio {m_ours / m_raw:.2f}x (target ≤ 1.2x)"
        )

        # -- 2. status polling with N jobs ---------------------------------------------------------------------
        refs = []
        t = time.perf_counter()
        for _ in range(ns.jobs):
            sid = f"idle-{uuid.uuid4().hex}"
            # A resource no node has: the job stays PENDING and costs no process.
            raw.submit_job(entrypoint="true", submission_id=sid, entrypoint_resources={"haihe_bench_never": 1})
            refs.append(sid)
        print(f"created {ns.jobs} pending jobs in {time.perf_counter() - t:.1f}s")

        def timed(fn: Callable[[], object], n: int = 5) -> float:
            samples = []
            for _ in range(n):
                t = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t)
            return statistics.median(samples)

        calls.clear()
        sched.status(refs)
        per_cycle = len(calls)
        s_ours = timed(lambda: sched.status(refs))
        s_list = timed(raw.list_jobs)
        s_each = timed(lambda: [raw.get_job_status(r) for r in refs[:100]], n=1) * (ns.jobs / 100)
        print(
            f"status of {ns.jobs} jobs: backend {s_ours * 1000:.0f} ms/cycle ({per_cycle} HTTP calls), "
            f"raw list_jobs {s_list * 1000:.0f} ms (ratio {s_ours / s_list:.2f}x), "
            f"one get_job_status per job ≈{s_each * 1000:.0f} ms (backend {s_each / s_ours:.0f}x faster)"
        )
    finally:
        sched.close()
        head.stop()
        head.wipe()


if __name__ == "__main__":
    main()
