"""Test audio made at test time (no committed binaries): speech with espeak-ng, formats with
ffmpeg or PyAV, silence/noise/long files with numpy + the standard ``wave`` module.

Used by tests/test_audio.py, test_transcribe.py, test_cli_transcribe.py, test_speech_models.py.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
import wave
from pathlib import Path

import numpy as np

#: What the synthetic clip says (the project wrote it; no patient data).
CLIP_TEXT = (
    "The patient is a sixty two year old man with pain in the right upper quadrant. "
    "He underwent laparoscopic surgery under general anesthesia. "
    "Estimated blood loss was minimal."
)
#: Words the real tiny.en model reliably gets from that clip.
CLIP_KEYWORDS = ("patient", "year", "right", "upper", "general", "anesthesia", "blood", "loss")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def speak(path: Path, text: str = CLIP_TEXT, voice: str = "en-us", speed: int = 160) -> Path:
    """Render ``text`` with espeak-ng into a WAV at ``path``."""
    if not shutil.which("espeak-ng"):  # pragma: no cover - the project's apt packages
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text],
                   check=True, capture_output=True)
    return path


def ffmpeg(src: Path, dst: Path, *args: str) -> Path:
    """Convert with the ffmpeg command line."""
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(src), *args, str(dst)],
                   check=True, capture_output=True)
    return dst


def pyav_encode(src: Path, dst: Path, codec: str, fmt: str, rate: int) -> Path:
    """Encode with PyAV's bundled FFmpeg (for encoders the ffmpeg CLI lacks, e.g. AMR)."""
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        res = av.AudioResampler(format="s16", layout="mono", rate=rate)
        for frame in inp.decode(audio=0):
            for f in res.resample(frame):
                for p in stream.encode(f):
                    out.mux(p)
        for f in res.resample(None):
            for p in stream.encode(f):
                out.mux(p)
        for p in stream.encode(None):
            out.mux(p)
    return dst


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    """Write float samples (-1..1) as 16-bit mono WAV."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def silence(path: Path, seconds: float = 20.0) -> Path:
    return write_wav(path, np.zeros(int(seconds * 16000), dtype=np.float32))


def pink_noise(path: Path, seconds: float = 20.0, seed: int = 7, level: float = 0.3) -> Path:
    """Pink-ish noise (white noise shaped 1/f in the frequency domain)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size)
    f[0] = 1
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return write_wav(path, level * x / np.abs(x).max())


def white_noise(path: Path, seconds: float = 20.0, seed: int = 3, level: float = 0.3) -> Path:
    rng = np.random.default_rng(seed)
    return write_wav(path, level * rng.uniform(-1, 1, int(seconds * 16000)))


def long_header_wav(path: Path, seconds: float, rate: int = 100) -> Path:
    """A real (complete) 8-bit WAV lasting ``seconds`` at a tiny sample rate: small on disk."""
    n = int(seconds * rate)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(rate)
        w.writeframes(b"\x80" * n)
    return path


def truncate_wav(src: Path, dst: Path, keep_fraction: float = 0.5) -> Path:
    """Copy the first part of a WAV; its header still promises the whole data chunk."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep_fraction)])
    return dst


def set_wav_format_tag(src: Path, dst: Path, tag: int) -> Path:
    """Copy a WAV with its fmt chunk's codec tag changed (an unknown codec)."""
    data = bytearray(src.read_bytes())
    i = data.index(b"fmt ")
    data[i + 8 : i + 10] = struct.pack("<H", tag)
    dst.write_bytes(bytes(data))
    return dst


def concat_wav(path: Path, parts: list[Path], gap_s: float = 1.0) -> Path:
    """Concatenate 16 kHz renderings of ``parts`` with ``gap_s`` of silence between them."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from pipeline.ingest.audio import decode

    gap = np.zeros(int(gap_s * 16000), dtype=np.float32)
    chunks: list[np.ndarray] = []
    for p in parts:
        chunks += [decode(p), gap]
    return write_wav(path, np.concatenate(chunks))
