"""The MLflow proxy's check of a job token's job: one query, remembered for a few seconds, never for a bad token."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from sqlalchemy import event

from haihe.errors import AuthenticationRequired
from haihe.platform.models import Job
from haihe.platform.tracking.proxy import ENDED_GRACE_S, JobScope
from haihe.platform.tracking.router import SCOPE_TTL_S, ProxyCache, _job_scope_state
from tests.unit import test_jobs_service
from tests.unit.test_jobs_service import Env

env = test_jobs_service.env  # the jobs suite's fixture: an API on SQLite with the fake scheduler


def test_job_scope_state_is_one_query_then_cached(env: Env) -> None:
    job = env.submit()
    scope = JobScope(str(job["id"]), env.org, env.project)
    cache = ProxyCache()
    statements: list[str] = []
    event.listen(env.ctx.db.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    assert asyncio.run(_job_scope_state(env.ctx, cache, scope)) is True
    assert len(statements) == 1
    for _ in range(20):  # a job logging every step: no further reads within SCOPE_TTL_S
        assert asyncio.run(_job_scope_state(env.ctx, cache, scope)) is True
    assert len(statements) == 1 and SCOPE_TTL_S <= 10

    with env.ctx.db.session() as s:  # the job ended long ago: once the cached answer expires, no more writes
        row = s.get(Job, scope.job_id)
        assert row is not None
        row.state = "SUCCEEDED"
        row.ended_at = row.created_at - dt.timedelta(seconds=ENDED_GRACE_S + 60)
    cache = ProxyCache()
    assert asyncio.run(_job_scope_state(env.ctx, cache, scope)) is False


def test_a_token_for_another_project_is_refused_every_time(env: Env) -> None:
    job = env.submit()
    cache = ProxyCache()
    wrong = JobScope(str(job["id"]), env.org, "someone-elses")
    for _ in range(2):
        with pytest.raises(AuthenticationRequired):
            asyncio.run(_job_scope_state(env.ctx, cache, wrong))
    assert cache.get("scope", f"{job['id']}|{env.org}|someone-elses") == (False, None)
