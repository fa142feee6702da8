"""workbench tables: users, sessions, versions, claims, signatures, addenda, learning

Revision ID: 0002_review
Revises: 0001_core
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_review"
down_revision = "0001_core"
branch_labels = None
depends_on = None

# A signed document's text never changes again (addenda carry later changes).
_SQLITE_TRIGGERS = [
    """CREATE TRIGGER drafts_signed_text_immutable BEFORE UPDATE OF text ON drafts
    WHEN OLD.status IN ('signed', 'delivered') AND NEW.text IS NOT OLD.text
    BEGIN SELECT RAISE(ABORT, 'signed draft text is immutable'); END""",
    """CREATE TRIGGER signatures_no_update BEFORE UPDATE ON signatures
    BEGIN SELECT RAISE(ABORT, 'signatures are append-only'); END""",
    """CREATE TRIGGER signatures_no_delete BEFORE DELETE ON signatures
    BEGIN SELECT RAISE(ABORT, 'signatures are append-only'); END""",
    """CREATE TRIGGER addenda_signed_immutable BEFORE UPDATE ON addenda
    WHEN EXISTS (SELECT 1 FROM signatures WHERE addendum_id = OLD.id)
    BEGIN SELECT RAISE(ABORT, 'signed addendum is immutable'); END""",
]

_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION dictation_signed_immutable() RETURNS trigger AS $$
BEGIN
  IF TG_TABLE_NAME = 'drafts' THEN
    IF OLD.status IN ('signed', 'delivered') AND NEW.text IS DISTINCT FROM OLD.text THEN
      RAISE EXCEPTION 'signed draft text is immutable';
    END IF;
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'signatures are append-only';
END; $$ LANGUAGE plpgsql
"""
_PG_TRIGGERS = [
    "CREATE TRIGGER drafts_signed_text_immutable BEFORE UPDATE ON drafts "
    "FOR EACH ROW EXECUTE FUNCTION dictation_signed_immutable()",
    "CREATE TRIGGER signatures_append_only BEFORE UPDATE OR DELETE ON signatures "
    "FOR EACH ROW EXECUTE FUNCTION dictation_signed_immutable()",
]


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=100), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("role", sa.String(length=20), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "user_physicians",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("physician_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["physician_id"], ["physicians.id"],
                                name=op.f("fk_user_physicians_physician_id_physicians")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_user_physicians_user_id_users")),
        sa.PrimaryKeyConstraint("user_id", "physician_id", name=op.f("pk_user_physicians")),
    )
    op.create_table(
        "web_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_web_sessions_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_sessions")),
    )
    op.create_index(op.f("ix_web_sessions_user_id"), "web_sessions", ["user_id"])
    op.create_table(
        "draft_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("draft_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("author", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["draft_id"], ["drafts.id"],
                                name=op.f("fk_draft_versions_draft_id_drafts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_draft_versions")),
        sa.UniqueConstraint("draft_id", "version", name=op.f("uq_draft_versions_draft_id")),
    )
    op.create_index(op.f("ix_draft_versions_draft_id"), "draft_versions", ["draft_id"])
    op.create_table(
        "draft_claims",
        sa.Column("draft_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=100), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["draft_id"], ["drafts.id"],
                                name=op.f("fk_draft_claims_draft_id_drafts")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_draft_claims_user_id_users")),
        sa.PrimaryKeyConstraint("draft_id", name=op.f("pk_draft_claims")),
    )
    op.create_table(
        "addenda",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("draft_id", sa.String(length=32), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("author", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["draft_id"], ["drafts.id"],
                                name=op.f("fk_addenda_draft_id_drafts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_addenda")),
    )
    op.create_index(op.f("ix_addenda_draft_id"), "addenda", ["draft_id"])
    op.create_table(
        "signatures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("draft_id", sa.String(length=32), nullable=False),
        sa.Column("addendum_id", sa.Integer(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=100), nullable=False),
        sa.Column("physician_id", sa.String(length=64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("text_sha256", sa.String(length=64), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["addendum_id"], ["addenda.id"],
                                name=op.f("fk_signatures_addendum_id_addenda")),
        sa.ForeignKeyConstraint(["draft_id"], ["drafts.id"],
                                name=op.f("fk_signatures_draft_id_drafts")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_signatures_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signatures")),
    )
    op.create_index(op.f("ix_signatures_draft_id"), "signatures", ["draft_id"])
    op.create_table(
        "draft_accuracy",
        sa.Column("draft_id", sa.String(length=32), nullable=False),
        sa.Column("physician_id", sa.String(length=64), nullable=True),
        sa.Column("wer", sa.Float(), nullable=False),
        sa.Column("reference_words", sa.Integer(), nullable=False),
        sa.Column("substitutions", sa.Integer(), nullable=False),
        sa.Column("deletions", sa.Integer(), nullable=False),
        sa.Column("insertions", sa.Integer(), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["draft_id"], ["drafts.id"],
                                name=op.f("fk_draft_accuracy_draft_id_drafts")),
        sa.PrimaryKeyConstraint("draft_id", name=op.f("pk_draft_accuracy")),
    )
    op.create_index(op.f("ix_draft_accuracy_physician_id"), "draft_accuracy", ["physician_id"])
    op.create_table(
        "correction_stats",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("draft_id", sa.String(length=32), nullable=False),
        sa.Column("physician_id", sa.String(length=64), nullable=True),
        sa.Column("original", sa.String(length=200), nullable=False),
        sa.Column("replacement", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["draft_id"], ["drafts.id"],
                                name=op.f("fk_correction_stats_draft_id_drafts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_correction_stats")),
    )
    op.create_index(op.f("ix_correction_stats_draft_id"), "correction_stats", ["draft_id"])
    op.create_index("ix_correction_stats_phys_pair", "correction_stats",
                    ["physician_id", "original", "replacement"])
    # Worklist order "STAT first, then oldest" read straight from an index ('stat' sorts
    # after 'routine', so priority DESC puts STAT first); the filter columns ride along so
    # a page of ids comes from the index alone. Patient-name search scans a small covering
    # index instead of the table (whose rows carry the text and document JSON).
    op.create_index("ix_drafts_queue_order", "drafts",
                    [sa.text("priority DESC"), "created_at", "id", "status", "physician_id",
                     "document_type"])
    op.create_index("ix_drafts_patient_name", "drafts", ["patient_name", "id"])
    op.create_index("ix_drafts_document_type", "drafts", ["document_type"])
    op.create_index("ix_drafts_physician_status", "drafts", ["physician_id", "status"])

    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for sql in _SQLITE_TRIGGERS:
            op.execute(sql)
    elif bind.dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        for sql in _PG_TRIGGERS:
            op.execute(sql)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for name in ("drafts_signed_text_immutable", "signatures_no_update",
                     "signatures_no_delete", "addenda_signed_immutable"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    elif bind.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS drafts_signed_text_immutable ON drafts")
        op.execute("DROP TRIGGER IF EXISTS signatures_append_only ON signatures")
        op.execute("DROP FUNCTION IF EXISTS dictation_signed_immutable()")
    op.drop_index("ix_drafts_physician_status", table_name="drafts")
    op.drop_index("ix_drafts_patient_name", table_name="drafts")
    op.drop_index("ix_drafts_document_type", table_name="drafts")
    op.drop_index("ix_drafts_queue_order", table_name="drafts")
    for table in ("correction_stats", "draft_accuracy", "signatures", "addenda", "draft_claims",
                  "draft_versions", "web_sessions", "user_physicians", "users"):
        op.drop_table(table)
