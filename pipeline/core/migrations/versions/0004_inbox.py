"""inbox intake table (idempotency key per audio SHA-256)

Revision ID: 0004_inbox
Revises: 0001_core
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_inbox"
down_revision = "0001_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbox_intake",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("dictation_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dictation_id"], ["dictations.id"],
            name=op.f("fk_inbox_intake_dictation_id_dictations"),
        ),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_inbox_intake")),
    )
    with op.batch_alter_table("inbox_intake", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_inbox_intake_dictation_id"), ["dictation_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("inbox_intake", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_inbox_intake_dictation_id"))
    op.drop_table("inbox_intake")
