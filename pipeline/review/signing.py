"""Signing: a physician signs a draft with a re-entered password; signed text never changes.

Immutability is enforced twice: here (signed drafts refuse edits) and in the database (a
trigger from migration 0002_review aborts any UPDATE of ``drafts.text`` once the status is
signed or delivered, and signatures can be neither updated nor deleted). Later changes are
addenda, each with its own signature. On signing the final outputs are rendered again from
the signed text (``pipeline.documents.render``), the learning stage measures the corrections,
and the scheduling area turns instructions into tasks (``pipeline.secretary.tasks``) when it
is installed.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from pipeline.core import audit
from pipeline.core.db.core import DictationRow, DraftRow
from pipeline.core.db.review import Addendum, DraftClaim, DraftVersion, Signature, User
from pipeline.core.errors import ConflictError, PermissionDeniedError
from pipeline.core.records import AudioInfo, Dictation, DictationMeta, Note, Section, to_jsonable
from pipeline.core.settings import Settings
from pipeline.review import learning
from pipeline.review.users import (
    UserInfo,
    authenticate,
    clear_failures,
    note_failure,
    throttle_wait,
)
from pipeline.secretary import tasks

__all__ = ["SignResult", "sign_draft", "add_addendum", "render_signed", "text_sha256",
           "first_text", "signed_text_with_addenda"]

log = logging.getLogger(__name__)


def text_sha256(text: str) -> str:
    """SHA-256 of the text as signed (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class SignResult:
    """What signing did: signature id, WER, new vocabulary terms, outputs, tasks, problems."""

    signature_id: int
    wer: float | None = None
    new_terms: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    tasks: int = 0
    problems: list[str] = field(default_factory=list)


def _check_signer(session: Session, settings: Settings, user: UserInfo, draft: DraftRow,
                  password: str) -> None:
    if user.role != "physician" or draft.physician_id not in user.physician_ids:
        audit.record(session, actor=user.username, action="sign", object_type="draft",
                     object_id=draft.id, patient_ref=draft.mrn, outcome="denied")
        session.commit()  # keep the record of the refused attempt
        raise PermissionDeniedError("Only the draft's own physician can sign it.")
    # wrong signing passwords are throttled like log-ins (pipeline.review.users)
    wait = throttle_wait(session, settings, "sign", user.username)
    if wait > 0:
        audit.record(session, actor=user.username, action="sign", object_type="draft",
                     object_id=draft.id, patient_ref=draft.mrn, outcome="refused",
                     detail={"reason": "throttled", "wait_s": math.ceil(wait)})
        session.commit()  # keep the record of the refused attempt
        raise PermissionDeniedError(
            f"Too many wrong passwords; wait {math.ceil(wait)} seconds before signing again."
        )
    if authenticate(session, user.username, password) is None:
        note_failure(session, "sign", user.username)
        audit.record(session, actor=user.username, action="sign", object_type="draft",
                     object_id=draft.id, patient_ref=draft.mrn, outcome="failed",
                     detail={"reason": "wrong_password"})
        session.commit()  # keep the record of the failed attempt
        raise PermissionDeniedError("The password is wrong; the draft was not signed.")
    clear_failures(session, settings, "sign", user.username)


def first_text(session: Session, draft: DraftRow) -> str:
    """The pipeline's text (version 1), or the current text when no version was stored."""
    text = session.scalar(
        select(DraftVersion.text).where(DraftVersion.draft_id == draft.id,
                                        DraftVersion.version == 1)
    )
    return text if text is not None else draft.text


def _meta(row: DictationRow | None) -> DictationMeta:
    raw: dict[str, Any] = dict(row.meta or {}) if row is not None else {}
    fields = set(DictationMeta.__dataclass_fields__)
    values = {k: v for k, v in raw.items() if k in fields}
    for key in ("date_of_birth", "date_of_service"):
        if isinstance(values.get(key), str):
            try:
                values[key] = date.fromisoformat(values[key])
            except ValueError:
                values[key] = None
    return DictationMeta(**values)


def signed_text_with_addenda(session: Session, draft: DraftRow) -> list[tuple[Addendum, str]]:
    """Signed addenda of ``draft`` with their signer, oldest first."""
    rows = session.execute(
        select(Addendum, Signature.username)
        .join(Signature, Signature.addendum_id == Addendum.id)
        .where(Addendum.draft_id == draft.id)
        .order_by(Addendum.id)
    ).all()
    return [(a, str(u)) for a, u in rows]


def render_signed(session: Session, settings: Settings, draft: DraftRow,
                  out_dir: Path | None = None) -> dict[str, str]:
    """Render the final outputs from the signed text (plus signed addenda); returns paths.
    Also re-renders an unsigned draft after a header correction (``out_dir`` given)."""
    from pipeline.documents import render, sections

    dictation_row = session.get(DictationRow, draft.dictation_id)
    meta = _meta(dictation_row)
    meta.document_type = meta.document_type or draft.document_type
    document = sections.structure(Note(text=draft.text), meta, settings)
    for addendum, signer in signed_text_with_addenda(session, draft):
        when = addendum.created_at.strftime("%Y-%m-%d %H:%M")
        document.sections.append(
            Section(key="addendum", heading=f"Addendum ({when}, {signer})", text=addendum.text)
        )
    audio_path = Path(dictation_row.audio_path) if dictation_row and dictation_row.audio_path \
        else Path(f"{draft.dictation_id}.wav")
    dictation = Dictation(
        id=draft.dictation_id,
        audio=AudioInfo(
            path=audio_path,
            sha256=draft.audio_sha256,
            size_bytes=0,
            format="",
            codec="",
            sample_rate=0,
            channels=0,
            duration_s=float(dictation_row.duration_s or 0.0) if dictation_row else 0.0,
        ),
        meta=meta,
    )
    out_dir = out_dir or settings.drafts_dir / draft.id / "signed"
    kwargs: dict[str, Any] = {}
    signature = session.scalar(
        select(Signature).where(Signature.draft_id == draft.id, Signature.addendum_id.is_(None))
        .order_by(Signature.id.desc()).limit(1)
    )
    if signature is not None:
        signer_row = session.get(User, signature.user_id)
        kwargs = {"final": True,
                  "signed_by": (signer_row.display_name if signer_row and signer_row.display_name
                                else signature.username),
                  "signed_at": signature.signed_at}
    outputs = render.render_outputs(document, dictation, draft.id, out_dir, settings, **kwargs)
    # The stored structure follows the signed text (instructions feed the task list).
    draft.document = to_jsonable(document)
    return {k: str(v) for k, v in outputs.items()}


def _rerender(session: Session, settings: Settings, user: UserInfo, draft: DraftRow,
              result: SignResult) -> None:
    try:
        with session.begin_nested():
            outputs = render_signed(session, settings, draft)
            draft.outputs = outputs
            if outputs.get("docx"):
                draft.docx_path = outputs["docx"]
    except Exception as exc:  # the signature stands; the failure is visible and audited
        log.exception("draft=%s re-render after signing failed", draft.id)
        result.problems.append(f"outputs not regenerated: {type(exc).__name__}")
        audit.record(session, actor=user.username, action="export", object_type="draft",
                     object_id=draft.id, patient_ref=draft.mrn, outcome="failed",
                     detail={"error": type(exc).__name__})
        return
    result.outputs = outputs
    audit.record(session, actor=user.username, action="export", object_type="draft",
                 object_id=draft.id, patient_ref=draft.mrn,
                 detail={"kinds": sorted(outputs)})


def sign_draft(
    session: Session, settings: Settings, user: UserInfo, draft: DraftRow, password: str
) -> SignResult:
    """Sign ``draft`` as ``user`` after re-checking ``password``; the caller commits."""
    if draft.status in ("signed", "delivered"):
        raise ConflictError("This draft is already signed; write an addendum to change it.")
    if draft.status != "awaiting_signature":
        raise ConflictError(
            f"Only a draft awaiting signature can be signed; this one is "
            f"{draft.status.replace('_', ' ')}."
        )
    _check_signer(session, settings, user, draft, password)
    # nothing wrong gets signed: placeholders, header mismatches, unreviewed dose/side/drug
    # changes (pipeline.review.signoff) refuse the signature, audited
    from pipeline.review.signoff import check_signable

    check_signable(session, settings, user, draft)
    from pipeline.review.versions import ensure_initial_version, latest_version

    ensure_initial_version(session, draft)
    now = datetime.now(UTC)
    signature = Signature(
        draft_id=draft.id,
        user_id=user.id,
        username=user.username,
        physician_id=draft.physician_id,
        version=latest_version(session, draft.id),
        text_sha256=text_sha256(draft.text),
        signed_at=now,
    )
    session.add(signature)
    draft.status = "signed"
    session.execute(delete(DraftClaim).where(DraftClaim.draft_id == draft.id))
    session.flush()
    result = SignResult(signature_id=signature.id)
    audit.record(session, actor=user.username, action="sign", object_type="draft",
                 object_id=draft.id, patient_ref=draft.mrn,
                 detail={"signature_id": signature.id, "version": signature.version,
                         "sha256": signature.text_sha256})
    learned = learning.record_signed(
        session, settings, draft_id=draft.id, physician_id=draft.physician_id,
        first_text=first_text(session, draft), signed_text=draft.text, signed_at=now,
    )
    result.wer = learned.accuracy.wer
    result.new_terms = learned.new_terms
    _rerender(session, settings, user, draft, result)
    try:
        with session.begin_nested():
            made = tasks.tasks_from_draft(session, draft, actor=user.username, settings=settings)
        result.tasks = len(made)
    except Exception as exc:  # tasks are follow-up work: a failure must not undo the signature
        log.exception("draft=%s tasks_from_draft failed", draft.id)
        result.problems.append(f"tasks not created: {type(exc).__name__}")
    log.info("draft=%s signed by user=%s", draft.id, user.id)
    return result


def add_addendum(
    session: Session, settings: Settings, user: UserInfo, draft: DraftRow, text: str,
    password: str,
) -> SignResult:
    """Add a signed addendum to a signed draft and render the outputs again."""
    if draft.status not in ("signed", "delivered"):
        raise ConflictError("Addenda are for signed documents; edit the draft instead.")
    text = text.strip()
    if not text:
        raise ConflictError("The addendum is empty; expected some text.")
    _check_signer(session, settings, user, draft, password)
    now = datetime.now(UTC)
    addendum = Addendum(draft_id=draft.id, text=text, author=user.username, created_at=now)
    session.add(addendum)
    session.flush()
    signature = Signature(draft_id=draft.id, addendum_id=addendum.id, user_id=user.id,
                          username=user.username, physician_id=draft.physician_id,
                          text_sha256=text_sha256(text), signed_at=now)
    session.add(signature)
    session.flush()
    audit.record(session, actor=user.username, action="addendum", object_type="draft",
                 object_id=draft.id, patient_ref=draft.mrn,
                 detail={"addendum_id": addendum.id, "signature_id": signature.id})
    result = SignResult(signature_id=signature.id)
    _rerender(session, settings, user, draft, result)
    return result
