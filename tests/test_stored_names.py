"""Names on disk are opaque: a recorder's file name (which may carry a patient's name or MRN)
never becomes a file or folder name under the data directory, nor clear text in a claim
record or a quarantine reason; the database keeps it (``DictationRow.original_name``), and a
claim killed before registering still resumes with it (issue #17)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from pipeline.core.db.core import DictationRow, DraftRow
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.ingest import inbox

SURNAME, MRN = "Smith", "123456"
NAME = f"{SURNAME}_John_MRN{MRN}.wav"
CONVENTION = f"20261120_{SURNAME}{MRN}_progress_note.wav"  # the filename convention: MRN in it


def _rows(settings: Settings) -> list[DictationRow]:
    with open_store(settings).session() as s:
        return list(s.scalars(select(DictationRow).order_by(DictationRow.created_at)))


def _leaks(settings: Settings) -> list[str]:
    """Every path under the data directory whose name holds the surname or the MRN, and
    every claim record or quarantine reason whose text does."""
    found = []
    for path in settings.data_path.rglob("*"):
        rel = str(path.relative_to(settings.data_path))
        if SURNAME in path.name or MRN in path.name:
            found.append(rel)
        elif path.is_file() and (path.name in (".claim", "claim.json")
                                 or path.name.endswith(".reason.txt")):
            text = path.read_text(encoding="utf-8", errors="replace")
            if SURNAME in text or MRN in text:
                found.append(f"{rel} (content)")
    return found


def _process(settings: Settings, did: str) -> DraftRow:
    """Run a registered dictation to a queued draft, as the flow does, and archive it."""
    from pipeline.service.process import (
        enqueue_stage,
        load_dictation,
        normalize_stage,
        render_stage,
        structure_stage,
        transcribe_stage,
    )

    with open_store(settings).session() as s:
        row = s.get(DictationRow, did)
        assert row is not None
        path, physician = Path(str(row.audio_path)), row.physician_id
    meta = inbox.load_meta(path, physician, settings)  # the flow's call: name from the claim
    d = load_dictation(path, settings, meta, dictation_id=did)
    t = transcribe_stage(d, settings)
    n = normalize_stage(t, d, settings)
    doc = structure_stage(n, d, settings)
    enqueue_stage(d, t, n, doc, render_stage(doc, d, t, n, settings), settings)
    inbox.archive(settings, did)
    with open_store(settings).session() as s:
        draft = s.scalars(select(DraftRow).where(DraftRow.dictation_id == did)).one()
        s.expunge(draft)
    return draft


def test_stored_name_keeps_only_known_audio_extensions() -> None:
    """The stored name is the dictation id and a known audio extension; an extension that
    could be part of a name (``Smith.A12345``) is not carried over."""
    did = "ab" * 16
    assert inbox.stored_name(did, "Smith_John.WAV") == f"{did}.wav"
    assert inbox.stored_name(did, "x.m4a") == f"{did}.m4a"
    assert inbox.stored_name(did, "Smith.A12345") == f"{did}.audio"
    assert inbox.stored_name(did, "no extension") == f"{did}.audio"


@pytest.mark.slow
def test_patient_named_file_leaves_no_name_on_disk(settings: Settings, speech: Path) -> None:
    """A recording named ``Smith_John_MRN123456.wav`` with its sidecar, processed to a draft
    and archived; a second one named by the filename convention; an empty one quarantined;
    an orphan sidecar quarantined: no file or folder name under the data directory, no claim
    record and no quarantine reason holds the surname or the MRN. The rows keep the names,
    the sidecar's and the convention's metadata reach the drafts, and the quarantined
    file's full reason (with its name) is in its row."""
    settings = settings.model_copy(update={"sidecar_grace_seconds": 0.0,
                                           "orphan_sidecar_seconds": 0.0})
    inbox.ensure_layout(settings)
    folder = settings.inbox_dir / "dr-smith"
    shutil.copy(speech, folder / NAME)
    (folder / NAME).with_suffix(".json").write_text(json.dumps(
        {"patient_name": "John Smith", "mrn": f"MRN{MRN}"}), encoding="utf-8")
    scanner = inbox.InboxScanner(settings)
    first = scanner.take(folder / NAME)
    assert first.outcome == "received" and first.dictation_id
    claim = json.loads((settings.processing_dir / first.dictation_id / ".claim").read_text())
    assert claim["stored_name"] == f"{first.dictation_id}.wav"
    assert SURNAME not in json.dumps(claim) and MRN not in json.dumps(claim)
    draft = _process(settings, first.dictation_id)
    assert (draft.patient_name, draft.mrn) == ("John Smith", f"MRN{MRN}")

    other = folder / CONVENTION
    other.write_bytes(speech.read_bytes() + b"\x00\x00")  # other bytes: not a duplicate
    second = scanner.take(other)
    assert second.outcome == "received" and second.dictation_id
    assert _process(settings, second.dictation_id).mrn == f"{SURNAME}{MRN}"

    empty = folder / f"{SURNAME}_Jane_MRN{MRN}_empty.wav"
    empty.write_bytes(b"")
    bad = scanner.take(empty)
    assert bad.outcome == "quarantined"
    orphan = folder / f"{SURNAME}_Nobody_MRN{MRN}.json"
    orphan.write_text(json.dumps({"mrn": f"MRN{MRN}"}), encoding="utf-8")
    os.utime(orphan, (time.time() - 60, time.time() - 60))
    assert inbox.attach_late_sidecar(settings, orphan, orphan_after=True) is not None
    assert not orphan.exists()

    assert _leaks(settings) == []
    rows = {r.id: r for r in _rows(settings)}
    assert rows[first.dictation_id].original_name == NAME
    assert rows[second.dictation_id].original_name == CONVENTION
    quarantined = rows[bad.dictation_id or ""]
    assert quarantined.original_name == empty.name
    assert empty.name in (quarantined.error_message or "")  # the full reason: in the row
    assert Path(str(quarantined.audio_path)).name == f"{bad.dictation_id}.wav"
    reason = Path(f"{quarantined.audio_path}.reason.txt").read_text(encoding="utf-8")
    assert "is empty" in reason


_KILLED_CLAIM = r"""
import os, signal, sys
from pathlib import Path
from pipeline.core.settings import Settings
from pipeline.ingest import inbox
s = Settings(data_dir=sys.argv[1], physicians=["dr-smith", "dr-patel"])
did = inbox.claim(Path(sys.argv[2]), s, "dr-smith")
print(did, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # killed between the claim and the register
"""


@pytest.mark.slow
def test_resume_after_a_killed_claim_registers_it_under_its_name(
        settings: Settings, speech: Path) -> None:
    """A process killed right after claiming a file named by the filename convention
    (renamed to its opaque name, its name sealed in the claim record): ``resume`` in another
    process registers it with the recorder's name and the convention's MRN, and it is then
    processed to a draft; no name on disk ever held the MRN."""
    inbox.ensure_layout(settings)
    dropped = settings.inbox_dir / "dr-smith" / CONVENTION
    shutil.copy(speech, dropped)
    child = subprocess.run([sys.executable, "-c", _KILLED_CLAIM, str(settings.data_path),
                            str(dropped)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "DICTATION_KEY_FILE": str(settings.key_file)})
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    did = child.stdout.split()[0]
    folder = settings.processing_dir / did
    assert (folder / f"{did}.wav").is_file() and not dropped.exists()
    assert _rows(settings) == []  # killed before the row was written
    assert inbox.claim_is_stale(folder)  # its process is gone
    assert _leaks(settings) == []

    submitted: list[str] = []
    counts = inbox.resume(settings, lambda d, _prio: submitted.append(d) or "run-1")
    assert counts["registered"] == 1 and submitted == [did]
    (row,) = _rows(settings)
    assert row.original_name == CONVENTION and row.meta["mrn"] == f"{SURNAME}{MRN}"
    draft = _process(settings, did)
    assert draft.mrn == f"{SURNAME}{MRN}" and draft.status == "queued_for_review"
    assert (settings.archive_dir / did / f"{did}.wav").is_file()
    assert _leaks(settings) == []
