"""unix accounts: the Unix account each platform user's jobs run as, per org

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from haihe.platform.models import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "unix_accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("org_id", sa.Integer(), nullable=False),
        sa.Column("unix_name", sa.String(length=32), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "org_id", name="uq_unix_accounts_user_org"),
    )
    op.create_index("ix_unix_accounts_user_id", "unix_accounts", ["user_id"])
    op.create_index("ix_unix_accounts_org_id", "unix_accounts", ["org_id"])


def downgrade() -> None:
    op.drop_index("ix_unix_accounts_org_id", table_name="unix_accounts")
    op.drop_index("ix_unix_accounts_user_id", table_name="unix_accounts")
    op.drop_table("unix_accounts")
