"""Retries: a job whose attempt the infrastructure lost runs again as a new attempt, within its spec's ``retries``
and its quota; a program's own failure is never retried; every attempt is charged once, for what it ran."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from haihe.platform.context import PlatformContext
from haihe.platform.jobs.reconciler import Reconciler
from haihe.platform.models import LedgerEntry
from haihe.platform.settings import Settings
from haihe.schedulers.base import JobState
from tests.fixtures.fake_scheduler import FakeFactory, FakeScheduler
from tests.fixtures.platform import Tenancy

WALLTIME_MIN = 10
CPUS = 2
SPEC: dict[str, Any] = {"name": "digits", "recipe": "digits-cnn", "retries": 1,
                        "resources": {"nodes": 1, "cpus_per_task": CPUS, "time_limit": WALLTIME_MIN}}


class World:
    def __init__(self, client: TestClient, ctx: PlatformContext, fake: FakeScheduler) -> None:
        self.client, self.ctx, self.fake = client, ctx, fake
        self.t = Tenancy(client).bootstrap()
        self.org = self.t.org()
        self.project = self.t.project(self.org)
        self.user = self.t.login(self.t.user(self.org))
        self.reconciler = Reconciler(ctx)

    def submit(self, **fields: Any) -> str:
        r = self.client.post(f"/api/v1/orgs/{self.org}/projects/{self.project}/jobs",
                             json={"spec": {**SPEC, **fields}}, headers=self.user)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.client.get(f"/api/v1/jobs/{job_id}", headers=self.user).json())

    def events(self, job_id: str) -> list[dict[str, Any]]:
        return list(self.client.get(f"/api/v1/jobs/{job_id}/events", headers=self.user).json())

    def ref_of(self, tag: str) -> str:
        refs = [ref for ref, j in self.fake.jobs.items() if j.launch.tag == tag]
        assert len(refs) == 1, (tag, refs)
        return refs[0]

    def ledger(self, job_id: str) -> list[LedgerEntry]:
        with self.ctx.db.session() as s:
            rows = list(s.scalars(select(LedgerEntry).where(LedgerEntry.job_id == job_id).order_by(LedgerEntry.id)))
            s.expunge_all()
            return rows

    def quota(self, **limits: Any) -> None:
        r = self.client.put(f"/api/v1/orgs/{self.org}/quota", json=limits, headers=self.t.admin_headers)
        assert r.status_code == 200, r.text


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    from haihe.server import create_app

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", schedulers={"fake": "fake://"},
                        default_scheduler="fake", reconcile_interval_s=0)
    ctx = PlatformContext.from_settings(settings)
    factory = FakeFactory()
    ctx.registry.register("fake", factory)
    with TestClient(create_app(settings, ctx=ctx)) as client:
        yield World(client, ctx, factory.instance)


def test_a_lost_attempt_runs_again_as_a_new_scheduler_job_and_each_attempt_is_charged_once(world: World) -> None:
    job_id = world.submit()
    first = world.ref_of(job_id)
    assert world.fake.jobs[first].launch.env["HAIHE_JOB_ATTEMPT"] == "1"
    world.fake.set(first, JobState.RUNNING)
    world.reconciler.run_once()
    world.fake.set(first, JobState.FAILED, lost=True, reason="NodeFail", elapsed_s=120.0)
    world.reconciler.run_once()
    job = world.job(job_id)
    assert job["state"] == "PENDING" and job["attempt"] == 2, job
    world.reconciler.run_once()  # submits attempt 2 under its own tag: the lost one is never adopted
    second = world.ref_of(f"{job_id}.2")
    assert second != first and world.fake.jobs[second].launch.env["HAIHE_JOB_ATTEMPT"] == "2"
    assert world.job(job_id)["native_id"] == second
    world.fake.set(second, JobState.SUCCEEDED, exit_code=0, elapsed_s=60.0)
    for _ in range(2):  # a second cycle settles nothing again
        world.reconciler.run_once()
    job = world.job(job_id)
    assert job["state"] == "SUCCEEDED" and job["attempt"] == 2
    kinds = [e["kind"] for e in world.events(job_id)]
    assert kinds.count("retrying") == 1 and "retry_refused" not in kinds
    rows = world.ledger(job_id)
    assert sorted(r.ref for r in rows if r.kind == "marker") == [f"closed:{job_id}", f"closed:{job_id}#2"]
    charges = {r.ref: r.amount for r in rows if r.kind == "charge"}
    assert charges == {f"charge:{job_id}:cpu_s": pytest.approx(CPUS * 120),  # the ledger counts CPU-seconds
                       f"charge:{job_id}#2:cpu_s": pytest.approx(CPUS * 60)}
    assert sum(r.amount for r in rows if r.kind == "reserve") == pytest.approx(0.0)  # both reservations released


def test_a_programs_own_failure_is_not_retried(world: World) -> None:
    job_id = world.submit()
    world.fake.set(world.ref_of(job_id), JobState.FAILED, exit_code=3, reason="NonZeroExitCode", elapsed_s=5.0)
    world.reconciler.run_once()
    job = world.job(job_id)
    assert job["state"] == "FAILED" and job["attempt"] == 1
    assert world.fake.submits == 1


def test_no_retry_past_the_specs_limit(world: World) -> None:
    job_id = world.submit(retries=1)
    world.fake.set(world.ref_of(job_id), JobState.FAILED, lost=True, reason="NodeFail")
    world.reconciler.run_once()
    world.reconciler.run_once()
    world.fake.set(world.ref_of(f"{job_id}.2"), JobState.FAILED, lost=True, reason="NodeFail")
    world.reconciler.run_once()
    job = world.job(job_id)
    assert job["state"] == "FAILED" and job["attempt"] == 2 and "NodeFail" in job["reason"]
    assert world.fake.submits == 2
    markers = [r.ref for r in world.ledger(job_id) if r.kind == "marker"]
    assert sorted(markers) == [f"closed:{job_id}", f"closed:{job_id}#2"]


def test_a_job_without_retries_ends_when_lost(world: World) -> None:
    job_id = world.submit(retries=0)
    world.fake.set(world.ref_of(job_id), JobState.FAILED, lost=True, reason="NodeFail")
    world.reconciler.run_once()
    assert world.job(job_id)["state"] == "FAILED" and world.fake.submits == 1


def test_a_retry_the_quota_cannot_hold_is_refused_and_the_job_ends_saying_why(world: World) -> None:
    world.quota(cpu_hours=CPUS * WALLTIME_MIN / 60 * 1.5)  # one full attempt fits, a second reservation does not
    job_id = world.submit()
    world.fake.set(world.ref_of(job_id), JobState.FAILED, lost=True, reason="NodeFail",
                   elapsed_s=WALLTIME_MIN * 60.0)
    world.reconciler.run_once()
    job = world.job(job_id)
    assert job["state"] == "FAILED" and job["attempt"] == 1 and world.fake.submits == 1
    refused = [e for e in world.events(job_id) if e["kind"] == "retry_refused"]
    assert len(refused) == 1 and "cpu_hours" in refused[0]["message"]
    rows = world.ledger(job_id)
    assert [r.ref for r in rows if r.kind == "marker"] == [f"closed:{job_id}"]
    assert sum(r.amount for r in rows if r.kind == "reserve") == pytest.approx(0.0)


@pytest.mark.parametrize("value", [-1, 11, "many"])
def test_retries_out_of_range_is_refused_naming_the_field(world: World, value: object) -> None:
    r = world.client.post(f"/api/v1/orgs/{world.org}/projects/{world.project}/jobs",
                          json={"spec": {**SPEC, "retries": value}}, headers=world.user)
    assert r.status_code == 422 and "retries" in r.text, r.text
