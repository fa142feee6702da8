"""PDF from .docx through LibreOffice headless (optional dependency).

Each conversion runs ``soffice --headless --convert-to pdf`` with a user profile
(``-env:UserInstallation``) that no other conversion is using at the time (profile slots locked
with ``flock``, so concurrent conversions in threads or processes never share one), and with a
timeout that kills LibreOffice's whole process group. Slots are reused, so only a slot's first
conversion pays the profile set-up.

Drafts are encrypted at rest, but LibreOffice needs a clear .docx on disk: ``convert_bytes``
writes it into a private folder (0700, ``conv-*`` under ``work_root``: the data directory's
``cache/tmp``, itself 0700, so a clear file never lands outside the protected tree or on a
shared ``/tmp``), points LibreOffice's own temporary files there too (``TMPDIR``), reads the
PDF back and removes the folder in a ``finally`` (also after a timeout, when the process group
has been killed). A worker killed outright cannot run its ``finally``: the next conversion
removes ``conv-*`` folders older than any conversion can last.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core import crypto
from pipeline.core.errors import PdfConversionError

__all__ = ["PdfConversionError", "find_soffice", "convert_to_pdf", "convert_bytes",
           "SOFFICE_MISSING"]

log = logging.getLogger(__name__)

#: At most this many LibreOffice profiles (and so concurrent conversions) per profile root.
MAX_PROFILES = 8
#: LibreOffice runs this much nicer than us: the PDF is made after the draft is queued, and on a
#: 2-core machine it should not slow the next dictation's transcription.
NICENESS = 10

SOFFICE_MISSING = (
    "LibreOffice (soffice) is not installed, so no PDF can be made; expected the 'soffice' "
    "command (Debian: apt-get install libreoffice-writer-nogui) or settings.pdf set to "
    "'auto' or 'never'."
)

#: Prefix of the private conversion folders under ``work_root``.
WORK_PREFIX = "conv-"


def find_soffice() -> str | None:
    """Path of the LibreOffice binary, or None when it is not installed."""
    for name in ("soffice", "libreoffice"):
        found = shutil.which(name)
        if found:
            return found
    return None


def convert_to_pdf(docx: Path, out_dir: Path, *, profile_root: Path, timeout: float = 90.0) -> Path:
    """Convert ``docx`` into ``out_dir/<stem>.pdf``; raise ``PdfConversionError`` on failure."""
    soffice = find_soffice()
    if soffice is None:
        raise PdfConversionError(SOFFICE_MISSING)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _profile_slot(Path(profile_root)) as profile:
        return _convert(soffice, profile, docx, out_dir, timeout)


def convert_bytes(docx: bytes, *, profile_root: Path, work_root: Path, timeout: float = 90.0
                  ) -> bytes:
    """The PDF of the .docx ``docx`` (bytes in, bytes out); ``PdfConversionError`` on failure.

    The clear .docx, the PDF and LibreOffice's temporary files exist only in a private
    folder under ``work_root`` that is removed before this returns or raises (see the module
    docstring)."""
    soffice = find_soffice()
    if soffice is None:
        raise PdfConversionError(SOFFICE_MISSING)
    work_root = crypto.private_mkdir(Path(work_root))
    with _profile_slot(Path(profile_root)) as profile:
        _sweep(work_root, max(2 * timeout, 600.0))
        folder = Path(tempfile.mkdtemp(prefix=WORK_PREFIX, dir=work_root))  # 0700
        try:
            src = folder / "document.docx"
            fd = os.open(src, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(docx)
            scratch = folder / "tmp"
            scratch.mkdir(mode=0o700)
            out = folder / "out"
            out.mkdir(mode=0o700)
            return _convert(soffice, profile, src, out, timeout, scratch).read_bytes()
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _sweep(work_root: Path, max_age: float) -> None:
    """Remove conversion folders a killed worker left behind (older than ``max_age`` s)."""
    cutoff = time.time() - max_age
    for child in work_root.glob(f"{WORK_PREFIX}*"):
        try:
            if child.is_dir() and not child.is_symlink() and child.stat().st_mtime < cutoff:
                shutil.rmtree(child, ignore_errors=True)
                log.info("pdf: removed a stale conversion folder")
        except OSError:
            continue


@contextmanager
def _profile_slot(root: Path) -> Iterator[Path]:
    """A LibreOffice profile folder no other conversion uses right now.

    Slots ``slot-0`` ... are locked with ``flock`` (across processes and threads), so at most
    ``MAX_PROFILES`` profiles exist and each is reused: only a slot's first conversion pays
    LibreOffice's profile set-up."""
    root.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + 300
    while True:
        for slot in range(MAX_PROFILES):
            lock_path = root / f"slot-{slot}.lock"
            handle = open(lock_path, "a+b")  # noqa: SIM115 (held until the conversion ends)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.close()
                continue
            try:
                profile = root / f"slot-{slot}"
                profile.mkdir(exist_ok=True)
                yield profile
                return
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
        if time.monotonic() > deadline:
            raise PdfConversionError(
                f"All {MAX_PROFILES} LibreOffice profiles stayed busy for 5 minutes; expected "
                "one to become free."
            )
        time.sleep(0.2)


def _convert(soffice: str, profile: Path, docx: Path, out_dir: Path, timeout: float,
             scratch: Path | None = None) -> Path:
    cmd = [
        soffice,
        f"-env:UserInstallation={profile.resolve().as_uri()}",
        "--headless", "--norestore", "--nologo", "--nodefault", "--nolockcheck",
        "--convert-to", "pdf:writer_pdf_Export",
        "--outdir", str(out_dir),
        str(docx),
    ]
    t0 = time.perf_counter()
    # soffice is a wrapper script around soffice.bin: run it in its own process group so a
    # timeout kills both (killing only the wrapper leaves soffice.bin holding our pipes)
    nice = shutil.which("nice")
    if nice and NICENESS:
        cmd = [nice, "-n", str(NICENESS), *cmd]
    env = {**os.environ, "HOME": str(profile)}
    if scratch is not None:  # LibreOffice's own temporary files stay in the private folder
        env.update(TMPDIR=str(scratch), TMP=str(scratch), TEMP=str(scratch))
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env,
    )
    try:
        _, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _kill_group(proc)
        raise PdfConversionError(
            f"LibreOffice did not convert {docx.name} within {timeout:.0f} s; expected a PDF."
        ) from exc
    target = out_dir / f"{docx.stem}.pdf"
    if proc.returncode != 0 or not target.is_file() or target.stat().st_size == 0:
        log.warning("soffice failed rc=%s stderr_bytes=%d", proc.returncode, len(stderr))
        raise PdfConversionError(
            f"LibreOffice could not convert {docx.name} (exit status {proc.returncode}); "
            "expected a PDF next to it."
        )
    log.info("pdf converted seconds=%.2f", time.perf_counter() - t0)
    return target


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    try:
        proc.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        log.warning("soffice did not exit after kill pid=%d", proc.pid)
