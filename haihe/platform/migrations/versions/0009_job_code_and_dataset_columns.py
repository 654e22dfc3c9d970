"""jobs.code_uri and jobs.dataset_ref: the packed workdir and the dataset version resolved at submit, as columns
(they were hidden keys ``_code_uri``/``_dataset`` inside the stored spec, filtered out wherever the spec was shown)

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("spec", sa.JSON),
                 sa.column("code_uri", sa.String), sa.column("dataset_ref", sa.String))


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("code_uri", sa.String(1024), nullable=True))
        batch.add_column(sa.Column("dataset_ref", sa.String(200), nullable=True))
        batch.create_index("ix_jobs_dataset_ref", ["dataset_ref"])
    bind = op.get_bind()
    for job_id, spec in bind.execute(sa.select(_jobs.c.id, _jobs.c.spec)).all():
        if not isinstance(spec, dict) or not any(k.startswith("_") for k in spec):
            continue
        bind.execute(_jobs.update().where(_jobs.c.id == job_id).values(
            code_uri=spec.get("_code_uri"), dataset_ref=spec.get("_dataset"),
            spec={k: v for k, v in spec.items() if not k.startswith("_")}))


def downgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(_jobs.c.id, _jobs.c.spec, _jobs.c.code_uri, _jobs.c.dataset_ref)
                        .where(sa.or_(_jobs.c.code_uri.is_not(None), _jobs.c.dataset_ref.is_not(None)))).all()
    for job_id, spec, code_uri, dataset_ref in rows:
        extra = {k: v for k, v in (("_code_uri", code_uri), ("_dataset", dataset_ref)) if v}
        bind.execute(_jobs.update().where(_jobs.c.id == job_id).values(spec={**(spec or {}), **extra}))
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_dataset_ref")
        batch.drop_column("dataset_ref")
        batch.drop_column("code_uri")
