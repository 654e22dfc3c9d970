"""Unit tests of the Ray backend's pure parts: packaging, the train launcher's parsing, RayHead's
command line (nothing here starts Ray)."""

from __future__ import annotations

import zipfile
from io import BytesIO
from pathlib import Path

import pytest

from haihe.cluster.ports import PortPlan
from haihe.cluster.ray_head import RayHead
from haihe.errors import InvalidInput, PayloadTooLarge
from haihe.schedulers.base import JobState, Launch, Launcher, Resources
from haihe.schedulers.ray import train_launcher, translate
from haihe.schedulers.ray.jobs_api import RayJob
from haihe.schedulers.ray.packaging import package_dir


def test_package_is_deterministic_and_skips_caches(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text("x = 1\n")
    (tmp_path / "train.py").write_text("print(1)\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "junk.pyc").write_bytes(b"\0")
    a, b = package_dir(tmp_path), package_dir(tmp_path)
    assert a.name == b.name and a.data == b.data
    assert sorted(zipfile.ZipFile(BytesIO(a.data)).namelist()) == ["pkg/m.py", "train.py"]
    (tmp_path / "train.py").write_text("print(2)\n")
    assert package_dir(tmp_path).name != a.name


def test_package_refuses_relative_missing_and_huge(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        package_dir("relative/dir")
    with pytest.raises(InvalidInput):
        package_dir(tmp_path / "missing")
    (tmp_path / "big.bin").write_bytes(b"0" * 2048)
    with pytest.raises(PayloadTooLarge):
        package_dir(tmp_path, max_bytes=1024)


def test_entrypoint_quotes_every_user_value() -> None:
    evil = Launch(tag="t", name="n", command=("echo", "$(rm -rf /)", "a'b", "x;y"))
    line = translate.entrypoint(evil)
    assert line.endswith("echo '$(rm -rf /)' 'a'\"'\"'b' 'x;y'")
    assert line.startswith("exec timeout --kill-after=30s 3600s ")


def test_walltime_is_the_timeout_and_exit_124_is_timeout() -> None:
    line = translate.entrypoint(Launch(tag="t", name="n", command=("true",), resources=Resources(time_limit_min=2)))
    assert " 120s python -m haihe.schedulers.ray.sandbox --job t -- true" in line
    st = translate.to_status(RayJob(submission_id="t", status="FAILED", driver_exit_code=124))
    assert st.state is JobState.TIMEOUT
    assert translate.to_status(RayJob(submission_id="t", status="FAILED", driver_exit_code=1)).state is JobState.FAILED


def test_resource_table() -> None:
    plain = translate.need(
        Launch(tag="t", name="n", command=("x",), resources=Resources(tasks_per_node=2, cpus_per_task=3))
    )
    assert (plain.cpus, plain.gpus, plain.workers) == (6, 0, 1)
    train = translate.need(
        Launch(
            tag="t",
            name="n",
            command=("x",),
            launcher=Launcher.RAY_TRAIN,
            resources=Resources(nodes=2, tasks_per_node=2, gpus_per_node=2, mem_gb=1),
        )
    )
    assert (train.cpus, train.gpus, train.workers, train.memory_bytes) == (4, 4, 4, 2**30)
    with pytest.raises(InvalidInput):
        translate.check_shape(
            Launch(
                tag="t",
                name="n",
                command=("x",),
                launcher=Launcher.RAY_TRAIN,
                resources=Resources(tasks_per_node=2, gpus_per_node=3),
            )
        )


def test_train_launcher_args_and_target_loading(tmp_path: Path) -> None:
    ns = train_launcher.parse_args(["--workers", "2", "--cpus-per-worker", "1", "--", "toy.py:go", "--lr", "1"])
    assert (ns.workers, ns.target, ns.args) == (2, "toy.py:go", ["--lr", "1"])
    (tmp_path / "toy_target_mod.py").write_text(
        "def go(c):\n    return 7\n\ndef train_loop_per_worker(c):\n    return 8\n"
    )
    assert train_launcher.load_function("toy_target_mod.py:go", tmp_path)({}) == 7
    assert train_launcher.load_function("toy_target_mod.py", tmp_path)({}) == 8
    with pytest.raises(SystemExit):
        train_launcher.load_function("toy_target_mod.py:missing", tmp_path)
    assert train_launcher.run_name("my run/1") == "my-run-1"


def test_train_launcher_storage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert train_launcher.storage(None) == (None, None)
    assert train_launcher.storage(str(tmp_path)) == (str(tmp_path), None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    path, fs = train_launcher.storage("s3://bucket/ckpt/")
    assert path == "bucket/ckpt" and type(fs).__name__ == "S3FileSystem"


def test_ray_head_pins_every_port_in_its_range(tmp_path: Path) -> None:
    plan = PortPlan(23000)
    head = RayHead(tmp_path / ("very-long-directory-name-" * 4), plan, num_cpus=2, object_store_bytes=10**8)
    argv = head.argv()
    ports = [int(argv[i + 1]) for i, a in enumerate(argv) if a.endswith("-port")]
    assert len(ports) == 11 and len(set(ports)) == 11
    assert all(23100 <= p <= 23199 for p in ports)
    env = head.env()
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert 23100 <= int(env["DASHBOARD_METRIC_PORT"]) <= 23199
    assert 23100 <= int(env["AUTOSCALER_METRIC_PORT"]) <= 23199
    assert len(str(head.temp_dir)) <= 40  # unix socket paths below it stay under ~107 characters
    assert head.dashboard_url == "http://127.0.0.1:23101"
    assert head.gcs_address == "127.0.0.1:23100"
    assert not head.is_running()
