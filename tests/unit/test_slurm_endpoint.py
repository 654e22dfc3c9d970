"""SlurmScheduler.endpoint(ref): the address a serving job prints to its log, read by offset, with the fake Slurm
behind the CommandRunner seam; and the real SlurmRuntime finding a server through it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from haihe.errors import InvalidInput
from haihe.jobs.serving.predictor import ServeConfig
from haihe.names import SERVING_ADDRESS_MARKER as ADDRESS_MARKER
from haihe.platform.gateway.runtimes import DeployPlan
from haihe.platform.gateway.slurm_runtime import SlurmRuntime
from haihe.schedulers.base import Launch, Resources
from haihe.schedulers.slurm.backend import build
from haihe.schedulers.slurm.scheduler import SlurmScheduler
from tests.unit.test_slurm_scheduler import FakeSlurm


@pytest.fixture
def fake() -> FakeSlurm:
    return FakeSlurm()


@pytest.fixture
def sched(fake: FakeSlurm, tmp_path: Path) -> SlurmScheduler:
    s = build(f"slurm+cli://?jobs={tmp_path}", runner=fake, job_env={"PATH": "/bin"})
    assert isinstance(s, SlurmScheduler)
    return s


def _submit(sched: SlurmScheduler) -> str:
    return sched.submit(Launch(tag="serve-1", name="serve-x", command=("python", "-m", "haihe.jobs.serving"),
                               resources=Resources(time_limit_min=10)))


def test_address_read_from_the_log_by_offset_without_calling_slurm(sched: SlurmScheduler, fake: FakeSlurm,
                                                                    tmp_path: Path) -> None:
    ref = _submit(sched)
    log = tmp_path / f"{ref}.out"
    fake.calls.clear()
    assert sched.endpoint(ref) is None  # no log yet: the job has not started
    log.write_text("loading the model\n")
    assert sched.endpoint(ref) is None
    with log.open("a") as f:
        f.write(f"{ADDRESS_MARKER}http://10.0.0.7:4")  # the line is still being written
    assert sched.endpoint(ref) is None
    with log.open("a") as f:
        f.write("1234\nsome warning the model printed\n")
    assert sched.endpoint(ref) == "http://10.0.0.7:41234"
    with log.open("a") as f:
        f.write("more noise\n" * 100)
    assert sched.endpoint(ref) == "http://10.0.0.7:41234"  # found once, kept while only noise follows
    with log.open("a") as f:
        f.write(f"{ADDRESS_MARKER}http://10.0.0.7:5555\n")  # the server restarted in the same job
    assert sched.endpoint(ref) == "http://10.0.0.7:5555"
    assert fake.calls == []  # reading the address costs no Slurm round trip


def test_truncated_log_is_scanned_again(sched: SlurmScheduler, tmp_path: Path) -> None:
    ref = _submit(sched)
    log = tmp_path / f"{ref}.out"
    log.write_text("x" * 500 + f"\n{ADDRESS_MARKER}http://cn1:1000\n")
    assert sched.endpoint(ref) == "http://cn1:1000"
    log.write_text("requeued\n")  # Slurm truncates the log when the job starts again
    assert sched.endpoint(ref) is None
    log.write_text(f"requeued\n{ADDRESS_MARKER}http://cn2:2000\n")
    assert sched.endpoint(ref) == "http://cn2:2000"


def test_other_jobs_and_bad_refs(sched: SlurmScheduler, tmp_path: Path) -> None:
    a, b = _submit(sched), _submit(sched)
    (tmp_path / f"{a}.out").write_text(f"{ADDRESS_MARKER}http://cn1:1\n")
    assert sched.endpoint(a) == "http://cn1:1" and sched.endpoint(b) is None
    for bad in ("../etc/passwd", "12_3", ""):
        with pytest.raises(InvalidInput):
            sched.endpoint(bad)


def test_runtime_finds_a_running_server_through_the_hook(sched: SlurmScheduler, fake: FakeSlurm,
                                                        tmp_path: Path) -> None:
    seen: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"ready": True})

    runtime = SlurmRuntime(sched, "/usr/bin/python3", time_limit_min=10, connect_timeout_s=1,
                           health=httpx.Client(transport=httpx.MockTransport(server)))
    plan = DeployPlan(org="acme", endpoint="digits", app_name="ep1g1",
                      config=ServeConfig(model="acme/digits:1", mlflow_url="http://127.0.0.1:9"))
    record = runtime.deploy(plan)
    ref = record["ref"]
    assert runtime.probe(record).state == "starting"  # PENDING in the queue
    fake.jobs[int(ref)].update(job_state="RUNNING", start_time=2000, nodes="cn1")
    probe = runtime.probe(record)
    assert probe.state == "starting" and "loading" in probe.reason  # running, no address yet
    (tmp_path / f"{ref}.out").write_text(f"{ADDRESS_MARKER}http://127.0.0.1:45678\n")
    probe = runtime.probe(record)
    assert probe.state == "ready" and probe.target == "http://127.0.0.1:45678"
    assert seen == ["http://127.0.0.1:45678/healthz"]
    fake.jobs[int(ref)]["job_state"] = "CANCELLED"
    assert runtime.probe(record).state == "gone"
