"""The few MLflow tracking calls a job's runtime makes, over MLflow's REST API with the standard library.

Rank 0 of every tracked job used to import MLflow's client (3+ s of CPU on these hosts, more than a short job's
own work) to find its experiment, start or continue a run, log batches and end it. These are seven REST calls;
this module makes them with ``urllib`` and JSON, and so adds milliseconds, not seconds, to a job's start. A
recipe that logs a model still uses MLflow itself (``MlflowTracker.log_model``), and so may the user's code.

The client reads the same settings as MLflow's own: ``MLFLOW_TRACKING_TOKEN`` (sent as ``Authorization: Bearer``,
the platform's proxy wants the job's token), ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` (basic auth),
``MLFLOW_TRACKING_INSECURE_TLS``, ``MLFLOW_TRACKING_SERVER_CERT_PATH``, ``MLFLOW_HTTP_REQUEST_TIMEOUT`` and
``MLFLOW_HTTP_REQUEST_MAX_RETRIES``. Connection errors, 429 and 5xx are retried a few times with backoff; MLflow's
error body (``error_code``, ``message``) becomes :class:`MlflowRestError`.
"""

from __future__ import annotations

import base64
import json
import math
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

API = "/api/2.0/mlflow/"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Metric:
    key: str
    value: float
    timestamp: int  # ms since the epoch
    step: int


@dataclass(frozen=True)
class Param:
    key: str
    value: str


@dataclass(frozen=True)
class RunTag:
    key: str
    value: str


class MlflowRestError(Exception):
    """MLflow answered with an error (``error_code`` as MLflow names it), or could not be reached (status None)."""

    def __init__(self, message: str, *, status: int | None = None, error_code: str = "") -> None:
        super().__init__(message)
        self.status, self.error_code = status, error_code


def _number(value: float) -> float | str:
    """MLflow's JSON (protobuf's) spells the non-finite doubles as strings; a bare NaN is not JSON."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _pairs(items: Iterable[Param | RunTag]) -> list[dict[str, str]]:
    return [{"key": i.key, "value": i.value} for i in items]


class RestTrackingClient:
    """What ``MlflowTracker`` and ``tracking.start`` need of MLflow; ``log_batch`` and ``set_terminated`` keep the
    names and arguments of ``MlflowClient``'s, so either client serves the tracker."""

    def __init__(self, tracking_uri: str, *, token: str = "", environ: Mapping[str, str] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        env = os.environ if environ is None else environ
        self.tracking_uri = tracking_uri.rstrip("/")
        self._headers = {"Content-Type": "application/json", "User-Agent": "haihe-runtime"}
        token = token or env.get("MLFLOW_TRACKING_TOKEN", "")
        user, password = env.get("MLFLOW_TRACKING_USERNAME", ""), env.get("MLFLOW_TRACKING_PASSWORD", "")
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        elif user:
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._headers["Authorization"] = f"Basic {basic}"
        self._timeout = float(env.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or 30)
        self._retries = int(env.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES") or 2)
        self._context: ssl.SSLContext | None = None
        if self.tracking_uri.startswith("https://"):
            if env.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
                self._context = ssl._create_unverified_context()  # noqa: S323 - the site asked for it by name
            else:
                self._context = ssl.create_default_context(cafile=env.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None)
        self._sleep = sleep

    # ---- the transport ----
    def _call(self, method: str, endpoint: str, body: Mapping[str, Any] | None = None,
              query: Mapping[str, str] | None = None) -> dict[str, Any]:
        url = self.tracking_uri + API + endpoint
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(body).encode() if body is not None else None
        if not url.startswith(("http://", "https://")):
            raise MlflowRestError(f"only http(s) tracking URIs are supported, not {self.tracking_uri!r}")
        for attempt in range(self._retries + 1):
            request = urllib.request.Request(url, data=data, method=method,  # noqa: S310 - http(s), checked
                                             headers=self._headers)
            try:
                with urllib.request.urlopen(request, timeout=self._timeout,  # noqa: S310 - http(s), checked above
                                            context=self._context) as resp:
                    raw = resp.read()
                return json.loads(raw) if raw else {}
            except urllib.error.HTTPError as exc:
                error = _error(exc)
                if exc.code not in RETRY_STATUSES or attempt == self._retries:
                    raise error from None
            except (OSError, ValueError) as exc:  # refused, reset, timed out; an answer that is not JSON
                error = MlflowRestError(f"{endpoint}: {type(exc).__name__}: {exc}")
                if attempt == self._retries:
                    raise error from None
            self._sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def health(self, timeout: float) -> str | None:
        """None when the server answers ``/health`` with 200; otherwise why not (asked once, no retries)."""
        request = urllib.request.Request(self.tracking_uri + "/health", headers=self._headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._context) as resp:  # noqa: S310
                return None if resp.status == 200 else f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"

    # ---- experiments ----
    def get_experiment_id(self, name: str) -> str | None:
        try:
            found = self._call("GET", "experiments/get-by-name", query={"experiment_name": name})
        except MlflowRestError as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return str(found["experiment"]["experiment_id"])

    def experiment_id(self, name: str) -> str:
        """The experiment's id, created when it does not exist yet (a job beside it may create it first)."""
        found = self.get_experiment_id(name)
        if found is not None:
            return found
        try:
            return str(self._call("POST", "experiments/create", {"name": name})["experiment_id"])
        except MlflowRestError as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        found = self.get_experiment_id(name)
        if found is None:
            raise MlflowRestError(f"experiment {name!r} exists but cannot be read")
        return found

    # ---- runs ----
    def find_run(self, experiment_id: str, filter_string: str) -> str | None:
        """The newest run of the experiment that matches the filter, or None."""
        body = {"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 1,
                "order_by": ["start_time DESC"]}
        runs = self._call("POST", "runs/search", body).get("runs") or []
        return str(runs[0]["info"]["run_id"]) if runs else None

    def create_run(self, experiment_id: str, tags: Mapping[str, str], run_name: str | None = None) -> str:
        body: dict[str, Any] = {"experiment_id": experiment_id, "start_time": int(time.time() * 1000),
                                "tags": [{"key": k, "value": str(v)} for k, v in tags.items()]}
        if run_name:
            body["run_name"] = run_name
        return str(self._call("POST", "runs/create", body)["run"]["info"]["run_id"])

    def update_run(self, run_id: str, status: str, end_time: int | None = None) -> None:
        body: dict[str, Any] = {"run_id": run_id, "status": status}
        if end_time is not None:
            body["end_time"] = end_time
        self._call("POST", "runs/update", body)

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        self.update_run(run_id, status, end_time=int(time.time() * 1000))

    def latest_metrics(self, run_id: str) -> dict[str, Metric]:
        data = self._call("GET", "runs/get", query={"run_id": run_id})["run"].get("data") or {}
        return {m["key"]: Metric(m["key"], float(m["value"]), int(m.get("timestamp") or 0), int(m.get("step") or 0))
                for m in data.get("metrics") or []}

    def log_batch(self, run_id: str, metrics: Iterable[Metric] = (), params: Iterable[Param] = (),
                  tags: Iterable[RunTag] = ()) -> None:
        body = {"run_id": run_id, "params": _pairs(params), "tags": _pairs(tags),
                "metrics": [{"key": m.key, "value": _number(m.value), "timestamp": m.timestamp, "step": m.step}
                            for m in metrics]}
        self._call("POST", "runs/log-batch", body)


def _error(exc: urllib.error.HTTPError) -> MlflowRestError:
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("error_code") or "")
    message = str(body.get("message") or body.get("detail") or exc.reason)
    return MlflowRestError(f"HTTP {exc.code} {code}: {message}".replace("  ", " "), status=exc.code, error_code=code)
