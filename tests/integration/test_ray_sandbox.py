"""Workload isolation on the real Ray head: the head never runs as root, each job runs in its own sandbox,
and the platform's state is private (docs/security.md)."""

from __future__ import annotations

import os
import pwd
import re
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from haihe.cluster.ports import PortPlan
from haihe.cluster.ray_head import RAY_USER, RayHead
from haihe.cluster.stack import LocalStack, StackConfig
from haihe.cluster.unix import SERVICE_USER, is_root
from haihe.embedded import secure_home
from haihe.schedulers.base import JobState, Launch, Resources
from haihe.schedulers.ray.backend import RayScheduler
from haihe.schedulers.registry import create_scheduler
from tests.contract.scheduler_contract import bash, wait_logs, wait_state

pytestmark = pytest.mark.ray


@pytest.fixture
def scheduler(ray_head: RayHead) -> Iterator[RayScheduler]:
    sched = create_scheduler(ray_head.scheduler_url)
    assert isinstance(sched, RayScheduler)
    yield sched
    sched.close()


def _launch(script: str, minutes: int = 5) -> Launch:
    tag = f"sandbox-{uuid.uuid4().hex[:12]}"
    return Launch(tag=tag, name=tag, command=bash(script), resources=Resources(cpus_per_task=1,
                                                                              time_limit_min=minutes))


def _run(scheduler: RayScheduler, script: str) -> str:
    ref = scheduler.submit(_launch(script))
    wait_state(scheduler, ref, {JobState.SUCCEEDED})
    return wait_logs(scheduler, ref, "DONE")


def _field(text: str, key: str) -> str:
    m = re.search(rf"^{key}=(.*)$", text, re.M)
    assert m, f"{key} missing from job output:\n{text}"
    return m.group(1).strip()


def _host_pids(marker: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def test_head_runs_unprivileged_with_a_private_session_dir(ray_head: RayHead) -> None:
    pid = ray_head.process.pid()
    assert pid is not None
    uid = os.stat(f"/proc/{pid}").st_uid
    assert uid != 0, "the Ray head runs as root"
    if is_root():
        assert pwd.getpwuid(uid).pw_name == RAY_USER
        root = ray_head.private_root
        assert root.stat().st_uid == uid and stat.S_IMODE(root.stat().st_mode) == 0o700


def test_job_is_not_root_and_cannot_read_the_platform_state(scheduler: RayScheduler, services_home: Path) -> None:
    planted = services_home / f"planted-{uuid.uuid4().hex[:8]}"
    planted.write_text("platform-secret")
    planted.chmod(0o644)  # readable by anyone on the host: only the sandbox keeps the job out
    text = _run(scheduler, f"""
        echo UID=$(id -u)
        cat {planted} 2>/dev/null && echo READ=yes || echo READ=no
        ls {services_home} >/dev/null 2>&1 && echo LIST=yes || echo LIST=no
        test -e /root/.bashrc -o -e /root/.local && echo ROOTHOME=yes || echo ROOTHOME=no
        echo DONE""")
    assert _field(text, "UID") != "0", "the job ran as uid 0"
    assert _field(text, "READ") == "no", "the job read a file in the platform's state directory"
    assert _field(text, "LIST") == "no", "the job listed the platform's state directory"
    assert _field(text, "ROOTHOME") == "no", "the job saw root's home (where the default state dir lives)"


def test_jobs_cannot_see_each_other(scheduler: RayScheduler, ray_head: RayHead) -> None:
    marker = f"m{uuid.uuid4().hex[:10]}"
    a = scheduler.submit(_launch(f"""
        echo secret > own-{marker}.txt; echo tmp > /tmp/tmp-{marker}
        echo WORK=$PWD; echo READY
        exec sleep 300 # {marker}""", minutes=6))
    try:
        text_a = wait_logs(scheduler, a, "WORK=/")  # not "READY": the echoed entrypoint line holds that
        work_a = _field(text_a, "WORK")
        deadline = time.monotonic() + 60
        while not (pids := _host_pids(f"sleep 300 # {marker}")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pids, "job A's process was not found on the host"
        host_pid = pids[-1]
        text_b = _run(scheduler, f"""
            cat {work_a}/own-{marker}.txt 2>/dev/null && echo WORK_READ=yes || echo WORK_READ=no
            ls {ray_head.temp_dir}/session_latest/logs >/dev/null 2>&1 && echo SESSION=yes || echo SESSION=no
            test -e /tmp/tmp-{marker} && echo TMP=yes || echo TMP=no
            ps ax | grep -c '[s]leep 300' | sed 's/^/PS=/'
            kill -0 {host_pid} 2>/dev/null && echo KILL=yes || echo KILL=no
            kill -0 1 2>/dev/null; echo DONE""")
        assert _field(text_b, "WORK_READ") == "no", "job B read job A's work dir"
        assert _field(text_b, "SESSION") == "no", "job B listed the Ray session's logs (every job's output)"
        assert _field(text_b, "TMP") == "no", "job B saw job A's /tmp"
        assert _field(text_b, "PS") == "0", "job B saw job A's processes"
        assert _field(text_b, "KILL") == "no", "job B could signal job A's process"
        assert scheduler.status([a])[a].state is JobState.RUNNING, "job A did not survive job B"
    finally:
        scheduler.cancel(a)
    wait_state(scheduler, a, {JobState.CANCELLED})


def test_state_dir_and_secrets_are_private(tmp_path: Path, port_plan: PortPlan) -> None:
    home = tmp_path / "haihe"
    home.mkdir(mode=0o755)
    for name in ("haihe.db", "admin.json"):
        (home / name).write_text("x")
        (home / name).chmod(0o644)  # as an older version left them
    secure_home(home)
    assert stat.S_IMODE(home.stat().st_mode) & 0o066 == 0, "others may list or write the state dir"
    for name in ("haihe.db", "admin.json"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    # The services of `haihe up`: S3 gateway (fast to start) under the stack's home, as the service user when root.
    stack = LocalStack(StackConfig(home=home / "services", ports=PortPlan(port_plan.base + 700), mlflow=False,
                                   ray=False, buckets=("haihe-datasets",)))
    stack.start()
    try:
        services = home / "services"
        assert stat.S_IMODE(services.stat().st_mode) & 0o066 == 0
        assert stat.S_IMODE((services / "secrets.json").stat().st_mode) == 0o600
        s3 = services / "s3"
        assert stat.S_IMODE(s3.stat().st_mode) == 0o700
        assert stat.S_IMODE((s3 / "meta.db").stat().st_mode) & 0o077 == 0
        if is_root():
            pid = int((s3 / "s3.pid").read_text())  # the gateway itself (started under setpriv, which execs)
            assert "gateway" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            assert pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name == SERVICE_USER
            assert pwd.getpwuid((s3 / "meta.db").stat().st_uid).pw_name == SERVICE_USER
            assert pwd.getpwuid(s3.stat().st_uid).pw_name == SERVICE_USER
    finally:
        stack.stop()
