"""adapted speech model versions per physician (figures, status, held-back dictation ids)

Revision ID: 0008_model_versions
Revises: 0007_autotexts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_model_versions"
down_revision = "0007_autotexts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "speech_model_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("physician_id", sa.String(length=64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("base_model", sa.String(length=1000), nullable=False),
        sa.Column("parent_version_id", sa.Integer(), nullable=True),
        sa.Column("path", sa.String(length=1000), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("is_current", sa.Boolean(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("training", sa.JSON(), nullable=False),
        sa.Column("held_back_ids", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["physician_id"], ["physicians.id"],
                                name=op.f("fk_speech_model_versions_physician_id_physicians")),
        sa.ForeignKeyConstraint(
            ["parent_version_id"], ["speech_model_versions.id"],
            name=op.f("fk_speech_model_versions_parent_version_id_speech_model_versions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_speech_model_versions")),
    )
    with op.batch_alter_table("speech_model_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_speech_model_versions_physician_id"),
                              ["physician_id"], unique=False)
        batch_op.create_index("ix_speech_model_versions_physician_version",
                              ["physician_id", "version"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("speech_model_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_speech_model_versions_physician_version")
        batch_op.drop_index(batch_op.f("ix_speech_model_versions_physician_id"))
    op.drop_table("speech_model_versions")
