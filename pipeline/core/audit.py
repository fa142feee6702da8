"""Append-only, hash-chained audit log.

Each event's ``hash`` is SHA-256 over the previous event's hash and the event's own
canonical JSON, so changing, deleting or re-ordering any stored event breaks the chain
from that point on; ``verify`` finds the first broken link. Writers are serialised by
updating the single ``audit_head`` row inside the writer's transaction (a write lock on
SQLite, a row lock on PostgreSQL), so concurrent writers never fork the chain.

Events carry ids and codes only: never transcript text. ``patient_ref`` holds the MRN so an
administrator can answer "who looked at this patient's documents".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pipeline.core.db.core import AuditEvent, AuditHead

__all__ = ["record", "verify", "VerifyResult", "GENESIS"]

GENESIS = "0" * 64


def _canonical(event: AuditEvent) -> str:
    ts = event.ts
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    payload = {
        "ts": ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor": event.actor,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "patient_ref": event.patient_ref,
        "outcome": event.outcome,
        "detail": event.detail or {},
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


def _digest(prev_hash: str, event: AuditEvent) -> str:
    return hashlib.sha256((prev_hash + "|" + _canonical(event)).encode("utf-8")).hexdigest()


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    object_type: str,
    object_id: str | None = None,
    patient_ref: str | None = None,
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain in ``session``'s transaction and return it.

    The event becomes durable when the caller commits. ``detail`` must hold ids, codes and
    counts only.
    """
    # Take the write lock first: bump the head row (created on first use).
    bumped = session.execute(
        update(AuditHead).where(AuditHead.id == 1).values(seq=AuditHead.seq + 1)
    ).rowcount  # type: ignore[attr-defined]
    if not bumped:
        session.add(AuditHead(id=1, seq=1, last_hash=GENESIS))
        session.flush()
    head = session.execute(select(AuditHead).where(AuditHead.id == 1)).scalar_one()
    session.refresh(head)
    now = datetime.now(UTC)
    event = AuditEvent(
        ts=now,
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=object_id,
        patient_ref=patient_ref,
        outcome=outcome,
        detail=detail or {},
        prev_hash=head.last_hash,
    )
    event.hash = _digest(head.last_hash, event)
    head.last_hash = event.hash
    session.add(event)
    session.flush()
    return event


@dataclass
class VerifyResult:
    """Outcome of ``verify``: ok, events checked, and the first bad event id if any."""

    ok: bool
    checked: int
    first_bad_id: int | None = None
    reason: str = ""


def verify(session: Session) -> VerifyResult:
    """Walk the chain in id order and report the first event whose hash does not match."""
    prev = GENESIS
    checked = 0
    for event in session.scalars(select(AuditEvent).order_by(AuditEvent.id)).yield_per(1000):
        if event.prev_hash != prev:
            return VerifyResult(
                False, checked, event.id, "an event before it was changed or removed"
            )
        if _digest(prev, event) != event.hash:
            return VerifyResult(False, checked, event.id, "its content does not match its hash")
        prev = event.hash
        checked += 1
    head = session.get(AuditHead, 1)
    if head is not None and head.last_hash != prev:
        return VerifyResult(False, checked, None, "the newest events were removed")
    return VerifyResult(True, checked)
