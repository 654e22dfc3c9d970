"""The model zoo and tracking helpers against the real MLflow server (artifacts proxied into the real S3 server).

The session's MLflow server runs with ``--serve-artifacts``: clients upload through ``mlflow-artifacts:/`` and need
no S3 keys, so none are set here; the tests check that the bytes really land in the S3 server's bucket.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from haihe.cluster.mlflow_server import MlflowServer
from haihe.cluster.ports import PortPlan
from haihe.cluster.s3 import S3Server
from haihe.errors import InvalidInput, NotFound, TrackingUnavailable
from haihe.model_zoo import Lineage, ModelZoo, ZooRef
from haihe.model_zoo.tracking import TrackingClient, experiment_name, run_tags

pytestmark = [pytest.mark.mlflow, pytest.mark.s3]


def _org() -> str:
    return f"org{uuid.uuid4().hex[:8]}"


def _card(**over: Any) -> dict[str, Any]:
    card: dict[str, Any] = {
        "task": "tabular-regression",
        "description": "a tiny MLP for the zoo tests",
        "input_schema": [{"name": "x", "type": "tensor", "dtype": "float32", "shape": [-1, 4]}],
        "output_schema": [{"name": "y", "type": "tensor", "dtype": "float32", "shape": [-1, 2]}],
        "intended_use": "tests",
        "limitations": "random weights",
        "license": "Apache-2.0",
        "owner": "zoo tests",
        "metrics": {"loss": 0.2},
    }
    card.update(over)
    return card


@pytest.fixture
def zoo(mlflow_server: MlflowServer, tmp_path: Path) -> ModelZoo:
    return ModelZoo.connect(mlflow_server.url, cache_dir=tmp_path / "cache")


@pytest.fixture
def tracking(mlflow_server: MlflowServer) -> Iterator[TrackingClient]:
    with TrackingClient(mlflow_server.url) as client:
        yield client


@pytest.fixture
def fluent(mlflow_server: MlflowServer) -> Iterator[Any]:
    """MLflow's fluent API pointed at the session server, as a job runtime uses it (restored afterwards)."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server.url)
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri(previous)


def _train_tiny(mlflow: Any, experiment_id: str, tags: dict[str, str], seed: int) -> tuple[str, str, Any]:
    """Log a run like a training job: params, a loss history and a pickled torch model. Returns run, model uri."""
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
        mlflow.log_params({"lr": 0.01, "epochs": 3, "seed": seed})
        for step, loss in enumerate([0.9, 0.5, 0.2]):
            mlflow.log_metric("loss", loss, step=step)
        mlflow.log_text(f"seed {seed}\n", "notes/summary.txt")
        info = mlflow.pytorch.log_model(model, name="model", serialization_format="pickle", pip_requirements=["torch"])
    return run.info.run_id, info.model_uri, model


def test_job_run_registered_with_card_lineage_aliases_and_loaded(
    zoo: ModelZoo, tracking: TrackingClient, fluent: Any, s3_server: S3Server, tmp_path: Path
) -> None:
    import torch

    org, project = _org(), "vision"
    experiment = tracking.ensure_experiment(org, project)
    assert experiment.name == f"{org}/{project}" == experiment_name(org, project)
    assert tracking.ensure_experiment(org, project).experiment_id == experiment.experiment_id  # idempotent
    dataset = f"{org}/sensors@v3"
    tags = run_tags(job_id="job-1", org=org, project=project, user="alice", dataset=dataset)
    run_id, model_uri, model = _train_tiny(fluent, experiment.experiment_id, tags, seed=1)

    # the run as the portal reads it: params, tags, the loss curve, the logged model's artifacts
    run = tracking.get_run(run_id)
    assert run.params["lr"] == "0.01"
    assert run.job_id == "job-1"
    assert run.tags["haihe.dataset"] == dataset
    assert [(p.step, p.value) for p in tracking.metric_history(run_id, "loss")] == [(0, 0.9), (1, 0.5), (2, 0.2)]
    assert [r.run_id for r in tracking.search_runs([experiment.experiment_id], job_id="job-1")] == [run_id]
    assert tracking.search_runs([experiment.experiment_id], job_id="job-2") == []
    assert [(a.path, a.is_dir) for a in tracking.list_artifacts(run_id)] == [("notes", True)]
    assert [a.path for a in tracking.list_artifacts(run_id, "notes")] == ["notes/summary.txt"]
    assert tracking.read_artifact(run_id, "notes/summary.txt") == b"seed 1\n"
    with pytest.raises(InvalidInput):
        tracking.read_artifact(run_id, "../../etc/passwd")

    ref = f"{org}/tiny-mlp"
    v1 = zoo.register(ref, _card(), model_uri=model_uri, lineage=Lineage(job_id="job-1", dataset=dataset))
    assert (v1.version, v1.lineage) == (1, Lineage("job-1", run_id, dataset))
    assert v1.card is not None and v1.card.training_data == [dataset]

    # a second run → version 2, registered by run id + path
    run2, _, model2 = _train_tiny(fluent, experiment.experiment_id, {**tags, "haihe.job_id": "job-2"}, seed=2)
    v2 = zoo.register(
        ref, _card(metrics={"loss": 0.1}), run_id=run2, artifact_path="model", lineage=Lineage(job_id="job-2")
    )
    assert v2.version == 2 and v2.lineage.run_id == run2

    assert zoo.set_alias(ref, "production", 1) is not None
    zoo.set_alias(ref, "staging", 2)
    zoo.set_alias(ref, "canary", 2)
    zoo.set_alias(ref, "canary", None)

    detail = zoo.get(ref)
    assert detail.model.visibility == "private" and detail.model.owner_org == org
    assert detail.model.task == "tabular-regression"
    assert dict(detail.model.aliases) == {"production": 1, "staging": 2}
    assert [v.version for v in detail.versions] == [2, 1]
    assert detail.versions[1].lineage == Lineage("job-1", run_id, dataset)
    assert detail.model.card is not None and detail.model.card.metrics == {"loss": 0.1}  # newest version's card
    assert zoo.get(f"{ref}@production").selected is not None
    assert zoo.get(f"{ref}@production").selected.version == 1  # type: ignore[union-attr]

    # both directions: the dataset version lists the model version trained on it
    from_data = zoo.models_from_dataset(dataset)
    assert [(str(v.ref), v.lineage.job_id) for v in from_data] == [(f"{ref}:1", "job-1")]

    # load by alias gives back the very model that was trained
    x = torch.randn(5, 4)
    loaded = zoo.load(f"{ref}@production")
    assert torch.allclose(loaded(x), model(x))
    assert torch.allclose(zoo.load(f"{ref}@staging")(x), model2(x))
    assert torch.allclose(zoo.load(f"{ref}:1")(x), model(x))

    # export downloads the model directory
    exported = zoo.export(f"{ref}@staging", tmp_path / "export")
    assert (exported / "MLmodel").is_file()

    # the artifact bytes went through the proxy into the S3 server's bucket
    keys = [o.object_name or "" for o in s3_server.client().list_objects("mlflow", prefix="artifacts/", recursive=True)]
    model_id = model_uri.removeprefix("models:/")
    assert any(model_id in k and k.endswith("MLmodel") for k in keys)

    assert [m.ref.name for m in zoo.list(org=org)] == ["tiny-mlp"]
    assert [m.ref.name for m in zoo.list(org=org, task="tabular-regression", text="TINY")] == ["tiny-mlp"]
    assert zoo.list(org=org, task="text-embedding") == []
    assert zoo.set_visibility(ref, "public").visibility == "public"
    assert [str(m.ref) for m in zoo.list(org=org, visibility="public")] == [ref]

    zoo.delete(f"{ref}:1")
    assert [v.version for v in zoo.get(ref).versions] == [2]
    assert zoo.models_from_dataset(dataset) == []
    zoo.delete(ref)
    with pytest.raises(NotFound):
        zoo.get(ref)


def test_card_missing_fields_registers_nothing(zoo: ModelZoo, tracking: TrackingClient, fluent: Any) -> None:
    org = _org()
    experiment = tracking.ensure_experiment(org, "p")
    _, model_uri, _ = _train_tiny(fluent, experiment.experiment_id, {}, seed=3)
    card = _card()
    del card["license"]
    with pytest.raises(InvalidInput) as info:
        zoo.register(f"{org}/no-card", card, model_uri=model_uri)
    assert info.value.field == "card.license"
    assert "license" in info.value.message
    with pytest.raises(InvalidInput) as info:
        zoo.register(f"{org}/no-card", _card(input_schema=[{"name": "x", "type": "tensr"}]), model_uri=model_uri)
    assert info.value.field == "card.input_schema[0].type"
    with pytest.raises(NotFound):
        zoo.get(f"{org}/no-card")
    assert zoo.list(org=org) == []
    # a lineage run that is not the model's run is refused too, before anything is written
    with pytest.raises(InvalidInput) as info:
        zoo.register(f"{org}/no-card", _card(), model_uri=model_uri, lineage=Lineage(run_id="0" * 32))
    assert info.value.field == "lineage.run_id"
    assert zoo.list(org=org) == []


def test_alias_on_missing_version_changes_nothing(zoo: ModelZoo, tracking: TrackingClient, fluent: Any) -> None:
    org = _org()
    experiment = tracking.ensure_experiment(org, "p")
    _, model_uri, _ = _train_tiny(fluent, experiment.experiment_id, {}, seed=4)
    ref = f"{org}/aliased"
    zoo.register(ref, _card(), model_uri=model_uri)
    zoo.set_alias(ref, "production", 1)
    with pytest.raises(InvalidInput) as info:
        zoo.set_alias(ref, "production", 7)
    assert info.value.field == "version"
    with pytest.raises(InvalidInput) as info:
        zoo.set_alias(ref, "latest", 1)
    assert info.value.field == "alias"
    with pytest.raises(NotFound):
        zoo.set_alias(f"{org}/missing", "production", 1)
    assert dict(zoo.get(ref).model.aliases) == {"production": 1}
    with pytest.raises(NotFound):
        zoo.load(f"{ref}@staging")
    with pytest.raises(NotFound):
        tracking.get_experiment(org, "nope")


def test_stopped_server_gives_tracking_unavailable(
    s3_server: S3Server, port_plan: PortPlan, services_home: Path, tmp_path: Path
) -> None:
    # our own server on a port of this session's range that no fixture uses; the shared one stays up
    server = MlflowServer(
        services_home / f"mlflow-down-{uuid.uuid4().hex[:6]}",
        port_plan.base + 470,
        s3_endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
    )
    server.start(timeout=180)
    try:
        zoo = ModelZoo.connect(server.url, cache_dir=tmp_path)
        org = _org()
        assert zoo.list(org=org) == []
        with TrackingClient(server.url) as tracking:
            assert tracking.ensure_experiment(org, "p").name == f"{org}/p"
    finally:
        assert server.stop()
    deadline = time.monotonic() + 30
    while server.is_ready() and time.monotonic() < deadline:
        time.sleep(0.2)

    started = time.monotonic()
    with pytest.raises(TrackingUnavailable) as info:
        zoo.list(org=org)
    with pytest.raises(TrackingUnavailable):
        zoo.get(f"{org}/anything")
    with TrackingClient(server.url) as tracking, pytest.raises(TrackingUnavailable):
        tracking.ensure_experiment(org, "p")
    print(f"three calls to a stopped MLflow failed in {time.monotonic() - started:.1f} s")
    assert info.value.status == 503
    assert "unreachable" in info.value.message


def test_refs_are_encoded_for_mlflow(zoo: ModelZoo) -> None:
    ref = ZooRef.parse("acme/bert.v2@production")
    assert ref.registered_name == "acme~bert.v2"
    with pytest.raises(NotFound):
        zoo.load(ref)
