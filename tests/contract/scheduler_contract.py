"""The scheduler contract: what every backend (Slurm CLI, Slurm REST, Ray) must do, in backend-neutral tests.

A backend's test module subclasses :class:`SchedulerContract` and provides two fixtures:
``scheduler`` (a live Scheduler) and ``make_launch`` (``make_launch(command, **fields) -> Launch`` with a fresh
tag, sensible resources and whatever the backend needs, e.g. a partition or a working dir).
Commands are argv lists run with ``bash -c`` so they work on every backend.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from haihe.errors import HaiheError, Unsupported
from haihe.schedulers.base import Feature, JobState, JobStatus, Launch, Launcher, Resources, Scheduler

MakeLaunch = Callable[..., Launch]
DEADLINE = 120.0


def wait_state(scheduler: Scheduler, ref: str, states: Iterable[JobState], timeout: float = DEADLINE) -> JobStatus:
    wanted = set(states)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = scheduler.status([ref]).get(ref)
        if last is not None and last.state in wanted:
            return last
        if last is not None and last.state.is_terminal():
            raise AssertionError(f"{ref} ended {last.state} ({last.reason}), wanted {wanted}")
        time.sleep(0.3)
    raise AssertionError(f"{ref} not in {wanted} after {timeout}s (last: {last})")


def wait_logs(scheduler: Scheduler, ref: str, needle: str, timeout: float = DEADLINE) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = scheduler.logs(ref).data
        if needle in text:
            return text
        time.sleep(0.3)
    raise AssertionError(f"{needle!r} never appeared in the logs of {ref}: {text!r}")


def bash(script: str) -> tuple[str, ...]:
    return ("bash", "-c", script)


def plain_launch(command: tuple[str, ...], **fields: Any) -> Launch:
    """A launch with a fresh tag and one CPU for ten minutes: what a backend needing nothing else takes."""
    tag = f"contract-{uuid.uuid4().hex}"
    fields.setdefault("resources", Resources(cpus_per_task=1, time_limit_min=10))
    return Launch(tag=tag, name=fields.pop("name", tag), command=tuple(command), **fields)


class SchedulerContract:
    """Subclass in a backend's test module; fixtures ``scheduler`` and ``make_launch`` must exist there."""

    def test_submit_runs_to_success_and_logs_output(self, scheduler: Scheduler, make_launch: MakeLaunch) -> None:
        ref = scheduler.submit(make_launch(bash("echo contract-hello")))
        st = wait_state(scheduler, ref, {JobState.SUCCEEDED})
        assert st.exit_code in (0, None)
        assert "contract-hello" in wait_logs(scheduler, ref, "contract-hello")

    def test_failing_command_is_failed_with_exit_code(self, scheduler: Scheduler, make_launch: MakeLaunch) -> None:
        ref = scheduler.submit(make_launch(bash("echo bye; exit 3")))
        st = wait_state(scheduler, ref, {JobState.FAILED})
        assert st.exit_code == 3

    def test_status_is_batched_and_keyed_by_ref(self, scheduler: Scheduler, make_launch: MakeLaunch) -> None:
        refs = [scheduler.submit(make_launch(bash(f"echo {i}"))) for i in range(3)]
        assert len(set(refs)) == 3
        for ref in refs:
            wait_state(scheduler, ref, {JobState.SUCCEEDED})
        statuses = scheduler.status(refs)
        assert set(statuses) == set(refs)
        assert all(s.ref == r and s.state == JobState.SUCCEEDED for r, s in statuses.items())
        assert scheduler.status([]) == {}

    def test_find_recovers_refs_by_tag(self, scheduler: Scheduler, make_launch: MakeLaunch) -> None:
        launch = make_launch(bash("echo found"))
        ref = scheduler.submit(launch)
        unknown = f"never-{uuid.uuid4().hex}"
        assert scheduler.find([launch.tag, unknown]) == {launch.tag: ref}
        assert scheduler.status([ref])[ref].tag == launch.tag

    def test_cancel_running_job(self, scheduler: Scheduler, make_launch: MakeLaunch) -> None:
        ref = scheduler.submit(make_launch(bash("echo started; sleep 300")))
        wait_state(scheduler, ref, {JobState.RUNNING})
        scheduler.cancel(ref)
        wait_state(scheduler, ref, {JobState.CANCELLED})
        scheduler.cancel(ref)  # idempotent once terminal
        assert scheduler.status([ref])[ref].state == JobState.CANCELLED

    def test_logs_readable_while_running_by_offset(self, scheduler: Scheduler, make_launch: MakeLaunch) -> None:
        marker = uuid.uuid4().hex
        ref = scheduler.submit(make_launch(bash(f"echo first-{marker}; sleep 300")))
        try:
            text = wait_logs(scheduler, ref, f"first-{marker}\n")  # the whole line: nothing more will come
            chunk = scheduler.logs(ref)
            assert not chunk.complete
            assert scheduler.status([ref])[ref].state == JobState.RUNNING
            rest = scheduler.logs(ref, chunk.offset)
            assert rest.data == "" and rest.offset == chunk.offset, (chunk, rest)
            assert chunk.offset >= len(f"first-{marker}") and text.startswith(chunk.data[:5])
        finally:  # a failure here must not leave a 300 s job holding the cluster for the tests after
            scheduler.cancel(ref)
        wait_state(scheduler, ref, {JobState.CANCELLED})

    def test_env_and_name_reach_the_job_literally(self, scheduler: Scheduler, make_launch: MakeLaunch) -> None:
        value = "a 'b' \"c\" $(echo injected) `id` ; 天津 \\n\nline2"
        launch = make_launch(bash('printf "<%s>" "$HAIHE_TEST_VALUE"'), env={"HAIHE_TEST_VALUE": value})
        ref = scheduler.submit(launch)
        wait_state(scheduler, ref, {JobState.SUCCEEDED})
        assert f"<{value}>" in wait_logs(scheduler, ref, "line2>")

    def test_terminal_state_is_final(self, scheduler: Scheduler, make_launch: MakeLaunch) -> None:
        ref = scheduler.submit(make_launch(bash("true")))
        wait_state(scheduler, ref, {JobState.SUCCEEDED})
        chunk = scheduler.logs(ref)
        assert chunk.complete
        for _ in range(3):
            assert scheduler.status([ref])[ref].state == JobState.SUCCEEDED

    def test_describe_reports_capacity(self, scheduler: Scheduler) -> None:
        info = scheduler.describe()
        assert info.nodes and info.cpus_total > 0
        assert all(0 <= n.cpus_free <= n.cpus_total for n in info.nodes)
        assert info.queue_length >= 0

    def test_invalid_launch_refused_before_submission(self, scheduler: Scheduler,
                                                      make_launch: MakeLaunch) -> None:
        with pytest.raises(HaiheError):
            scheduler.submit(make_launch(()))
        with pytest.raises(HaiheError):
            scheduler.submit(make_launch(bash("true"), resources=Resources(nodes=0)))

    def test_unsupported_features_named(self, scheduler: Scheduler, make_launch: MakeLaunch) -> None:
        by_feature = {
            Feature.LAUNCHER_RAY_TRAIN: {"launcher": Launcher.RAY_TRAIN},
            Feature.LAUNCHER_TORCHRUN: {"launcher": Launcher.TORCHRUN},
            Feature.LAUNCHER_MPI: {"launcher": Launcher.MPI},
            Feature.ARRAYS: {"array_size": 2},
            Feature.REQUEUE: {"requeue": True},
        }
        for feature, fields in by_feature.items():
            if feature in scheduler.unsupported:
                with pytest.raises(Unsupported) as err:
                    scheduler.submit(make_launch(bash("true"), **fields))
                assert feature.value in str(err.value)
