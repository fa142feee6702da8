"""What blocks signing a draft, and how a person clears it.

``blockers(session, settings, draft)`` lists everything that must be settled before a
physician may sign, each with a kind, a message a person understands and the anchor of the
place in the editor:

- ``placeholder``: a required section of the document type was not dictated (it would print
  as ``[MISSING: ...]``), or a ``[MISSING: ...]`` marker is still in the text. Cleared by
  writing the section (the document type decides which sections are required:
  ``templates/<type>.toml``);
- ``header_mismatch``: a header value said in the dictation disagrees with the sidecar
  (wrong patient?). Cleared by correcting the header or by acknowledging the difference;
- ``unreviewed_change``: the normaliser changed a dose, a side (left/right) or a drug or term
  name (``pipeline.language.normalize.review_flags``). Cleared by marking it reviewed.

The same list is used by the signing code (``check_signable`` raises ``SignBlockedError``),
the web layer (sign page, editor) and ``dictation transcribe --json``. Acknowledgements live
in the draft's document JSON (``document["signoff"]["acknowledged"]``) and every one is
audited.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from pipeline.core import audit
from pipeline.core.db.core import DictationRow, DraftRow
from pipeline.core.errors import ConflictError, PermissionDeniedError
from pipeline.core.records import Document, Note
from pipeline.core.settings import Settings
from pipeline.documents import header as header_mod
from pipeline.language.normalize.review_flags import LABELS, SIGN_BLOCKING, classify
from pipeline.language.vocab import VocabIndex, get_index
from pipeline.review.users import UserInfo

__all__ = [
    "Blocker",
    "SignBlockedError",
    "blockers",
    "document_blockers",
    "check_signable",
    "acknowledge",
    "acknowledged",
    "current_document",
    "preview",
]

log = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\[MISSING:[^\]]*\]")


@dataclass(frozen=True)
class Blocker:
    """One thing that stops signing: its kind, a message, where it is in the editor (the id
    of an element on the editor page), the key an acknowledgement uses, and whether a person
    can acknowledge it (a missing section must be written instead)."""

    kind: str  # placeholder, header_mismatch, unreviewed_change
    message: str
    anchor: str
    key: str
    can_acknowledge: bool = False

    def to_dict(self) -> dict[str, Any]:
        """As plain values (for JSON)."""
        return asdict(self)


class SignBlockedError(ConflictError):
    """Signing refused: something in the draft is still wrong or unreviewed."""

    def __init__(self, found: list[Blocker]) -> None:
        self.blockers = found
        items = "; ".join(b.message for b in found[:5])
        more = f"; and {len(found) - 5} more" if len(found) > 5 else ""
        super().__init__(
            f"Signing is blocked by {len(found)} item{'s' if len(found) != 1 else ''}: "
            f"{items}{more}."
        )


def _digest(value: str) -> str:
    """A short fingerprint of a value (keys and audit details never hold the value)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:10]


def _word_index(text: str, offset: int) -> int:
    """Index of the word (whitespace token) of ``text`` that contains ``offset``."""
    return len(re.findall(r"\S+", text[:offset]))


def document_blockers(document: Document, text: str,
                      corrections: list[dict[str, Any]] | None = None,
                      base_text: str | None = None,
                      done: dict[str, Any] | None = None,
                      index: VocabIndex | None = None) -> list[Blocker]:
    """Blockers of a structured document and its text (no database): missing required
    sections, ``[MISSING: ...]`` markers, header mismatches and flagged dose/side/drug
    changes not in ``done`` (acknowledgement keys). ``index`` (the vocabulary) tells drug
    names from other repaired terms."""
    done = done or {}
    found: list[Blocker] = []
    for label in document.missing:
        slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
        found.append(Blocker(
            kind="placeholder",
            message=f"Required section “{label}” is missing (it would print as "
                    f"[MISSING: {label}]); dictate or type it",
            anchor=f"missing-{slug}", key=f"missing:{slug}"))
    for m in _PLACEHOLDER.finditer(text):
        found.append(Blocker(
            kind="placeholder",
            message=f"The text still contains the placeholder {m.group(0)}",
            anchor=f"w{_word_index(text, m.start())}", key=f"marker:{m.start()}"))
    for key, description in header_mod.mismatches(document.header):
        fld = document.header[key]
        ack = f"header:{key}:{_digest(str(fld.conflict))}:{_digest(str(fld.value))}"
        if ack in done:
            continue
        found.append(Blocker(kind="header_mismatch", message=description,
                             anchor=f"hdr-{key}", key=ack, can_acknowledge=True))
    base = base_text if base_text is not None else text
    for i, corr in enumerate(corrections or []):
        if not isinstance(corr, dict):
            continue
        cls = classify(corr, index)
        if cls not in SIGN_BLOCKING:
            continue
        ack = f"change:{i}"
        if ack in done:
            continue
        heard, now = str(corr.get("original") or ""), str(corr.get("replacement") or "")
        found.append(Blocker(
            kind="unreviewed_change",
            message=f"Unreviewed {LABELS[cls]}: heard “{heard}”, written “{now}”",
            anchor=f"w{_word_index(base, int(corr.get('start') or 0))}", key=ack,
            can_acknowledge=True))
    return found


def _meta(session: Session, draft: DraftRow) -> Any:
    from pipeline.review.signing import _meta as meta_from_row

    meta = meta_from_row(session.get(DictationRow, draft.dictation_id))
    meta.document_type = meta.document_type or draft.document_type
    return meta


def current_document(session: Session, settings: Settings, draft: DraftRow) -> Document:
    """The draft's text structured as it will be rendered on signing (current header)."""
    from pipeline.documents import sections

    return sections.structure(Note(text=draft.text), _meta(session, draft), settings)


def acknowledged(draft: DraftRow) -> dict[str, Any]:
    """Acknowledgement key -> who and when."""
    signoff = (draft.document or {}).get("signoff") or {}
    return dict(signoff.get("acknowledged") or {})


def blockers(session: Session, settings: Settings, draft: DraftRow) -> list[Blocker]:
    """Everything that blocks signing ``draft`` now (empty: it may be signed)."""
    from pipeline.review.signing import first_text

    document = current_document(session, settings, draft)
    return document_blockers(document, draft.text, list(draft.corrections or []),
                             base_text=first_text(session, draft), done=acknowledged(draft),
                             index=get_index(settings))


def check_signable(session: Session, settings: Settings, user: UserInfo,
                   draft: DraftRow) -> None:
    """Raise ``SignBlockedError`` (audited) when anything blocks signing ``draft``."""
    found = blockers(session, settings, draft)
    if not found:
        return
    kinds: dict[str, int] = {}
    for b in found:
        kinds[b.kind] = kinds.get(b.kind, 0) + 1
    audit.record(session, actor=user.username, action="sign", object_type="draft",
                 object_id=draft.id, patient_ref=draft.mrn, outcome="refused",
                 detail={"reason": "blocked", "blockers": kinds})
    session.commit()  # keep the record of the refused attempt
    log.info("draft=%s signing blocked by %d item(s)", draft.id, len(found))
    raise SignBlockedError(found)


def acknowledge(session: Session, settings: Settings, user: UserInfo, draft: DraftRow,
                key: str) -> Blocker:
    """Mark a header mismatch acknowledged or a flagged change reviewed (audited); returns
    the blocker it cleared. Only physicians and secretaries who may see the draft, and only
    while it is not signed."""
    if user.role not in ("physician", "secretary"):
        raise PermissionDeniedError("Only a physician or a secretary acknowledges flags.")
    if draft.status in ("signed", "delivered"):
        raise ConflictError("This draft is signed; nothing is left to acknowledge.")
    current = {b.key: b for b in blockers(session, settings, draft)}
    target = current.get(key)
    if target is None or not target.can_acknowledge:
        raise ConflictError(
            "That item does not block signing any more (or must be fixed in the text); "
            "reload the page.")
    document = dict(draft.document or {})
    signoff = dict(document.get("signoff") or {})
    acks = dict(signoff.get("acknowledged") or {})
    acks[key] = {"by": user.username, "at": datetime.now(UTC).isoformat(timespec="seconds"),
                 "kind": target.kind}
    signoff["acknowledged"] = acks
    document["signoff"] = signoff
    draft.document = document  # a new dict: the JSON column sees the change
    session.flush()
    audit.record(session, actor=user.username, action="acknowledge", object_type="draft",
                 object_id=draft.id, patient_ref=draft.mrn,
                 detail={"kind": target.kind, "key": key.split(":")[0] + ":" +
                         key.split(":")[1] if ":" in key else key})
    log.info("draft=%s %s acknowledged by user=%s", draft.id, target.kind, user.id)
    return target


def preview(session: Session, settings: Settings, draft: DraftRow) -> dict[str, Any]:
    """The document as it will print: the render stage's template context (header, sections
    with ``[MISSING: ...]`` markers, signature line) and its plain-text rendering."""
    from pipeline.core.records import AudioInfo, Dictation
    from pipeline.documents import render
    from pipeline.documents.templates import get_template

    document = current_document(session, settings, draft)
    spec = get_template(document.document_type, settings)
    dictation = Dictation(
        id=draft.dictation_id,
        audio=AudioInfo(path=settings.drafts_dir / draft.id, sha256=draft.audio_sha256,
                        size_bytes=0, format="", codec="", sample_rate=0, channels=0,
                        duration_s=0.0),
        meta=_meta(session, draft),
    )
    context = render.build_context(document, dictation, settings, spec)
    context["text"] = render.render_text(spec, context)
    context["header_labels"] = {**header_mod.HEADER_LABELS, "patient_name": "Patient"}
    context["letter"] = spec.letter
    return context
