"""The inbox under faults (issue #18, intake side): unreadable files, links and special files,
subfolders, half-written files, truncated compressed audio, late sidecars, moves from another
folder. Each test failed on the code before the fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from pipeline.core import files
from pipeline.core.db.core import AuditEvent, DictationRow, DraftRow
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.ingest import audio, inbox

MRN = "Q98765"


@pytest.fixture(scope="module")
def wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real WAV (espeak-ng), about 3 s."""
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path),
                    "Follow up in two weeks. Continue the current medication."], check=True)
    return path


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


def _step_until(scanner: inbox.InboxScanner, pred, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        scanner.step()
        if pred():
            return True
        time.sleep(0.05)
    return False


def _reason(settings: Settings, name: str) -> str:
    """The quarantine reason of the dictation the recorder named ``name`` (stored under its
    opaque name: the row's audio path), or of the quarantined inbox file ``name``."""
    for row in _rows(settings):
        if row.original_name == name and row.audio_path:
            return Path(f"{row.audio_path}.reason.txt").read_text(encoding="utf-8")
    (found,) = settings.quarantine_dir.glob("*.reason.txt")
    return found.read_text(encoding="utf-8")


# --- 2: a file the service cannot read ---------------------------------------------------------

_CHILD = r"""
import json, logging, os, sys, time, uuid  # uuid: imported lazily by the claim
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
from pipeline.core.settings import Settings
from pipeline.ingest import inbox
s = Settings(data_dir=sys.argv[1], physicians=["dr-smith"], stable_seconds=0.1,
             sidecar_grace_seconds=0.0, poll_interval_seconds=0.1)
inbox.ensure_layout(s)  # as root (the interpreter lives in /root), then hand over and drop
for top, dirs, files in os.walk(sys.argv[1]):
    for n in [top, *(os.path.join(top, f) for f in dirs + files)]:
        os.lchown(n, 65534, 65534)
os.setgid(65534)
os.setuid(65534)
if sys.argv[2] == "scan":
    sc = inbox.InboxScanner(s)
    out = []
    deadline = time.monotonic() + 10
    while not out and time.monotonic() < deadline:
        out = [r.outcome for r in sc.step()]
        time.sleep(0.1)
    print(json.dumps(out))
else:
    print(json.dumps(inbox.resume(s)))
"""


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_unreadable_file_is_quarantined_and_resume_survives(wav: Path) -> None:
    """The service without read-override rights: a chmod 000 file is quarantined with one
    reason (no row left 'received', nothing left in processing/), a copy left in processing/
    by a crash does not stop resume, and no log line names the file (its MRN)."""
    data = Path(tempfile.mkdtemp(prefix="inbox-nobody-", dir="/tmp"))
    try:
        os.chmod(data, 0o755)
        folder = data / "inbox" / "dr-smith"
        folder.mkdir(parents=True)
        name = f"20261120_{MRN}_consult_note.wav"
        bad = folder / name
        shutil.copy(wav, bad)
        for p in (data, data / "inbox", folder, bad):
            os.chown(p, 65534, 65534)
        os.chmod(bad, 0)

        def child(mode: str) -> subprocess.CompletedProcess[str]:
            env = {**os.environ, "HOME": str(data), "DICTATION_DATA_DIR": str(data),
                   "DICTATION_AUDIT_KEY": "ab" * 32}  # the key file default is under ~root
            return subprocess.run([sys.executable, "-c", _CHILD, str(data), mode],
                                  capture_output=True, text=True, env=env, timeout=120,
                                  cwd=str(data))

        scan = child("scan")
        assert scan.returncode == 0, scan.stderr[-2000:]
        assert json.loads(scan.stdout.strip().splitlines()[-1]) == ["quarantined"]
        settings = Settings(data_dir=data, physicians=["dr-smith"])
        (row,) = _rows(settings)
        assert (row.status, row.error_code) == ("quarantined", "unreadable")
        assert "could not be read" in _reason(settings, name)
        assert list(settings.processing_dir.iterdir()) == []

        # a crash left another unreadable file claimed in processing/ without a row
        left = settings.processing_dir / ("0" * 32)
        left.mkdir()
        (left / "claim.json").write_text(json.dumps(
            {"physician_folder": "dr-smith", "original_name": f"x_{name}", "host": "gone",
             "pid": 1, "claimed_at": "2020-01-01T00:00:00+00:00"}))
        shutil.copy(wav, left / f"x_{name}")
        for p in (left, left / "claim.json", left / f"x_{name}"):
            os.chown(p, 65534, 65534)
        os.chmod(left / f"x_{name}", 0)
        os.utime(left / "claim.json", (1, 1))  # an old claim from another host: stale
        res = child("resume")
        assert res.returncode == 0, res.stderr[-2000:]
        assert json.loads(res.stdout.strip().splitlines()[-1])["registered"] == 1
        assert {r.error_code for r in _rows(settings)} == {"unreadable"}
        for out in (scan, res):
            assert MRN not in out.stderr and MRN not in out.stdout
            assert "Traceback" not in out.stderr
    finally:
        shutil.rmtree(data, ignore_errors=True)


# --- 3: links, special files, subfolders ------------------------------------------------------


def _make_link_zero(p: Path) -> None:
    os.symlink("/dev/zero", p)


def _make_link_passwd(p: Path) -> None:
    os.symlink("/etc/passwd", p)


def _make_fifo(p: Path) -> None:
    os.mkfifo(p)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("maker", "what"),
    [(_make_link_zero, "symbolic link"), (_make_link_passwd, "symbolic link"),
     (_make_fifo, "named pipe")],
    ids=["link-to-dev-zero", "link-to-etc-passwd", "fifo"],
)
@pytest.mark.parametrize("path_taken", ["rescan", "watcher", "resume"])
def test_links_and_special_files_are_quarantined_unopened(
    settings: Settings, wav: Path, maker, what: str, path_taken: str  # type: ignore[no-untyped-def]
) -> None:
    """A link (to /dev/zero, to /etc/passwd) or a FIFO in a physician folder is moved to
    quarantine as it is (the link, not its target), never opened, on every path; a good file
    after it is still taken in."""
    inbox.ensure_layout(settings)
    name = f"20261120_{MRN}_op_note.wav"
    if path_taken == "resume":
        folder = settings.processing_dir / ("f" * 32)
        folder.mkdir()
        (folder / "claim.json").write_text(json.dumps(
            {"physician_folder": "dr-smith", "original_name": name, "host": "elsewhere",
             "pid": 1}))
        os.utime(folder / "claim.json", (1, 1))
        maker(folder / name)
        counts = inbox.resume(settings)
        assert counts["registered"] == 1
    else:
        maker(settings.inbox_dir / "dr-smith" / name)
        scanner = inbox.InboxScanner(settings, rescan_seconds=3600 if path_taken == "watcher"
                                     else 0.1)
        if path_taken == "watcher":
            scanner._last_scan = time.monotonic()  # no rescan: only the event finds it
            scanner.poke(settings.inbox_dir / "dr-smith" / name, "created")
        assert _step_until(scanner, lambda: scanner.stats.quarantined >= 1)
        shutil.copy(wav, settings.inbox_dir / "dr-smith" / "good.wav")
        assert _step_until(scanner, lambda: scanner.stats.received >= 1)
    row = next(r for r in _rows(settings) if r.original_name == name)
    quarantined = settings.quarantine_dir / f"{row.id}.wav"  # opaque, even for an old claim
    assert row.audio_path == str(quarantined) and os.path.lexists(quarantined)
    if what == "symbolic link":
        assert quarantined.is_symlink()  # the link itself was moved
    assert what in _reason(settings, name) and MRN not in _reason(settings, name)
    assert (row.status, row.error_code) == ("quarantined", "not_a_regular_file")
    assert not os.path.lexists(settings.inbox_dir / "dr-smith" / name)


def test_file_in_a_subfolder_is_quarantined_with_reason(settings: Settings, wav: Path) -> None:
    """A file inside a subfolder of a physician folder is not taken as that physician's
    dictation, nor left unseen: it is quarantined with a reason."""
    inbox.ensure_layout(settings)
    sub = settings.inbox_dir / "dr-smith" / "old"
    sub.mkdir()
    shutil.copy(wav, sub / "nested.wav")
    scanner = inbox.InboxScanner(settings, rescan_seconds=0.1)
    assert _step_until(scanner, lambda: scanner.stats.quarantined >= 1)
    (row,) = _rows(settings)
    assert (row.status, row.error_code) == ("quarantined", "in_subfolder")
    assert "subfolder" in _reason(settings, "nested.wav")
    assert sub.is_dir() and not any(sub.iterdir())


def test_oversized_file_is_refused_without_hashing_it(settings: Settings, wav: Path) -> None:
    """Reads are bounded: a file over max_file_bytes is quarantined from its size."""
    settings = settings.model_copy(update={"max_file_bytes": 1000})
    inbox.ensure_layout(settings)
    shutil.copy(wav, settings.inbox_dir / "dr-smith" / "big.wav")
    scanner = inbox.InboxScanner(settings, rescan_seconds=0.1)
    assert _step_until(scanner, lambda: scanner.stats.quarantined >= 1)
    (row,) = _rows(settings)
    assert row.error_code == "file_too_large"


# --- 4: half-written files ---------------------------------------------------------------------


def _close_reopen_writer(path: Path, data: bytes, chunks: int, pause: float) -> None:
    """Write the header (with the full length) first, then the rest in chunks, closing and
    reopening the file between chunks, as some recorder sync tools do."""
    step = len(data) // chunks + 1
    for i in range(chunks):
        with open(path, "ab") as fh:
            fh.write(data[i * step:(i + 1) * step])
        time.sleep(pause)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("watcher", "stable", "pause"),
                         [("inotify", 0.3, 2.0), ("polling", 0.6, 1.5)])
@pytest.mark.slow
def test_half_written_file_is_taken_only_when_complete(
    settings: Settings, wav: Path, watcher: str, stable: float, pause: float
) -> None:
    """A WAV written in 4 chunks with pauses longer than the stability time (closed and
    reopened between chunks, or a stalled copy seen by the polling watcher) is claimed once,
    complete: not as a draft of its first chunk."""
    settings = settings.model_copy(update={"watcher": watcher, "stable_seconds": stable,
                                           "sidecar_grace_seconds": 0.0})
    inbox.ensure_layout(settings)
    data = wav.read_bytes()
    scanner = inbox.InboxScanner(settings, rescan_seconds=0.5)
    observer = inbox.start_observer(settings, scanner)
    loop = threading.Thread(target=scanner.run, daemon=True)
    loop.start()
    target = settings.inbox_dir / "dr-smith" / "chunked.wav"
    try:
        _close_reopen_writer(target, data, 4, pause)
        assert _wait(lambda: scanner.stats.received + scanner.stats.quarantined
                     + scanner.stats.errors >= 1, 30)
        time.sleep(0.5)
    finally:
        scanner.stop()
        observer.stop()
        observer.join(5)
        loop.join(5)
    rows = _rows(settings)
    assert [r.status for r in rows] == ["received"]
    stored = settings.processing_dir / rows[0].id / f"{rows[0].id}.wav"
    assert files.read_bytes(stored, settings) == data  # stored encrypted: through the layer


def test_file_still_short_after_the_limit_is_taken(settings: Settings, wav: Path) -> None:
    """A WAV that stays short of its header (the writer died) is taken after
    truncated_wait_seconds, and is flagged truncated by probe."""
    settings = settings.model_copy(update={"truncated_wait_seconds": 0.5,
                                           "sidecar_grace_seconds": 0.0})
    inbox.ensure_layout(settings)
    data = wav.read_bytes()
    target = settings.inbox_dir / "dr-smith" / "cut.wav"
    target.write_bytes(data[: len(data) // 2])
    scanner = inbox.InboxScanner(settings, rescan_seconds=0.1)
    t0 = time.monotonic()
    scanner.step()
    time.sleep(settings.stable_seconds + 0.1)
    assert scanner.step() == []  # stable, but short of its header: still waiting
    assert _step_until(scanner, lambda: scanner.stats.received >= 1)
    assert time.monotonic() - t0 >= 0.5
    (row,) = _rows(settings)
    assert audio.probe(Path(str(row.audio_path)), settings).truncated


# --- 5: truncated compressed audio ---------------------------------------------------------------


@pytest.fixture(scope="module")
def cut_mp3(wav: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("mp3")
    full = d / "full.mp3"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), str(full)],
                   check=True)
    raw = full.read_bytes()
    cut = d / "cut.mp3"
    cut.write_bytes(raw[: len(raw) // 2])
    return cut


@pytest.mark.slow
def test_truncated_mp3_draft_is_flagged(cut_mp3: Path, settings: Settings) -> None:
    """An MP3 cut in half (its header states the full length) becomes a draft flagged
    truncated, with the duration actually present."""
    from pipeline.service.process import process_file

    result = process_file(cut_mp3, settings)
    assert result.dictation.audio.truncated
    assert "truncated" in result.transcript.flags
    with open_store(settings).session() as s:
        draft = s.get(DraftRow, result.draft.id)
        assert draft is not None and "truncated" in draft.flags


# --- 7: late sidecars ----------------------------------------------------------------------------


def _processed(settings: Settings, wav: Path, name: str) -> tuple[str, str]:
    """Take ``name`` in without a sidecar and run it to a queued draft, as the flow does."""
    from pipeline.service.process import (
        enqueue_stage,
        load_dictation,
        normalize_stage,
        render_stage,
        structure_stage,
        transcribe_stage,
    )

    shutil.copy(wav, settings.inbox_dir / "dr-smith" / name)
    scanner = inbox.InboxScanner(settings, rescan_seconds=0.1)
    assert _step_until(scanner, lambda: scanner.stats.received >= 1)
    (row,) = _rows(settings)
    meta = inbox.load_meta(Path(str(row.audio_path)), row.physician_id)
    d = load_dictation(Path(str(row.audio_path)), settings, meta, dictation_id=row.id)
    t = transcribe_stage(d, settings)
    n = normalize_stage(t, d, settings)
    doc = structure_stage(n, d, settings)
    draft = enqueue_stage(d, t, n, doc, render_stage(doc, d, t, n, settings), settings)
    inbox.archive(settings, row.id)
    return row.id, draft.id


@pytest.mark.slow
def test_late_sidecar_is_attached_to_its_draft(settings: Settings, wav: Path) -> None:
    """A sidecar arriving after its audio was processed updates the dictation's metadata,
    the queued draft's header and priority, flags the draft late_sidecar, moves beside the
    archived audio, and is audited."""
    inbox.ensure_layout(settings)
    did, draft_id = _processed(settings, wav, "late.wav")
    sidecar = settings.inbox_dir / "dr-smith" / "late.json"
    sidecar.write_text(json.dumps({"patient_name": "Jane Roe", "mrn": MRN,
                                   "priority": "stat"}))
    os.utime(sidecar, (time.time() - 5, time.time() - 5))
    rerendered: list[str] = []
    scanner = inbox.InboxScanner(settings, rescan_seconds=0.1,
                                 on_late_sidecar=rerendered.append)
    assert _step_until(scanner, lambda: scanner.stats.late_sidecars >= 1)
    assert rerendered == [draft_id]
    assert not sidecar.exists()
    assert (settings.archive_dir / did / f"{did}.json").is_file()  # beside its audio, opaque
    with open_store(settings).session() as s:
        row = s.get(DictationRow, did)
        draft = s.get(DraftRow, draft_id)
        assert row is not None and draft is not None
        assert row.meta["mrn"] == MRN and row.priority == "stat"
        assert "late_sidecar" in draft.flags
        assert (draft.mrn, draft.patient_name, draft.priority) == (MRN, "Jane Roe", "stat")
        assert draft.document["header"]["patient_name"]["value"] == "Jane Roe"
        assert draft.document["header"]["mrn"]["source"] == "sidecar"
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "late_sidecar")).all()
        assert [e.object_id for e in events] == [did]


@pytest.mark.slow
def test_late_sidecar_waits_while_processing_and_orphans_are_quarantined(
    settings: Settings, wav: Path
) -> None:
    """A late sidecar waits while its dictation is still being processed; a sidecar
    matching no dictation is quarantined with a visible reason after the orphan wait."""
    settings = settings.model_copy(update={"sidecar_grace_seconds": 0.0,
                                           "orphan_sidecar_seconds": 0.3})
    inbox.ensure_layout(settings)
    shutil.copy(wav, settings.inbox_dir / "dr-smith" / "pending.wav")
    scanner = inbox.InboxScanner(settings, rescan_seconds=0.1)
    assert _step_until(scanner, lambda: scanner.stats.received >= 1)
    waiting = settings.inbox_dir / "dr-smith" / "pending.json"
    orphan = settings.inbox_dir / "dr-smith" / "nobody.json"
    for p in (waiting, orphan):
        p.write_text(json.dumps({"mrn": MRN}))
        os.utime(p, (time.time() - 5, time.time() - 5))
    assert _step_until(scanner, lambda: not orphan.exists(), timeout=5)
    assert "matches no dictation" in _reason(settings, "nobody.json")
    assert waiting.exists()  # its dictation is still 'received'
    with open_store(settings).session() as s:
        assert s.scalars(select(AuditEvent).where(
            AuditEvent.object_type == "inbox_file")).first() is not None


# --- 8: a move from another folder --------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_file_moved_in_from_another_folder_is_taken_at_once(
    settings: Settings, wav: Path
) -> None:
    """A file written elsewhere on the same filesystem and renamed into the inbox (inotify
    IN_MOVED_TO without IN_MOVED_FROM) is final: taken after the short settle, not after the
    open-writer cap (60 s) nor the full stability time. The stability time is set far above the
    wait (600 s vs 20 s), so the file can only arrive in time if the move counted as final."""
    settings = settings.model_copy(update={"watcher": "inotify", "stable_seconds": 600.0,
                                           "sidecar_grace_seconds": 0.0})
    inbox.ensure_layout(settings)
    outside = settings.data_path / "elsewhere"
    outside.mkdir()
    shutil.copy(wav, outside / "moved.wav")
    time.sleep(0.1)
    scanner = inbox.InboxScanner(settings, rescan_seconds=3600)
    observer = inbox.start_observer(settings, scanner)
    loop = threading.Thread(target=scanner.run, daemon=True)
    loop.start()
    try:
        time.sleep(0.3)
        os.rename(outside / "moved.wav", settings.inbox_dir / "dr-smith" / "moved.wav")
        assert _wait(lambda: scanner.stats.received >= 1, 20)
    finally:
        scanner.stop()
        observer.stop()
        observer.join(5)
        loop.join(5)


@pytest.mark.slow
def test_late_sidecar_renders_the_queued_draft_again(settings: Settings, wav: Path) -> None:
    """With the service's callback (``review.versions.rerender_by_id``), the queued draft's
    .docx is rendered again with the late sidecar's patient name."""
    import io
    import zipfile

    from pipeline.review.versions import rerender_by_id

    inbox.ensure_layout(settings)
    _did, draft_id = _processed(settings, wav, "late.wav")
    sidecar = settings.inbox_dir / "dr-smith" / "late.json"
    sidecar.write_text(json.dumps({"patient_name": "Jane Roe", "mrn": MRN}))
    os.utime(sidecar, (time.time() - 5, time.time() - 5))
    done: list[bool] = []
    scanner = inbox.InboxScanner(
        settings, rescan_seconds=0.1,
        on_late_sidecar=lambda d: done.append(rerender_by_id(settings, d)))
    assert _step_until(scanner, lambda: scanner.stats.late_sidecars >= 1)
    assert done == [True]
    with open_store(settings).session() as s:
        draft = s.get(DraftRow, draft_id)
        assert draft is not None and draft.docx_path
        docx = Path(str(draft.docx_path))
    with zipfile.ZipFile(io.BytesIO(files.read_bytes(docx, settings))) as z:
        xml = z.read("word/document.xml").decode()
    assert "Jane Roe" in xml and MRN in xml
