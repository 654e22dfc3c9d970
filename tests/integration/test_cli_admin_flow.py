"""The admin story through the real CLI against a real API server process (uvicorn), as a user would run it."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from haihe.cluster.procs import free_port, wait_until
from haihe.serve import api_process

PASSWORD = "correct-horse-battery"


class Cli:
    def __init__(self, url: str, home: Path) -> None:
        self.url = url
        self.home = home

    def run(self, *args: str, as_user: str = "admin", stdin: str | None = None, ok: bool = True) -> str:
        env = {**os.environ, "HAIHE_URL": self.url, "XDG_CONFIG_HOME": str(self.home / as_user), "COLUMNS": "200"}
        env.pop("HAIHE_TOKEN", None)
        proc = subprocess.run([sys.executable, "-m", "haihe.cli", *args], input=stdin, capture_output=True,
                              text=True, env=env, timeout=60)
        if ok:
            assert proc.returncode == 0, f"haihe {' '.join(args)}: {proc.stdout}{proc.stderr}"
        else:
            assert proc.returncode != 0, f"haihe {' '.join(args)} unexpectedly succeeded: {proc.stdout}"
        return proc.stdout + proc.stderr

    def json(self, *args: str, as_user: str = "admin") -> object:
        return json.loads(self.run(*args, "--json", as_user=as_user))

    def login(self, user: str, password: str = PASSWORD) -> None:
        self.run("login", "-u", user, "--password-stdin", as_user=user, stdin=password + "\n")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    db = tmp_path / "haihe.db"
    env = {**os.environ, "HAIHE_DATABASE_URL": f"sqlite:///{db}", "HAIHE_HOME": str(tmp_path)}
    proc = api_process("api", port, log_dir=tmp_path, env=env)
    proc.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(url + "/healthz").status_code == 200, timeout=60, what="api",
                   log_path=proc.log_path, alive=proc.is_running)
        yield url, db
    finally:
        proc.stop()


def test_admin_story_through_the_cli(api: tuple[str, Path], tmp_path: Path) -> None:
    url, db = api
    cli = Cli(url, tmp_path)
    cli.run("admin", "init", "-u", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    assert "admin" in cli.run("whoami")
    # a platform admin creates orgs and an org admin
    cli.run("admin", "orgs", "create", "acme")
    cli.run("admin", "orgs", "create", "globex")
    cli.run("admin", "users", "create", "acme", "alice", "--role", "org_admin", "--password-stdin",
            stdin=PASSWORD + "\n")
    cli.run("admin", "projects", "create", "globex", "secret-plans")
    # the org admin creates a project, a researcher, a service account and its key
    cli.login("alice")
    cli.run("admin", "projects", "create", "acme", "vision", as_user="alice")
    cli.run("admin", "users", "create", "acme", "bob", "--password-stdin", as_user="alice", stdin=PASSWORD + "\n")
    cli.run("admin", "users", "create", "acme", "ci-bot", "--role", "service_account", as_user="alice")
    issued = cli.json("admin", "keys", "create", "acme", "ci", "--user", "ci-bot", as_user="alice")
    assert isinstance(issued, dict)
    key, prefix = issued["key"], issued["prefix"]
    projects = cli.json("admin", "projects", "ls", "acme", as_user="alice")
    assert [p["name"] for p in projects] == ["vision"]  # type: ignore[index]
    # the org admin cannot see the other org; the key of acme gets 404 on globex's project
    out = cli.run("admin", "projects", "show", "globex", "secret-plans", as_user="alice", ok=False)
    assert "not found" in out
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(f"{url}/api/v1/orgs/acme/projects/vision", headers=headers).status_code == 200
    assert httpx.get(f"{url}/api/v1/orgs/globex/projects/secret-plans", headers=headers).status_code == 404
    # revoked → 401
    cli.run("admin", "keys", "revoke", prefix, as_user="alice")
    assert httpx.get(f"{url}/api/v1/orgs/acme", headers=headers).status_code == 401
    # expired → 401 (move the key's expiry into the past: the clock cannot be waited out in a test)
    short = cli.json("admin", "keys", "create", "acme", "short", "--user", "ci-bot", "--expires-in-days", "1",
                     as_user="alice")
    assert isinstance(short, dict)
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE credentials SET expires_at = :t WHERE prefix = :p"),
                     {"t": dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1), "p": short["prefix"]})
    engine.dispose()
    r = httpx.get(f"{url}/api/v1/orgs/acme", headers={"Authorization": f"Bearer {short['key']}"})
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    # bad input at the CLI is a clear one-line error, exit code 2
    out = cli.run("admin", "orgs", "create", "Not Valid", ok=False)
    assert "not a valid name" in out and "Traceback" not in out
    # every act is in the audit log
    events = cli.json("admin", "audit", "--limit", "200")
    assert isinstance(events, list)
    seen = {(e["action"], e["target"], e["outcome"]) for e in events}
    for expected in [("org.create", "acme", "ok"), ("user.create", "alice", "ok"),
                     ("project.create", "acme/vision", "ok"), ("user.create", "bob", "ok"),
                     ("key.create", prefix, "ok"), ("key.revoke", prefix, "ok"),
                     ("auth.credential", prefix, "denied"), ("auth.credential", short["prefix"], "denied")]:
        assert expected in seen, expected
    actors = {e["actor"] for e in events if e["action"] in ("project.create", "key.create")}
    assert "alice" in actors


def test_quota_commands_through_the_cli(api: tuple[str, Path], tmp_path: Path) -> None:
    url, _db = api
    cli = Cli(url, tmp_path)
    cli.run("admin", "init", "-u", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    cli.run("admin", "orgs", "create", "acme")
    cli.run("admin", "projects", "create", "acme", "vision")
    shown = cli.json("admin", "quota", "set", "acme", "--gpu-hours", "100", "--cpu-hours", "1000",
                     "--storage", "2T", "--max-jobs", "10")
    assert isinstance(shown, dict)
    limits = shown["quota"]
    assert limits["gpu_hours"] == 100 and limits["storage_bytes"] == 2 * 1024**4 and limits["max_jobs"] == 10
    cli.run("admin", "quota", "set", "acme/vision", "--gpu-hours", "10")
    out = cli.run("admin", "quota", "set", "acme/vision", "--gpu-hours", "1000", ok=False)
    assert "nest" in out
    out = cli.run("admin", "quota", "set", "nowhere", "--gpu-hours", "1", ok=False)
    assert "not found" in out
    assert "gpu_hours" in cli.run("admin", "quota", "show", "acme/vision")
    csv_text = cli.run("admin", "usage", "report", "--month", "2026-11", "--format", "csv")
    assert csv_text.splitlines()[0] == "month,org,project,user,source,resource,amount,unit"
    out = cli.run("admin", "usage", "report", "--month", "2026-13", ok=False)
    assert "month" in out
    cli.run("admin", "orgs", "suspend", "acme")
    assert "suspended" in cli.run("admin", "orgs", "show", "acme")
    cli.run("admin", "orgs", "resume", "acme")
    events = cli.json("admin", "audit", "--action", "quota.set")
    assert isinstance(events, list) and len(events) == 2
