"""A local Slurm cluster rendered from an NSCC-style description (partitions debug/cpu/gpu/bigmem, QoS, GRES).

``cluster_up`` / ``cluster_down`` / ``cluster_status`` are what ``haihe cluster … --slurm`` and the test fixtures call.
"""

from haihe.cluster.slurm.bringup import SlurmCluster, cluster_down, cluster_status, cluster_up, load_cluster
from haihe.cluster.slurm.description import ClusterDescription, load_description

__all__ = [
    "ClusterDescription",
    "SlurmCluster",
    "cluster_down",
    "cluster_status",
    "cluster_up",
    "load_cluster",
    "load_description",
]
