"""Stateful fakes for the endpoint tests: a zoo that knows a few models, and a serving runtime with switches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from haihe.errors import NotFound, ServiceUnavailable, TrackingUnavailable
from haihe.model_zoo.names import ZooRef
from haihe.platform.gateway.runtimes import DeployPlan, Probe, ProbeState


@dataclass
class _Model:
    visibility: str
    task: str
    card: Any = None


@dataclass
class _Version:
    version: int
    card: Any = None


@dataclass
class _Detail:
    model: _Model
    selected: _Version | None
    latest: _Version | None


@dataclass
class FakeZoo:
    """``models[(org, name)] = (visibility, task, [versions], {alias: version})``; every version of a model has the
    model's ``cards`` entry (a ModelCard) and ``signatures`` entry (MLflow's parsed signature), when given."""

    models: dict[tuple[str, str], tuple[str, str, list[int], dict[str, int]]] = field(default_factory=dict)
    cards: dict[tuple[str, str], Any] = field(default_factory=dict)
    signatures: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    reads: int = 0  # signature reads (the gateway caches contracts per version)
    down: bool = False  # MLflow unreachable

    def add(self, ref: str, task: str, versions: list[int], visibility: str = "public",
            aliases: dict[str, int] | None = None, card: Any = None,
            signature: dict[str, list[dict[str, Any]]] | None = None) -> None:
        org, name = ref.split("/")
        self.models[(org, name)] = (visibility, task, versions, aliases or {})
        if card is not None:
            self.cards[(org, name)] = card
        if signature is not None:
            self.signatures[(org, name)] = signature

    def get(self, ref: ZooRef) -> _Detail:
        if self.down:
            raise TrackingUnavailable("MLflow is down", component="mlflow")
        entry = self.models.get((ref.org, ref.name))
        if entry is None:
            raise NotFound(f"no zoo model {ref}")
        visibility, task, versions, aliases = entry
        card = self.cards.get((ref.org, ref.name))
        selected = None
        if ref.version is not None:
            if ref.version not in versions:
                raise NotFound(f"no zoo model {ref}")
            selected = _Version(ref.version, card)
        elif ref.alias is not None:
            if ref.alias not in aliases:
                raise NotFound(f"no zoo model {ref}")
            selected = _Version(aliases[ref.alias], card)
        return _Detail(_Model(visibility, task, card), selected, _Version(max(versions), card) if versions else None)

    def signature(self, ref: ZooRef) -> dict[str, list[dict[str, Any]]] | None:
        self.get(ref)
        self.reads += 1
        return self.signatures.get((ref.org, ref.name))


class FakeRuntime:
    """Deploys instantly into a table; each app reports ``next_state`` until told otherwise; infer doubles rows."""

    def __init__(self, backend: str = "ray") -> None:
        self.backend = backend
        self.apps: dict[str, dict[str, Any]] = {}  # app -> {"state", "plan", "rescaled"}
        self.next_state: ProbeState = "ready"
        self.calls = 0  # requests that reached "the model"
        self.served_by: dict[str, int] = {}
        self.removed: list[str] = []
        self.fail_infer = False
        self.warmed: list[str] = []  # targets made ready before a first request

    def deploy(self, plan: DeployPlan) -> dict[str, Any]:
        self.apps[plan.app_name] = {"state": self.next_state, "plan": plan, "rescaled": 0}
        return {"app": plan.app_name, "target": plan.app_name}

    def rescale(self, record: dict[str, Any], plan: DeployPlan) -> None:
        self.apps[record["app"]]["rescaled"] += 1

    def probe(self, record: dict[str, Any]) -> Probe:
        app = self.apps.get(record["app"])
        if app is None:
            return Probe("gone", f"{record['app']} is not running")
        state: ProbeState = app["state"]
        return Probe(state, "" if state == "ready" else f"{record['app']} is {state}",
                     target=record["app"] if state == "ready" else None)

    def remove(self, record: dict[str, Any]) -> None:
        self.apps.pop(record["app"], None)
        self.removed.append(record["app"])

    def warm(self, target: str, timeout_s: float) -> None:
        self.warmed.append(target)

    async def infer(self, target: str, rows: list[Any], timeout_s: float) -> list[Any]:
        if target not in self.apps or self.fail_infer:
            raise ServiceUnavailable("model server error: gone")
        self.calls += 1
        self.served_by[target] = self.served_by.get(target, 0) + 1
        version = self.apps[target]["plan"].config.model.rsplit(":", 1)[1]
        out: list[Any] = []
        for r in rows:
            if isinstance(r, str):
                out.append([float(len(r)), float(version)])
            else:
                out.append((np.asarray(r, dtype=np.float64) * 2).tolist())
        return out

    def close(self) -> None:
        pass
