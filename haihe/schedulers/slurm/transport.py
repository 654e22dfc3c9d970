"""The seam between SlurmScheduler and Slurm: one small protocol, two implementations (CLI and slurmrestd).

A third one (pyslurm over libslurm) fits here too, but PyPI's pyslurm targets Slurm 25.11 while Debian 12 ships
22.05, so it can be neither built nor tested on this platform's machines (docs/slurm.md).
Transports return raw Slurm JSON records (the v0.0.38 shapes, shared by the CLI's --json and slurmrestd) and
raise Haihe errors; records.py parses the records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from haihe.errors import Conflict, HaiheError, InvalidInput, NotFound, SchedulerUnavailable

Json = dict[str, Any]


class SlurmTransport(Protocol):
    name: str

    def submit(self, script: str, options: Mapping[str, str], environment: Mapping[str, str],
               user: str | None = None) -> str:
        """Submit one batch job (or array) as ``user`` (None: the operator); returns the Slurm job id."""
        ...

    def jobs(self) -> list[Json]:
        """Every job slurmctld holds, in one call (squeue --json ignores its filters on 22.05 anyway)."""
        ...

    def accounting(self, job_ids: Sequence[str]) -> list[Json] | None:
        """Finished jobs from slurmdbd (sacct shape) or None when there is no accounting."""
        ...

    def recent_accounting(self, days: int) -> list[Json] | None:
        """Jobs of the last ``days`` days from slurmdbd, for find(tags) after slurmctld purged them."""
        ...

    def cancel(self, job_id: str) -> None: ...

    def nodes(self) -> list[Json]: ...

    def partitions(self) -> list[Json]: ...

    def qos_names(self) -> list[str] | None:
        """QoS known to slurmdbd, or None without accounting."""
        ...


_UNAVAILABLE = (
    "unable to contact slurm controller",
    "socket timed out",
    "slurm_persist_conn_open",
    "connection refused",
    "zero bytes were transmitted",
    "slurmctld is not responding",
)

# (fragment of Slurm's message, field it is about, what to tell the user)
_REFUSALS: tuple[tuple[str, str, str], ...] = (
    ("invalid partition", "partition", "unknown partition"),
    ("invalid qos", "qos", "unknown or not permitted QoS"),
    ("invalid account", "account", "unknown account or account/partition combination"),
    ("requested node configuration is not available", "resources",
     "no node in the partition can satisfy the request (GPUs, CPUs or memory per node)"),
    ("node count specification invalid", "resources.nodes", "more nodes than the partition has"),
    ("requested time limit is invalid", "resources.time_limit_min", "walltime over the partition/QoS maximum"),
    ("job violates accounting/qos policy", "qos", "the request exceeds an accounting/QoS limit"),
    ("more processors requested than permitted", "resources", "more CPUs than the partition allows"),
    ("memory specification can not be satisfied", "resources.mem_gb", "more memory than a node has"),
)


def translate(message: str, *, what: str = "submit") -> HaiheError:
    """Slurm's error text → a Haihe error that names the limit (unknown text is passed through, not hidden)."""
    low = message.lower()
    if any(s in low for s in _UNAVAILABLE):
        return SchedulerUnavailable(f"slurm: {message.strip()}")
    if "invalid job id" in low:
        return NotFound(f"slurm: {message.strip()}", field="ref")
    if "already completing or completed" in low or "job is no longer pending" in low:
        return Conflict(f"slurm: {message.strip()}")
    for fragment, field, meaning in _REFUSALS:
        if fragment in low:
            return InvalidInput(f"slurm refused the job: {meaning} ({message.strip()})", field=field)
    return InvalidInput(f"slurm refused to {what}: {message.strip()}", field="launch")


class CountingTransport:
    """Wraps a transport and counts the calls per verb: how many scheduler round trips a reconcile cycle costs
    (the load tests and ``bench/bench_reconcile.py`` read it; ``reset()`` between cycles)."""

    def __init__(self, inner: SlurmTransport) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: dict[str, int] = {}

    def _count(self, verb: str) -> None:
        self.calls[verb] = self.calls.get(verb, 0) + 1

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def reset(self) -> None:
        self.calls.clear()

    def submit(self, script: str, options: Mapping[str, str], environment: Mapping[str, str],
               user: str | None = None) -> str:
        self._count("submit")
        return self.inner.submit(script, options, environment, user)

    def jobs(self) -> list[Json]:
        self._count("jobs")
        return self.inner.jobs()

    def accounting(self, job_ids: Sequence[str]) -> list[Json] | None:
        self._count("accounting")
        return self.inner.accounting(job_ids)

    def recent_accounting(self, days: int) -> list[Json] | None:
        self._count("recent_accounting")
        return self.inner.recent_accounting(days)

    def cancel(self, job_id: str) -> None:
        self._count("cancel")
        self.inner.cancel(job_id)

    def nodes(self) -> list[Json]:
        self._count("nodes")
        return self.inner.nodes()

    def partitions(self) -> list[Json]:
        self._count("partitions")
        return self.inner.partitions()

    def qos_names(self) -> list[str] | None:
        self._count("qos_names")
        return self.inner.qos_names()
