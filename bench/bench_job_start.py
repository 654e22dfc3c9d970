"""What the job runtime adds before and after a user's command, against a real MLflow server.

Four ways to run the same empty command (``true``), interleaved round by round so the box's drift falls on all:

- ``bare``: ``true`` itself (what a job costs with no platform);
- ``runtime``: ``python -m haihe.jobs.runtime -- true`` without tracking (rank detection, staging checks, exit code);
- ``tracked``: the same with ``MLFLOW_TRACKING_URI`` set: rank 0 finds its experiment, starts a run, logs the
  params, ends the run — what every tracked job's rank 0 does around its command;
- ``mlflow-client``: the raw engine for the tracked part: a Python process doing those calls with MLflow's own
  ``MlflowClient`` (import, get-or-create experiment, create run, log a batch, terminate), and nothing else.

Printed per mode: median wall and median CPU (user + system, the child's ``getrusage``), and the ratio of
``tracked`` to ``mlflow-client`` (below 1.0x: the runtime, command and all, costs less than MLflow's client alone).

    python bench/bench_job_start.py --rounds 5
    python bench/bench_job_start.py --rounds 5 --out start.json

Not a pass/fail test. Needs MLflow installed (the platform's own dependency); the server is started here on
``--port`` (default a free one) with a SQLite store in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from haihe.cluster.mlflow_server import MlflowServer  # noqa: E402
from haihe.cluster.procs import free_port  # noqa: E402

STOCK = """
import sys, time
from mlflow import MlflowClient
from mlflow.entities import Param
c = MlflowClient(sys.argv[1])
e = c.get_experiment_by_name("bench/start")
eid = e.experiment_id if e else c.create_experiment("bench/start")
run = c.create_run(eid, tags={"haihe.job_id": sys.argv[2]})
c.log_batch(run.info.run_id, params=[Param("lr", "0.1")])
c.set_terminated(run.info.run_id, "FINISHED")
"""


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:4]} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="haihe-bench-start-"))
    server = MlflowServer(home=home, port=args.port or free_port(), s3_endpoint="http://127.0.0.1:9",
                          access_key="unused", secret_key="unused")  # no artifacts are logged here
    server.start()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HAIHE_", "MLFLOW_", "AWS_"))}
    base.update({"HAIHE_ORG": "bench", "HAIHE_PROJECT": "start", "HAIHE_CACHE_DIR": str(home / "cache"),
                 "HAIHE_PARAMS": '{"lr": 0.1}'})
    runtime = [sys.executable, "-m", "haihe.jobs.runtime", "--", "true"]
    samples: dict[str, list[tuple[float, float]]] = {m: [] for m in ("bare", "runtime", "tracked", "mlflow-client")}
    try:
        for _ in range(args.rounds):
            job = str(uuid.uuid4())
            samples["bare"].append(timed(["true"], base))
            samples["runtime"].append(timed(runtime, {**base, "HAIHE_JOB_ID": job}))
            samples["tracked"].append(timed(runtime, {**base, "HAIHE_JOB_ID": job + "-t",
                                                      "MLFLOW_TRACKING_URI": server.url}))
            samples["mlflow-client"].append(timed([sys.executable, "-c", STOCK, server.url, job], base))
    finally:
        server.stop()
    result: dict[str, object] = {"rounds": args.rounds, "python": sys.version.split()[0]}
    print(f"{'mode':15s} {'wall p50 s':>11s} {'CPU p50 s':>10s}")
    for mode, values in samples.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        result[mode] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}
        print(f"{mode:15s} {wall:11.3f} {cpu:10.3f}")
    tracked, stock = result["tracked"], result["mlflow-client"]
    assert isinstance(tracked, dict) and isinstance(stock, dict)
    result["tracked_vs_mlflow_client_cpu"] = round(tracked["cpu_s"] / stock["cpu_s"], 2)
    result["tracked_vs_mlflow_client_wall"] = round(tracked["wall_s"] / stock["wall_s"], 2)
    print(f"tracked runtime vs MLflow's client alone: CPU {result['tracked_vs_mlflow_client_cpu']}x, "
          f"wall {result['tracked_vs_mlflow_client_wall']}x")
    print("BENCH_RESULT " + json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
