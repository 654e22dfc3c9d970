"""The Scheduler protocol, the neutral Launch it takes, and the records it returns.

Schedulers never see a JobSpec: the jobs layer renders a spec into a :class:`Launch` (resources in one neutral
vocabulary, an argv, environment, working directory, name, account, partition, QoS and the platform's tag).
A backend subclasses :class:`BaseScheduler` and fills the ``_hooks``; the public methods do the cross-cutting work
(feature checks, validation, timing) once for every backend.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

from haihe.errors import InvalidInput, Unsupported

log = logging.getLogger(__name__)


class JobState(str, enum.Enum):
    """Platform job states (DESIGN.md). Terminal states are final."""

    PENDING = "PENDING"  # row committed, scheduler not yet called
    SUBMITTED = "SUBMITTED"  # scheduler accepted it
    QUEUED = "QUEUED"  # waiting for resources
    RUNNING = "RUNNING"
    PREEMPTED = "PREEMPTED"  # requeued by the scheduler; goes back to QUEUED
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"

    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT})


class Launcher(str, enum.Enum):
    """How the command is started on the allocation."""

    NONE = "none"  # run the command once on the first node
    TORCHRUN = "torchrun"  # one torchrun per node, rendezvous on the first node
    MPI = "mpi"  # one rank per task (srun --mpi=pmix on Slurm)
    RAY_TRAIN = "ray_train"  # Ray Train TorchTrainer workers


class Feature(str, enum.Enum):
    """What a Launch may ask for that not every backend can do."""

    PARTITIONS = "partitions"
    QOS = "qos"
    ARRAYS = "arrays"
    WALLTIME = "walltime"
    GPUS = "gpus"
    MULTI_NODE = "multi_node"
    REQUEUE = "requeue"
    ACCOUNTS = "accounts"
    LAUNCHER_TORCHRUN = "launcher_torchrun"
    LAUNCHER_MPI = "launcher_mpi"
    LAUNCHER_RAY_TRAIN = "launcher_ray_train"


@dataclass(frozen=True)
class Resources:
    """The one neutral resource vocabulary (sbatch words); backends translate it in a single table."""

    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    mem_gb: float | None = None
    time_limit_min: int = 60

    def validate(self) -> None:
        for name in ("nodes", "tasks_per_node", "cpus_per_task", "time_limit_min"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"resources.{name} must be at least 1", field=f"resources.{name}")
        if self.gpus_per_node < 0:
            raise InvalidInput("resources.gpus_per_node must not be negative", field="resources.gpus_per_node")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise InvalidInput("resources.mem_gb must be positive", field="resources.mem_gb")

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def total_cpus(self) -> int:
        return self.nodes * self.tasks_per_node * self.cpus_per_task


@dataclass(frozen=True)
class Launch:
    """Everything a backend needs to start one job (or one array of jobs)."""

    tag: str  # the platform's job UUID; Slurm --comment / job name suffix, Ray submission_id
    name: str
    command: tuple[str, ...]  # argv; quoted by haihe.shell.quote where it reaches a shell
    resources: Resources = field(default_factory=Resources)
    launcher: Launcher = Launcher.NONE
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None  # absolute path visible to the compute nodes (Slurm) or a local dir (Ray)
    account: str | None = None
    user: str | None = None  # Unix account the job runs as (backends with RUNS_AS_USER); None: the submitter
    partition: str | None = None
    qos: str | None = None
    array_size: int | None = None  # N tasks; each sees HAIHE_ARRAY_INDEX=0..N-1
    requeue: bool = False
    signal_before_end_s: int | None = None  # SIGUSR1 this long before the walltime (checkpoint)

    def required_features(self) -> set[Feature]:
        needed: set[Feature] = set()
        if self.partition:
            needed.add(Feature.PARTITIONS)
        if self.qos:
            needed.add(Feature.QOS)
        if self.account:
            needed.add(Feature.ACCOUNTS)
        if self.array_size:
            needed.add(Feature.ARRAYS)
        if self.resources.gpus_per_node:
            needed.add(Feature.GPUS)
        if self.resources.nodes > 1:
            needed.add(Feature.MULTI_NODE)
        if self.requeue or self.signal_before_end_s:
            needed.add(Feature.REQUEUE)
        launcher_feature = {
            Launcher.TORCHRUN: Feature.LAUNCHER_TORCHRUN,
            Launcher.MPI: Feature.LAUNCHER_MPI,
            Launcher.RAY_TRAIN: Feature.LAUNCHER_RAY_TRAIN,
        }.get(self.launcher)
        if launcher_feature:
            needed.add(launcher_feature)
        return needed


@dataclass(frozen=True)
class JobStatus:
    """One job's state as the scheduler sees it, parsed into a small typed record at the seam."""

    ref: str
    state: JobState
    reason: str | None = None  # queue reason, failure reason
    exit_code: int | None = None
    nodes: tuple[str, ...] = ()
    queue_position: int | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    ended_at: float | None = None
    elapsed_s: float | None = None  # accounted wall time, for settlement
    alloc_cpus: int | None = None
    alloc_gpus: int | None = None
    tag: str | None = None
    # the infrastructure lost this attempt (head restart, node failure), not the program: a job with retries left
    # runs again as a new attempt
    lost: bool = False


@dataclass(frozen=True)
class LogChunk:
    data: str
    offset: int  # offset to pass next time
    complete: bool = False  # the job is terminal and everything has been read


@dataclass(frozen=True)
class Partition:
    name: str
    nodes: int
    cpus_total: int
    cpus_free: int
    gpus_total: int
    gpus_free: int
    max_time_min: int | None = None
    default: bool = False
    state: str = "UP"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    state: str
    cpus_total: int
    cpus_free: int
    gpus_total: int = 0
    gpus_free: int = 0
    partitions: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterInfo:
    """What ``describe()`` returns: for the portal's cluster view and for admission checks."""

    scheduler: str
    partitions: tuple[Partition, ...] = ()
    nodes: tuple[NodeInfo, ...] = ()
    queue_length: int = 0  # jobs waiting to start (not those running)
    qos: tuple[str, ...] = ()
    running: int = 0  # jobs running now

    @property
    def cpus_total(self) -> int:
        return sum(n.cpus_total for n in self.nodes)

    @property
    def gpus_total(self) -> int:
        return sum(n.gpus_total for n in self.nodes)


@runtime_checkable
class Scheduler(Protocol):
    """The protocol every backend implements (DESIGN.md "Scheduler protocol")."""

    url: str
    unsupported: Mapping[Feature, str]

    @property
    def enforces_walltime(self) -> bool: ...

    def check(self, launch: Launch) -> None: ...
    def admit(self, launch: Launch) -> None: ...
    def submit(self, launch: Launch) -> str: ...
    def status(self, refs: Sequence[str]) -> dict[str, JobStatus]: ...
    def find(self, tags: Sequence[str]) -> dict[str, str]: ...
    def cancel(self, ref: str) -> None: ...
    def logs(self, ref: str, offset: int = 0) -> LogChunk: ...
    def describe(self) -> ClusterInfo: ...
    def endpoint(self, ref: str) -> str | None: ...


class BaseScheduler:
    """Public verbs do the shared work; a backend fills the ``_hooks``.

    ``find(tags)`` maps platform tags back to native refs: it is how a platform that crashed between the
    scheduler's accept and its own commit finds the job again instead of submitting it twice.
    """

    UNSUPPORTED: ClassVar[Mapping[Feature, str]] = {}
    # False: the scheduler never stops a job at its walltime itself; the reconciler's backstop does
    # (haihe.schedulers.walltime), after the in-job ``timeout`` the backend renders
    ENFORCES_WALLTIME: ClassVar[bool] = True
    # True: jobs run as ``Launch.user`` (Slurm), so the platform gives every launch its user's Unix account
    RUNS_AS_USER: ClassVar[bool] = False

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def unsupported(self) -> Mapping[Feature, str]:
        return self.UNSUPPORTED

    @property
    def enforces_walltime(self) -> bool:
        return self.ENFORCES_WALLTIME

    def check(self, launch: Launch) -> None:
        """Refuse what this backend cannot do, naming the reason; validate the neutral fields."""
        launch.resources.validate()
        if not launch.command:
            raise InvalidInput("command must not be empty", field="command")
        if not launch.tag:
            raise InvalidInput("tag must not be empty", field="tag")
        if launch.array_size is not None and launch.array_size < 1:
            raise InvalidInput("array_size must be at least 1", field="array_size")
        for feature in sorted(launch.required_features(), key=lambda f: f.value):
            why = self.unsupported.get(feature)
            if why is not None:
                raise Unsupported(f"{self.url}: {feature.value} not supported: {why}", field=feature.value)

    def admit(self, launch: Launch) -> None:
        """Refuse what the live cluster cannot run (an unknown partition, more GPUs per node than its nodes have,
        a walltime over its limit), naming the field. Read from a short-lived cache of ``describe()``; a cluster
        that cannot be asked raises ServiceUnavailable (the platform then stores the job and submits it later).
        Backends without such limits admit everything."""

    def submit(self, launch: Launch) -> str:
        self.check(launch)
        t0 = time.perf_counter()
        ref = self._submit(launch)
        log.info("submitted %s as %s on %s in %.3fs", launch.tag, ref, self.url, time.perf_counter() - t0)
        return ref

    def status(self, refs: Sequence[str]) -> dict[str, JobStatus]:
        if not refs:
            return {}
        return self._status(list(dict.fromkeys(refs)))

    def find(self, tags: Sequence[str]) -> dict[str, str]:
        if not tags:
            return {}
        return self._find(list(dict.fromkeys(tags)))

    def cancel(self, ref: str) -> None:
        self._cancel(ref)

    def logs(self, ref: str, offset: int = 0) -> LogChunk:
        if offset < 0:
            raise InvalidInput("offset must not be negative", field="offset")
        return self._logs(ref, offset)

    def describe(self) -> ClusterInfo:
        return self._describe()

    def endpoint(self, ref: str) -> str | None:
        return self._endpoint(ref)

    # -- hooks -------------------------------------------------------------------------------------------------
    def _submit(self, launch: Launch) -> str:
        raise NotImplementedError

    def _status(self, refs: list[str]) -> dict[str, JobStatus]:
        raise NotImplementedError

    def _find(self, tags: list[str]) -> dict[str, str]:
        raise NotImplementedError

    def _cancel(self, ref: str) -> None:
        raise NotImplementedError

    def _logs(self, ref: str, offset: int) -> LogChunk:
        raise NotImplementedError

    def _describe(self) -> ClusterInfo:
        raise NotImplementedError

    def _endpoint(self, ref: str) -> str | None:
        return None
