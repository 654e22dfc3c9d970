"""The database suite on both backends: SQLite (WAL) and a real PostgreSQL 15 started by the fixtures."""

from __future__ import annotations

import datetime as dt
import threading

import sqlalchemy as sa
from fastapi.testclient import TestClient

from haihe.platform.db import Database
from haihe.platform.models import AuditEvent, Org, utcnow
from tests.fixtures.platform import Tenancy, bearer, make_settings


def test_migrations_are_idempotent_and_complete(any_db_url: str) -> None:
    db = Database(any_db_url)
    db.migrate()
    db.migrate()
    tables = set(sa.inspect(db.engine).get_table_names())
    assert {"orgs", "projects", "users", "memberships", "credentials", "audit_events", "alembic_version"} <= tables
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() is not None
    db.dispose()


def test_timestamps_round_trip_as_utc(any_db_url: str) -> None:
    db = Database(any_db_url)
    db.migrate()
    moment = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    with db.session() as s:
        s.add(Org(name="tz-org", created_at=moment))
    with db.session() as s:
        got = s.scalar(sa.select(Org).where(Org.name == "tz-org"))
        assert got is not None and got.created_at == moment and got.created_at.tzinfo is not None
    db.dispose()


def test_tenancy_flow_and_audit_on_each_backend(any_db_url: str) -> None:
    from haihe.server import create_app

    with TestClient(create_app(make_settings(any_db_url))) as client:
        t = Tenancy(client).bootstrap()
        org_a, org_b = t.org(), t.org()
        admin_a = t.login(t.user(org_a, "org_admin"))
        project_b = t.project(org_b)
        key = t.key(org_a, admin_a)
        assert client.get(f"/api/v1/orgs/{org_b}/projects/{project_b}", headers=bearer(key)).status_code == 404
        assert client.delete(f"/api/v1/keys/{key['prefix']}", headers=admin_a).status_code == 200
        assert client.get("/api/v1/me", headers=bearer(key)).status_code == 401
        events = client.get("/api/v1/audit?limit=100", headers=t.admin_headers).json()
        actions = [e["action"] for e in events]
        for expected in ("platform.init", "org.create", "user.create", "project.create", "key.create",
                         "key.revoke", "auth.credential"):
            assert expected in actions
        # an org admin sees only their org's events
        own = client.get(f"/api/v1/audit?org={org_a}", headers=admin_a).json()
        assert own and all(e["target"] != project_b for e in own)
        assert client.get(f"/api/v1/audit?org={org_b}", headers=admin_a).status_code == 404


def test_concurrent_writers_do_not_fail(any_db_url: str) -> None:
    """SQLite's busy timeout and PostgreSQL's MVCC both let parallel writers through."""
    db = Database(any_db_url)
    db.migrate()
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for j in range(20):
                with db.session() as s:
                    s.add(AuditEvent(action="test.write", target=f"{i}-{j}", at=utcnow()))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    with db.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(AuditEvent)
                        .where(AuditEvent.action == "test.write")) == 160
    db.dispose()
