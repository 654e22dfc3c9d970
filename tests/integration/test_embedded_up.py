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
from typing import Any

import httpx
import pytest

from haihe.cluster.procs import free_port, pid_alive, wait_until
from tests.fixtures.figures import Figures


def _pids(home: Path) -> list[int]:
    pids = []
    for f in home.rglob("*.pid"):
        with contextlib.suppress(ValueError):
            pids.append(int(f.read_text().strip()))
    return pids


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "XDG_CONFIG_HOME": str(home / "config"), "HAIHE_HOME": str(home)}


def _start(home: Path, port: int, base: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "haihe.cli", "up", "--port", str(port), "--port-base", str(base),
                             *extra], stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=_env(home))


@pytest.mark.s3
@pytest.mark.mlflow
@pytest.mark.ray
@pytest.mark.slow
def test_haihe_up_ready_ctrl_c_and_reuse(tmp_path: Path, figures: Figures) -> None:
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
        t_stop = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        stop_s = time.monotonic() - t_stop
    assert proc.returncode == 0
    figures.record("haihe up: Ctrl-C", "SIGINT to `haihe up` (S3, MLflow, Ray head, API)",
                   {"stop_s": round(stop_s, 1)})
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in children if pid_alive(p)], "children left running after Ctrl-C"

    # a second run, detached, reuses the state: no new admin, the org is still there; its background supervisor
    # restarts what dies; `haihe down` stops it all
    log2 = tmp_path / "up2.log"
    proc = _start(home, port, base, log2, "--detach")
    assert proc.wait(timeout=300) == 0, log2.read_text()[-3000:]
    try:
        wait_until(lambda: httpx.get(url + "/readyz", timeout=5).status_code == 200, timeout=60,
                   what="haihe up --detach (second run)", log_path=log2)
        assert admin["password"] not in log2.read_text()
        token = httpx.post(url + "/api/v1/auth/token",
                           json={"username": admin["username"], "password": admin["password"]}).json()["token"]
        h = {"Authorization": f"Bearer {token}"}
        orgs = httpx.get(url + "/api/v1/orgs", headers=h).json()
        assert "persisted" in [o["name"] for o in orgs]
        _supervised_children_come_back(home, url, h, home / "supervisor.log", figures)
        children = _pids(home)
    finally:
        down = subprocess.run([sys.executable, "-m", "haihe.cli", "down"], env=_env(home), capture_output=True,
                              text=True, timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "supervisor: stopped" in down.stdout, down.stdout
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in children if pid_alive(p)], "children left running after haihe down"


def _supervised_children_come_back(home: Path, url: str, h: dict[str, str], log: Path, figures: Figures) -> None:
    """Issue 16: kill -9 the API with 3 Ray jobs running -> `haihe up` restarts it by itself, the jobs (on the Ray
    head, which was never touched) all succeed; kill -9 MLflow -> restarted too; `haihe status` counts restarts."""
    assert httpx.post(url + "/api/v1/orgs/persisted/projects", json={"name": "p"}, headers=h).status_code == 201
    ids = []
    for i in range(3):
        spec = {"name": f"survivor-{i}", "scheduler": "ray", "entrypoint": ["bash", "-c", "sleep 15; echo done"],
                "resources": {"time_limit": 5}}
        r = httpx.post(url + "/api/v1/orgs/persisted/projects/p/jobs", json={"spec": spec}, headers=h, timeout=30)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    # the embedded head has 2 CPUs: two jobs run, the third waits for one of them
    wait_until(lambda: sum(httpx.get(f"{url}/api/v1/jobs/{j}", headers=h).json()["state"] == "RUNNING"
                           for j in ids) >= 2, timeout=120, what="Ray jobs running")
    api_pid = int((home / "api" / "api.pid").read_text())
    os.kill(api_pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: not pid_alive(api_pid), timeout=10, what="the API to die")
    wait_until(lambda: httpx.get(url + "/readyz", timeout=2).status_code == 200, timeout=60,
               what="the API back by itself", log_path=log)
    back_s = time.monotonic() - killed
    figures.record("haihe up: kill -9 of the API", "SIGKILL to the API with 3 Ray jobs live",
                   {"api_back_s": round(back_s, 1)})
    assert back_s <= 15, f"the API took {back_s:.1f}s to come back"  # the bound (restart backoff is 1 s)
    states = {}
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        states = {j: httpx.get(f"{url}/api/v1/jobs/{j}", headers=h).json()["state"] for j in ids}
        if all(s in ("SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT") for s in states.values()):
            break
        time.sleep(1)
    assert set(states.values()) == {"SUCCEEDED"}, states

    mlflow_pid = next(int(p.read_text()) for p in (home / "services" / "mlflow").rglob("*.pid"))
    os.kill(mlflow_pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(mlflow_pid), timeout=10, what="MLflow to die")
    env = {**os.environ, "HAIHE_HOME": str(home), "HAIHE_URL": url, "XDG_CONFIG_HOME": str(home / "config")}

    def status() -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-m", "haihe.cli", "status", "--json"], capture_output=True,
                             text=True, env=env, timeout=60)
        return dict(json.loads(out.stdout))  # --json: nothing but JSON on stdout

    wait_until(lambda: status()["children"]["mlflow"]["restarts"] == 1, timeout=120,
               what="MLflow restarted by haihe up", log_path=log)
    final = status()
    assert final["components"]["mlflow"]["ok"], final
    assert final["children"]["api"]["restarts"] == 1 and final["children"]["ray"]["restarts"] == 0, final
