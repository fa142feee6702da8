"""Retention: what may be deleted, and when (``dictation retention --dry-run | --apply``).

Rules (settings; ``None`` keeps everything, which is the default):

- ``retention_audio_days_after_signing``: a dictation's audio (its ``archive/<id>/`` folder:
  audio and sidecar; duplicates of the same recording included) once its document was
  signed (first signature) at least that many days ago. The signed document itself, its
  versions, signatures and outputs are always kept.
- ``retention_quarantine_days``: entries in ``quarantine/`` (with their ``.reason.txt``)
  unchanged for that many days.
- ``retention_exports_days``: delivered export files (``route/print``, ``route/hl7``,
  ``route/fhir``) unchanged for that many days.

Nothing unsigned is ever deleted: audio of a draft that is not signed is never eligible, and a
quarantined file still named by a dictation whose draft is unsigned is skipped; ``apply``
checks the draft again right before deleting. Every deletion is audited first (one event
``retention_delete`` per item, ids and relative paths only), then carried out; a failure is
audited too. Listings never show file names a recorder chose (they may carry patient
details): such names appear as an opaque ``file-<hash>`` tag.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.core import audit
from pipeline.core.db.core import DictationRow, DraftRow
from pipeline.core.db.review import Signature
from pipeline.core.settings import Settings
from pipeline.core.store import open_store

__all__ = ["RetentionItem", "plan", "apply", "SIGNED"]

log = logging.getLogger(__name__)

SIGNED = ("signed", "delivered")
_OPAQUE = re.compile(r"^[0-9a-f]{8,64}([._-].*)?$")
_DAY = 86400.0


@dataclass
class RetentionItem:
    """One thing a rule makes eligible for deletion."""

    kind: str  # audio | quarantine | export
    id: str  # dictation id, or an opaque tag
    path: Path  # absolute; a folder or a file
    shown: str  # relative to the data directory, safe to print
    age_days: float
    rule: str
    draft_id: str | None = None
    extra: tuple[Path, ...] = ()  # companions deleted with it (a quarantine reason file)


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def _tag(path: Path) -> str:
    return "file-" + hashlib.sha256(path.name.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def _shown(settings: Settings, path: Path) -> str:
    """``path`` relative to the data directory, recorder-chosen names replaced by a tag."""
    try:
        rel = path.relative_to(settings.data_path)
    except ValueError:
        rel = Path(path.name)
    parts = list(rel.parts)
    if parts and not _OPAQUE.match(parts[-1]):
        parts[-1] = _tag(path)
    return "/".join(parts) + ("/" if path.is_dir() else "")


def _inside(settings: Settings, path: Path) -> bool:
    root = settings.data_path
    return root in path.resolve().parents


def _audio_items(session: Session, settings: Settings, now: datetime) -> list[RetentionItem]:
    days = settings.retention_audio_days_after_signing
    if days is None:
        return []
    first_signed = (
        select(Signature.draft_id, func.min(Signature.signed_at).label("signed_at"))
        .where(Signature.addendum_id.is_(None))
        .group_by(Signature.draft_id)
        .subquery()
    )
    rows = session.execute(
        select(DraftRow.id, DraftRow.dictation_id, first_signed.c.signed_at)
        .join(first_signed, first_signed.c.draft_id == DraftRow.id)
        .where(DraftRow.status.in_(SIGNED))
    ).all()
    items: list[RetentionItem] = []
    for draft_id, dictation_id, signed_at in rows:
        age = (now - _aware(signed_at)).total_seconds() / _DAY
        if age < days:
            continue
        duplicates = session.scalars(
            select(DictationRow).where(DictationRow.duplicate_of == dictation_id))
        dictations = [session.get(DictationRow, dictation_id), *duplicates]
        for row in dictations:
            if row is None or not row.audio_path:
                continue
            audio = Path(row.audio_path)
            if not audio.exists() or not _inside(settings, audio):
                continue
            # archive/<id>/ holds the audio and its sidecar: both go
            target = audio.parent if audio.parent.name == row.id else audio
            items.append(RetentionItem("audio", row.id, target, _shown(settings, target),
                                       round(age, 1), f"audio {days} days after signing",
                                       draft_id))
    return items


def _unsigned_audio(session: Session) -> set[str]:
    """Audio paths of dictations whose draft is not signed (never deleted)."""
    rows = session.execute(
        select(DictationRow.audio_path)
        .join(DraftRow, DraftRow.dictation_id == DictationRow.id)
        .where(DraftRow.status.not_in(SIGNED))
    ).scalars()
    return {str(Path(p)) for p in rows if p}


def _quarantine_items(session: Session, settings: Settings, now: datetime
                      ) -> list[RetentionItem]:
    days = settings.retention_quarantine_days
    folder = settings.quarantine_dir
    if days is None or not folder.is_dir():
        return []
    keep = _unsigned_audio(session)
    owners = {str(Path(p)): did for did, p in session.execute(
        select(DictationRow.id, DictationRow.audio_path)
        .where(DictationRow.audio_path.like(str(folder) + "%"))).all() if p}
    items: list[RetentionItem] = []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if name.endswith(".reason.txt") and (folder / name.removesuffix(".reason.txt")).exists():
            continue  # goes with its file
        if str(entry) in keep or any(k.startswith(str(entry) + "/") for k in keep):
            continue
        age = (now.timestamp() - entry.lstat().st_mtime) / _DAY
        if age < days:
            continue
        reason = folder / f"{name}.reason.txt"
        items.append(RetentionItem(
            "quarantine", owners.get(str(entry)) or _tag(entry), entry,
            _shown(settings, entry), round(age, 1), f"quarantine {days} days",
            extra=(reason,) if reason.exists() else ()))
    return items


def _export_dirs(settings: Settings) -> list[Path]:
    route = settings.data_path / "route"
    return [settings.route_print_dir or route / "print", settings.route_hl7_dir or route / "hl7",
            settings.route_fhir_dir or route / "fhir"]


def _export_items(settings: Settings, now: datetime) -> list[RetentionItem]:
    days = settings.retention_exports_days
    if days is None:
        return []
    items: list[RetentionItem] = []
    for folder in _export_dirs(settings):
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
            age = (now.timestamp() - path.stat().st_mtime) / _DAY
            if age >= days:
                items.append(RetentionItem("export", _tag(path), path, _shown(settings, path),
                                           round(age, 1), f"exports {days} days"))
    return items


def plan(settings: Settings, now: datetime | None = None) -> list[RetentionItem]:
    """Everything the configured rules make eligible now; deletes nothing."""
    now = now or datetime.now(UTC)
    with open_store(settings).session() as s:
        items = _audio_items(s, settings, now) + _quarantine_items(s, settings, now)
    return items + _export_items(settings, now)


def _still_signed(session: Session, draft_id: str | None) -> bool:
    if draft_id is None:
        return True
    draft = session.get(DraftRow, draft_id)
    return draft is not None and draft.status in SIGNED


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def apply(settings: Settings, items: list[RetentionItem] | None = None, *,
          actor: str = "system:retention", now: datetime | None = None
          ) -> list[RetentionItem]:
    """Delete ``items`` (default: ``plan(settings)``), auditing each first; returns those
    deleted. An item whose draft is no longer signed is skipped."""
    items = plan(settings, now) if items is None else items
    store = open_store(settings)
    deleted: list[RetentionItem] = []
    for item in items:
        detail = {"kind": item.kind, "path": item.shown, "age_days": item.age_days,
                  "rule": item.rule, "draft_id": item.draft_id}
        with store.session() as s:
            if item.kind == "audio" and not _still_signed(s, item.draft_id):
                continue
            audit.record(s, actor=actor, action="retention_delete", object_type=item.kind,
                         object_id=item.id, detail=detail)
        try:
            for path in (item.path, *item.extra):
                _remove(path)
        except OSError as exc:
            with store.session() as s:
                audit.record(s, actor=actor, action="retention_delete", object_type=item.kind,
                             object_id=item.id, outcome="failed",
                             detail={**detail, "error": type(exc).__name__})
            log.error("retention: %s %s not deleted: %s", item.kind, item.id,
                      type(exc).__name__)
            continue
        if item.kind == "audio":
            with store.session() as s:
                row = s.get(DictationRow, item.id)
                if row is not None:
                    row.audio_path = None
        deleted.append(item)
    log.info("retention: deleted %d of %d eligible items", len(deleted), len(items))
    return deleted
