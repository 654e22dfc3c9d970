"""Issue 5 on Ray: digits-cnn submitted through the CLI runs as 2 Ray Train workers (DDP, gloo), logs its test
accuracy to MLflow, and registers a zoo version whose lineage names the job, the run and the data."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.live_platform import LivePlatform, start_live_platform

pytestmark = [pytest.mark.ray, pytest.mark.mlflow, pytest.mark.s3, pytest.mark.slow]


@pytest.fixture
def live(tmp_path: Path, ray_head: Any, s3_server: Any, mlflow_server: Any) -> Iterator[LivePlatform]:
    yield from start_live_platform(tmp_path, schedulers={"ray": ray_head.scheduler_url}, default="ray",
                                   s3=s3_server, mlflow=mlflow_server)


def _mlflow(mlflow_url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    url = f"{mlflow_url}/api/2.0/mlflow/{path}"
    search = path == "runs/search"  # MLflow: searching runs is a POST, the other reads are GETs
    r = httpx.post(url, json=body, timeout=30) if search else httpx.get(url, params=body, timeout=30)
    r.raise_for_status()
    return dict(r.json())


def test_digits_cnn_through_the_cli_on_ray_train(live: LivePlatform, tmp_path: Path, mlflow_server: Any) -> None:
    cli = live.cli()
    cli.bootstrap("acme", "vision", "alice")
    spec = tmp_path / "digits.yaml"
    spec.write_text(
        "name: digits\n"
        "project: acme/vision\n"
        "recipe: digits-cnn\n"
        "launcher: ray_train\n"
        "resources: {nodes: 2, cpus_per_task: 1, time_limit: 20}\n"
        "register: {name: digits-cnn}\n"
    )
    out = cli.run("submit", str(spec), "--follow", as_user="alice", timeout=900)
    assert "SUCCEEDED" in out
    job_id = re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", out)
    assert job_id, out[-2000:]
    job = cli.json("jobs", "show", job_id.group(0), as_user="alice")
    assert job["state"] == "SUCCEEDED" and job["scheduler"] == "ray"
    kinds = [e["kind"] for e in job["events"]]
    assert kinds[:2] == ["created", "submitted"] and kinds[-1] == "finished" and "started" in kinds
    # both Ray Train workers report the same final loss
    results = [json.loads(line.split("HAIHE_RESULT ", 1)[1]) for line in out.splitlines() if "HAIHE_RESULT " in line]
    by_rank = {r["rank"]: r for r in results}
    assert set(by_rank) == {0, 1}, results
    assert by_rank[0]["final_loss"] == pytest.approx(by_rank[1]["final_loss"])
    # test accuracy is in MLflow, above 0.9, on the project's experiment, tagged with the job
    exp = _mlflow(mlflow_server.url, "experiments/get-by-name", {"experiment_name": "acme/vision"})
    exp_id = exp["experiment"]["experiment_id"]
    runs = _mlflow(mlflow_server.url, "runs/search", {"experiment_ids": [exp_id],
                                                        "filter": f"tags.`haihe.job_id` = '{job_id.group(0)}'"})
    assert len(runs["runs"]) == 1
    metrics = {m["key"]: m["value"] for m in runs["runs"][0]["data"]["metrics"]}
    assert metrics["test_accuracy"] > 0.9
    run_id = runs["runs"][0]["info"]["run_id"]
    # a zoo version exists whose lineage names the job and the run
    versions = _mlflow(mlflow_server.url, "model-versions/search", {"filter": "name = 'acme~digits-cnn'"})
    assert versions.get("model_versions"), versions
    tags = {t["key"]: t["value"] for t in versions["model_versions"][0].get("tags", [])}
    assert tags.get("haihe.job_id") == job_id.group(0) and tags.get("haihe.run_id") == run_id
    assert tags.get("haihe.dataset") == "builtin:sklearn.datasets.load_digits"
