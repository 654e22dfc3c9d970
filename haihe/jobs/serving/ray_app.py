"""The Ray Serve side of an endpoint: a deployment that loads a zoo model once per replica and batches calls.

``@serve.batch`` gathers concurrent calls into one ``predict`` (up to ``max_batch_size`` rows-lists, waiting at most
``batch_wait_ms``); ``max_ongoing_requests`` is kept at least twice the batch size, since Serve's default (5) would
silently cap batches at 5. Autoscaling follows ongoing requests between min and max replicas. Importing this
module imports Ray: the platform does it lazily, on the first endpoint use.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ray import serve

from haihe.jobs.serving.predictor import Predictor, ServeConfig, join_rows, split_rows


@serve.deployment(name="model")
class ModelServer:
    """One replica: the model is loaded in ``__init__`` (once), every call goes through the batch queue."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = ServeConfig.from_dict(config)
        self.predictor = Predictor.from_config(self.config)
        batcher: Any = self.predict_batch  # serve.batch's wrapper carries the setters
        batcher.set_max_batch_size(self.config.max_batch_size)
        batcher.set_batch_wait_timeout_s(self.config.batch_wait_ms / 1000.0)
        self.calls = 0  # model invocations (batches), for tests that check nothing else reached the model
        self.rows = 0
        self.batch_sizes: Counter[int] = Counter()  # requests per model call: what batching actually formed
        self.predict_s = 0.0  # time inside the model, to tell model cost from serving overhead

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def predict_batch(self, requests: list[list[Any]]) -> list[list[Any]]:
        flat, counts = split_rows(requests)
        self.calls += 1
        self.rows += len(flat)
        self.batch_sizes[len(requests)] += 1
        began = time.perf_counter()
        outputs = self.predictor.predict(flat)
        self.predict_s += time.perf_counter() - began
        return join_rows(outputs, counts)

    async def predict(self, rows: list[Any]) -> list[Any]:
        """Rows in, one output per row out (the gateway calls this through a DeploymentHandle)."""
        result: list[Any] = await self.predict_batch(rows)
        return result

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls, "rows": self.rows, "pid": os.getpid(), "predict_s": round(self.predict_s, 6),
                "batch_sizes": dict(sorted(self.batch_sizes.items()))}

    async def __call__(self, request: Any) -> dict[str, Any]:
        """Serve's own HTTP proxy path, ``POST /<app> {"rows": [...]}`` (the benchmark's direct baseline)."""
        body = await request.json()
        outputs = await self.predict(body["rows"])
        return {"outputs": [o.tolist() if hasattr(o, "tolist") else o for o in outputs]}


@dataclass(frozen=True)
class Scaling:
    min_replicas: int = 1
    max_replicas: int = 1
    cpus_per_replica: float = 0.5


def build_app(config: ServeConfig, scaling: Scaling) -> Any:
    """The bound Serve application for one endpoint generation."""
    options: dict[str, Any] = {
        "max_ongoing_requests": max(2 * config.max_batch_size, 8),
        "ray_actor_options": {"num_cpus": scaling.cpus_per_replica},
        "graceful_shutdown_wait_loop_s": 1.0,
        "graceful_shutdown_timeout_s": 20.0,
        "health_check_period_s": 2.0,
    }
    if scaling.min_replicas == scaling.max_replicas:
        options["num_replicas"] = scaling.min_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": scaling.min_replicas,
            "max_replicas": scaling.max_replicas,
            "initial_replicas": scaling.min_replicas,
            "target_ongoing_requests": max(1, config.max_batch_size),
            "upscale_delay_s": 3.0,
            "downscale_delay_s": 30.0,
        }
    deployment: Any = ModelServer  # a serve Deployment, which mypy sees as the class
    return deployment.options(**options).bind(config.to_dict())
