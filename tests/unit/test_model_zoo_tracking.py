"""TrackingClient against a stateful fake of MLflow's REST API, injected as an httpx transport."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from haihe.errors import InvalidInput, NotFound, PayloadTooLarge, TrackingUnavailable
from haihe.model_zoo.mlflow_backend import FAST_FAIL_ENV, fast_fail_defaults
from haihe.model_zoo.tracking import TrackingClient, run_tags


class FakeMlflow:
    """Just enough of MLflow's REST API: experiments, runs with tags/params/metrics, artifacts."""

    def __init__(self) -> None:
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.history: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.files: dict[tuple[str, str], bytes] = {}
        self.calls: list[str] = []

    def add_run(self, run_id: str, experiment_id: str, tags: dict[str, str], start: int) -> None:
        self.runs[run_id] = {
            "info": {"run_id": run_id, "experiment_id": experiment_id, "status": "FINISHED", "start_time": start},
            "data": {"tags": [{"key": k, "value": v} for k, v in tags.items()], "params": [], "metrics": []},
        }

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls.append(path)
        q = request.url.params
        body = json.loads(request.content) if request.content else {}
        missing = httpx.Response(404, json={"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "nope"})
        if path.endswith("/experiments/get-by-name"):
            exp = self.experiments.get(q["experiment_name"])
            return httpx.Response(200, json={"experiment": exp}) if exp else missing
        if path.endswith("/experiments/create"):
            if body["name"] in self.experiments:
                return httpx.Response(400, json={"error_code": "RESOURCE_ALREADY_EXISTS", "message": "exists"})
            exp_id = str(len(self.experiments) + 1)
            self.experiments[body["name"]] = {"experiment_id": exp_id, "name": body["name"], "tags": body["tags"]}
            return httpx.Response(200, json={"experiment_id": exp_id})
        if path.endswith("/runs/get"):
            run = self.runs.get(q["run_id"])
            return httpx.Response(200, json={"run": run}) if run else missing
        if path.endswith("/runs/set-tag"):
            if body["run_id"] not in self.runs:
                return missing
            self.runs[body["run_id"]]["data"]["tags"].append({"key": body["key"], "value": body["value"]})
            return httpx.Response(200, json={})
        if path.endswith("/runs/search"):
            runs = [r for r in self.runs.values() if r["info"]["experiment_id"] in body["experiment_ids"]]
            if body["filter"]:
                job = body["filter"].split("= '")[1].rstrip("'")
                runs = [r for r in runs if {"key": "haihe.job_id", "value": job} in r["data"]["tags"]]
            runs.sort(key=lambda r: -r["info"]["start_time"])
            start = int(body.get("page_token", "0"))
            page = runs[start : start + 1]  # one run per page: exercises pagination
            out: dict[str, Any] = {"runs": page}
            if start + 1 < len(runs):
                out["next_page_token"] = str(start + 1)
            return httpx.Response(200, json=out)
        if path.endswith("/metrics/get-history"):
            points = self.history.get((q["run_id"], q["metric_key"]), [])
            start = int(q.get("page_token", "0"))
            out = {"metrics": points[start : start + 2]}
            if start + 2 < len(points):
                out["next_page_token"] = str(start + 2)
            return httpx.Response(200, json=out)
        if path.endswith("/artifacts/list"):
            prefix = q.get("path", "")
            files = [
                {"path": p, "is_dir": False, "file_size": len(data)}
                for (run, p), data in self.files.items()
                if run == q["run_id"] and p.startswith(prefix)
            ]
            return httpx.Response(200, json={"files": files})
        if path == "/get-artifact":
            data = self.files.get((q["run_id"], q["path"]))
            return httpx.Response(200, content=data) if data is not None else missing
        return httpx.Response(500, text="boom")


@pytest.fixture
def fake() -> FakeMlflow:
    return FakeMlflow()


@pytest.fixture
def client(fake: FakeMlflow) -> TrackingClient:
    return TrackingClient("http://mlflow.test", http=httpx.Client(transport=httpx.MockTransport(fake.handler)))


def test_experiment_per_project_is_created_once(client: TrackingClient, fake: FakeMlflow) -> None:
    first = client.ensure_experiment("acme", "vision")
    again = client.ensure_experiment("acme", "vision")
    assert first == again and first.name == "acme/vision"
    assert first.tags == {"haihe.org": "acme", "haihe.project": "vision"}
    assert fake.calls.count("/api/2.0/mlflow/experiments/create") == 1
    with pytest.raises(InvalidInput) as info:
        client.ensure_experiment("acme", "../other")
    assert info.value.field == "project"


def test_an_experiment_created_concurrently_is_reused(client: TrackingClient, fake: FakeMlflow) -> None:
    original = fake.handler

    def racing(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/experiments/create"):
            original(request)  # someone else won the race
        return original(request)

    racy = TrackingClient("http://mlflow.test", http=httpx.Client(transport=httpx.MockTransport(racing)))
    assert racy.ensure_experiment("acme", "p").experiment_id == "1"


def test_run_tags_tag_and_read_runs(client: TrackingClient, fake: FakeMlflow) -> None:
    tags = run_tags(job_id="j-7", org="acme", project="p", user="alice", dataset="acme/docs@v2")
    assert tags == {
        "haihe.job_id": "j-7",
        "haihe.org": "acme",
        "haihe.project": "p",
        "haihe.user": "alice",
        "mlflow.user": "alice",
        "haihe.dataset": "acme/docs@v2",
    }
    with pytest.raises(InvalidInput) as info:
        run_tags(job_id="j", org="acme", project="p", user="u", dataset="docs")
    assert info.value.field == "dataset"
    fake.add_run("r1", "1", {}, start=1)
    fake.add_run("r2", "1", {"haihe.job_id": "j-8"}, start=2)
    fake.add_run("r3", "2", {}, start=3)
    client.tag_run("r1", tags)
    run = client.get_run("r1")
    assert run.job_id == "j-7" and run.tags["haihe.dataset"] == "acme/docs@v2"
    assert [r.run_id for r in client.search_runs(["1"])] == ["r2", "r1"]
    assert [r.run_id for r in client.search_runs(["1", "2"], job_id="j-7")] == ["r1"]
    with pytest.raises(InvalidInput):
        client.search_runs(["1"], job_id="x' OR '1'='1")
    with pytest.raises(NotFound):
        client.get_run("r404")


def test_metric_history_is_paged_and_ordered(client: TrackingClient, fake: FakeMlflow) -> None:
    fake.history[("r1", "loss")] = [
        {"key": "loss", "value": v, "step": s, "timestamp": 100 + s} for s, v in [(2, 0.3), (0, 0.9), (1, 0.5)]
    ]
    assert [(p.step, p.value) for p in client.metric_history("r1", "loss")] == [(0, 0.9), (1, 0.5), (2, 0.3)]
    assert client.metric_history("r1", "acc") == []


def test_artifacts_are_listed_and_read_with_a_size_cap(client: TrackingClient, fake: FakeMlflow) -> None:
    fake.files[("r1", "notes/a.txt")] = b"hello"
    assert [(a.path, a.size) for a in client.list_artifacts("r1", "notes")] == [("notes/a.txt", 5)]
    assert client.read_artifact("r1", "notes/a.txt") == b"hello"
    with pytest.raises(PayloadTooLarge):
        client.read_artifact("r1", "notes/a.txt", max_bytes=3)
    with pytest.raises(NotFound):
        client.read_artifact("r1", "notes/b.txt")
    for bad in ("../x", "/etc/passwd", "a//b", "a\\b"):
        with pytest.raises(InvalidInput):
            client.read_artifact("r1", bad)


def test_unreachable_and_failing_servers_are_tracking_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    down = TrackingClient("http://mlflow.test", http=httpx.Client(transport=httpx.MockTransport(refuse)))
    with pytest.raises(TrackingUnavailable) as info:
        down.get_run("r1")
    assert info.value.status == 503 and info.value.details["component"] == "mlflow"
    with pytest.raises(TrackingUnavailable):
        down.read_artifact("r1", "a.txt")
    broken = TrackingClient(
        "http://mlflow.test", http=httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(502)))
    )
    with pytest.raises(TrackingUnavailable):
        broken.ensure_experiment("acme", "p")
    with pytest.raises(InvalidInput):
        TrackingClient("mlflow.test:5000")


def test_fast_fail_defaults_do_not_override_the_operator() -> None:
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5"}
    fast_fail_defaults(env)
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "5"
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == FAST_FAIL_ENV["MLFLOW_HTTP_REQUEST_TIMEOUT"]
    assert int(env["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]) >= 0  # MLflow parses it as an int
