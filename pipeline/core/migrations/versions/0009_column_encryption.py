"""patient columns sealed on PostgreSQL (pipeline.core.db.encrypted)

Revision ID: 0009_column_encryption
Revises: 0008_model_versions

PostgreSQL only (SQLite: nothing to do, the SQLCipher file holds these columns):

- the patient columns that were VARCHAR(n) become TEXT: a sealed value is longer than the
  plain one (an 8-character MRN becomes ~60 characters), and a length would say something
  about the value anyway. The JSON columns keep their type (a sealed value is a JSON string).
- the signed-text trigger compares stored values; a rotation re-seals a signed draft's text
  (same plain text, new bytes), so the function lets the text change inside a transaction
  that set ``dictation.reencrypt`` (``encrypted.reencrypt`` does, nothing else).
- plain values already stored are sealed in place, in this transaction, when the engine
  writes sealed values (``DICTATION_ENCRYPT_COLUMNS``, default on); otherwise ``dictation keys
  encrypt-columns`` does it later. The column list is frozen here (the state at this
  revision), not read from the models, which may have grown since.
"""

from __future__ import annotations

from alembic import op

revision = "0009_column_encryption"
down_revision = "0008_model_versions"
branch_labels = None
depends_on = None

#: (table, column, old VARCHAR length): made TEXT on PostgreSQL
_WIDENED = [
    ("dictations", "original_name", 500),
    ("drafts", "patient_name", 200),
    ("drafts", "mrn", 64),
    ("audit_events", "patient_ref", 64),
    ("correction_stats", "original", 200),
    ("correction_stats", "replacement", 200),
    ("sched_appointments", "patient_name", 200),
    ("sched_appointments", "patient_phone", 50),
    ("sched_appointments", "mrn", 64),
    ("sched_appointments", "reason", 500),
    ("sched_appointment_history", "note", 500),
    ("sched_task_history", "note", 500),
    ("sched_referral_history", "note", 500),
    ("sched_tasks", "title", 300),
    ("sched_referrals", "mrn", 64),
    ("sched_referral_documents", "name", 300),
]

#: (table, column, json, deterministic): every sealed column at this revision
_SEALED = [
    ("dictations", "original_name", False, False),
    ("dictations", "meta", True, False),
    ("dictations", "error_message", False, False),
    ("transcripts", "raw_text", False, False),
    ("transcripts", "segments", True, False),
    ("drafts", "raw_text", False, False),
    ("drafts", "text", False, False),
    ("drafts", "patient_name", False, False),
    ("drafts", "mrn", False, True),
    ("drafts", "document", True, False),
    ("drafts", "corrections", True, False),
    ("audit_events", "patient_ref", False, True),
    ("draft_versions", "text", False, False),
    ("addenda", "text", False, False),
    ("correction_stats", "original", False, True),
    ("correction_stats", "replacement", False, True),
    ("draft_autosaves", "text", False, False),
    ("sched_appointments", "patient_name", False, False),
    ("sched_appointments", "patient_phone", False, False),
    ("sched_appointments", "mrn", False, True),
    ("sched_appointments", "reason", False, False),
    ("sched_appointment_history", "note", False, False),
    ("sched_tasks", "title", False, False),
    ("sched_tasks", "instruction_text", False, False),
    ("sched_tasks", "params", True, False),
    ("sched_task_history", "note", False, False),
    ("sched_referrals", "mrn", False, True),
    ("sched_referrals", "reason", False, False),
    ("sched_referral_history", "note", False, False),
    ("sched_referral_documents", "name", False, False),
]


def _trigger_function(reencrypt_allowed: bool) -> str:
    allow = ("\n       AND coalesce(current_setting('dictation.reencrypt', true), '') <> 'on'"
             if reencrypt_allowed else "")
    return f"""
CREATE OR REPLACE FUNCTION dictation_signed_immutable() RETURNS trigger AS $$
BEGIN
  IF TG_TABLE_NAME = 'drafts' THEN
    IF OLD.status IN ('signed', 'delivered') AND NEW.text IS DISTINCT FROM OLD.text{allow} THEN
      RAISE EXCEPTION 'signed draft text is immutable';
    END IF;
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'signatures are append-only';
END; $$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for table, column, _length in _WIDENED:
        op.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" TYPE TEXT')
    op.execute(_trigger_function(reencrypt_allowed=True))
    from pipeline.core.db import encrypted

    cipher = encrypted.cipher_of(bind)
    if cipher is not None and cipher.writes:
        specs = [encrypted.ColumnSpec(t, c, json=j, deterministic=d) for t, c, j, d in _SEALED]
        encrypted.reencrypt(bind, cipher, specs, only_plain=True)


def downgrade() -> None:
    # sealed values stay sealed (and may not fit the old lengths): downgrade a database
    # written with encrypt_columns off, or restore the backup taken before the upgrade
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute(_trigger_function(reencrypt_allowed=False))
    for table, column, length in _WIDENED:
        op.execute(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" TYPE VARCHAR({length})')
