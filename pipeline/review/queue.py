"""The review queue: storing finished drafts and reading the queue.

The workbench (``pipeline.web``) builds the secretary's actions on top of these rows.
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.core import audit
from pipeline.core.db.core import DictationRow, DraftRow, TranscriptRow
from pipeline.core.records import Dictation, Document, Draft, Note, Transcript, to_jsonable
from pipeline.core.settings import Settings
from pipeline.core.store import ensure_physicians, open_store

__all__ = ["enqueue", "upsert_dictation", "queue", "QUEUED"]

log = logging.getLogger(__name__)

QUEUED = "queued_for_review"


def upsert_dictation(session: Session, dictation: Dictation, status: str) -> DictationRow:
    """Create or update the row for ``dictation`` with ``status``."""
    row = session.get(DictationRow, dictation.id)
    meta = dictation.meta
    if meta.physician_id:
        # A physician named only in a sidecar (e.g. `dictation transcribe` for a new colleague)
        # gets a row, so the draft is stored instead of failing on the foreign key.
        ensure_physicians(session, [meta.physician_id])
    if row is None:
        row = DictationRow(id=dictation.id, sha256=dictation.audio.sha256)
        session.add(row)
    row.sha256 = dictation.audio.sha256
    row.physician_id = meta.physician_id
    row.original_name = row.original_name or dictation.audio.path.name
    row.audio_path = row.audio_path or str(dictation.audio.path)
    row.status = status
    row.priority = meta.priority
    row.document_type = meta.document_type
    row.meta = to_jsonable(meta)
    row.duration_s = dictation.audio.duration_s
    session.flush()
    return row


def enqueue(
    settings: Settings,
    dictation: Dictation,
    transcript: Transcript,
    note: Note,
    document: Document,
    draft: Draft,
) -> Draft:
    """Store dictation, transcript and draft in one transaction; return the queued draft.

    Idempotent per dictation: a second call for the same dictation id (a retried flow)
    updates the existing draft instead of adding another.
    """
    store = open_store(settings)
    with store.session() as s:
        row = s.scalars(select(DraftRow).where(DraftRow.dictation_id == dictation.id)).first()
        if row is not None and row.status != QUEUED:
            # A re-run (crash recovery) after a secretary already started on the draft: their
            # work wins; the pipeline's new result is not written over it.
            log.info("draft=%s already %s; re-run result not applied", row.id, row.status)
            draft.id, draft.status = row.id, row.status
            return draft
        upsert_dictation(s, dictation, "done")
        s.query(TranscriptRow).filter(TranscriptRow.dictation_id == dictation.id).delete()
        s.add(
            TranscriptRow(
                dictation_id=dictation.id,
                model=transcript.model,
                language=transcript.language,
                raw_text=transcript.raw_text,
                segments=to_jsonable(transcript.segments),
                flags=list(transcript.flags),
                duration_s=transcript.duration_s,
                transcribe_s=transcript.transcribe_s,
            )
        )
        if row is None:
            row = DraftRow(id=draft.id, dictation_id=dictation.id)
            s.add(row)
        header = document.header
        row.physician_id = dictation.meta.physician_id
        row.document_type = document.document_type
        row.status = QUEUED
        row.priority = dictation.meta.priority
        row.audio_sha256 = dictation.audio.sha256
        row.raw_text = transcript.raw_text
        row.text = note.text
        row.patient_name = header["patient_name"].value if "patient_name" in header else None
        row.mrn = header["mrn"].value if "mrn" in header else None
        row.document = to_jsonable(document)
        row.corrections = to_jsonable(note.corrections)
        row.flags = sorted(set(transcript.flags) | set(note.flags) | set(document.flags))
        row.outputs = {k: str(v) for k, v in draft.outputs.items()}
        row.docx_path = str(draft.docx_path) if draft.docx_path else None
        s.flush()
        audit.record(
            s,
            actor="system:pipeline",
            action="draft_created",
            object_type="draft",
            object_id=row.id,
            patient_ref=row.mrn,
            detail={"dictation_id": dictation.id, "document_type": row.document_type},
        )
        draft_id = row.id
    log.info("queued draft=%s dictation=%s", draft_id, dictation.id)
    draft.id = draft_id
    draft.status = QUEUED
    return draft


def queue(session: Session, status: str = QUEUED, limit: int = 100) -> list[DraftRow]:
    """Drafts with ``status``: STAT first, then oldest first."""
    stmt = (
        select(DraftRow)
        .where(DraftRow.status == status)
        .order_by((DraftRow.priority == "stat").desc(), DraftRow.created_at)
        .limit(limit)
    )
    return list(session.scalars(stmt))
