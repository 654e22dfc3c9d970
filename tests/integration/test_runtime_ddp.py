"""The runtime under real torch.distributed (gloo on CPU), no scheduler: torchrun with 2 ranks, and a SIGTERM
mid-training that checkpoints, exits for requeue and resumes to the right total step count."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from haihe.cluster.procs import port_open
from haihe.jobs.runtime.contract import ExitCode

TRAIN_ROWS = 1437  # scikit-learn digits, 80% stratified split
PORT_BASE = int(os.environ.get("HAIHE_TEST_PORT_BASE", "21000")) + 350  # above the services' port plan


def rdzv_port() -> int:
    for port in range(PORT_BASE, PORT_BASE + 50):
        if not port_open("127.0.0.1", port):
            return port
    raise RuntimeError("no free rendezvous port in this session's range")


def steps_for(epochs: int, world: int, batch: int = 32) -> int:
    return epochs * math.ceil(math.ceil(TRAIN_ROWS / world) / batch)


def job_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HAIHE_", "MLFLOW_", "RANK", "WORLD_SIZE"))}
    env.update({"HAIHE_JOB_ID": str(uuid.uuid4()), "HAIHE_ORG": "org1", "HAIHE_PROJECT": "proj1",
                "HAIHE_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    env.update(extra)
    return env


def results(output: str) -> list[dict[str, object]]:
    return [json.loads(line.split(" ", 1)[1]) for line in output.splitlines() if line.startswith("HAIHE_RESULT ")]


def test_digits_cnn_on_two_ranks_with_torchrun(tmp_path: Path) -> None:
    env = job_env(tmp_path, HAIHE_PARAMS=json.dumps({"epochs": 4}))
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2", "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{rdzv_port()}", "-m", "haihe.jobs.runtime", "--recipe", "digits-cnn"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = sorted(results(proc.stdout), key=lambda r: int(str(r["rank"])))
    assert [r["rank"] for r in found] == [0, 1]
    assert found[0]["final_loss"] == found[1]["final_loss"]  # all-reduced: the same on every rank
    assert found[0]["test_accuracy"] == found[1]["test_accuracy"]  # DDP kept the replicas identical
    assert float(str(found[0]["test_accuracy"])) > 0.9
    assert found[0]["steps"] == found[1]["steps"] == steps_for(4, 2)
    assert "(torchrun, gloo)" in proc.stderr


def _start_rank(rank: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """One rank launched as srun would (static world, rank 0 hosts the store): torchrun-style variables."""
    rank_env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "haihe.jobs.runtime", "--recipe", "digits-cnn"],
                                env=rank_env, stdout=out, stderr=subprocess.STDOUT)


def _wait_all(procs: list[subprocess.Popen[bytes]], timeout: float = 600) -> list[int]:
    deadline = time.monotonic() + timeout
    codes = []
    for p in procs:
        codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
    return codes


def test_sigterm_checkpoints_requeues_and_resumes(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    epochs, world = 6, 2
    total = steps_for(epochs, world)
    env = job_env(tmp_path, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(rdzv_port()), HAIHE_CHECKPOINT_URI=str(ckpt),
                  HAIHE_CHECKPOINT_EVERY="5", HAIHE_CHECKPOINT_KEEP="2",
                  HAIHE_PARAMS=json.dumps({"epochs": epochs}))
    logs = [tmp_path / f"rank{r}-a.log" for r in range(world)]
    procs = [_start_rank(r, env, logs[r]) for r in range(world)]
    try:
        deadline = time.monotonic() + 300
        while not any(ckpt.glob("step-*.pt")):
            assert time.monotonic() < deadline, logs[0].read_text()[-3000:]
            assert all(p.poll() is None for p in procs), logs[0].read_text()[-3000:]
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGTERM)  # one rank only: the ranks must agree on the stop step
        codes = _wait_all(procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [ExitCode.REQUEUE, ExitCode.REQUEUE], logs[0].read_text()[-3000:] + logs[1].read_text()[-3000:]
    saved = sorted(int(p.name[5:14]) for p in ckpt.glob("step-*.pt"))
    assert 1 <= len(saved) <= 2 and 5 <= saved[-1] < total  # the stop step's checkpoint, newest K kept
    assert "received SIGTERM" in logs[1].read_text()

    env["MASTER_PORT"] = str(rdzv_port())
    relogs = [tmp_path / f"rank{r}-b.log" for r in range(world)]
    procs = [_start_rank(r, env, relogs[r]) for r in range(world)]
    codes = _wait_all(procs)
    assert codes == [0, 0], relogs[0].read_text()[-3000:]
    found = [r for log in relogs for r in results(log.read_text())]
    assert len(found) == 2
    for r in found:
        assert r["resumed_from"] == saved[-1]
        assert r["steps"] == total  # resumed at the checkpoint's step, not from zero and not skipping any
        assert float(str(r["test_accuracy"])) > 0.9
    assert found[0]["final_loss"] == found[1]["final_loss"]
