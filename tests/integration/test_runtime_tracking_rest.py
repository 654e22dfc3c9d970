"""The runtime's own MLflow REST client against the real MLflow server, read back with the stock ``mlflow`` client:
a run started, logged to (NaN and infinities included), given system metrics and ended — in a process that never
imports MLflow; a requeued attempt continues the same run; jobs racing to create their experiment share one."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from haihe.cluster.mlflow_server import MlflowServer
from haihe.jobs.runtime.contract import RuntimeEnv
from haihe.jobs.runtime.mlflow_rest import RestTrackingClient

pytestmark = [pytest.mark.mlflow]

JOB = """
import json, sys, time
from haihe.jobs.runtime import tracking
from haihe.jobs.runtime.contract import RuntimeEnv

t = tracking.start(RuntimeEnv.from_environ(), is_main=True, run_name="rest-run", system_metrics_every_s=0.2)
t.log_params({"lr": 0.1, "long": "x" * 7000})
for step in range(120):  # more than one batch
    t.log_metrics({"loss": 1.0 / (step + 1)}, step)
t.log_metrics({"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf")}, 0)
t.set_tags({"haihe.dataset": "acme/cats@v1"})
time.sleep(1.0)  # a few system samples
t.end("FINISHED")
print(json.dumps({"run_id": t.run_id, "mlflow_imported": "mlflow" in sys.modules,
                  "samples": t.sampler.logged if t.sampler else 0}))
"""


def _attempt(env: RuntimeEnv, tmp_path: Path) -> dict[str, object]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HAIHE_", "MLFLOW_", "AWS_"))}
    environ.update(env.to_environ())
    proc = subprocess.run([sys.executable, "-c", JOB], env=environ, capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_a_run_logged_without_mlflow_reads_back_in_mlflow_and_a_requeue_continues_it(
        mlflow_server: MlflowServer, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    org = f"rest{uuid.uuid4().hex[:8]}"
    env = RuntimeEnv(job_id=str(uuid.uuid4()), org=org, project="vision", user="ada", job_name="rest-run",
                     tracking_uri=mlflow_server.url, cache_dir=str(tmp_path / "cache"), array_index=3)
    first = _attempt(env, tmp_path)
    assert first["mlflow_imported"] is False  # the whole point: no 3 s of MLflow import on every job's rank 0
    run_id = str(first["run_id"])

    stock = MlflowClient(mlflow_server.url)
    run = stock.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time and run.info.run_name == "rest-run"
    assert stock.get_experiment(run.info.experiment_id).name == f"{org}/vision"
    assert run.data.params["lr"] == "0.1" and len(run.data.params["long"]) == 6000  # cut to MLflow's limit
    assert run.data.tags["haihe.job_id"] == env.job_id and run.data.tags["haihe.array_index"] == "3"
    assert run.data.tags["haihe.dataset"] == "acme/cats@v1"
    history = stock.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == list(range(120)) and history[-1].value == pytest.approx(1 / 120)
    assert math.isnan(run.data.metrics["nan"])
    assert run.data.metrics["inf"] > 1e300 and run.data.metrics["ninf"] < -1e300  # MLflow clamps +-inf
    cpu = stock.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert cpu and int(str(first["samples"])) == len(cpu) and [m.step for m in cpu] == list(range(len(cpu)))
    assert "system/system_memory_usage_megabytes" in run.data.metrics

    second = _attempt(env, tmp_path)  # the same job id and array index: a requeue continues the run
    assert second["run_id"] == run_id
    again = stock.get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert [m.step for m in again] == list(range(len(again))) and len(again) > len(cpu)  # steps go on
    assert stock.get_run(run_id).info.status == "FINISHED"
    assert len(stock.search_runs([run.info.experiment_id])) == 1


def test_jobs_racing_to_create_their_experiment_all_get_the_same_one(mlflow_server: MlflowServer) -> None:
    name = f"race{uuid.uuid4().hex[:8]}/p"
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda _: RestTrackingClient(mlflow_server.url).experiment_id(name), range(8)))
    assert len(set(ids)) == 1
    assert RestTrackingClient(mlflow_server.url).get_experiment_id(name) == ids[0]
    assert RestTrackingClient(mlflow_server.url).get_experiment_id(name + "-none") is None
