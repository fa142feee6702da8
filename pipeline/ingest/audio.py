"""Audio input: probing a file before we trust it, and decoding it in bounded chunks.

``probe(path, settings)`` opens the file with PyAV (FFmpeg bundled), checks that it holds
decodable audio of an acceptable length and returns an ``AudioInfo`` (with the file's
SHA-256, streamed). Each kind of bad input raises one ``AudioError`` subclass whose message
says what arrived and what was expected. A file whose audio is shorter than its container
says (a WAV whose header promises more data than the file holds; an MP3 or FLAC cut short,
whose stated duration comes from its Xing/STREAMINFO header) is accepted but marked
``truncated``: ``completeness`` compares the stated duration with the end of the last packet
present (a demux, no decoding), within ``TruncationOptions``' tolerance. The inbox uses the
same check to wait for files still being written.

Every read is bounded and refuses what is not a regular file: ``open_regular`` opens with
``O_NOFOLLOW`` (a symlink is never followed) and ``O_NONBLOCK`` (a FIFO does not block), then
checks the open descriptor (``fstat``) is a regular file; ``sha256_file`` reads at most
``max_bytes``.

``iter_audio(path, ...)`` decodes to 16 kHz mono float32 and yields chunks of a fixed length,
so that memory stays bounded for hour-long files. The input file is only ever read.

Stored audio may be encrypted at rest (``pipeline.core.files``): every reader here opens the
file with ``open_regular`` and hands it to ``files.plain_reader``, which passes a plain file
through and decrypts an encrypted one into memory (FFmpeg seeks in some formats, and
``probe`` rewinds). The SHA-256 is always that of the plain audio.
"""

from __future__ import annotations

import errno
import gc
import hashlib
import logging
import os
import stat
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from pipeline.core import files
from pipeline.core.errors import (
    AudioDecodeError,
    AudioError,
    AudioTooLongError,
    EmptyAudioError,
    UnsupportedFormatError,
)
from pipeline.core.records import AudioInfo
from pipeline.core.settings import Settings

__all__ = [
    "SAMPLE_RATE",
    "probe",
    "sha256_file",
    "open_regular",
    "NotRegularFileError",
    "FileTooLargeError",
    "TruncationOptions",
    "Completeness",
    "completeness",
    "iter_audio",
    "decode",
    "sniff",
    "wav_header",
    "WavHeader",
]

log = logging.getLogger(__name__)

#: Whisper works on 16 kHz mono.
SAMPLE_RATE = 16000
_BLOCK = 1024 * 1024
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # streaming writers leave these in RIFF/data sizes

# File signatures for naming what a non-audio file is.
_MAGIC: list[tuple[bytes, str]] = [
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x7fELF", "a program (ELF executable)"),
    (b"MZ", "a Windows program"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"SQLite format 3", "an SQLite database"),
    (b"{\\rtf", "an RTF document"),
]


class NotRegularFileError(AudioError):
    """A symlink, FIFO, device, socket or folder where a regular file was expected."""

    code = "not_a_regular_file"


class FileTooLargeError(AudioTooLongError):
    """A file larger than the configured maximum (``max_file_bytes``)."""

    code = "file_too_large"


def describe_mode(mode: int) -> str:
    """What an ``lstat`` mode is, in words ("a symbolic link", "a named pipe (FIFO)", ...)."""
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a special file"


def open_regular(path: Path) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file; never follow a symlink.

    ``O_NOFOLLOW`` refuses a link, ``O_NONBLOCK`` keeps a FIFO from blocking the open, and
    ``fstat`` on the open descriptor (not the name: no race) checks the kind. Raises
    ``NotRegularFileError`` otherwise, ``OSError`` when the file cannot be opened.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFileError(
                f"{Path(path).name} is a symbolic link; only regular files are read "
                "(links are never followed)."
            ) from exc
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(
                f"{Path(path).name} is {describe_mode(mode)}; only regular files are read."
            )
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _reader(path: Path | files.AudioRef, settings: Settings | None = None) -> BinaryIO:
    """``path``'s plain bytes, seekable: ``open_regular`` then ``files.plain_reader``."""
    if isinstance(path, files.AudioRef):
        settings, path = settings or path.settings, path.path
    return files.plain_reader(open_regular(Path(path)), Path(path), settings)


def sha256_file(path: Path, max_bytes: int | None = None,
                settings: Settings | None = None) -> str:
    """SHA-256 (hex) of a regular file's plain bytes (decrypted when encrypted at rest),
    read in 1 MiB blocks; at most ``max_bytes`` are read (``FileTooLargeError`` beyond).
    Links and special files raise ``NotRegularFileError``."""
    h = hashlib.sha256()
    read = 0
    with _reader(path, settings) as fh:
        while block := fh.read(_BLOCK):
            read += len(block)
            if max_bytes is not None and read > max_bytes:
                raise FileTooLargeError(
                    f"{Path(path).name} is larger than {max_bytes / 1e9:.1f} GB, the most "
                    "accepted (max_file_bytes)."
                )
            h.update(block)
    return h.hexdigest()


def sniff(head: bytes) -> str:
    """Name what the first bytes of a file look like ("looks like a text file", ...)."""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return f"looks like {what}"
    if not head:
        return "is empty"
    if b"\x00" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError as exc:
            # a multi-byte character cut at the end of the sample is still text
            text = head[: exc.start].decode("utf-8") if exc.start > len(head) - 4 else ""
        if text and sum(c.isprintable() or c in "\r\n\t" for c in text) >= 0.95 * len(text):
            stripped = text.lstrip().lower()
            if stripped.startswith(("{", "[")):
                return "looks like a JSON text file"
            if stripped.startswith(("<!doctype html", "<html")):
                return "looks like an HTML page"
            if stripped.startswith("<"):
                return "looks like an XML/HTML text file"
            return "looks like a text file"
    return "is not in any audio format FFmpeg recognises"


class WavHeader:
    """The facts of a RIFF/WAVE header that matter for truncation and duration."""

    def __init__(
        self,
        byte_rate: int,
        data_offset: int,
        declared: int | None,
        available: int,
        format_tag: int = 0,
    ) -> None:
        self.format_tag = format_tag
        self.byte_rate = byte_rate
        self.data_offset = data_offset
        self.declared = declared  # None when the writer left it unknown (streaming)
        self.available = available

    @property
    def truncated(self) -> bool:
        """The data chunk promises more bytes than the file holds."""
        return self.declared is not None and self.declared > self.available

    @property
    def duration_s(self) -> float | None:
        """Duration of the audio data actually present."""
        if self.byte_rate <= 0:
            return None
        present = self.available if self.declared is None else min(self.declared, self.available)
        return present / self.byte_rate


def wav_header(path: Path, settings: Settings | None = None) -> WavHeader | None:
    """Parse a RIFF/WAVE header (fmt + data chunk); ``None`` if the file is not a WAV."""
    with _reader(path, settings) as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(0)
        head = fh.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
            return None
        byte_rate = 0
        format_tag = 0
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            chunk = fh.read(8)
            if len(chunk) < 8:
                break
            cid, csize = chunk[:4], struct.unpack("<I", chunk[4:8])[0]
            if cid == b"fmt ":
                fmt = fh.read(min(csize, 16))
                if len(fmt) >= 12:
                    format_tag = struct.unpack("<H", fmt[0:2])[0]
                    byte_rate = struct.unpack("<I", fmt[8:12])[0]
            elif cid == b"data":
                available = size - (pos + 8)
                declared = None if csize in _UNKNOWN_SIZES or head[:4] == b"RF64" else csize
                return WavHeader(byte_rate, pos + 8, declared, available, format_tag)
            pos += 8 + csize + (csize & 1)
    return WavHeader(byte_rate, size, 0, 0, format_tag)  # header without a data chunk


@dataclass(frozen=True)
class TruncationOptions:
    """When compressed audio counts as cut short: more than ``tolerance_s`` seconds *and*
    more than ``tolerance_ratio`` of its stated duration are missing (encoder padding and
    rounding stay well inside both). A WAV's header is exact: any missing byte counts."""

    tolerance_s: float = 0.5
    tolerance_ratio: float = 0.03

    def is_short(self, present_s: float, stated_s: float) -> bool:
        """True when ``present_s`` falls short of ``stated_s`` by more than both tolerances."""
        missing = stated_s - present_s
        return missing > self.tolerance_s and missing > self.tolerance_ratio * stated_s


@dataclass(frozen=True)
class Completeness:
    """The duration a file states (header/container) and the duration actually present."""

    stated_s: float | None
    present_s: float | None
    truncated: bool


def _stated_s(container: av.container.InputContainer, stream: av.audio.AudioStream
              ) -> float | None:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    return None


def _present_s(container: av.container.InputContainer, stream: av.audio.AudioStream
               ) -> float | None:
    """End of the last packet in the file (pts + duration) from its stream start: demuxed,
    not decoded. ``None`` when packets carry no timestamps."""
    tb = stream.time_base
    if not tb:
        return None
    start = float(stream.start_time * tb) if stream.start_time is not None else 0.0
    end: float | None = None
    for packet in container.demux(stream):
        if packet.pts is None:
            continue
        e = float((packet.pts + (packet.duration or 0)) * tb)
        end = e if end is None or e > end else end
    return None if end is None else max(0.0, end - start)


def completeness(path: Path | str, options: TruncationOptions | None = None,
                 settings: Settings | None = None) -> Completeness:
    """Compare the duration ``path`` states with what it holds; never decodes.

    WAV: the data chunk size in the header against the bytes present (exact). Other formats:
    the stream/container duration against the end of the last packet present, within
    ``options``. A file PyAV cannot open, or one stating no duration, is not judged
    (``truncated`` False): ``probe`` names what is wrong with it. Raises
    ``NotRegularFileError`` for links and special files, ``OSError`` if unreadable.
    """
    options = options or TruncationOptions()
    path = Path(path)
    wav = wav_header(path, settings)
    if wav is not None:
        stated = (wav.declared / wav.byte_rate
                  if wav.declared is not None and wav.byte_rate > 0 else None)
        return Completeness(stated, wav.duration_s, wav.truncated)
    with _reader(path, settings) as fh:
        try:
            with av.open(fh, mode="r", metadata_errors="ignore") as container:
                if not container.streams.audio:
                    return Completeness(None, None, False)
                stream = container.streams.audio[0]
                stated = _stated_s(container, stream)
                if stated is None:
                    return Completeness(None, None, False)
                present = _present_s(container, stream)
        except (av.error.FFmpegError, ValueError, UnicodeDecodeError, NotImplementedError):
            return Completeness(None, None, False)
    if present is None:
        return Completeness(stated, None, False)
    return Completeness(stated, present, options.is_short(present, stated))


def _open(path: Path, settings: Settings | None = None) -> av.container.InputContainer:
    try:
        if files.is_encrypted(path):  # decrypted in memory: FFmpeg may seek
            return av.open(_reader(path, settings), mode="r", metadata_errors="ignore")
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.error.InvalidDataError, av.error.FFmpegError, UnicodeDecodeError) as exc:
        with _reader(path, settings) as fh:
            head = fh.read(4096)
        raise AudioDecodeError(
            f"{path.name} could not be opened as audio: it {sniff(head)}; expected an audio "
            "recording (WAV, MP3, M4A, OGG, WebM, FLAC, AMR, ...)."
        ) from exc


def _fmt_duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _count_duration(container: av.container.InputContainer, limit_s: float) -> float:
    """Decode-free duration for containers that do not state it: sum packet durations."""
    stream = container.streams.audio[0]
    total = 0.0
    tb = stream.time_base
    for packet in container.demux(stream):
        if packet.duration and tb:
            total += float(packet.duration * tb)
        if total > limit_s:
            break
    return total


def probe(path: Path | str, settings: Settings,
          truncation: TruncationOptions | None = None) -> AudioInfo:
    """Check an audio file and describe it; raise an ``AudioError`` subclass if unusable.

    Never modifies the file. Long files are refused from their stated duration, without
    decoding them. A file holding less audio than it states (``completeness``, within
    ``truncation``) is accepted, marked ``truncated``, with the duration present.
    """
    path = Path(path)
    try:
        st = path.stat()  # a link named on the command line is followed; the inbox never
    except FileNotFoundError:  # passes one (``inbox.register`` quarantines links)
        raise AudioError(f"Audio file {path} does not exist.") from None
    src = path.resolve() if path.is_symlink() else path  # reads below never follow a link
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(
            f"{path.name} is {describe_mode(st.st_mode)}, not a regular file; expected an "
            "audio recording."
        )
    size = st.st_size
    if size == 0:
        raise EmptyAudioError(f"{path.name} is empty (0 bytes); expected an audio recording.")
    if size > settings.max_file_bytes:
        raise AudioTooLongError(
            f"{path.name} is {size / 1e9:.1f} GB; at most {settings.max_file_bytes / 1e9:.1f} GB "
            "is accepted."
        )
    wav = wav_header(src, settings)
    if wav is not None and wav.available == 0:
        raise EmptyAudioError(f"{path.name} is a WAV header with no audio data in it.")

    with _open(src, settings) as container:
        fmt = container.format.name
        if not container.streams.audio:
            with _reader(src, settings) as fh:
                what = sniff(fh.read(4096))
            kind = "" if what.startswith("is not") else f" ({what.removeprefix('looks like ')})"
            raise UnsupportedFormatError(
                f"{path.name} is a '{fmt}' container{kind} with no audio stream; expected an "
                "audio recording."
            )
        stream = container.streams.audio[0]
        ctx = stream.codec_context
        codec = ctx.name if ctx is not None else "unknown"
        if ctx is None and wav is not None:
            codec = f"WAV format tag 0x{wav.format_tag:04x}"
        sample_rate = int(ctx.sample_rate or 0) if ctx is not None else 0
        channels = int(ctx.channels or 0) if ctx is not None else 0

        # Decode the first frame: proves the codec is usable here.
        first_ok = False
        error: Exception | None = None
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError as exc:  # one bad packet: try the next
                    error = exc
                    continue
                if frames:
                    first_ok = True
                    sample_rate = sample_rate or frames[0].sample_rate
                    break
        except (av.error.FFmpegError, ValueError, NotImplementedError) as exc:
            error = exc
        if not first_ok:
            if error is not None and not isinstance(error, av.error.InvalidDataError):
                raise UnsupportedFormatError(
                    f"{path.name} is a '{fmt}' file whose audio codec '{codec}' cannot be "
                    "decoded here; expected WAV, MP3, M4A/AAC, OGG/Opus, WebM, FLAC or AMR."
                ) from error
            if error is not None:
                raise AudioDecodeError(
                    f"{path.name} is a '{fmt}' file whose '{codec}' audio could not be "
                    "decoded (damaged data); expected a playable recording."
                ) from error
            raise EmptyAudioError(f"{path.name} is a '{fmt}' file with no audio in it.")

        stated = False  # the duration below is the container's word, not counted
        if wav is not None and wav.duration_s is not None:
            duration = wav.duration_s
        elif (said := _stated_s(container, stream)) is not None:
            duration, stated = said, True
        else:
            container.seek(0)
            duration = _count_duration(container, settings.max_audio_seconds)

    if duration > settings.max_audio_seconds:
        raise AudioTooLongError(
            f"{path.name} lasts {_fmt_duration(duration)}; at most "
            f"{_fmt_duration(settings.max_audio_seconds)} is accepted (max_audio_seconds)."
        )
    truncated = False
    if wav is not None and wav.truncated:
        truncated = True
        log.info("truncated WAV: header promises %s bytes, file holds %d", wav.declared,
                 wav.available)
    elif wav is None and stated:
        comp = completeness(src, truncation, settings)
        if comp.truncated and comp.present_s is not None:
            truncated = True
            log.info("truncated %s audio: states %.1f s, holds %.1f s", fmt, duration,
                     comp.present_s)
            duration = comp.present_s
    return AudioInfo(
        path=path,
        sha256=sha256_file(src, settings.max_file_bytes, settings),
        size_bytes=size,
        format=fmt,
        codec=codec,
        sample_rate=sample_rate,
        channels=channels,
        duration_s=round(duration, 3),
        truncated=truncated,
    )


#: PyAV resampler objects are only freed by the garbage collector (faster-whisper's
#: decode_audio collects after every file too). A full collection costs 0.15-0.25 s in a
#: worker holding the language models (~220k objects), and a dictation streams its file 2-4
#: times, so it runs at most once per ``_GC_EVERY_S``: what waits meanwhile is a few small
#: resampler objects.
_GC_EVERY_S = 30.0
_last_gc = 0.0


def _collect_now_and_then() -> None:
    global _last_gc
    now = time.monotonic()
    if now - _last_gc >= _GC_EVERY_S:
        _last_gc = now
        gc.collect()


def iter_audio(
    path: Path | str | files.AudioRef, chunk_seconds: float, sample_rate: int = SAMPLE_RATE,
    settings: Settings | None = None,
) -> Iterator[np.ndarray]:
    """Decode to mono float32 at ``sample_rate`` and yield chunks of ``chunk_seconds``.

    Only about one chunk is held in memory (plus, for a file encrypted at rest, its plain
    bytes). Undecodable packets are skipped (counted in the debug log), as faster-whisper
    does. ``path`` may be a ``files.AudioRef`` (a path with the settings that open it).
    """
    if isinstance(path, files.AudioRef):
        settings, path = settings or path.settings, path.path
    path = Path(path)
    chunk_samples = max(int(chunk_seconds * sample_rate), sample_rate)
    # s16 like faster-whisper's own decode_audio, so both give the model identical samples
    resampler = av.audio.resampler.AudioResampler(format="s16", layout="mono", rate=sample_rate)
    parts: list[np.ndarray] = []
    held = 0
    bad_packets = 0

    def take(n: int) -> np.ndarray:
        nonlocal parts, held
        joined = np.concatenate(parts) if len(parts) > 1 else parts[0]
        out, rest = joined[:n], joined[n:]
        parts = [rest] if rest.size else []
        held = rest.size
        return np.ascontiguousarray(out, dtype=np.float32)

    try:
        with _open(path, settings) as container:
            stream = container.streams.audio[0]
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    bad_packets += 1
                    continue
                for frame in frames:
                    frame.pts = None
                    for out in resampler.resample(frame):
                        arr = out.to_ndarray().reshape(-1).astype(np.float32) / 32768.0
                        parts.append(arr)
                        held += arr.size
                while held >= chunk_samples:
                    yield take(chunk_samples)
            for out in resampler.resample(None):
                arr = out.to_ndarray().reshape(-1).astype(np.float32) / 32768.0
                parts.append(arr)
                held += arr.size
            while held >= chunk_samples:
                yield take(chunk_samples)
            if held:
                yield take(held)
    finally:
        del resampler
        _collect_now_and_then()
        if bad_packets:
            log.debug("skipped %d undecodable packets", bad_packets)


def decode(path: Path | str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The whole file as one mono float32 array (for short files and tests)."""
    chunks = list(iter_audio(path, chunk_seconds=3600.0, sample_rate=sample_rate))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
