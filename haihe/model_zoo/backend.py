"""The seam between the zoo and a model registry: neutral records and the small protocol the zoo needs.

``MlflowBackend`` (mlflow_backend.py) implements it over ``mlflow.MlflowClient`` and translates MLflow's errors;
unit tests inject a stateful in-memory fake. The zoo's own rules (names, cards, lineage, rollback) live above it
in registry.py, so they are tested once against the fake and once against the real server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ModelRecord:
    """A registered model as the registry stores it."""

    name: str
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: Mapping[str, int] = field(default_factory=dict)
    created_ms: int = 0
    updated_ms: int = 0


@dataclass(frozen=True)
class VersionRecord:
    """One version of a registered model."""

    name: str
    version: int
    source: str
    run_id: str | None = None
    model_id: str | None = None
    status: str = "READY"
    tags: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    created_ms: int = 0


class RegistryBackend(Protocol):
    """What the zoo needs from a model registry. Every method raises Haihe errors only
    (NotFound, Conflict, InvalidInput, TrackingUnavailable)."""

    def get_model(self, name: str) -> ModelRecord: ...

    def create_model(self, name: str, *, description: str, tags: Mapping[str, str]) -> ModelRecord:
        """Create a registered model; Conflict when the name is taken."""
        ...

    def update_model(self, name: str, *, description: str | None, tags: Mapping[str, str]) -> None: ...

    def delete_model(self, name: str) -> None: ...

    def search_models(self, *, name_prefix: str | None, tags: Mapping[str, str]) -> list[ModelRecord]:
        """Models whose name starts with ``name_prefix`` and that carry every tag in ``tags`` exactly."""
        ...

    def create_version(
        self, name: str, *, source: str, run_id: str | None, model_id: str | None, tags: Mapping[str, str]
    ) -> VersionRecord:
        """Create the next version with its tags in one step (no version without its tags)."""
        ...

    def get_version(self, name: str, version: int) -> VersionRecord: ...

    def version_by_alias(self, name: str, alias: str) -> VersionRecord: ...

    def search_versions(self, *, name: str | None, tags: Mapping[str, str]) -> list[VersionRecord]: ...

    def delete_version(self, name: str, version: int) -> None: ...

    def set_alias(self, name: str, alias: str, version: int) -> None: ...

    def delete_alias(self, name: str, alias: str) -> None: ...

    def resolve_source(self, model_uri: str) -> tuple[str, str | None, str | None]:
        """``(source, run_id, model_id)`` for a logged model (``models:/m-…``) or a run's model (``runs:/…``)."""
        ...

    def download(self, name: str, version: int, dest: Path) -> Path:
        """Download a version's model directory (the one holding ``MLmodel``) into ``dest``."""
        ...

    def read_model_file(self, name: str, version: int, path: str) -> str:
        """The text of one file of a version's model directory (``MLmodel``), without downloading the rest;
        NotFound when the version has no such file."""
        ...

    def log_local_model(self, *, experiment: str, local_dir: Path, name: str, run_tags: Mapping[str, str]) -> str:
        """Upload a model directory saved on disk as a logged model of a new run; return its ``models:/`` URI."""
        ...
