"""accounts and audit integrity: log-in failures for throttling, recipient approval, the
audit chain's switch-over to keyed hashes

Revision ID: 0006_accounts
Revises: 0002_review, 0003_schedule
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_accounts"
# joins the review and schedule branches: it changes tables of both
down_revision = ("0002_review", "0003_schedule")
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auth_failures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scope", sa.String(length=10), nullable=False),
        sa.Column("username_hash", sa.String(length=64), nullable=False),
        sa.Column("client", sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_failures")),
    )
    with op.batch_alter_table("auth_failures", schema=None) as batch_op:
        batch_op.create_index(
            "ix_auth_failures_scope_user_ts", ["scope", "username_hash", "ts"], unique=False
        )
        batch_op.create_index(
            "ix_auth_failures_scope_client_ts", ["scope", "client", "ts"], unique=False
        )
    with op.batch_alter_table("sched_recipients", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("approved", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
        batch_op.add_column(sa.Column("approved_by", sa.String(length=100), nullable=True))
        batch_op.add_column(
            sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True)
        )
    with op.batch_alter_table("audit_head", schema=None) as batch_op:
        batch_op.add_column(sa.Column("keyed_from", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_head", schema=None) as batch_op:
        batch_op.drop_column("keyed_from")
    with op.batch_alter_table("sched_recipients", schema=None) as batch_op:
        batch_op.drop_column("approved_at")
        batch_op.drop_column("approved_by")
        batch_op.drop_column("approved")
    with op.batch_alter_table("auth_failures", schema=None) as batch_op:
        batch_op.drop_index("ix_auth_failures_scope_client_ts")
        batch_op.drop_index("ix_auth_failures_scope_user_ts")
    op.drop_table("auth_failures")
