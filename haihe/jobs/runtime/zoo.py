"""The runtime's two uses of the model zoo: load the model a job starts from, register the model it produced.

The zoo is MLflow's Model Registry; a zoo model ``org/name`` is the registered model ``org~name``
(``haihe.model_zoo.names``). When ``haihe.model_zoo`` offers ``register``/``load`` they are used; until then this
module talks to the registry through ``MlflowClient`` with the same names and lineage tags.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from haihe.errors import TrackingUnavailable
from haihe.jobs.runtime.contract import RegistryError
from haihe.model_zoo.names import ZooRef
from haihe.model_zoo.registry import TAG_ORG, TAG_VISIBILITY, TAG_ZOO

log = logging.getLogger(__name__)


def lineage_tags(job_id: str, run_id: str | None, dataset: str | None, source: str | None,
                 environment: str | None = None) -> dict[str, str]:
    tags = {"haihe.job_id": job_id, "haihe.run_id": run_id or "", "haihe.dataset": dataset or "",
            "haihe.from_zoo": source or "", "haihe.environment": environment or ""}  # fmt: skip
    return {k: v for k, v in tags.items() if v}


def model_uri(ref: ZooRef) -> str:
    """``models:/org~name@alias`` / ``models:/org~name/3`` / ``models:/org~name@latest``-equivalent (newest)."""
    if ref.alias:
        return f"models:/{ref.registered_name}@{ref.alias}"
    if ref.version:
        return f"models:/{ref.registered_name}/{ref.version}"
    return f"models:/{ref.registered_name}/latest"


def load(ref: ZooRef, tracking_uri: str, map_location: str = "cpu") -> Any:
    """The torch model behind a zoo reference (RegistryError when it does not exist)."""
    import mlflow
    import mlflow.pytorch
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)
    try:
        return mlflow.pytorch.load_model(model_uri(ref), map_location=map_location)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            raise RegistryError(f"zoo model {ref} does not exist", field="HAIHE_FROM_ZOO") from None
        raise TrackingUnavailable(f"cannot load zoo model {ref}: {exc}", component="mlflow") from None
    except OSError as exc:
        raise TrackingUnavailable(f"cannot load zoo model {ref}: {exc}", component="mlflow") from None


def register(target: ZooRef, source_uri: str, tracking_uri: str, *, run_id: str | None,
             lineage: Mapping[str, str], description: str = "") -> int:  # fmt: skip
    """Register ``source_uri`` (a logged model) as a new version of zoo model ``target``; return the version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri)
    name = target.registered_name
    try:
        try:
            existing = client.get_registered_model(name)
            if existing.tags.get(TAG_ZOO) != "1":  # made outside the zoo (MLflow's UI, an old job): adopt it
                client.set_registered_model_tag(name, TAG_ZOO, "1")
                client.set_registered_model_tag(name, TAG_ORG, target.org)
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" not in str(exc.error_code):
                raise
            # the same model tags the zoo's own register sets: without haihe.zoo the zoo would not list it
            client.create_registered_model(name, tags={TAG_ZOO: "1", TAG_ORG: target.org, TAG_VISIBILITY: "private"},
                                           description=description or None)
        # MLflow 3 logs models as LoggedModels (models:/m-<id>); a version made from one must name its id
        model_id = source_uri.rsplit("/", 1)[1] if source_uri.startswith("models:/m-") else None
        version = client.create_model_version(name, source_uri, run_id=run_id, tags=dict(lineage),
                                              description=description or None, model_id=model_id)  # fmt: skip
    except MlflowException as exc:
        raise RegistryError(f"registering {target}: {exc.message}") from None
    except OSError as exc:
        raise TrackingUnavailable(f"registering {target}: {exc}", component="mlflow") from None
    log.info("registered %s version %s from %s", target, version.version, source_uri)
    return int(version.version)
