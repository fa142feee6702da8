"""editor autosaves, auto-texts ("normals") with their versions, per-user key bindings

Revision ID: 0007_autotexts
Revises: 0004_inbox, 0006_accounts
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_autotexts"
# joins the inbox branch and the accounts head: one head again
down_revision = ("0004_inbox", "0006_accounts")
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "draft_autosaves",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("draft_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("base_version", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("saved_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["draft_id"], ["drafts.id"],
                                name=op.f("fk_draft_autosaves_draft_id_drafts")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_draft_autosaves_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_draft_autosaves")),
        sa.UniqueConstraint("draft_id", "user_id", name=op.f("uq_draft_autosaves_draft_id")),
    )
    with op.batch_alter_table("draft_autosaves", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_draft_autosaves_draft_id"), ["draft_id"],
                              unique=False)
    op.create_table(
        "autotexts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("trigger", sa.String(length=100), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_autotexts")),
    )
    with op.batch_alter_table("autotexts", schema=None) as batch_op:
        batch_op.create_index("ix_autotexts_owner_trigger", ["owner", "trigger"], unique=False)
    op.create_table(
        "autotext_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("autotext_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("trigger", sa.String(length=100), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("author", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["autotext_id"], ["autotexts.id"],
                                name=op.f("fk_autotext_versions_autotext_id_autotexts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_autotext_versions")),
        sa.UniqueConstraint("autotext_id", "version",
                            name=op.f("uq_autotext_versions_autotext_id")),
    )
    with op.batch_alter_table("autotext_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_autotext_versions_autotext_id"), ["autotext_id"],
                              unique=False)
    op.create_table(
        "user_preferences",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("keys", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_user_preferences_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_preferences")),
    )


def downgrade() -> None:
    op.drop_table("user_preferences")
    with op.batch_alter_table("autotext_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_autotext_versions_autotext_id"))
    op.drop_table("autotext_versions")
    with op.batch_alter_table("autotexts", schema=None) as batch_op:
        batch_op.drop_index("ix_autotexts_owner_trigger")
    op.drop_table("autotexts")
    with op.batch_alter_table("draft_autosaves", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_draft_autosaves_draft_id"))
    op.drop_table("draft_autosaves")
