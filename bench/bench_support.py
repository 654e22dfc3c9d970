"""What the API benches share: a tenant to submit as, and percentiles. Run a bench as ``python bench/<name>.py``."""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import httpx

PASSWORD = "correct-horse-battery"


def pct(values: list[float], q: int) -> float:
    """The q-th percentile (1..99); the value itself for a single sample."""
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def make_tenant(url: str, home: Path, env: dict[str, str]) -> dict[str, str]:
    """Admin, org ``acme`` with project ``vision``, researcher ``alice``: returns alice's auth header."""
    def cli(*args: str, stdin: str | None = None) -> None:
        subprocess.run([sys.executable, "-m", "haihe.cli", *args], input=stdin, text=True, check=True,
                       capture_output=True, env={**env, "HAIHE_URL": url, "XDG_CONFIG_HOME": str(home / "cfg")})

    cli("admin", "init", "-u", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    cli("admin", "orgs", "create", "acme")
    cli("admin", "projects", "create", "acme", "vision")
    cli("admin", "users", "create", "acme", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    r = httpx.post(url + "/api/v1/auth/token", json={"username": "alice", "password": PASSWORD})
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['token']}"}
