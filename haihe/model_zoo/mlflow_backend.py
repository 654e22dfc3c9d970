"""RegistryBackend over ``mlflow.MlflowClient``: the only module of the zoo that calls MLflow's registry.

MLflow is imported lazily (a compute node that only stages data never pays for it). Every MLflow error is
translated here: server unreachable → TrackingUnavailable, missing → NotFound, taken → Conflict, rejected →
InvalidInput. MLflow's HTTP client retries a dead server for minutes by default; ``fast_fail_defaults`` makes it
give up within seconds unless the operator set the variables explicitly.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from haihe.errors import (
    AuthenticationRequired,
    Conflict,
    HaiheError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    TrackingUnavailable,
)
from haihe.model_zoo.backend import ModelRecord, VersionRecord

T = TypeVar("T")

# MLflow's defaults are 7 retries with exponential backoff (minutes against a dead server) and 120 s timeouts.
FAST_FAIL_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
_PAGE = 200

_NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "ENDPOINT_NOT_FOUND"}
_CONFLICT = {"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS", "RESOURCE_CONFLICT"}
_INVALID = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "MALFORMED_REQUEST", "INVALID_STATE"}
_DENIED = {"PERMISSION_DENIED", "CUSTOMER_UNAUTHORIZED"}
_UNAVAILABLE_MARKERS = ("failed with exception", "failed with timeout", "Max retries exceeded", "Connection refused")


def fast_fail_defaults(environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
    """Short retries and timeouts for MLflow's HTTP client, unless already set (MLflow reads them per request)."""
    for key, value in FAST_FAIL_ENV.items():
        environ.setdefault(key, value)


def translate(exc: BaseException, what: str) -> HaiheError:
    """Map an MLflow (or requests) exception to the Haihe error tree."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        code = str(exc.error_code)
        message = f"{what}: {exc.message}"
        if code in _NOT_FOUND:
            return NotFound(f"{what}: not found")
        if code in _CONFLICT:
            return Conflict(f"{what}: already exists")
        if code in _INVALID:
            return InvalidInput(message[:500], field=None)
        if code in _DENIED:
            return PermissionDenied(f"{what}: the tracking server refused access")
        if code == "UNAUTHENTICATED":
            return AuthenticationRequired(f"{what}: the tracking server wants credentials")
        if any(marker in exc.message for marker in _UNAVAILABLE_MARKERS):
            return TrackingUnavailable(f"{what}: the MLflow tracking server is unreachable", component="mlflow")
        return TrackingUnavailable(f"{what}: the MLflow tracking server failed ({code})", component="mlflow")
    return TrackingUnavailable(f"{what}: {type(exc).__name__}: {str(exc)[:300]}", component="mlflow")


@contextmanager
def translated(what: str) -> Iterator[None]:
    import requests
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, requests.RequestException) as exc:
        raise translate(exc, what) from exc


def _quote(value: str) -> str:
    """A filter-string literal; the zoo only filters on validated names and tags, so quotes are refused."""
    if "'" in value or "`" in value or "\\" in value:
        raise InvalidInput("search values may not contain quotes or backslashes", field="filter")
    return f"'{value}'"


def _every_page(search: Callable[..., Any], clauses: list[str]) -> Iterator[Any]:
    """Every item of an MLflow registry search, page after page (``clauses`` joined with AND; none: everything)."""
    token = None
    while True:
        page = search(filter_string=" AND ".join(clauses) or None, max_results=_PAGE, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _tag_clauses(tags: Mapping[str, str]) -> list[str]:
    return [f"tags.`{_plain(key)}` = {_quote(value)}" for key, value in sorted(tags.items())]


def _plain(key: str) -> str:
    if "`" in key or "'" in key:
        raise InvalidInput("tag keys may not contain quotes", field="filter")
    return key


def _like_prefix(prefix: str) -> str:
    # LIKE treats '_' and '%' as wildcards; results are re-checked exactly by the caller
    return f"name LIKE {_quote(prefix + '%')}"


def _model_record(model: Any) -> ModelRecord:
    aliases = getattr(model, "aliases", None) or {}
    return ModelRecord(
        name=model.name,
        description=model.description or "",
        tags=dict(model.tags or {}),
        aliases={str(k): int(v) for k, v in dict(aliases).items()},
        created_ms=int(model.creation_timestamp or 0),
        updated_ms=int(model.last_updated_timestamp or 0),
    )


def _version_record(version: Any) -> VersionRecord:
    return VersionRecord(
        name=version.name,
        version=int(version.version),
        source=version.source or "",
        run_id=version.run_id or None,
        model_id=getattr(version, "model_id", None) or None,
        status=str(version.status or "READY"),
        tags=dict(version.tags or {}),
        aliases=tuple(version.aliases or ()),
        created_ms=int(version.creation_timestamp or 0),
    )


class MlflowBackend:
    """The zoo's registry backend on an MLflow tracking server (``http://host:port``)."""

    def __init__(self, tracking_uri: str, client: Any | None = None) -> None:
        if not tracking_uri.startswith(("http://", "https://")):
            raise InvalidInput("the MLflow tracking URI must be http(s)://host:port", field="tracking_uri")
        fast_fail_defaults()
        self.tracking_uri = tracking_uri.rstrip("/")
        if client is None:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self.client = client

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        with translated(what):
            return fn()

    # ---- registered models ----
    def get_model(self, name: str) -> ModelRecord:
        return _model_record(self._call(f"model {name}", lambda: self.client.get_registered_model(name)))

    def create_model(self, name: str, *, description: str, tags: Mapping[str, str]) -> ModelRecord:
        created = self._call(
            f"model {name}",
            lambda: self.client.create_registered_model(name, tags=dict(tags), description=description),
        )
        return _model_record(created)

    def update_model(self, name: str, *, description: str | None, tags: Mapping[str, str]) -> None:
        with translated(f"model {name}"):
            if description is not None:
                self.client.update_registered_model(name, description=description)
            for key, value in tags.items():
                self.client.set_registered_model_tag(name, key, value)

    def delete_model(self, name: str) -> None:
        self._call(f"model {name}", lambda: self.client.delete_registered_model(name))

    def search_models(self, *, name_prefix: str | None, tags: Mapping[str, str]) -> list[ModelRecord]:
        clauses = _tag_clauses(tags)
        if name_prefix:
            clauses.insert(0, _like_prefix(name_prefix))
        with translated("model search"):
            out = [_model_record(m) for m in _every_page(self.client.search_registered_models, clauses)]
        if name_prefix:
            out = [m for m in out if m.name.startswith(name_prefix)]
        return out

    # ---- versions ----
    def create_version(
        self, name: str, *, source: str, run_id: str | None, model_id: str | None, tags: Mapping[str, str]
    ) -> VersionRecord:
        created = self._call(
            f"model {name}",
            lambda: self.client.create_model_version(
                name, source, run_id=run_id, tags=dict(tags), model_id=model_id, await_creation_for=60
            ),
        )
        return _version_record(created)

    def get_version(self, name: str, version: int) -> VersionRecord:
        found = self._call(f"model {name} version {version}", lambda: self.client.get_model_version(name, str(version)))
        return _version_record(found)

    def version_by_alias(self, name: str, alias: str) -> VersionRecord:
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_model_version_by_alias(name, alias)
        except MlflowException as exc:
            # an unknown alias comes back as INVALID_PARAMETER_VALUE "Registered model alias … not found"
            if exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in exc.message:
                raise NotFound(f"model {name} has no alias {alias!r}") from exc
            raise translate(exc, f"model {name}@{alias}") from exc
        except Exception as exc:
            raise translate(exc, f"model {name}@{alias}") from exc
        return _version_record(found)

    def search_versions(self, *, name: str | None, tags: Mapping[str, str]) -> list[VersionRecord]:
        clauses = _tag_clauses(tags)
        if name is not None:
            clauses.insert(0, f"name = {_quote(name)}")
        with translated("model version search"):
            return [_version_record(v) for v in _every_page(self.client.search_model_versions, clauses)]

    def delete_version(self, name: str, version: int) -> None:
        self._call(f"model {name} version {version}", lambda: self.client.delete_model_version(name, str(version)))

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self._call(f"model {name}@{alias}", lambda: self.client.set_registered_model_alias(name, alias, str(version)))

    def delete_alias(self, name: str, alias: str) -> None:
        self._call(f"model {name}@{alias}", lambda: self.client.delete_registered_model_alias(name, alias))

    # ---- sources and artifacts ----
    def resolve_source(self, model_uri: str) -> tuple[str, str | None, str | None]:
        if model_uri.startswith("models:/m-") and "/" not in model_uri[len("models:/") :]:
            model_id = model_uri[len("models:/") :]
            logged = self._call(f"logged model {model_id}", lambda: self.client.get_logged_model(model_id))
            return model_uri, logged.source_run_id or None, model_id
        if model_uri.startswith("runs:/"):
            run_id, _, path = model_uri[len("runs:/") :].partition("/")
            path = path.strip("/")
            if not run_id or not path:
                raise InvalidInput("model_uri must be runs:/<run_id>/<artifact path>", field="model_uri")
            return self._resolve_run_model(run_id, path)
        raise InvalidInput(
            "model_uri must name a logged model (models:/m-<id>) or a run's model (runs:/<run_id>/<path>)",
            field="model_uri",
        )

    def _resolve_run_model(self, run_id: str, path: str) -> tuple[str, str | None, str | None]:
        run = self._call(f"run {run_id}", lambda: self.client.get_run(run_id))
        experiment_id = run.info.experiment_id
        with translated(f"run {run_id}"):
            # MLflow 3 logs models as LoggedModels linked to their run; older runs keep MLmodel under the run
            found: list[Any] = []
            token = None
            while True:
                page = self.client.search_logged_models(
                    experiment_ids=[experiment_id], filter_string=f"name = {_quote(path)}", page_token=token
                )
                found.extend(m for m in page if m.source_run_id == run_id)
                token = page.token
                if not token:
                    break
            if found:
                newest = max(found, key=lambda m: m.creation_timestamp or 0)
                return f"models:/{newest.model_id}", run_id, newest.model_id
            names = {f.path for f in self.client.list_artifacts(run_id, path)}
        if f"{path}/MLmodel" in names:
            return f"{run.info.artifact_uri.rstrip('/')}/{path}", run_id, None
        raise NotFound(f"run {run_id} has no model at {path!r}")

    def download(self, name: str, version: int, dest: Path) -> Path:
        import mlflow.artifacts

        dest.mkdir(parents=True, exist_ok=True)
        with translated(f"model {name} version {version}"):
            # resolve the version through our own client: "models:/…" URIs are resolved by MLflow against the
            # process-wide registry URI, whatever registry_uri says
            uri = self.client.get_model_version_download_uri(name, str(version))
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(dest), tracking_uri=self.tracking_uri
            )
        return Path(local)

    def read_model_file(self, name: str, version: int, path: str) -> str:
        import mlflow.artifacts

        with translated(f"model {name} version {version}"), tempfile.TemporaryDirectory(prefix="haihe-") as tmp:
            uri = self.client.get_model_version_download_uri(name, str(version))
            try:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{uri.rstrip('/')}/{path}", dst_path=tmp, tracking_uri=self.tracking_uri
                )
                return Path(local).read_text(encoding="utf-8")
            except OSError as exc:  # a local artifact store without the file, or an unreadable one
                raise NotFound(f"model {name} version {version} has no {path}: {exc}") from None

    def log_local_model(self, *, experiment: str, local_dir: Path, name: str, run_tags: Mapping[str, str]) -> str:
        from mlflow.entities import LoggedModelStatus

        with translated(f"experiment {experiment}"):
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found is not None else self.client.create_experiment(experiment)
            run = self.client.create_run(experiment_id, tags=dict(run_tags), run_name=f"log-{name}")
            run_id = run.info.run_id
            try:
                logged = self.client.create_logged_model(experiment_id, name=name, source_run_id=run_id)
                self.client.log_model_artifacts(logged.model_id, str(local_dir))
                self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
            except BaseException:
                self.client.set_terminated(run_id, status="FAILED", end_time=int(time.time() * 1000))
                raise
            self.client.set_terminated(run_id)
        return f"models:/{logged.model_id}"
