"""The runtime as a process: exit codes for each kind of failure, MLflow down, a user command with the
distributed variables and forwarded signals. No services needed (the "down" ones are closed local ports)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from haihe.cluster.procs import port_open
from haihe.jobs.runtime.contract import ExitCode

CLOSED_PORT_BASE = int(os.environ.get("HAIHE_TEST_PORT_BASE", "21000")) + 400


def closed_url() -> str:
    port = next(p for p in range(CLOSED_PORT_BASE, CLOSED_PORT_BASE + 50) if not port_open("127.0.0.1", p))
    return f"http://127.0.0.1:{port}"


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HAIHE_", "MLFLOW_", "RANK", "WORLD_SIZE"))}
    env.update({"HAIHE_JOB_ID": str(uuid.uuid4()), "HAIHE_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"})
    env.update(extra)
    return env


def runtime(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "haihe.jobs.runtime", *args], env=env, capture_output=True,
                          text=True, timeout=600)


def test_mlflow_down_does_not_stop_training(tmp_path: Path) -> None:
    env = env_for(tmp_path, MLFLOW_TRACKING_URI=closed_url(), HAIHE_PARAMS=json.dumps({"epochs": 1}))
    proc = runtime("--recipe", "digits-cnn", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training continues without tracking" in proc.stderr
    assert "HAIHE_RESULT" in proc.stdout


def test_mlflow_down_fails_fast_when_the_job_must_register(tmp_path: Path) -> None:
    env = env_for(tmp_path, MLFLOW_TRACKING_URI=closed_url(), HAIHE_REGISTER_AS="org1/digits",
                  HAIHE_TRACKING_WAIT_S="3")  # the default 90 s of asking again: tests/unit/test_tracking_outage.py
    proc = runtime("--recipe", "digits-cnn", env=env)
    assert proc.returncode == ExitCode.TRACKING_UNAVAILABLE, proc.stderr[-3000:]
    assert "the job needs it: trying again in 1 s" in proc.stderr  # it did ask again, within the budget
    assert "epoch 1" not in proc.stderr  # refused before training, not after it


def test_bad_input_and_usage(tmp_path: Path) -> None:
    proc = runtime("--recipe", "digits-cnn", env=env_for(tmp_path, HAIHE_PARAMS="{oops"))
    assert proc.returncode == ExitCode.BAD_INPUT and "HAIHE_PARAMS" in proc.stderr
    proc = runtime("--recipe", "digits-cnn", env=env_for(tmp_path, HAIHE_PARAMS='{"epochs": "many"}'))
    assert proc.returncode == ExitCode.BAD_INPUT and "epochs" in proc.stderr
    proc = runtime("--recipe", "no-such-recipe", env=env_for(tmp_path))
    assert proc.returncode == ExitCode.USAGE and "digits-cnn" in proc.stderr
    proc = runtime(env=env_for(tmp_path))
    assert proc.returncode == ExitCode.USAGE
    proc = runtime("--recipe", "finetune", env=env_for(tmp_path))
    assert proc.returncode == ExitCode.DATA_ERROR and "HAIHE_DATASET" in proc.stderr


def test_storage_down_while_staging_the_dataset(tmp_path: Path) -> None:
    env = env_for(tmp_path, HAIHE_DATASET="org1/digits@v1", HAIHE_S3_ENDPOINT=closed_url(),
                  AWS_ACCESS_KEY_ID="key", AWS_SECRET_ACCESS_KEY="secretkey")
    proc = runtime("--", sys.executable, "-c", "pass", env=env)
    assert proc.returncode == ExitCode.STORAGE_UNAVAILABLE, proc.stderr[-3000:]


def test_user_command_gets_the_distributed_variables_and_its_exit_code_back(tmp_path: Path) -> None:
    out = tmp_path / "env.json"
    keys = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "HAIHE_RANK", "HAIHE_JOB_ID", "MLFLOW_RUN_ID"]
    script = (f"import json, os, sys; json.dump({{k: os.environ.get(k) for k in {keys!r}}}, open({str(out)!r}, 'w'));"
              " sys.exit(4)")
    env = env_for(tmp_path, RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="10.1.2.3", MASTER_PORT="1234")
    proc = runtime("--", sys.executable, "-c", script, env=env)
    assert proc.returncode == 4
    seen = json.loads(out.read_text())
    assert seen == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "10.1.2.3", "HAIHE_RANK": "1",
                    "HAIHE_JOB_ID": env["HAIHE_JOB_ID"], "MLFLOW_RUN_ID": None}


def test_signals_are_forwarded_to_the_user_command(tmp_path: Path) -> None:
    ready, got = tmp_path / "ready", tmp_path / "got"
    script = (
        "import pathlib, signal, sys, time\n"
        "def stop(n, f):\n"
        f"    pathlib.Path({str(got)!r}).write_text(signal.Signals(n).name); sys.exit(75)\n"
        "signal.signal(signal.SIGUSR1, stop)\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "while True: time.sleep(0.05)\n"
    )
    proc = subprocess.Popen([sys.executable, "-m", "haihe.jobs.runtime", "--", sys.executable, "-c", script],
                            env=env_for(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)  # what Slurm's --signal=USR1@<s> does before the walltime
        assert proc.wait(timeout=60) == ExitCode.REQUEUE
    finally:
        if proc.poll() is None:
            proc.kill()
    assert got.read_text() == "SIGUSR1"
