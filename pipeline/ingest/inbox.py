"""The watched inbox: layout, pick-up, claim, de-duplication, quarantine, archive, resume.

Layout under ``settings.data_dir``::

    inbox/<physician-id>/<name>.<ext>   files dropped by physicians (or their sync software)
    inbox/<physician-id>/<name>.json    optional sidecar with patient and document metadata
    processing/<dictation-id>/          claimed files being processed: <dictation-id>.<ext>,
                                        <dictation-id>.json, and the claim record .claim
    archive/<dictation-id>/             audio after success (the workbench plays it) or duplicates
    quarantine/<dictation-id>.<ext>     files that could not be processed, with
                                        <dictation-id>.<ext>.reason.txt

Names on disk are opaque. A recorder's file name may hold an MRN or a patient's name (the
convention below does), so the claim renames the file to the dictation id and a cleaned
extension (``stored_name``: a known audio extension, else ``.audio``) in the same atomic
rename that claims it; the sidecar becomes ``<dictation-id>.json``. The original name is kept
in the database only (``DictationRow.original_name``, sealed on PostgreSQL) and, until the
row exists, in the claim record sealed with the data key (``name``: base64 of an encrypted
blob, ``crypto.encrypt_bytes``), so a claim resumed after a crash still registers it and
reads the filename convention. Quarantine reasons written beside a file name it by its
stored name; the full reason (with the original name) is the row's ``error_message``. A
quarantined file moved back into the inbox under its stored name is recognised (its stem is
the earlier dictation's id) and registered under that dictation's original name. Files
stored by older versions keep their names and are read as before (``original_name`` in the
claim record).

A file is picked up only when it is complete: inotify events (or a polling observer on network
shares) wake the scanner, and the file's size and mtime must stay unchanged for
``settings.stable_seconds`` (0.5 s after inotify saw its writer close it, or saw it renamed or
moved into place, even from another folder). A writer that pauses and then writes again has
shown how long it pauses: from then on the file must stay unchanged twice that long. A file
holding less audio than its header states (``audio.completeness``: a WAV whose data chunk
promises more bytes, an MP3/FLAC cut short) is still being written: it waits until complete,
or ``settings.truncated_wait_seconds`` without change, and is then taken (and flagged
``truncated`` by ``audio.probe``). An audio file waits up to ``settings.sidecar_grace_seconds``
(from when it was first seen) for its sidecar. It is then *claimed* by an atomic ``os.rename`` into
``processing/<dictation-id>/``: of two service instances racing for one file, exactly one rename
succeeds and the other gets ``FileNotFoundError`` and moves on.

The audio's SHA-256 is the idempotency key: ``inbox_intake`` has it as primary key, so of two
intakes of the same recording exactly one insert wins, even across machines; the other becomes a
``duplicate`` dictation (``duplicate_of`` set) and its file is archived, not processed.
Nothing is ever deleted.

Encryption at rest (``settings.encrypt_files``): the claim is still one atomic rename (the
race between instances is decided by it), and ``register`` then seals the claimed audio and
its sidecar in place (``pipeline.core.files.seal``: the encrypted copy is written and fsynced
beside the plain one, then renamed over it), hashing the plain bytes on the way, so the
idempotency key is the same with encryption on or off. A crash between the claim and the
seal leaves a plain file in ``processing/``, sealed when ``resume`` registers it again.
Files quarantined by ``register`` are sealed first unless they could not be read (a link,
FIFO or device is never opened; a file over ``max_file_bytes`` is not read). Quarantine
reasons (``<name>.reason.txt``) stay readable: they name the file (as its own name in the
folder does) and what was wrong, never a sidecar value or the audio's content.

What is taken (the same rule on every path: rescan, watcher event, ``resume``):

- Regular files directly in ``inbox/<physician-id>/`` (or the inbox root: quarantined as having
  no physician). Symbolic links are never followed, and links, FIFOs, devices and sockets are
  never opened: each is moved, as it is (the link itself, not its target), to ``quarantine/``
  with a reason. Every read is bounded (``settings.max_file_bytes``; ``audio.open_regular``).
- Files in a *subfolder* of a physician folder are not dictations of that folder: they are
  quarantined with a reason (nothing waits unseen; an empty subfolder is left alone).
- A file that cannot be read (permissions) is quarantined with one reason; one that cannot
  even be moved stays in place, is reported once (``InboxScanner.refused``) and tried again
  when it changes. ``resume`` handles each leftover on its own: one bad entry never stops it.
- A sidecar that arrives after its audio was taken (later than the grace period) is attached
  to that dictation (same folder and name, taken in within the last hour): its metadata
  replaces the row's, and a draft still in review gets the new header fields, priority and
  the flag ``late_sidecar`` (``on_late_sidecar`` re-renders its files). While the dictation is
  still being processed the sidecar waits; a sidecar matching no dictation is quarantined
  after ``settings.orphan_sidecar_seconds``. Either way it leaves the inbox, and the change is
  audited.

Logs name dictations by their opaque id only: file names (which carry MRNs under the naming
convention below) appear in quarantine reasons and the database, never in a log line.

Filename convention (used when there is no sidecar; read from the original name)::

    <YYYYMMDD>_<MRN>_<document_type>[_stat].<ext>     e.g. 20261120_A12345_operative_report_stat.wav

The date is the date of service; names that do not match are fine (no metadata is taken).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import stat
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from pipeline.core import audit, crypto, files
from pipeline.core.db.core import DictationRow, DraftRow
from pipeline.core.db.inbox import InboxIntake
from pipeline.core.errors import ConfigError, PipelineError, SidecarError
from pipeline.core.records import DictationMeta, to_jsonable
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.ingest.audio import (
    FileTooLargeError,
    NotRegularFileError,
    completeness,
    describe_mode,
    open_regular,
    sha256_file,
)
from pipeline.ingest.sidecar import parse_sidecar, read_sidecar_bytes

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
    "stored_name",
    "original_name",
    "status_counts",
    "recent",
    "ACTIVE_STATUSES",
    "RESCAN_SECONDS",
    "LATE_SIDECAR",
    "attach_late_sidecar",
]

log = logging.getLogger(__name__)

#: Seconds between full rescans of the inbox (finds files whose events were lost).
RESCAN_SECONDS = 10.0
#: A claim by another host that is older than this is treated as abandoned by ``resume``.
STALE_CLAIM_SECONDS = 600.0
#: a claim folder is made and its record written within milliseconds; one without a record
#: is left alone this long before it counts as a crash's leftover
CLAIM_RECORD_GRACE_SECONDS = 60.0
#: Dictations still to be processed.
ACTIVE_STATUSES = ("received", "processing")
#: A sidecar modified more recently than this may still be being written.
_SIDECAR_SETTLE_S = 1.0
#: Settle time after inotify reported the writer closed the file (or it was renamed in).
_CLOSED_SETTLE_S = 0.5
#: A file open for writing but unchanged this long is taken anyway (a writer that hangs).
_OPEN_WRITER_CAP_S = 60.0
#: A file whose writer paused for ``p`` seconds must then stay unchanged ``_PAUSE_FACTOR * p``.
_PAUSE_FACTOR = 2.0
#: Subfolders of a physician folder are searched this deep for files to quarantine.
_MAX_DEPTH = 4
#: A late sidecar is matched only to a dictation taken in at most this long before it.
_LATE_SIDECAR_WINDOW_S = 3600.0
#: Draft flag: its sidecar arrived after the dictation was processed.
LATE_SIDECAR = "late_sidecar"
_HEADER_FROM_SIDECAR = ("patient_name", "date_of_birth", "mrn", "date_of_service",
                        "referring_physician")
_QUEUED = "queued_for_review"  # pipeline.review.queue.QUEUED (a layer above: not imported)

_TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".download", ".swp",
                  ".lock", ".json", ".txt")
_FILENAME_RE = re.compile(
    r"^(?P<date>\d{8})_(?P<mrn>[A-Za-z0-9\-.]+)_(?P<doctype>[A-Za-z0-9_]+?)"
    r"(?:_(?P<priority>stat|routine))?$",
    re.IGNORECASE,
)
#: the claim record in ``processing/<id>/``; no sidecar can have this name (sidecars end in
#: ``.json``), so a recording named ``claim.wav`` keeps its ``claim.json`` sidecar
_CLAIM_FILE = ".claim"
#: the name older versions used; still read, so folders left by them are resumed
_LEGACY_CLAIM_FILE = "claim.json"
_CLAIM_NAMES = (_CLAIM_FILE, _LEGACY_CLAIM_FILE)
#: extensions kept on the stored (opaque) name; anything else becomes ``.audio`` (a name
#: like ``Smith.A12345`` would otherwise carry its MRN into the stored name)
_STORED_SUFFIXES = frozenset((".wav", ".mp3", ".m4a", ".mp4", ".aac", ".flac", ".ogg", ".oga",
                              ".opus", ".webm", ".wma", ".amr", ".aif", ".aiff", ".caf",
                              ".3gp", ".dss", ".ds2", ".mka"))
_OPAQUE_STEM = re.compile(r"^[0-9a-f]{32}$")


def _claim_path(folder: Path) -> Path:
    """The claim record of a ``processing/<id>/`` folder (the legacy name when only it
    exists)."""
    current = folder / _CLAIM_FILE
    if not current.exists() and (folder / _LEGACY_CLAIM_FILE).exists():
        return folder / _LEGACY_CLAIM_FILE
    return current

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
    draft_id: str | None = None  # a late sidecar changed this draft


def _new_id() -> str:
    import uuid

    return uuid.uuid4().hex


#: names of the files this process claimed and has not registered yet (dictation id -> name)
_claimed_names: dict[str, str] = {}
_claimed_lock = threading.Lock()


def stored_name(dictation_id: str, name: str) -> str:
    """The opaque name a claimed file is stored under: the dictation id and ``name``'s
    extension when it is a known audio one (lower case), else ``.audio``."""
    suffix = Path(name).suffix.lower()
    return dictation_id + (suffix if suffix in _STORED_SUFFIXES else ".audio")


def _seal_name(name: str, settings: Settings) -> str:
    """``name`` encrypted with the data key (for the claim record): base64 text."""
    blob = crypto.encrypt_bytes(name.encode("utf-8", "surrogateescape"),
                                files.keys_for(settings))
    return base64.b64encode(blob).decode("ascii")


def original_name(folder: Path, settings: Settings | None = None,
                  info: dict[str, Any] | None = None) -> str | None:
    """The recorder's file name from the claim record of ``folder`` (processing/ or
    archive/<id>/): opened with the data key ring, or the clear name an older version
    wrote. None when there is no record or the name cannot be opened (logged by id)."""
    info = info if info is not None else _read_claim(folder)
    if not info:
        return None
    sealed = info.get("name")
    if isinstance(sealed, str):
        try:
            blob = base64.b64decode(sealed, validate=True)
            return crypto.decrypt_bytes(blob, files.keys_for(settings)).decode(
                "utf-8", "surrogateescape")
        except (binascii.Error, ValueError, crypto.DecryptionError, ConfigError) as exc:
            log.warning("claim record of dictation=%s: its file name cannot be opened (%s)",
                        folder.name, getattr(exc, "code", type(exc).__name__))
            return None
    legacy = info.get("original_name")
    return str(legacy) if legacy else None


def claim(path: Path, settings: Settings, physician_folder: str | None,
          in_subfolder: bool = False) -> str | None:
    """Atomically move ``path`` (and its sidecar) into ``processing/<new id>/``, renamed to
    the opaque ``stored_name`` in the same rename; the original name goes into the claim
    record sealed with the data key.

    ``path`` is moved as it is: a link is moved, not followed; nothing is opened.

    Returns the new dictation id, or ``None`` if another process took (or removed) the file
    first.
    """
    did = _new_id()
    try:
        sealed: str | None = _seal_name(path.name, settings)
    except (OSError, PipelineError) as exc:
        # the data key cannot be read here: the claim goes on (register, in this process,
        # has the name from memory); only a resume after a crash would miss it
        sealed = None
        log.warning("claim of dictation=%s: the data key is not readable (%s); its claim "
                    "record holds no file name", did, getattr(exc, "code", type(exc).__name__))
    stored = stored_name(did, path.name)
    target_dir = settings.processing_dir / did
    target_dir.mkdir(parents=True, exist_ok=False)
    claim_info: dict[str, Any] = {
        "physician_folder": physician_folder,
        "stored_name": stored,
        "name": sealed,
        "in_subfolder": in_subfolder,
        "claimed_at": datetime.now(UTC).isoformat(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    (target_dir / _CLAIM_FILE).write_text(json.dumps(claim_info), encoding="utf-8")
    try:
        os.rename(path, target_dir / stored)  # moves a link itself, opens nothing
    except OSError as exc:
        (target_dir / _CLAIM_FILE).unlink()
        target_dir.rmdir()
        if isinstance(exc, FileNotFoundError):
            # Lost the race (another instance claimed it) or the file was removed: move on.
            return None
        raise  # cannot be moved (permissions): the scanner leaves it and reports it
    with _claimed_lock:
        _claimed_names[did] = path.name  # for register in this process (no decryption)
    sidecar = path.with_suffix(".json")
    if sidecar != path:
        with contextlib.suppress(FileNotFoundError):
            os.rename(sidecar, target_dir / f"{did}.json")
    return did


def claimed_audio(folder: Path) -> Path | None:
    """The audio file inside a ``processing/<id>/`` (or archive) folder."""
    info = _read_claim(folder)
    for key in ("stored_name", "original_name"):  # the latter: folders of older versions
        name = (info or {}).get(key)
        if name and os.path.lexists(folder / str(name)):
            return folder / str(name)
    for p in sorted(folder.iterdir()):
        if p.name in _CLAIM_NAMES or p.suffix.lower() == ".json":
            continue
        with contextlib.suppress(OSError):
            if not stat.S_ISDIR(p.lstat().st_mode):  # links and special files count
                return p
    return None


def _read_claim(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(_claim_path(folder).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def claim_is_stale(folder: Path) -> bool:
    """True if the process that claimed ``folder`` is gone: a dead pid on this host, or a
    claim older than ``STALE_CLAIM_SECONDS`` from another host (scale-out). A folder whose
    record is missing or unreadable is stale only once the folder is older than
    ``CLAIM_RECORD_GRACE_SECONDS``: another instance may have just made it and not yet
    written the record (taking it over then registered the file twice: a duplicate row)."""
    info = _read_claim(folder)
    if info is None:
        try:
            return time.time() - folder.stat().st_mtime > CLAIM_RECORD_GRACE_SECONDS
        except FileNotFoundError:
            return False  # gone meanwhile: nothing to take over
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
        age = time.time() - _claim_path(folder).stat().st_mtime
    except FileNotFoundError:
        return True
    return age > STALE_CLAIM_SECONDS


def load_meta(audio_path: Path, physician_id: str | None,
              settings: Settings | None = None, name: str | None = None) -> DictationMeta:
    """Metadata for a claimed file: its sidecar if any (``SidecarError`` if malformed),
    else the filename convention read from the recorder's name (``name``, else the claim
    record beside the file, else the file's own name), else empty; ``physician_id`` is the
    inbox folder's. ``settings`` give the key ring of what is stored encrypted."""
    sidecar = audio_path.with_suffix(".json")
    meta: DictationMeta | None = None
    if sidecar != audio_path and os.path.lexists(sidecar):
        meta = parse_sidecar(read_sidecar_bytes(sidecar, settings), name=sidecar.name)
    if meta is None:
        if name is None and (audio_path.parent / _CLAIM_FILE).exists():
            name = original_name(audio_path.parent, settings)
        meta = parse_filename(name or audio_path.name) or DictationMeta()
    meta.physician_id = physician_id
    return meta


def _unique_target(folder: Path, name: str, did: str) -> Path:
    target = folder / name
    if os.path.lexists(target) or (folder / f"{name}.reason.txt").exists():
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
            # opaque, also for a folder an older version claimed under the recorder's name
            audio_target = _unique_target(settings.quarantine_dir,
                                          stored_name(dictation_id, audio.name), dictation_id)
            audio_target.with_name(audio_target.name + ".reason.txt").write_text(
                _opaque_reason(reason, audio_target.name, original_name(folder, settings),
                               audio.name).strip()
                + "\n", encoding="utf-8"
            )
            os.rename(audio, audio_target)
            sidecar = audio.with_suffix(".json")
            if os.path.lexists(sidecar) and sidecar != audio:
                os.rename(sidecar, audio_target.with_suffix(".json"))
        claim = _claim_path(folder)
        leftovers = [p for p in folder.iterdir() if p != claim]
        if leftovers:  # never delete: keep anything unexpected beside the quarantined file
            os.rename(folder, _unique_target(settings.quarantine_dir, dictation_id, dictation_id))
        else:
            claim.unlink(missing_ok=True)
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


def _opaque_reason(reason: str, stored: str, *names: str | None) -> str:
    """``reason`` for the file beside the quarantined audio: the recorder's ``names`` (which
    the row's ``error_message`` keeps) replaced by the ``stored``, opaque one."""
    for name in sorted({n for n in names if n and n != stored}, key=len, reverse=True):
        reason = reason.replace(name, stored)
    return reason


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

    The row gets the recorder's file name from the claim record (``original_name``).
    Bad input (empty file, malformed sidecar, unknown physician folder) is quarantined here.
    """
    folder = settings.processing_dir / dictation_id
    info = _read_claim(folder) or {}
    audio = claimed_audio(folder)
    if audio is None:
        return IntakeResult("vanished", dictation_id, reason="claimed folder holds no audio")
    pfolder = info.get("physician_folder")
    physician_id = pfolder if pfolder in settings.physicians else None
    try:
        st = audio.lstat()
    except FileNotFoundError:
        return IntakeResult("vanished", dictation_id, reason="claimed file is gone")
    size = st.st_size
    # the recorder's name: only in the row (and in reasons, which the row keeps); on disk the
    # file has its opaque stored name
    with _claimed_lock:
        remembered = _claimed_names.pop(dictation_id, None)
    name = _inherited_name(settings, remembered or original_name(folder, settings, info)
                           or audio.name)
    base_row: dict[str, Any] = {
        "id": dictation_id,
        "sha256": "",  # set once the file is known to be readable
        "physician_id": physician_id,
        "original_name": name,
        "audio_path": str(audio),
    }

    def _bad(reason: str, code: str) -> IntakeResult:
        if stat.S_ISREG(st.st_mode) and size <= settings.max_file_bytes:
            _seal_quietly(settings, audio)  # quarantined encrypted, when it can be read
        _seal_quietly(settings, audio.with_suffix(".json"))
        with open_store(settings).session() as s:
            if s.get(DictationRow, dictation_id) is None:
                s.add(DictationRow(status="received", meta={}, **base_row))
        quarantine(settings, dictation_id, reason, code=code)
        return IntakeResult("quarantined", dictation_id, reason=reason)

    if not stat.S_ISREG(st.st_mode):
        return _bad(
            f"{name} is {describe_mode(st.st_mode)}, not a regular file: only regular "
            "files are taken from the inbox (links are not followed, pipes and devices are not "
            "read). It was moved here as it is, without being opened.",
            "not_a_regular_file",
        )
    if info.get("in_subfolder"):
        return _bad(
            f"{name} arrived in a subfolder of inbox folder '{pfolder}'; only files "
            "directly in a physician's folder are dictations. Move it there to process it.",
            "in_subfolder",
        )
    if physician_id is None:
        where = f"inbox folder '{pfolder}'" if pfolder else "the inbox root"
        return _bad(
            f"File {name} arrived in {where}, which is not a configured physician "
            f"folder (expected one of: {', '.join(settings.physicians)}).",
            "unknown_physician",
        )
    if size == 0:
        return _bad(f"File {name} is empty (0 bytes); expected an audio recording.",
                    "empty_audio")
    try:
        if size > settings.max_file_bytes:
            raise FileTooLargeError(
                f"{name} is {size / 1e9:.1f} GB; at most "
                f"{settings.max_file_bytes / 1e9:.1f} GB is accepted (max_file_bytes)."
            )
        with open_regular(audio) as src:  # encrypted in place, the plain bytes hashed
            digest = files.seal(audio, settings, src, max_bytes=settings.max_file_bytes)
    except files.LimitExceededError:
        return _bad(f"{name} grew past {settings.max_file_bytes / 1e9:.1f} GB while it "
                    "was read; at most that is accepted (max_file_bytes).", "too_large")
    except (NotRegularFileError, FileTooLargeError) as exc:
        return _bad(str(exc), exc.code)
    except OSError as exc:
        return _bad(
            f"{name} could not be read ({exc.strerror or type(exc).__name__}); check "
            "its permissions (the service must be able to read it) and move it back into the "
            "inbox.",
            "unreadable",
        )
    base_row["sha256"] = digest
    try:
        meta = load_meta(audio, physician_id, settings, name=name)
    except SidecarError as exc:
        return _bad(str(exc), exc.code)
    _seal_quietly(settings, audio.with_suffix(".json"))

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


def _inherited_name(settings: Settings, name: str) -> str:
    """``name``, or, for a file named like a stored one (``<dictation id>.<ext>``: a
    quarantined file moved back into the inbox), the original name of that dictation."""
    stem = Path(name).stem
    if not _OPAQUE_STEM.match(stem):
        return name
    with open_store(settings).session() as s:
        earlier = s.scalar(select(DictationRow.original_name).where(DictationRow.id == stem))
    return str(earlier) if earlier else name


def _seal_quietly(settings: Settings, path: Path) -> None:
    """Encrypt a claimed plain file in place if it is a readable regular file (links and
    special files are never opened; what cannot be read stays as it is)."""
    if not os.path.lexists(path):
        return
    with contextlib.suppress(OSError, PipelineError):
        files.seal(path, settings, max_bytes=settings.max_file_bytes)


def _opaque(path: Path) -> str:
    """A short stable stand-in for a file name in log lines (names may hold an MRN)."""
    return "file-" + hashlib.sha256(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:12]


def _quarantine_inbox_file(settings: Settings, path: Path, reason: str, code: str) -> Path:
    """Move one inbox file (a sidecar) straight to ``quarantine/`` with its reason; stored
    and audited under an opaque id (the hash of its path): ``quarantine/<tag>.json``, the
    reason naming it so. No row keeps its inbox name (its content identifies it)."""
    settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha256(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    target = _unique_target(settings.quarantine_dir, tag + ".json", tag)
    target.with_name(target.name + ".reason.txt").write_text(
        _opaque_reason(reason, target.name, path.name).strip() + "\n", encoding="utf-8")
    os.rename(path, target)
    _seal_quietly(settings, target)
    with open_store(settings).session() as s:
        audit.record(s, actor="system:inbox", action="quarantine", object_type="inbox_file",
                     object_id=tag, outcome="error", detail={"code": code})
    log.warning("quarantined inbox file %s code=%s", _opaque(path), code)
    return target


def _printed_date(value: Any) -> str | None:
    """A date as the documents print it (``pipeline.documents.header.format_date``)."""
    if not value:
        return None
    try:
        d = datetime.fromisoformat(str(value)).date()
    except ValueError:
        return str(value)
    return f"{d.strftime('%B')} {d.day}, {d.year}"


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.lower().split()) == " ".join(b.lower().split())


def _find_late_match(settings: Settings, path: Path, mtime: float) -> tuple[str, str] | None:
    """(dictation id, status) of the latest dictation from the same folder with the same
    name stem, taken in at most ``_LATE_SIDECAR_WINDOW_S`` before the sidecar was written."""
    since = datetime.fromtimestamp(mtime - _LATE_SIDECAR_WINDOW_S, UTC)
    with open_store(settings).session() as s:
        rows = s.execute(
            select(DictationRow.id, DictationRow.status, DictationRow.original_name,
                   DictationRow.created_at, DictationRow.meta)
            .where(DictationRow.physician_id == path.parent.name,
                   DictationRow.status != "duplicate")
            .order_by(DictationRow.created_at.desc())
            .limit(500)
        ).all()
    for did, status, name, created, meta in rows:
        if created is not None and created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        if created is not None and created < since:
            break
        if (meta or {}).get("source") == "sidecar":
            continue  # it had its sidecar: this one belongs to another recording
        if Path(str(name)).stem == path.stem:
            return str(did), str(status)
    return None


def attach_late_sidecar(settings: Settings, path: Path, *,
                        orphan_after: bool = False) -> IntakeResult | None:
    """Deal with a sidecar whose audio is no longer in the inbox; ``None`` to wait.

    Matched to a dictation (same physician folder and name stem, taken in within the hour
    before, that had no sidecar): while it is still being processed the sidecar waits. Once
    processed, the sidecar's metadata replaces the dictation's, and its draft, if still
    queued for review, gets the sidecar's header fields (a different dictated value is kept
    as the conflict), its priority and the flag ``late_sidecar``; the sidecar moves beside
    the archived audio.
    A draft already past review is not changed: the sidecar is quarantined with the reason.
    For a quarantined or failed dictation the metadata is recorded and the sidecar moves
    beside the quarantined audio (a re-drop then carries it). Unmatched, it is quarantined
    when ``orphan_after`` (it waited long enough for its audio). Every change is audited.
    """
    try:
        mtime = path.lstat().st_mtime
    except FileNotFoundError:
        return None
    found = _find_late_match(settings, path, mtime)
    if found is None:
        if not orphan_after:
            return None  # its audio may still be on its way
        _quarantine_inbox_file(
            settings, path,
            f"Sidecar {path.name} matches no dictation: no audio of the same name arrived "
            f"in inbox folder '{path.parent.name}' within "
            f"{settings.orphan_sidecar_seconds:.0f} s, nor was one taken in during the hour "
            "before it. Put it beside its audio file in the inbox.",
            "orphan_sidecar",
        )
        return IntakeResult("quarantined", reason="orphan_sidecar")
    did, status = found
    if status in ACTIVE_STATUSES:
        return None  # being processed: attached once its draft exists
    late = f"It arrived after dictation {did} was taken in, which was processed without it."
    try:
        meta = parse_sidecar(read_sidecar_bytes(path), name=path.name)
    except SidecarError as exc:
        _quarantine_inbox_file(settings, path, f"{exc} {late}", exc.code)
        return IntakeResult("quarantined", did, reason=exc.code)
    with open_store(settings).session() as s:
        row = s.get(DictationRow, did)
        if row is None:
            return None
        draft = s.scalars(select(DraftRow).where(DraftRow.dictation_id == did)).first()
        if draft is not None and draft.status != _QUEUED:
            blocked = (draft.id, draft.status)
        else:
            blocked = None
            meta.physician_id = row.physician_id  # the inbox folder decides the physician
            old = dict(row.meta or {})
            new = to_jsonable(meta)
            row.meta = new
            row.priority = meta.priority
            if status != "done" and meta.document_type:
                row.document_type = meta.document_type
            changed = sorted(k for k in new if k != "source" and new.get(k) != old.get(k))
            draft_id = None
            if draft is not None:
                doc = dict(draft.document or {})
                header = dict(doc.get("header") or {})
                flags = set(draft.flags or []) | {LATE_SIDECAR}
                for key in _HEADER_FROM_SIDECAR:
                    raw = new.get(key)
                    value = _printed_date(raw) if key.startswith("date_") else raw
                    if not value:
                        continue
                    got = header.get(key)
                    prev: dict[str, Any] = got if isinstance(got, dict) else {}
                    said = prev.get("value") if prev.get("source") == "dictation" else None
                    conflict = said if said and not _same_text(str(said), str(value)) else None
                    if conflict:
                        flags.add("header_mismatch")
                    header[key] = {"value": value, "source": "sidecar", "conflict": conflict}
                doc["header"] = header
                draft.document = doc
                draft.patient_name = meta.patient_name or draft.patient_name
                draft.mrn = meta.mrn or draft.mrn
                draft.priority = meta.priority
                draft.flags = sorted(flags)
                draft_id = draft.id
            audit.record(s, actor="system:inbox", action="late_sidecar",
                         object_type="dictation", object_id=did, patient_ref=meta.mrn,
                         detail={"draft_id": draft_id, "fields": changed})
            audio_path = Path(row.audio_path) if row.audio_path else None
    if blocked is not None:
        _quarantine_inbox_file(
            settings, path,
            f"Sidecar {path.name} arrived after dictation {did}'s draft {blocked[0]} was "
            f"already {blocked[1]}; its data were not applied. Add them by hand (an addendum).",
            "late_sidecar_after_review",
        )
        return IntakeResult("quarantined", did, reason="late_sidecar_after_review")
    # beside the audio, as an on-time sidecar is (archive/<id>/ or quarantine/)
    folder = audio_path.parent if audio_path is not None and audio_path.parent.is_dir() \
        else settings.quarantine_dir
    folder.mkdir(parents=True, exist_ok=True)
    base = audio_path.stem if audio_path is not None else did  # never the recorder's name
    target = _unique_target(folder, base + ".json", did)
    os.rename(path, target)
    _seal_quietly(settings, target)
    log.info("late sidecar attached dictation=%s draft=%s status=%s", did, draft_id, status)
    return IntakeResult("late_sidecar", did, priority=meta.priority, draft_id=draft_id)


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


def _resume_one(settings: Settings, folder: Path, submit: Submit | None) -> str | None:
    """Finish one stale ``processing/<id>/`` folder; returns the action taken (or None)."""
    did = folder.name
    with open_store(settings).session() as s:
        row = s.get(DictationRow, did)
        status = row.status if row else None
        reason = (row.error_message, row.error_code) if row else (None, None)
    if row is None:
        if claimed_audio(folder) is None:
            return None
        result = register(settings, did)  # links, special and unreadable files: quarantined
        _submit(settings, result, submit)
        return "registered"
    if status in ("done", "duplicate"):
        archive(settings, did)
        return "archived"
    if status in ("quarantined", "failed"):
        with contextlib.suppress(FileNotFoundError):
            quarantine(settings, did, reason[0] or "Processing failed.",
                       code=reason[1] or "failed", status=status)
    return None


def resume(settings: Settings, submit: Submit | None = None,
           should_resubmit: Callable[[str | None], bool] | None = None) -> dict[str, int]:
    """Finish what a crash left behind; returns counts per action.

    Only folders whose claim is stale (``claim_is_stale``: the claiming process is gone) are
    touched, so several instances sharing a data directory do not trip over each other.

    - ``processing/<id>/`` without a row: registered now (as if just claimed; a link, special
      or unreadable file is quarantined there).
    - an entry that fails anyway is logged by id and left for a person (``errors`` count);
      the others are still resumed.
    - a finished row whose folder is still in processing/: archived (or quarantined).
    - unfinished rows: submitted again if their flow run is gone/finished/crashed
      (``should_resubmit(flow run id)``, default: always) or, never submitted, if their
      claim is stale. The flow is idempotent per dictation id.
    """
    counts = {"registered": 0, "archived": 0, "resubmitted": 0}
    settings.processing_dir.mkdir(parents=True, exist_ok=True)
    just_submitted: set[str] = set()
    for folder in sorted(settings.processing_dir.iterdir()):
        try:
            if not folder.is_dir() or folder.is_symlink() or not claim_is_stale(folder):
                continue
            action = _resume_one(settings, folder, submit)
        except Exception as exc:  # one bad entry must never stop the service from starting
            # ids and error kinds only: a message or traceback may hold a file name (an MRN)
            dictation_id = folder.name  # processing/<dictation id>/: an opaque id
            log.error("resume left dictation=%s in processing: %s errno=%s", dictation_id,
                      type(exc).__name__, getattr(exc, "errno", None))
            counts["errors"] = counts.get("errors", 0) + 1
            continue
        if action is not None:
            counts[action] += 1
            if action == "registered":
                just_submitted.add(folder.name)
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
    mode: int = stat.S_IFREG  # lstat kind: links and special files are never opened
    max_pause: float = 0.0  # longest time it stood unchanged before it changed again
    checked: tuple[int, int] | None = None  # (size, mtime_ns) of the last completeness check
    short_since: float | None = None  # holds less audio than it states since (monotonic)


@dataclass
class Intake:
    """Counters of the scanner (since start), shown in the live status."""

    received: int = 0
    duplicates: int = 0
    quarantined: int = 0
    vanished: int = 0
    errors: int = 0
    late_sidecars: int = 0
    last: list[IntakeResult] = field(default_factory=list)


class InboxScanner:
    """Finds complete inbox files and takes them in (claim -> register -> submit).

    ``poke(path)`` is called by the watchdog handler; ``run()`` loops until ``stop()``:
    it checks candidates every ``settings.poll_interval_seconds`` (or at once when poked)
    and rescans the whole inbox every ``RESCAN_SECONDS`` (with no candidate, it sleeps
    until then unless poked).
    """

    def __init__(self, settings: Settings, submit: Submit | None = None,
                 rescan_seconds: float = RESCAN_SECONDS,
                 on_late_sidecar: Callable[[str], object] | None = None) -> None:
        self.settings = settings
        self.submit = submit
        self.rescan_seconds = rescan_seconds
        #: called with the draft id after a late sidecar changed a queued draft's header
        #: (the service re-renders the draft's files; this layer cannot import the renderer)
        self.on_late_sidecar = on_late_sidecar
        self.stats = Intake()
        #: files that could not even be moved, with the reason; tried again when they change
        self.refused: dict[Path, str] = {}
        self._refused_at: dict[Path, tuple[int, int]] = {}
        self._sidecars: dict[Path, float] = {}  # orphan sidecar -> first seen (wall clock)
        self._candidates: dict[Path, _Candidate] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._last_scan = 0.0

    # -- discovery ------------------------------------------------------------------------
    def _iter_inbox(self) -> Iterator[Path]:
        """Every entry that is not a folder and not an ignored name: regular files, links
        and special files, in the root, in physician folders and in their subfolders (to be
        quarantined). Links are never followed."""
        yield from self._walk(self.settings.inbox_dir, 0)

    def _walk(self, folder: Path | str, depth: int) -> Iterator[Path]:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if not entry.name.startswith(".") and depth < _MAX_DEPTH:
                    yield from self._walk(entry.path, depth + 1)
            elif not is_ignored(entry.name):
                yield Path(entry.path)

    def _iter_sidecars(self) -> Iterator[Path]:
        """Sidecars directly in physician folders whose audio is not beside them."""
        for pid in self.settings.physicians:
            folder = self.settings.inbox_dir / pid
            try:
                names = [e.name for e in os.scandir(folder)]
            except OSError:
                continue
            stems = {Path(n).stem for n in names if not n.lower().endswith(".json")}
            for name in names:
                if name.lower().endswith(".json") and not name.startswith(".") \
                        and Path(name).stem not in stems:
                    yield folder / name

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
            st = path.lstat()  # never follow a link
        except OSError:  # gone (or its folder is unreadable)
            with self._lock:
                self._candidates.pop(path, None)
            return
        if stat.S_ISDIR(st.st_mode):
            return
        with self._lock:
            cand = self._candidates.get(path)
            if cand is None:
                self._candidates[path] = _Candidate(st.st_size, st.st_mtime_ns, now, now,
                                                    mode=st.st_mode)
            elif (cand.size, cand.mtime_ns, cand.mode) != (st.st_size, st.st_mtime_ns,
                                                           st.st_mode):
                # it changed after standing still: its writer pauses this long
                cand.max_pause = max(cand.max_pause, now - cand.stable_since)
                cand.size, cand.mtime_ns, cand.stable_since = st.st_size, st.st_mtime_ns, now
                cand.mode = st.st_mode

    # -- decisions ------------------------------------------------------------------------
    def _ready(self, path: Path, cand: _Candidate, now: float) -> bool:
        s = self.settings
        stable_for = now - cand.stable_since
        if self._refused_at.get(path) == (cand.size, cand.mtime_ns):
            return False  # could not be moved; tried again when it changes
        if not stat.S_ISREG(cand.mode):
            return stable_for >= _CLOSED_SETTLE_S  # quarantined as it is, never opened
        if cand.closed:
            # the writer closed it (inotify) or it was renamed into place: a short settle
            needed = min(s.stable_seconds, _CLOSED_SETTLE_S)
        elif cand.writing:
            # still open for writing: wait for the close, unless it is stable for very long
            needed = max(_OPEN_WRITER_CAP_S, 10 * s.stable_seconds)
        else:
            needed = s.stable_seconds  # polling, or found by a rescan: size+mtime must hold
        if cand.max_pause:
            # a writer that closes and reopens, or stalls: outwait its longest pause
            needed = max(needed, min(_PAUSE_FACTOR * cand.max_pause, _OPEN_WRITER_CAP_S))
        if stable_for < needed:
            return False
        if self._in_subfolder(path):
            return True  # quarantined: no sidecar, no audio check
        if not self._complete(path, cand, now):
            return False
        sidecar = path.with_suffix(".json")
        if sidecar.exists():
            try:
                age = time.time() - sidecar.stat().st_mtime
            except FileNotFoundError:
                return False
            return age >= min(s.stable_seconds, _SIDECAR_SETTLE_S)  # else still being written
        return now - cand.first_seen >= s.sidecar_grace_seconds

    def _in_subfolder(self, path: Path) -> bool:
        with contextlib.suppress(ValueError):
            return len(path.relative_to(self.settings.inbox_dir).parts) > 2
        return False

    def _complete(self, path: Path, cand: _Candidate, now: float) -> bool:
        """False while the file holds less audio than it states (still being written), up
        to ``settings.truncated_wait_seconds`` without change; checked once per version."""
        key = (cand.size, cand.mtime_ns)
        if cand.checked != key:
            cand.checked = key
            try:
                short = completeness(path).truncated
            except (OSError, PipelineError):
                short = False  # take() quarantines it with the reason
            cand.short_since = (cand.short_since or now) if short else None
        if cand.short_since is None:
            return True
        if now - cand.stable_since < self.settings.truncated_wait_seconds:
            return False
        log.info("inbox file still short of its stated length after %.0f s unchanged; "
                 "taking it (flagged truncated)", now - cand.stable_since)
        return True

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
        results.extend(self._late_sidecars())
        return results

    def take(self, path: Path) -> IntakeResult:
        """Claim, register and submit one file; never raises for a bad file."""
        rel = path.relative_to(self.settings.inbox_dir)
        folder = rel.parts[0] if len(rel.parts) > 1 else None
        try:
            t0 = time.perf_counter()
            try:
                did = claim(path, self.settings, folder, in_subfolder=len(rel.parts) > 2)
            except OSError as exc:
                self._refuse(path, exc)
                raise
            self.refused.pop(path, None)
            self._refused_at.pop(path, None)
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

    def _refuse(self, path: Path, exc: OSError) -> None:
        """Remember a file that cannot be moved: reported once, retried when it changes."""
        try:
            st = path.lstat()
        except OSError:
            return
        if path not in self.refused:
            log.error("inbox file %s cannot be moved (%s errno=%s); left in place",
                      _opaque(path), type(exc).__name__, exc.errno)
        self.refused[path] = (f"cannot be moved out of the inbox "
                              f"({exc.strerror or type(exc).__name__}); fix its permissions")
        self._refused_at[path] = (st.st_size, st.st_mtime_ns)

    # -- late sidecars ----------------------------------------------------------------------
    def _late_sidecars(self) -> list[IntakeResult]:
        """Attach sidecars whose audio was already taken; quarantine those matching none."""
        results: list[IntakeResult] = []
        seen: set[Path] = set()
        wall = time.time()
        for path in self._iter_sidecars():
            seen.add(path)
            first = self._sidecars.setdefault(path, wall)
            try:
                age = wall - path.lstat().st_mtime
            except OSError:
                continue
            if age < _SIDECAR_SETTLE_S:
                continue  # may still be being written
            if wall - first < 2 * self.settings.sidecar_grace_seconds + _SIDECAR_SETTLE_S:
                continue  # a sidecar usually comes first: give its audio time to appear
            try:
                result = attach_late_sidecar(self.settings, path,
                                             orphan_after=wall - first
                                             >= self.settings.orphan_sidecar_seconds)
            except Exception as exc:  # one sidecar must not stop intake
                log.error("late sidecar %s failed: %s", _opaque(path), type(exc).__name__)
                continue
            if result is None:
                continue
            results.append(result)
            self._sidecars.pop(path, None)
            if result.outcome == "late_sidecar":
                self.stats.late_sidecars += 1
            elif result.outcome == "quarantined":
                self.stats.quarantined += 1
            if result.draft_id and self.on_late_sidecar:
                try:
                    self.on_late_sidecar(result.draft_id)
                except Exception as exc:
                    log.error("re-render after late sidecar failed draft=%s: %s",
                              result.draft_id, type(exc).__name__)
        for gone in set(self._sidecars) - seen:
            del self._sidecars[gone]
        return results

    # -- loop -----------------------------------------------------------------------------
    def run(self) -> None:
        """Loop until ``stop()``; exceptions in a round are logged, the loop keeps going."""
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # the service must keep running whatever one round hit
                # where it failed, not the message: a message may hold a file name (an MRN)
                log.error("inbox scan round failed: %s\n%s", type(exc).__name__,
                          "".join(traceback.format_tb(exc.__traceback__)))
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
        """True when no file is waiting in the inbox (files that cannot be moved aside)."""
        with self._lock:
            waiting = [p for p in self._candidates if p not in self._refused_at]
        return not waiting and not any(p not in self._refused_at for p in self._iter_inbox())


def start_observer(settings: Settings, scanner: InboxScanner) -> Any:
    """Start a watchdog observer (inotify, or polling per ``settings.watcher``) that pokes
    ``scanner``; returns the observer (call ``.stop()`` and ``.join()``)."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    def _native() -> Any:
        try:  # Linux: report a move from outside the inbox as a move, not a creation
            from watchdog.observers.inotify import InotifyObserver
        except ImportError:  # pragma: no cover - other platforms
            return Observer()
        return InotifyObserver(generate_full_events=True)

    class _Handler(FileSystemEventHandler):
        polling = False

        def on_any_event(self, event: FileSystemEvent) -> None:
            if event.is_directory or event.event_type in ("deleted", "opened",
                                                          "closed_no_write"):
                return
            dest = getattr(event, "dest_path", "")
            kind = str(event.event_type)
            if kind == "moved" and not dest:
                return  # moved out of the inbox (unmatched IN_MOVED_FROM)
            # a move into place (from inside the inbox or from another folder: IN_MOVED_TO,
            # src "" when unmatched) is final: it was written elsewhere and is complete
            if self.polling and kind != "moved":
                kind = "poll"  # a polling observer never reports a close: size+mtime decide
            scanner.poke(str(dest or event.src_path), kind)

    settings.inbox_dir.mkdir(parents=True, exist_ok=True)
    handler = _Handler()
    if settings.watcher == "polling":
        observer: Any = PollingObserver(timeout=settings.poll_interval_seconds)
        handler.polling = True
    else:
        observer = _native()
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


