"""The cluster description: node types, partitions and QoS of an NSCC-style Slurm cluster, loaded from TOML.

The description is the single source for slurm.conf/gres.conf rendering, for QoS creation in slurmdbd and for
the platform-side checks the scheduler makes before it calls sbatch (QoS names when there is no accounting).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from haihe.errors import InvalidInput

_NAME = re.compile(r"[a-z][a-z0-9_]{0,30}")
DEFAULT_DESCRIPTION = "default.toml"


@dataclass(frozen=True)
class NodeType:
    name: str
    prefix: str  # node names are prefix1..prefixN
    count: int
    cpus: int
    memory_mb: int
    gpus: int = 0

    def node_names(self) -> tuple[str, ...]:
        return tuple(f"{self.prefix}{i}" for i in range(1, self.count + 1))


@dataclass(frozen=True)
class PartitionSpec:
    name: str
    node_types: tuple[str, ...]
    max_time_min: int
    priority_tier: int = 1
    default: bool = False


@dataclass(frozen=True)
class QosSpec:
    name: str
    priority: int = 0
    max_wall_min: int | None = None
    max_jobs_per_user: int | None = None


@dataclass(frozen=True)
class ClusterDescription:
    name: str
    node_types: tuple[NodeType, ...]
    partitions: tuple[PartitionSpec, ...]
    qos: tuple[QosSpec, ...]
    def_mem_per_cpu_mb: int = 500
    default_account: str = "haihe"
    max_job_count: int = 200000  # slurmctld MaxJobCount (Slurm: 10000); every array task and every ended job counts

    def node_type(self, name: str) -> NodeType:
        for nt in self.node_types:
            if nt.name == name:
                return nt
        raise KeyError(name)

    def partition(self, name: str) -> PartitionSpec | None:
        return next((p for p in self.partitions if p.name == name), None)

    def default_partition(self) -> PartitionSpec:
        return next(p for p in self.partitions if p.default)

    def partition_nodes(self, part: PartitionSpec) -> tuple[str, ...]:
        return tuple(n for t in part.node_types for n in self.node_type(t).node_names())

    def all_nodes(self) -> tuple[tuple[str, NodeType], ...]:
        return tuple((n, nt) for nt in self.node_types for n in nt.node_names())

    def qos_names(self) -> tuple[str, ...]:
        return tuple(q.name for q in self.qos)


def _req(table: dict[str, Any], key: str, typ: type, where: str) -> Any:
    if key not in table:
        raise InvalidInput(f"{where}: missing field {key!r}", field=f"{where}.{key}")
    value = table[key]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise InvalidInput(f"{where}.{key}: expected {typ.__name__}, got {value!r}", field=f"{where}.{key}")
    return value


def _name(table: dict[str, Any], where: str) -> str:
    name = _req(table, "name", str, where)
    if not _NAME.fullmatch(name):
        raise InvalidInput(f"{where}.name {name!r}: use lowercase letters, digits, _", field=f"{where}.name")
    return str(name)


def parse_description(data: dict[str, Any], source: str = "<description>") -> ClusterDescription:
    """Validate a parsed TOML document; every error names the file and the field."""
    cluster = data.get("cluster", {})
    node_types = []
    for i, t in enumerate(data.get("node_types", [])):
        where = f"{source}: node_types[{i}]"
        nt = NodeType(
            name=_name(t, where),
            prefix=_req(t, "prefix", str, where),
            count=_req(t, "count", int, where),
            cpus=_req(t, "cpus", int, where),
            memory_mb=_req(t, "memory_mb", int, where),
            gpus=int(t.get("gpus", 0)),
        )
        if nt.count < 1 or nt.cpus < 1 or nt.memory_mb < 1 or nt.gpus < 0:
            raise InvalidInput(f"{where}: count, cpus, memory_mb must be positive", field=where)
        if not re.fullmatch(r"[a-z]+", nt.prefix):
            raise InvalidInput(f"{where}.prefix must be lowercase letters", field=f"{where}.prefix")
        node_types.append(nt)
    if not node_types:
        raise InvalidInput(f"{source}: at least one [[node_types]] is needed", field="node_types")
    if len({nt.prefix for nt in node_types}) != len(node_types):
        raise InvalidInput(f"{source}: node type prefixes must differ", field="node_types")
    type_names = {nt.name for nt in node_types}
    partitions = []
    for i, p in enumerate(data.get("partitions", [])):
        where = f"{source}: partitions[{i}]"
        types = tuple(_req(p, "node_types", list, where))
        unknown = [t for t in types if t not in type_names]
        if unknown or not types:
            raise InvalidInput(f"{where}.node_types: unknown {unknown or 'empty'}", field=f"{where}.node_types")
        partitions.append(
            PartitionSpec(
                name=_name(p, where),
                node_types=types,
                max_time_min=_req(p, "max_time_min", int, where),
                priority_tier=int(p.get("priority_tier", 1)),
                default=bool(p.get("default", False)),
            )
        )
    if sum(p.default for p in partitions) != 1:
        raise InvalidInput(f"{source}: exactly one partition must have default = true", field="partitions")
    qos = []
    for i, q in enumerate(data.get("qos", [])):
        where = f"{source}: qos[{i}]"
        qos.append(
            QosSpec(
                name=_name(q, where),
                priority=int(q.get("priority", 0)),
                max_wall_min=q.get("max_wall_min"),
                max_jobs_per_user=q.get("max_jobs_per_user"),
            )
        )
    max_jobs = cluster.get("max_job_count", 200000)
    if not isinstance(max_jobs, int) or isinstance(max_jobs, bool) or max_jobs < 1:
        raise InvalidInput(f"{source}: cluster.max_job_count must be a positive integer", field="cluster.max_job_count")
    return ClusterDescription(
        name=str(cluster.get("name", "haihe")),
        node_types=tuple(node_types),
        partitions=tuple(partitions),
        qos=tuple(qos),
        def_mem_per_cpu_mb=int(cluster.get("def_mem_per_cpu_mb", 500)),
        default_account=str(cluster.get("default_account", "haihe")),
        max_job_count=max_jobs,
    )


def load_description(path: str | Path | None = None) -> ClusterDescription:
    """Load a description file, or the default one shipped in this package."""
    if path is None:
        text = resources.files(__package__).joinpath(DEFAULT_DESCRIPTION).read_text()
        source = f"{__package__}/{DEFAULT_DESCRIPTION}"
    else:
        text = Path(path).read_text()
        source = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"{source}: not valid TOML: {exc}", field="description") from exc
    return parse_description(data, source)
