"""jobs.environment_ref and jobs.environment_lock: the job's own Python environment as resolved on its nodes
(``sha256:…`` of the lock, and the lock itself, so a resubmit installs exactly the same packages); the
job_environments table: where environments were built, the storage they hold, when they were last used

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("environment_ref", sa.String(80), nullable=True))
        batch.add_column(sa.Column("environment_lock", sa.Text(), nullable=True))
    op.create_table(
        "job_environments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("org_id", sa.Integer(), sa.ForeignKey("orgs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("ref", sa.String(80), nullable=False),
        sa.Column("location", sa.String(400), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("first_job_id", sa.String(36), nullable=True),
        sa.Column("jobs", sa.Integer(), nullable=False),
        sa.Column("built_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pruned_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("org_id", "ref", "location", name="uq_job_environments_place"),
    )
    op.create_index("ix_job_environments_org", "job_environments", ["org_id", "pruned_at"])


def downgrade() -> None:
    op.drop_index("ix_job_environments_org", table_name="job_environments")
    op.drop_table("job_environments")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("environment_lock")
        batch.drop_column("environment_ref")
