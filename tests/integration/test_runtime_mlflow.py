"""The runtime against the real MLflow server and S3 server: a tracked run (params, metric history, tags), S3
checkpoints (newest K), a zoo version with lineage; then finetune and batch-infer from that zoo model on dataset
versions staged from S3."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from haihe.cluster.mlflow_server import MlflowServer
from haihe.cluster.s3 import S3Server
from haihe.datasets.presigned import HttpTransport
from haihe.datasets.push import LocalBackend, push
from haihe.datasets.store import MinioStore, read_all
from haihe.datasets.upload import Uploads
from haihe.jobs.recipes.digits_cnn import digits_tensors
from haihe.jobs.runtime.contract import RuntimeEnv

pytestmark = [pytest.mark.mlflow, pytest.mark.s3]

CKPT_BUCKET = "haihe-checkpoints"
DATA_BUCKET = "haihe-datasets"


Outcome = tuple[subprocess.CompletedProcess[str], dict[str, Any]]


def run_runtime(env: RuntimeEnv, recipe: str, tmp_path: Path) -> Outcome:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("HAIHE_", "MLFLOW_", "AWS_"))}
    base.update(env.to_environ())
    tmp_path.mkdir(parents=True, exist_ok=True)
    base.update({"HAIHE_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    proc = subprocess.run([sys.executable, "-m", "haihe.jobs.runtime", "--recipe", recipe], env=base,
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    lines = [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("HAIHE_RESULT ")]
    return proc, (lines[0] if lines else {})


def common(s3: S3Server, mlflow: MlflowServer, org: str, **fields: Any) -> RuntimeEnv:
    return RuntimeEnv(job_id=str(uuid.uuid4()), org=org, project="vision", user="ada", tracking_uri=mlflow.url,
                      s3_endpoint=s3.endpoint, s3_access_key=s3.access_key, s3_secret_key=s3.secret_key, **fields)


@pytest.fixture(scope="module")
def org() -> str:
    return f"rt{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def trained(s3_server: S3Server, mlflow_server: MlflowServer, org: str,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RuntimeEnv, subprocess.CompletedProcess[str], dict[str, Any]]]:  # noqa: E501
    s3_server.ensure_buckets([CKPT_BUCKET])
    env = common(s3_server, mlflow_server, org, checkpoint_uri=f"s3://{CKPT_BUCKET}/{org}/digits",
                 checkpoint_every=20, checkpoint_keep=2, register_as=f"{org}/digits", params={"epochs": 3})
    proc, result = run_runtime(env, "digits-cnn", tmp_path_factory.mktemp("digits"))
    yield env, proc, result


def test_digits_run_is_tracked_checkpointed_and_registered(
    trained: tuple[RuntimeEnv, subprocess.CompletedProcess[str], dict[str, Any]], s3_server: S3Server, org: str
) -> None:
    from mlflow import MlflowClient

    env, proc, result = trained
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert result["test_accuracy"] > 0.9 and result["steps"] == 3 * 45
    client = MlflowClient(env.tracking_uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "3" and run.data.params["recipe"] == "digits-cnn"
    tags = run.data.tags
    assert (tags["haihe.job_id"], tags["haihe.org"], tags["haihe.project"], tags["haihe.user"]) == (
        env.job_id, org, "vision", "ada")
    assert client.get_experiment(run.info.experiment_id).name == f"{org}/vision"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 136))  # one point per optimizer step
    assert run.data.metrics["test_accuracy"] > 0.9
    assert len(client.get_metric_history(run.info.run_id, "epoch_loss")) == 3
    # zoo version with lineage: the job, the run (and no dataset: digits ships with scikit-learn)
    version = client.get_model_version(f"{org}~digits", "1")
    assert version.run_id == run.info.run_id
    assert version.tags["haihe.job_id"] == env.job_id and version.tags["haihe.run_id"] == run.info.run_id
    # saved in the pt2 format (torch.export: graph and weights), so loading it unpickles no class
    import mlflow.pytorch
    import torch

    assert tags["haihe.model_format"] == "pt2"
    mlflow.set_tracking_uri(env.tracking_uri)
    loaded = mlflow.pytorch.load_model(f"models:/{org}~digits/1")
    assert isinstance(loaded, torch.fx.GraphModule) and type(loaded).__name__ != "DigitsCNN"
    assert loaded(torch.zeros(5, 1, 8, 8)).shape == (5, 10)  # the batch dimension stays free
    # and the zoo lists it, with its lineage: a job's model is a zoo model like any other
    from haihe.model_zoo import ModelZoo

    detail = ModelZoo.connect(env.tracking_uri).get(f"{org}/digits:1")
    assert detail.selected is not None and detail.selected.lineage.job_id == env.job_id
    assert detail.selected.lineage.run_id == run.info.run_id
    # newest 2 of the checkpoints every 20 steps (20..120) are kept
    store = MinioStore(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, CKPT_BUCKET)
    keys = sorted(o.key.rsplit("/", 1)[1] for o in store.list(f"{org}/digits/"))
    assert keys == ["step-000000100.pt", "step-000000120.pt"]


def _push_arrays(s3: S3Server, org: str, dataset: str, arrays: dict[str, dict[str, Any]], tmp: Path) -> int:
    root = tmp / dataset
    for name, content in arrays.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".npy"):
            np.save(path, content["x"])
        else:
            np.savez(path, **content)
    store = MinioStore(s3.endpoint, s3.access_key, s3.secret_key, DATA_BUCKET)
    return push(root, LocalBackend(Uploads(store), org, dataset, created_by="ada"), HttpTransport()).version


def test_finetune_then_batch_infer_from_the_zoo(
    trained: tuple[RuntimeEnv, subprocess.CompletedProcess[str], dict[str, Any]], s3_server: S3Server,
    mlflow_server: MlflowServer, org: str, tmp_path: Path,
) -> None:
    from mlflow import MlflowClient

    assert trained[1].returncode == 0, trained[1].stderr[-3000:]
    train, test = digits_tensors(seed=1)  # another split than the base model's
    tx, ty = train.tensors  # type: ignore[attr-defined]
    vx, vy = test.tensors  # type: ignore[attr-defined]
    v = _push_arrays(s3_server, org, "digits-npz", {"train.npz": {"x": tx.numpy(), "y": ty.numpy()},
                                                     "test.npz": {"x": vx.numpy(), "y": vy.numpy()}}, tmp_path)
    env = common(s3_server, mlflow_server, org, from_zoo=f"{org}/digits:1", dataset=f"{org}/digits-npz@v{v}",
                 dataset_mount=str(tmp_path / "data"), register_as=f"{org}/digits-ft", params={"epochs": 1})
    proc, result = run_runtime(env, "finetune", tmp_path / "ft")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert result["test_accuracy"] > 0.9
    assert (tmp_path / "data" / "train.npz").is_file()  # the mount points at the staged version
    client = MlflowClient(mlflow_server.url)
    version = client.get_model_version(f"{org}~digits-ft", "1")
    assert version.tags["haihe.dataset"] == f"{org}/digits-npz@v{v}"
    assert version.tags["haihe.from_zoo"] == f"{org}/digits:1"
    ft_tags = client.get_run(result["run_id"]).data.tags
    assert ft_tags["haihe.dataset"] == f"{org}/digits-npz@v{v}"
    assert ft_tags["haihe.model_format"] == "pt2"  # a pt2 model fine-tuned and exported again

    # batch inference with the fine-tuned model over inputs without labels, in two files
    half = len(vx) // 2
    w = _push_arrays(s3_server, org, "digits-inputs", {"part-a.npy": {"x": vx[:half].numpy()},
                                                        "sub/part-b.npy": {"x": vx[half:].numpy()}}, tmp_path)
    out = f"s3://{DATA_BUCKET}/outputs/{org}/{uuid.uuid4().hex[:8]}"
    env = common(s3_server, mlflow_server, org, from_zoo=f"{org}/digits-ft:1", dataset=f"{org}/digits-inputs@v{w}",
                 output_uri=out)
    proc, result = run_runtime(env, "batch-infer", tmp_path / "bi")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert result["total_rows"] == len(vx)
    store = MinioStore(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, DATA_BUCKET)
    prefix = out.split(f"{DATA_BUCKET}/", 1)[1]
    summary = json.loads(read_all(store, f"{prefix}/_SUCCESS.json"))
    assert summary == {"files": 2, "rows": len(vx), "model": f"{org}/digits-ft:1",
                       "dataset": f"{org}/digits-inputs@v{w}", "job_id": env.job_id}
    predicted = []
    for name in ("part-a.npy", "sub/part-b.npy"):
        text = read_all(store, f"{prefix}/predictions/{name}.jsonl").decode()
        predicted += [json.loads(line)["prediction"] for line in io.StringIO(text) if line.strip()]
    accuracy = float(np.mean(np.array(predicted) == vy.numpy()))
    assert accuracy > 0.9
