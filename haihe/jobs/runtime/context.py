"""What a recipe gets: the job's contract, its place in the process group, tracking, checkpoints, data and zoo.

Recipes call these few methods and stay free of launcher, MLflow and S3 details; everything here works the same
for one process and for N ranks (collectives are no-ops without a process group).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from haihe.errors import InvalidInput, TrackingUnavailable
from haihe.jobs.runtime.checkpoint import Checkpointer
from haihe.jobs.runtime.contract import RuntimeEnv
from haihe.jobs.runtime.distributed import DistEnv
from haihe.jobs.runtime.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    env: RuntimeEnv
    dist: DistEnv
    params: dict[str, Any] = field(default_factory=dict)
    tracker: Tracker = field(default_factory=NullTracker)
    checkpointer: Checkpointer = field(default_factory=lambda: Checkpointer(None))
    data_dir: Path | None = None
    dataset: str | None = None  # the staged version, resolved: org/name@vN
    emit: Callable[[str], None] = field(default_factory=lambda: emit_line)  # result lines for the log and tests

    # ---- parameters ----
    def param(self, name: str, default: Any, kind: type | None = None) -> Any:
        """A recipe parameter from HAIHE_PARAMS/HAIHE_SWEEP, checked against the default's type."""
        value = self.params.get(name, default)
        want = kind or type(default)
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if default is not None and not isinstance(value, want):
            raise InvalidInput(f"parameter {name}={value!r} must be a {want.__name__}", field=f"HAIHE_PARAMS.{name}")
        return value

    # ---- collectives (no-ops for one process) ----
    def _group(self) -> bool:
        if not self.dist.is_distributed:
            return False
        import torch.distributed as tdist

        return bool(tdist.is_initialized())

    def device(self) -> Any:
        import torch

        return torch.device(self.dist.device())

    def barrier(self) -> None:
        if self._group():
            import torch.distributed as tdist

            tdist.barrier()

    def all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        """Sum (or max) a few floats over all ranks; every rank gets the same result."""
        if not self._group():
            return list(values)
        import torch
        import torch.distributed as tdist

        t = torch.tensor(values, dtype=torch.float64, device=self.device())
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX if op == "max" else tdist.ReduceOp.SUM)
        return [float(x) for x in t.tolist()]

    def mean(self, value: float) -> float:
        return self.all_reduce([value])[0] / self.dist.world_size

    # ---- tracking ----
    def log_params(self, params: Mapping[str, Any]) -> None:
        self.tracker.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.tracker.log_metrics(metrics, step)

    def result(self, **values: Any) -> None:
        """One machine-readable line per rank: ``HAIHE_RESULT {json}``."""
        import json

        self.emit("HAIHE_RESULT " + json.dumps({"rank": self.dist.rank, **values}, sort_keys=True, default=str))

    # ---- zoo ----
    def source_model(self, map_location: str = "cpu") -> Any:
        """The model named by HAIHE_FROM_ZOO (every rank loads it)."""
        from haihe.jobs.runtime import zoo

        ref = self.env.zoo_source
        if ref is None:
            raise InvalidInput("this recipe needs HAIHE_FROM_ZOO (org/name@alias)", field="HAIHE_FROM_ZOO")
        if not self.env.tracking_uri:
            raise TrackingUnavailable("MLFLOW_TRACKING_URI is needed to load a zoo model", component="mlflow")
        return zoo.load(ref, self.env.tracking_uri, map_location)

    def finish_model(self, model: Any, *, sample: Any = None, input_example: Any = None,
                     description: str = "") -> int | None:
        """Rank 0: log the trained model to the run and, with HAIHE_REGISTER_AS, register a zoo version with
        lineage (job, run, dataset, source model). Returns the version, or None when not registering.

        ``sample`` (a small input batch) is run through the model to log an MLflow signature: the input and output
        datatypes and shapes that the model's endpoints report as OIP metadata and hold requests to."""
        from haihe.jobs.runtime import zoo
        from haihe.jobs.runtime.modes import set_training
        from haihe.jobs.runtime.tracking import torch_signature

        if not self.dist.is_main:
            return None
        target = self.env.zoo_target
        if not self.tracker.active:
            if target is not None:
                raise TrackingUnavailable(f"MLflow is unavailable: cannot register {target}", component="mlflow")
            return None
        extra: dict[str, Any] = {}
        if sample is not None:
            extra["signature"] = torch_signature(model, sample)
            if input_example is None:  # the pt2 format traces the model on an example batch
                input_example = _as_numpy(sample)
        set_training(model, False)  # exported (and served) as in evaluation
        uri = self.tracker.log_model(model, input_example=input_example, **extra)
        if target is None or uri is None:
            return None
        lineage = zoo.lineage_tags(self.env.job_id, self.tracker.run_id, self.dataset, self.env.from_zoo,
                                   self.env.environment_ref)
        version = zoo.register(target, uri, self.env.tracking_uri, run_id=self.tracker.run_id, lineage=lineage,
                               description=description)  # fmt: skip
        self.tracker.set_tags({"haihe.registered_as": f"{target}:{version}"})
        return version

    # ---- outputs ----
    def write_output(self, name: str, data: bytes) -> str:
        """Write one output file under HAIHE_OUTPUT_URI (an S3 prefix or a directory); return where it went."""
        from haihe.jobs.runtime.checkpoint import LocalDirStore, ObjectStoreCheckpoints
        from haihe.jobs.runtime.staging import s3_store

        uri = self.env.output_uri
        if not uri:
            raise InvalidInput("this recipe needs HAIHE_OUTPUT_URI", field="HAIHE_OUTPUT_URI")
        parts = urlsplit(uri)
        if parts.scheme == "s3":
            store = ObjectStoreCheckpoints(s3_store(self.env, parts.netloc), parts.path)
            store.write(name, data)
            return store.uri + name
        local = LocalDirStore(parts.path if parts.scheme == "file" else uri)
        local.write(name, data)
        return str(local.root / name)


def emit_line(text: str) -> None:
    """One line in ONE write: ranks share the job's stdout, and print()'s separate newline write lets two ranks'
    lines interleave (a pipe write under 4 KiB is atomic)."""
    import os
    import sys

    data = (text + "\n").encode()
    sys.stdout.flush()
    try:
        os.write(sys.stdout.fileno(), data)
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a captured stream): best effort
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def _as_numpy(sample: Any) -> Any:
    """A tensor batch as the numpy array MLflow keeps as the input example (other inputs as they are)."""
    detach = getattr(sample, "detach", None)
    return detach().cpu().numpy() if detach is not None else sample
