"""MLflow tracking for a job: rank 0 owns the run; every other rank (and a job whose MLflow is down) gets a
:class:`NullTracker` that accepts the same calls and drops them.

MLflow being unreachable must not kill a week of training: the runtime probes ``/health`` with a short timeout,
and if that (or any later call) fails it logs one warning and carries on without tracking. Only a recipe that
must register a model at the end treats "tracking unavailable" as a failure (``ExitCode.TRACKING_UNAVAILABLE``).

A requeued job continues its MLflow run: the run is found again by its tags (job id and array index).
"""

from __future__ import annotations

import logging
import os
import time
import urllib.request
from collections.abc import Mapping
from typing import Any, Protocol

from haihe.errors import TrackingUnavailable
from haihe.jobs.runtime.contract import RuntimeEnv

log = logging.getLogger(__name__)

FLUSH_EVERY = 50  # buffered metric values per log_batch request
MAX_PARAM_LEN = 6000  # MLflow's limit on a param value


class Tracker(Protocol):
    run_id: str | None

    @property
    def active(self) -> bool: ...

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def log_model(self, model: Any, name: str = "model", **kwargs: Any) -> str | None: ...

    def flush(self) -> None: ...

    def end(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Accepts every call, records nothing (ranks other than 0, or MLflow down)."""

    run_id: str | None = None

    def __init__(self, reason: str = "") -> None:
        self.reason = reason

    @property
    def active(self) -> bool:
        return False

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_model(self, model: Any, name: str = "model", **kwargs: Any) -> str | None:
        return None

    def flush(self) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


def probe(uri: str, timeout: float = 5.0) -> str | None:
    """None when the tracking server answers ``/health``; otherwise why not (only http(s) URIs are probed)."""
    if not uri.startswith(("http://", "https://")):
        return None
    request = urllib.request.Request(uri.rstrip("/") + "/health")  # noqa: S310 - http(s) only, checked above
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:  # the platform's MLflow proxy wants the job's token on every call, /health included
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - http(s) only
            return None if resp.status == 200 else f"HTTP {resp.status}"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


class MlflowTracker:
    """The job's MLflow run, through ``MlflowClient`` (no global fluent state, so user code may use its own)."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id: str | None = run_id
        self._buffer: list[Any] = []
        self._failed = False

    @property
    def active(self) -> bool:
        return not self._failed

    def _guard(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if self._failed:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # MLflow raises many types; none of them may stop training
            self._failed = True
            log.warning("MLflow %s failed (%s: %s); continuing without tracking", what, type(exc).__name__, exc)
            return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:MAX_PARAM_LEN]) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):
            self._guard("log_params", self.client.log_batch, self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), now, step or 0) for k, v in metrics.items())
        if len(self._buffer) >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        batch, self._buffer = self._buffer, []
        for start in range(0, len(batch), 1000):
            self._guard("log_metrics", self.client.log_batch, self.run_id, metrics=batch[start : start + 1000])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._guard("set_tags", self.client.log_batch, self.run_id, tags=items)

    def log_model(self, model: Any, name: str = "model", **kwargs: Any) -> str | None:
        """Log a torch model to the run (pickle format: it loads back as its class); return its ``models:/`` URI.
        Raises TrackingUnavailable on failure: a caller that logs a model needs it."""
        import mlflow
        import mlflow.pytorch

        self.flush()
        if self._failed:
            raise TrackingUnavailable("MLflow is unavailable: cannot log the model", component="mlflow")
        kwargs.setdefault("serialization_format", "pickle")
        kwargs.setdefault("pip_requirements", ["torch", "numpy"])  # skip slow requirement inference
        try:
            mlflow.set_tracking_uri(self.client.tracking_uri)
            with mlflow.start_run(run_id=self.run_id):
                info = mlflow.pytorch.log_model(model, name=name, **kwargs)
        except Exception as exc:
            raise TrackingUnavailable(f"MLflow could not log the model: {type(exc).__name__}: {exc}",
                                      component="mlflow") from None  # fmt: skip
        return str(info.model_uri)

    def end(self, status: str = "FINISHED") -> None:
        self.flush()
        self._guard("end run", self.client.set_terminated, self.run_id, status)


def _find_run(client: Any, experiment_id: str, env: RuntimeEnv) -> str | None:
    """The run of an earlier attempt of this job (requeue), found by its tags."""
    if not env.job_id:
        return None
    query = f"tags.`haihe.job_id` = '{env.job_id}'"
    if env.array_index is not None:
        query += f" and tags.`haihe.array_index` = '{env.array_index}'"
    runs = client.search_runs([experiment_id], filter_string=query, max_results=1, order_by=["start_time DESC"])
    return runs[0].info.run_id if runs else None


def start(env: RuntimeEnv, *, is_main: bool, run_name: str = "", system_metrics: bool = True) -> Tracker:
    """Rank 0: start (or, after a requeue, continue) the job's run; other ranks and failures: a NullTracker."""
    if not is_main:
        return NullTracker("not rank 0")
    if not env.tracking_uri:
        log.warning("MLFLOW_TRACKING_URI is not set: this run is not tracked")
        return NullTracker("no tracking URI")
    reason = probe(env.tracking_uri)
    if reason:
        log.warning("MLflow at %s is unavailable (%s): training continues without tracking", env.tracking_uri, reason)
        return NullTracker(reason)
    # MLflow retries a dead server for minutes by default; a job should notice within seconds.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    try:
        from mlflow import MlflowClient

        client = MlflowClient(env.tracking_uri)
        experiment = client.get_experiment_by_name(env.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(env.experiment)
        run_id = _find_run(client, experiment_id, env)
        if run_id:
            client.update_run(run_id, status="RUNNING")
            log.info("continuing MLflow run %s", run_id)
        else:
            name = run_name or env.job_name or None
            run_id = client.create_run(experiment_id, tags=env.tags(), run_name=name).info.run_id
    except Exception as exc:
        log.warning("MLflow run could not start (%s: %s): training continues without tracking",
                    type(exc).__name__, exc)  # fmt: skip
        return NullTracker(str(exc))
    tracker = MlflowTracker(client, run_id)
    if system_metrics:
        _start_system_metrics(env.tracking_uri, run_id)
    return tracker


def _start_system_metrics(uri: str, run_id: str) -> None:
    """CPU/GPU/memory every 10 s through MLflow's monitor, when psutil is installed (cheap; skipped otherwise)."""
    try:
        import psutil  # noqa: F401 - MLflow's monitor needs it
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:
        log.info("system metrics off: psutil is not installed")
        return
    try:
        SystemMetricsMonitor(run_id, sampling_interval=10, resume_logging=True).start()
    except Exception as exc:
        log.info("system metrics off: %s", exc)
