"""LocalStack's ordering, parallel start, clean-up on failure and status, with stateful fake services."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from haihe.cluster.mlflow_server import MlflowServer
from haihe.cluster.ports import PortPlan
from haihe.cluster.procs import StartupError
from haihe.cluster.s3 import S3Server
from haihe.cluster.stack import (
    LocalStack,
    ServicePlan,
    StackConfig,
    StackSecrets,
    default_services,
)
from haihe.errors import InvalidInput


class Journal:
    def __init__(self) -> None:
        self.events: list[str] = []
        self._lock = threading.Lock()

    def add(self, event: str) -> None:
        with self._lock:
            self.events.append(event)

    def index(self, event: str) -> int:
        return self.events.index(event)


class FakeService:
    """Remembers whether it runs; start/stop/ready go to a shared journal."""

    def __init__(self, name: str, journal: Journal, *, fail: bool = False, barrier: threading.Barrier | None = None):
        self.name = name
        self.journal = journal
        self.fail = fail
        self.barrier = barrier
        self.running = False
        self.buckets: list[str] = []
        self.dashboard_url = f"http://fake-{name}"

    def start(self, timeout: float = 60.0) -> None:
        self.journal.add(f"start {self.name}")
        if self.barrier is not None:
            self.barrier.wait()  # both parallel services must be inside start() at once
        if self.fail:
            raise StartupError(f"{self.name} broke")
        self.running = True
        self.journal.add(f"ready {self.name}")

    def stop(self) -> bool:
        was = self.running
        self.running = False
        self.journal.add(f"stop {self.name}")
        return was

    def is_ready(self) -> bool:
        return self.running

    def ensure_buckets(self, names: Sequence[str]) -> None:
        self.journal.add(f"buckets {self.name}")
        self.buckets.extend(names)


def _stack(
    tmp_path: Path,
    names: Sequence[str],
    journal: Journal,
    *,
    failing: Sequence[str] = (),
    parallel: Sequence[str] = (),
    **config: object,
) -> LocalStack:
    barrier = threading.Barrier(len(parallel), timeout=30) if parallel else None
    fakes = {n: FakeService(n, journal, fail=n in failing, barrier=barrier if n in parallel else None) for n in names}

    def build(_config: StackConfig, _keys: StackSecrets) -> ServicePlan:
        return ServicePlan(services=dict(fakes))  # type: ignore[arg-type]

    return LocalStack(StackConfig(home=tmp_path, **config), build=build)  # type: ignore[arg-type]


def test_s3_first_with_buckets_then_mlflow_and_ray_together_then_api(tmp_path: Path) -> None:
    journal = Journal()
    stack = _stack(tmp_path, ["api", "ray", "mlflow", "s3"], journal, parallel=["mlflow", "ray"])
    messages: list[str] = []
    stack.start(progress=messages.append)
    ev = journal.index
    assert ev("start s3") < ev("ready s3") < ev("buckets s3") < ev("start mlflow")
    assert ev("buckets s3") < ev("start ray")
    assert max(ev("ready mlflow"), ev("ready ray")) < ev("start api")
    s3 = stack.services["s3"]
    assert isinstance(s3, FakeService)
    assert s3.buckets == ["haihe-datasets", "mlflow", "haihe-code"]
    assert stack.status() == {"s3": True, "mlflow": True, "ray": True, "api": True}
    assert set(stack.timings) == {"s3", "mlflow", "ray", "api"}
    assert "api: starting" in messages
    assert any(m.startswith("ray: ready in") for m in messages)


def test_stop_goes_api_ray_mlflow_s3(tmp_path: Path) -> None:
    journal = Journal()
    stack = _stack(tmp_path, ["s3", "mlflow", "ray", "api"], journal)
    stack.start()
    journal.events.clear()
    stack.stop()
    assert journal.events == ["stop api", "stop ray", "stop mlflow", "stop s3"]
    assert stack.status() == {"s3": False, "mlflow": False, "ray": False, "api": False}


def test_a_failed_service_stops_the_started_ones_and_names_the_culprit(tmp_path: Path) -> None:
    journal = Journal()
    stack = _stack(tmp_path, ["s3", "mlflow", "ray", "api"], journal, failing=["ray"])
    with pytest.raises(StartupError, match="ray: ray broke"):
        stack.start()
    assert "start api" not in journal.events
    stops = [e for e in journal.events if e.startswith("stop")]
    assert stops == ["stop mlflow", "stop s3"]
    assert stack.status() == {"s3": False, "mlflow": False, "ray": False, "api": False}


def test_status_counts_a_probe_that_raises_as_down(tmp_path: Path) -> None:
    journal = Journal()
    stack = _stack(tmp_path, ["s3"], journal, mlflow=False, ray=False)
    stack.start()
    s3 = stack.services["s3"]
    assert isinstance(s3, FakeService)

    def broken() -> bool:
        raise OSError("connection reset")

    s3.is_ready = broken  # type: ignore[method-assign]
    assert stack.status() == {"s3": False}


def test_unknown_service_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="minio"):
        _stack(tmp_path, ["s3", "minio"], Journal())


def test_endpoints_take_ray_from_the_head(tmp_path: Path) -> None:
    stack = _stack(tmp_path, ["s3", "mlflow", "ray"], Journal(), ports=PortPlan(24000))
    assert stack.endpoints() == {
        "s3": "http://127.0.0.1:24000",
        "mlflow": "http://127.0.0.1:24001",
        "ray": "http://fake-ray",
    }


def test_skipped_services_are_reported(tmp_path: Path) -> None:
    def build(_config: StackConfig, _keys: StackSecrets) -> ServicePlan:
        return ServicePlan(services={}, skipped={"ray": "not installed"})

    stack = LocalStack(StackConfig(home=tmp_path, mlflow=False, s3=False), build=build)
    messages: list[str] = []
    stack.start(progress=messages.append)
    assert messages == ["ray: skipped (not installed)"]
    assert stack.status() == {}


def test_the_same_home_gives_the_same_keys_to_every_stack(tmp_path: Path) -> None:
    first = _stack(tmp_path, ["s3"], Journal())
    second = _stack(tmp_path, ["s3"], Journal())
    assert first.secrets == second.secrets


def test_default_services_build_the_real_classes_from_config_and_secrets(tmp_path: Path) -> None:
    config = StackConfig(
        home=tmp_path,
        ports=PortPlan(25000),
        ray=False,
    )
    keys = StackSecrets(s3_access_key="ak-123", s3_secret_key="sk-12345678", app_secret="app")
    plan = default_services(config, keys)
    assert list(plan.services) == ["s3", "mlflow"]  # the API is haihe.serve's api_process, started by `haihe up`
    s3, mlflow = plan.services["s3"], plan.services["mlflow"]
    assert isinstance(s3, S3Server)
    assert (s3.home, s3.port, s3.access_key, s3.secret_key) == (tmp_path / "s3", 25000, "ak-123", "sk-12345678")
    assert isinstance(mlflow, MlflowServer)
    assert (mlflow.port, mlflow.s3_endpoint, mlflow.bucket) == (25001, "http://127.0.0.1:25000", "mlflow")


def test_default_services_include_the_ray_head_when_asked(tmp_path: Path) -> None:
    from haihe.cluster.ray_head import RayHead

    config = StackConfig(home=tmp_path, ports=PortPlan(26000), ray_num_cpus=1)
    keys = StackSecrets(s3_access_key="ak-123", s3_secret_key="sk-12345678", app_secret="app")
    plan = default_services(config, keys)
    ray = plan.services["ray"]
    assert isinstance(ray, RayHead)
    assert ray.num_cpus == 1
    assert ray.ports == PortPlan(26000)
    assert not plan.skipped


def test_ctrl_c_during_start_stops_everything_and_propagates(tmp_path: Path) -> None:
    journal = Journal()
    stack = _stack(tmp_path, ["s3", "mlflow", "api"], journal)
    api = stack.services["api"]
    assert isinstance(api, FakeService)

    def interrupted(timeout: float = 60.0) -> None:
        raise KeyboardInterrupt

    api.start = interrupted  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        stack.start()
    assert stack.status() == {"s3": False, "mlflow": False, "api": False}
    assert journal.index("stop mlflow") < journal.index("stop s3")
