"""Inbox mechanics without Prefect: names, pick-up of complete files only, atomic claim,
SHA-256 de-duplication (race-safe), quarantine with reasons, archive, resume after a crash."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pipeline.core import files
from pipeline.core.db.core import AuditEvent, DictationRow
from pipeline.core.db.inbox import InboxIntake
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.ingest import inbox


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short real WAV (espeak-ng), about 1.5 s."""
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Follow up in two weeks."], check=True)
    return path


def _variant(wav: Path, dest: Path, n: int) -> Path:
    """A copy of ``wav`` with different bytes (an appended silent sample count) -> new SHA."""
    data = bytearray(wav.read_bytes())
    data += b"\x00\x00" * (n + 1)
    dest.write_bytes(bytes(data))
    return dest


def _rows(settings: Settings) -> list[DictationRow]:
    with open_store(settings).session() as s:
        return list(s.scalars(select(DictationRow).order_by(DictationRow.created_at)))


def _wait(pred, timeout: float = 15.0, every: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return False


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("20261120_A12345_operative_report_stat.wav",
         {"mrn": "A12345", "document_type": "operative_report", "priority": "stat",
          "date_of_service": date(2026, 11, 20)}),
        ("20261120_A12345_consult_note.mp3",
         {"mrn": "A12345", "document_type": "consult_note", "priority": "routine"}),
        ("20260101_MRN-77_letter_ROUTINE.m4a",
         {"mrn": "MRN-77", "document_type": "letter", "priority": "routine"}),
        ("20261320_A1_letter.wav", None),  # month 13: not a date
        ("dictation 14.wav", None),
        ("20261120_A12345.wav", None),  # no document type
    ],
)
def test_filename_convention(name: str, expected: dict | None) -> None:
    """Names following <YYYYMMDD>_<MRN>_<doctype>[_stat] give metadata; others give none."""
    meta = inbox.parse_filename(name)
    if expected is None:
        assert meta is None
        return
    assert meta is not None and meta.source == "filename"
    for key, value in expected.items():
        assert getattr(meta, key) == value


@pytest.mark.parametrize(
    ("name", "ignored"),
    [
        ("a.wav", False), ("a.WAV.part", True), ("a.tmp", True), ("a.wav.crdownload", True),
        ("~$a.docx", True), (".hidden.wav", True), ("a.json", True), ("note.txt", True),
        ("a.mp3", False), ("a.wav.partial", True), ("x~", True),
    ],
)
def test_temporary_names_are_ignored(name: str, ignored: bool) -> None:
    assert inbox.is_ignored(name) is ignored


def test_layout_and_physician_rows(settings: Settings) -> None:
    """Each configured physician gets an inbox folder and a Physician row."""
    from pipeline.core.db.core import Physician

    inbox.ensure_layout(settings)
    for pid in settings.physicians:
        assert (settings.inbox_dir / pid).is_dir()
    for d in (settings.processing_dir, settings.archive_dir, settings.quarantine_dir):
        assert d.is_dir()
    with open_store(settings).session() as s:
        assert set(s.scalars(select(Physician.id))) >= set(settings.physicians)


def test_claim_register_and_duplicate_under_another_name(settings: Settings, wav: Path) -> None:
    """The same recording under two names: one received, one duplicate (archived, linked)."""
    inbox.ensure_layout(settings)
    folder = settings.inbox_dir / "dr-smith"
    a = shutil.copy(wav, folder / "first.wav")
    b = shutil.copy(wav, folder / "second name.wav")
    scanner = inbox.InboxScanner(settings)
    ra = scanner.take(Path(a))
    rb = scanner.take(Path(b))
    assert ra.outcome == "received"
    assert rb.outcome == "duplicate" and rb.duplicate_of == ra.dictation_id
    rows = {r.id: r for r in _rows(settings)}
    assert rows[ra.dictation_id].status == "received"
    assert rows[rb.dictation_id].status == "duplicate"
    assert rows[rb.dictation_id].duplicate_of == ra.dictation_id
    # the duplicate is archived (kept, not processed); the original waits in processing/;
    # both under their opaque stored names, the recorder's names in the rows only
    assert (settings.archive_dir / rb.dictation_id / f"{rb.dictation_id}.wav").exists()
    assert (settings.processing_dir / ra.dictation_id / f"{ra.dictation_id}.wav").exists()
    assert rows[rb.dictation_id].original_name == "second name.wav"
    assert rows[rb.dictation_id].audio_path.startswith(str(settings.archive_dir))
    assert not list(folder.iterdir())


def test_concurrent_intake_of_same_audio_is_race_safe(settings: Settings, wav: Path) -> None:
    """Eight threads register eight copies of one recording at once: exactly one wins."""
    inbox.ensure_layout(settings)
    folder = settings.inbox_dir / "dr-patel"
    paths = [Path(shutil.copy(wav, folder / f"copy{i}.wav")) for i in range(8)]
    scanners = [inbox.InboxScanner(settings) for _ in paths]
    results: list[inbox.IntakeResult] = []
    barrier = threading.Barrier(len(paths))

    def go(sc: inbox.InboxScanner, p: Path) -> None:
        barrier.wait()
        results.append(sc.take(p))

    pairs = zip(scanners, paths, strict=True)
    threads = [threading.Thread(target=go, args=(sc, p)) for sc, p in pairs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcomes = sorted(r.outcome for r in results)
    assert outcomes == ["duplicate"] * 7 + ["received"]
    with open_store(settings).session() as s:
        assert s.scalar(select(func.count()).select_from(InboxIntake)) == 1


def test_two_instances_racing_for_one_file(settings: Settings, wav: Path) -> None:
    """Two scanners take the same path at once: one claims it, the other finds it gone."""
    inbox.ensure_layout(settings)
    path = Path(shutil.copy(wav, settings.inbox_dir / "dr-smith" / "race.wav"))
    barrier = threading.Barrier(2)
    results: list[inbox.IntakeResult] = []

    def go() -> None:
        sc = inbox.InboxScanner(settings)
        barrier.wait()
        results.append(sc.take(path))

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.outcome for r in results) == ["received", "vanished"]
    assert len(_rows(settings)) == 1
    # the loser left no empty folder behind
    assert len(list(settings.processing_dir.iterdir())) == 1


def test_file_removed_between_event_and_claim(settings: Settings, wav: Path) -> None:
    """A file that disappears before the claim is reported, nothing breaks, nothing is left."""
    inbox.ensure_layout(settings)
    path = Path(shutil.copy(wav, settings.inbox_dir / "dr-smith" / "gone.wav"))
    scanner = inbox.InboxScanner(settings)
    scanner.poke(path, "closed")
    path.unlink()
    result = scanner.take(path)
    assert result.outcome == "vanished" and "removed" in (result.reason or "")
    assert scanner.stats.vanished == 1
    assert list(settings.processing_dir.iterdir()) == []
    assert _rows(settings) == []


@pytest.mark.parametrize(
    ("case", "reason_part", "code"),
    [
        ("zero_byte", "is empty (0 bytes)", "empty_audio"),
        ("bad_sidecar", "is not valid JSON", "sidecar_error"),
        ("unknown_field_sidecar", "is not a known field", "sidecar_error"),
        ("unknown_physician", "not a configured physician folder", "unknown_physician"),
        ("inbox_root", "the inbox root", "unknown_physician"),
    ],
)
def test_bad_input_is_quarantined_with_reason(
    settings: Settings, wav: Path, case: str, reason_part: str, code: str
) -> None:
    """Bad input moves to quarantine/ with <name>.reason.txt, a row and an audit event."""
    inbox.ensure_layout(settings)
    folder = settings.inbox_dir / "dr-smith"
    if case == "zero_byte":
        path = folder / "empty.wav"
        path.write_bytes(b"")
    elif case in ("bad_sidecar", "unknown_field_sidecar"):
        path = Path(shutil.copy(wav, folder / "with sidecar.wav"))
        text = '{"mrn": "A1", ' if case == "bad_sidecar" else json.dumps({"patient_nam": "x"})
        path.with_suffix(".json").write_text(text)
    elif case == "unknown_physician":
        (settings.inbox_dir / "dr-nobody").mkdir()
        path = Path(shutil.copy(wav, settings.inbox_dir / "dr-nobody" / "lost.wav"))
    else:
        path = Path(shutil.copy(wav, settings.inbox_dir / "root.wav"))
    result = inbox.InboxScanner(settings).take(path)
    assert result.outcome == "quarantined"
    quarantined = settings.quarantine_dir / f"{result.dictation_id}.wav"  # opaque name
    assert quarantined.exists(), list(settings.quarantine_dir.iterdir())
    reason = (settings.quarantine_dir / f"{quarantined.name}.reason.txt").read_text()
    assert reason_part in reason and reason.count("\n") == 1
    assert path.name not in reason
    if case.endswith("sidecar"):
        assert quarantined.with_suffix(".json").exists()  # the sidecar is kept beside it
    (row,) = _rows(settings)
    assert row.status == "quarantined" and row.error_code == code
    assert row.audio_path == str(quarantined) and row.original_name == path.name
    with open_store(settings).session() as s:
        actions = list(s.scalars(select(AuditEvent.action).where(AuditEvent.object_id == row.id)))
    assert "quarantine" in actions
    assert list(settings.processing_dir.iterdir()) == []


def test_sidecar_metadata_and_grace_period(settings: Settings, wav: Path) -> None:
    """Audio waits for its sidecar within the grace period; the sidecar's data is used."""
    settings = settings.model_copy(update={"sidecar_grace_seconds": 1.5, "stable_seconds": 0.1})
    inbox.ensure_layout(settings)
    folder = settings.inbox_dir / "dr-patel"
    audio = Path(shutil.copy(wav, folder / "visit.wav"))
    scanner = inbox.InboxScanner(settings)
    t0 = time.monotonic()
    assert scanner.step(t0) == []
    assert scanner.step(t0 + 0.5) == []  # stable, but the grace period is not over
    sidecar = audio.with_suffix(".json")
    sidecar.write_text(json.dumps({"mrn": "A777", "priority": "STAT",
                                   "document_type": "Operative Report"}))
    os.utime(sidecar, (time.time() - 5, time.time() - 5))  # written a while ago
    (result,) = scanner.step(t0 + 0.6)
    assert result.outcome == "received" and result.priority == "stat"
    (row,) = _rows(settings)
    assert row.meta["mrn"] == "A777" and row.meta["source"] == "sidecar"
    assert row.document_type == "operative_report" and row.physician_id == "dr-patel"
    assert (settings.processing_dir / row.id / f"{row.id}.json").exists()
    assert row.original_name == "visit.wav"


def test_no_sidecar_uses_filename_after_grace(settings: Settings, wav: Path) -> None:
    """Without a sidecar, the file is taken after the grace period with filename metadata."""
    settings = settings.model_copy(update={"sidecar_grace_seconds": 1.0, "stable_seconds": 0.1})
    inbox.ensure_layout(settings)
    Path(shutil.copy(wav, settings.inbox_dir / "dr-smith" / "20261120_B22_consult_note.wav"))
    scanner = inbox.InboxScanner(settings)
    t0 = time.monotonic()
    assert scanner.step(t0) == []
    assert scanner.step(t0 + 0.5) == []
    (result,) = scanner.step(t0 + 1.1)
    assert result.outcome == "received"
    (row,) = _rows(settings)
    assert row.meta["source"] == "filename" and row.meta["mrn"] == "B22"


def _slow_write(path: Path, data: bytes, chunks: int, pause: float, reopen: bool) -> None:
    step = len(data) // chunks + 1
    if reopen:
        for i in range(chunks):
            with open(path, "ab") as fh:
                fh.write(data[i * step:(i + 1) * step])
            time.sleep(pause)
        return
    with open(path, "wb") as fh:
        for i in range(chunks):
            fh.write(data[i * step:(i + 1) * step])
            fh.flush()
            time.sleep(pause)


@pytest.mark.parametrize(
    ("watcher", "stable", "pause", "reopen"),
    [
        # inotify: the writer pauses longer than stable_seconds; the missing close holds it
        ("inotify", 0.2, 0.4, False),
        # polling observer (network shares): size+mtime must hold for stable_seconds
        ("polling", 1.0, 0.3, True),
    ],
)
@pytest.mark.slow
def test_slow_writer_is_taken_only_when_complete(
    settings: Settings, wav: Path, watcher: str, stable: float, pause: float, reopen: bool
) -> None:
    """A file written in 10 chunks over several seconds is claimed once, complete."""
    settings = settings.model_copy(update={"watcher": watcher, "stable_seconds": stable,
                                           "sidecar_grace_seconds": 0.0})
    inbox.ensure_layout(settings)
    data = wav.read_bytes() * 4
    scanner = inbox.InboxScanner(settings, rescan_seconds=0.5)
    observer = inbox.start_observer(settings, scanner)
    loop = threading.Thread(target=scanner.run, daemon=True)
    loop.start()
    try:
        target = settings.inbox_dir / "dr-smith" / "slow.wav"
        _slow_write(target, data, 10, pause, reopen)
        assert _wait(lambda: scanner.stats.received + scanner.stats.errors >= 1, 20)
        # nothing left to take: a second (early) claim of the file cannot still happen
        assert _wait(scanner.idle, 20)
    finally:
        scanner.stop()
        observer.stop()
        observer.join(5)
        loop.join(30)
    assert not loop.is_alive()
    rows = _rows(settings)
    assert len(rows) == 1 and rows[0].status == "received"
    claimed = settings.processing_dir / rows[0].id / f"{rows[0].id}.wav"
    assert files.is_encrypted(claimed)  # stored encrypted; read through the layer
    assert files.read_bytes(claimed, settings) == data
    # hashed at claim time: equal only if the file was complete when it was claimed
    assert rows[0].sha256 == hashlib.sha256(data).hexdigest()
    assert not target.exists()


def test_rescan_finds_files_dropped_while_down(settings: Settings, wav: Path) -> None:
    """Files already in the inbox at start (events missed) are found by the rescan."""
    settings = settings.model_copy(update={"stable_seconds": 0.1, "sidecar_grace_seconds": 0})
    inbox.ensure_layout(settings)
    for i in range(3):
        _variant(wav, settings.inbox_dir / "dr-smith" / f"old{i}.wav", i)
    scanner = inbox.InboxScanner(settings)
    t0 = time.monotonic()
    scanner.step(t0)
    results = scanner.step(t0 + 0.2)
    assert sorted(r.outcome for r in results) == ["received"] * 3


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_resume_after_crash(settings: Settings, wav: Path) -> None:
    """After a crash (the claiming process is gone): a claimed folder without a row is
    registered, a finished one is archived, unfinished rows are submitted again; folders
    claimed by a live process are left alone."""
    inbox.ensure_layout(settings)
    dead = {"host": socket.gethostname(), "pid": _dead_pid()}
    # 1. crashed between claim and register
    orphan = settings.processing_dir / ("a" * 32)
    orphan.mkdir()
    shutil.copy(wav, orphan / "crash.wav")
    (orphan / "claim.json").write_text(json.dumps({"physician_folder": "dr-smith",
                                                   "original_name": "crash.wav", **dead}))
    # 2. finished, crashed before archiving
    done = inbox.InboxScanner(settings).take(
        _variant(wav, settings.inbox_dir / "dr-patel" / "done.wav", 3))
    claim_file = settings.processing_dir / done.dictation_id / ".claim"
    claim_file.write_text(json.dumps({**json.loads(claim_file.read_text()), **dead}))
    with open_store(settings).session() as s:
        s.get(DictationRow, done.dictation_id).status = "done"
    # 3. claimed by a live process (this one) and not yet submitted: not touched
    live = inbox.InboxScanner(settings).take(
        _variant(wav, settings.inbox_dir / "dr-patel" / "live.wav", 4))
    # 4. submitted before, its flow run crashed: submitted again
    stuck = inbox.InboxScanner(settings).take(
        _variant(wav, settings.inbox_dir / "dr-patel" / "stuck.wav", 5))
    with open_store(settings).session() as s:
        row = s.get(DictationRow, stuck.dictation_id)
        row.status, row.flow_run_id = "processing", "crashed-run"
    submitted: list[tuple[str, str]] = []
    counts = inbox.resume(settings, lambda did, prio: submitted.append((did, prio)) or "run-1",
                          should_resubmit=lambda run_id: run_id == "crashed-run")
    assert counts == {"registered": 1, "archived": 1, "resubmitted": 1}
    assert (settings.archive_dir / done.dictation_id / f"{done.dictation_id}.wav").exists()
    assert [d for d, _ in submitted] == ["a" * 32, stuck.dictation_id]  # once each
    assert live.dictation_id not in [d for d, _ in submitted]
    with open_store(settings).session() as s:
        legacy = s.get(DictationRow, "a" * 32)  # an older version's clear claim record
        assert legacy.flow_run_id == "run-1" and legacy.original_name == "crash.wav"


def test_redrop_after_failure_is_a_retry_not_a_duplicate(settings: Settings, wav: Path) -> None:
    """A quarantined/failed file moved back into the inbox is processed again."""
    inbox.ensure_layout(settings)
    first = inbox.InboxScanner(settings).take(Path(shutil.copy(
        wav, settings.inbox_dir / "dr-smith" / "again.wav")))
    inbox.quarantine(settings, first.dictation_id, "Disk was full.", code="OSError",
                     status="failed")
    # moved back under its stored (opaque) name: registered under the recorder's name again
    stored = f"{first.dictation_id}.wav"
    back = Path(shutil.copy(settings.quarantine_dir / stored,
                            settings.inbox_dir / "dr-smith" / stored))
    second = inbox.InboxScanner(settings).take(back)
    assert second.outcome == "received" and second.dictation_id != first.dictation_id
    with open_store(settings).session() as s:
        assert s.scalar(select(InboxIntake.dictation_id)) == second.dictation_id
        assert s.get(DictationRow, second.dictation_id).original_name == "again.wav"


def test_status_counts_and_recent_hold_no_names(settings: Settings, wav: Path) -> None:
    """Status lists ids and codes only, never the (possibly identifying) file name."""
    inbox.ensure_layout(settings)
    inbox.InboxScanner(settings).take(Path(shutil.copy(
        wav, settings.inbox_dir / "dr-smith" / "20261120_MRN999_letter.wav")))
    counts = inbox.status_counts(settings)
    assert counts["received"] == 1 and counts["done"] == 0
    text = json.dumps(inbox.recent(settings))
    assert "MRN999" not in text and "letter.wav" not in text


@pytest.mark.slow
def test_hundred_files_at_once_are_each_taken_exactly_once(settings: Settings, wav: Path) -> None:
    """100 files dropped at once while two scanners (two service instances) watch: every file
    is claimed and submitted exactly once, none lost, none twice; the counts match."""
    settings = settings.model_copy(update={"stable_seconds": 0.2, "sidecar_grace_seconds": 0.0})
    inbox.ensure_layout(settings)
    submitted: list[str] = []
    lock = threading.Lock()

    def submit(did: str, priority: str) -> str:
        with lock:
            submitted.append(did)
        return f"run-{did}"

    scanners = [inbox.InboxScanner(settings, submit, rescan_seconds=1.0) for _ in range(2)]
    observers = [inbox.start_observer(settings, sc) for sc in scanners]
    loops = [threading.Thread(target=sc.run, daemon=True) for sc in scanners]
    for t in loops:
        t.start()
    try:
        for i in range(100):
            folder = settings.inbox_dir / ("dr-smith", "dr-patel")[i % 2]
            _variant(wav, folder / f"burst{i:03d}.wav", i)
        assert _wait(lambda: sum(sc.stats.received for sc in scanners) >= 100, 60)
        # no scanner tracks a file any more and the inbox is empty: no second claim can
        # start; one already under way ends before its thread does (joined below)
        assert _wait(lambda: all(sc.idle() for sc in scanners), 30)
    finally:
        for sc in scanners:
            sc.stop()
        for ob in observers:
            ob.stop()
            ob.join(5)
        for t in loops:
            t.join(30)
    assert not any(t.is_alive() for t in loops)
    rows = _rows(settings)
    assert len(rows) == 100 and {r.status for r in rows} == {"received"}
    assert sorted(r.original_name for r in rows) == [f"burst{i:03d}.wav" for i in range(100)]
    assert sorted(submitted) == sorted(r.id for r in rows)  # each submitted exactly once
    assert sum(sc.stats.received for sc in scanners) == 100
    assert sum(sc.stats.errors for sc in scanners) == 0
    assert len(list(settings.processing_dir.iterdir())) == 100
    assert [f for p in settings.physicians for f in (settings.inbox_dir / p).iterdir()] == []


def test_idle_scanner_sleeps_until_the_rescan_and_wakes_on_a_poke(
        settings: Settings, wav: Path) -> None:
    """With nothing waiting, the loop sleeps until the next full rescan (not every poll
    interval); a watcher event makes it check at the poll interval until the file is taken."""
    inbox.ensure_layout(settings)
    scanner = inbox.InboxScanner(settings, rescan_seconds=30.0)
    scanner.step()
    assert scanner._next_wait() > 20  # idle: ~30 s to the next rescan
    target = settings.inbox_dir / "dr-smith" / "poked.wav"
    shutil.copyfile(wav, target)
    scanner.poke(target, "closed")
    assert scanner._next_wait() == settings.poll_interval_seconds
    scanner._last_scan -= 100  # a rescan long overdue: never a negative or zero wait
    scanner._candidates.clear()
    assert scanner._next_wait() == settings.poll_interval_seconds


def test_recording_named_claim_is_not_confused_with_the_claim_record(
    settings: Settings, wav: Path
) -> None:
    """Regression: the claim record was ``claim.json``, so a recording named ``claim.wav``
    without a sidecar had the record read as its sidecar (quarantined: "physician_folder is
    not a known field"), and one with a sidecar lost the record under it. The record is
    ``.claim`` now: no sidecar is read for the first, the second's own sidecar is read and
    the record kept."""
    inbox.ensure_layout(settings)
    scanner = inbox.InboxScanner(settings)
    bare = settings.inbox_dir / "dr-smith" / "claim.wav"
    shutil.copy(wav, bare)
    taken = scanner.take(bare)
    folder = settings.processing_dir / taken.dictation_id
    audio = inbox.claimed_audio(folder)
    assert audio is not None and audio.name == f"{taken.dictation_id}.wav"
    assert inbox.load_meta(audio, "dr-smith", settings).mrn is None

    with_sidecar = settings.inbox_dir / "dr-patel" / "claim.wav"
    _variant(wav, with_sidecar, 5)
    with_sidecar.with_suffix(".json").write_text(json.dumps({"mrn": "Z12345"}))
    taken = scanner.take(with_sidecar)
    folder = settings.processing_dir / taken.dictation_id
    audio = inbox.claimed_audio(folder)
    assert audio is not None
    assert inbox.load_meta(audio, "dr-patel", settings).mrn == "Z12345"
    record = json.loads((folder / ".claim").read_text())
    assert "claim.wav" not in json.dumps(record)  # the recorder's name is sealed in it
    assert inbox.original_name(folder, settings) == "claim.wav"


def test_claim_folder_without_its_record_yet_is_not_taken_over(settings: Settings) -> None:
    """Regression (scale-out, two instances starting together): a claim folder another
    instance has just made, before it wrote the record, counted as a crash's leftover; the
    second instance took it over and the file was registered twice (a duplicate row). Such a
    folder is left alone until it is older than ``CLAIM_RECORD_GRACE_SECONDS``."""
    inbox.ensure_layout(settings)
    folder = settings.processing_dir / ("b" * 32)
    folder.mkdir()
    assert not inbox.claim_is_stale(folder)
    old = time.time() - inbox.CLAIM_RECORD_GRACE_SECONDS - 5
    os.utime(folder, (old, old))
    assert inbox.claim_is_stale(folder)
