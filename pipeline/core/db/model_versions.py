"""Adapted speech models: one row per model version a physician's training produced
(issue #15; the logic is ``pipeline.adaptation.versions``, migration 0008).

A row is written for every candidate, promoted or not, with its figures (``metrics``) and how
it was trained (``training``): numbers, options and ids only, never text. ``held_back_ids``
are the opaque ids of the signed dictations the candidate was judged on; later training never
uses them. At most one version per physician (or practice-wide, ``physician_id`` NULL) is
``is_current``: the one the worker decodes that physician's dictations with.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.core.db.base import Base, utcnow

__all__ = ["ModelVersion", "MODEL_STATUSES"]

#: candidate: trained, not yet judged; promoted: passed the gate (the current one, or the
#: one a rollback returned to); refused: failed the gate; retired: replaced by a newer
#: promotion (a rollback may return to it); rolled_back: taken out of use by a rollback
MODEL_STATUSES = ("candidate", "promoted", "refused", "retired", "rolled_back")


class ModelVersion(Base):
    """One adapted speech model of one physician (or of the whole practice)."""

    __tablename__ = "speech_model_versions"
    __table_args__ = (
        Index("ix_speech_model_versions_physician_version", "physician_id", "version",
              unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    physician_id: Mapped[str | None] = mapped_column(
        ForeignKey("physicians.id"), nullable=True, index=True
    )  # None: practice-wide
    version: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per physician
    base_model: Mapped[str] = mapped_column(String(1000))  # registry name or folder it began as
    parent_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("speech_model_versions.id"), nullable=True
    )  # the adapted version it was trained from (None: from the stock model)
    path: Mapped[str] = mapped_column(String(1000))  # <data>/adaptation/<physician>/models/vN
    status: Mapped[str] = mapped_column(String(20), default="candidate")
    is_current: Mapped[bool] = mapped_column(default=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # figures, counts
    training: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # options, s, steps
    held_back_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)  # dictation ids
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # why refused / rolled back
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
