"""The Ray backend against a real head: exactly-once by tag, capacity refusals and queue reasons, walltime,
code bundles, and the head going away mid-job."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from haihe.cluster.ray_head import RayHead
from haihe.errors import Conflict, SchedulerUnavailable, Unsupported
from haihe.schedulers.base import JobState, Launch, Launcher, Resources
from haihe.schedulers.ray.backend import RayScheduler, build
from tests.contract.scheduler_contract import bash, wait_logs, wait_state

pytestmark = pytest.mark.ray


@pytest.fixture
def sched(ray_head: RayHead) -> Iterator[RayScheduler]:
    s = build(ray_head.scheduler_url)
    yield s
    s.close()


def launch(command: tuple[str, ...], **kw: object) -> Launch:
    tag = f"it-{uuid.uuid4().hex}"
    return Launch(tag=tag, name=str(kw.pop("name", tag)), command=command, **kw)  # type: ignore[arg-type]


def wait_free_cpus(sched: RayScheduler, at_least: float, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sched.capacity().free["CPU"] >= at_least:
            return
        time.sleep(0.5)
    raise AssertionError(f"never {at_least} CPUs free: {sched.capacity().text()}")


def test_same_tag_twice_runs_once(sched: RayScheduler) -> None:
    first = launch(bash("echo once"))
    again = Launch(tag=first.tag, name=first.name, command=bash("echo twice"))
    assert sched.submit(first) == sched.submit(again) == first.tag
    wait_state(sched, first.tag, {JobState.SUCCEEDED})
    text = sched.logs(first.tag).data
    assert "once" in text and "twice" not in text


def test_job_bigger_than_the_cluster_is_refused_with_need_and_capacity(sched: RayScheduler) -> None:
    total = sched.describe().cpus_total
    big = launch(bash("true"), resources=Resources(cpus_per_task=total + 1))
    with pytest.raises(Unsupported) as err:
        sched.submit(big)
    assert f"{total + 1} CPU" in str(err.value) and f"{total} CPU" in str(err.value)
    assert sched.find([big.tag]) == {}


def test_job_that_cannot_start_now_is_queued_with_a_visible_reason(sched: RayScheduler) -> None:
    total = sched.describe().cpus_total
    wait_free_cpus(sched, total)
    hog = launch(bash("sleep 300"), resources=Resources(cpus_per_task=total))
    sched.submit(hog)
    wait_state(sched, hog.tag, {JobState.RUNNING})
    try:
        waiting = launch(bash("echo finally"), resources=Resources(cpus_per_task=1))
        sched.submit(waiting)
        # Ray's usage report (the autoscaler monitor's) refreshes every few seconds: poll until it shows the hog.
        deadline = time.monotonic() + 60
        st = sched.status([waiting.tag])[waiting.tag]
        while f"0 of {total} CPU free" not in (st.reason or "") and time.monotonic() < deadline:
            time.sleep(0.5)
            st = sched.status([waiting.tag])[waiting.tag]
        assert st.state is JobState.QUEUED
        assert st.reason == f"waiting for resources: 0 of {total} CPU free"
        train = launch(("toy.py",), launcher=Launcher.RAY_TRAIN, resources=Resources(tasks_per_node=2))
        with pytest.raises(Conflict, match="Ray Train workers need 2 CPU"):
            sched.submit(train)
    finally:
        sched.cancel(hog.tag)
    wait_state(sched, hog.tag, {JobState.CANCELLED})
    wait_state(sched, waiting.tag, {JobState.SUCCEEDED})


@pytest.mark.slow
def test_walltime_is_enforced_in_the_job_and_reported_timeout(sched: RayScheduler) -> None:
    # time_limit_min is whole minutes; a 1-minute limit on a job that would sleep 10 minutes.
    job = launch(bash("echo tick; sleep 600"), resources=Resources(time_limit_min=1))
    sched.submit(job)
    st = wait_state(sched, job.tag, {JobState.TIMEOUT}, timeout=150)
    assert "walltime" in (st.reason or "")


def test_working_dir_is_shipped_with_the_job(sched: RayScheduler, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    (tmp_path / "hello.py").write_text(f"import os\nprint('bundle-{marker}', os.environ['GREETING'])\n")
    job = launch(("python", "hello.py"), workdir=str(tmp_path), env={"GREETING": "ni hao"})
    sched.submit(job)
    wait_state(sched, job.tag, {JobState.SUCCEEDED})
    assert f"bundle-{marker} ni hao" in wait_logs(sched, job.tag, f"bundle-{marker}")


@pytest.mark.slow
def test_head_down_fails_fast_and_lost_jobs_are_failed_after_restart(sched: RayScheduler, ray_head: RayHead) -> None:
    job = launch(bash("echo alive; sleep 600"))
    sched.submit(job)
    wait_state(sched, job.tag, {JobState.RUNNING})
    ray_head.stop()
    try:
        # connection refused: the short httpx timeouts mean a raise, never a hang
        with pytest.raises(SchedulerUnavailable):
            sched.status([job.tag])
        with pytest.raises(SchedulerUnavailable):
            sched.describe()
    finally:
        ray_head.start(timeout=180)
    st = sched.status([job.tag])[job.tag]
    assert st.state is JobState.FAILED
    assert "lost" in (st.reason or "")
    after = launch(bash("echo back"))
    sched.submit(after)
    wait_state(sched, after.tag, {JobState.SUCCEEDED})
