"""Inbox service table: the idempotency key of every dictation that entered the pipeline."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.core.db.base import Base, utcnow

__all__ = ["InboxIntake"]


class InboxIntake(Base):
    """One row per distinct audio content (SHA-256), pointing at the dictation that owns it.

    The primary key on ``sha256`` makes de-duplication race-safe across service instances and
    workers: of two intakes of the same recording, the database lets exactly one insert win.
    """

    __tablename__ = "inbox_intake"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    dictation_id: Mapped[str] = mapped_column(ForeignKey("dictations.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
