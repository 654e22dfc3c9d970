"""Quotas and the ledger on both databases: concurrent submissions never overspend, settlement charges what ran
(exactly once), reports equal the ledger, bad limits are refused, everything is audited."""

from __future__ import annotations

import collections
import csv
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from haihe.errors import QuotaExceeded
from haihe.platform.access import Principal
from haihe.platform.context import PlatformContext
from haihe.platform.identity import service as identity
from haihe.platform.jobs import service as jobs
from haihe.platform.jobs.reconciler import Reconciler
from haihe.platform.models import AuditEvent, Job, LedgerEntry, QuotaEvent
from haihe.platform.quotas import ledger as quotas
from haihe.platform.settings import Settings
from haihe.schedulers.base import JobState
from tests.fixtures.fake_scheduler import FakeFactory, FakeScheduler
from tests.fixtures.platform import Tenancy

SPEC = {"name": "q", "entrypoint": "python train.py", "resources": {"nodes": 1, "cpus_per_task": 1,
                                                                   "time_limit": 60}}


class QEnv:
    def __init__(self, db_url: str) -> None:
        from haihe.server import create_app

        settings = Settings(database_url=db_url, schedulers={"fake": "fake://"}, default_scheduler="fake",
                            reconcile_interval_s=0)
        self.ctx = PlatformContext.from_settings(settings)
        factory = FakeFactory()
        self.fake: FakeScheduler = factory.instance
        self.ctx.registry.register("fake", factory)
        self.app = create_app(settings, ctx=self.ctx)
        self.client = TestClient(self.app)
        self.client.__enter__()
        self.t = Tenancy(self.client).bootstrap()
        self.org = self.t.org()
        self.project = self.t.project(self.org)
        username = self.t.user(self.org)
        self.user_headers = self.t.login(username)
        self.principal = self._principal(self.user_headers)

    def _principal(self, headers: dict[str, str]) -> Principal:
        token = headers["Authorization"].split(" ", 1)[1]
        with self.ctx.db.session() as s:
            p = identity.authenticate(s, token, "127.0.0.1")
        assert isinstance(p, Principal)
        return p

    def set_quota(self, **limits: object) -> None:
        r = self.client.put(f"/api/v1/orgs/{self.org}/quota", json=limits, headers=self.t.admin_headers)
        assert r.status_code == 200, r.text

    def submit(self, spec: dict[str, object] = SPEC) -> Job:
        with self.ctx.db.sessions() as s:
            return jobs.submit(self.ctx, s, self.principal, self.org, self.project, spec)

    def close(self) -> None:
        self.client.__exit__(None, None, None)


@pytest.fixture
def qenv(any_db_url: str) -> Iterator[QEnv]:
    env = QEnv(any_db_url)
    yield env
    env.close()


def test_200_concurrent_submissions_against_a_quota_of_50(qenv: QEnv) -> None:
    qenv.set_quota(cpu_hours=50)  # each job reserves 1 CPU x 60 min = 1 CPU-hour
    accepted: list[str] = []
    refused: list[QuotaExceeded] = []
    other: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(20)

    def worker(n: int) -> None:
        barrier.wait()
        for _ in range(n):
            try:
                job = qenv.submit()
                with lock:
                    accepted.append(job.id)
            except QuotaExceeded as exc:
                with lock:
                    refused.append(exc)
            except BaseException as exc:  # collected and asserted below
                with lock:
                    other.append(exc)

    threads = [threading.Thread(target=worker, args=(10,)) for _ in range(20)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not other, other[:3]
    assert len(accepted) == 50 and len(refused) == 150
    assert "cpu_hours" in refused[0].message and refused[0].details["left"] == 0
    with qenv.ctx.db.session() as s:
        reserved = s.scalar(select(func.sum(LedgerEntry.amount)).where(LedgerEntry.kind == "reserve",
                                                                       LedgerEntry.resource == "cpu_s"))
        n_jobs = s.scalar(select(func.count()).select_from(Job))
    assert reserved == pytest.approx(50 * 3600.0)
    assert n_jobs == 50  # refused submissions left no job row
    shown = qenv.client.get(f"/api/v1/orgs/{qenv.org}/quota", headers=qenv.user_headers).json()
    cpu = next(b for b in shown["balances"] if b["resource"] == "cpu_hours")
    assert cpu["reserved"] == pytest.approx(50) and cpu["left"] == pytest.approx(0) and cpu["warning"]


def test_settlement_charges_what_ran_and_releases_the_rest_once(qenv: QEnv) -> None:
    qenv.set_quota(cpu_hours=10)
    job = qenv.submit({**SPEC, "resources": {"nodes": 1, "cpus_per_task": 1, "time_limit": 10}})
    ref = job.native_id
    assert ref is not None
    qenv.fake.set(ref, JobState.SUCCEEDED, exit_code=0, elapsed_s=180.0, alloc_cpus=1, alloc_gpus=0)
    rec = Reconciler(qenv.ctx)
    rec.run_once()
    rec.run_once()
    with qenv.ctx.db.session() as s:  # a replayed settle (e.g. after a restart) charges nothing more
        row = s.get(Job, job.id)
        assert row is not None
        qenv.ctx.quota.settle(s, row, qenv.fake.jobs[ref].status)
    shown = qenv.client.get(f"/api/v1/orgs/{qenv.org}/quota", headers=qenv.user_headers).json()
    cpu = next(b for b in shown["balances"] if b["resource"] == "cpu_hours")
    assert cpu["used"] == pytest.approx(3 / 60)  # 3 of the 10 reserved minutes
    assert cpu["reserved"] == pytest.approx(0)
    with qenv.ctx.db.session() as s:
        charges = s.scalars(select(LedgerEntry).where(LedgerEntry.job_id == job.id,
                                                      LedgerEntry.kind == "charge")).all()
    assert [c.amount for c in charges] == [pytest.approx(180.0)]


def test_usage_report_equals_the_ledger_and_csv_opens_cleanly(qenv: QEnv) -> None:
    for elapsed in (60.0, 120.0):
        job = qenv.submit()
        assert job.native_id
        qenv.fake.set(job.native_id, JobState.SUCCEEDED, exit_code=0, elapsed_s=elapsed, alloc_cpus=2)
    Reconciler(qenv.ctx).run_once()
    with qenv.ctx.db.session() as s:
        month = quotas.period_of()
        total = quotas.ledger_total(s, month)
    r = qenv.client.get(f"/api/v1/usage?month={month}&org={qenv.org}", headers=qenv.t.admin_headers)
    rows = r.json()
    cpu_rows = [row for row in rows if row["resource"] == "cpu_hours"]
    assert sum(row["amount"] for row in cpu_rows) == pytest.approx(total["cpu_s"] / 3600)
    assert total["cpu_s"] == pytest.approx(360.0)
    r = qenv.client.get(f"/api/v1/usage?month={month}&format=csv", headers=qenv.t.admin_headers)
    assert r.headers["content-type"].startswith("text/csv")
    parsed = list(csv.DictReader(io.StringIO(r.text)))
    assert parsed and set(parsed[0]) == set(quotas.REPORT_COLUMNS)
    assert sum(float(p["amount"]) for p in parsed if p["org"] == qenv.org and p["resource"] == "cpu_hours") == \
        pytest.approx(total["cpu_s"] / 3600)


@pytest.mark.parametrize(
    ("body", "field"),
    [({"gpu_hours": -1}, "gpu_hours"), ({"cpu_hours": 1e30}, "cpu_hours"), ({"period": "weekly"}, "period"),
     ({"max_jobs": "many"}, "max_jobs"), ({"warn_fraction": 2}, "warn_fraction"), ({"bogus": 1}, "bogus")],
)
def test_bad_limits_are_refused(qenv: QEnv, body: dict[str, object], field: str) -> None:
    r = qenv.client.put(f"/api/v1/orgs/{qenv.org}/quota", json=body, headers=qenv.t.admin_headers)
    assert r.status_code == 422 and r.json()["error"]["field"] == field


def test_unknown_org_malformed_month_project_over_org_and_audit(qenv: QEnv) -> None:
    h = qenv.t.admin_headers
    assert qenv.client.put("/api/v1/orgs/no-such-org/quota", json={"gpu_hours": 1}, headers=h).status_code == 404
    assert qenv.client.get("/api/v1/usage?month=2026-13", headers=h).status_code == 422
    qenv.set_quota(gpu_hours=10)
    r = qenv.client.put(f"/api/v1/orgs/{qenv.org}/projects/{qenv.project}/quota", json={"gpu_hours": 20}, headers=h)
    assert r.status_code == 422 and "nest" in r.json()["error"]["message"]
    assert qenv.client.put(f"/api/v1/orgs/{qenv.org}/quota", json={"gpu_hours": 1},
                           headers=qenv.user_headers).status_code == 403
    with qenv.ctx.db.session() as s:
        assert s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "quota.set")) >= 1


def test_suspended_org_can_only_read(qenv: QEnv) -> None:
    qenv.submit()
    r = qenv.client.post(f"/api/v1/orgs/{qenv.org}/suspend", headers=qenv.t.admin_headers)
    assert r.status_code == 200 and r.json()["status"] == "suspended"
    r = qenv.client.post(f"/api/v1/orgs/{qenv.org}/projects/{qenv.project}/jobs", json={"spec": SPEC},
                         headers=qenv.user_headers)
    assert r.status_code == 403 and "suspended" in r.json()["error"]["message"]
    assert qenv.client.get(f"/api/v1/jobs?org={qenv.org}", headers=qenv.user_headers).status_code == 200
    assert qenv.client.post(f"/api/v1/orgs/{qenv.org}/resume", headers=qenv.t.admin_headers).status_code == 200


def test_warning_and_limit_events_are_recorded(qenv: QEnv) -> None:
    qenv.set_quota(cpu_hours=2, warn_fraction=0.5)
    qenv.submit()
    qenv.submit()
    with qenv.ctx.db.session() as s:
        levels = {e.level for e in s.scalars(select(QuotaEvent))}
    assert levels == {"warning", "limit"}
    shown = qenv.client.get(f"/api/v1/orgs/{qenv.org}/quota", headers=qenv.user_headers).json()
    assert {e["level"] for e in shown["events"]} == {"warning", "limit"}
    r = qenv.client.post(f"/api/v1/orgs/{qenv.org}/projects/{qenv.project}/jobs", json={"spec": SPEC},
                         headers=qenv.user_headers)
    assert r.status_code == 402
    err = r.json()["error"]
    assert err["code"] == "quota_exceeded" and err["details"]["quota"] == "cpu_hours"
    assert "needs 1.00 CPU-hours" in err["message"] and "0.00 of 2 left" in err["message"]


def test_max_jobs_and_gpus(qenv: QEnv, tmp_path: Path) -> None:
    qenv.set_quota(max_jobs=2)
    qenv.submit()
    qenv.submit()
    with pytest.raises(QuotaExceeded, match="max_jobs"):
        qenv.submit()


def test_max_gpus_counts_nodes_times_gpus_times_sweep_and_a_submit_never_loads_the_queue(qenv: QEnv) -> None:
    from sqlalchemy import event

    gpu = {**SPEC, "resources": {**SPEC["resources"], "nodes": 2, "gpus_per_node": 2}}  # type: ignore[dict-item]
    qenv.set_quota(max_gpus=12, max_jobs=500)
    qenv.submit(gpu)  # 4 GPUs
    qenv.submit({**gpu, "sweep": {"lr": [0.1, 0.2]}})  # an array of 2: 8 GPUs, 12 in all
    with pytest.raises(QuotaExceeded, match="max_gpus") as refused:
        qenv.submit({**gpu, "resources": {**gpu["resources"], "nodes": 1, "gpus_per_node": 1}})  # type: ignore[dict-item]
    assert refused.value.details["left"] == 0 and refused.value.details["need"] == 1
    for _ in range(60):  # a busy org: many jobs queued
        qenv.submit()
    statements: list[str] = []

    def seen(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(qenv.ctx.db.engine, "before_cursor_execute", seen)
    try:
        qenv.submit()
    finally:
        event.remove(qenv.ctx.db.engine, "before_cursor_execute", seen)
    # the concurrency check reads the queue as one aggregate row, not the 63 active jobs
    reads = [st for st in statements if st.lstrip().upper().startswith("SELECT") and "FROM jobs" in st]
    assert reads and all("count(" in st.lower() for st in reads), reads


def test_three_hundred_jobs_ending_in_one_cycle_settle_once_in_a_bounded_number_of_statements(qenv: QEnv) -> None:
    from sqlalchemy import event

    qenv.set_quota(cpu_hours=1000)
    refs = [qenv.submit().native_id for _ in range(300)]
    for ref in refs:
        assert ref is not None
        qenv.fake.set(ref, JobState.SUCCEEDED, exit_code=0, elapsed_s=60.0, alloc_cpus=1, alloc_gpus=0)
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(qenv.ctx.db.engine, "before_cursor_execute", count)
    try:
        report = Reconciler(qenv.ctx).cycle("fake")
    finally:
        event.remove(qenv.ctx.db.engine, "before_cursor_execute", count)
    assert report.transitions == 300 and report.error is None
    # the ledger work of 300 ended jobs is a handful of batched statements, not several per job; on PostgreSQL the
    # ORM batches the job events too (SQLite's driver gets one INSERT per event: fine for the embedded default)
    ledger = [st for st in statements if " ledger" in st or "quota" in st]
    assert len(ledger) < 30, collections.Counter(st[:60] for st in ledger).most_common(5)
    if qenv.ctx.db.engine.dialect.name == "postgresql":
        assert len(statements) < 60, collections.Counter(st[:60] for st in statements).most_common(5)
    Reconciler(qenv.ctx).run_once()  # a second cycle settles nothing again
    with qenv.ctx.db.session() as s:
        markers = s.scalar(select(func.count()).select_from(LedgerEntry).where(LedgerEntry.kind == "marker"))
        charged = s.scalar(select(func.sum(LedgerEntry.amount)).where(LedgerEntry.kind == "charge"))
        reserved = s.scalar(select(func.sum(LedgerEntry.amount)).where(LedgerEntry.kind == "reserve"))
    assert markers == 300
    assert charged == pytest.approx(300 * 60.0)
    assert reserved == pytest.approx(0.0)
