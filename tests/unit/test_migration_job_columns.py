"""Migration 0009 moves the hidden ``_code_uri``/``_dataset`` spec keys of existing jobs into real columns, and back
on downgrade: nothing a stored job knew is lost either way."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from haihe.platform.db import MIGRATIONS, make_engine, migrate


def _downgrade(engine: sa.Engine, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def test_hidden_spec_keys_become_columns_and_come_back(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine, "0008")
    old_spec = {"name": "t", "recipe": "digits-cnn", "_code_uri": "s3://haihe-code/b.tar.gz", "_dataset": "acme/d@v2"}
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO orgs (id, name, display_name, status, created_at) "
                             "VALUES (1, 'acme', '', 'active', '2026-12-06 00:00:00')"))
        conn.execute(sa.text("INSERT INTO projects (id, org_id, name, description, status, created_at) "
                             "VALUES (1, 1, 'p', '', 'active', '2026-12-06 00:00:00')"))
        conn.execute(sa.text("INSERT INTO users (id, username, display_name, email, password_hash, "
                             "is_platform_admin, is_service_account, status, created_at) "
                             "VALUES (1, 'u', '', '', NULL, 0, 0, 'active', '2026-12-06 00:00:00')"))
        for job_id, spec in (("J1", old_spec), ("J2", {"name": "plain"})):
            conn.execute(sa.text("INSERT INTO jobs (id, org_id, project_id, user_id, name, kind, scheduler, state, "
                                 "reason, spec, array_size, nodes, submit_attempts, created_at, updated_at) "
                                 "VALUES (:id, 1, 1, 1, 'n', 'train', 'ray', 'SUCCEEDED', '', :spec, 1, '[]', 0, "
                                 "'2026-12-06 00:00:00', '2026-12-06 00:00:00')"),
                         {"id": job_id, "spec": json.dumps(spec)})
    migrate(engine)
    with engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.text("SELECT id, spec, code_uri, dataset_ref FROM jobs"))}
    assert json.loads(rows["J1"].spec) == {"name": "t", "recipe": "digits-cnn"}
    assert (rows["J1"].code_uri, rows["J1"].dataset_ref) == ("s3://haihe-code/b.tar.gz", "acme/d@v2")
    assert json.loads(rows["J2"].spec) == {"name": "plain"} and rows["J2"].code_uri is None
    _downgrade(engine, "0008")
    with engine.connect() as conn:
        back = dict(conn.execute(sa.text("SELECT id, spec FROM jobs")).all())
    assert json.loads(back["J1"]) == old_spec and json.loads(back["J2"]) == {"name": "plain"}
