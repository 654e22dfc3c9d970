"""The leader lease on both databases: one holder at a time (also when many processes race for it), hand-over when
the holder stops renewing or releases it, and two API processes' background work sharing one database and one
scheduler: only the leader reconciles, deferred jobs go out exactly once, the other takes over when it stops."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from haihe.platform.context import PlatformContext
from haihe.platform.db import Database
from haihe.platform.jobs.reconciler import PeriodicThread, Reconciler
from haihe.platform.lease import LeaderLease
from haihe.platform.models import Job, utcnow
from haihe.platform.settings import Settings
from haihe.schedulers.base import JobState
from tests.fixtures.fake_scheduler import FakeFactory, FakeScheduler
from tests.fixtures.platform import Tenancy


class Clock:
    def __init__(self) -> None:
        self.t = utcnow()

    def __call__(self) -> dt.datetime:
        return self.t


@pytest.fixture
def db(any_db_url: str) -> Iterator[Database]:
    database = Database(any_db_url)
    database.migrate()
    yield database
    database.dispose()



def _until(condition: Callable[[], bool], timeout: float, message: str) -> None:
    """Poll ``condition`` until it holds; fail with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)

def test_one_holder_renewal_expiry_and_release(db: Database) -> None:
    clock = Clock()
    a = LeaderLease(db, 15, holder="a", now=clock, name=f"t-{id(clock)}")
    b = LeaderLease(db, 15, holder="b", now=clock, name=a.name)
    assert a.renew() and not b.renew()
    clock.t += dt.timedelta(seconds=10)
    assert a.renew() and not b.renew()  # renewed: b still waits
    clock.t += dt.timedelta(seconds=16)  # a stopped renewing (a crash): b takes over after the ttl
    assert b.renew() and not a.renew()
    b.release()  # a clean shutdown hands over at once
    assert a.renew() and not b.renew()


def test_a_restart_on_the_same_host_takes_over_from_its_dead_predecessor_at_once(db: Database) -> None:
    import os
    import socket
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()  # a pid that has exited
    clock = Clock()
    name = f"restart-{time.monotonic_ns()}"
    elsewhere = LeaderLease(db, 600, holder=f"other-host:{dead}:y", now=clock, name=name)
    assert elsewhere.renew()
    assert not LeaderLease(db, 600, now=clock, name=name).renew()  # another host's holder: our pids say nothing
    elsewhere.release()
    crashed = LeaderLease(db, 600, holder=f"{socket.gethostname()}:{dead}:x", now=clock, name=name)
    assert crashed.renew()
    restarted = LeaderLease(db, 600, now=clock, name=name)
    assert restarted.renew()  # its predecessor on this host is gone: no waiting out the 600 s ttl
    assert not LeaderLease(db, 600, now=clock, name=name).renew()  # a live holder here is respected
    assert os.getpid() == int(restarted.holder.split(":")[1])


def test_many_racing_processes_get_exactly_one_leader(db: Database) -> None:
    name = f"race-{time.monotonic_ns()}"
    leases = [LeaderLease(Database(db.url), 15, name=name, holder=f"p{i}") for i in range(8)]
    barrier = threading.Barrier(len(leases))
    won: list[str] = []

    def race(lease: LeaderLease) -> None:
        barrier.wait()
        if lease.renew():
            won.append(lease.holder)

    threads = [threading.Thread(target=race, args=(lease,)) for lease in leases]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(won) == 1, won
    assert sum(lease.renew() for lease in leases) == 1  # and it stays one on the next round
    for lease in leases:
        lease.db.dispose()


def _ctx(db_url: str, fake: FakeScheduler) -> PlatformContext:
    settings = Settings(database_url=db_url, schedulers={"fake": "fake://"}, default_scheduler="fake",
                        reconcile_interval_s=0)
    ctx = PlatformContext.from_settings(settings)
    factory = FakeFactory()
    factory.instance = fake  # both "processes" talk to the same scheduler
    ctx.registry.register("fake", factory)
    return ctx


def test_two_api_processes_one_reconciles_and_the_other_takes_over(tmp_path: Path) -> None:
    from haihe.server import create_app

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    fake = FakeScheduler()
    ctx_a, ctx_b = _ctx(url, fake), _ctx(url, fake)
    with TestClient(create_app(ctx_a.settings, ctx=ctx_a)) as client:
        t = Tenancy(client).bootstrap()
        org = t.org()
        project = t.project(org)
        user = t.login(t.user(org))
        fake.down = True  # every submission is deferred: the reconcilers must send them, once each
        spec = {"name": "lease", "entrypoint": ["true"], "resources": {"time_limit": 5}}
        ids = [client.post(f"/api/v1/orgs/{org}/projects/{project}/jobs", json={"spec": spec},
                           headers=user).json()["id"] for _ in range(12)]
    cycles = {"a": 0, "b": 0}
    leases = {"a": LeaderLease(ctx_a.db, 2, holder="a"), "b": LeaderLease(ctx_b.db, 2, holder="b")}

    def work(name: str, ctx: PlatformContext) -> PeriodicThread:
        reconciler = Reconciler(ctx)

        def cycle() -> None:
            cycles[name] += 1
            reconciler.run_once()
        return PeriodicThread(f"reconciler-{name}", 0.05, leases[name].guard(cycle))

    threads = {"a": work("a", ctx_a), "b": work("b", ctx_b)}
    for th in threads.values():
        th.start()
    try:
        _until(lambda: leases["a"].held or leases["b"].held, 15, "neither process took the lease")
        fake.down = False
        _until(lambda: fake.submits >= len(ids), 30, "the deferred jobs were never submitted")
        leader = "a" if leases["a"].held else "b"
        seen = cycles[leader]
        # five more of the leader's cycles: a second reconciler would have submitted again by then
        _until(lambda: cycles[leader] >= seen + 5, 15, "the leader stopped cycling")
        assert fake.submits == len(ids)
        other = "b" if leader == "a" else "a"
        assert cycles[leader] > 0 and cycles[other] == 0, cycles
        threads[leader].stop()  # the leader's process stops (it does not even release: the ttl hands over)
        with ctx_a.db.session() as s:
            row = s.get(Job, ids[0])
            assert row is not None
            assert row.state in (JobState.SUBMITTED.value, JobState.QUEUED.value)
        _until(lambda: cycles[other] > 0, 15, "the other process never took over")
        assert fake.submits == len(ids)  # taking over submitted nothing twice
    finally:
        for th in threads.values():
            th.stop()
        ctx_a.close()
        ctx_b.close()
