"""Deferred submissions after a scheduler outage: retried within a cycle of the scheduler coming back (no grace to
wait out), never submitted twice, while a job that may still be inside its submit request is left alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from haihe.platform.context import PlatformContext
from haihe.platform.jobs.reconciler import Reconciler
from haihe.platform.jobs.service import launch_for
from haihe.platform.models import Job
from haihe.platform.settings import Settings
from haihe.schedulers.base import JobState, JobStatus, Launch
from tests.fixtures.fake_scheduler import FakeFactory, FakeJob, FakeScheduler
from tests.fixtures.platform import Tenancy

SPEC = {"name": "deferred", "entrypoint": ["python", "train.py"], "resources": {"time_limit": 10}}


class World:
    def __init__(self, client: TestClient, ctx: PlatformContext, fake: FakeScheduler) -> None:
        self.client, self.ctx, self.fake = client, ctx, fake
        t = Tenancy(client).bootstrap()
        self.org = t.org()
        self.project = t.project(self.org)
        self.user = t.login(t.user(self.org))
        self.reconciler = Reconciler(ctx)

    def submit(self) -> dict[str, object]:
        r = self.client.post(f"/api/v1/orgs/{self.org}/projects/{self.project}/jobs", json={"spec": SPEC},
                             headers=self.user)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def job(self, job_id: object) -> dict[str, object]:
        return dict(self.client.get(f"/api/v1/jobs/{job_id}", headers=self.user).json())

    def kinds(self, job_id: object) -> list[str]:
        return [e["kind"] for e in self.client.get(f"/api/v1/jobs/{job_id}/events", headers=self.user).json()]


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


def test_deferred_jobs_leave_in_the_first_cycle_after_the_outage(world: World) -> None:
    world.fake.down = True
    jobs = [world.submit() for _ in range(3)]
    assert all(j["state"] == "PENDING" and "waiting to submit" in str(j["reason"]) for j in jobs)
    world.reconciler.run_once()  # still down: the retry fails quietly, the jobs stay queued with their reason
    assert {world.job(j["id"])["state"] for j in jobs} == {"PENDING"}
    world.fake.down = False
    world.reconciler.run_once()  # seconds after creation: no submit grace for jobs already attempted
    after = [world.job(j["id"]) for j in jobs]
    assert [a["state"] for a in after] == ["QUEUED"] * 3, after
    assert world.fake.submits == 3 and len({a["native_id"] for a in after}) == 3
    for j in jobs:
        kinds = world.kinds(j["id"])
        assert kinds.count("submit_deferred") == 1 and kinds.count("submitted") == 1, kinds
    world.reconciler.run_once()
    assert world.fake.submits == 3  # replayed cycles submit nothing again


def test_deferred_job_the_scheduler_accepted_anyway_is_adopted(world: World) -> None:
    """The submit call failed on our side but reached the scheduler (the answer was lost): adopt, never resubmit."""
    world.fake.down = True
    job = world.submit()
    world.fake.down = False
    tag = str(job["id"])
    assert not world.fake.jobs  # plant what the scheduler made of the call whose answer was lost
    world.fake.jobs["7777"] = FakeJob(_launch(world, tag), JobStatus(ref="7777", state=JobState.RUNNING, tag=tag))
    world.reconciler.run_once()
    after = world.job(tag)
    assert after["native_id"] == "7777" and after["state"] == "RUNNING"
    assert world.fake.submits == 0


def test_a_job_never_attempted_waits_out_the_grace(world: World) -> None:
    """A PENDING job with no attempt yet may still be inside its submit request: the reconciler leaves it alone."""
    job = world.submit()
    with world.ctx.db.session() as s:  # as if the API had committed the row and not yet called the scheduler
        row = s.get(Job, job["id"])
        assert row is not None
        row.state, row.native_id, row.submit_attempts = JobState.PENDING.value, None, 0
    world.fake.calls.clear()
    world.reconciler.run_once()
    assert world.job(job["id"])["state"] == "PENDING"
    assert "find" not in world.fake.calls and world.fake.submits == 1


def _launch(world: World, tag: str) -> Launch:
    with world.ctx.db.sessions() as s:
        row = s.get(Job, tag)
        assert row is not None
        return launch_for(world.ctx, s, row)
