"""Workbench tables: users, assignments, web sessions, draft versions, claims, signatures,
addenda, correction statistics, editor autosaves, auto-texts and per-user key bindings.

Foreign keys point at core tables by name only (no ORM relationships across areas). Texts
of drafts (versions, addenda, autosaves) and correction pairs are patient data:
``EncryptedText`` (sealed on PostgreSQL; ``pipeline.core.db.encrypted``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.core.db.base import Base, utcnow
from pipeline.core.db.encrypted import EncryptedText

__all__ = [
    "User",
    "UserPhysician",
    "WebSession",
    "DraftVersion",
    "DraftClaim",
    "Signature",
    "Addendum",
    "DraftAccuracy",
    "CorrectionStat",
    "AuthFailure",
    "DraftAutosave",
    "AutoText",
    "AutoTextVersion",
    "UserPreference",
    "ROLES",
]

ROLES = ("secretary", "physician", "admin")


class User(Base):
    """A person who logs in to the workbench."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class UserPhysician(Base):
    """A secretary's assignment to a physician, or a physician user's own physician id."""

    __tablename__ = "user_physicians"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    physician_id: Mapped[str] = mapped_column(ForeignKey("physicians.id"), primary_key=True)


class WebSession(Base):
    """A server-side login session; the cookie holds the token, the table its SHA-256."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256(token)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    client: Mapped[str | None] = mapped_column(String(100), nullable=True)


class DraftVersion(Base):
    """Every saved text of a draft; version 1 is the pipeline's text."""

    __tablename__ = "draft_versions"
    __table_args__ = (UniqueConstraint("draft_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    draft_id: Mapped[str] = mapped_column(ForeignKey("drafts.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(EncryptedText())
    author: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DraftClaim(Base):
    """Who is editing a draft right now (a lock that expires)."""

    __tablename__ = "draft_claims"

    draft_id: Mapped[str] = mapped_column(ForeignKey("drafts.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    username: Mapped[str] = mapped_column(String(100))
    claimed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Signature(Base):
    """A physician's signature over a document text (or an addendum); append-only."""

    __tablename__ = "signatures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    draft_id: Mapped[str] = mapped_column(ForeignKey("drafts.id"), index=True)
    addendum_id: Mapped[int | None] = mapped_column(ForeignKey("addenda.id"), nullable=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    username: Mapped[str] = mapped_column(String(100))
    physician_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    text_sha256: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Addendum(Base):
    """A later change to a signed document, with its own signature."""

    __tablename__ = "addenda"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    draft_id: Mapped[str] = mapped_column(ForeignKey("drafts.id"), index=True)
    text: Mapped[str] = mapped_column(EncryptedText())
    author: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DraftAccuracy(Base):
    """Word error rate of the pipeline's draft against the signed text."""

    __tablename__ = "draft_accuracy"

    draft_id: Mapped[str] = mapped_column(ForeignKey("drafts.id"), primary_key=True)
    physician_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    wer: Mapped[float] = mapped_column(Float)
    reference_words: Mapped[int] = mapped_column(Integer, default=0)
    substitutions: Mapped[int] = mapped_column(Integer, default=0)
    deletions: Mapped[int] = mapped_column(Integer, default=0)
    insertions: Mapped[int] = mapped_column(Integer, default=0)
    signed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CorrectionStat(Base):
    """One word-level correction a reviewer made (draft word(s) -> signed word(s))."""

    __tablename__ = "correction_stats"
    __table_args__ = (
        Index("ix_correction_stats_phys_pair", "physician_id", "original", "replacement"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    draft_id: Mapped[str] = mapped_column(ForeignKey("drafts.id"), index=True)
    physician_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # a corrected word may be a patient's name; deterministic: learning groups the pairs
    original: Mapped[str] = mapped_column(EncryptedText(deterministic=True))
    replacement: Mapped[str] = mapped_column(EncryptedText(deterministic=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuthFailure(Base):
    """A failed password check (log-in or signing), kept for throttling across restarts.

    ``username_hash`` is the SHA-256 of the lower-cased name typed (names that do not exist
    are throttled the same way); ``client`` is the client address (None for signing).
    """

    __tablename__ = "auth_failures"
    __table_args__ = (
        Index("ix_auth_failures_scope_user_ts", "scope", "username_hash", "ts"),
        Index("ix_auth_failures_scope_client_ts", "scope", "client", "ts"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    scope: Mapped[str] = mapped_column(String(10))  # login | sign
    username_hash: Mapped[str] = mapped_column(String(64))
    client: Mapped[str | None] = mapped_column(String(100), nullable=True)


class DraftAutosave(Base):
    """The editor's autosaved text of a draft, one row per draft and user (kind
    ``autosave``): written every few seconds of inactivity and before a log-out; it is not
    a saved version (``draft_versions`` holds those) but is restored into the editor when it
    is newer than the last saved version."""

    __tablename__ = "draft_autosaves"
    __table_args__ = (UniqueConstraint("draft_id", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    draft_id: Mapped[str] = mapped_column(ForeignKey("drafts.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    username: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20), default="autosave")
    base_version: Mapped[int] = mapped_column(Integer, default=0)
    text: Mapped[str] = mapped_column(EncryptedText())
    saved_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AutoText(Base):
    """An auto-text ("normal"): a standard text block inserted by a spoken command ("insert
    normal exam") or an editor shortcut. ``owner`` is ``practice`` or a physician id; the
    current name, trigger and body are copied from the newest ``AutoTextVersion``."""

    __tablename__ = "autotexts"
    __table_args__ = (Index("ix_autotexts_owner_trigger", "owner", "trigger"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    trigger: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=1)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AutoTextVersion(Base):
    """Every version of an auto-text (each edit adds one; old ones are kept)."""

    __tablename__ = "autotext_versions"
    __table_args__ = (UniqueConstraint("autotext_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    autotext_id: Mapped[int] = mapped_column(ForeignKey("autotexts.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    trigger: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    author: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UserPreference(Base):
    """Per-user editor settings: the transcription key bindings (JSON: action -> key)."""

    __tablename__ = "user_preferences"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    keys: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
