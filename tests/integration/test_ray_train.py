"""``ray_train`` on the real Ray head: 2-worker DDP (gloo), metrics in MLflow, checkpoints on S3, resume."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from haihe.cluster.mlflow_server import MlflowServer
from haihe.cluster.ray_head import RayHead
from haihe.cluster.s3 import S3Server
from haihe.schedulers.base import JobState, Launch, Launcher, Resources
from haihe.schedulers.ray.backend import RayScheduler, build
from tests.contract.scheduler_contract import wait_state
from tests.fixtures.relay import tcp_relay

pytestmark = [pytest.mark.ray, pytest.mark.s3, pytest.mark.mlflow, pytest.mark.slow]

BUCKET = "haihe-checkpoints"

# The user's code: a train loop in a module, resumable from the latest checkpoint, rank 0 logging to MLflow.
TRAIN_PY = """
import os
import tempfile

import ray.train
import torch
from ray.train.torch import prepare_model


def train_loop_per_worker(config):
    epochs = int(config["args"][0])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(0)
    model = prepare_model(torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    start = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"))
        model.module.load_state_dict(state["model"])
        start = state["epoch"] + 1
        print(f"HAIHE_RESUMED rank={rank} epoch={start}")
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(rank))
    y = x.sum(dim=1, keepdim=True)
    run = None
    if rank == 0 and os.environ.get("MLFLOW_TRACKING_URI"):
        import mlflow
        mlflow.set_experiment(os.environ["HAIHE_EXPERIMENT"])
        run = mlflow.start_run(run_name=config["name"])
    mean = 0.0
    for epoch in range(start, epochs):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        total = loss.detach().clone()
        torch.distributed.all_reduce(total)
        mean = float(total) / world
        if run is not None:
            import mlflow
            mlflow.log_metric("loss", mean, step=epoch)
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                torch.save({"model": model.module.state_dict(), "epoch": epoch}, os.path.join(d, "state.pt"))
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report({"epoch": epoch, "loss": mean}, checkpoint=checkpoint)
    if run is not None:
        import mlflow
        mlflow.end_run()
    print(f"HAIHE_FINAL rank={rank} loss={mean:.8f}")
"""


@pytest.fixture
def sched(ray_head: RayHead) -> Iterator[RayScheduler]:
    s = build(ray_head.scheduler_url)
    yield s
    s.close()


def final_losses(log: str) -> dict[int, str]:
    return {int(r): loss for r, loss in re.findall(r"HAIHE_FINAL rank=(\d+) loss=([0-9.eE+-]+)", log)}


@pytest.fixture
def mlflow_relay(mlflow_server: MlflowServer) -> Iterator[int]:
    """Ray's processes may not reach MLflow itself (the local cluster's firewall; platform jobs go through the
    platform's proxy): this scheduler-level test gives its job a relay run by the test process."""
    with tcp_relay(mlflow_server.port) as port:
        yield port


def test_two_worker_ddp_same_loss_in_mlflow_checkpoints_on_s3_and_resumes(
    sched: RayScheduler, s3_server: S3Server, mlflow_server: MlflowServer, mlflow_relay: int, tmp_path: Path
) -> None:
    s3_server.ensure_buckets([BUCKET])
    (tmp_path / "toy_ddp.py").write_text(TRAIN_PY)
    run = f"ddp-{uuid.uuid4().hex[:12]}"
    experiment = f"ray-train-{run}"
    env = {
        **s3_server.client_env(),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_relay}",
        "HAIHE_EXPERIMENT": experiment,
        "HAIHE_CHECKPOINT_URI": f"s3://{BUCKET}/{run}",
    }

    def submit(epochs: int) -> str:
        launch = Launch(
            tag=f"{run}-{epochs}",
            name=run,  # same name + same storage = resume
            command=("toy_ddp.py", str(epochs)),
            launcher=Launcher.RAY_TRAIN,
            resources=Resources(nodes=1, tasks_per_node=2, cpus_per_task=1, time_limit_min=15),
            env=env,
            workdir=str(tmp_path),
        )
        ref = sched.submit(launch)
        st = wait_state(sched, ref, {JobState.SUCCEEDED}, timeout=420)
        assert st.exit_code == 0
        return sched.logs(ref).data

    first = submit(3)
    losses = final_losses(first)
    assert set(losses) == {0, 1}, first[-3000:]
    assert losses[0] == losses[1]  # DDP: both workers end with the same all-reduced loss

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.url)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    history = client.get_metric_history(runs[0].info.run_id, "loss")
    assert [m.step for m in history] == [0, 1, 2]
    assert f"{history[-1].value:.8f}" == losses[0]

    keys = [o.object_name for o in s3_server.client().list_objects(BUCKET, prefix=f"{run}/", recursive=True)]
    assert any(k.endswith("state.pt") for k in keys), keys

    second = submit(5)  # resumes after epoch 2 from the S3 checkpoint
    assert "HAIHE_RESUMED rank=0 epoch=3" in second
    resumed = final_losses(second)
    assert set(resumed) == {0, 1} and resumed[0] == resumed[1]
    assert float(resumed[0]) < float(losses[0])
