"""Retention (pipeline.service.retention, ``dictation retention``): the dry run lists exactly
the eligible items (audio of documents signed long enough ago, old quarantine entries, old
exports) and deletes nothing; ``--apply`` deletes exactly those and audits each; the audio
of an unsigned draft is never deleted, whatever the rules say."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from pipeline.core import audit
from pipeline.core.db.core import AuditEvent, DictationRow, DraftRow
from pipeline.core.db.review import Signature
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.review.users import create_user
from pipeline.service import retention
from pipeline.web.seed import add_draft

DAYS = 30
OLD = time.time() - 40 * 86400


def _draft(s: Any, settings: Settings, name: str, status: str) -> tuple[str, str, Path]:
    """A draft whose audio and sidecar sit in archive/<dictation id>/ (a recorder's name)."""
    draft_id = add_draft(s, text="Plan: rest.", segments=[], physician_id="dr-smith",
                         patient_name="Jane Roe", mrn="MRN-77", status=status)
    draft = s.get(DraftRow, draft_id)
    did = draft.dictation_id
    audio = settings.archive_dir / did / f"{name}.wav"
    audio.parent.mkdir(parents=True)
    audio.write_bytes(b"RIFF audio")
    audio.with_suffix(".json").write_text('{"patient_name": "Jane Roe"}')
    s.get(DictationRow, did).audio_path = str(audio)
    return draft_id, did, audio


@pytest.fixture
def world(settings: Settings) -> dict[str, Any]:
    settings.retention_audio_days_after_signing = DAYS
    settings.retention_quarantine_days = DAYS
    settings.retention_exports_days = DAYS
    store = open_store(settings)
    now = datetime.now(UTC)
    w: dict[str, Any] = {"settings": settings}
    with store.session() as s:
        smith = create_user(s, "smith", "violet-harbor-quantum-97", "physician", ["dr-smith"])
        for key, status, signed_days in (("old", "signed", 40), ("recent", "signed", 2),
                                         ("unsigned", "awaiting_signature", None),
                                         ("delivered", "delivered", 90)):
            draft_id, did, audio = _draft(s, settings, f"Jane_Roe_{key}", status)
            if signed_days is not None:
                s.add(Signature(draft_id=draft_id, user_id=smith.id, username="smith",
                                physician_id="dr-smith", version=1, text_sha256="0" * 64,
                                signed_at=now - timedelta(days=signed_days)))
            w[key] = {"draft": draft_id, "dictation": did, "audio": audio}
        # an old quarantined file that belongs to the unsigned draft: kept
        q_unsigned = settings.quarantine_dir / "Jane_Roe_unsigned_copy.wav"
        q_unsigned.parent.mkdir(parents=True, exist_ok=True)
        q_unsigned.write_bytes(b"x")
        s.get(DictationRow, w["unsigned"]["dictation"]).audio_path = str(q_unsigned)
        w["unsigned"]["audio_q"] = q_unsigned
    q_old = settings.quarantine_dir / "Jane_Roe_bad.wav"
    q_old.write_bytes(b"bad")
    (settings.quarantine_dir / "Jane_Roe_bad.wav.reason.txt").write_text("empty audio")
    q_new = settings.quarantine_dir / "new.wav"
    q_new.write_bytes(b"new")
    exports = settings.data_path / "route" / "print"
    exports.mkdir(parents=True)
    e_old, e_new = exports / "a1b2c3d4e5f6.pdf", exports / "f6e5d4c3b2a1.pdf"
    e_old.write_bytes(b"%PDF old")
    e_new.write_bytes(b"%PDF new")
    for p in (q_old, settings.quarantine_dir / "Jane_Roe_bad.wav.reason.txt", q_unsigned, e_old):
        os.utime(p, (OLD, OLD))
    w.update(q_old=q_old, q_new=q_new, e_old=e_old, e_new=e_new)
    return w


def _expected(w: dict[str, Any]) -> set[tuple[str, Path]]:
    return {("audio", w["old"]["audio"].parent), ("audio", w["delivered"]["audio"].parent),
            ("quarantine", w["q_old"]), ("export", w["e_old"])}


def test_dry_run_lists_exactly_the_eligible_items_and_deletes_nothing(world) -> None:  # type: ignore[no-untyped-def]
    settings = world["settings"]
    items = retention.plan(settings)
    assert {(i.kind, i.path) for i in items} == _expected(world)
    for item in items:
        assert "Jane" not in item.shown and "Roe" not in item.shown  # names never listed
        assert item.age_days >= DAYS
    assert world["old"]["audio"].exists() and world["q_old"].exists() and world["e_old"].exists()
    with open_store(settings).session() as s:
        assert not list(s.scalars(select(AuditEvent).where(
            AuditEvent.action == "retention_delete")))


def test_dry_run_command_prints_ids_paths_ages_only(world) -> None:  # type: ignore[no-untyped-def]
    settings = world["settings"]
    env = dict(os.environ, DICTATION_DATA_DIR=str(settings.data_path),
               DICTATION_PHYSICIANS="dr-smith,dr-patel",
               DICTATION_RETENTION_AUDIO_DAYS_AFTER_SIGNING=str(DAYS),
               DICTATION_RETENTION_QUARANTINE_DAYS=str(DAYS),
               DICTATION_RETENTION_EXPORTS_DAYS=str(DAYS))
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "retention", "--dry-run"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "4 items eligible (dry run: nothing deleted)" in out.stdout
    assert world["old"]["dictation"] in out.stdout
    assert "Jane" not in out.stdout + out.stderr and "MRN-77" not in out.stdout
    assert world["old"]["audio"].exists() and world["q_old"].exists()


def test_apply_deletes_them_and_audits_each(world) -> None:  # type: ignore[no-untyped-def]
    settings = world["settings"]
    deleted = retention.apply(settings, actor="admin")
    assert {(i.kind, i.path) for i in deleted} == _expected(world)
    assert not world["old"]["audio"].parent.exists()
    assert not world["delivered"]["audio"].parent.exists()
    assert not world["q_old"].exists()
    assert not (settings.quarantine_dir / "Jane_Roe_bad.wav.reason.txt").exists()
    assert not world["e_old"].exists()
    # kept: recent signature, unsigned draft (archive and quarantine), new files
    for path in (world["recent"]["audio"], world["unsigned"]["audio"],
                 world["unsigned"]["audio_q"], world["q_new"], world["e_new"]):
        assert path.exists()
    with open_store(settings).session() as s:
        events = list(s.scalars(select(AuditEvent).where(
            AuditEvent.action == "retention_delete").order_by(AuditEvent.id)))
        assert len(events) == 4 and {e.outcome for e in events} == {"ok"}
        assert {e.actor for e in events} == {"admin"}
        assert world["old"]["dictation"] in {e.object_id for e in events}
        for e in events:
            assert "Jane" not in str(e.detail) and e.patient_ref is None
        assert s.get(DictationRow, world["old"]["dictation"]).audio_path is None
        assert s.get(DraftRow, world["old"]["draft"]).status == "signed"  # document kept
        assert audit.verify(s).ok
    assert retention.plan(settings) == []  # nothing left to do


def test_unsigned_audio_is_never_deleted(world) -> None:  # type: ignore[no-untyped-def]
    """Rules at 0 days: everything old enough, yet the unsigned draft's audio stays, even
    when an item for it is handed to apply directly."""
    settings = world["settings"]
    settings.retention_audio_days_after_signing = 0
    settings.retention_quarantine_days = 0
    items = retention.plan(settings)
    paths = {i.path for i in items}
    assert world["unsigned"]["audio"].parent not in paths
    assert world["unsigned"]["audio_q"] not in paths
    assert world["recent"]["audio"].parent in paths  # 0 days: any signed draft qualifies
    forged = retention.RetentionItem("audio", world["unsigned"]["dictation"],
                                     world["unsigned"]["audio"].parent, "archive/x/", 99.0,
                                     "forged", world["unsigned"]["draft"])
    assert retention.apply(settings, [forged]) == []
    assert world["unsigned"]["audio"].exists()
