"""Pure translation between Haihe's neutral records and Ray Jobs: Launch → submit body, Ray job → JobStatus.

Kept free of I/O so the whole mapping (the resource table, the entrypoint line, the state table) is unit
tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from haihe.errors import InvalidInput, Unsupported
from haihe.schedulers.base import JobState, JobStatus, Launch, Launcher
from haihe.schedulers.ray.jobs_api import RayJob
from haihe.shell import UnquotableValue, is_env_name, join

# coreutils `timeout` exits 124 when it had to stop the command: our in-job walltime watchdog.
TIMEOUT_EXIT = 124
# After SIGTERM at the walltime, the command gets this long to checkpoint before SIGKILL.
KILL_AFTER_S = 30
TRAIN_LAUNCHER_MODULE = "haihe.schedulers.ray.train_launcher"
SANDBOX_MODULE = "haihe.schedulers.ray.sandbox"
METADATA_KEY = "haihe_name"
TRAIN_ENV = {
    "AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "WHEN_REQUIRED",
}

_STATE = {
    "PENDING": JobState.QUEUED,
    "RUNNING": JobState.RUNNING,
    "STOPPED": JobState.CANCELLED,
    "SUCCEEDED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
}


@dataclass(frozen=True)
class Need:
    """What a launch takes from the cluster in total (the budgeting unit)."""

    cpus: float
    gpus: float
    memory_bytes: int | None = None
    workers: int = 1


def check_shape(launch: Launch) -> None:
    """Ray-specific refusals that the feature map cannot express."""
    r = launch.resources
    if launch.launcher is Launcher.NONE and r.nodes > 1:
        raise Unsupported(
            "a Ray job's entrypoint runs on one node; use launcher ray_train for multi-node training",
            field="resources.nodes",
        )
    if launch.launcher is Launcher.RAY_TRAIN and r.gpus_per_node % r.tasks_per_node:
        raise InvalidInput(
            "resources.gpus_per_node must be a multiple of tasks_per_node for ray_train (GPUs per worker)",
            field="resources.gpus_per_node",
        )
    for name in launch.env:
        if not is_env_name(name):
            raise InvalidInput(f"environment variable name {name!r} is not valid", field=f"env.{name}")


def need(launch: Launch) -> Need:
    """The resource table: neutral vocabulary → what the job holds on Ray."""
    r = launch.resources
    mem = int(r.mem_gb * 2**30) if r.mem_gb else None
    if launch.launcher is Launcher.RAY_TRAIN:
        workers = r.nodes * r.tasks_per_node
        return Need(cpus=workers * r.cpus_per_task, gpus=r.total_gpus, memory_bytes=mem, workers=workers)
    return Need(cpus=r.tasks_per_node * r.cpus_per_task, gpus=r.gpus_per_node, memory_bytes=mem)


def entrypoint(launch: Launch, *, sandbox: bool = True) -> str:
    """The shell line Ray runs (``/bin/sh -c``), every user value quoted; walltime enforced in the job itself.

    ``exec timeout`` makes coreutils' timeout the process Ray watches: at the walltime it SIGTERMs the
    command's process group, SIGKILLs it ``KILL_AFTER_S`` later and exits 124, reported as TIMEOUT. Inside it,
    the command runs in the job's bubblewrap sandbox (haihe.schedulers.ray.sandbox) unless ``sandbox`` is off
    (a cluster dedicated to one org, whose operator chose so).
    """
    r = launch.resources
    try:
        command = join(launch.command)
    except UnquotableValue as e:
        raise InvalidInput(f"command: {e}", field="command") from e
    if launch.launcher is Launcher.RAY_TRAIN:
        workers = r.nodes * r.tasks_per_node
        launcher = [
            "python", "-m", TRAIN_LAUNCHER_MODULE,
            "--workers", str(workers),
            "--cpus-per-worker", str(r.cpus_per_task),
            "--gpus-per-worker", str(r.gpus_per_node // r.tasks_per_node),
            "--name", launch.name,
            "--",
        ]  # fmt: skip
        command = f"{join(launcher)} {command}"
    if sandbox:
        wrapper = ["python", "-m", SANDBOX_MODULE, "--job", launch.tag]
        if launch.launcher is Launcher.RAY_TRAIN:
            wrapper.append("--ray-client")  # the launcher is a Ray driver: it needs the raylet's sockets
        command = f"{join([*wrapper, '--'])} {command}"
    limit_s = r.time_limit_min * 60
    return f"exec timeout --kill-after={KILL_AFTER_S}s {limit_s}s {command}"


def submit_body(launch: Launch, working_dir_uri: str | None, *, sandbox: bool = True) -> dict[str, Any]:
    """The ``POST /api/jobs/`` body; Ray jobs do not inherit the submitter's env: it goes in runtime_env."""
    n = need(launch)
    runtime_env: dict[str, Any] = {}
    if working_dir_uri:
        runtime_env["working_dir"] = working_dir_uri
    env_vars = {str(k): str(v) for k, v in launch.env.items()}
    if launch.launcher is Launcher.RAY_TRAIN:
        # Train workers write checkpoints with pyarrow's S3 client, which S3 gateways (JuiceFS, older MinIO)
        # answer with HTTP 411 unless it skips the new default checksums.
        for key, value in TRAIN_ENV.items():
            env_vars.setdefault(key, value)
    if env_vars:
        runtime_env["env_vars"] = env_vars
    body: dict[str, Any] = {
        "entrypoint": entrypoint(launch, sandbox=sandbox),
        "submission_id": launch.tag,
        "metadata": {METADATA_KEY: launch.name},
        "runtime_env": runtime_env,
    }
    if launch.launcher is Launcher.RAY_TRAIN:
        # The launcher only coordinates; the workers it starts hold the CPUs/GPUs.
        body["entrypoint_num_cpus"] = 0
    else:
        body["entrypoint_num_cpus"] = n.cpus
        if n.gpus:
            body["entrypoint_num_gpus"] = n.gpus
        if n.memory_bytes:
            body["entrypoint_memory"] = n.memory_bytes
    return body


def _seconds(ms: int | None) -> float | None:
    return ms / 1000.0 if ms else None


def to_status(job: RayJob, *, queue_reason: str | None = None) -> JobStatus:
    """Ray job → neutral status; exit 124 from the walltime wrapper becomes TIMEOUT."""
    state = _STATE.get(job.status, JobState.FAILED)
    reason = job.message
    if state is JobState.FAILED and job.driver_exit_code == TIMEOUT_EXIT:
        state = JobState.TIMEOUT
        reason = "walltime exceeded: stopped by the job's timeout wrapper"
    elif state is JobState.QUEUED and queue_reason:
        reason = queue_reason
    submitted = _seconds(job.start_time_ms)
    ended = _seconds(job.end_time_ms)
    return JobStatus(
        ref=job.submission_id,
        state=state,
        reason=reason,
        exit_code=job.driver_exit_code,
        submitted_at=submitted,
        # Ray records no separate "driver started" time; its start_time is the accept time (documented).
        started_at=submitted if state is not JobState.QUEUED else None,
        ended_at=ended,
        elapsed_s=(ended - submitted) if (ended and submitted) else None,
        tag=job.submission_id,
    )


def lost_status(ref: str, url: str) -> JobStatus:
    """A ref Ray no longer knows: its head restarted (job table is in the GCS's memory) or it was deleted."""
    return JobStatus(
        ref=ref,
        state=JobState.FAILED,
        reason=f"job unknown to the Ray cluster at {url}: lost when the Ray head restarted, or deleted",
        tag=ref,
        lost=True,
    )


def describe_need(n: Need) -> str:
    parts = [f"{n.cpus:g} CPU"]
    if n.gpus:
        parts.append(f"{n.gpus:g} GPU")
    return " + ".join(parts)


def free_text(free: Mapping[str, float], total: Mapping[str, float]) -> str:
    keys = [k for k in ("CPU", "GPU") if total.get(k) or k == "CPU"]
    return ", ".join(f"{free.get(k, 0):g} of {total.get(k, 0):g} {k} free" for k in keys)
