"""The runtime's MLflow REST client against a scripted HTTP server (what MLflow answers is scripted here; the real
server is driven in tests/integration/test_runtime_tracking_rest.py): errors, retries, auth, the JSON it sends."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from haihe.jobs.runtime.mlflow_rest import Metric, MlflowRestError, Param, RestTrackingClient, RunTag

Answer = tuple[int, dict[str, Any]]


class Scripted:
    """Answers each request with the next scripted answer for its path; records what came."""

    def __init__(self) -> None:
        self.answers: dict[str, list[Answer]] = {}
        self.seen: list[tuple[str, str, dict[str, str], bytes]] = []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        script = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0].removeprefix("/api/2.0/mlflow/")
                script.seen.append((self.command, self.path, dict(self.headers), body))
                queue = script.answers.get(path) or [(200, {})]
                status, payload = queue.pop(0) if len(queue) > 1 else queue[0]
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def server() -> Iterator[tuple[Scripted, str]]:
    script = Scripted()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), script.handler())
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield script, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def client(url: str, slept: list[float] | None = None, **environ: str) -> RestTrackingClient:
    return RestTrackingClient(url, environ=environ, sleep=(slept if slept is not None else []).append)


def test_a_missing_experiment_is_created_and_a_creation_race_reads_the_winners_id(
        server: tuple[Scripted, str]) -> None:
    script, url = server
    missing = (404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such experiment"})
    script.answers["experiments/get-by-name"] = [missing, (200, {"experiment": {"experiment_id": "7"}})]
    script.answers["experiments/create"] = [(400, {"error_code": "RESOURCE_ALREADY_EXISTS", "message": "taken"})]
    assert client(url).experiment_id("acme/vision") == "7"
    assert [path.split("?")[0].rsplit("/", 1)[-1] for _, path, _, _ in script.seen] == \
        ["get-by-name", "create", "get-by-name"]
    assert "experiment_name=acme%2Fvision" in script.seen[0][1]


def test_mlflow_errors_name_the_code_and_are_not_retried_unless_transient(server: tuple[Scripted, str]) -> None:
    script, url = server
    script.answers["runs/create"] = [(403, {"error_code": "PERMISSION_DENIED", "message": "jobs may not write"})]
    slept: list[float] = []
    with pytest.raises(MlflowRestError) as caught:
        client(url, slept).create_run("1", {"haihe.job_id": "j"})
    assert caught.value.status == 403 and caught.value.error_code == "PERMISSION_DENIED"
    assert "jobs may not write" in str(caught.value) and slept == [] and len(script.seen) == 1

    script.seen.clear()
    busy = (503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"})
    script.answers["runs/update"] = [busy, busy, (200, {})]
    client(url, slept).update_run("r1", "RUNNING")  # two transient failures, then it goes through
    assert len(script.seen) == 3 and slept == [0.5, 1.0]

    slept.clear()
    script.answers["runs/update"] = [busy]
    with pytest.raises(MlflowRestError) as caught:
        client(url, slept, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1").update_run("r1", "RUNNING")
    assert caught.value.status == 503 and slept == [0.5]


def test_an_unreachable_server_is_an_error_after_the_retries() -> None:
    slept: list[float] = []
    with pytest.raises(MlflowRestError, match="runs/log-batch: URLError"):
        client("http://127.0.0.1:9", slept).log_batch("r", metrics=[Metric("loss", 1.0, 0, 0)])
    assert slept == [0.5, 1.0]
    with pytest.raises(MlflowRestError, match="only http"):
        client("file:///tmp/mlruns").get_experiment_id("x")


def test_the_token_or_basic_auth_is_sent_as_mlflows_client_sends_it(server: tuple[Scripted, str]) -> None:
    script, url = server
    script.answers["runs/search"] = [(200, {"runs": [{"info": {"run_id": "abc"}}]})]
    assert client(url, MLFLOW_TRACKING_TOKEN="hjt_secret").find_run("3", "tags.x = '1'") == "abc"
    assert script.seen[-1][2]["Authorization"] == "Bearer hjt_secret"
    assert RestTrackingClient(url, token="hjt_own", environ={"MLFLOW_TRACKING_TOKEN": "other"}).find_run("3", "") \
        == "abc"
    assert script.seen[-1][2]["Authorization"] == "Bearer hjt_own"  # the contract's field wins over the variable
    client(url, MLFLOW_TRACKING_USERNAME="ada", MLFLOW_TRACKING_PASSWORD="pw").find_run("3", "")
    assert script.seen[-1][2]["Authorization"] == "Basic YWRhOnB3"
    body = json.loads(script.seen[-1][3])
    assert body == {"experiment_ids": ["3"], "filter": "", "max_results": 1, "order_by": ["start_time DESC"]}
    script.answers["runs/search"] = [(200, {})]  # MLflow leaves "runs" out when there are none
    assert client(url).find_run("3", "") is None


def test_a_batch_is_strict_json_with_non_finite_values_spelt_as_mlflow_reads_them(
        server: tuple[Scripted, str]) -> None:
    script, url = server
    metrics = [Metric("loss", math.nan, 1, 0), Metric("up", math.inf, 1, 0), Metric("down", -math.inf, 1, 0),
               Metric("acc", 0.5, 1, 2)]
    client(url).log_batch("r1", metrics=metrics, params=[Param("lr", "0.1")], tags=[RunTag("t", "v")])
    body = json.loads(script.seen[-1][3], parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))
    assert [m["value"] for m in body["metrics"]] == ["NaN", "Infinity", "-Infinity", 0.5]
    assert body["metrics"][3] == {"key": "acc", "value": 0.5, "timestamp": 1, "step": 2}
    assert body["params"] == [{"key": "lr", "value": "0.1"}] and body["tags"] == [{"key": "t", "value": "v"}]
    assert body["run_id"] == "r1"


def test_the_health_probe_carries_the_token_and_says_why_not(server: tuple[Scripted, str]) -> None:
    from haihe.jobs.runtime import tracking

    script, url = server
    script.answers["/health"] = [(200, {})]
    assert RestTrackingClient(url, token="hjt_job", environ={}).health(5) is None
    assert script.seen[-1][1] == "/health" and script.seen[-1][2]["Authorization"] == "Bearer hjt_job"
    script.answers["/health"] = [(503, {})]
    assert client(url).health(5) == "HTTP 503"
    assert (tracking.probe("http://127.0.0.1:9", timeout=2) or "").startswith("URLError")
    assert tracking.probe("file:///tmp/mlruns") is None  # only http(s) servers are probed
