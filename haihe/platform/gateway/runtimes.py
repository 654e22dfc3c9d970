"""The ServingRuntime interface: how the supervisor starts, watches and stops one generation of an endpoint,
and how the gateway calls it. Two implementations: Ray Serve (``ray_runtime``) and a Slurm job (``slurm_runtime``).

A *record* is the JSON-able dict a runtime returns from ``deploy`` and keeps updating through ``probe``; the
supervisor stores it on the endpoint row, so a restarted platform picks up where it left off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from haihe.jobs.serving.predictor import ServeConfig

ProbeState = Literal["starting", "ready", "failed", "gone"]


@dataclass(frozen=True)
class DeployPlan:
    org: str
    endpoint: str
    app_name: str  # unique per endpoint generation: ep<id>g<generation>
    config: ServeConfig
    min_replicas: int = 1
    max_replicas: int = 1
    cpus_per_replica: float = 0.5
    options: dict[str, Any] = field(default_factory=dict)  # partition, gpus, time_limit_min


@dataclass(frozen=True)
class Probe:
    state: ProbeState
    reason: str = ""
    target: str | None = None  # what the gateway calls: a Serve app name or a server's base URL
    record: dict[str, Any] | None = None  # an updated record to store (address found, job started, ...)


class ServingRuntime(Protocol):
    backend: str

    def deploy(self, plan: DeployPlan) -> dict[str, Any]: ...
    def rescale(self, record: dict[str, Any], plan: DeployPlan) -> None: ...
    def probe(self, record: dict[str, Any]) -> Probe: ...
    def remove(self, record: dict[str, Any]) -> None: ...
    async def infer(self, target: str, rows: list[Any], timeout_s: float) -> list[Any]: ...
    def warm(self, target: str, timeout_s: float) -> None:
        """Make ``target``'s first ``infer`` as fast as the next (join the cluster, open the handle): called in a
        worker thread at start-up, before the process accepts connections, and by the supervisor's cycle."""
    def close(self) -> None: ...
