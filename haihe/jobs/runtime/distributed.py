"""Where this process sits in the job: one function reads rank/world/rendezvous from whichever launcher started it.

Launchers, in the order they are recognised (a process started by torchrun inside an srun step sees both):

=============  ==================================================================================================
Ray Train      torch.distributed already initialised by the TorchTrainer worker (passed in as ``preinit``)
torchrun       RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE / GROUP_RANK / MASTER_ADDR / MASTER_PORT
MPI            OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE (mpirun, or srun with Open MPI), else PMIX_RANK or
               PMI_RANK with Slurm's step variables (``srun --mpi=pmix``) or PMI_SIZE
Slurm          an ``srun`` step: SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID / SLURM_STEP_TASKS_PER_NODE /
               SLURM_NODEID; the rendezvous host is the step's first node, by the address Slurm knows it by
single         none of the above: rank 0 of 1
=============  ==================================================================================================

The batch script itself (outside ``srun``) also carries SLURM_PROCID=0 and SLURM_NTASKS=N; it is *not* rank 0 of
N (the other N-1 ranks would never come), so the Slurm reading requires a step (SLURM_STEP_NUM_TASKS).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from haihe.errors import InvalidInput
from haihe.jobs.runtime.contract import DistInitError

# MASTER_PORT = base + job id % span: above Linux's ephemeral ports (32768-60999), which outgoing connections may
# hold, and clear of torchrun's rendezvous (61000-64999, see haihe.schedulers.slurm.sbatch)
SLURM_PORT_BASE = 65000
SLURM_PORT_SPAN = 500
DEFAULT_PORT = 29500


@dataclass(frozen=True)
class PreInit:
    """A process group someone else (Ray Train) already formed."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int = 0


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job."""

    source: str  # "ray" | "torchrun" | "mpi" | "slurm" | "single"
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    node_rank: int
    master_addr: str
    master_port: int
    backend: str  # "gloo" | "nccl"
    preinitialised: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def init_method(self) -> str:
        # torchrun's workers must join the agent's store (TORCHELASTIC_USE_AGENT_STORE) through env://; a tcp://
        # URL would make rank 0 try to host a second store on the agent's port.
        return "env://" if self.source == "torchrun" else f"tcp://{self.master_addr}:{self.master_port}"

    def device(self) -> str:
        return f"cuda:{self.local_rank}" if self.backend == "nccl" else "cpu"

    def child_environ(self) -> dict[str, str]:
        """torchrun-style variables for a user command, so ``init_process_group("env://")`` just works."""
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "GROUP_RANK": str(self.node_rank),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "HAIHE_DIST_BACKEND": self.backend,
        }


class SlurmLookup:
    """Resolve the rendezvous host of a Slurm step with ``scontrol`` (the seam unit tests replace)."""

    def __init__(self, run: Callable[[list[str]], str] | None = None) -> None:
        self._run = run or _check_output

    def first_node_addr(self, nodelist: str) -> str:
        hosts = self._run(["scontrol", "show", "hostnames", nodelist]).split()
        if not hosts:
            raise DistInitError(f"scontrol show hostnames {nodelist!r} returned no host")
        # Several slurmd "nodes" may share a host with made-up names; NodeAddr is what they are reachable by.
        node = self._run(["scontrol", "show", "node", "-o", hosts[0]])
        m = re.search(r"\bNodeAddr=(\S+)", node)
        return m.group(1) if m else hosts[0]


def _check_output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise DistInitError(f"{' '.join(argv[:3])} failed: {exc}") from None


# Device files a GPU torch can use: NVIDIA's, AMD's (ROCm builds answer torch.cuda too) and WSL2's. Without them
# CUDA cannot be available, and the answer needs no torch: importing it costs a job process 2-4 s of CPU before
# the user's command starts, on every rank of every job.
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def _cuda_available(device_files: tuple[str, ...] = GPU_DEVICE_FILES) -> bool:
    if not any(os.path.exists(f) for f in device_files):
        return False
    import torch

    return bool(torch.cuda.is_available())


def _get_int(env: Mapping[str, str], *names: str, default: int | None = None) -> int:
    for name in names:
        raw = env.get(name, "").strip()
        if raw:
            try:
                return int(raw)
            except ValueError:
                raise InvalidInput(f"{name}={raw!r} is not a whole number", field=name) from None
    if default is None:
        raise InvalidInput(f"{names[0]} is not set", field=names[0])
    return default


def tasks_on_node(tasks_per_node: str, node_index: int) -> int:
    """Slurm's compressed ``2(x3),1`` → the task count of node ``node_index``."""
    counts: list[int] = []
    for part in tasks_per_node.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise InvalidInput(f"cannot read tasks per node {tasks_per_node!r}", field="SLURM_STEP_TASKS_PER_NODE")
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    if not 0 <= node_index < len(counts):
        raise InvalidInput(f"node {node_index} is not in {tasks_per_node!r}", field="SLURM_NODEID")
    return counts[node_index]


def _slurm_master(env: Mapping[str, str], lookup: SlurmLookup) -> tuple[str, int]:
    addr = env.get("MASTER_ADDR", "")
    if not addr:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "")
        if not nodelist:
            raise InvalidInput("SLURM_JOB_NODELIST is not set", field="SLURM_JOB_NODELIST")
        addr = lookup.first_node_addr(nodelist)
    job_id = _get_int(env, "SLURM_JOB_ID", "SLURM_JOBID", default=0)
    return addr, _get_int(env, "MASTER_PORT", default=SLURM_PORT_BASE + job_id % SLURM_PORT_SPAN)


def detect(
    environ: Mapping[str, str],
    *,
    preinit: PreInit | None = None,
    slurm: SlurmLookup | None = None,
    cuda_available: Callable[[], bool] = _cuda_available,
) -> DistEnv:
    """Read this process's rank, world and rendezvous from the launcher's variables (see the module table)."""
    env = environ
    forced = env.get("HAIHE_DIST_BACKEND", "").strip()
    if forced and forced not in ("gloo", "nccl"):
        raise InvalidInput(f"HAIHE_DIST_BACKEND={forced!r}: use gloo or nccl", field="HAIHE_DIST_BACKEND")
    backend = forced or ("nccl" if cuda_available() else "gloo")
    addr, port = env.get("MASTER_ADDR", "127.0.0.1"), _get_int(env, "MASTER_PORT", default=DEFAULT_PORT)

    if preinit is not None:
        return DistEnv("ray", preinit.rank, preinit.world_size, preinit.local_rank, preinit.local_world_size,
                       preinit.node_rank, addr, port, backend, preinitialised=True)  # fmt: skip

    if env.get("TORCHELASTIC_RUN_ID") or ("RANK" in env and "WORLD_SIZE" in env and "LOCAL_RANK" in env):
        world = _get_int(env, "WORLD_SIZE")
        local_world = _get_int(env, "LOCAL_WORLD_SIZE", default=world)
        rank = _get_int(env, "RANK")
        node = _get_int(env, "GROUP_RANK", default=rank // max(local_world, 1))
        return DistEnv("torchrun", rank, world, _get_int(env, "LOCAL_RANK"), local_world, node, addr, port, backend)

    in_step = bool(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_STEP_ID"))
    lookup = slurm or SlurmLookup()

    if "OMPI_COMM_WORLD_RANK" in env:
        world = _get_int(env, "OMPI_COMM_WORLD_SIZE")
        local_world = _get_int(env, "OMPI_COMM_WORLD_LOCAL_SIZE", default=world)
        rank = _get_int(env, "OMPI_COMM_WORLD_RANK")
        if in_step and "MASTER_ADDR" not in env:
            addr, port = _slurm_master(env, lookup)
        node = _get_int(env, "OMPI_COMM_WORLD_NODE_RANK", "SLURM_NODEID", default=rank // max(local_world, 1))
        local = _get_int(env, "OMPI_COMM_WORLD_LOCAL_RANK")
        return DistEnv("mpi", rank, world, local, local_world, node, addr, port, backend)

    if "PMIX_RANK" in env or "PMI_RANK" in env:
        rank = _get_int(env, "PMIX_RANK", "PMI_RANK")
        if in_step:
            world = _get_int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
            node = _get_int(env, "SLURM_NODEID", default=0)
            local_world = tasks_on_node(env.get("SLURM_STEP_TASKS_PER_NODE", str(world)), node)
            local = _get_int(env, "SLURM_LOCALID", default=0)
            if "MASTER_ADDR" not in env:
                addr, port = _slurm_master(env, lookup)
        else:
            world = _get_int(env, "PMI_SIZE", "PMIX_SIZE", default=1)
            local, local_world, node = rank, world, 0  # mpirun on one host without Open MPI's variables
        return DistEnv("mpi", rank, world, local, local_world, node, addr, port, backend)

    if in_step and "SLURM_PROCID" in env:
        world = _get_int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
        node = _get_int(env, "SLURM_NODEID", default=0)
        local_world = tasks_on_node(env.get("SLURM_STEP_TASKS_PER_NODE", str(world)), node)
        addr, port = _slurm_master(env, lookup) if world > 1 else (addr, port)
        return DistEnv("slurm", _get_int(env, "SLURM_PROCID"), world, _get_int(env, "SLURM_LOCALID", default=0),
                       local_world, node, addr, port, backend)  # fmt: skip

    return DistEnv("single", 0, 1, 0, 1, 0, addr, port, backend)


def init_process_group(dist: DistEnv, timeout_s: float = 600.0) -> None:
    """Form torch's process group for ``dist`` (no-op for one process or when Ray Train already did)."""
    import torch
    import torch.distributed as tdist

    if dist.backend == "nccl":
        torch.cuda.set_device(dist.local_rank)
    if dist.preinitialised or not dist.is_distributed or tdist.is_initialized():
        return
    kwargs: dict[str, Any] = {"backend": dist.backend, "timeout": timedelta(seconds=timeout_s)}
    if dist.source != "torchrun":
        kwargs.update(rank=dist.rank, world_size=dist.world_size)
    if dist.backend == "nccl":
        kwargs["device_id"] = torch.device("cuda", dist.local_rank)
    try:
        tdist.init_process_group(init_method=dist.init_method, **kwargs)
    except (RuntimeError, ValueError, OSError) as exc:
        raise DistInitError(
            f"rank {dist.rank}/{dist.world_size} could not join {dist.master_addr}:{dist.master_port} "
            f"({dist.source}, {dist.backend}): {exc}"
        ) from None


def destroy_process_group(dist: DistEnv) -> None:
    """Tear down a group this runtime formed (Ray Train tears down its own)."""
    import torch.distributed as tdist

    if not dist.preinitialised and tdist.is_initialized():
        tdist.destroy_process_group()
