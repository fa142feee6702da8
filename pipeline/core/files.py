"""Patient files at rest: the one small layer every reader and writer of stored audio and
sidecars goes through (the inbox, the worker, the workbench, the exports).

A stored file is either an encrypted file (``pipeline.core.crypto``'s format, recognised by
its header) or, when ``settings.encrypt_files`` is off or for files written before it was
on, a plain one: readers accept both, by the header, so switching the setting never strands
a file. Writers encrypt when ``settings.encrypt_files``.

- ``open_audio(path, settings)``: a *seekable* binary file of the plain audio. FFmpeg needs
  to seek for some of the formats we accept (MP4/M4A with the index at the end, and
  ``audio.probe`` rewinds to count a duration), and ``crypto.open_decrypted`` is forward
  only, so an encrypted file is decrypted into memory: the compressed file's size (a
  14.6-minute WAV at 16 kHz is 28 MB; the decode itself peaks far above that), never a
  decrypted copy on disk. Measured in docs/measurements.md.
- ``read_bytes`` / ``write_bytes``: small files (sidecars, the drafts' outputs, exports).
- ``seals(path, settings)``: whether a file written at ``path`` is encrypted: inside the
  data directory when ``settings.encrypt_files``; outside it (``dictation render TEXT --out
  DIR``, an export the user asked for) it is written plain.
- ``seal(path, settings, src)``: encrypt a claimed plain file in place (a 0600 temporary
  file beside it, fsync, atomic rename over the plain one, so the clear bytes are gone only
  once the encrypted copy is durable) and return the SHA-256 of the *plain* bytes (the
  inbox's idempotency key does not depend on the random nonce). An encrypted file is left
  as it is and its plain bytes hashed (a resumed claim).
- ``AudioRef``: a path with the settings to open it, for code that passes a path through
  layers that do not otherwise carry the settings (the speech stage's decoders).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from pipeline.core import crypto
from pipeline.core.errors import PipelineError
from pipeline.core.settings import Settings, get_settings

__all__ = [
    "AudioRef",
    "LimitExceededError",
    "is_encrypted",
    "keys_for",
    "open_audio",
    "plain_reader",
    "read_bytes",
    "write_bytes",
    "seal",
    "seals",
    "sha256_plain",
    "plain_size",
]

_BLOCK = 1024 * 1024


class LimitExceededError(PipelineError):
    """A stored file holds more plain bytes than the caller accepts."""

    code = "too_large"


@dataclass(frozen=True)
class AudioRef:
    """A stored audio path and the settings (key ring) that open it."""

    path: Path
    settings: Settings

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name


def keys_for(settings: Settings | None) -> crypto.KeyRing:
    """The data key ring of ``settings`` (the process settings when None)."""
    return crypto.keyring(settings or get_settings())


def is_encrypted(path: Path) -> bool:
    """True when ``path`` is a regular file starting with the encrypted-file header (a link
    named by the caller is followed; a FIFO or device is never read: False)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return os.read(fd, len(crypto.MAGIC)) == crypto.MAGIC
    finally:
        os.close(fd)


def _open_raw(path: Path) -> BinaryIO:
    """Open a regular file for reading, never through a link, never blocking on a FIFO."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{Path(path).name} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _decrypting(fh: IO[bytes], path: Path, settings: Settings | None) -> crypto.DecryptingReader:
    return crypto.DecryptingReader(fh, keys_for(settings), name=crypto._label(path))


def read_bytes(path: Path, settings: Settings | None = None, *,
               max_bytes: int | None = None) -> bytes:
    """The plain bytes of ``path`` (decrypted when it is encrypted). With ``max_bytes``, at
    most ``max_bytes + 1`` plain bytes are returned (so a caller can tell it is larger)."""
    path = Path(path)
    with _open_raw(path) as fh:
        head = fh.read(crypto.HEADER_SIZE)
        fh.seek(0)
        if not head.startswith(crypto.MAGIC):
            return fh.read() if max_bytes is None else fh.read(max_bytes + 1)
        with _decrypting(fh, path, settings) as reader:
            if max_bytes is None:
                return reader.readall()
            out = bytearray()
            while len(out) <= max_bytes and (block := reader.read(_BLOCK)):
                out += block
            return bytes(out[: max_bytes + 1])


def seals(path: Path, settings: Settings) -> bool:
    """True when a file written at ``path`` is to be encrypted: ``settings.encrypt_files``
    and ``path`` lies under the data directory (see the module docstring)."""
    if not settings.encrypt_files:
        return False
    return Path(path).expanduser().resolve().is_relative_to(settings.data_path)


def write_bytes(path: Path, data: bytes, settings: Settings, *,
                encrypt: bool | None = None) -> None:
    """Write ``data`` to ``path`` atomically (0600): encrypted when ``encrypt`` (default
    ``settings.encrypt_files``)."""
    if settings.encrypt_files if encrypt is None else encrypt:
        crypto.write_encrypted(Path(path), data, keys_for(settings))
    else:
        with crypto.atomic_output(Path(path)) as fh:
            fh.write(data)


def open_audio(path: Path | AudioRef, settings: Settings | None = None) -> BinaryIO:
    """A seekable binary file of ``path``'s plain audio: the file itself when it is plain,
    an in-memory copy of its plain bytes when encrypted (see the module docstring)."""
    if isinstance(path, AudioRef):
        settings, path = settings or path.settings, path.path
    path = Path(path)
    return plain_reader(_open_raw(path), path, settings)


def plain_reader(fh: BinaryIO, path: Path, settings: Settings | None = None) -> BinaryIO:
    """``fh`` (a seekable file of ``path``, just opened by the caller's own checked open)
    when it is plain, else an in-memory copy of its plain bytes (``fh`` is then closed)."""
    try:
        head = fh.read(crypto.HEADER_SIZE)
        fh.seek(0)
    except BaseException:
        fh.close()
        raise
    if not head.startswith(crypto.MAGIC):
        return fh
    with fh, _decrypting(fh, Path(path), settings) as reader:
        return io.BytesIO(reader.readall())


def sha256_plain(src: IO[bytes] | io.RawIOBase, max_bytes: int | None = None) -> tuple[str, int]:
    """(SHA-256 hex, size) of what ``src`` yields; ``LimitExceededError`` past ``max_bytes``."""
    h = hashlib.sha256()
    n = 0
    while block := src.read(_BLOCK):
        n += len(block)
        if max_bytes is not None and n > max_bytes:
            raise LimitExceededError(f"more than {max_bytes} bytes")
        h.update(block)
    return h.hexdigest(), n


def plain_size(path: Path, settings: Settings | None = None) -> int:
    """The plain size of ``path`` in bytes (decrypts to count when it is encrypted)."""
    path = Path(path)
    if not is_encrypted(path):
        return path.stat().st_size
    with _open_raw(path) as fh, _decrypting(fh, path, settings) as reader:
        return sha256_plain(reader)[1]


def seal(path: Path, settings: Settings, src: IO[bytes] | None = None, *,
         max_bytes: int | None = None) -> str:
    """Encrypt the plain file ``path`` in place when ``settings.encrypt_files`` (see the
    module docstring) and return the SHA-256 of its plain bytes. ``src`` is ``path`` already
    opened for reading (the caller's checked, link-refusing open); it is consumed, not
    closed. ``LimitExceededError`` when it holds more than ``max_bytes``."""
    path = Path(path)
    own = src is None
    fh = _open_raw(path) if src is None else src
    try:
        head = fh.read(crypto.HEADER_SIZE)
        if head.startswith(crypto.MAGIC):  # already sealed (a resumed claim): hash only
            with _decrypting(io.BufferedReader(_Prefixed(head, fh)), path, settings) as reader:
                return sha256_plain(reader, max_bytes)[0]
        rest = io.BufferedReader(_Prefixed(head, fh))
        if not settings.encrypt_files:
            return sha256_plain(rest, max_bytes)[0]
        h = hashlib.sha256()
        n = 0
        with crypto.atomic_output(path) as out, \
                crypto.EncryptingWriter(out, keys_for(settings)) as writer:
            while block := rest.read(_BLOCK):
                n += len(block)
                if max_bytes is not None and n > max_bytes:
                    raise LimitExceededError(f"more than {max_bytes} bytes")
                h.update(block)
                writer.write(block)
        return h.hexdigest()
    finally:
        if own:
            fh.close()


class _Prefixed(io.RawIOBase):
    """``prefix`` then the rest of ``fh`` (a header already read from a non-seekable file)."""

    def __init__(self, prefix: bytes, fh: IO[bytes]) -> None:
        super().__init__()
        self._prefix = prefix
        self._fh = fh

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._fh.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:  # the caller owns ``fh``
        super().close()
