"""Put drafts into a database without running the whole pipeline (benchmarks, demos, tests).

``add_draft`` stores one dictation + transcript + draft the way ``pipeline.review.queue.enqueue``
does; ``synthetic_transcript`` makes word-timed segments for a dictation of any length
(benchmark data, never patient data); ``bulk_drafts`` inserts many rows fast.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from pipeline.core import audit
from pipeline.core.db.core import DictationRow, DraftRow, TranscriptRow

__all__ = ["add_draft", "synthetic_transcript", "bulk_drafts"]

_VOCAB = [
    "patient",
    "presents",
    "with",
    "abdominal",
    "pain",
    "for",
    "two",
    "days",
    "nausea",
    "no",
    "vomiting",
    "history",
    "of",
    "hypertension",
    "on",
    "lisinopril",
    "ten",
    "milligrams",
    "daily",
    "examination",
    "reveals",
    "tenderness",
    "in",
    "the",
    "right",
    "upper",
    "quadrant",
    "murphy",
    "sign",
    "positive",
    "ultrasound",
    "shows",
    "gallbladder",
    "wall",
    "thickening",
    "assessment",
    "acute",
    "cholecystitis",
    "plan",
    "laparoscopic",
    "cholecystectomy",
    "follow",
    "up",
    "in",
    "two",
    "weeks",
]


def add_draft(
    session: Session,
    *,
    text: str,
    segments: list[dict[str, Any]],
    physician_id: str | None,
    patient_name: str | None = None,
    mrn: str | None = None,
    priority: str = "routine",
    document_type: str = "progress_note",
    audio_path: Path | None = None,
    duration_s: float | None = None,
    corrections: list[dict[str, Any]] | None = None,
    document: dict[str, Any] | None = None,
    status: str = "queued_for_review",
    created_at: datetime | None = None,
) -> str:
    """Store one dictation, its transcript and a draft; returns the draft id."""
    dictation_id = uuid.uuid4().hex
    draft_id = uuid.uuid4().hex
    created = created_at or datetime.now(UTC)
    raw = " ".join(str(s.get("text", "")).strip() for s in segments).strip()
    session.add(
        DictationRow(
            id=dictation_id,
            sha256=uuid.uuid4().hex + uuid.uuid4().hex,
            physician_id=physician_id,
            original_name=audio_path.name if audio_path else "",
            status="done",
            audio_path=str(audio_path) if audio_path else None,
            priority=priority,
            document_type=document_type,
            meta={
                "physician_id": physician_id,
                "mrn": mrn,
                "patient_name": patient_name,
                "document_type": document_type,
                "priority": priority,
            },
            duration_s=duration_s,
            created_at=created,
        )
    )
    session.flush()
    session.add(
        TranscriptRow(
            dictation_id=dictation_id,
            model="tiny.en",
            raw_text=raw,
            segments=segments,
            duration_s=duration_s or 0.0,
        )
    )
    session.add(
        DraftRow(
            id=draft_id,
            dictation_id=dictation_id,
            physician_id=physician_id,
            document_type=document_type,
            status=status,
            priority=priority,
            audio_sha256="0" * 64,
            raw_text=raw,
            text=text,
            patient_name=patient_name,
            mrn=mrn,
            document=document
            or {
                "document_type": document_type,
                "sections": [],
                "header": {},
                "instructions": [],
                "missing": [],
                "flags": [],
            },
            corrections=corrections or [],
            flags=[],
            outputs={},
            created_at=created,
            updated_at=created,
        )
    )
    session.flush()
    audit.record(
        session,
        actor="system:seed",
        action="draft_created",
        object_type="draft",
        object_id=draft_id,
        patient_ref=mrn,
        detail={"dictation_id": dictation_id},
    )
    return draft_id


def synthetic_transcript(seconds: float, seed: int = 0) -> tuple[str, list[dict[str, Any]]]:
    """Text and word-timed segments for a synthetic dictation ``seconds`` long (~2.5 words/s)."""
    rng = random.Random(seed)
    segments: list[dict[str, Any]] = []
    t = 0.0
    seg_id = 0
    while t < seconds:
        words = []
        for _ in range(rng.randint(8, 16)):
            w = rng.choice(_VOCAB)
            dur = 0.2 + rng.random() * 0.3
            words.append(
                {
                    "word": " " + w,
                    "start": round(t, 2),
                    "end": round(t + dur, 2),
                    "probability": round(0.3 + rng.random() * 0.7, 3),
                }
            )
            t += dur + 0.1
        segments.append(
            {
                "id": seg_id,
                "start": words[0]["start"],
                "end": words[-1]["end"],
                "text": "".join(str(w["word"]) for w in words),
                "words": words,
            }
        )
        seg_id += 1
    text = "\n\n".join(s["text"].strip().capitalize() + "." for s in segments) + "\n"
    return text, segments


def bulk_drafts(session: Session, n: int, physicians: list[str], seed: int = 0) -> None:
    """Insert ``n`` small drafts (mixed statuses, priorities, ages) in bulk."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    statuses = ["queued_for_review"] * 5 + [
        "in_review",
        "awaiting_signature",
        "signed",
        "delivered",
    ]
    types = ["progress_note", "operative_report", "consultation", "discharge_summary"]
    # Rows as large as real ones (~2 KB of text twice, the structured document again), so
    # that a query touching whole rows costs what it would in practice.
    body = " ".join(rng.choice(_VOCAB) for _ in range(330)) + "\n"
    document = {"document_type": "progress_note", "title": "Progress note",
                "sections": [{"key": "plan", "heading": "Plan", "text": body}],
                "header": {}, "instructions": [], "missing": [], "flags": []}
    dictations, drafts = [], []
    for i in range(n):
        did, rid = uuid.uuid4().hex, uuid.uuid4().hex
        created = now - timedelta(minutes=rng.randint(0, 60 * 24 * 30))
        pid = physicians[i % len(physicians)]
        prio = "stat" if rng.random() < 0.05 else "routine"
        dictations.append(
            {
                "id": did,
                "sha256": uuid.uuid4().hex * 2,
                "physician_id": pid,
                "original_name": "",
                "status": "done",
                "priority": prio,
                "meta": {},
                "duration_s": rng.uniform(20, 600),
                "created_at": created,
                "updated_at": created,
            }
        )
        drafts.append(
            {
                "id": rid,
                "dictation_id": did,
                "physician_id": pid,
                "document_type": rng.choice(types),
                "status": rng.choice(statuses),
                "priority": prio,
                "audio_sha256": "0" * 64,
                "raw_text": body,
                "text": body,
                "patient_name": f"Patient {i:05d}",
                "mrn": f"MRN{i:07d}",
                "document": document,
                "corrections": [],
                "flags": [],
                "outputs": {},
                "created_at": created,
                "updated_at": created,
            }
        )
    for k in range(0, n, 2000):
        session.execute(insert(DictationRow), dictations[k : k + 2000])
        session.execute(insert(DraftRow), drafts[k : k + 2000])
    session.flush()
