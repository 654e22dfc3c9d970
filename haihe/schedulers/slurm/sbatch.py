"""Render a Launch into a batch script: a pure function, locked by golden files.

Every user value (name, argv, environment values, working dir) passes through :func:`haihe.shell.quote`; the
``#SBATCH`` lines carry only checked names and numbers (see options.py). The command is ``exec``-ed so that
``--signal=B:USR1@s`` reaches the program itself, not a shell that would ignore it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from haihe.errors import InvalidInput
from haihe.schedulers.base import Launch, Launcher
from haihe.schedulers.slurm.options import sbatch_lines
from haihe.shell import UnquotableValue, export_line, is_env_name, join, quote

RESERVED_ENV = ("HAIHE_JOB_NAME", "HAIHE_JOB_TAG", "HAIHE_ARRAY_INDEX", "HAIHE_DIST_BACKEND")


@dataclass(frozen=True)
class LauncherConfig:
    """Where the launchers live on the compute nodes (the venv's python for torchrun)."""

    torchrun: tuple[str, ...] = ("torchrun",)
    # MASTER_PORT = base + job id % span: concurrent jobs do not collide, and the range sits above Linux's
    # ephemeral ports (32768-60999), which any outgoing connection on the node may hold (EADDRINUSE at rendezvous)
    rdzv_port_base: int = 61000
    rdzv_port_span: int = 4000
    mpi: str = "pmix"  # srun --mpi=...; Debian's Open MPI 4.1 works with pmix, not pmi2
    # can Slurm signal the batch shell itself (--signal=B:...)? sbatch can; slurmrestd 22.05 (v0.0.38) refuses
    # "B:", and without it only job steps are signalled, so a single-process job then runs as a one-task step
    batch_signal: bool = True


def _launch_lines(launch: Launch, cfg: LauncherConfig) -> list[str]:
    r = launch.resources
    cmd = join(launch.command)
    if launch.launcher == Launcher.NONE:
        if launch.signal_before_end_s and not cfg.batch_signal:
            # one task holding every CPU of the allocation (it keeps the job's GPUs and memory by default)
            return ['exec srun --nodes=1 --ntasks=1 --cpus-per-task="$SLURM_CPUS_ON_NODE" --kill-on-bad-exit=1 '
                    f"{cmd}"]
        return [f"exec {cmd}"]
    if launch.launcher == Launcher.MPI:
        return [f"exec srun --mpi={quote(cfg.mpi)} --nodes={r.nodes} --ntasks-per-node={r.tasks_per_node} "
                f"--kill-on-bad-exit=1 {cmd}"]
    if launch.launcher == Launcher.TORCHRUN:
        backend = "nccl" if r.gpus_per_node else "gloo"
        inner = (f"exec {join(cfg.torchrun)} --nnodes={r.nodes} --nproc-per-node={r.tasks_per_node} "
                 '--node-rank="$SLURM_NODEID" --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" '
                 '--no-python "$@"')
        return [
            f"export HAIHE_DIST_BACKEND={backend}",
            "# rendezvous on the allocation's first node, by the address Slurm knows it by",
            'HAIHE_RDZV_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
            'MASTER_ADDR=$(scontrol show node -o "$HAIHE_RDZV_NODE" | sed -n \'s/.* NodeAddr=\\([^ ]*\\).*/\\1/p\')',
            f"MASTER_PORT=$(({cfg.rdzv_port_base} + SLURM_JOB_ID % {cfg.rdzv_port_span}))",
            "export MASTER_ADDR MASTER_PORT",
            # one torchrun per node; static rendezvous on node 0 (c10d's "am I the host" guess fails when
            # every node is 127.0.0.1); SLURM_NODEID is per task, so an inner shell reads it
            f"exec srun --nodes={r.nodes} --ntasks={r.nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 "
            f"bash -c {quote(inner)} haihe-torchrun {cmd}",
        ]
    raise InvalidInput(f"launcher {launch.launcher.value!r} is not available on Slurm", field="launcher")


def _env_lines(launch: Launch) -> list[str]:
    lines = [export_line("HAIHE_JOB_NAME", launch.name), export_line("HAIHE_JOB_TAG", launch.tag)]
    for key in sorted(launch.env):
        if not is_env_name(key) or key in RESERVED_ENV:
            raise InvalidInput(f"environment variable name {key!r} is not allowed", field=f"env.{key}")
        lines.append(export_line(key, launch.env[key]))
    if launch.array_size:
        lines.append('export HAIHE_ARRAY_INDEX="$SLURM_ARRAY_TASK_ID"')
    return lines


def render_script(launch: Launch, options: Mapping[str, str], cfg: LauncherConfig | None = None) -> str:
    """The complete batch script (options as sorted #SBATCH lines, then env, cd and the launcher)."""
    cfg = cfg or LauncherConfig()
    try:
        body: Sequence[str] = [
            *_env_lines(launch),
            *([f"cd -- {quote(launch.workdir)}"] if launch.workdir else []),
            *_launch_lines(launch, cfg),
        ]
    except UnquotableValue as exc:
        raise InvalidInput(f"value cannot reach a shell: {exc}", field="command") from exc
    return "\n".join(["#!/bin/bash", *sbatch_lines(options), "", *body]) + "\n"
