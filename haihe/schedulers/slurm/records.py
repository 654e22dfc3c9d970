"""Parse Slurm's JSON (squeue/REST ``jobs``, sacct/REST ``slurmdb/jobs``, nodes, partitions) into typed records.

squeue --json and GET /slurm/v0.0.38/jobs share one job shape; sacct --json and GET /slurmdb/v0.0.38/jobs share
another. Both are reduced here to :class:`SlurmJob`, then array tasks are folded into one JobStatus per ref.
"""

from __future__ import annotations

import re
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from haihe.schedulers.base import JobState, JobStatus, NodeInfo, Partition
from haihe.schedulers.slurm.options import tag_from_name

STATE_MAP: dict[str, JobState] = {
    "PENDING": JobState.QUEUED,
    "CONFIGURING": JobState.QUEUED,
    "REQUEUED": JobState.PREEMPTED,
    "REQUEUE_HOLD": JobState.PREEMPTED,
    "REQUEUE_FED": JobState.PREEMPTED,
    "PREEMPTED": JobState.PREEMPTED,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,  # epilog still running; the exit code is not final yet
    "SUSPENDED": JobState.RUNNING,
    "STOPPED": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "COMPLETED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "DEADLINE": JobState.TIMEOUT,
    "TIMEOUT": JobState.TIMEOUT,
}


def map_state(slurm_state: str) -> JobState:
    # sacct may say "CANCELLED by 0"; squeue may carry flags after the base state
    base = slurm_state.split()[0].upper() if slurm_state else "PENDING"
    return STATE_MAP.get(base, JobState.QUEUED)


@dataclass(frozen=True)
class SlurmJob:
    """One Slurm job record (an array task is one record) in the fields Haihe uses."""

    job_id: str
    ref: str  # array job id for array tasks, else job id
    state: JobState
    slurm_state: str
    reason: str | None
    exit_code: int | None
    nodes: tuple[str, ...]
    submit: float | None
    start: float | None
    end: float | None
    alloc_cpus: int | None
    alloc_gpus: int | None
    tag: str | None
    priority: int = 0
    task: str | None = None  # array task index


def _ts(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and v > 0 else None


def _tres(s: str | None) -> tuple[int | None, int | None]:
    if not s:
        return None, None
    kv = dict(p.split("=", 1) for p in s.split(",") if "=" in p)
    gpus = kv.get("gres/gpu")
    return (int(kv["cpu"]) if "cpu" in kv else None, int(gpus) if gpus else 0)


def _hostlist(expr: str | None) -> tuple[str, ...]:
    """Expand 'cn[1-2],gn1' into names (Slurm's own compact notation)."""
    if not expr or expr in ("None assigned", "(null)"):
        return ()
    out: list[str] = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]+)\])?", expr):
        prefix, ranges = m.group(1), m.group(2)
        if not ranges:
            out.append(prefix)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            width = len(lo)
            for i in range(int(lo), int(hi or lo) + 1):
                out.append(f"{prefix}{i:0{width}d}")
    return tuple(out)


def _task(value: Any) -> str | None:
    return str(value) if isinstance(value, int) else None


def _exit(value: Any) -> int | None:
    if isinstance(value, dict):  # sacct: {"status": ..., "return_code": n}
        value = value.get("return_code")
    if not isinstance(value, int):
        return None
    return (value >> 8) & 0xFF if value > 255 else value  # squeue reports the raw wait status


def from_squeue(job: Mapping[str, Any]) -> SlurmJob:
    array_id = job.get("array_job_id") or 0
    cpus, gpus = _tres(job.get("tres_alloc_str"))
    if not gpus and cpus is not None:
        # without AccountingStorageTRES=gres/gpu (no slurmdbd) tres_alloc_str omits GPUs; use the request
        gpus = _gpu_count(str(job.get("tres_per_node") or "").replace("gres:", "")) * int(job.get("node_count") or 1)
    comment = job.get("comment") or None
    state = str(job.get("job_state", ""))
    reason = job.get("state_reason")
    return SlurmJob(
        job_id=str(job["job_id"]),
        ref=str(array_id or job["job_id"]),
        state=map_state(state),
        slurm_state=state,
        reason=None if reason in (None, "None") else str(reason),
        exit_code=_exit(job.get("exit_code")) if map_state(state).is_terminal() else None,
        nodes=_hostlist(job.get("nodes")),
        submit=_ts(job.get("submit_time")),
        start=_ts(job.get("start_time")),
        end=_ts(job.get("end_time")) if map_state(state).is_terminal() else None,
        alloc_cpus=cpus,
        alloc_gpus=gpus,
        tag=comment or tag_from_name(str(job.get("name", ""))),
        priority=int(job.get("priority") or 0),
        task=_task(job.get("array_task_id")) if array_id else None,
    )


def from_sacct(job: Mapping[str, Any]) -> SlurmJob:
    arr = job.get("array") or {}
    array_id = arr.get("job_id") or 0
    t = job.get("time") or {}
    st = job.get("state") or {}
    alloc = (job.get("tres") or {}).get("allocated") or []
    cpus = next((a.get("count") for a in alloc if a.get("type") == "cpu"), None)
    gpus = sum(int(a.get("count") or 0) for a in alloc if a.get("type") == "gres" and a.get("name") == "gpu")
    comment = (job.get("comment") or {}).get("job")
    state = str(st.get("current", ""))
    return SlurmJob(
        job_id=str(job["job_id"]),
        ref=str(array_id or job["job_id"]),
        state=map_state(state),
        slurm_state=state,
        reason=None if st.get("reason") in (None, "None") else str(st.get("reason")),
        exit_code=_exit(job.get("exit_code")) if map_state(state).is_terminal() else None,
        nodes=_hostlist(job.get("nodes")),
        submit=_ts(t.get("submission")),
        start=_ts(t.get("start")),
        end=_ts(t.get("end")),
        alloc_cpus=cpus,
        alloc_gpus=gpus if alloc else None,
        tag=comment or tag_from_name(str(job.get("name", ""))),
        task=_task(arr.get("task_id")) if array_id else None,
    )


def array_tasks(expr: str) -> tuple[list[int], bool]:
    """Slurm's task-id expression ('0-4,7,10-20:5%2') → the task ids, and whether the expression was whole.

    Slurm cuts the expression at SLURM_BITSTR_LEN characters (default 64) and ends it with '...'; the ids before
    the cut are returned and the flag says the rest is unknown (those tasks are looked up in accounting instead).
    """
    text = expr.split("%", 1)[0].strip()
    whole = not text.endswith("...")
    text = text.rstrip(".")
    out: list[int] = []
    parts = [p for p in text.split(",") if p]
    for i, part in enumerate(parts):
        span, _, step = part.partition(":")
        lo, _, hi = span.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (step and not step.isdigit()):
            if not whole and i == len(parts) - 1:
                break  # the cut may fall inside the last range ("901-")
            raise ValueError(f"not a Slurm array expression: {expr!r}")
        if not whole and i == len(parts) - 1 and not hi and part.endswith("-"):
            break
        out.extend(range(int(lo), int(hi or lo) + 1, int(step or 1)))
    return out, whole


def jobs_from_squeue(job: Mapping[str, Any], wanted: Container[str] | None = None) -> list[SlurmJob]:
    """One squeue/REST record → one SlurmJob per job or array task.

    Tasks of an array that have not started yet share ONE record (task id unset, ``array_task_string`` '0-999')
    whatever flags squeue gets (--json ignores -r on 22.05), so it is expanded here into one SlurmJob per task.
    The expanded tasks carry the record's own job id: Slurm gives a task its own id only when it starts.
    With ``wanted`` (array ids asked about), an ended array nobody asked about stays one record: slurmctld keeps
    ended arrays for MinJobAge and expanding them all would cost every cycle for nothing.
    """
    rec = from_squeue(job)
    expr = str(job.get("array_task_string") or "")
    if wanted is not None and rec.ref not in wanted and rec.state != JobState.QUEUED:
        return [rec]  # pending ones still expand: each task counts for queue positions
    if rec.ref == rec.job_id and rec.task is None and expr:
        try:
            ids, _ = array_tasks(expr)
        except ValueError:
            return [rec]
        return [replace(rec, task=str(i)) for i in ids]
    return [rec]


_STATE_ORDER = (JobState.FAILED, JobState.TIMEOUT, JobState.CANCELLED, JobState.SUCCEEDED)
LOST_STATES = frozenset({"NODE_FAIL", "BOOT_FAIL"})  # the node, not the program, failed


def fold(ref: str, tasks: list[SlurmJob], queue_position: int | None = None) -> JobStatus:
    """One JobStatus for a plain job or for every task of an array (worst terminal state wins)."""
    states = {t.state for t in tasks}
    if not all(s.is_terminal() for s in states):
        live = states - set(_STATE_ORDER)
        order: tuple[JobState, ...] = (JobState.RUNNING, JobState.PREEMPTED, JobState.QUEUED)
        state = next(s for s in order if s in live)
    else:
        state = next(s for s in _STATE_ORDER if s in states)
    first = min(tasks, key=lambda t: int(t.job_id))
    starts = [t.start for t in tasks if t.start]
    ends = [t.end for t in tasks if t.end]
    elapsed = sum((t.end or 0) - t.start for t in tasks if t.start and t.end) if state.is_terminal() else None
    codes = [t.exit_code for t in tasks if t.exit_code is not None]
    return JobStatus(
        ref=ref,
        state=state,
        reason=next((t.reason for t in tasks if t.reason), None),
        exit_code=max(codes) if codes else None,
        nodes=tuple(dict.fromkeys(n for t in tasks for n in t.nodes)),
        queue_position=queue_position if state == JobState.QUEUED else None,
        submitted_at=first.submit,
        started_at=min(starts) if starts else None,
        ended_at=max(ends) if ends and state.is_terminal() else None,
        elapsed_s=elapsed,
        alloc_cpus=sum(t.alloc_cpus or 0 for t in tasks) if any(t.alloc_cpus for t in tasks) else None,
        alloc_gpus=sum(t.alloc_gpus or 0 for t in tasks) if any(t.alloc_gpus is not None for t in tasks) else None,
        tag=first.tag,
        lost=state == JobState.FAILED and any(
            t.slurm_state.split()[0].upper() in LOST_STATES for t in tasks if t.slurm_state and t.state == state),
    )


def queue_positions(jobs: Iterable[SlurmJob]) -> dict[str, int]:
    """1-based position of each pending ref among all pending jobs (priority, then submit time)."""
    pending = [j for j in jobs if j.state == JobState.QUEUED]
    pending.sort(key=lambda j: (-j.priority, j.submit or 0, int(j.job_id)))
    out: dict[str, int] = {}
    for i, j in enumerate(pending, start=1):
        out.setdefault(j.ref, i)
    return out


def _gpu_count(gres: str | None) -> int:
    total = 0
    for part in (gres or "").split(","):
        m = re.match(r"gpu(?::[^:(]+)?:(\d+)", part)
        if m:
            total += int(m.group(1))
    return total


_DOWN = ("down", "drain", "drained", "draining", "fail", "failing", "future", "unknown")


def parse_node(node: Mapping[str, Any]) -> NodeInfo:
    state = str(node.get("state", "unknown")).lower()
    usable = not any(state.startswith(d) for d in _DOWN) and not set(node.get("state_flags") or []) & {
        "DRAIN", "DRAINED", "DRAINING", "NOT_RESPONDING"}
    cpus = int(node.get("cpus") or 0)
    gpus = _gpu_count(node.get("gres"))
    return NodeInfo(
        name=str(node["name"]),
        state=state,
        cpus_total=cpus,
        cpus_free=max(0, cpus - int(node.get("alloc_cpus") or 0)) if usable else 0,
        gpus_total=gpus,
        gpus_free=max(0, gpus - _gpu_count(node.get("gres_used"))) if usable else 0,
        partitions=tuple(node.get("partitions") or ()),
    )


def parse_partition(part: Mapping[str, Any], nodes: Iterable[NodeInfo]) -> Partition:
    members = [n for n in nodes if part["name"] in n.partitions]
    max_time = part.get("max_time_limit")
    return Partition(
        name=str(part["name"]),
        nodes=len(members),
        cpus_total=sum(n.cpus_total for n in members),
        cpus_free=sum(n.cpus_free for n in members),
        gpus_total=sum(n.gpus_total for n in members),
        gpus_free=sum(n.gpus_free for n in members),
        max_time_min=int(max_time) if isinstance(max_time, int) and max_time > 0 else None,
        default="default" in (part.get("flags") or []),
        state=str(part.get("state", "UP")),
    )


def _minutes(text: str) -> int | None:
    """Slurm's [days-]hh:mm:ss or minutes → minutes; UNLIMITED → None."""
    if text in ("UNLIMITED", "INFINITE", "NONE", ""):
        return None
    days, _, rest = text.rpartition("-")
    parts = [int(p) for p in rest.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts
    return (int(days or 0) * 24 + h) * 60 + m + (1 if s else 0)


def partitions_from_scontrol(text: str) -> list[dict[str, Any]]:
    """``scontrol show partition -o`` (22.05 has no --json there) → the REST partition shape."""
    out = []
    for line in text.splitlines():
        kv = dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
        if "PartitionName" not in kv:
            continue
        out.append({
            "name": kv["PartitionName"],
            "flags": ["default"] if kv.get("Default") == "YES" else [],
            "max_time_limit": _minutes(kv.get("MaxTime", "")) or -1,
            "nodes": kv.get("Nodes", ""),
            "state": kv.get("State", "UP"),
            "total_nodes": int(kv.get("TotalNodes", "0")),
        })
    return out
