"""`haihe up` end to end: the real S3 server, MLflow, Ray head and API come up, /readyz reports every component
ok, Ctrl-C stops every child, and a second run reuses the state (same admin, same objects)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from haihe.cluster.procs import free_port, pid_alive, wait_until


def _pids(home: Path) -> list[int]:
    pids = []
    for f in home.rglob("*.pid"):
        with contextlib.suppress(ValueError):
            pids.append(int(f.read_text().strip()))
    return pids


def _start(home: Path, port: int, base: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(home / "config"), "HAIHE_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "haihe.cli", "up", "--port", str(port), "--port-base", str(base)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)


@pytest.mark.s3
@pytest.mark.mlflow
@pytest.mark.ray
@pytest.mark.slow
def test_haihe_up_ready_ctrl_c_and_reuse(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = free_port()
    base = int(os.environ.get("HAIHE_TEST_PORT_BASE", "21000")) + 500  # clear of the session fixtures' ports
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "up1.log"
    proc = _start(home, port, base, log)
    try:
        wait_until(lambda: httpx.get(url + "/readyz", timeout=5).status_code == 200, timeout=240,
                   what="haihe up", log_path=log, alive=lambda: proc.poll() is None)
        ready = httpx.get(url + "/readyz").json()
        assert ready["status"] == "ok"
        assert set(ready["components"]) == {"database", "s3", "mlflow", "scheduler:ray"}
        assert all(c["ok"] for c in ready["components"].values())
        wait_until(lambda: (home / "admin.json").exists(), timeout=30, what="admin credentials")
        admin = json.loads((home / "admin.json").read_text())
        assert (home / "admin.json").stat().st_mode & 0o777 == 0o600
        assert admin["password"] in log.read_text()  # printed once, on the first run
        token = httpx.post(url + "/api/v1/auth/token",
                           json={"username": admin["username"], "password": admin["password"]}).json()["token"]
        r = httpx.post(url + "/api/v1/orgs", json={"name": "persisted"}, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201
        children = _pids(home)
        assert len(children) >= 4
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    assert proc.returncode == 0
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in children if pid_alive(p)], "children left running after Ctrl-C"

    # a second run reuses the state: no new admin, the org is still there
    log2 = tmp_path / "up2.log"
    proc = _start(home, port, base, log2)
    try:
        wait_until(lambda: httpx.get(url + "/readyz", timeout=5).status_code == 200, timeout=240,
                   what="haihe up (second run)", log_path=log2, alive=lambda: proc.poll() is None)
        assert admin["password"] not in log2.read_text()
        token = httpx.post(url + "/api/v1/auth/token",
                           json={"username": admin["username"], "password": admin["password"]}).json()["token"]
        orgs = httpx.get(url + "/api/v1/orgs", headers={"Authorization": f"Bearer {token}"}).json()
        assert "persisted" in [o["name"] for o in orgs]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    assert proc.returncode == 0
