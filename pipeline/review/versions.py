"""Draft work in the workbench: access checks, claim locks, versions, send for signature.

Every function takes an open session and the acting ``UserInfo``; the caller commits.
Access decisions and edits are written to the audit log here, so no route can forget them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.core import audit
from pipeline.core.db.core import DictationRow, DraftRow, Physician
from pipeline.core.db.review import DraftAutosave, DraftClaim, DraftVersion
from pipeline.core.errors import ConflictError, NotFoundError, PermissionDeniedError
from pipeline.core.settings import Settings
from pipeline.core.times import as_utc
from pipeline.review.users import UserInfo

__all__ = [
    "CLAIM_MINUTES",
    "EDITABLE",
    "ClaimState",
    "load_draft",
    "claim",
    "claim_state",
    "release",
    "ensure_initial_version",
    "latest_version",
    "save_text",
    "autosave_text",
    "pending_autosave",
    "discard_autosave",
    "send_for_signature",
    "return_to_review",
    "may_edit",
    "HEADER_FIELDS",
    "correct_header",
    "rerender_draft",
]

log = logging.getLogger(__name__)

#: A claim lasts this long after the holder's last save or page load.
CLAIM_MINUTES = 15
#: Statuses in which each role may change the text. Administrators only read drafts (an
#: audit look must not lock a draft away from the secretaries); physicians edit what waits
#: for their signature.
EDITABLE = {
    "secretary": ("queued_for_review", "in_review"),
    "physician": ("awaiting_signature",),
}


@dataclass
class ClaimState:
    """Who holds the edit lock on a draft (``mine`` when it is the asking user)."""

    holder: str | None
    mine: bool
    expires_at: datetime | None = None


def load_draft(session: Session, user: UserInfo, draft_id: str, action: str = "view") -> DraftRow:
    """The draft, when ``user`` may see it; a refused attempt is audited and raises."""
    row = session.get(DraftRow, draft_id)
    if row is None:
        raise NotFoundError(f"Draft {draft_id!r} does not exist.")
    if not user.may_see_physician(row.physician_id):
        audit.record(session, actor=user.username, action=action, object_type="draft",
                     object_id=row.id, patient_ref=row.mrn, outcome="denied")
        session.commit()  # keep the record of the refused attempt
        raise PermissionDeniedError(
            "This draft belongs to a physician you are not assigned to."
        )
    return row


def may_edit(user: UserInfo, draft: DraftRow) -> bool:
    """Whether ``user``'s role may change the text of ``draft`` in its current status."""
    return draft.status in EDITABLE.get(user.role, ())


def claim_state(session: Session, user: UserInfo, draft_id: str) -> ClaimState:
    """The current (unexpired) claim on ``draft_id``."""
    row = session.get(DraftClaim, draft_id)
    if row is None or as_utc(row.expires_at) <= datetime.now(UTC):
        return ClaimState(None, False)
    return ClaimState(row.username, row.user_id == user.id, as_utc(row.expires_at))


def claim(session: Session, user: UserInfo, draft: DraftRow) -> ClaimState:
    """Take or renew the edit lock on ``draft``; returns the other holder when it is taken."""
    now = datetime.now(UTC)
    expires = now + timedelta(minutes=CLAIM_MINUTES)
    row = session.get(DraftClaim, draft.id)
    if row is not None and row.user_id != user.id and as_utc(row.expires_at) > now:
        return ClaimState(row.username, False, as_utc(row.expires_at))
    if row is None:
        try:
            with session.begin_nested():
                session.add(DraftClaim(draft_id=draft.id, user_id=user.id,
                                       username=user.username, claimed_at=now,
                                       expires_at=expires))
        except IntegrityError:  # someone claimed it between our read and write
            other = session.get(DraftClaim, draft.id)
            return ClaimState(other.username if other else "someone", False)
        audit.record(session, actor=user.username, action="claim", object_type="draft",
                     object_id=draft.id, patient_ref=draft.mrn)
    else:
        taken_over = row.user_id != user.id
        row.user_id, row.username, row.expires_at = user.id, user.username, expires
        if taken_over:
            row.claimed_at = now
            audit.record(session, actor=user.username, action="claim", object_type="draft",
                         object_id=draft.id, patient_ref=draft.mrn,
                         detail={"expired_claim_taken_over": True})
    if draft.status == "queued_for_review" and user.role == "secretary":
        draft.status = "in_review"
    session.flush()
    return ClaimState(user.username, True, expires)


def release(session: Session, user: UserInfo, draft: DraftRow) -> None:
    """Give up ``user``'s claim on ``draft`` (no-op when they hold none)."""
    row = session.get(DraftClaim, draft.id)
    if row is not None and (row.user_id == user.id or user.role == "admin"):
        session.delete(row)
        audit.record(session, actor=user.username, action="release", object_type="draft",
                     object_id=draft.id, patient_ref=draft.mrn)
        session.flush()


def latest_version(session: Session, draft_id: str) -> int:
    """Number of the newest saved version (0 when none is stored yet)."""
    value = session.scalar(
        select(func.max(DraftVersion.version)).where(DraftVersion.draft_id == draft_id)
    )
    return int(value or 0)


def ensure_initial_version(session: Session, draft: DraftRow) -> None:
    """Store the pipeline's text as version 1 if no version exists yet."""
    if latest_version(session, draft.id) == 0:
        try:
            with session.begin_nested():
                session.add(DraftVersion(draft_id=draft.id, version=1, text=draft.text,
                                         author="system:pipeline", created_at=draft.created_at))
        except IntegrityError:
            pass  # another request stored it first


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n") + "\n"


def save_text(
    session: Session, user: UserInfo, draft: DraftRow, text: str, base_version: int | None
) -> int:
    """Save ``text`` as a new version; returns the version number now current.

    Refuses when the draft is signed, the role may not edit in this status, another user
    holds the claim, or ``base_version`` is older than the newest version (a lost update).
    """
    if draft.status in ("signed", "delivered"):
        raise ConflictError("This draft is signed and cannot change; write an addendum instead.")
    if not may_edit(user, draft):
        raise PermissionDeniedError(
            f"A {user.role} may not edit a draft that is {draft.status.replace('_', ' ')}."
        )
    state = claim(session, user, draft)
    if not state.mine:
        raise ConflictError(f"This draft is claimed by {state.holder}; it cannot be saved.")
    ensure_initial_version(session, draft)
    current = latest_version(session, draft.id)
    if base_version is not None and base_version != current:
        raise ConflictError(
            f"The draft changed since you opened it (version {base_version}, now {current}); "
            "reload it and apply your change again."
        )
    text = _clean(text)
    discard_autosave(session, user, draft)
    if text == _clean(draft.text):
        return current
    version = current + 1
    session.add(DraftVersion(draft_id=draft.id, version=version, text=text,
                             author=user.username, created_at=datetime.now(UTC)))
    draft.text = text
    session.flush()
    audit.record(session, actor=user.username, action="edit", object_type="draft",
                 object_id=draft.id, patient_ref=draft.mrn,
                 detail={"version": version, "chars": len(text)})
    log.info("draft=%s saved version=%d by user=%s", draft.id, version, user.id)
    return version


def autosave_text(session: Session, user: UserInfo, draft: DraftRow, text: str,
                  base_version: int | None) -> bool:
    """Keep the editor's unsaved ``text`` as ``user``'s autosave of ``draft`` (version kind
    ``autosave``: one row per draft and user, replaced each time, never counted as a saved
    version); audited as an edit. Same rights as saving: the role may edit in this status
    and holds the claim. Returns False when the text equals the saved one (nothing kept)."""
    if draft.status in ("signed", "delivered"):
        raise ConflictError("This draft is signed and cannot change; write an addendum instead.")
    if not may_edit(user, draft):
        raise PermissionDeniedError(
            f"A {user.role} may not edit a draft that is {draft.status.replace('_', ' ')}."
        )
    state = claim(session, user, draft)
    if not state.mine:
        raise ConflictError(f"This draft is claimed by {state.holder}; it cannot be saved.")
    text = _clean(text)
    row = session.scalar(select(DraftAutosave).where(DraftAutosave.draft_id == draft.id,
                                                     DraftAutosave.user_id == user.id))
    if text == _clean(draft.text):
        if row is not None:
            session.delete(row)
            session.flush()
        return False
    current = latest_version(session, draft.id)
    base = base_version if base_version is not None else current
    now = datetime.now(UTC)
    if row is None:
        session.add(DraftAutosave(draft_id=draft.id, user_id=user.id, username=user.username,
                                  kind="autosave", base_version=base, text=text, saved_at=now))
    elif row.text == text:
        return True
    else:
        row.text, row.base_version, row.saved_at = text, base, now
    session.flush()
    audit.record(session, actor=user.username, action="edit", object_type="draft",
                 object_id=draft.id, patient_ref=draft.mrn,
                 detail={"kind": "autosave", "base_version": base, "chars": len(text)})
    log.info("draft=%s autosaved by user=%s", draft.id, user.id)
    return True


def pending_autosave(session: Session, user: UserInfo, draft: DraftRow) -> DraftAutosave | None:
    """``user``'s autosave of ``draft`` when it is newer than the last saved version (and the
    draft is still editable); else None."""
    row = session.scalar(select(DraftAutosave).where(DraftAutosave.draft_id == draft.id,
                                                     DraftAutosave.user_id == user.id))
    if row is None or not may_edit(user, draft) or row.text == _clean(draft.text):
        return None
    last_saved = session.scalar(select(func.max(DraftVersion.created_at))
                                .where(DraftVersion.draft_id == draft.id))
    if last_saved is not None and as_utc(last_saved) > as_utc(row.saved_at):
        return None
    return row


def discard_autosave(session: Session, user: UserInfo, draft: DraftRow) -> None:
    """Drop ``user``'s autosave of ``draft`` (after a save, or when the user discards it)."""
    row = session.scalar(select(DraftAutosave).where(DraftAutosave.draft_id == draft.id,
                                                     DraftAutosave.user_id == user.id))
    if row is not None:
        session.delete(row)
        session.flush()


def send_for_signature(session: Session, user: UserInfo, draft: DraftRow) -> None:
    """Move the draft to ``awaiting_signature`` and release the claim."""
    if draft.status not in ("queued_for_review", "in_review"):
        raise ConflictError(
            f"Only a draft in review can be sent for signature; this one is "
            f"{draft.status.replace('_', ' ')}."
        )
    if user.role != "secretary":
        raise PermissionDeniedError("Only a secretary sends drafts for signature.")
    state = claim_state(session, user, draft.id)
    if state.holder and not state.mine:
        raise ConflictError(f"This draft is claimed by {state.holder}.")
    ensure_initial_version(session, draft)
    draft.status = "awaiting_signature"
    release(session, user, draft)
    audit.record(session, actor=user.username, action="send_for_signature",
                 object_type="draft", object_id=draft.id, patient_ref=draft.mrn)
    session.flush()


def return_to_review(session: Session, user: UserInfo, draft: DraftRow) -> None:
    """The physician sends a draft awaiting signature back to the secretaries."""
    if user.role != "physician" or draft.physician_id not in user.physician_ids:
        raise PermissionDeniedError("Only the draft's own physician can send it back.")
    if draft.status != "awaiting_signature":
        raise ConflictError(
            f"Only a draft awaiting signature can be sent back; this one is "
            f"{draft.status.replace('_', ' ')}."
        )
    draft.status = "in_review"
    release(session, user, draft)
    audit.record(session, actor=user.username, action="return_to_review",
                 object_type="draft", object_id=draft.id, patient_ref=draft.mrn)
    session.flush()


#: Header fields a person may correct in the editor (``physician_id`` reassigns the draft).
HEADER_FIELDS = ("patient_name", "date_of_birth", "mrn", "date_of_service", "document_type",
                 "physician_id")


def _header_value(key: str, raw: str, settings: Settings, session: Session) -> str | None:
    """A typed header value checked and in the form the sidecar stores; raises
    ``ConflictError`` with what was expected."""
    from pipeline.documents.header import parse_date
    from pipeline.documents.templates import list_templates

    value = " ".join(raw.split())
    if not value:
        return None
    if key in ("date_of_birth", "date_of_service"):
        parsed = parse_date(value)
        if parsed is None:
            raise ConflictError(f"The {key.replace('_', ' ')} could not be read as a date; "
                                "expected e.g. March 4, 1962 or 1962-03-04.")
        return parsed.isoformat()
    if key == "mrn":
        return value.replace(" ", "")
    if key == "document_type":
        templates = list_templates(settings)
        if value not in templates:
            raise ConflictError(f"Unknown document type; expected one of "
                                f"{', '.join(sorted(templates))}.")
        return value
    if key == "physician_id":
        known = {p for p in settings.physicians} | set(session.scalars(select(Physician.id)))
        if value not in known:
            raise ConflictError("Unknown physician; expected one of the practice's physicians.")
        return value
    return value[:200]


def rerender_draft(session: Session, settings: Settings, draft: DraftRow) -> dict[str, str]:
    """Structure and render the draft again from its text and (corrected) header, with the
    code signing uses (``signing.render_signed``), into the draft's own folder; keeps the
    sign-off acknowledgements. Returns the output paths."""
    from pipeline.review.signing import render_signed

    keep = (draft.document or {}).get("signoff")
    outputs = render_signed(session, settings, draft, out_dir=settings.drafts_dir / draft.id)
    if keep:
        document = dict(draft.document or {})
        document["signoff"] = keep
        draft.document = document
    draft.outputs = outputs
    draft.docx_path = outputs.get("docx") or draft.docx_path
    return outputs


def rerender_by_id(settings: Settings, draft_id: str) -> bool:
    """Render a draft still in review again from its stored text and header (after a late
    sidecar changed the header: ``pipeline.ingest.inbox``'s ``on_late_sidecar``). A signed
    draft is left alone (its final files come from the signed text). Returns whether it was
    rendered."""
    from pipeline.core.store import open_store

    with open_store(settings).session() as session:
        draft = session.get(DraftRow, draft_id)
        if draft is None or draft.status in ("signed", "delivered"):
            return False
        rerender_draft(session, settings, draft)
        session.commit()
    log.info("draft=%s rendered again after a late sidecar", draft_id)
    return True


def correct_header(session: Session, settings: Settings, user: UserInfo, draft: DraftRow,
                   changes: dict[str, str]) -> list[str]:
    """Correct header fields of ``draft`` (and reassign it with ``physician_id``): the
    dictation's sidecar record is updated (its first form is kept), the change audited (field
    names and physician ids only), and the outputs rendered again. Returns the changed
    field names. Same rights as editing the text: the role may edit in this status and
    holds the claim."""
    if draft.status in ("signed", "delivered"):
        raise ConflictError("This draft is signed; its header cannot change. Write an addendum.")
    if not may_edit(user, draft):
        raise PermissionDeniedError(
            f"A {user.role} may not change a draft that is {draft.status.replace('_', ' ')}."
        )
    state = claim(session, user, draft)
    if not state.mine:
        raise ConflictError(f"This draft is claimed by {state.holder}; it cannot be changed.")
    unknown = sorted(set(changes) - set(HEADER_FIELDS))
    if unknown:
        raise ConflictError(f"Unknown header field(s) {', '.join(unknown)}; expected "
                            f"{', '.join(HEADER_FIELDS)}.")
    dictation = session.get(DictationRow, draft.dictation_id)
    if dictation is None:
        raise NotFoundError("The dictation of this draft is missing; its header cannot change.")
    meta = dict(dictation.meta or {})
    new_values = {k: _header_value(k, v, settings, session) for k, v in changes.items()}
    changed = [k for k, v in new_values.items() if (meta.get(k) or None) != v]
    if not changed:
        return []
    if "sidecar_original" not in meta:
        meta["sidecar_original"] = {k: meta.get(k) for k in HEADER_FIELDS}
    old_physician = draft.physician_id
    for key in changed:
        meta[key] = new_values[key]
    dictation.meta = meta  # a new dict: the JSON column sees the change
    if "patient_name" in changed:
        draft.patient_name = new_values["patient_name"]
    if "mrn" in changed:
        draft.mrn = new_values["mrn"]
    if "document_type" in changed and new_values["document_type"]:
        draft.document_type = new_values["document_type"] or draft.document_type
        dictation.document_type = draft.document_type
    session.flush()
    audit.record(session, actor=user.username, action="header_correct", object_type="draft",
                 object_id=draft.id, patient_ref=draft.mrn, detail={"fields": changed})
    if "physician_id" in changed:
        new_pid = new_values["physician_id"]
        if session.get(Physician, new_pid) is None:
            session.add(Physician(id=new_pid, name=new_pid))
            session.flush()
        draft.physician_id = new_pid
        dictation.physician_id = new_pid
        audit.record(session, actor=user.username, action="reassign", object_type="draft",
                     object_id=draft.id, patient_ref=draft.mrn,
                     detail={"from": old_physician, "to": new_pid})
    session.flush()
    rerender_draft(session, settings, draft)
    audit.record(session, actor=user.username, action="export", object_type="draft",
                 object_id=draft.id, patient_ref=draft.mrn,
                 detail={"kinds": sorted(draft.outputs or {}), "reason": "header_correct"})
    log.info("draft=%s header corrected fields=%s by user=%s", draft.id, changed, user.id)
    return changed
