"""Load: one million job rows in a real PostgreSQL; the jobs list stays fast because its keyset query walks an
index (the plan is asserted, the timings recorded for docs/reliability.md — no timing assertion)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from haihe.platform.settings import Settings
from tests.fixtures.figures import Figures
from tests.fixtures.platform import Tenancy

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
ROWS = 1_000_000


def test_million_jobs_list_pages_use_the_index(postgres_server: Any, figures: Figures) -> None:
    from haihe.server import create_app

    url = postgres_server.create_database(f"load_{uuid.uuid4().hex[:8]}")
    with TestClient(create_app(Settings(database_url=url, reconcile_interval_s=0,
                                        maintenance_interval_s=0))) as client:
        t = Tenancy(client).bootstrap()
        org = t.org()
        project = t.project(org)
        user = t.login(t.user(org))
        engine = sa.create_engine(url)
        t0 = time.perf_counter()
        with engine.begin() as conn:
            ids = conn.execute(sa.text("SELECT o.id, p.id, u.id FROM orgs o JOIN projects p ON p.org_id = o.id "
                                       "JOIN memberships m ON m.org_id = o.id JOIN users u ON u.id = m.user_id "
                                       "WHERE o.name = :o LIMIT 1"), {"o": org}).one()
            conn.execute(sa.text(
                "INSERT INTO jobs (id, org_id, project_id, user_id, name, kind, scheduler, state, reason, spec, "
                "array_size, nodes, submit_attempts, created_at, updated_at) "
                "SELECT md5(g::text)::uuid::text, :o, :p, :u, 'load-' || g, 'train', 'slurm', "
                "CASE WHEN g % 10 = 0 THEN 'RUNNING' ELSE 'SUCCEEDED' END, '', '{}'::json, 1, '[]'::json, 0, "
                "now() - (g || ' seconds')::interval, now() FROM generate_series(1, :n) g"),
                {"o": ids[0], "p": ids[1], "u": ids[2], "n": ROWS})
            conn.execute(sa.text("ANALYZE jobs"))
        fill_s = time.perf_counter() - t0
        with engine.connect() as conn:
            plan = "\n".join(r[0] for r in conn.execute(sa.text(
                "EXPLAIN SELECT * FROM jobs WHERE org_id = :o AND project_id = :p "
                "ORDER BY created_at DESC, id DESC LIMIT 51"), {"o": ids[0], "p": ids[1]}))
        assert "Index Scan" in plan and "ix_jobs_project_created" in plan, plan
        assert "Seq Scan" not in plan, plan
        timings = []
        cursor = None
        for _ in range(5):  # five consecutive pages deep into the table cost the same as the first
            t1 = time.perf_counter()
            q = f"/api/v1/jobs?org={org}&project={project}&limit=50" + (f"&cursor={cursor}" if cursor else "")
            page = client.get(q, headers=user).json()
            timings.append((time.perf_counter() - t1) * 1000)
            assert len(page["items"]) == 50
            cursor = page["next_cursor"]
        engine.dispose()
    figures.record("test_million_jobs_list_pages_use_the_index",
                   f"{ROWS:,} job rows in PostgreSQL 15",
                   {"fill_s": round(fill_s, 1), "first_page_ms": round(timings[0], 1),
                    "pages_2_to_5_ms": [round(x, 1) for x in timings[1:]],
                    "plan": "Index Scan ix_jobs_project_created"})
