"""Jobs end to end through the API with a fake scheduler: submit, idempotency, tenancy, reconciler, recovery."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from haihe.platform.context import PlatformContext
from haihe.platform.jobs import service as jobs
from haihe.platform.jobs.reconciler import MISSES_BEFORE_LOST, Reconciler
from haihe.platform.models import Job
from haihe.platform.settings import Settings
from haihe.schedulers.base import JobState
from tests.fixtures.fake_scheduler import FakeFactory, FakeScheduler
from tests.fixtures.platform import Tenancy

SPEC = {"name": "digits", "recipe": "digits-cnn", "resources": {"nodes": 2, "time_limit": "00:10:00"},
        "launcher": "torchrun"}


class Env:
    def __init__(self, client: TestClient, ctx: PlatformContext, fake: FakeScheduler) -> None:
        self.client, self.ctx, self.fake = client, ctx, fake
        self.t = Tenancy(client).bootstrap()
        self.org = self.t.org()
        self.project = self.t.project(self.org)
        self.user = self.t.login(self.t.user(self.org))
        self.reconciler = Reconciler(ctx)

    def submit(self, spec: dict[str, object] | None = None, headers: dict[str, str] | None = None,
               key: str | None = None) -> dict[str, object]:
        h = dict(headers or self.user)
        if key:
            h["Idempotency-Key"] = key
        r = self.client.post(f"/api/v1/orgs/{self.org}/projects/{self.project}/jobs", json={"spec": spec or SPEC},
                             headers=h)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def job(self, job_id: object) -> dict[str, object]:
        return dict(self.client.get(f"/api/v1/jobs/{job_id}", headers=self.user).json())

    def count_jobs(self) -> int:
        with self.ctx.db.session() as s:
            return int(s.scalar(select(func.count()).select_from(Job)) or 0)

    def age_pending(self) -> None:
        """Make PENDING jobs older than the reconciler's submit grace (instead of sleeping)."""
        import datetime as dt

        with self.ctx.db.session() as s:
            for job in s.scalars(select(Job).where(Job.state == "PENDING")):
                job.created_at = job.created_at - dt.timedelta(minutes=5)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from make_env(tmp_path)


def make_env(tmp_path: Path) -> Iterator[Env]:
    """The API with a fake scheduler, signed-in researcher and an org/project (also for other test modules)."""
    from haihe.server import create_app

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", schedulers={"fake": "fake://"},
                        default_scheduler="fake", reconcile_interval_s=0)
    ctx = PlatformContext.from_settings(settings)
    factory = FakeFactory()
    ctx.registry.register("fake", factory)
    with TestClient(create_app(settings, ctx=ctx)) as client:
        yield Env(client, ctx, factory.instance)


def test_submit_stores_then_dispatches_with_tag(env: Env) -> None:
    job = env.submit()
    assert job["state"] == "SUBMITTED" and job["native_id"] == "1000"
    launch = env.fake.jobs["1000"].launch
    assert launch.tag == job["id"]
    assert launch.command[-2:] == ("--recipe", "digits-cnn")
    assert launch.resources.nodes == 2 and launch.resources.time_limit_min == 10
    assert launch.env["HAIHE_JOB_ID"] == job["id"] and launch.env["HAIHE_ORG"] == env.org
    kinds = [e["kind"] for e in env.client.get(f"/api/v1/jobs/{job['id']}/events", headers=env.user).json()]
    assert kinds == ["created", "submitted"]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({**SPEC, "colour": "red"}, "colour"),
        ({**SPEC, "resources": {"gpus_per_node": -1}}, "resources.gpus_per_node"),
        ({**SPEC, "launcher": "slurmrun"}, "launcher"),
        ({**SPEC, "resources": {"time_limit": "soon"}}, "resources.time_limit"),
        ({**SPEC, "resources": {"qos": "high"}}, "qos"),  # the fake backend has no QoS: refused, named
        ({"name": "x", "entrypoint": "python a.py", "env": {"SLURM_JOB_ID": "1"}}, "env"),
        ({"name": "x"}, "spec"),
        ({**SPEC, "dataset": {"name": "no-such-data", "version": 3}}, "dataset.name"),
    ],
)
def test_bad_specs_are_refused_and_nothing_is_stored(env: Env, spec: dict[str, object], field: str) -> None:
    r = env.client.post(f"/api/v1/orgs/{env.org}/projects/{env.project}/jobs", json={"spec": spec}, headers=env.user)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["field"] == field or field in err["message"], err
    assert env.count_jobs() == 0 and env.fake.submits == 0


def test_unknown_launcher_message_lists_allowed_values(env: Env) -> None:
    r = env.client.post(f"/api/v1/orgs/{env.org}/projects/{env.project}/jobs",
                        json={"spec": {**SPEC, "launcher": "slurmrun"}}, headers=env.user)
    assert "torchrun" in r.json()["error"]["message"]


def test_idempotency_key_returns_the_same_job(env: Env) -> None:
    a = env.submit(key="abc-1")
    b = env.submit(key="abc-1")
    assert a["id"] == b["id"] and env.fake.submits == 1
    assert env.submit(key="abc-2")["id"] != a["id"]


def test_other_orgs_cannot_see_or_cancel_jobs(env: Env) -> None:
    job = env.submit()
    other_org = env.t.org()
    outsider = env.t.login(env.t.user(other_org))
    assert env.client.get(f"/api/v1/jobs/{job['id']}", headers=outsider).status_code == 404
    assert env.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=outsider).status_code == 404
    assert env.client.get(f"/api/v1/jobs/{job['id']}/logs", headers=outsider).status_code == 404
    assert env.client.get("/api/v1/jobs", headers=outsider).json()["items"] == []
    r = env.client.post(f"/api/v1/orgs/{env.org}/projects/{env.project}/jobs", json={"spec": SPEC}, headers=outsider)
    assert r.status_code == 404


def test_reconciler_walks_the_state_machine_with_one_status_call(env: Env) -> None:
    ids = [env.submit()["id"] for _ in range(5)]
    refs = list(env.fake.jobs)
    env.fake.calls.clear()
    env.reconciler.run_once()
    assert env.fake.calls == ["status"]  # five jobs, one call
    assert env.job(ids[0])["state"] == "QUEUED" and env.job(ids[0])["queue_position"] == 1
    env.fake.set(refs[0], JobState.RUNNING, nodes=("cn1", "cn2"))
    env.reconciler.run_once()
    assert env.job(ids[0])["nodes"] == ["cn1", "cn2"]
    env.fake.set(refs[0], JobState.SUCCEEDED, exit_code=0, elapsed_s=12.0)
    env.reconciler.run_once()
    env.fake.set(refs[0], JobState.RUNNING)  # a stale report after the end changes nothing: terminal is final
    env.reconciler.run_once()
    job = env.job(ids[0])
    assert job["state"] == "SUCCEEDED" and job["exit_code"] == 0 and job["elapsed_s"] == 12.0
    kinds = [e["kind"] for e in env.client.get(f"/api/v1/jobs/{ids[0]}/events", headers=env.user).json()]
    assert kinds == ["created", "submitted", "queued", "started", "finished"]


def test_scheduler_outage_at_submit_leaves_a_pending_job_that_is_submitted_later(env: Env) -> None:
    env.fake.down = True
    job = env.submit()
    assert job["state"] == "PENDING" and "waiting to submit" in job["reason"]
    env.age_pending()
    env.reconciler.run_once()  # still down: nothing changes, nothing raised
    assert env.job(job["id"])["state"] == "PENDING"
    env.fake.down = False
    env.reconciler.run_once()
    assert env.job(job["id"])["state"] in ("SUBMITTED", "QUEUED") and env.fake.submits == 1


def test_job_accepted_before_a_crash_is_adopted_not_resubmitted(env: Env) -> None:
    job = env.submit()
    with env.ctx.db.session() as s:  # the platform "crashed" before storing the native id
        row = s.get(Job, job["id"])
        assert row is not None
        row.state, row.native_id = "PENDING", None
    env.age_pending()
    env.reconciler.run_once()
    after = env.job(job["id"])
    assert after["state"] in ("SUBMITTED", "QUEUED") and after["native_id"] == "1000"
    assert env.fake.submits == 1


def test_a_job_the_scheduler_forgot_is_marked_failed_with_a_reason(env: Env) -> None:
    job = env.submit()
    env.fake.jobs.clear()
    for _ in range(MISSES_BEFORE_LOST):
        env.reconciler.run_once()
    after = env.job(job["id"])
    assert after["state"] == "FAILED" and "no record" in after["reason"]


def test_cancel_reaches_the_scheduler(env: Env) -> None:
    job = env.submit()
    r = env.client.post(f"/api/v1/jobs/{job['id']}/cancel", headers=env.user)
    assert r.status_code == 200
    env.reconciler.run_once()
    assert env.job(job["id"])["state"] == "CANCELLED"


def test_resubmit_makes_a_new_job_linked_to_the_old(env: Env) -> None:
    job = env.submit()
    r = env.client.post(f"/api/v1/jobs/{job['id']}/resubmit", headers=env.user)
    assert r.status_code == 201
    assert r.json()["resubmitted_from"] == job["id"] and r.json()["id"] != job["id"]


def test_keyset_pagination_has_no_overlap_or_gap(env: Env) -> None:
    ids = {env.submit()["id"] for _ in range(23)}
    seen: list[str] = []
    cursor = None
    while True:
        url = "/api/v1/jobs?limit=10" + (f"&cursor={cursor}" if cursor else "")
        page = env.client.get(url, headers=env.user).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 23 and set(seen) == ids
    r = env.client.get("/api/v1/jobs?state=BOGUS", headers=env.user)
    assert r.status_code == 422 and r.json()["error"]["field"] == "state"


def test_jobs_that_need_tracking_are_refused_while_mlflow_is_down(tmp_path: Path) -> None:
    from haihe.cluster.procs import free_port
    from haihe.server import create_app

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}", schedulers={"fake": "fake://"},
                        default_scheduler="fake", reconcile_interval_s=0, mlflow_url=dead)
    ctx = PlatformContext.from_settings(settings)
    factory = FakeFactory()
    ctx.registry.register("fake", factory)
    with TestClient(create_app(settings, ctx=ctx)) as client:
        env = Env(client, ctx, factory.instance)
        r = client.post(f"/api/v1/orgs/{env.org}/projects/{env.project}/jobs",
                        json={"spec": {**SPEC, "register": {"name": "digits"}}}, headers=env.user)
        assert r.status_code == 503 and r.json()["error"]["code"] == "tracking_unavailable"
        assert "registers a model" in r.json()["error"]["message"]
        assert env.count_jobs() == 0 and factory.instance.submits == 0
        # a job that only logs metrics is not held up by the outage
        assert client.post(f"/api/v1/orgs/{env.org}/projects/{env.project}/jobs", json={"spec": SPEC},
                           headers=env.user).status_code == 201


def test_what_the_live_cluster_cannot_run_is_refused_before_anything_is_stored(env: Env) -> None:
    """Admission before commit (issue 17): 2 GPUs per node on a cluster whose nodes have none is a 422 naming the
    field, with no job row, no event and no ledger entry; while the cluster cannot be asked, the job is kept."""
    from haihe.platform.models import JobEvent, LedgerEntry

    def counts() -> tuple[int, int, int]:
        with env.ctx.db.session() as s:
            return tuple(int(s.scalar(select(func.count()).select_from(m)) or 0)  # type: ignore[return-value]
                         for m in (Job, JobEvent, LedgerEntry))

    env.fake.max_gpus_per_node = 0
    before = counts()
    spec = {**SPEC, "resources": {"nodes": 1, "gpus_per_node": 2, "time_limit": "00:10:00"}}
    r = env.client.post(f"/api/v1/orgs/{env.org}/projects/{env.project}/jobs", json={"spec": spec}, headers=env.user)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "resources.gpus_per_node" and "GPUs per node" in r.json()["error"]["message"]
    assert counts() == before
    assert env.fake.submits == 0
    env.fake.down = True  # a cluster that cannot be asked does not lose the job: it waits, PENDING, with the reason
    job = env.submit(spec={**SPEC, "resources": {"nodes": 1, "time_limit": "00:10:00"}})
    assert env.job(job["id"])["state"] == "PENDING"


def test_every_user_sees_the_cluster_and_why_their_own_jobs_wait(env: Env) -> None:
    """Issue 17: a cluster view for every user (not only admins), as the API the CLI and portal read."""
    mine = env.submit()
    other_user = env.t.login(env.t.user(env.org))
    theirs = env.submit(headers=other_user)
    env.fake.set(str(env.job(mine["id"])["native_id"]), JobState.QUEUED, reason="Priority", queue_position=2)
    env.reconciler.run_once()
    r = env.client.get("/api/v1/cluster", headers=env.user)
    assert r.status_code == 200, r.text
    body = r.json()
    fake = next(s for s in body["schedulers"] if s["name"] == "fake")
    assert fake["ok"] and fake["cpus_total"] == 8 and fake["nodes"][0]["name"] == "n1"
    waiting = {j["id"]: j for j in body["my_waiting_jobs"]}
    assert mine["id"] in waiting and theirs["id"] not in waiting  # the caller's own jobs only
    assert waiting[mine["id"]]["why"] == "other jobs are ahead of it in the queue (fair-share priority)"
    env.fake.down = True  # one scheduler that cannot answer is said, not a 500
    down = env.client.get("/api/v1/cluster", headers=env.user).json()
    fake = next(s for s in down["schedulers"] if s["name"] == "fake")
    assert not fake["ok"] and "down" in fake["error"]


def test_submit_costs_few_round_trips(env: Env) -> None:
    """Every statement is a round trip to PostgreSQL under load: a submit reads the caller (credential, user and
    memberships) and the org/project once each, writes the job, ledger, audit and event rows, and re-reads nothing.
    (Was 22 statements: the org read three times, the user twice, the job and its relations re-read after commit.)"""
    from sqlalchemy import event

    env.submit()  # warm: the first request of a session may load more
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(" ".join(statement.split()))

    event.listen(env.ctx.db.engine, "before_cursor_execute", seen)
    try:
        env.submit()
    finally:
        event.remove(env.ctx.db.engine, "before_cursor_execute", seen)
    reads = [s for s in statements if s.startswith("SELECT")]
    assert sum(" FROM credentials" in s for s in reads) == 1
    assert sum(" FROM orgs" in s for s in reads) == 1, reads
    assert not any(" FROM users" in s or " FROM jobs" in s or " FROM projects" in s.split(" JOIN ")[0]
                   for s in reads), reads
    assert len(statements) <= 10, "\n".join(statements)


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_respond_async_answers_202_once_stored_then_submits_once(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from haihe.platform.jobs import service

    rendered: list[str] = []
    real_launch_for = service.launch_for

    def launch_for(*args: Any, **kwargs: Any) -> Any:
        rendered.append(args[2].id)
        return real_launch_for(*args, **kwargs)

    monkeypatch.setattr(service, "launch_for", launch_for)
    h = {**env.user, "Prefer": "respond-async"}
    r = env.client.post(f"/api/v1/orgs/{env.org}/projects/{env.project}/jobs", json={"spec": SPEC}, headers=h)
    assert r.status_code == 202, r.text
    assert r.headers["Preference-Applied"] == "respond-async"
    job = r.json()
    assert job["state"] == "PENDING" and job["native_id"] is None
    _until(lambda: env.job(job["id"])["state"] == "SUBMITTED")
    assert env.fake.submits == 1 and env.job(job["id"])["native_id"] == "1000"
    assert rendered == [job["id"]]  # the dispatcher submits the Launch the request built: not re-read, not re-rendered
    kinds = [e["kind"] for e in env.client.get(f"/api/v1/jobs/{job['id']}/events", headers=env.user).json()]
    assert kinds == ["created", "submitted"]
    env.age_pending()
    env.reconciler.run_once()  # nothing left for the reconciler: not submitted twice
    assert env.fake.submits == 1


def test_respond_async_during_an_outage_defers_and_the_reconciler_submits(env: Env) -> None:
    env.fake.down = True
    h = {**env.user, "Prefer": "respond-async"}
    r = env.client.post(f"/api/v1/orgs/{env.org}/projects/{env.project}/jobs", json={"spec": SPEC}, headers=h)
    assert r.status_code == 202
    job_id = r.json()["id"]
    _until(lambda: "waiting to submit" in str(env.job(job_id)["reason"]))
    env.fake.down = False
    env.reconciler.run_once()  # an attempted job is retried at once, not after the grace
    assert env.job(job_id)["native_id"] == "1000" and env.fake.submits == 1


def test_ids_still_queued_at_shutdown_stay_pending_for_the_reconciler(env: Env) -> None:
    dispatcher = jobs.dispatcher(env.ctx)
    dispatcher.stop()  # as when the process stops: what is queued is not submitted by it
    h = {**env.user, "Prefer": "respond-async"}
    ids = [env.client.post(f"/api/v1/orgs/{env.org}/projects/{env.project}/jobs", json={"spec": SPEC},
                           headers=h).json()["id"] for _ in range(3)]
    assert env.fake.submits == 0 and {env.job(i)["state"] for i in ids} == {"PENDING"}
    env.age_pending()
    env.reconciler.run_once()
    assert all(env.job(i)["native_id"] for i in ids) and env.fake.submits == 3


def test_a_stored_job_is_claimed_by_one_submitter_only(env: Env) -> None:
    """The dispatcher and the reconciler (here, or in another API process) may both look at a PENDING job that
    waited past the grace: a lease taken by compare-and-set lets exactly one of them submit it, and a holder that
    died loses it when the lease ends."""
    h = {**env.user, "Prefer": "respond-async"}
    with env.ctx.db.sessions() as hold:  # no dispatcher threads: the job stays stored and PENDING
        jobs.dispatcher(env.ctx).stop()
        r = env.client.post(f"/api/v1/orgs/{env.org}/projects/{env.project}/jobs", json={"spec": SPEC}, headers=h)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        hold.close()
    with env.ctx.db.sessions() as a, env.ctx.db.sessions() as b:
        seen_by_a, seen_by_b = a.get(Job, job_id), b.get(Job, job_id)
        assert seen_by_a is not None and seen_by_b is not None
        assert seen_by_a.submit_claimed_until is None and seen_by_b.submit_claimed_until is None  # both read it
        assert jobs.claim(a, seen_by_a) is True
        assert jobs.claim(b, seen_by_b) is False
    env.age_pending()
    before = env.fake.submits
    env.reconciler.run_once()
    assert env.fake.submits == before  # a holds it (say, mid-call to the scheduler): the reconciler leaves it
    with env.ctx.db.sessions() as c:  # a died holding it: once the lease has run out, the reconciler submits it
        held = c.get(Job, job_id)
        assert held is not None and held.submit_claimed_until is not None
        held.submit_claimed_until = held.submit_claimed_until - jobs.SUBMIT_LEASE * 2
        c.commit()
    env.reconciler.run_once()
    assert env.fake.submits == before + 1
    assert env.job(job_id)["state"] in ("SUBMITTED", "QUEUED")  # the same cycle already read its queue state


def test_a_submit_validates_the_spec_once(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from haihe.platform.jobs import service

    calls: list[object] = []
    real = service.validate_spec

    def counting(raw: dict[str, object]) -> object:
        calls.append(raw)
        return real(raw)

    monkeypatch.setattr(service, "validate_spec", counting)
    env.submit()
    assert len(calls) == 1
