"""The scheduler registry by URL scheme, and the protocol's shared checks, with a fake backend."""

from __future__ import annotations

import pytest

from haihe.errors import InvalidInput, Unsupported
from haihe.schedulers.base import (
    BaseScheduler,
    ClusterInfo,
    Feature,
    JobState,
    JobStatus,
    Launch,
    LogChunk,
    Resources,
    Scheduler,
)
from haihe.schedulers.registry import SchedulerRegistry


class FakeScheduler(BaseScheduler):
    """A stateful fake: a job table in a dict."""

    UNSUPPORTED = {Feature.PARTITIONS: "the fake has one pool"}

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.jobs: dict[str, Launch] = {}

    def _submit(self, launch: Launch) -> str:
        ref = str(len(self.jobs) + 1)
        self.jobs[ref] = launch
        return ref

    def _status(self, refs: list[str]) -> dict[str, JobStatus]:
        return {r: JobStatus(ref=r, state=JobState.QUEUED) for r in refs if r in self.jobs}

    def _find(self, tags: list[str]) -> dict[str, str]:
        return {lau.tag: ref for ref, lau in self.jobs.items() if lau.tag in tags}

    def _cancel(self, ref: str) -> None:
        self.jobs.pop(ref, None)

    def _logs(self, ref: str, offset: int) -> LogChunk:
        return LogChunk("", offset)

    def _describe(self) -> ClusterInfo:
        return ClusterInfo(scheduler=self.url)


def test_unknown_scheme_lists_valid_ones() -> None:
    with pytest.raises(InvalidInput) as err:
        SchedulerRegistry().create("pbs://host")
    assert "ray://" in err.value.message and "slurm+cli://" in err.value.message
    with pytest.raises(InvalidInput, match="no scheme"):
        SchedulerRegistry().create("just-a-host")


def test_registered_builder_is_used_and_satisfies_protocol() -> None:
    reg = SchedulerRegistry(builtin={})
    reg.register("fake", FakeScheduler)
    sched = reg.create("fake://x")
    assert isinstance(sched, Scheduler)
    ref = sched.submit(Launch(tag="t1", name="n", command=("true",)))
    assert sched.find(["t1", "t2"]) == {"t1": ref}
    assert sched.status([ref, ref])[ref].state == JobState.QUEUED


def test_base_refuses_unsupported_features_and_bad_resources() -> None:
    sched = FakeScheduler("fake://")
    with pytest.raises(Unsupported, match="partitions"):
        sched.submit(Launch(tag="t", name="n", command=("true",), partition="gpu"))
    with pytest.raises(InvalidInput) as err:
        sched.submit(Launch(tag="t", name="n", command=("true",), resources=Resources(gpus_per_node=-1)))
    assert err.value.field == "resources.gpus_per_node"
    with pytest.raises(InvalidInput, match="command"):
        sched.submit(Launch(tag="t", name="n", command=()))


def test_terminal_states() -> None:
    assert {s for s in JobState if s.is_terminal()} == {
        JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT}
