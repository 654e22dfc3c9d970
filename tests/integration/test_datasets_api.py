"""The datasets service against the real S3 server: the API in-process (tenancy, names) and the real CLI against a
real API process (push, kill, resume, pull; S3 stopped mid-upload).

To interrupt an upload half-way on purpose, S3 is reached through a small TCP relay that limits the upload rate
(the API signs URLs for the relay's address, so signatures still match); the bytes and the server are real.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from haihe.client import raise_for_error
from haihe.client.datasets import DatasetsClientMixin
from haihe.cluster.ports import PortPlan
from haihe.cluster.procs import ManagedProcess, free_port, wait_until
from haihe.cluster.s3 import S3Server
from haihe.datasets.presigned import HttpTransport
from haihe.platform.settings import Settings
from haihe.serve import api_process
from tests.fixtures.platform import PASSWORD, Tenancy, unique

pytestmark = pytest.mark.s3
MiB = 1024 * 1024


# -- helpers ------------------------------------------------------------------------------------------------------
class SlowRelay:
    """A TCP relay in front of S3 that caps the client→server rate, so an upload takes seconds, not milliseconds."""

    def __init__(self, upstream_port: int, rate: int) -> None:
        self.upstream_port, self.rate = upstream_port, rate
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sent = 0  # bytes forwarded client → S3
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=3)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, throttle: bool) -> None:
        try:
            while True:
                data = src.recv(64 * 1024)
                if not data:
                    break
                dst.sendall(data)
                if throttle:
                    with self._lock:
                        self.sent += len(data)
                    time.sleep(len(data) / self.rate)  # the rate limit itself, not a wait for anything
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def make_tree(root: Path) -> dict[str, str]:
    """~44 MiB: one 36 MiB file (three 16 MiB parts) and eight 1 MiB files; returns path → sha256."""
    files = {"big.bin": 36 * MiB, **{f"shards/s{i}.bin": MiB for i in range(8)}}
    for rel, size in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
    return digest(root)


def digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


TOTAL_PARTS = 3 + 8


class Cli:
    def __init__(self, url: str, home: Path) -> None:
        self.url, self.home = url, home

    def env(self, user: str) -> dict[str, str]:
        env = {**os.environ, "HAIHE_URL": self.url, "XDG_CONFIG_HOME": str(self.home / user / "config"),
               "XDG_CACHE_HOME": str(self.home / user / "cache"), "COLUMNS": "200"}
        env.pop("HAIHE_TOKEN", None)
        return env

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "haihe.cli", *args]

    def run(self, *args: str, user: str = "admin", stdin: str | None = None, ok: bool = True) -> str:
        proc = self._run(args, user, stdin, ok)
        return proc.stdout + proc.stderr

    def json(self, *args: str, user: str) -> Any:
        return json.loads(self._run((*args, "--json"), user, None, True).stdout)

    def _run(self, args: tuple[str, ...], user: str, stdin: str | None, ok: bool) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.argv(*args), input=stdin, capture_output=True, text=True, env=self.env(user),
                              timeout=300)
        assert (proc.returncode == 0) == ok, f"haihe {' '.join(args)} -> {proc.returncode}: {proc.stdout}{proc.stderr}"
        return proc

    def popen(self, *args: str, user: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=self.env(user))

    def token(self, user: str) -> str:
        data = json.loads((self.home / user / "config" / "haihe" / "credentials.json").read_text())
        return str(data["token"])

    def upload_state(self, user: str) -> dict[str, Any] | None:
        found = list((self.home / user / "cache" / "haihe" / "uploads").glob("*.json"))
        return json.loads(found[0].read_text()) if found else None

    def setup(self) -> tuple[str, str]:
        """An admin, org A with researcher alice, org B with researcher bob; returns the two org names."""
        self.run("admin", "init", "-u", "admin", "--password-stdin", stdin=PASSWORD + "\n")
        org_a, org_b = unique("acme"), unique("globex")
        for org, user in ((org_a, "alice"), (org_b, "bob")):
            self.run("admin", "orgs", "create", org)
            self.run("admin", "users", "create", org, user, "--password-stdin", stdin=PASSWORD + "\n")
            self.run("login", "-u", user, "--password-stdin", user=user, stdin=PASSWORD + "\n")
        return org_a, org_b


def start_api(tmp_path: Path, s3_endpoint: str, server: S3Server) -> ManagedProcess:
    port = free_port()
    env = {**os.environ, "HAIHE_DATABASE_URL": f"sqlite:///{tmp_path / 'haihe.db'}", "HAIHE_HOME": str(tmp_path),
           "HAIHE_S3_ENDPOINT": s3_endpoint, "HAIHE_S3_ACCESS_KEY": server.access_key,
           "HAIHE_S3_SECRET_KEY": server.secret_key, "HAIHE_RECONCILE_INTERVAL_S": "0"}
    proc = api_process("api", port, log_dir=tmp_path, env=env)
    proc.start()
    proc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    wait_until(lambda: httpx.get(proc.url + "/healthz").status_code == 200,  # type: ignore[attr-defined]
               timeout=60, what="api", log_path=proc.log_path, alive=proc.is_running)
    return proc


def received_parts(api_url: str, token: str, org: str, name: str, upload_id: str) -> int:
    r = httpx.get(f"{api_url}/api/v1/orgs/{org}/datasets/{name}/uploads/{upload_id}",
                  headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return TOTAL_PARTS - sum(len(f["parts"]) for f in r.json()["files"])


def wait_for_parts(cli: Cli, proc: subprocess.Popen[str], org: str, name: str, at_least: int) -> str:
    """Poll until the running push has opened its upload and ``at_least`` parts have arrived; its upload id."""
    state: dict[str, Any] = {}

    def ready() -> bool:
        found = cli.upload_state("alice")
        if not found:
            return False
        state.update(found)
        return received_parts(cli.url, cli.token("alice"), org, name, found["upload_id"]) >= at_least

    wait_until(ready, timeout=120, what=f"{at_least} parts uploaded (push still running)",
               alive=lambda: proc.poll() is None)
    return str(state["upload_id"])


# -- the CLI against a real API process ---------------------------------------------------------------------------
def test_cli_push_killed_resumes_without_resending_then_pulls_identical(s3_server: S3Server,
                                                                         tmp_path: Path) -> None:
    relay = SlowRelay(s3_server.port, rate=8 * MiB)
    api = start_api(tmp_path, relay.endpoint, s3_server)
    try:
        cli = Cli(api.url, tmp_path)  # type: ignore[attr-defined]
        org_a, _org_b = cli.setup()
        src = tmp_path / "src"
        want = make_tree(src)
        name = unique("sensors")
        push = ("datasets", "push", str(src), "--name", f"{org_a}/{name}", "--visibility", "public",
                "--version-note", "first", "--licence", "CC-BY-4.0", "--workers", "1")
        proc = cli.popen(*push, user="alice")
        upload_id = wait_for_parts(cli, proc, org_a, name, at_least=2)
        proc.kill()
        proc.wait(timeout=30)
        # while interrupted, nobody sees a version: not the owner, not another org
        for user in ("alice", "bob"):
            shown = cli.json("datasets", "show", f"{org_a}/{name}", user=user)
            assert shown["latest_version"] is None and shown["manifest"] is None
            assert [v["state"] for v in shown["versions"]] == ["uploading"]
            out = cli.run("datasets", "pull", f"{org_a}/{name}", str(tmp_path / f"early-{user}"), user=user, ok=False)
            assert "no committed version" in out and "Traceback" not in out
        done_before = received_parts(cli.url, cli.token("alice"), org_a, name, upload_id)
        assert 2 <= done_before < TOTAL_PARTS
        # the same command resumes: only the missing parts cross the wire
        relay.sent = 0
        result = cli.json(*push, user="alice")
        assert result["resumed"] is True and result["version"] == 1
        assert result["parts_sent"] == TOTAL_PARTS - done_before
        assert relay.sent < (44 * MiB) - done_before * MiB  # every finished part is at least 1 MiB
        assert cli.upload_state("alice") is None
        # another org pulls the public version: byte-identical
        dest = tmp_path / "pulled"
        cli.run("datasets", "pull", f"{org_a}/{name}@v1", str(dest), user="bob")
        assert digest(dest) == want
        assert name in [d["name"] for d in cli.json("datasets", "ls", user="bob")]
        shown_text = cli.run("datasets", "show", f"{org_a}/{name}", user="bob")
        assert "big.bin" in shown_text and "committed" in shown_text and "CC-BY-4.0" in shown_text
        # bob may read but not delete it; alice (its creator) may
        assert "not change it" in cli.run("datasets", "rm", f"{org_a}/{name}", "--yes", user="bob", ok=False)
        cli.run("datasets", "rm", f"{org_a}/{name}", "--yes", user="alice")
        assert "not found" in cli.run("datasets", "show", f"{org_a}/{name}", user="bob", ok=False)
    finally:
        api.stop()
        relay.close()


def test_s3_stopped_mid_upload_is_a_clear_503_then_resumes(port_plan: PortPlan, tmp_path: Path) -> None:
    own = S3Server(tmp_path / "s3", port_plan.base + 40, access_key="dsoutage", secret_key=os.urandom(8).hex())
    own.start(timeout=180)
    relay = SlowRelay(own.port, rate=8 * MiB)
    api = None
    try:
        own.ensure_buckets(["haihe-datasets"])
        api = start_api(tmp_path, relay.endpoint, own)
        cli = Cli(api.url, tmp_path)  # type: ignore[attr-defined]
        org_a, _ = cli.setup()
        src = tmp_path / "src"
        want = make_tree(src)
        name = unique("outage")
        push = ("datasets", "push", str(src), "--name", name, "--workers", "1")
        proc = cli.popen(*push, user="alice")
        upload_id = wait_for_parts(cli, proc, org_a, name, at_least=1)
        own.stop()
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 1, out
        assert "storage unavailable" in out and "run the same command again" in out.lower()
        assert "Traceback" not in out
        # the API says so too, and nothing is committed
        headers = {"Authorization": f"Bearer {cli.token('alice')}"}
        base = f"{api.url}/api/v1/orgs/{org_a}/datasets/{name}"  # type: ignore[attr-defined]
        for r in (httpx.get(f"{base}/uploads/{upload_id}", headers=headers, timeout=60),
                  httpx.post(f"{base}/uploads/{upload_id}/complete", json={"hashes": {}}, headers=headers,
                             timeout=60)):
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "storage_unavailable"
            assert r.json()["error"]["message"].startswith("storage unavailable")
        shown = httpx.get(base, headers=headers, timeout=30).json()
        assert shown["latest_version"] is None and [v["state"] for v in shown["versions"]] == ["uploading"]
        # storage returns: the same command finishes the same upload
        own.start(timeout=180)
        result = cli.json(*push, user="alice")
        assert result["resumed"] is True and result["version"] == 1 and result["parts_sent"] < TOTAL_PARTS
        dest = tmp_path / "pulled"
        cli.run("datasets", "pull", name, str(dest), user="alice")
        assert digest(dest) == want
    finally:
        if api is not None:
            api.stop()
        relay.close()
        own.stop()


# -- the API in-process against the real S3 server ------------------------------------------------------------------
class ApiClient(DatasetsClientMixin):
    def __init__(self, client: TestClient, headers: dict[str, str]) -> None:
        self.client, self.headers = client, headers

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, headers=self.headers, **kwargs)
        raise_for_error(response)
        return response.json() if response.content else None


@pytest.fixture
def s3_app(s3_server: S3Server, tmp_path: Path) -> Iterator[TestClient]:
    from haihe.server import create_app

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", reconcile_interval_s=0,
                        s3_endpoint=s3_server.endpoint, s3_access_key=s3_server.access_key,
                        s3_secret_key=s3_server.secret_key)
    with TestClient(create_app(settings)) as client:
        yield client


def test_tenancy_and_names_against_real_s3(s3_app: TestClient, tmp_path: Path) -> None:
    t = Tenancy(s3_app).bootstrap()
    org_a, org_b = t.org(), t.org()
    alice, admin_a = t.login(t.user(org_a)), t.login(t.user(org_a, "org_admin"))
    bob = t.login(t.user(org_b))
    name = unique("ds")
    assert s3_app.post(f"/api/v1/orgs/{org_a}/datasets", json={"name": name}, headers=alice).status_code == 201
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "x.bin").write_bytes(os.urandom(6 * MiB))
    (src / "y.txt").write_text("hello")
    manifest = ApiClient(s3_app, alice).push_dataset(org_a, name, src, workers=4)
    assert manifest.version == 1 and manifest.total_size == 6 * MiB + 5
    url = f"/api/v1/orgs/{org_a}/datasets/{name}"
    # B: 404 everywhere on A's private dataset
    for r in (s3_app.get(url, headers=bob), s3_app.get(url + "/versions/1/download", headers=bob),
              s3_app.delete(url, headers=bob)):
        assert r.status_code == 404, r.text
    assert name not in [d["name"] for d in s3_app.get("/api/v1/datasets", headers=bob).json()["items"]]
    # shared: B reads and downloads (presigned GETs straight from S3), but cannot write
    assert s3_app.put(f"{url}/shares/{org_b}", headers=admin_a).status_code == 200
    dest = tmp_path / "dest"
    ApiClient(s3_app, bob).pull_dataset(org_a, name, dest)
    assert digest(dest) == digest(src)
    r = s3_app.post(url + "/versions", json={"files": [{"path": "z", "size": 1}]}, headers=bob)
    assert r.status_code == 403
    assert s3_app.delete(url, headers=bob).status_code == 403
    # public: readable by all, writable only by the owner
    assert s3_app.delete(f"{url}/shares/{org_b}", headers=admin_a).status_code == 200
    assert s3_app.get(url, headers=bob).status_code == 404
    r = s3_app.put(url + "/visibility", json={"visibility": "public"}, headers=admin_a)
    assert r.status_code == 200
    assert s3_app.get(url, headers=bob).status_code == 200
    assert s3_app.put(url + "/visibility", json={"visibility": "private"}, headers=bob).status_code == 403
    # object and dataset names that could escape the prefix are refused, naming the field
    for path in ["../../other/v1/x", "/etc/passwd", "a\\b", "a\x00b", "x" * 256]:
        r = s3_app.post(url + "/versions", json={"files": [{"path": path, "size": 1}]}, headers=alice)
        assert r.status_code == 422 and r.json()["error"]["field"] == "files[0].path", r.text
    for bad in ["../evil", "a;b", "a$(id)", "a/b", "x" * 70]:
        r = s3_app.post(f"/api/v1/orgs/{org_a}/datasets", json={"name": bad}, headers=alice)
        assert r.status_code == 422 and r.json()["error"]["field"] == "name", r.text
    # presigned URLs point only inside the dataset's prefix
    urls = s3_app.get(url + "/versions/latest/download", headers=bob).json()["urls"]
    assert all(f"/haihe-datasets/{org_a}/{name}/v1/" in u for u in urls.values())
    transport = HttpTransport()
    assert transport.get(urls["y.txt"]).read() == b"hello"
