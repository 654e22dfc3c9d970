"""Unit tests of RayScheduler against a stateful fake of the Ray dashboard's REST API.

The fake is injected through the backend's one seam (an httpx.Client on a MockTransport); it keeps a job table,
packages and cluster usage, and counts calls so that "one list call per status cycle" is checked.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from haihe.errors import Conflict, InvalidInput, NotFound, SchedulerUnavailable, Unsupported
from haihe.schedulers.base import Feature, JobState, Launch, Launcher, Resources, Scheduler
from haihe.schedulers.ray.backend import RayScheduler, build, dashboard_url
from haihe.schedulers.registry import SchedulerRegistry


@dataclass
class FakeRayDashboard:
    cpus: float = 4.0
    gpus: float = 0.0
    used_cpus: float = 0.0
    down: bool = False
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    packages: dict[str, bytes] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    clock_ms: int = 1_700_000_000_000

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handle), timeout=2.0)

    # -- test controls -------------------------------------------------------------------------------------------
    def set_status(self, sid: str, status: str, exit_code: int | None = None, message: str = "") -> None:
        job = self.jobs[sid]
        job["status"] = status
        job["driver_exit_code"] = exit_code
        job["message"] = message or f"Job is {status.lower()}."
        if status in ("STOPPED", "SUCCEEDED", "FAILED"):
            job["end_time"] = self.clock_ms + 5000

    # -- the fake server -----------------------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        path = request.url.path
        key = f"{request.method} {path}"
        self.calls[key] += 1
        if key == "POST /api/jobs/":
            body = json.loads(request.content)
            sid = body["submission_id"]
            if sid in self.jobs:
                return httpx.Response(
                    500, text=f"Traceback ...\nValueError: Job with submission_id {sid} already exists.\n."
                )
            self.jobs[sid] = {
                "type": "SUBMISSION",
                "submission_id": sid,
                "status": "PENDING",
                "entrypoint": body["entrypoint"],
                "message": "Job has not started yet.",
                "start_time": self.clock_ms,
                "end_time": None,
                "metadata": body.get("metadata"),
                "runtime_env": body.get("runtime_env"),
                "driver_exit_code": None,
                "_body": body,
            }
            self.logs[sid] = ""
            return httpx.Response(200, json={"submission_id": sid, "job_id": sid})
        if key == "GET /api/jobs/":
            rows = [{k: v for k, v in j.items() if not k.startswith("_")} for j in self.jobs.values()]
            rows.append({"type": "DRIVER", "job_id": "01000000", "submission_id": None, "status": "RUNNING"})
            return httpx.Response(200, json=rows)
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "jobs"] and len(parts) >= 3:
            sid = parts[2]
            job = self.jobs.get(sid)
            if job is None:
                return httpx.Response(404, text=f"Job {sid} does not exist")
            if len(parts) == 3 and request.method == "GET":
                return httpx.Response(200, json={k: v for k, v in job.items() if not k.startswith("_")})
            if parts[3:] == ["stop"]:
                if job["status"] == "RUNNING":
                    self.set_status(sid, "STOPPED")
                return httpx.Response(200, json={"stopped": True})
            if parts[3:] == ["logs"]:
                return httpx.Response(200, json={"logs": self.logs[sid]})
        if parts[:3] == ["api", "packages", "gcs"]:
            name = parts[3]
            if request.method == "PUT":
                self.packages[name] = request.content
                return httpx.Response(200)
            return httpx.Response(200 if name in self.packages else 404, text="")
        if key == "GET /api/v0/nodes":
            node = {
                "node_id": "ab" * 28,
                "node_ip": "10.0.0.1",
                "state": "ALIVE",
                "is_head_node": True,
                "resources_total": {"CPU": self.cpus, "GPU": self.gpus} if self.gpus else {"CPU": self.cpus},
            }
            return httpx.Response(200, json={"data": {"result": {"result": [node]}}})
        if key == "GET /api/cluster_status":
            usage = {"CPU": [self.used_cpus, self.cpus]}
            if self.gpus:
                usage["GPU"] = [0.0, self.gpus]
            report = {"usage": usage, "usageByNode": {"ab" * 28: usage}}
            return httpx.Response(200, json={"data": {"clusterStatus": {"loadMetricsReport": report}}})
        return httpx.Response(404, text=f"no route {key}")


@pytest.fixture
def fake() -> FakeRayDashboard:
    return FakeRayDashboard()


@pytest.fixture
def sched(fake: FakeRayDashboard) -> RayScheduler:
    return build("ray://10.0.0.1:8265", client=fake.client())


def launch(tag: str = "tag-1", **kw: Any) -> Launch:
    kw.setdefault("command", ("python", "train.py", "--lr", "0.1"))
    return Launch(tag=tag, name=kw.pop("name", "unit job"), **kw)


def test_registry_builds_ray_backend() -> None:
    s = SchedulerRegistry().create("ray://127.0.0.1:1")
    assert isinstance(s, RayScheduler)
    assert isinstance(s, Scheduler)
    assert dashboard_url("ray://h:9") == "http://h:9"
    assert dashboard_url("ray://h") == "http://h:8265"
    with pytest.raises(InvalidInput):
        dashboard_url("ray://")
    with pytest.raises(InvalidInput):
        build("ray://h:1", bogus=1)


def test_submit_uses_tag_as_submission_id_with_env_and_resources(sched, fake) -> None:
    ref = sched.submit(launch(env={"MLFLOW_TRACKING_URI": "http://m:5000"}, resources=Resources(cpus_per_task=2)))
    assert ref == "tag-1"
    body = fake.jobs["tag-1"]["_body"]
    assert body["submission_id"] == "tag-1"
    assert body["entrypoint_num_cpus"] == 2
    assert body["runtime_env"]["env_vars"] == {"MLFLOW_TRACKING_URI": "http://m:5000"}
    assert body["entrypoint"].endswith("python train.py --lr 0.1")
    assert "timeout --kill-after=30s 3600s" in body["entrypoint"]


def test_second_submit_of_same_tag_returns_existing_job(sched, fake) -> None:
    assert sched.submit(launch()) == "tag-1"
    assert sched.submit(launch(command=("other",))) == "tag-1"
    assert fake.calls["POST /api/jobs/"] == 1
    assert fake.jobs["tag-1"]["entrypoint"].endswith("train.py --lr 0.1")


def test_submit_race_on_same_tag_is_not_an_error(sched, fake) -> None:
    # another platform worker's submit lands between our lookup and our POST
    original = fake.handle

    def racing(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/api/jobs/" and "tag-1" not in fake.jobs:
            original(request)  # the other submit wins
        return original(request)

    fake_client = httpx.Client(transport=httpx.MockTransport(racing))
    s = build("ray://h:1", client=fake_client)
    assert s.submit(launch()) == "tag-1"
    assert len(fake.jobs) == 1


def test_workdir_is_uploaded_once_as_content_addressed_package(sched, fake, tmp_path) -> None:
    (tmp_path / "train.py").write_text("print('hi')\n")
    sched.submit(launch("a", workdir=str(tmp_path)))
    sched.submit(launch("b", workdir=str(tmp_path)))
    assert len(fake.packages) == 1
    assert fake.calls[f"PUT /api/packages/gcs/{next(iter(fake.packages))}"] == 1
    uri = fake.jobs["a"]["_body"]["runtime_env"]["working_dir"]
    assert uri == fake.jobs["b"]["_body"]["runtime_env"]["working_dir"]
    assert uri.startswith("gcs://_ray_pkg_") and uri.endswith(".zip")


def test_status_is_one_list_call_per_cycle(sched, fake) -> None:
    refs = [sched.submit(launch(f"t{i}")) for i in range(50)]
    fake.set_status("t0", "RUNNING")
    fake.set_status("t1", "SUCCEEDED", exit_code=0)
    fake.set_status("t2", "FAILED", exit_code=3, message="Job entrypoint command failed with exit code 3")
    fake.set_status("t3", "STOPPED")
    fake.set_status("t4", "FAILED", exit_code=124)
    for r in refs[5:]:
        fake.set_status(r, "RUNNING")
    before = sum(fake.calls.values())
    st = sched.status([*refs, "t0"])
    assert sum(fake.calls.values()) == before + 1  # one list call, no per-job calls
    assert st["t0"].state is JobState.RUNNING
    assert st["t1"].state is JobState.SUCCEEDED and st["t1"].exit_code == 0
    assert st["t2"].state is JobState.FAILED and "exit code 3" in (st["t2"].reason or "")
    assert st["t3"].state is JobState.CANCELLED
    assert st["t4"].state is JobState.TIMEOUT and "walltime" in (st["t4"].reason or "")
    assert st["t1"].ended_at is not None and st["t1"].elapsed_s == pytest.approx(5.0)


def test_queued_job_reports_free_capacity_as_reason(sched, fake) -> None:
    fake.used_cpus = 3
    sched.submit(launch(resources=Resources(cpus_per_task=2)))
    st = sched.status(["tag-1"])["tag-1"]
    assert st.state is JobState.QUEUED
    assert "1 of 4 CPU free" in (st.reason or "")


def test_unknown_ref_is_reported_lost_not_running(sched, fake) -> None:
    st = sched.status(["gone"])["gone"]
    assert st.state is JobState.FAILED
    assert "lost" in (st.reason or "")


def test_find_maps_known_tags_only(sched) -> None:
    sched.submit(launch("x"))
    assert sched.find(["x", "y"]) == {"x": "x"}
    assert sched.find([]) == {}


def test_cancel_running_and_pending(sched, fake) -> None:
    sched.submit(launch("run"))
    fake.set_status("run", "RUNNING")
    sched.cancel("run")
    assert sched.status(["run"])["run"].state is JobState.CANCELLED
    sched.submit(launch("wait"))
    sched.cancel("wait")
    st = sched.status(["wait"])["wait"]
    assert st.state is JobState.QUEUED and "cancel requested" in (st.reason or "")
    sched.cancel("run")  # terminal: no-op
    with pytest.raises(NotFound):
        sched.cancel("nope")


def test_logs_are_offset_based(sched, fake) -> None:
    sched.submit(launch())
    fake.set_status("tag-1", "RUNNING")
    fake.logs["tag-1"] = "line 1\n"
    first = sched.logs("tag-1")
    assert first.data == "line 1\n" and not first.complete
    fake.logs["tag-1"] += "line 2\n"
    fake.set_status("tag-1", "SUCCEEDED", exit_code=0)
    second = sched.logs("tag-1", first.offset)
    assert second.data == "line 2\n" and second.complete
    assert sched.logs("tag-1", second.offset).data == ""
    with pytest.raises(NotFound):
        sched.logs("nope")
    with pytest.raises(InvalidInput):
        sched.logs("tag-1", -1)


def test_describe_reports_nodes_and_free_resources(sched, fake) -> None:
    fake.used_cpus = 1
    sched.submit(launch())
    info = sched.describe()
    assert info.cpus_total == 4
    assert info.nodes[0].cpus_free == 3 and info.nodes[0].state == "ALIVE"
    assert info.partitions[0].cpus_free == 3
    assert info.queue_length == 1


@pytest.mark.parametrize(
    ("field", "value", "feature"),
    [
        ("partition", "gpu", Feature.PARTITIONS),
        ("qos", "high", Feature.QOS),
        ("account", "org1", Feature.ACCOUNTS),
        ("array_size", 4, Feature.ARRAYS),
        ("requeue", True, Feature.REQUEUE),
        ("launcher", Launcher.TORCHRUN, Feature.LAUNCHER_TORCHRUN),
        ("launcher", Launcher.MPI, Feature.LAUNCHER_MPI),
    ],
)
def test_unsupported_features_are_refused_with_reason(sched, fake, field, value, feature) -> None:
    with pytest.raises(Unsupported) as e:
        sched.submit(launch(**{field: value}))
    assert feature.value in str(e.value)
    assert sched.unsupported[feature] in str(e.value)
    assert fake.jobs == {}


def test_multi_node_needs_ray_train(sched, fake) -> None:
    with pytest.raises(Unsupported, match="ray_train"):
        sched.submit(launch(resources=Resources(nodes=2)))


def test_more_than_the_cluster_is_refused_naming_need_and_capacity(sched, fake) -> None:
    with pytest.raises(Unsupported) as e:
        sched.submit(launch(resources=Resources(cpus_per_task=8)))
    assert "8 CPU" in str(e.value) and "4 CPU" in str(e.value)
    with pytest.raises(Unsupported, match="GPU"):
        sched.submit(launch("g", resources=Resources(gpus_per_node=1)))
    assert fake.jobs == {}


def test_ray_train_refused_when_cpus_are_held(sched, fake) -> None:
    fake.used_cpus = 3  # e.g. Serve replicas
    with pytest.raises(Conflict) as e:
        sched.submit(launch(launcher=Launcher.RAY_TRAIN, resources=Resources(tasks_per_node=2)))
    assert "1 of 4 CPU free" in str(e.value)
    assert fake.jobs == {}


def test_ray_train_entrypoint_and_body(sched, fake) -> None:
    sched.submit(launch(command=("toy.py", "3"), launcher=Launcher.RAY_TRAIN, resources=Resources(tasks_per_node=2)))
    body = fake.jobs["tag-1"]["_body"]
    assert body["entrypoint_num_cpus"] == 0
    assert "-m haihe.schedulers.ray.train_launcher --workers 2 --cpus-per-worker 1" in body["entrypoint"]
    assert body["entrypoint"].endswith("-- toy.py 3")
    assert body["runtime_env"]["env_vars"]["AWS_REQUEST_CHECKSUM_CALCULATION"] == "WHEN_REQUIRED"


def test_head_down_fails_fast_with_scheduler_unavailable(sched, fake) -> None:
    sched.submit(launch())
    fake.down = True
    for call in (lambda: sched.status(["tag-1"]), sched.describe, lambda: sched.submit(launch("z"))):
        with pytest.raises(SchedulerUnavailable):
            call()


def test_bad_env_name_and_nul_in_command_are_invalid(sched, fake) -> None:
    with pytest.raises(InvalidInput):
        sched.submit(launch(env={"BAD NAME": "x"}))
    with pytest.raises(InvalidInput):
        sched.submit(launch(command=("echo", "a\x00b")))
    assert fake.jobs == {}


def test_fresh_head_without_load_report_still_refuses_oversized_jobs(sched, fake) -> None:
    original = fake.handle

    def no_report(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/cluster_status":
            return httpx.Response(200, json={"data": {"clusterStatus": None}})
        return original(request)

    s = build("ray://h:1", client=httpx.Client(transport=httpx.MockTransport(no_report)))
    with pytest.raises(Unsupported, match="4 CPU"):
        s.submit(launch(resources=Resources(cpus_per_task=5)))
    assert s.submit(launch(resources=Resources(cpus_per_task=4))) == "tag-1"
