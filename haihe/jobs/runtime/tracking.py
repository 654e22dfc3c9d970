"""MLflow tracking for a job: rank 0 owns the run; every other rank (and a job whose MLflow is down) gets a
:class:`NullTracker` that accepts the same calls and drops them.

MLflow being unreachable must not kill a week of training: the runtime probes ``/health`` with a short timeout
and, if MLflow is down at the start, carries on without tracking. A later outage (an MLflow restart) only delays
writes: they are kept and sent again with backoff; what never got through by the end is named in the log. Only a
recipe that must register a model treats "tracking unavailable" as a failure (``ExitCode.TRACKING_UNAVAILABLE``).

A requeued job continues its MLflow run: the run is found again by its tags (job id and array index).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from haihe.errors import TrackingUnavailable
from haihe.jobs.runtime import system_metrics as sampling
from haihe.jobs.runtime.contract import DEFAULT_TRACKING_WAIT_S, RuntimeEnv
from haihe.jobs.runtime.mlflow_rest import Metric, Param, RestTrackingClient, RunTag

log = logging.getLogger(__name__)

FLUSH_EVERY = 50  # buffered metric values per log_batch request
FLUSH_AFTER_S = 5.0  # ... or sooner: a slow run's curve on the job page is never older than this
MAX_PENDING = 200_000  # metric values kept while MLflow is down (~20 MB); beyond it the oldest are named and dropped
RETRY_MIN_S, RETRY_MAX_S = 2.0, 30.0  # backoff between retries while MLflow is down
END_RETRY_S = 60.0  # how long the end of a job keeps trying to send what is pending
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
    """None when the tracking server answers ``/health``; otherwise why not (only http(s) URIs are probed). Asked
    with the client's own token, auth and TLS settings (the platform's MLflow proxy wants the job's token on every
    call, /health included)."""
    if not uri.startswith(("http://", "https://")):
        return None
    return RestTrackingClient(uri).health(timeout)


class MlflowTracker:
    """The job's MLflow run, through a :class:`RestTrackingClient` (MLflow's REST API without importing MLflow,
    and no global fluent state, so user code may use its own).

    A failed write is kept, not dropped: it is sent again with backoff by a later flush, so an MLflow restart
    mid-training loses nothing. MLflow ignores a metric logged twice with the same key, step, timestamp and
    value, so re-sending a batch the server may have half-seen cannot duplicate it. At ``end`` the pending
    writes get a few more tries; whatever still failed is named in the log (keys and steps).
    """

    def __init__(self, client: Any, run_id: str, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, max_pending: int = MAX_PENDING) -> None:
        self.client = client
        self.run_id: str | None = run_id
        self._buffer: list[Any] = []  # metrics not yet sent (or sent and failed), oldest first
        self._writes: list[tuple[str, dict[str, Any]]] = []  # params/tags batches that failed: sent again
        self._clock, self._sleep, self._max_pending = clock, sleep, max_pending
        self._retry_at = 0.0  # while MLflow is down: no request before this moment
        self._backoff = 0.0
        self._down_since: float | None = None
        self._buffered_since: float | None = None  # when the oldest unsent metric value was logged
        self.dropped: dict[str, list[int]] = {}  # metric key -> steps that were never recorded
        self.sampler: sampling.SystemSampler | None = None  # the node's figures, stopped at the end

    @property
    def active(self) -> bool:
        """False while MLflow is down (after one more try to send what is pending)."""
        if self._down_since is not None:
            self._flush(force=True)
        return self._down_since is None

    @property
    def pending(self) -> int:
        return len(self._buffer) + len(self._writes)

    def _send(self, what: str, **batch: Any) -> bool:
        """One ``log_batch``; on failure remember when to try again (backoff doubling to ``RETRY_MAX_S``)."""
        try:
            self.client.log_batch(self.run_id, **batch)
        except Exception as exc:  # MLflow raises many types; none of them may stop training
            now = self._clock()
            self._backoff = min(RETRY_MAX_S, self._backoff * 2 if self._backoff else RETRY_MIN_S)
            self._retry_at = now + self._backoff
            if self._down_since is None:
                self._down_since = now
                log.warning("MLflow %s failed (%s: %s); training continues, writes are kept and retried",
                            what, type(exc).__name__, exc)  # fmt: skip
            return False
        if self._down_since is not None:
            log.info("MLflow is back after %.0f s; sending the kept writes", self._clock() - self._down_since)
            self._down_since = None
        self._backoff = 0.0
        return True

    def _write(self, what: str, **batch: Any) -> None:
        self._writes.append((what, batch))
        self._flush()

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [Param(str(k), str(v)[:MAX_PARAM_LEN]) for k, v in sorted(params.items())]
        for start in range(0, len(items), 100):
            self._write("log_params", params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), now, step or 0) for k, v in metrics.items())
        if len(self._buffer) > self._max_pending:  # a long outage: keep the newest, name the oldest as lost
            for m in self._buffer[: len(self._buffer) - self._max_pending]:
                self.dropped.setdefault(m.key, []).append(m.step)
            del self._buffer[: len(self._buffer) - self._max_pending]
        if self._buffered_since is None:
            self._buffered_since = self._clock()
        if len(self._buffer) >= FLUSH_EVERY or self._clock() - self._buffered_since >= FLUSH_AFTER_S:
            self.flush()

    def flush(self) -> None:
        """Send what is pending (while MLflow is down: only once the backoff has passed)."""
        self._flush()

    def _flush(self, *, force: bool = False) -> bool:
        """Send what is pending; True when nothing is left. While MLflow is down, waits for the backoff unless
        ``force``."""
        if not force and self._clock() < self._retry_at:
            return False
        while self._writes:
            what, batch = self._writes[0]
            if not self._send(what, **batch):
                return False
            self._writes.pop(0)
        while self._buffer:
            chunk = self._buffer[:1000]
            if not self._send("log_metrics", metrics=chunk):
                return False
            del self._buffer[: len(chunk)]
        self._buffered_since = None
        return True

    def _drain(self) -> bool:
        """Flush, trying a few more times over ~``END_RETRY_S`` when MLflow is down (the job is ending)."""
        deadline = self._clock() + END_RETRY_S
        while not self._flush(force=True):
            if self._clock() >= deadline:
                return False
            self._sleep(min(RETRY_MAX_S, max(0.5, deadline - self._clock()) / 4))
        return True

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._write("set_tags", tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_model(self, model: Any, name: str = "model", **kwargs: Any) -> str | None:
        """Log a torch model to the run and return its ``models:/`` URI. With an ``input_example`` the model is
        saved in the pt2 format (``torch.export``: a graph and weights, nothing unpickled as code on load); a model
        that cannot be exported (data-dependent control flow) is saved as a pickle instead, said in the log and
        tagged ``haihe.model_format``. Raises TrackingUnavailable on failure: a caller that logs a model needs it."""
        import mlflow
        import mlflow.pytorch
        from mlflow.exceptions import MlflowException

        if not self._drain():
            raise TrackingUnavailable("MLflow is unavailable: cannot log the model", component="mlflow")
        kwargs.setdefault("serialization_format", "pt2" if kwargs.get("input_example") is not None else "pickle")
        kwargs.setdefault("pip_requirements", ["torch", "numpy"])  # skip slow requirement inference
        try:
            mlflow.set_tracking_uri(self.client.tracking_uri)
            with mlflow.start_run(run_id=self.run_id):
                fmt = kwargs["serialization_format"]
                try:
                    info = mlflow.pytorch.log_model(model, name=name, **kwargs)
                except MlflowException:
                    raise
                except Exception as exc:  # torch.export could not trace it (MLflow's own errors are re-raised)
                    if fmt != "pt2":
                        raise
                    log.warning("the model cannot be exported to pt2 (%s: %s); saving it as a pickle",
                                type(exc).__name__, (str(exc).splitlines() or [""])[0][:300])
                    fmt = "pickle"
                    info = mlflow.pytorch.log_model(model, name=name, **{**kwargs, "serialization_format": fmt})
                mlflow.set_tag("haihe.model_format", fmt)
        except Exception as exc:
            raise TrackingUnavailable(f"MLflow could not log the model: {type(exc).__name__}: {exc}",
                                      component="mlflow") from None  # fmt: skip
        return str(info.model_uri)

    def end(self, status: str = "FINISHED") -> None:
        if self.sampler is not None:
            self.sampler.stop()
        if not self._drain():
            for m in self._buffer:
                self.dropped.setdefault(m.key, []).append(m.step)
            lost_writes = sorted({what for what, _ in self._writes})
            self._buffer, self._writes = [], []
            if lost_writes:
                log.error("MLflow stayed unavailable: NOT recorded in run %s: %s", self.run_id,
                          ", ".join(lost_writes))  # fmt: skip
        if self.dropped:
            log.error("MLflow stayed unavailable: metrics NOT recorded in run %s: %s", self.run_id,
                      unrecorded(self.dropped))  # fmt: skip
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as exc:
            log.error("MLflow could not mark run %s %s (%s: %s)", self.run_id, status, type(exc).__name__, exc)


def torch_signature(model: Any, sample: Any) -> Any:
    """The MLflow ``ModelSignature`` of a torch model, inferred from a sample batch and the model's output on it
    (tensor specs with -1 for the batch dimension). The model is put back in the mode it was in."""
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    x = sample if isinstance(sample, torch.Tensor) else torch.as_tensor(np.asarray(sample))
    from haihe.jobs.runtime.modes import set_training

    was_training = model.training
    set_training(model, False)
    try:
        with torch.inference_mode():
            y = model(x)
    finally:
        set_training(model, was_training)
    return infer_signature(x.detach().cpu().numpy(), y.detach().cpu().numpy())


def unrecorded(dropped: Mapping[str, list[int]]) -> str:
    """``loss steps 3-90 (88 values); acc steps 10-10 (1 value)`` - what the log says was lost."""
    parts = []
    for key, steps in sorted(dropped.items()):
        n = len(steps)
        parts.append(f"{key} steps {min(steps)}-{max(steps)} ({n} value{'s' if n != 1 else ''})")
    return "; ".join(parts)


def _find_run(client: RestTrackingClient, experiment_id: str, env: RuntimeEnv) -> str | None:
    """The run of an earlier attempt of this job (requeue), found by its tags."""
    if not env.job_id:
        return None
    query = f"tags.`haihe.job_id` = '{env.job_id}'"
    if env.array_index is not None:
        query += f" and tags.`haihe.array_index` = '{env.array_index}'"
    return client.find_run(experiment_id, query)


def start(env: RuntimeEnv, *, is_main: bool, run_name: str = "", system_metrics: bool = True,
          system_metrics_every_s: float = sampling.DEFAULT_EVERY_S,
          required: bool = False, wait_s: float = DEFAULT_TRACKING_WAIT_S,
          sleep: Callable[[float], None] = time.sleep) -> Tracker:
    """Rank 0: start (or, after a requeue, continue) the job's run; other ranks and failures: a NullTracker.
    ``required`` (the job registers a model): a server that does not answer is asked again with backoff for
    ``wait_s`` first — a busy or restarting MLflow must not fail a job that would have found it seconds later."""
    if not is_main:
        return NullTracker("not rank 0")
    if not env.tracking_uri:
        log.warning("MLFLOW_TRACKING_URI is not set: this run is not tracked")
        return NullTracker("no tracking URI")
    budget = wait_s if required else 0.0
    deadline, waited, delay = time.monotonic() + budget, 0.0, 1.0
    reason = probe(env.tracking_uri)
    while reason and waited + delay <= budget and time.monotonic() + delay <= deadline:
        log.warning("MLflow at %s is unavailable (%s); the job needs it: trying again in %.0f s", env.tracking_uri,
                    reason, delay)
        sleep(delay)
        waited += delay
        delay = min(delay * 2, 15.0)
        reason = probe(env.tracking_uri)
    if reason:
        log.warning("MLflow at %s is unavailable (%s): training continues without tracking", env.tracking_uri, reason)
        return NullTracker(reason)
    try:
        client = RestTrackingClient(env.tracking_uri, token=env.tracking_token)
        experiment_id = client.experiment_id(env.experiment)
        run_id = _find_run(client, experiment_id, env)
        if run_id:
            client.update_run(run_id, status="RUNNING")
            log.info("continuing MLflow run %s", run_id)
        else:
            run_id = client.create_run(experiment_id, env.tags(), run_name=run_name or env.job_name or None)
    except Exception as exc:
        log.warning("MLflow run could not start (%s: %s): training continues without tracking",
                    type(exc).__name__, exc)  # fmt: skip
        return NullTracker(str(exc))
    tracker = MlflowTracker(client, run_id)
    if system_metrics:
        tracker.sampler = sampling.start(client, run_id, system_metrics_every_s)
    return tracker
