"""Core tables: physicians, dictations, transcripts, drafts and the audit log.

Columns typed ``EncryptedText`` / ``EncryptedJSON`` hold patient data: sealed on PostgreSQL,
plain inside the SQLCipher file on SQLite (``pipeline.core.db.encrypted``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.core.db.base import Base, utcnow
from pipeline.core.db.encrypted import EncryptedJSON, EncryptedText

__all__ = ["Physician", "DictationRow", "TranscriptRow", "DraftRow", "AuditEvent", "AuditHead"]

# Dictation lifecycle in the pipeline.
DICTATION_STATUSES = ("received", "processing", "done", "failed", "quarantined", "duplicate")
# Draft lifecycle in review.
DRAFT_STATUSES = (
    "queued_for_review",
    "in_review",
    "awaiting_signature",
    "signed",
    "delivered",
)


class Physician(Base):
    __tablename__ = "physicians"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # slug, also inbox folder name
    name: Mapped[str] = mapped_column(String(200), default="")
    specialty: Mapped[str | None] = mapped_column(String(100), nullable=True)
    email: Mapped[str | None] = mapped_column(String(200), nullable=True)
    timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DictationRow(Base):
    __tablename__ = "dictations"
    __table_args__ = (Index("ix_dictations_status_priority", "status", "priority"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # opaque hex id
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    physician_id: Mapped[str | None] = mapped_column(
        ForeignKey("physicians.id"), nullable=True, index=True
    )
    # the recorder's file name (may hold an MRN or a name): only here, never on disk or in logs
    original_name: Mapped[str] = mapped_column(EncryptedText(), default="")
    audio_path: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="received")
    priority: Mapped[str] = mapped_column(String(10), default="routine")
    document_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    meta: Mapped[dict[str, Any]] = mapped_column(EncryptedJSON, default=dict)  # sidecar (PHI)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(EncryptedText(), nullable=True)  # names it
    duplicate_of: Mapped[str | None] = mapped_column(ForeignKey("dictations.id"), nullable=True)
    flow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class TranscriptRow(Base):
    __tablename__ = "transcripts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dictation_id: Mapped[str] = mapped_column(ForeignKey("dictations.id"), index=True)
    model: Mapped[str] = mapped_column(String(200))
    language: Mapped[str] = mapped_column(String(10), default="en")
    raw_text: Mapped[str] = mapped_column(EncryptedText(), default="")
    segments: Mapped[list[Any]] = mapped_column(EncryptedJSON, default=list)
    flags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    duration_s: Mapped[float] = mapped_column(Float, default=0.0)
    transcribe_s: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DraftRow(Base):
    __tablename__ = "drafts"
    __table_args__ = (
        Index("ix_drafts_status_priority_created", "status", "priority", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    dictation_id: Mapped[str] = mapped_column(ForeignKey("dictations.id"), unique=True)
    physician_id: Mapped[str | None] = mapped_column(
        ForeignKey("physicians.id"), nullable=True, index=True
    )
    document_type: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32), default="queued_for_review")
    priority: Mapped[str] = mapped_column(String(10), default="routine")
    audio_sha256: Mapped[str] = mapped_column(String(64))
    raw_text: Mapped[str] = mapped_column(EncryptedText(), default="")  # Whisper's text as decoded
    text: Mapped[str] = mapped_column(EncryptedText(), default="")  # after our processing (current)
    patient_name: Mapped[str | None] = mapped_column(EncryptedText(), nullable=True)  # PHI
    # deterministic: the worklist looks drafts up by MRN (equality on the sealed value)
    mrn: Mapped[str | None] = mapped_column(EncryptedText(deterministic=True), nullable=True,
                                            index=True)  # PHI
    document: Mapped[dict[str, Any]] = mapped_column(EncryptedJSON, default=dict)  # sections...
    corrections: Mapped[list[Any]] = mapped_column(EncryptedJSON, default=list)
    flags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # kind -> path
    docx_path: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class AuditEvent(Base):
    """Append-only, hash-chained audit log (see ``pipeline.core.audit``)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(100))  # user name or "system:<component>"
    action: Mapped[str] = mapped_column(String(50), index=True)  # view, edit, sign, quarantine...
    object_type: Mapped[str] = mapped_column(String(50))
    object_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # the MRN, searched by equality (deterministic); ``detail`` holds ids and codes only
    patient_ref: Mapped[str | None] = mapped_column(EncryptedText(deterministic=True),
                                                    nullable=True)
    outcome: Mapped[str] = mapped_column(String(20), default="ok")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """One row holding the chain's last hash; updating it serialises audit writers."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))
    # id of the first event hashed with the audit key (HMAC); None: an old, unkeyed chain
    keyed_from: Mapped[int | None] = mapped_column(Integer, nullable=True)
