"""PDF from .docx through LibreOffice headless (optional dependency).

Each conversion runs ``soffice --headless --convert-to pdf`` with a user profile
(``-env:UserInstallation``) that no other conversion is using at the time (profile slots locked
with ``flock``, so concurrent conversions in threads or processes never share one), and with a
timeout that kills LibreOffice's whole process group. Slots are reused, so only a slot's first
conversion pays the profile set-up.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.core.errors import PdfConversionError

__all__ = ["PdfConversionError", "find_soffice", "convert_to_pdf", "SOFFICE_MISSING"]

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


def _convert(soffice: str, profile: Path, docx: Path, out_dir: Path, timeout: float) -> Path:
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
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        env={**os.environ, "HOME": str(profile)},
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
