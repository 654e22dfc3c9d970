"""The jobs list with 100,000 jobs: the first page (and the next) come from an index walk, never a full sort."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, insert, select

from haihe.platform.models import Job, Org, Project, User
from tests.browser.portal_support import Portal, make_portal

N_JOBS = 100_000


@pytest.fixture
def portal(tmp_path: Path) -> Iterator[Portal]:
    yield from make_portal(tmp_path)


def _bulk_jobs(portal: Portal, org: str, project: str, user: str) -> None:
    with portal.ctx.db.session() as s:
        org_id = s.scalar(select(Org.id).where(Org.name == org))
        project_id = s.scalar(select(Project.id).where(Project.name == project))
        user_id = s.scalar(select(User.id).where(User.username == user))
        base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        rows: list[dict[str, Any]] = [
            {"id": str(uuid.UUID(int=i + 1)), "org_id": org_id, "project_id": project_id, "user_id": user_id,
             "name": f"bulk-{i}", "kind": "train", "scheduler": "demo", "state": "SUCCEEDED", "reason": "",
             "spec": {"name": f"bulk-{i}", "resources": {"nodes": 1}}, "array_size": 1, "nodes": [],
             "submit_attempts": 1, "created_at": base + dt.timedelta(seconds=i), "updated_at": base}
            for i in range(N_JOBS)]
        s.execute(insert(Job), rows)


def _capture_job_queries(portal: Portal) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []

    def listener(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if re.search(r"FROM jobs\b", statement) and "ORDER BY" in statement:
            seen.append((statement, parameters))

    event.listen(portal.ctx.db.engine, "before_cursor_execute", listener)
    return seen


def _plan(portal: Portal, statement: str, parameters: Any) -> str:
    with portal.ctx.db.engine.connect() as conn:
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
    return "\n".join(str(r[-1]) for r in rows)


def test_first_and_next_page_of_100k_jobs_walk_the_index(portal: Portal) -> None:
    t = portal.tenancy
    org = t.org()
    project = t.project(org)
    user = t.user(org)
    _bulk_jobs(portal, org, project, user)
    browser = portal.browser(user)
    seen = _capture_job_queries(portal)
    page = browser.get("/jobs")
    assert page.status_code == 200
    assert len(re.findall(r'class="job-link"', page.text)) == 50
    assert f"bulk-{N_JOBS - 1}" in page.text and f"bulk-{N_JOBS - 51}" not in page.text  # newest first
    statement, params = seen[-1]
    plan = _plan(portal, statement, params)
    print(f"first page plan:\n{plan}")
    assert "ix_jobs_org_created" in plan and "TEMP B-TREE" not in plan, plan
    nxt = re.search(r'id="next-page" href="([^"]+)"', page.text)
    assert nxt is not None
    page2 = browser.get(nxt.group(1).replace("&amp;", "&"))
    assert f"bulk-{N_JOBS - 51}" in page2.text and f"bulk-{N_JOBS - 1}" not in page2.text
    statement, params = seen[-1]
    plan = _plan(portal, statement, params)
    print(f"next page plan:\n{plan}")
    assert "ix_jobs_org_created" in plan and "TEMP B-TREE" not in plan, plan
