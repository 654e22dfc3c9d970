"""The shared model zoo over MLflow's Model Registry: cards, versions, aliases, lineage and loading.

``ModelZoo.connect("http://mlflow:5000")`` is the entry point; ``tracking.TrackingClient`` reads runs for the
portal. MLflow itself is imported only when a registry is connected or a model is loaded.

The names below load on first use: a job's runtime reads zoo references (``haihe.model_zoo.names``) at every start
and should not pay for pydantic and the registry to do it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from haihe.model_zoo.card import IOField, ModelCard
    from haihe.model_zoo.names import DatasetRef, ZooRef
    from haihe.model_zoo.registry import Lineage, ModelZoo, Visibility, ZooModel, ZooModelDetail, ZooVersion

_WHERE = {
    "IOField": "card",
    "ModelCard": "card",
    "DatasetRef": "names",
    "ZooRef": "names",
    "Lineage": "registry",
    "ModelZoo": "registry",
    "Visibility": "registry",
    "ZooModel": "registry",
    "ZooModelDetail": "registry",
    "ZooVersion": "registry",
}
__all__ = ["DatasetRef", "IOField", "Lineage", "ModelCard", "ModelZoo", "Visibility", "ZooModel", "ZooModelDetail",
           "ZooRef", "ZooVersion"]  # the keys of _WHERE (tests/unit/test_layout.py)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'haihe.model_zoo' has no attribute {name!r}")
    return getattr(importlib.import_module(f"haihe.model_zoo.{module}"), name)
