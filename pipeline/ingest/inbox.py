"""The watched inbox: layout, pick-up, claim, de-duplication, quarantine, archive, resume.

Layout under ``settings.data_dir``::

    inbox/<physician-id>/<name>.<ext>   files dropped by physicians (or their sync software)
    inbox/<physician-id>/<name>.json    optional sidecar with patient and document metadata
    processing/<dictation-id>/          claimed files being processed (+ claim.json)
    archive/<dictation-id>/             audio after success (the workbench plays it) or duplicates
    quarantine/<name>                   files that could not be processed, with <name>.reason.txt

A file is picked up only when it is complete: inotify events (or a polling observer on network
shares) wake the scanner, and the file's size and mtime must stay unchanged for
``settings.stable_seconds``. An audio file waits up to ``settings.sidecar_grace_seconds`` (from
when it was first seen) for its sidecar. It is then *claimed* by an atomic ``os.rename`` into
``processing/<dictation-id>/``: of two service instances racing for one file, exactly one rename
succeeds and the other gets ``FileNotFoundError`` and moves on.

The audio's SHA-256 is the idempotency key: ``inbox_intake`` has it as primary key, so of two
intakes of the same recording exactly one insert wins, even across machines; the other becomes a
``duplicate`` dictation (``duplicate_of`` set) and its file is archived, not processed.
Nothing is ever deleted.

Filename convention (used when there is no sidecar)::

    <YYYYMMDD>_<MRN>_<document_type>[_stat].<ext>     e.g. 20261120_A12345_operative_report_stat.wav

The date is the date of service; names that do not match are fine (no metadata is taken).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from pipeline.core import audit
from pipeline.core.db.core import DictationRow
from pipeline.core.db.inbox import InboxIntake
from pipeline.core.errors import PipelineError, SidecarError
from pipeline.core.records import DictationMeta, to_jsonable
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.ingest.audio import sha256_file
from pipeline.ingest.sidecar import parse_sidecar

__all__ = [
    "ensure_layout",
    "is_ignored",
    "parse_filename",
    "sha256_file",
    "Intake",
    "IntakeResult",
    "InboxScanner",
    "start_observer",
    "claim",
    "register",
    "quarantine",
    "archive",
    "resume",
    "pending_resubmits",
    "load_meta",
    "claimed_audio",
    "claim_is_stale",
    "status_counts",
    "recent",
    "ACTIVE_STATUSES",
    "RESCAN_SECONDS",
]

log = logging.getLogger(__name__)

#: Seconds between full rescans of the inbox (finds files whose events were lost).
RESCAN_SECONDS = 10.0
#: A claim by another host that is older than this is treated as abandoned by ``resume``.
STALE_CLAIM_SECONDS = 600.0
#: Dictations still to be processed.
ACTIVE_STATUSES = ("received", "processing")
#: A sidecar modified more recently than this may still be being written.
_SIDECAR_SETTLE_S = 1.0
#: Settle time after inotify reported the writer closed the file (or it was renamed in).
_CLOSED_SETTLE_S = 0.5
#: A file open for writing but unchanged this long is taken anyway (a writer that hangs).
_OPEN_WRITER_CAP_S = 60.0

_TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".swp",
                  ".lock", ".json", ".txt")
_FILENAME_RE = re.compile(
    r"^(?P<date>\d{8})_(?P<mrn>[A-Za-z0-9\-.]+)_(?P<doctype>[A-Za-z0-9_]+?)"
    r"(?:_(?P<priority>stat|routine))?$",
    re.IGNORECASE,
)
_CLAIM_FILE = "claim.json"

Submit = Callable[[str, str], "str | None"]  # (dictation_id, priority) -> flow run id


# --------------------------------------------------------------------------------------------
# layout and names
# --------------------------------------------------------------------------------------------


def ensure_layout(settings: Settings) -> None:
    """Create inbox/<physician>/, processing/, archive/, quarantine/ and the physician rows."""
    for pid in settings.physicians:
        (settings.inbox_dir / pid).mkdir(parents=True, exist_ok=True)
    for folder in (settings.processing_dir, settings.archive_dir, settings.quarantine_dir):
        folder.mkdir(parents=True, exist_ok=True)
    open_store(settings)  # migrates and creates a Physician row per configured id


def is_ignored(name: str) -> bool:
    """True for names that are never dictations: temporary/partial files, dotfiles, sidecars."""
    lower = name.lower()
    return (
        not name
        or name.startswith(".")
        or name.startswith("~$")
        or name.startswith("~")
        or lower.endswith("~")
        or lower.endswith(_TEMP_SUFFIXES)
    )


def parse_filename(name: str) -> DictationMeta | None:
    """Metadata from the filename convention ``<YYYYMMDD>_<MRN>_<doctype>[_stat].<ext>``.

    Returns ``None`` when the name does not follow the convention (that is allowed).
    """
    match = _FILENAME_RE.match(Path(name).stem)
    if not match:
        return None
    try:
        dos = datetime.strptime(match["date"], "%Y%m%d").date()
    except ValueError:
        return None
    priority = (match["priority"] or "routine").lower()
    return DictationMeta(
        mrn=match["mrn"],
        date_of_service=dos,
        document_type=match["doctype"].lower(),
        priority="stat" if priority == "stat" else "routine",
        source="filename",
    )


# --------------------------------------------------------------------------------------------
# claim, register (dedupe), quarantine, archive
# --------------------------------------------------------------------------------------------


@dataclass
class IntakeResult:
    """What happened to one inbox file."""

    outcome: str  # received, duplicate, quarantined, vanished, waiting
    dictation_id: str | None = None
    reason: str | None = None
    duplicate_of: str | None = None
    priority: str = "routine"


def _new_id() -> str:
    import uuid

    return uuid.uuid4().hex


def claim(path: Path, settings: Settings, physician_folder: str | None) -> str | None:
    """Atomically move ``path`` (and its sidecar) into ``processing/<new id>/``.

    Returns the new dictation id, or ``None`` if another process took (or removed) the file
    first.
    """
    did = _new_id()
    target_dir = settings.processing_dir / did
    target_dir.mkdir(parents=True, exist_ok=False)
    claim_info = {
        "physician_folder": physician_folder,
        "original_name": path.name,
        "claimed_at": datetime.now(UTC).isoformat(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    (target_dir / _CLAIM_FILE).write_text(json.dumps(claim_info), encoding="utf-8")
    try:
        os.rename(path, target_dir / path.name)
    except FileNotFoundError:
        # Lost the race (another instance claimed it) or the file was removed: move on.
        (target_dir / _CLAIM_FILE).unlink()
        target_dir.rmdir()
        return None
    sidecar = path.with_suffix(".json")
    if sidecar != path:
        with contextlib.suppress(FileNotFoundError):
            os.rename(sidecar, target_dir / sidecar.name)
    return did


def claimed_audio(folder: Path) -> Path | None:
    """The audio file inside a ``processing/<id>/`` (or archive) folder."""
    info = _read_claim(folder)
    if info and (folder / info["original_name"]).exists():
        return folder / str(info["original_name"])
    for p in sorted(folder.iterdir()):
        if p.name != _CLAIM_FILE and p.suffix.lower() != ".json" and p.is_file():
            return p
    return None


def _read_claim(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / _CLAIM_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def claim_is_stale(folder: Path) -> bool:
    """True if the process that claimed ``folder`` is gone: a dead pid on this host, or a
    claim older than ``STALE_CLAIM_SECONDS`` from another host (scale-out)."""
    info = _read_claim(folder)
    if info is None:
        return True
    if info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
        pid = int(info["pid"])
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    try:
        age = time.time() - (folder / _CLAIM_FILE).stat().st_mtime
    except FileNotFoundError:
        return True
    return age > STALE_CLAIM_SECONDS


def load_meta(audio_path: Path, physician_id: str | None) -> DictationMeta:
    """Metadata for a claimed file: its sidecar if any (``SidecarError`` if malformed),
    else the filename convention, else empty; ``physician_id`` is the inbox folder's."""
    sidecar = audio_path.with_suffix(".json")
    meta: DictationMeta | None = None
    if sidecar.is_file() and sidecar != audio_path:
        meta = parse_sidecar(sidecar.read_bytes(), name=sidecar.name)
    if meta is None:
        meta = parse_filename(audio_path.name) or DictationMeta()
    meta.physician_id = physician_id
    return meta


def _unique_target(folder: Path, name: str, did: str) -> Path:
    target = folder / name
    if target.exists() or (folder / f"{name}.reason.txt").exists():
        target = folder / f"{did[:8]}_{name}"
    return target


def quarantine(
    settings: Settings,
    dictation_id: str,
    reason: str,
    *,
    code: str = "quarantined",
    status: str = "quarantined",
) -> Path | None:
    """Move a claimed dictation's files to ``quarantine/`` with ``<name>.reason.txt``.

    Records the dictation as ``status`` with the reason, and an audit event ``quarantine``.
    Returns the quarantined audio path (None if the files were already moved).
    """
    folder = settings.processing_dir / dictation_id
    settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
    audio_target: Path | None = None
    if folder.is_dir():
        audio = claimed_audio(folder)
        if audio is not None:
            audio_target = _unique_target(settings.quarantine_dir, audio.name, dictation_id)
            audio_target.with_name(audio_target.name + ".reason.txt").write_text(
                reason.strip() + "\n", encoding="utf-8"
            )
            os.rename(audio, audio_target)
            sidecar = audio.with_suffix(".json")
            if sidecar.exists() and sidecar != audio:
                os.rename(sidecar, audio_target.with_suffix(".json"))
        leftovers = [p for p in folder.iterdir() if p.name != _CLAIM_FILE]
        if leftovers:  # never delete: keep anything unexpected beside the quarantined file
            os.rename(folder, _unique_target(settings.quarantine_dir, dictation_id, dictation_id))
        else:
            (folder / _CLAIM_FILE).unlink(missing_ok=True)
            folder.rmdir()
    with open_store(settings).session() as s:
        row = s.get(DictationRow, dictation_id)
        if row is not None:
            row.status = status
            row.error_code = code
            row.error_message = reason
            if audio_target is not None:
                row.audio_path = str(audio_target)
        audit.record(
            s,
            actor="system:inbox",
            action="quarantine",
            object_type="dictation",
            object_id=dictation_id,
            outcome="error",
            detail={"code": code, "status": status},
        )
    log.warning("quarantined dictation=%s code=%s", dictation_id, code)
    return audio_target


def archive(settings: Settings, dictation_id: str) -> Path | None:
    """Move ``processing/<id>/`` to ``archive/<id>/`` and point the row's audio_path at it.

    Idempotent: if the folder was already archived, only the row is updated.
    """
    src = settings.processing_dir / dictation_id
    dst = settings.archive_dir / dictation_id
    settings.archive_dir.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        if dst.exists():
            dst = settings.archive_dir / f"{dictation_id}.{int(time.time())}"
        with contextlib.suppress(FileNotFoundError):  # archived by another instance just now
            os.rename(src, dst)
    if not dst.is_dir():
        return None
    audio = claimed_audio(dst)
    with open_store(settings).session() as s:
        row = s.get(DictationRow, dictation_id)
        if row is not None and audio is not None:
            row.audio_path = str(audio)
    return audio


class _Taken(Exception):
    """Another dictation already holds this SHA-256."""


def register(settings: Settings, dictation_id: str) -> IntakeResult:
    """Turn a claimed folder into a dictation row; de-duplicate by SHA-256 (race-safe).

    Bad input (empty file, malformed sidecar, unknown physician folder) is quarantined here.
    """
    folder = settings.processing_dir / dictation_id
    info = _read_claim(folder) or {}
    audio = claimed_audio(folder)
    if audio is None:
        return IntakeResult("vanished", dictation_id, reason="claimed folder holds no audio")
    pfolder = info.get("physician_folder")
    physician_id = pfolder if pfolder in settings.physicians else None
    digest = sha256_file(audio)
    size = audio.stat().st_size
    base_row = {
        "id": dictation_id,
        "sha256": digest,
        "physician_id": physician_id,
        "original_name": audio.name,
        "audio_path": str(audio),
    }

    def _bad(reason: str, code: str) -> IntakeResult:
        with open_store(settings).session() as s:
            if s.get(DictationRow, dictation_id) is None:
                s.add(DictationRow(status="received", meta={}, **base_row))
        quarantine(settings, dictation_id, reason, code=code)
        return IntakeResult("quarantined", dictation_id, reason=reason)

    if physician_id is None:
        where = f"inbox folder '{pfolder}'" if pfolder else "the inbox root"
        return _bad(
            f"File {audio.name} arrived in {where}, which is not a configured physician "
            f"folder (expected one of: {', '.join(settings.physicians)}).",
            "unknown_physician",
        )
    if size == 0:
        return _bad(f"File {audio.name} is empty (0 bytes); expected an audio recording.",
                    "empty_audio")
    try:
        meta = load_meta(audio, physician_id)
    except SidecarError as exc:
        return _bad(str(exc), exc.code)

    store = open_store(settings)
    try:
        with store.session() as s:
            if s.get(DictationRow, dictation_id) is None:
                s.add(
                    DictationRow(
                        status="received",
                        priority=meta.priority,
                        document_type=meta.document_type,
                        meta=to_jsonable(meta),
                        **base_row,
                    )
                )
                s.flush()
            existing = s.get(InboxIntake, digest)
            if existing is not None and existing.dictation_id == dictation_id:
                return IntakeResult("received", dictation_id, priority=meta.priority)
            if existing is not None:
                raise _Taken  # rolls the row back; handled below as a duplicate or a retry
            s.add(InboxIntake(sha256=digest, dictation_id=dictation_id))
            s.flush()
            audit.record(s, actor="system:inbox", action="dictation_received",
                         object_type="dictation", object_id=dictation_id,
                         detail={"physician_id": physician_id, "priority": meta.priority})
        return IntakeResult("received", dictation_id, priority=meta.priority)
    except (IntegrityError, _Taken):
        pass  # the SHA-256 is already taken: a duplicate, or a retry of a failed one

    with store.session() as s:
        owner = s.get(InboxIntake, digest)
        original = s.get(DictationRow, owner.dictation_id) if owner else None
        retry = original is not None and original.status in ("failed", "quarantined")
        row = DictationRow(
            status="received",
            priority=meta.priority,
            document_type=meta.document_type,
            meta=to_jsonable(meta),
            **base_row,
        )
        s.add(row)
        s.flush()
        if retry and owner is not None:
            # A re-drop of a file that failed before: process it again under the new id.
            won = s.execute(
                update(InboxIntake)
                .where(InboxIntake.sha256 == digest, InboxIntake.dictation_id == owner.dictation_id)
                .values(dictation_id=dictation_id)
            ).rowcount  # type: ignore[attr-defined]
            retry = bool(won)
        if not retry:
            row.status = "duplicate"
            row.duplicate_of = owner.dictation_id if owner else None
        s.flush()
        audit.record(
            s,
            actor="system:inbox",
            action="dictation_received" if retry else "duplicate",
            object_type="dictation",
            object_id=dictation_id,
            detail={"duplicate_of": None if retry or owner is None else owner.dictation_id,
                    "retry_of": owner.dictation_id if retry and owner else None},
        )
        dup_of = owner.dictation_id if owner else None
    if retry:
        return IntakeResult("received", dictation_id, priority=meta.priority)
    archive(settings, dictation_id)
    log.info("duplicate dictation=%s duplicate_of=%s", dictation_id, dup_of)
    return IntakeResult("duplicate", dictation_id, duplicate_of=dup_of, priority=meta.priority)


def _submit(settings: Settings, result: IntakeResult, submit: Submit | None) -> None:
    if submit is None or result.outcome != "received" or result.dictation_id is None:
        return
    run_id = submit(result.dictation_id, result.priority)
    if run_id:
        with open_store(settings).session() as s:
            row = s.get(DictationRow, result.dictation_id)
            if row is not None:
                row.flow_run_id = str(run_id)


def pending_resubmits(settings: Settings) -> list[tuple[str, str, str | None]]:
    """(dictation id, priority, flow run id) of every dictation not finished yet."""
    with open_store(settings).session() as s:
        rows = s.execute(
            select(DictationRow.id, DictationRow.priority, DictationRow.flow_run_id)
            .where(DictationRow.status.in_(ACTIVE_STATUSES))
            .order_by(DictationRow.created_at)
        ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def resume(settings: Settings, submit: Submit | None = None,
           should_resubmit: Callable[[str | None], bool] | None = None) -> dict[str, int]:
    """Finish what a crash left behind; returns counts per action.

    Only folders whose claim is stale (``claim_is_stale``: the claiming process is gone) are
    touched, so several instances sharing a data directory do not trip over each other.

    - ``processing/<id>/`` without a row: registered now (as if just claimed).
    - a finished row whose folder is still in processing/: archived (or quarantined).
    - unfinished rows: submitted again if their flow run is gone/finished/crashed
      (``should_resubmit(flow run id)``, default: always) or, never submitted, if their
      claim is stale. The flow is idempotent per dictation id.
    """
    counts = {"registered": 0, "archived": 0, "resubmitted": 0}
    settings.processing_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(settings)
    just_submitted: set[str] = set()
    for folder in sorted(settings.processing_dir.iterdir()):
        if not folder.is_dir() or not claim_is_stale(folder):
            continue
        did = folder.name
        with store.session() as s:
            row = s.get(DictationRow, did)
            status = row.status if row else None
            reason = (row.error_message, row.error_code) if row else (None, None)
        if row is None:
            if claimed_audio(folder) is None:
                continue
            result = register(settings, did)
            counts["registered"] += 1
            _submit(settings, result, submit)
            just_submitted.add(did)
            continue
        if status in ("done", "duplicate"):
            archive(settings, did)
            counts["archived"] += 1
        elif status in ("quarantined", "failed"):
            with contextlib.suppress(FileNotFoundError):
                quarantine(settings, did, reason[0] or "Processing failed.",
                           code=reason[1] or "failed", status=status)
    if submit is not None:
        for did, priority, run_id in pending_resubmits(settings):
            if did in just_submitted:
                continue
            if run_id is None:
                folder = settings.processing_dir / did
                if not folder.is_dir() or not claim_is_stale(folder):
                    continue  # being registered/submitted by a live instance right now
            elif should_resubmit is not None and not should_resubmit(run_id):
                continue
            _submit(settings, IntakeResult("received", did, priority=priority), submit)
            counts["resubmitted"] += 1
    if any(counts.values()):
        log.info("resume %s", counts)
    return counts


# --------------------------------------------------------------------------------------------
# pick-up: scanner (stable check, sidecar grace) and the watchdog observer that wakes it
# --------------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    size: int
    mtime_ns: int
    first_seen: float
    stable_since: float
    writing: bool = False  # inotify saw it opened for writing and not yet closed
    closed: bool = False  # inotify saw the writer close it (or it was renamed into place)


@dataclass
class Intake:
    """Counters of the scanner (since start), shown in the live status."""

    received: int = 0
    duplicates: int = 0
    quarantined: int = 0
    vanished: int = 0
    errors: int = 0
    last: list[IntakeResult] = field(default_factory=list)


class InboxScanner:
    """Finds complete inbox files and takes them in (claim -> register -> submit).

    ``poke(path)`` is called by the watchdog handler; ``run()`` loops until ``stop()``:
    it checks candidates every ``settings.poll_interval_seconds`` (or at once when poked)
    and rescans the whole inbox every ``RESCAN_SECONDS`` (with no candidate, it sleeps
    until then unless poked).
    """

    def __init__(self, settings: Settings, submit: Submit | None = None,
                 rescan_seconds: float = RESCAN_SECONDS) -> None:
        self.settings = settings
        self.submit = submit
        self.rescan_seconds = rescan_seconds
        self.stats = Intake()
        self._candidates: dict[Path, _Candidate] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._last_scan = 0.0

    # -- discovery ------------------------------------------------------------------------
    def _iter_inbox(self) -> Iterator[Path]:
        root = self.settings.inbox_dir
        try:
            entries = list(os.scandir(root))
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                if not is_ignored(entry.name):
                    yield Path(entry.path)
            elif entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                try:
                    sub = list(os.scandir(entry.path))
                except OSError:
                    continue
                for f in sub:
                    if f.is_file(follow_symlinks=False) and not is_ignored(f.name):
                        yield Path(f.path)

    def poke(self, path: Path | str, kind: str = "modified") -> None:
        """Note an event for ``path`` (``created``, ``modified``, ``closed``, ``moved``...);
        the scanner checks it at once."""
        p = Path(path)
        if p.suffix.lower() == ".json" or is_ignored(p.name):
            self._wake.set()  # a sidecar may complete a waiting audio file
            return
        now = time.monotonic()
        self._observe(p, now)
        with self._lock:
            cand = self._candidates.get(p)
            if cand is not None:
                if kind in ("created", "modified"):
                    cand.writing, cand.closed = True, False
                elif kind in ("closed", "moved"):
                    cand.writing, cand.closed = False, True
        self._wake.set()

    def rescan(self, now: float | None = None) -> None:
        """Look at every file in the inbox and update the candidates' stability clocks."""
        now = time.monotonic() if now is None else now
        seen: set[Path] = set()
        for path in self._iter_inbox():
            seen.add(path)
            self._observe(path, now)
        with self._lock:
            for gone in set(self._candidates) - seen:
                del self._candidates[gone]
        self._last_scan = now

    def _observe(self, path: Path, now: float) -> None:
        try:
            st = path.stat()
        except FileNotFoundError:
            with self._lock:
                self._candidates.pop(path, None)
            return
        with self._lock:
            cand = self._candidates.get(path)
            if cand is None:
                self._candidates[path] = _Candidate(st.st_size, st.st_mtime_ns, now, now)
            elif (cand.size, cand.mtime_ns) != (st.st_size, st.st_mtime_ns):
                cand.size, cand.mtime_ns, cand.stable_since = st.st_size, st.st_mtime_ns, now

    # -- decisions ------------------------------------------------------------------------
    def _ready(self, path: Path, cand: _Candidate, now: float) -> bool:
        s = self.settings
        stable_for = now - cand.stable_since
        if cand.closed:
            # the writer closed it (inotify) or it was renamed into place: a short settle
            needed = min(s.stable_seconds, _CLOSED_SETTLE_S)
        elif cand.writing:
            # still open for writing: wait for the close, unless it is stable for very long
            needed = max(_OPEN_WRITER_CAP_S, 10 * s.stable_seconds)
        else:
            needed = s.stable_seconds  # polling, or found by a rescan: size+mtime must hold
        if stable_for < needed:
            return False
        sidecar = path.with_suffix(".json")
        if sidecar.exists():
            try:
                age = time.time() - sidecar.stat().st_mtime
            except FileNotFoundError:
                return False
            return age >= min(s.stable_seconds, _SIDECAR_SETTLE_S)  # else still being written
        return now - cand.first_seen >= s.sidecar_grace_seconds

    def step(self, now: float | None = None) -> list[IntakeResult]:
        """One round: rescan if due, re-stat candidates, take in every ready file."""
        now = time.monotonic() if now is None else now
        if now - self._last_scan >= self.rescan_seconds or not self._candidates:
            self.rescan(now)
        else:
            for path in list(self._candidates):
                self._observe(path, now)
            # new files since the last rescan are found by a cheap listing of the folders
            for path in self._iter_inbox():
                if path not in self._candidates:
                    self._observe(path, now)
        results: list[IntakeResult] = []
        with self._lock:
            ready = [p for p, c in self._candidates.items() if self._ready(p, c, now)]
        for path in ready:
            with self._lock:
                self._candidates.pop(path, None)
            results.append(self.take(path))
        return results

    def take(self, path: Path) -> IntakeResult:
        """Claim, register and submit one file; never raises for a bad file."""
        rel = path.relative_to(self.settings.inbox_dir)
        folder = rel.parts[0] if len(rel.parts) > 1 else None
        try:
            t0 = time.perf_counter()
            did = claim(path, self.settings, folder)
            if did is None:
                result = IntakeResult("vanished", reason="file was taken or removed before claim")
                log.info("inbox file vanished before claim (taken by another instance?)")
            else:
                result = register(self.settings, did)
                t1 = time.perf_counter()
                _submit(self.settings, result, self.submit)
                log.info("intake dictation=%s outcome=%s register_s=%.3f submit_s=%.3f",
                         did, result.outcome, t1 - t0, time.perf_counter() - t1)
        except PipelineError as exc:
            result = IntakeResult("error", reason=str(exc))
            log.error("intake failed: %s", exc.code)
        except OSError as exc:
            result = IntakeResult("error", reason=f"{type(exc).__name__}: {exc.strerror}")
            log.error("intake failed: %s errno=%s", type(exc).__name__, exc.errno)
        st = self.stats
        attr = {"received": "received", "duplicate": "duplicates", "quarantined": "quarantined",
                "vanished": "vanished"}.get(result.outcome, "errors")
        setattr(st, attr, getattr(st, attr) + 1)
        st.last = ([*st.last, result])[-20:]
        return result

    # -- loop -----------------------------------------------------------------------------
    def run(self) -> None:
        """Loop until ``stop()``; exceptions in a round are logged, the loop keeps going."""
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # the service must keep running whatever one round hit
                log.exception("inbox scan round failed")
            self._wake.wait(self._next_wait())
            self._wake.clear()

    def _next_wait(self) -> float:
        """Seconds until the next round: ``poll_interval_seconds`` while files are waiting
        to become stable; with none, the next full rescan (new files wake the loop through
        ``poke`` from the watcher, so an idle service does not list the inbox every second)."""
        with self._lock:
            waiting = bool(self._candidates)
        if waiting:
            return self.settings.poll_interval_seconds
        due = self._last_scan + self.rescan_seconds - time.monotonic()
        return max(self.settings.poll_interval_seconds, due)

    def stop(self) -> None:
        """Ask ``run()`` to return."""
        self._stop.set()
        self._wake.set()

    def idle(self) -> bool:
        """True when no file is waiting in the inbox."""
        with self._lock:
            return not self._candidates and not any(True for _ in self._iter_inbox())


def start_observer(settings: Settings, scanner: InboxScanner) -> Any:
    """Start a watchdog observer (inotify, or polling per ``settings.watcher``) that pokes
    ``scanner``; returns the observer (call ``.stop()`` and ``.join()``)."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    class _Handler(FileSystemEventHandler):
        polling = False

        def on_any_event(self, event: FileSystemEvent) -> None:
            if event.is_directory or event.event_type in ("deleted", "opened",
                                                          "closed_no_write"):
                return
            dest = getattr(event, "dest_path", "")
            kind = str(event.event_type)
            if self.polling and kind != "moved":
                kind = "poll"  # a polling observer never reports a close: size+mtime decide
            scanner.poke(str(dest or event.src_path), kind)

    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    handler = _Handler()
    if settings.watcher == "polling":
        observer: Any = PollingObserver(timeout=settings.poll_interval_seconds)
        handler.polling = True
    else:
        observer = Observer()
    try:
        observer.schedule(handler, str(settings.inbox_dir), recursive=True)
        observer.start()
    except OSError as exc:  # e.g. inotify watch limit reached: fall back to polling
        if settings.watcher == "inotify":
            raise
        log.warning("inotify unavailable (%s); using the polling observer", exc.errno)
        observer = PollingObserver(timeout=settings.poll_interval_seconds)
        handler.polling = True
        observer.schedule(handler, str(settings.inbox_dir), recursive=True)
        observer.start()
    return observer


# --------------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------------


def status_counts(settings: Settings) -> dict[str, int]:
    """Number of dictations per status (all statuses present, zero when none)."""
    from sqlalchemy import func

    counts = dict.fromkeys(("received", "processing", "done", "failed", "quarantined",
                            "duplicate"), 0)
    with open_store(settings).session() as s:
        for status, n in s.execute(
            select(DictationRow.status, func.count()).group_by(DictationRow.status)
        ):
            counts[status] = int(n)
    counts["waiting_in_inbox"] = sum(
        1 for _ in InboxScanner(settings)._iter_inbox()
    )
    return counts


def recent(settings: Settings, limit: int = 10) -> list[dict[str, Any]]:
    """The most recent dictations as dicts of ids, status, codes and times (no PHI)."""
    with open_store(settings).session() as s:
        rows = s.scalars(
            select(DictationRow).order_by(DictationRow.updated_at.desc()).limit(limit)
        ).all()
        return [
            {
                "id": r.id,
                "status": r.status,
                "priority": r.priority,
                "physician_id": r.physician_id,
                "duration_s": r.duration_s,
                "error_code": r.error_code,
                "duplicate_of": r.duplicate_of,
                "flow_run_id": r.flow_run_id,
                "updated_at": r.updated_at.isoformat() if r.updated_at else None,
            }
            for r in rows
        ]


