"""The referral tracker: requested -> sent -> accepted -> appointment booked ->
report received -> closed (or declined / cancelled), with documents attached and a due date
per state so that overdue referrals stand out.

Due dates (days after entering the state): requested 2 (send it), sent 7 (get an answer),
accepted 14 (get an appointment), appointment booked: 14 after the appointment (report
back), report received 3 (file it and close). ``ReferralOptions`` changes them.
"""

from __future__ import annotations

import io
import logging
import re
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.core import audit, files
from pipeline.core.db.schedule import (
    Recipient,
    Referral,
    ReferralDocument,
    ReferralHistory,
    Task,
)
from pipeline.core.errors import ConflictError, NotFoundError
from pipeline.core.settings import Settings
from pipeline.secretary import task_states
from pipeline.secretary.schedule.timeutil import as_utc, to_utc

__all__ = [
    "STATES",
    "OPEN_STATES",
    "TRANSITIONS",
    "ReferralOptions",
    "create_referral",
    "advance",
    "attach_document",
    "attach_upload",
    "read_attachment",
    "attachments_dir",
    "MAX_ATTACHMENT_BYTES",
    "ATTACHMENT_TYPES",
    "is_overdue",
    "referral_board",
    "ReferralView",
    "history",
]

log = logging.getLogger(__name__)

STATES = ("requested", "sent", "accepted", "appointment_booked", "report_received", "closed",
          "declined", "cancelled")
OPEN_STATES = ("requested", "sent", "accepted", "appointment_booked", "report_received")
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "requested": ("sent", "cancelled"),
    "sent": ("accepted", "declined", "cancelled"),
    "accepted": ("appointment_booked", "cancelled"),
    "appointment_booked": ("report_received", "cancelled"),
    "report_received": ("closed",),
    "closed": (),
    "declined": ("requested",),  # send it elsewhere
    "cancelled": (),
}
LABELS = {"requested": "requested", "sent": "sent", "accepted": "accepted",
          "appointment_booked": "appointment booked", "report_received": "report received",
          "closed": "closed", "declined": "declined", "cancelled": "cancelled"}


@dataclass
class ReferralOptions:
    """Days allowed in each state before a referral is overdue."""

    due_days: dict[str, int] = field(default_factory=lambda: {
        "requested": 2, "sent": 7, "accepted": 14, "appointment_booked": 14,
        "report_received": 3})


def _due(status: str, now: datetime, appointment_at: datetime | None,
         options: ReferralOptions) -> datetime | None:
    days = options.due_days.get(status)
    if days is None:
        return None
    if status == "appointment_booked" and appointment_at is not None:
        return as_utc(appointment_at) + timedelta(days=days)
    return now + timedelta(days=days)


def _get(session: Session, referral_id: int) -> Referral:
    ref = session.get(Referral, referral_id)
    if ref is None:
        raise NotFoundError(f"referral {referral_id} arrived; expected a known referral")
    return ref


def create_referral(session: Session, specialty: str, *, draft_id: str | None = None,
                    physician_id: str | None = None, mrn: str | None = None, reason: str = "",
                    recipient_id: int | None = None, actor: str = "system",
                    now: datetime | None = None,
                    options: ReferralOptions | None = None) -> Referral:
    """Open a referral (status requested); the draft, if any, is attached as the letter."""
    options = options or ReferralOptions()
    now = to_utc(now) if now else datetime.now(UTC)
    if not specialty.strip():
        raise ConflictError("a referral arrived without a specialty; expected e.g. cardiology")
    if recipient_id is not None and session.get(Recipient, recipient_id) is None:
        raise NotFoundError(f"recipient {recipient_id} arrived; expected a known recipient")
    ref = Referral(draft_id=draft_id, physician_id=physician_id, specialty=specialty.strip(),
                   recipient_id=recipient_id, mrn=mrn, reason=reason, status="requested",
                   due_at=_due("requested", now, None, options), created_at=now, updated_at=now)
    session.add(ref)
    session.flush()
    session.add(ReferralHistory(referral_id=ref.id, from_status=None, to_status="requested",
                                actor=actor, at=now))
    if draft_id:
        session.add(ReferralDocument(referral_id=ref.id, role="referral_letter",
                                     draft_id=draft_id, name="referral letter", added_by=actor))
    audit.record(session, actor=actor, action="referral_created", object_type="referral",
                 object_id=str(ref.id), patient_ref=mrn,
                 detail={"draft_id": draft_id, "specialty": ref.specialty})
    session.flush()
    return ref


def advance(session: Session, referral_id: int, to_status: str, *, actor: str,
            note: str = "", appointment_at: datetime | None = None,
            recipient_id: int | None = None, now: datetime | None = None,
            options: ReferralOptions | None = None) -> Referral:
    """Move the referral to ``to_status``; ``ConflictError`` for a move the flow forbids."""
    options = options or ReferralOptions()
    now = to_utc(now) if now else datetime.now(UTC)
    ref = _get(session, referral_id)
    allowed = TRANSITIONS.get(ref.status, ())
    if to_status not in allowed:
        raise ConflictError(
            f"referral {ref.id} cannot go from {ref.status} to {to_status}; allowed: "
            f"{', '.join(allowed) or 'nothing (final status)'}")
    if to_status == "appointment_booked":
        if appointment_at is None:
            raise ConflictError("'appointment booked' needs the appointment date and time")
        ref.appointment_at = to_utc(appointment_at)
    if recipient_id is not None:
        ref.recipient_id = recipient_id
    if to_status == "report_received":
        has_report = session.scalar(select(func.count()).select_from(ReferralDocument).where(
            ReferralDocument.referral_id == ref.id, ReferralDocument.role == "report"))
        if not has_report:
            raise ConflictError(f"referral {ref.id}: attach the specialist's report before "
                                "marking it received")
    from_status = ref.status
    ref.status = to_status
    ref.due_at = _due(to_status, now, ref.appointment_at, options)
    ref.updated_at = now
    session.add(ReferralHistory(referral_id=ref.id, from_status=from_status, to_status=to_status,
                                actor=actor, at=now, note=note[:500]))
    audit.record(session, actor=actor, action="referral_status", object_type="referral",
                 object_id=str(ref.id), patient_ref=ref.mrn,
                 detail={"from": from_status, "to": to_status})
    session.flush()
    if to_status in ("sent", "cancelled"):
        _finish_tasks(session, ref.id, "done" if to_status == "sent" else "cancelled", actor)
    return ref


def _finish_tasks(session: Session, referral_id: int, status: str, actor: str) -> None:

    for task in session.scalars(select(Task).where(Task.referral_id == referral_id)):
        if task.status not in task_states.FINAL:
            task_states.set_task_status(session, task.id, status, actor=actor,
                                  note=f"referral {referral_id}")


def attach_document(session: Session, referral_id: int, role: str, *, actor: str,
                    draft_id: str | None = None, path: str | None = None,
                    name: str = "") -> ReferralDocument:
    """Attach a document (a draft or a file) to the referral: ``referral_letter``,
    ``report`` or ``other``."""
    if role not in ("referral_letter", "report", "other"):
        raise ConflictError(f"document role {role!r} arrived; expected referral_letter, report "
                            "or other")
    if not draft_id and not path:
        raise ConflictError("a referral document arrived without a draft or a file")
    ref = _get(session, referral_id)
    doc = ReferralDocument(referral_id=ref.id, role=role, draft_id=draft_id, path=path,
                           name=name or role.replace("_", " "), added_by=actor)
    session.add(doc)
    audit.record(session, actor=actor, action="referral_document", object_type="referral",
                 object_id=str(ref.id), patient_ref=ref.mrn, detail={"role": role})
    session.flush()
    return doc


#: The largest file a referral accepts from the browser (a scanned report of a few pages).
MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024
#: Accepted files: extension -> media type. The content is checked too (``_sniff``).
ATTACHMENT_TYPES = {
    ".pdf": "application/pdf",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
}
_ACCEPTED = "PDF, PNG, JPEG, TIFF or Word (.docx)"


def attachments_dir(settings: Settings) -> Path:
    """Where uploaded referral documents are stored (encrypted when the setting is on)."""
    return settings.data_path / "referrals"


def _sniff(data: bytes) -> str | None:
    """The extension family the bytes really are (magic numbers), or ``None``."""
    if data.startswith(b"%PDF-"):
        return ".pdf"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return ".tif"
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                if "word/document.xml" in zf.namelist():
                    return ".docx"
        except zipfile.BadZipFile:
            return None
    return None


def _clean_name(filename: str) -> str:
    base = Path(filename.replace("\\", "/")).name.strip()
    return re.sub(r"[^\w .()-]", "_", base)[:200] or "document"


def attach_upload(session: Session, settings: Settings, referral_id: int, filename: str,
                  data: bytes, *, role: str = "report", name: str = "",
                  actor: str) -> ReferralDocument:
    """Store an uploaded file with the referral through ``pipeline.core.files`` (encrypted
    at rest when ``settings.encrypt_files``) and attach it. ``ConflictError`` with one clear
    sentence for an empty, too large or unaccepted file (extension and content must agree)."""
    shown = _clean_name(filename)
    ext = Path(shown).suffix.lower()
    if not data:
        raise ConflictError(f"the file {shown!r} arrived empty; expected a {_ACCEPTED} file")
    if len(data) > MAX_ATTACHMENT_BYTES:
        raise ConflictError(
            f"the file {shown!r} arrived with {len(data) // (1024 * 1024)} MB; expected at most "
            f"{MAX_ATTACHMENT_BYTES // (1024 * 1024)} MB")
    kind = _sniff(data)
    family = {".jpeg": ".jpg", ".tiff": ".tif"}.get(ext, ext)
    if ext not in ATTACHMENT_TYPES or kind != family:
        raise ConflictError(f"the file {shown!r} arrived; expected a {_ACCEPTED} file")
    ref = _get(session, referral_id)
    folder = attachments_dir(settings) / str(ref.id)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    stored = folder / f"{uuid.uuid4().hex}{ext}"
    files.write_bytes(stored, data, settings)
    doc = attach_document(session, ref.id, role, actor=actor, path=str(stored),
                          name=(name.strip() or shown)[:300])
    log.info("referral=%s document=%s stored (%d bytes)", ref.id, doc.id, len(data))
    return doc


def read_attachment(session: Session, settings: Settings, document_id: int
                    ) -> tuple[ReferralDocument, str, bytes]:
    """An uploaded document's row, media type and plain bytes. Only files inside
    ``attachments_dir`` are served (older rows may name any path on the server)."""
    doc = session.get(ReferralDocument, document_id)
    if doc is None or not doc.path:
        raise NotFoundError(f"referral document {document_id} does not exist as a file")
    root = attachments_dir(settings).resolve()
    path = Path(doc.path).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise NotFoundError(f"referral document {document_id} is not stored by the practice")
    media = ATTACHMENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
    return doc, media, files.read_bytes(path, settings, max_bytes=MAX_ATTACHMENT_BYTES)


def is_overdue(ref: Referral, now: datetime | None = None) -> bool:
    """Whether the referral is open and past its current state's due date."""
    now = to_utc(now) if now else datetime.now(UTC)
    return ref.status in OPEN_STATES and ref.due_at is not None and as_utc(ref.due_at) < now


@dataclass
class ReferralView:
    """A referral with what the tracker shows."""

    referral: Referral
    overdue: bool
    documents: list[ReferralDocument]
    recipient: Recipient | None
    label: str


def referral_board(session: Session, *, physician_ids: list[str] | None = None,
                   include_closed: bool = False, now: datetime | None = None
                   ) -> list[ReferralView]:
    """Referrals for the physicians (all when None): overdue first, then by due date."""
    stmt = select(Referral)
    if physician_ids is not None:
        stmt = stmt.where(Referral.physician_id.in_(physician_ids))
    if not include_closed:
        stmt = stmt.where(Referral.status.in_(OPEN_STATES))
    views = []
    for ref in session.scalars(stmt):
        docs = list(session.scalars(select(ReferralDocument).where(
            ReferralDocument.referral_id == ref.id).order_by(ReferralDocument.id)))
        rec = session.get(Recipient, ref.recipient_id) if ref.recipient_id else None
        views.append(ReferralView(ref, is_overdue(ref, now), docs, rec, LABELS[ref.status]))
    far = datetime.max.replace(tzinfo=UTC)
    views.sort(key=lambda v: (not v.overdue,
                              as_utc(v.referral.due_at) if v.referral.due_at else far,
                              v.referral.id))
    return views


def history(session: Session, referral_id: int) -> list[ReferralHistory]:
    """The referral's status changes, oldest first."""
    return list(session.scalars(select(ReferralHistory).where(
        ReferralHistory.referral_id == referral_id).order_by(ReferralHistory.id)))
