"""Experiment tracking through MLflow's REST API (httpx): experiments per project, run tags, runs, metric
history and artifacts — what the platform reads for the portal's loss curves and what jobs tag their runs with.

One experiment per project, named ``<org>/<project>``. Runs carry ``haihe.job_id``, ``haihe.org``,
``haihe.project``, ``haihe.user`` and ``haihe.dataset`` tags so a run can be found from its job and vice versa.
HTTP goes through one injected ``httpx.Client`` (unit tests hand in a transport backed by a fake server); every
failure is translated here: unreachable → TrackingUnavailable, missing → NotFound, rejected → InvalidInput.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from haihe.errors import (
    AuthenticationRequired,
    Conflict,
    HaiheError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    TrackingUnavailable,
)
from haihe.model_zoo.names import DatasetRef, check_name

TAG_JOB = "haihe.job_id"
TAG_ORG = "haihe.org"
TAG_PROJECT = "haihe.project"
TAG_USER = "haihe.user"
TAG_DATASET = "haihe.dataset"
MAX_ARTIFACT_BYTES = 10 * 1024 * 1024  # the portal previews artifacts; bigger ones are downloaded by clients
_API = "/api/2.0/mlflow"


def experiment_name(org: str, project: str) -> str:
    """The experiment of a project: ``<org>/<project>``."""
    return f"{check_name(org, 'org')}/{check_name(project, 'project')}"


def run_tags(
    *, job_id: str, org: str, project: str, user: str, dataset: str | DatasetRef | None = None
) -> dict[str, str]:
    """The tags every platform run carries (``mlflow.user`` too, so MLflow's UI shows the real user)."""
    if not job_id or len(job_id) > 128:
        raise InvalidInput("job_id must be 1-128 characters", field="job_id")
    if not user or len(user) > 256:
        raise InvalidInput("user must be 1-256 characters", field="user")
    tags = {
        TAG_JOB: job_id,
        TAG_ORG: check_name(org, "org"),
        TAG_PROJECT: check_name(project, "project"),
        TAG_USER: user,
        "mlflow.user": user,
    }
    if dataset is not None:
        tags[TAG_DATASET] = str(dataset if isinstance(dataset, DatasetRef) else DatasetRef.parse(dataset))
    return tags


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    name: str
    artifact_location: str
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunInfo:
    """A run as the portal shows it: status, times (ms since the epoch), params, latest metrics, tags."""

    run_id: str
    experiment_id: str
    name: str
    status: str
    start_ms: int | None
    end_ms: int | None
    artifact_uri: str
    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def job_id(self) -> str | None:
        return self.tags.get(TAG_JOB)


@dataclass(frozen=True)
class MetricPoint:
    step: int
    value: float
    timestamp_ms: int


@dataclass(frozen=True)
class ArtifactEntry:
    path: str
    is_dir: bool
    size: int | None


def _tags(items: Sequence[Mapping[str, Any]] | None) -> dict[str, str]:
    return {str(t["key"]): str(t.get("value", "")) for t in items or ()}


def _run(body: Mapping[str, Any]) -> RunInfo:
    info = body.get("info", {})
    data = body.get("data", {})
    return RunInfo(
        run_id=info["run_id"],
        experiment_id=str(info.get("experiment_id", "")),
        name=info.get("run_name", ""),
        status=info.get("status", ""),
        start_ms=int(info["start_time"]) if info.get("start_time") is not None else None,
        end_ms=int(info["end_time"]) if info.get("end_time") is not None else None,
        artifact_uri=info.get("artifact_uri", ""),
        params=_tags(data.get("params")),
        metrics={m["key"]: float(m["value"]) for m in data.get("metrics", ())},
        tags=_tags(data.get("tags")),
    )


class TrackingClient:
    """Reads and tags runs on one MLflow server. ``http`` is the seam: any ``httpx.Client`` (tests use a fake
    transport). Timeouts are short: a dead server should fail a page in seconds, not hang it."""

    def __init__(self, url: str, *, http: httpx.Client | None = None, timeout: float = 5.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise InvalidInput("the MLflow tracking URL must be http(s)://host:port", field="mlflow_url")
        self.url = url.rstrip("/")
        self._owns_http = http is None
        self.http = http or httpx.Client(timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)))

    def close(self) -> None:
        if self._owns_http:
            self.http.close()

    def __enter__(self) -> TrackingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transport ----
    def _request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, f"{self.url}{path}", **kwargs)
        except httpx.TransportError as exc:
            raise TrackingUnavailable(
                f"{what}: the MLflow tracking server at {self.url} is unreachable ({type(exc).__name__})",
                component="mlflow",
            ) from exc
        if response.is_success:
            return response
        raise _error(response, what)

    def _json(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        response = self._request(method, f"{_API}{path}", what, **kwargs)
        try:
            body = response.json()
        except ValueError:
            raise TrackingUnavailable(
                f"{what}: the tracking server sent a non-JSON answer", component="mlflow"
            ) from None
        return body if isinstance(body, dict) else {}

    # ---- experiments ----
    def get_experiment(self, org: str, project: str) -> Experiment:
        name = experiment_name(org, project)
        body = self._json("GET", "/experiments/get-by-name", f"experiment {name}", params={"experiment_name": name})
        exp = body["experiment"]
        return Experiment(
            experiment_id=str(exp["experiment_id"]),
            name=exp["name"],
            artifact_location=exp.get("artifact_location", ""),
            tags=_tags(exp.get("tags")),
        )

    def ensure_experiment(self, org: str, project: str) -> Experiment:
        """The project's experiment, created (tagged with org and project) if it does not exist yet."""
        name = experiment_name(org, project)
        try:
            return self.get_experiment(org, project)
        except NotFound:
            pass
        tags = [{"key": TAG_ORG, "value": org}, {"key": TAG_PROJECT, "value": project}]
        with contextlib.suppress(Conflict):  # created concurrently
            self._json("POST", "/experiments/create", f"experiment {name}", json={"name": name, "tags": tags})
        return self.get_experiment(org, project)

    # ---- runs ----
    def tag_run(self, run_id: str, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self._json("POST", "/runs/set-tag", f"run {run_id}", json={"run_id": run_id, "key": key, "value": value})

    def get_run(self, run_id: str) -> RunInfo:
        return _run(self._json("GET", "/runs/get", f"run {run_id}", params={"run_id": run_id})["run"])

    def search_runs(
        self, experiment_ids: Sequence[str], *, job_id: str | None = None, max_results: int = 1000
    ) -> list[RunInfo]:
        """Runs of the experiments (newest first), optionally only those of one platform job."""
        filter_string = ""
        if job_id is not None:
            if "'" in job_id or "\\" in job_id:
                raise InvalidInput("job_id may not contain quotes", field="job_id")
            filter_string = f"tags.`{TAG_JOB}` = '{job_id}'"
        out: list[RunInfo] = []
        token: str | None = None
        while len(out) < max_results:
            body: dict[str, Any] = {
                "experiment_ids": list(experiment_ids),
                "filter": filter_string,
                "max_results": min(1000, max_results - len(out)),
                "order_by": ["attributes.start_time DESC"],
            }
            if token:
                body["page_token"] = token
            page = self._json("POST", "/runs/search", "run search", json=body)
            out.extend(_run(r) for r in page.get("runs", ()))
            token = page.get("next_page_token")
            if not token:
                break
        return out

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        """Every logged value of one metric, by step (the loss curve)."""
        points: list[MetricPoint] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"run_id": run_id, "metric_key": key, "max_results": 25000}
            if token:
                params["page_token"] = token
            page = self._json("GET", "/metrics/get-history", f"run {run_id} metric {key}", params=params)
            points.extend(
                MetricPoint(int(m.get("step", 0)), float(m["value"]), int(m.get("timestamp", 0)))
                for m in page.get("metrics", ())
            )
            token = page.get("next_page_token")
            if not token:
                break
        return sorted(points, key=lambda p: (p.step, p.timestamp_ms))

    # ---- artifacts ----
    def list_artifacts(self, run_id: str, path: str = "") -> list[ArtifactEntry]:
        params = {"run_id": run_id, **({"path": _artifact_path(path)} if path else {})}
        body = self._json("GET", "/artifacts/list", f"run {run_id} artifacts", params=params)
        return [
            ArtifactEntry(f["path"], bool(f.get("is_dir")), int(f["file_size"]) if "file_size" in f else None)
            for f in body.get("files", ())
        ]

    def read_artifact(self, run_id: str, path: str, *, max_bytes: int = MAX_ARTIFACT_BYTES) -> bytes:
        """The bytes of one artifact file (proxied by the server: the caller needs no S3 credentials)."""
        what = f"run {run_id} artifact {path}"
        params = {"run_id": run_id, "path": _artifact_path(path)}
        try:
            with self.http.stream("GET", f"{self.url}/get-artifact", params=params) as response:
                if not response.is_success:
                    response.read()
                    raise _error(response, what)
                chunks: list[bytes] = []
                total = 0
                for chunk in response.iter_bytes():
                    total += len(chunk)
                    if total > max_bytes:
                        raise PayloadTooLarge(f"{what} is larger than {max_bytes} bytes", field="path")
                    chunks.append(chunk)
        except httpx.TransportError as exc:
            raise TrackingUnavailable(f"{what}: the MLflow tracking server is unreachable", component="mlflow") from exc
        return b"".join(chunks)


def _artifact_path(path: str) -> str:
    parts = path.removesuffix("/").split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in path or "\x00" in path:
        raise InvalidInput(f"artifact path {path[:80]!r} is not a relative path", field="path")
    return "/".join(parts)


def _error(response: httpx.Response, what: str) -> HaiheError:
    code = ""
    message = ""
    try:
        body = response.json()
        if isinstance(body, dict):
            code = str(body.get("error_code", ""))
            message = str(body.get("message", ""))[:300]
    except ValueError:
        message = response.text[:300]
    status = response.status_code
    if status == 404 or code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
        return NotFound(f"{what}: not found")
    if code in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
        return Conflict(f"{what}: already exists")
    if status == 401:
        return AuthenticationRequired(f"{what}: the tracking server wants credentials")
    if status == 403:
        return PermissionDenied(f"{what}: the tracking server refused access")
    if status < 500:
        return InvalidInput(f"{what}: {message or code or status}", field=None, mlflow_code=code)
    return TrackingUnavailable(f"{what}: the tracking server failed ({status})", component="mlflow")
