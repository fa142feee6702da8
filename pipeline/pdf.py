"""PDF from .docx through LibreOffice headless (optional dependency).

Each conversion runs ``soffice --headless --convert-to pdf`` with its own user profile
(``-env:UserInstallation``), so that concurrent conversions never share (and lock) one profile,
and with a timeout. Profiles are kept per process and thread under the cache directory so
that only the first conversion pays the profile set-up.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from pipeline.errors import PipelineError

__all__ = ["PdfConversionError", "find_soffice", "convert_to_pdf", "SOFFICE_MISSING"]

log = logging.getLogger(__name__)

SOFFICE_MISSING = (
    "LibreOffice (soffice) is not installed, so no PDF can be made; expected the 'soffice' "
    "command (Debian: apt-get install libreoffice-writer-nogui) or settings.pdf set to "
    "'auto' or 'never'."
)


class PdfConversionError(PipelineError):
    """LibreOffice is missing or failed to convert a document."""

    code = "pdf_error"


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
    profile = Path(profile_root) / f"profile-{os.getpid()}-{threading.get_ident()}"
    profile.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
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
