"""Audio input: probing a file before we trust it, and decoding it in bounded chunks.

``probe(path, settings)`` opens the file with PyAV (FFmpeg bundled), checks that it holds
decodable audio of an acceptable length and returns an ``AudioInfo`` (with the file's
SHA-256, streamed). Each kind of bad input raises one ``AudioError`` subclass whose message
says what arrived and what was expected. A WAV whose header promises more data than the file
holds is accepted but marked ``truncated``.

``iter_audio(path, ...)`` decodes to 16 kHz mono float32 and yields chunks of a fixed length,
so that memory stays bounded for hour-long files. The input file is only ever read.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

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


def sha256_file(path: Path) -> str:
    """SHA-256 (hex) of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
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


def wav_header(path: Path) -> WavHeader | None:
    """Parse a RIFF/WAVE header (fmt + data chunk); ``None`` if the file is not a WAV."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
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


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.error.InvalidDataError, av.error.FFmpegError, UnicodeDecodeError) as exc:
        with open(path, "rb") as fh:
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


def probe(path: Path | str, settings: Settings) -> AudioInfo:
    """Check an audio file and describe it; raise an ``AudioError`` subclass if unusable.

    Never modifies the file. Long files are refused from their stated duration, without
    decoding them.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"Audio file {path} does not exist.")
    if not path.is_file():
        raise AudioError(f"{path} is not a regular file; expected an audio recording.")
    size = path.stat().st_size
    if size == 0:
        raise EmptyAudioError(f"{path.name} is empty (0 bytes); expected an audio recording.")
    if size > settings.max_file_bytes:
        raise AudioTooLongError(
            f"{path.name} is {size / 1e9:.1f} GB; at most {settings.max_file_bytes / 1e9:.1f} GB "
            "is accepted."
        )
    wav = wav_header(path)
    if wav is not None and wav.available == 0:
        raise EmptyAudioError(f"{path.name} is a WAV header with no audio data in it.")

    with _open(path) as container:
        fmt = container.format.name
        if not container.streams.audio:
            with open(path, "rb") as fh:
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

        if wav is not None and wav.duration_s is not None:
            duration = wav.duration_s
        elif stream.duration is not None and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1_000_000
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
    return AudioInfo(
        path=path,
        sha256=sha256_file(path),
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
    path: Path | str, chunk_seconds: float, sample_rate: int = SAMPLE_RATE
) -> Iterator[np.ndarray]:
    """Decode to mono float32 at ``sample_rate`` and yield chunks of ``chunk_seconds``.

    Only about one chunk is held in memory. Undecodable packets are skipped (counted in the
    debug log), as faster-whisper does.
    """
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
        with _open(path) as container:
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
