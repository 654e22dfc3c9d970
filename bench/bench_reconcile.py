"""One reconcile cycle over N live jobs vs the raw ``squeue -r`` listing the same jobs, in the same run.

Usage: .venv/bin/python bench/bench_reconcile.py [--n 10000] [--transport cli|rest] [--base B] [--accounting]
Brings the local cluster up (or reuses one in --state), submits N held array tasks (arrays of at most 1,000, so
nothing runs), inserts one platform job row per task into a fresh SQLite database, then times: the first cycle
(every row SUBMITTED → QUEUED), an idle cycle (nothing changed), and a cycle after the arrays are cancelled (every
row ends, its quota settles). Prints the figures and the ratio of the first cycle to raw ``squeue -r``.
Not a pass/fail test.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import insert

from haihe.cluster.ports import PortPlan
from haihe.cluster.slurm import SlurmCluster, cluster_down, cluster_up
from haihe.platform.context import PlatformContext
from haihe.platform.jobs.reconciler import CycleReport, Reconciler
from haihe.platform.models import Job, Membership, Org, Project, User, utcnow
from haihe.platform.settings import Settings
from haihe.schedulers.base import JobState
from haihe.schedulers.slurm.scheduler import SlurmScheduler
from haihe.schedulers.slurm.transport import CountingTransport

ARRAY_MAX = 1000  # Slurm's MaxArraySize defaults to 1001 (task ids 0..1000)


def slurm(cluster: SlurmCluster, *argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, env=cluster.command_env(), check=True,
                          timeout=120).stdout


def submit_held(cluster: SlurmCluster, n: int) -> tuple[list[str], list[str]]:
    """N held array tasks; returns (array ids, task refs)."""
    arrays: list[str] = []
    refs: list[str] = []
    while len(refs) < n:
        size = min(ARRAY_MAX, n - len(refs))
        out = slurm(cluster, "sbatch", "--parsable", "--hold", f"--array=0-{size - 1}", "--job-name=bench-reconcile",
                    "--time=1", "-o", "/dev/null", "--wrap", "true")
        array = out.strip().split(";")[0]
        arrays.append(array)
        refs += [f"{array}_{i}" for i in range(size)]
    return arrays, refs


def track(ctx: PlatformContext, refs: list[str]) -> None:
    """One SUBMITTED platform job row per Slurm ref, inserted in one statement (as if each had been submitted)."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    now = utcnow()
    spec = {"name": "b", "entrypoint": "true", "resources": {"nodes": 1, "cpus_per_task": 1, "time_limit": 1}}
    with ctx.db.session() as s:
        org, user = Org(name=name), User(username=name)
        s.add_all([org, user])
        s.flush()
        project = Project(org_id=org.id, name="p")
        s.add_all([project, Membership(user_id=user.id, org_id=org.id, role="researcher")])
        s.flush()
        s.execute(insert(Job), [
            {"id": str(uuid.uuid4()), "org_id": org.id, "project_id": project.id, "user_id": user.id,
             "name": f"b-{ref}", "kind": "train", "scheduler": "slurm", "native_id": ref,
             "state": JobState.SUBMITTED.value, "reason": "", "spec": spec, "array_size": 1, "nodes": [],
             "submit_attempts": 1, "created_at": now, "submitted_at": now, "updated_at": now} for ref in refs])


def timed_cycle(rec: Reconciler, counter: CountingTransport, profile: bool) -> tuple[CycleReport, float, int]:
    counter.reset()
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    report = rec.cycle("slurm")
    if prof:
        prof.disable()
    elapsed = time.perf_counter() - t0
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    if report.error:
        raise SystemExit(f"cycle failed: {report.error}")
    return report, elapsed, counter.total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--transport", choices=("cli", "rest"), default="cli")
    ap.add_argument("--base", type=int, default=int(os.environ.get("HAIHE_TEST_PORT_BASE", "22000")))
    ap.add_argument("--state", default=None, help="state dir (default /tmp/h2-slurm-test-<base>)")
    ap.add_argument("--accounting", action="store_true", help="with slurmdbd (slower to bring up)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of each cycle")
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    args = ap.parse_args()
    args.state = args.state or f"/tmp/h2-slurm-test-{args.base}"
    cluster = cluster_up(args.state, PortPlan(args.base), accounting=args.accounting)
    arrays: list[str] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(database_url=f"sqlite:///{Path(tmp) / 'haihe.db'}",
                                schedulers={"slurm": cluster.scheduler_url(args.transport)},
                                default_scheduler="slurm", reconcile_interval_s=0)
            ctx = PlatformContext.from_settings(settings)
            ctx.db.migrate()
            sched = ctx.scheduler("slurm")
            assert isinstance(sched, SlurmScheduler)
            counter = CountingTransport(sched.transport)
            sched.transport = counter
            t0 = time.perf_counter()
            arrays, refs = submit_held(cluster, args.n)
            submit_s = time.perf_counter() - t0
            track(ctx, refs)
            rec = Reconciler(ctx)
            first, cycle_s, calls = timed_cycle(rec, counter, args.profile)
            t1 = time.perf_counter()
            raw = slurm(cluster, "squeue", "-r", "-h", "-o", "%i %T %r")
            raw_s = time.perf_counter() - t1
            t2 = time.perf_counter()
            slurm(cluster, "squeue", "--json")
            raw_json_s = time.perf_counter() - t2
            idle, idle_s, idle_calls = timed_cycle(rec, counter, False)
            slurm(cluster, "scancel", *arrays)
            ended, end_s, end_calls = timed_cycle(rec, counter, args.profile)
            arrays = []
            ctx.close()
        listed = sum(1 for line in raw.splitlines() if line.strip())
        print(f"transport={args.transport} jobs={len(refs)} (arrays of <= {ARRAY_MAX}, held; sbatch {submit_s:.2f}s)")
        print(f"raw squeue -r: {raw_s * 1000:.0f} ms ({listed} lines); raw squeue --json: {raw_json_s * 1000:.0f} ms")
        print(f"cycle 1 (all -> QUEUED): {cycle_s:.2f} s, {calls} scheduler call(s), {first.transitions} transitions"
              f"  ratio to squeue -r: {cycle_s / raw_s:.0f}x")
        print(f"cycle 2 (idle):          {idle_s:.2f} s, {idle_calls} scheduler call(s), {idle.transitions} "
              f"transitions  ratio: {idle_s / raw_s:.0f}x")
        print(f"cycle 3 (all cancelled): {end_s:.2f} s, {end_calls} scheduler call(s), {ended.transitions} "
              f"transitions  ratio: {end_s / raw_s:.0f}x")
        print(f"figures: jobs={len(refs)} scheduler_calls={calls} cycle_s={cycle_s:.2f} raw_squeue_s={raw_s:.3f} "
              f"ratio={cycle_s / raw_s:.0f}")
    finally:
        if arrays:
            subprocess.run(["scancel", *arrays], env=cluster.command_env(), capture_output=True, timeout=120)
        if not args.keep:
            cluster_down(args.state)


if __name__ == "__main__":
    main()
