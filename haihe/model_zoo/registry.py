"""The model zoo: list, get, register, alias, publish, delete, load and export models by ``org/name@alias``.

The zoo's metadata lives in MLflow tags so the platform (and MLflow's own UI) can read it without a second store:

====================  ============================================================================
registered model      ``haihe.zoo`` = "1", ``haihe.org``, ``haihe.visibility`` (private|org|public),
                      ``haihe.task``, ``haihe.card`` (the card of the newest version, JSON)
model version         ``haihe.card`` (this version's card), ``haihe.job_id``, ``haihe.run_id``,
                      ``haihe.dataset`` (``org/name@vN``: the lineage searched by ``models_from_dataset``),
                      ``haihe.environment`` (``sha256:…`` of the job environment's resolved lock)
====================  ============================================================================

Who may see or change which model is the platform's decision; this class only stores and reports visibility.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from haihe.errors import Conflict, HaiheError, InvalidInput, NotFound
from haihe.model_zoo.backend import ModelRecord, RegistryBackend, VersionRecord
from haihe.model_zoo.card import ModelCard
from haihe.model_zoo.names import DatasetRef, ZooRef, as_ref, check_alias, check_name, check_version, decode
from haihe.names import TASK_NAME

Visibility = Literal["private", "org", "public"]
VISIBILITIES: tuple[str, ...] = get_args(Visibility)
Flavor = Literal["auto", "native", "pyfunc"]

TAG_ZOO = "haihe.zoo"
TAG_ORG = "haihe.org"
TAG_VISIBILITY = "haihe.visibility"
TAG_TASK = "haihe.task"
TAG_CARD = "haihe.card"
TAG_JOB = "haihe.job_id"
TAG_RUN = "haihe.run_id"
TAG_DATASET = "haihe.dataset"
TAG_ENVIRONMENT = "haihe.environment"  # sha256:<hex> of the resolved lock of the job's own Python environment
_ENV_REF_RE = re.compile(r"sha256:[0-9a-f]{64}")

_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_RUN_ID_RE = re.compile(r"^[0-9a-f]{32}$")


def check_visibility(value: object, field: str = "visibility") -> Visibility:
    if value not in VISIBILITIES:
        raise InvalidInput(f"{field} must be one of {', '.join(VISIBILITIES)}", field=field)
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class Lineage:
    """Where a version came from: the platform job, the MLflow run and the dataset version it was trained on."""

    job_id: str | None = None
    run_id: str | None = None
    dataset: str | None = None
    environment: str | None = None  # sha256:<hex> of the job environment's resolved lock

    def __post_init__(self) -> None:
        if self.job_id is not None and not _JOB_ID_RE.fullmatch(self.job_id):
            raise InvalidInput(
                "lineage.job_id must be a job id (letters, digits, '.', '_', ':', '-')", field="lineage.job_id"
            )
        if self.run_id is not None and not _RUN_ID_RE.fullmatch(self.run_id):
            raise InvalidInput("lineage.run_id must be an MLflow run id (32 hex digits)", field="lineage.run_id")
        if self.dataset is not None:
            DatasetRef.parse(self.dataset, "lineage.dataset")
        if self.environment is not None and not _ENV_REF_RE.fullmatch(self.environment):
            raise InvalidInput("lineage.environment must be sha256:<64 hex digits>", field="lineage.environment")

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Lineage:
        # each field on its own: a tag edited by hand in MLflow's UI, or a dataset that is no platform dataset
        # (a recipe's built-in data), drops only itself, and a listing never fails
        values: dict[str, str] = {}
        for name, key in (("job_id", TAG_JOB), ("run_id", TAG_RUN), ("dataset", TAG_DATASET),
                          ("environment", TAG_ENVIRONMENT)):
            value = tags.get(key)
            if value is None:
                continue
            try:
                cls(**{name: value})
            except InvalidInput:
                continue
            values[name] = value
        return cls(**values)

    def to_tags(self) -> dict[str, str]:
        pairs = ((TAG_JOB, self.job_id), (TAG_RUN, self.run_id), (TAG_DATASET, self.dataset),
                 (TAG_ENVIRONMENT, self.environment))
        return {key: value for key, value in pairs if value is not None}


@dataclass(frozen=True)
class ZooVersion:
    """One registered version with its card, aliases and lineage."""

    ref: ZooRef  # pinned to the version: org/name:N
    version: int
    status: str
    source: str
    created_at: datetime
    aliases: tuple[str, ...]
    lineage: Lineage
    card: ModelCard | None


@dataclass(frozen=True)
class ZooModel:
    """A zoo model as listed: its metadata and the card of its newest version."""

    ref: ZooRef
    visibility: Visibility
    task: str
    description: str
    aliases: Mapping[str, int]
    card: ModelCard | None
    created_at: datetime
    updated_at: datetime

    @property
    def org(self) -> str:
        return self.ref.org

    @property
    def owner_org(self) -> str:
        return self.ref.org

    @property
    def name(self) -> str:
        return self.ref.name


@dataclass(frozen=True)
class ZooModelDetail:
    """``get``: the model, every version (newest first) and the version the reference selects (if pinned)."""

    model: ZooModel
    versions: list[ZooVersion] = field(default_factory=list)
    selected: ZooVersion | None = None

    @property
    def latest(self) -> ZooVersion | None:
        return self.versions[0] if self.versions else None


def _time(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _card_from_tag(text: str | None) -> ModelCard | None:
    if not text:
        return None
    try:
        return ModelCard.from_json(text)
    except InvalidInput:
        return None


class ModelZoo:
    """The zoo over a registry backend (``ModelZoo.connect(url)`` for a real MLflow server)."""

    def __init__(self, backend: RegistryBackend, *, cache_dir: Path | None = None) -> None:
        self.backend = backend
        default_cache = Path(os.environ.get("HAIHE_MODEL_CACHE", Path.home() / ".cache" / "haihe" / "models"))
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache

    @classmethod
    def connect(cls, tracking_uri: str, *, cache_dir: Path | None = None) -> ModelZoo:
        from haihe.model_zoo.mlflow_backend import MlflowBackend

        return cls(MlflowBackend(tracking_uri), cache_dir=cache_dir)

    # ---- reading ----
    def list(
        self,
        *,
        org: str | None = None,
        task: str | None = None,
        visibility: Visibility | None = None,
        text: str | None = None,
    ) -> list[ZooModel]:
        """Zoo models, filtered by owner org, task, visibility and a case-insensitive text match; sorted by ref."""
        tags = {TAG_ZOO: "1"}
        prefix = None
        if org is not None:
            tags[TAG_ORG] = check_name(org, "org")
            prefix = f"{org}~"
        if task is not None:
            tags[TAG_TASK] = _check_task(task)
        if visibility is not None:
            tags[TAG_VISIBILITY] = check_visibility(visibility)
        models = [m for m in map(self._model, self.backend.search_models(name_prefix=prefix, tags=tags)) if m]
        if text:
            needle = text.casefold()
            models = [m for m in models if needle in _haystack(m)]
        return sorted(models, key=lambda m: str(m.ref))

    def get(self, ref: ZooRef | str) -> ZooModelDetail:
        """The model with its versions; NotFound if there is no such zoo model (or pinned version/alias)."""
        ref = as_ref(ref)
        record = self._zoo_record(ref)
        model = self._model(record)
        assert model is not None
        versions = sorted(
            (self._version(ref, v) for v in self.backend.search_versions(name=ref.registered_name, tags={})),
            key=lambda v: v.version,
            reverse=True,
        )
        selected = self._version(ref, self._resolve(ref)) if ref.pinned() else None
        return ZooModelDetail(model=model, versions=versions, selected=selected)

    def models_from_dataset(self, dataset: str) -> builtins.list[ZooVersion]:
        """Every zoo version whose lineage names this dataset version (for the dataset's page)."""
        ref = DatasetRef.parse(dataset)
        out = []
        for record in self.backend.search_versions(name=None, tags={TAG_DATASET: str(ref)}):
            zref = decode(record.name)
            if zref is not None:
                out.append(self._version(zref, record))
        return sorted(out, key=lambda v: (str(v.ref.model), v.version))

    # ---- writing ----
    def register(
        self,
        ref: ZooRef | str,
        card: ModelCard | Mapping[str, Any],
        *,
        model_uri: str | None = None,
        run_id: str | None = None,
        artifact_path: str | None = None,
        lineage: Lineage | None = None,
        visibility: Visibility | None = None,
    ) -> ZooVersion:
        """Register a logged model as the next version of ``org/name`` with its card and lineage.

        Give ``model_uri`` (``models:/m-…`` or ``runs:/<run>/<path>``) or ``run_id`` + ``artifact_path``. Everything
        is validated before the registry is touched; if a later write fails, what this call created is deleted.
        """
        ref = as_ref(ref)
        if ref.pinned():
            raise InvalidInput("register takes 'org/name'; the version number is assigned", field="ref")
        card = ModelCard.from_dict(card if isinstance(card, ModelCard) else dict(card))
        lineage = lineage or Lineage()
        if visibility is not None:
            check_visibility(visibility)
        model_uri = _model_uri(model_uri, run_id, artifact_path)
        source, source_run, model_id = self.backend.resolve_source(model_uri)
        if lineage.run_id is not None and source_run is not None and lineage.run_id != source_run:
            raise InvalidInput(
                f"lineage.run_id {lineage.run_id} is not the run that logged {model_uri} ({source_run})",
                field="lineage.run_id",
            )
        if lineage.run_id is None and source_run is not None:
            lineage = Lineage(lineage.job_id, source_run, lineage.dataset, lineage.environment)
        if lineage.dataset is not None and lineage.dataset not in card.training_data:
            card = card.model_copy(update={"training_data": [*card.training_data, lineage.dataset]})
        card_json = card.to_json()
        version_tags = {TAG_CARD: card_json, **lineage.to_tags()}
        model_tags = {TAG_TASK: card.task, TAG_CARD: card_json}
        return self._register(ref, source, lineage.run_id, model_id, version_tags, model_tags, card, visibility)

    def _register(
        self,
        ref: ZooRef,
        source: str,
        run_id: str | None,
        model_id: str | None,
        version_tags: dict[str, str],
        model_tags: dict[str, str],
        card: ModelCard,
        visibility: Visibility | None,
    ) -> ZooVersion:
        name = ref.registered_name
        created_model = False
        previous: ModelRecord | None = None
        try:
            previous = self._zoo_record(ref)
        except NotFound:
            base = {TAG_ZOO: "1", TAG_ORG: ref.org, TAG_VISIBILITY: visibility or "private"}
            try:
                self.backend.create_model(name, description=card.description, tags={**base, **model_tags})
                created_model = True
            except Conflict:  # registered concurrently: carry on as a new version of it
                previous = self._zoo_record(ref)
        try:
            record = self.backend.create_version(
                name, source=source, run_id=run_id, model_id=model_id, tags=version_tags
            )
        except BaseException:
            if created_model:
                self._quietly(lambda: self.backend.delete_model(name))
            raise
        if previous is not None:
            update = dict(model_tags)
            if visibility is not None:
                update[TAG_VISIBILITY] = visibility
            try:
                self.backend.update_model(name, description=card.description, tags=update)
            except BaseException:
                self._quietly(lambda: self.backend.delete_version(name, record.version))
                restore = {k: previous.tags[k] for k in update if k in previous.tags}
                self._quietly(lambda: self.backend.update_model(name, description=previous.description, tags=restore))
                raise
        return self._version(ref, record)

    def set_alias(self, ref: ZooRef | str, alias: str, version: int | None) -> ZooVersion | None:
        """Point ``alias`` (``production``, ``staging`` or a custom word) at ``version``; ``None`` removes it.

        A version that does not exist is refused (InvalidInput naming ``version``) and nothing changes."""
        ref = as_ref(ref)
        if ref.pinned():
            raise InvalidInput("set_alias takes 'org/name' and a version", field="ref")
        alias = check_alias(alias)
        self._zoo_record(ref)
        name = ref.registered_name
        if version is None:
            with contextlib.suppress(NotFound):
                self.backend.delete_alias(name, alias)
            return None
        number = check_version(version)
        try:
            record = self.backend.get_version(name, number)
        except NotFound:
            raise InvalidInput(f"{ref} has no version {number}", field="version") from None
        self.backend.set_alias(name, alias, number)
        return self._version(ref, self.backend.get_version(name, record.version))

    def set_visibility(self, ref: ZooRef | str, visibility: Visibility) -> ZooModel:
        """Change who the platform shows the model to (publishing to the public zoo is ``public``)."""
        ref = as_ref(ref)
        check_visibility(visibility)
        self._zoo_record(ref)
        self.backend.update_model(ref.registered_name, description=None, tags={TAG_VISIBILITY: visibility})
        model = self._model(self._zoo_record(ref))
        assert model is not None
        return model

    def delete(self, ref: ZooRef | str) -> None:
        """Delete a whole model (``org/name``) or one version (``org/name:N``). Artifacts stay with their run."""
        ref = as_ref(ref)
        if ref.alias is not None:
            raise InvalidInput("delete takes 'org/name' or 'org/name:version', not an alias", field="ref")
        self._zoo_record(ref)
        if ref.version is None:
            self.backend.delete_model(ref.registered_name)
        else:
            self._resolve(ref)
            self.backend.delete_version(ref.registered_name, ref.version)

    # ---- artifacts ----
    def export(self, ref: ZooRef | str, dest_dir: Path | str) -> Path:
        """Download the model directory of the version ``ref`` selects into ``dest_dir`` (new or empty);
        return the directory holding ``MLmodel``."""
        ref = as_ref(ref)
        record = self._resolve(ref)
        dest = Path(dest_dir)
        if dest.exists() and any(dest.iterdir()):
            raise InvalidInput(f"{dest} is not empty", field="dest_dir")
        return _model_dir(self.backend.download(ref.registered_name, record.version, dest))

    def load(self, ref: ZooRef | str, *, flavor: Flavor = "auto") -> Any:
        """A ready model: the torch module (or SentenceTransformer) for ``native``/``auto`` where MLflow has a
        native flavour, else a pyfunc. Downloads are cached per version under ``cache_dir``."""
        if flavor not in get_args(Flavor):
            raise InvalidInput("flavor must be auto, native or pyfunc", field="flavor")
        return load_model_dir(self.local_path(ref), flavor)

    def local_path(self, ref: ZooRef | str) -> Path:
        """The version's model directory in the local cache (downloaded once per version): what ``load`` reads,
        and what a fine-tuning job or a model server starts from."""
        ref = as_ref(ref)
        record = self._resolve(ref)
        # versions restart at 1 when a model is deleted and registered again: key the cache by source too
        digest = hashlib.sha256(record.source.encode()).hexdigest()[:12]
        target = self.cache_dir / ref.registered_name / f"{record.version}-{digest}"
        if (target / "MLmodel").is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".part-", dir=target.parent))
        try:
            model_dir = _model_dir(self.backend.download(ref.registered_name, record.version, staging))
            try:
                os.replace(model_dir, target)
            except OSError:  # another process finished first
                if not (target / "MLmodel").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def signature(self, ref: ZooRef | str) -> dict[str, builtins.list[dict[str, Any]]] | None:
        """The MLflow signature the selected version was logged with, as ``{"inputs": [...], "outputs": [...]}``
        (MLflow's tensor or column specs), or None when it was logged without one. Reads only ``MLmodel``."""
        ref = as_ref(ref)
        record = self._resolve(ref)
        return parse_signature(self.backend.read_model_file(ref.registered_name, record.version, "MLmodel"))

    # ---- helpers ----
    def _zoo_record(self, ref: ZooRef) -> ModelRecord:
        try:
            record = self.backend.get_model(ref.registered_name)
        except NotFound:
            raise NotFound(f"no zoo model {ref.model}") from None
        if record.tags.get(TAG_ZOO) != "1":
            raise NotFound(f"no zoo model {ref.model}")
        return record

    def _resolve(self, ref: ZooRef) -> VersionRecord:
        name = ref.registered_name
        try:
            if ref.version is not None:
                return self.backend.get_version(name, ref.version)
            if ref.alias is not None:
                return self.backend.version_by_alias(name, ref.alias)
        except NotFound:
            raise NotFound(f"no zoo model {ref}") from None
        self._zoo_record(ref)
        versions = self.backend.search_versions(name=name, tags={})
        if not versions:
            raise NotFound(f"zoo model {ref} has no versions")
        return max(versions, key=lambda v: v.version)

    def _model(self, record: ModelRecord) -> ZooModel | None:
        ref = decode(record.name)
        if ref is None or record.tags.get(TAG_ZOO) != "1":
            return None
        visibility = record.tags.get(TAG_VISIBILITY, "private")
        card = _card_from_tag(record.tags.get(TAG_CARD))
        return ZooModel(
            ref=ref,
            visibility=visibility if visibility in VISIBILITIES else "private",  # type: ignore[arg-type]
            task=record.tags.get(TAG_TASK, card.task if card else ""),
            description=record.description or (card.description if card else ""),
            aliases=dict(record.aliases),
            card=card,
            created_at=_time(record.created_ms),
            updated_at=_time(record.updated_ms),
        )

    def _version(self, ref: ZooRef, record: VersionRecord) -> ZooVersion:
        return ZooVersion(
            ref=ZooRef(ref.org, ref.name, version=record.version),
            version=record.version,
            status=record.status,
            source=record.source,
            created_at=_time(record.created_ms),
            aliases=tuple(sorted(record.aliases)),
            lineage=Lineage.from_tags(record.tags),
            card=_card_from_tag(record.tags.get(TAG_CARD)),
        )

    @staticmethod
    def _quietly(action: Any) -> None:
        """Best-effort cleanup after a failure: the original error is the one to report."""
        with contextlib.suppress(HaiheError):
            action()


def _check_task(task: str) -> str:
    if not re.fullmatch(TASK_NAME, task):
        raise InvalidInput("task must be a lower-case slug such as 'text-embedding'", field="task")
    return task


def _haystack(model: ZooModel) -> str:
    parts = [str(model.ref), model.task, model.description]
    if model.card is not None:
        parts += [model.card.intended_use, model.card.owner]
    return " ".join(parts).casefold()


def _model_uri(model_uri: str | None, run_id: str | None, artifact_path: str | None) -> str:
    if model_uri is not None:
        if run_id is not None or artifact_path is not None:
            raise InvalidInput("give model_uri, or run_id with artifact_path, not both", field="model_uri")
        if not isinstance(model_uri, str) or not model_uri:
            raise InvalidInput("model_uri must be a string", field="model_uri")
        return model_uri
    if run_id is None or not artifact_path:
        raise InvalidInput("give model_uri, or run_id with artifact_path", field="model_uri")
    if not _RUN_ID_RE.fullmatch(run_id):
        raise InvalidInput("run_id must be an MLflow run id (32 hex digits)", field="run_id")
    if artifact_path.startswith("/") or ".." in artifact_path.split("/"):
        raise InvalidInput("artifact_path must be relative to the run", field="artifact_path")
    return f"runs:/{run_id}/{artifact_path}"


def parse_signature(mlmodel: str) -> dict[str, list[dict[str, Any]]] | None:
    """The ``signature`` of an ``MLmodel`` document (MLflow stores its inputs and outputs as JSON strings);
    None when there is none or it cannot be read."""
    import json

    import yaml

    try:
        doc = yaml.safe_load(mlmodel)
        sig = doc.get("signature") if isinstance(doc, dict) else None
        if not isinstance(sig, dict):
            return None
        out: dict[str, list[dict[str, Any]]] = {}
        for part in ("inputs", "outputs"):
            value = sig.get(part)
            specs = json.loads(value) if isinstance(value, str) else value
            out[part] = [s for s in specs if isinstance(s, dict)] if isinstance(specs, list) else []
    except (yaml.YAMLError, ValueError):
        return None
    return out if out["inputs"] else None


def _model_dir(path: Path) -> Path:
    """The directory holding ``MLmodel`` (downloads may nest it one level down)."""
    if (path / "MLmodel").is_file():
        return path
    nested = [p.parent for p in path.glob("*/MLmodel")]
    if len(nested) == 1:
        return nested[0]
    raise NotFound(f"downloaded artifacts at {path} hold no MLmodel file")


def load_model_dir(path: Path, flavor: Flavor = "auto") -> Any:
    """Load an MLflow model directory: the native torch / sentence-transformers object when there is one."""
    from mlflow.models import Model

    flavors = Model.load(str(path / "MLmodel")).flavors
    if flavor != "pyfunc":
        if "pytorch" in flavors:
            import mlflow.pytorch

            return mlflow.pytorch.load_model(str(path), map_location="cpu")
        if "sentence_transformers" in flavors:
            # the weights are in the directory: never let the Hugging Face hub be asked for anything
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import mlflow.sentence_transformers

            return mlflow.sentence_transformers.load_model(str(path))
        if flavor == "native":
            raise InvalidInput(f"the model has no native flavour (flavours: {', '.join(flavors)})", field="flavor")
    import mlflow.pyfunc

    return mlflow.pyfunc.load_model(str(path))
