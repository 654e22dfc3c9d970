"""The one table from the neutral Launch vocabulary to Slurm options, and from those to slurmrestd job fields.

The CLI transport renders the options as sorted ``#SBATCH`` lines; slurmrestd 22.05 ignores ``#SBATCH`` lines
in a submitted script, so the REST transport sends the same options as fields of the job description.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from haihe.errors import InvalidInput
from haihe.schedulers.base import Launch

# names Slurm itself accepts for partitions, accounts and QoS; anything else is refused before sbatch
_SLURM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_JOB_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_PATH = re.compile(r"/[A-Za-z0-9_@%+=:,./-]*")
_UNIX_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")

REST_API = "v0.0.38"  # the OpenAPI plugin of Slurm 22.05; the one place this version is named


def job_name(name: str, tag: str) -> str:
    """Slurm's job name: a sanitised label plus the tag (the exact name reaches the job as HAIHE_JOB_NAME)."""
    label = _JOB_NAME_UNSAFE.sub("_", name).strip("_.")[:48] or "job"
    return f"{label}.{tag}"


def tag_from_name(name: str) -> str | None:
    label, dot, tag = name.rpartition(".")
    return tag if dot and label and _TAG.fullmatch(tag) else None


def _name_field(value: str | None, field: str) -> str | None:
    if value is None or value == "":
        return None
    if not _SLURM_NAME.fullmatch(value):
        raise InvalidInput(f"{field} {value!r} is not a valid Slurm name (letters, digits, _ . -)", field=field)
    return value


def output_pattern(jobs_dir: str, array: bool) -> str:
    return f"{jobs_dir}/%A_%a.out" if array else f"{jobs_dir}/%j.out"


def job_dir(jobs_dir: str, user: str | None) -> str:
    """Where a job's log goes and where it starts: ``<jobs>/<unix user>`` (private to that user), or ``<jobs>``."""
    if user is None:
        return jobs_dir
    if not _UNIX_USER.fullmatch(user):
        raise InvalidInput(f"{user!r} is not a valid Unix account name", field="user")
    return f"{jobs_dir}/{user}"


def slurm_options(launch: Launch, *, jobs_dir: str, pass_qos: bool = True,
                  pass_account: bool = True, batch_signal: bool = True) -> dict[str, str]:
    """Launch → ``{long sbatch option: value}`` ("" for a flag). Values here are never user free text."""
    if not _TAG.fullmatch(launch.tag):
        raise InvalidInput("tag must be 1-128 characters of letters, digits, _ . : -", field="tag")
    if not _PATH.fullmatch(jobs_dir):
        raise InvalidInput(f"jobs directory {jobs_dir!r} must be a plain absolute path", field="jobs_dir")
    jobs_dir = job_dir(jobs_dir, launch.user)
    r = launch.resources
    opts: dict[str, str] = {
        "job-name": job_name(launch.name, launch.tag),
        "comment": launch.tag,
        "nodes": str(r.nodes),
        "ntasks-per-node": str(r.tasks_per_node),
        "cpus-per-task": str(r.cpus_per_task),
        "time": str(r.time_limit_min),
        "output": output_pattern(jobs_dir, bool(launch.array_size)),
        # a requeued job keeps the log of its earlier attempts (Slurm truncates by default)
        "open-mode": "append",
        "chdir": jobs_dir,
        # Slurm requeues batch jobs after node failure by default (JobRequeue=1); make the choice explicit
        "requeue" if launch.requeue else "no-requeue": "",
    }
    for key, value, field in (
        ("partition", launch.partition, "partition"),
        ("account", launch.account if pass_account else None, "account"),
        ("qos", launch.qos if pass_qos else None, "qos"),
    ):
        checked = _name_field(value, field)
        if checked:
            opts[key] = checked
    if r.gpus_per_node:
        opts["gres"] = f"gpu:{r.gpus_per_node}"
    if r.mem_gb is not None:
        opts["mem"] = f"{max(1, round(r.mem_gb * 1024))}M"
    if launch.array_size:
        opts["array"] = f"0-{launch.array_size - 1}"
    if launch.signal_before_end_s:
        # B: signals the batch shell, whose command we `exec`, so the program itself gets SIGUSR1; where B: is
        # refused (slurmrestd) the steps get it, and the script runs the program as a step (sbatch.py)
        prefix = "B:" if batch_signal else ""
        opts["signal"] = f"{prefix}USR1@{int(launch.signal_before_end_s)}"
    return opts


def sbatch_lines(opts: Mapping[str, str]) -> list[str]:
    return [f"#SBATCH --{k}={v}" if v else f"#SBATCH --{k}" for k, v in sorted(opts.items())]


def rest_job(opts: Mapping[str, str], environment: Mapping[str, str]) -> dict[str, Any]:
    """The same options as a slurmrestd v0.0.38 ``job`` object (``environment`` is required there)."""
    nodes = int(opts["nodes"])
    per_node = int(opts["ntasks-per-node"])
    job: dict[str, Any] = {
        "name": opts["job-name"],
        "comment": opts["comment"],
        "nodes": [nodes, nodes],
        "tasks_per_node": per_node,
        "tasks": nodes * per_node,
        "cpus_per_task": int(opts["cpus-per-task"]),
        "time_limit": int(opts["time"]),
        "standard_output": opts["output"],
        "current_working_directory": opts["chdir"],
        "requeue": "requeue" in opts,
        "open_mode": opts.get("open-mode", "truncate"),
        "environment": dict(environment),
    }
    for key in ("partition", "account", "qos", "gres", "array", "signal"):
        if key in opts:
            job[key] = opts[key]
    if "mem" in opts:
        job["memory_per_node"] = int(opts["mem"].rstrip("M"))
    return job
