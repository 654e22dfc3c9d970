"""The shared model zoo over MLflow's Model Registry: cards, versions, aliases, lineage and loading.

``ModelZoo.connect("http://mlflow:5000")`` is the entry point; ``tracking.TrackingClient`` reads runs for the
portal. MLflow itself is imported only when a registry is connected or a model is loaded.
"""

from haihe.model_zoo.card import IOField, ModelCard
from haihe.model_zoo.names import DatasetRef, ZooRef
from haihe.model_zoo.registry import Lineage, ModelZoo, Visibility, ZooModel, ZooModelDetail, ZooVersion

__all__ = [
    "DatasetRef",
    "IOField",
    "Lineage",
    "ModelCard",
    "ModelZoo",
    "Visibility",
    "ZooModel",
    "ZooModelDetail",
    "ZooRef",
    "ZooVersion",
]
