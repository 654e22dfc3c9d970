"""Shared pieces of the scheduler fault tests: a tenancy made through the live API, timed job calls, polling until
jobs are final, and the independent counts the tests compare against (scheduler-side jobs per platform tag, the
ledger rows of each job read straight from the platform's database)."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, select

from haihe.platform.models import LedgerEntry
from tests.fixtures.live_platform import PASSWORD, LivePlatform

TERMINAL = {"SUCCEEDED", "FAILED", "CANCELLED", "TIMEOUT"}
CALL_BOUND_S = 15.0  # "never a hang": every API call during a fault returns within this (Slurm's own retries ~9 s)


@dataclass
class Tenant:
    """An org with a project, a researcher's headers and the admin's, on one live platform."""

    live: LivePlatform
    org: str
    project: str
    user: dict[str, str]
    admin: dict[str, str]

    @property
    def jobs_url(self) -> str:
        return f"{self.live.url}/api/v1/orgs/{self.org}/projects/{self.project}/jobs"


def tenant(live: LivePlatform, org: str, project: str, cpu_hours: float) -> Tenant:
    """Admin, org, project, researcher, and an org quota of ``cpu_hours`` so every job reserves and settles."""
    url = live.url + "/api/v1"
    r = httpx.post(f"{url}/setup", json={"username": "root", "password": PASSWORD})
    assert r.status_code == 201, r.text
    admin = live.token("root")
    for path, body in ((f"{url}/orgs", {"name": org}), (f"{url}/orgs/{org}/projects", {"name": project}),
                       (f"{url}/orgs/{org}/users", {"username": "alice", "role": "researcher",
                                                    "password": PASSWORD})):
        r = httpx.post(path, json=body, headers=admin)
        assert r.status_code == 201, r.text
    r = httpx.put(f"{url}/orgs/{org}/quota", json={"cpu_hours": cpu_hours}, headers=admin)
    assert r.status_code == 200, r.text
    return Tenant(live, org, project, live.token("alice"), admin)


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    seconds: float


def submit(t: Tenant, spec: dict[str, Any], key: str) -> Answer:
    """One submission as a user makes it, timed; a hang past the bound fails the call rather than the suite."""
    t0 = time.monotonic()
    r = httpx.post(t.jobs_url, json={"spec": spec}, headers={**t.user, "Idempotency-Key": key},
                   timeout=CALL_BOUND_S * 2)
    return Answer(r.status_code, r.json(), time.monotonic() - t0)


def timed_get(t: Tenant, path: str) -> Answer:
    t0 = time.monotonic()
    r = httpx.get(t.live.url + path, headers=t.user, timeout=CALL_BOUND_S * 2)
    return Answer(r.status_code, r.json(), time.monotonic() - t0)


def bash_job(name: str, script: str, scheduler: str, **resources: Any) -> dict[str, Any]:
    res = {"time_limit": 5, **resources}
    return {"name": name, "scheduler": scheduler, "entrypoint": ["bash", "-c", script], "resources": res}


def jobs(t: Tenant, ids: list[str]) -> dict[str, dict[str, Any]]:
    return {j: httpx.get(f"{t.live.url}/api/v1/jobs/{j}", headers=t.user, timeout=30).json() for j in ids}


def wait_final(t: Tenant, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Poll until every job is terminal; fail naming the ones that are not."""
    deadline = time.monotonic() + timeout
    seen: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        seen = jobs(t, ids)
        if all(j["state"] in TERMINAL for j in seen.values()):
            return seen
        time.sleep(1)
    stuck = [(j["name"], j["state"], j["reason"]) for j in seen.values() if j["state"] not in TERMINAL]
    raise AssertionError(f"not final after {timeout:.0f}s: {stuck}")


def wait_states(t: Tenant, ids: list[str], states: set[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    seen: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        seen = jobs(t, ids)
        if all(j["state"] in states for j in seen.values()):
            return seen
        time.sleep(0.5)
    raise AssertionError(f"not in {states} after {timeout:.0f}s: {[(j['name'], j['state']) for j in seen.values()]}")


def event_kinds(t: Tenant, job_id: str) -> list[str]:
    r = httpx.get(f"{t.live.url}/api/v1/jobs/{job_id}/events", headers=t.user, timeout=30)
    return [e["kind"] for e in r.json()]


# -- independent counts ------------------------------------------------------------------------------------------
def slurm_tags(cluster: Any) -> Counter[str]:
    """Every job slurmctld knows (any state; MinJobAge keeps finished ones for an hour), counted by platform tag."""
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%k|%j"],
                         env={**cluster.env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    tags: Counter[str] = Counter()
    for line in out.splitlines():
        comment, _, name = line.strip().partition("|")
        tag = comment if comment and comment != "(null)" else name.rpartition(".")[2]
        tags[tag] += 1
    return tags


def slurm_names(cluster: Any) -> set[str]:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%j"], env={**cluster.env, "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return {line.strip().rpartition(".")[0] for line in out.splitlines()}


def ray_tags(dashboard_url: str) -> Counter[str]:
    """Every submission the Ray head knows, counted by submission id (the platform's tag)."""
    r = httpx.get(dashboard_url + "/api/jobs/", timeout=30)
    r.raise_for_status()
    return Counter(str(j["submission_id"]) for j in r.json() if j.get("submission_id"))


@dataclass(frozen=True)
class LedgerView:
    rows: list[tuple[str, str, str, float, str]]  # (job_id, kind, resource, amount, ref)

    def closed(self, job_id: str) -> int:
        return sum(1 for j, kind, _, _, ref in self.rows if j == job_id and kind == "marker"
                   and ref.startswith("closed:"))

    def reserved(self, job_id: str) -> float:
        return sum(a for j, kind, _, a, _ in self.rows if j == job_id and kind == "reserve")

    def charges(self, job_id: str) -> Counter[str]:
        return Counter(res for j, kind, res, _, _ in self.rows if j == job_id and kind == "charge")

    def charged_cpu_s(self) -> float:
        return sum(a for _, kind, res, a, _ in self.rows if kind == "charge" and res == "cpu_s")


def ledger(live: LivePlatform, ids: list[str]) -> LedgerView:
    """The ledger rows of these jobs, read from the platform's SQLite file (not through the code under test)."""
    engine = create_engine(f"sqlite:///{Path(live.home) / 'haihe.db'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(LedgerEntry.job_id, LedgerEntry.kind, LedgerEntry.resource,
                                       LedgerEntry.amount, LedgerEntry.ref)
                                .where(LedgerEntry.job_id.in_(ids)).order_by(LedgerEntry.id)).all()
    finally:
        engine.dispose()
    return LedgerView([(str(a), str(b), str(c), float(d), str(e)) for a, b, c, d, e in rows])


def assert_settled_once(t: Tenant, view: LedgerView, ids: list[str],
                        attempts: dict[str, int] | None = None) -> None:
    """Each final job: one close marker per attempt (``attempts``, 1 unless named), its reservations netted to
    zero, at most one charge per resource and attempt; and the org's balance shows nothing left reserved and
    exactly the ledger's charges as used."""
    for j in ids:
        n = (attempts or {}).get(j, 1)
        assert view.closed(j) == n, (j, n, [r for r in view.rows if r[0] == j])
        assert abs(view.reserved(j)) < 1e-6, (j, view.reserved(j))
        assert all(1 <= c <= n for c in view.charges(j).values()), (j, view.charges(j))
    quota = httpx.get(f"{t.live.url}/api/v1/orgs/{t.org}/quota", headers=t.admin, timeout=30).json()
    cpu = next(b for b in quota["balances"] if b["resource"] == "cpu_hours")
    assert abs(cpu["reserved"]) < 1e-6, cpu
    assert abs(cpu["used"] - view.charged_cpu_s() / 3600.0) < 1e-4, (cpu, view.charged_cpu_s())


def dumps(obj: Any) -> str:
    return json.dumps(obj, default=str)[:3000]
