"""A stateful stand-in scheduler for portal tests: Slurm-like partitions, a queue, nodes, growing logs.

Unit tests step it by hand (``advance``); the browser tests' server runs it on the clock (``auto=True``), so a job
queues, starts on a node, prints a line per ``tick_s`` and finishes — enough to watch a live log stream.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from haihe.schedulers.base import (
    BaseScheduler,
    ClusterInfo,
    JobState,
    JobStatus,
    Launch,
    LogChunk,
    NodeInfo,
    Partition,
)

PARTITIONS = (
    Partition("debug", nodes=2, cpus_total=8, cpus_free=8, gpus_total=0, gpus_free=0, max_time_min=30, default=True),
    Partition("cpu", nodes=4, cpus_total=32, cpus_free=20, gpus_total=0, gpus_free=0, max_time_min=2880),
    Partition("gpu", nodes=2, cpus_total=16, cpus_free=8, gpus_total=8, gpus_free=5, max_time_min=1440),
)
NODES = (
    NodeInfo("cn1", "IDLE", 4, 4, partitions=("debug", "cpu")),
    NodeInfo("cn2", "MIXED", 4, 2, partitions=("debug", "cpu")),
    NodeInfo("gn1", "MIXED", 8, 4, gpus_total=4, gpus_free=1, partitions=("gpu",)),
    NodeInfo("gn2", "IDLE", 8, 8, gpus_total=4, gpus_free=4, partitions=("gpu",)),
)


@dataclass
class DemoJob:
    launch: Launch
    state: JobState = JobState.QUEUED
    lines: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.monotonic)
    reason: str = "Priority"


class DemoScheduler(BaseScheduler):
    """Jobs queue, run on a node of their partition, log ``steps`` lines and succeed."""

    def __init__(self, url: str = "demo://", *, auto: bool = False, tick_s: float = 0.6, steps: int = 12) -> None:
        super().__init__(url)
        self.jobs: dict[str, DemoJob] = {}
        self.auto = auto
        self.tick_s = tick_s
        self.steps = steps
        self._lock = threading.Lock()

    # -- hooks ---------------------------------------------------------------------------------------------------
    def _submit(self, launch: Launch) -> str:
        with self._lock:
            ref = str(5000 + len(self.jobs))
            self.jobs[ref] = DemoJob(launch)
            return ref

    def _status(self, refs: list[str]) -> dict[str, JobStatus]:
        with self._lock:
            if self.auto:
                self._run_clock()
            return {r: self._status_of(r) for r in refs if r in self.jobs}

    def _find(self, tags: list[str]) -> dict[str, str]:
        return {j.launch.tag: ref for ref, j in self.jobs.items() if j.launch.tag in tags}

    def _cancel(self, ref: str) -> None:
        with self._lock:
            job = self.jobs.get(ref)
            if job is not None and not job.state.is_terminal():
                job.state = JobState.CANCELLED
                job.lines.append("slurmstepd: *** JOB CANCELLED ***\n")

    def _logs(self, ref: str, offset: int) -> LogChunk:
        with self._lock:
            if self.auto:
                self._run_clock()
            job = self.jobs.get(ref)
            text = "".join(job.lines) if job else ""
            done = job is None or job.state.is_terminal()
            return LogChunk(text[offset:], len(text), complete=done and offset >= len(text))

    def _describe(self) -> ClusterInfo:
        queued = sum(1 for j in self.jobs.values() if j.state == JobState.QUEUED)
        return ClusterInfo(scheduler=self.url, partitions=PARTITIONS, nodes=NODES, queue_length=queued,
                           qos=("normal", "high", "debug"))

    # -- driving ---------------------------------------------------------------------------------------------------
    def _status_of(self, ref: str) -> JobStatus:
        job = self.jobs[ref]
        nodes = ("gn1",) if job.launch.partition == "gpu" else ("cn1",)
        position = list(r for r, j in self.jobs.items() if j.state == JobState.QUEUED).index(ref) + 1 \
            if job.state == JobState.QUEUED else None
        return JobStatus(ref=ref, state=job.state, reason=job.reason if job.state == JobState.QUEUED else None,
                         nodes=nodes if job.state != JobState.QUEUED else (), queue_position=position,
                         exit_code=0 if job.state == JobState.SUCCEEDED else None,
                         elapsed_s=len(job.lines) * 60.0, alloc_cpus=1,
                         alloc_gpus=job.launch.resources.total_gpus, tag=job.launch.tag)

    def advance(self, ref: str, lines: int = 1) -> None:
        """Start the job if queued, then print ``lines`` more lines; after ``steps`` lines it succeeds."""
        with self._lock:
            self._step(self.jobs[ref], lines)

    def _step(self, job: DemoJob, lines: int) -> None:
        if job.state.is_terminal():
            return
        if job.state == JobState.QUEUED:
            job.state = JobState.RUNNING
            job.lines.append(f"[haihe] {job.launch.name} starting on {job.launch.partition or 'debug'}\n")
            return
        for _ in range(lines):
            step = len(job.lines)
            loss = 2.3 / (1 + 0.35 * step)
            job.lines.append(f"epoch {step:3d}  loss {loss:.4f}  acc {min(0.99, 0.1 + 0.075 * step):.3f}\n")
            if step >= self.steps:
                job.lines.append("[haihe] done\n")
                job.state = JobState.SUCCEEDED
                return

    def _run_clock(self) -> None:
        now = time.monotonic()
        for job in self.jobs.values():
            due = int((now - job.created) / self.tick_s)
            while not job.state.is_terminal() and len(job.lines) < due:
                self._step(job, 1)
