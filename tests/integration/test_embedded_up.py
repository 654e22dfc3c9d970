"""`haihe up` end to end: the real S3 server, MLflow, Ray head and API come up, /readyz reports every component
ok, Ctrl-C stops every child, and a second run reuses the state (same admin, same objects)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from haihe.cluster.procs import free_port, pid_alive, wait_until
from tests.fixtures.figures import Figures
from tests.fixtures.readme_tour import Tour, embeddings_of, run_tour


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
        # printed once, on the first run (just after admin.json is written: wait for the line, do not race it)
        wait_until(lambda: admin["password"] in log.read_text(), timeout=30, what="the admin password in the log",
                   log_path=log)
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
        tour = _readme_tour_runs_as_written(home, url, tmp_path / "tour", figures)
        _supervised_children_come_back(home, url, h, home / "supervisor.log", figures, tour.env["KEY"])
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


class _Caller(threading.Thread):
    """An SME's client calling the README's endpoint (a new connection each time, as curl does) until stopped."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key = url, key
        self.calls: list[tuple[float, float, str]] = []  # sent, answered (or failed), status or error
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                r = httpx.post(self.url + "/v1/embeddings", json={"model": "minilm", "input": ["hello"]},
                               headers={"Authorization": f"Bearer {self.key}"}, timeout=30)
                outcome = str(r.status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            self.calls.append((sent, time.monotonic(), outcome))
            self.stop.wait(0.05)


DEAD_SOCKET_S = 0.5  # how long after a kill -9 the kernel may still hand the dead worker a connection


def _supervised_children_come_back(home: Path, url: str, h: dict[str, str], log: Path, figures: Figures,
                                   key: str) -> None:
    """Issue 16: kill -9 the API with 3 Ray jobs running and the README's endpoint being called -> the other API
    worker keeps answering (the endpoint never stops), `haihe up` restarts the dead one by itself, the jobs (on the
    Ray head, never touched) all succeed; kill -9 MLflow -> restarted too; `haihe status` counts restarts."""
    assert httpx.post(url + "/api/v1/orgs/persisted/projects", json={"name": "p"}, headers=h).status_code == 201
    ids = []
    for i in range(3):
        spec = {"name": f"survivor-{i}", "scheduler": "ray", "entrypoint": ["bash", "-c", "sleep 15; echo done"],
                "resources": {"time_limit": 5}}
        r = httpx.post(url + "/api/v1/orgs/persisted/projects/p/jobs", json={"spec": spec}, headers=h, timeout=30)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    # the embedded head has 2 CPUs and the tour's endpoint holds some: one job runs, the others wait their turn
    wait_until(lambda: sum(httpx.get(f"{url}/api/v1/jobs/{j}", headers=h).json()["state"] == "RUNNING"
                           for j in ids) >= 1, timeout=120, what="Ray jobs running")
    caller = _Caller(url, key)
    caller.start()
    wait_until(lambda: sum(c[2] == "200" for c in caller.calls) >= 20, timeout=60, what="the endpoint answering")
    api_pid = int((home / "api" / "api.pid").read_text())
    os.kill(api_pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: not pid_alive(api_pid), timeout=10, what="the API to die")

    def restarted() -> bool:  # a new pid, alive, and serving (its ready file names it)
        try:
            pid = int((home / "api" / "api.pid").read_text())
            return pid != api_pid and pid_alive(pid) and (home / "api" / "api.ready").read_text() == str(pid)
        except (OSError, ValueError):
            return False

    wait_until(restarted, timeout=60, what="the API back by itself", log_path=log)
    back_s = time.monotonic() - killed
    time.sleep(3)  # and the endpoint answers after the restart too
    caller.stop.set()
    caller.join(timeout=60)
    # in flight: requests the dead worker was serving, or had accepted into its queue before the kernel closed
    # its socket (SO_REUSEPORT hands a new connection to one listener; the dead one's queue is reset with it)
    in_flight = [c for c in caller.calls if c[0] <= killed + DEAD_SOCKET_S and c[1] >= killed]
    failed = [c for c in caller.calls if c[2] != "200" and c not in in_flight]
    assert not failed, f"the endpoint stopped answering: {[(round(a - killed, 3), o) for a, _b, o in failed[:5]]}"
    answered = [c[1] for c in caller.calls if c[2] == "200"]
    longest_gap, gap_from = max((b - a, a) for a, b in itertools.pairwise(answered))
    after = [c for c in caller.calls if c[0] > killed]
    figures.record("haihe up: kill -9 of the API", "SIGKILL to one of the two API workers, 3 Ray jobs live and the "
                   "README's endpoint called in a loop (a new connection each call)",
                   {"api_back_s": round(back_s, 1), "calls_after_kill": len(after),
                    "failed_in_flight": sum(c[2] != "200" for c in in_flight),
                    "failed_in_flight_after_kill_s": [round(c[0] - killed, 3) for c in in_flight if c[2] != "200"],
                    "longest_gap_between_answers_s": round(longest_gap, 2),
                    "longest_gap_began_after_kill_s": round(gap_from - killed, 2)})
    assert back_s <= 15, f"the API took {back_s:.1f}s to come back"  # the bound (restart backoff is 1 s)
    assert longest_gap < 5, (f"the endpoint went {longest_gap:.1f}s without an answer, from "
                             f"{gap_from - killed:.1f}s after the kill (the API was back after {back_s:.1f}s)")
    assert sum(c[2] == "200" for c in after) >= 10, after[:10]
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


def _readme_tour_runs_as_written(home: Path, url: str, workdir: Path, figures: Figures) -> Tour:
    """Issue 16: the README's first session, first job, dataset, endpoint, curl and SDK snippet, as a new user
    types them after `haihe up` (tests/fixtures/readme_tour.py reads them from README.md)."""
    t0 = time.monotonic()
    tour = run_tour(url, _env(home), workdir)
    status = tour.output_of("haihe status")
    assert "status: ok" in status, status  # and it exited 0
    follow = tour.step("haihe submit digits.yaml --follow")  # the log on stdout, its states on stderr
    assert "SUCCEEDED" in follow.err.splitlines()[-1], follow.err[-3000:]
    assert "HAIHE_RESULT" in follow.out, follow.out[-3000:]
    assert "minilm" in tour.output_of("haihe models ls")
    vectors = embeddings_of(tour.output_of("curl "))
    assert len(vectors) == 1 and len(vectors[0]) == 384
    assert "vision" in tour.steps[-1].out, tour.steps[-1]
    figures.record("README tour", "the README's commands as written, after `haihe up`",
                   {"steps": len(tour.steps), "tour_s": round(time.monotonic() - t0, 1),
                    "slowest": max(tour.steps, key=lambda s: s.seconds).command.split("#")[0].strip()[:60]})
    return tour


def _world_readable_secrets(home: Path) -> list[str]:
    """Files under ``home`` that hold secrets and that a process of another uid could read."""
    secret_names = {"admin.json", "up.json", "haihe.toml", "jwt_hs256.key", "slurmdbd.conf", "haihe.db",
                    "credentials.json", "mlflow.db"}
    found = []
    for p in home.rglob("*"):
        if p.is_file() and (p.name in secret_names or p.suffix in (".key", ".pem", ".db")) \
                and p.stat().st_mode & 0o004:
            found.append(str(p.relative_to(home)))
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="the case under test is `haihe up --slurm` run as root")
@pytest.mark.s3
@pytest.mark.mlflow
@pytest.mark.ray
@pytest.mark.slurm
@pytest.mark.slow
def test_haihe_up_slurm_as_root_with_the_default_home(tmp_path: Path, figures: Figures) -> None:
    """Issue 16: `haihe up --slurm` from a fresh root shell, state in the default ~/.local/share/haihe under a home
    only root may enter (mode 700, as /root is), reaches /readyz with scheduler:slurm ok; no secret is readable by
    another uid; Ctrl-C stops it all."""
    root_home = tmp_path / "root"
    root_home.mkdir(mode=0o700)
    root_home.chmod(0o700)
    env = {k: v for k, v in os.environ.items() if k not in ("HAIHE_HOME", "XDG_CONFIG_HOME", "HAIHE_CONFIG")}
    env["HOME"] = str(root_home)
    home = root_home / ".local/share/haihe"
    port = free_port()
    base = int(os.environ.get("HAIHE_TEST_PORT_BASE", "21000")) + 500  # as the test above (never at once)
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "up-slurm.log"
    t0 = time.monotonic()
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sys.executable, "-m", "haihe.cli", "up", "--slurm", "--port", str(port),
                                 "--port-base", str(base)], stdout=out, stderr=subprocess.STDOUT, env=env)
    children: list[int] = []
    try:
        wait_until(lambda: httpx.get(url + "/readyz", timeout=5).status_code == 200, timeout=300,
                   what="haihe up --slurm", log_path=log, alive=lambda: proc.poll() is None)
        up_s = time.monotonic() - t0
        ready = httpx.get(url + "/readyz").json()
        assert ready["components"]["scheduler:slurm"]["ok"], ready
        assert ready["status"] == "ok", ready
        wait_until(lambda: (home / "admin.json").exists(), timeout=30, what="admin credentials")
        assert (home / "slurm" / "etc" / "slurm.conf").exists()
        assert _world_readable_secrets(home) == []
        assert (home / "api").stat().st_mode & 0o077 == 0  # the API's log and runtime files: its account only
        children = _pids(home)
    finally:
        t_stop = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
        stop_s = time.monotonic() - t_stop
    assert proc.returncode == 0, log.read_text()[-3000:]
    deadline = time.monotonic() + 30
    while any(pid_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [p for p in children if pid_alive(p)], "children left running after Ctrl-C"
    figures.record("haihe up --slurm as root", "default home under a mode-700 $HOME: up to /readyz, then Ctrl-C",
                   {"up_s": round(up_s, 1), "stop_s": round(stop_s, 1)})
