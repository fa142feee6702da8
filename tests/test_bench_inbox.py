"""``dictation bench-inbox`` helpers: soak files with distinct bytes, the memory verdict."""

from __future__ import annotations

import hashlib
import struct
import wave
from pathlib import Path

import pytest

from pipeline.commands.bench_inbox import _variant, soak_verdict

MB = 1_000_000


def _wav(path: Path, samples: int = 16000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(struct.pack(f"<{samples}h", *([1000, -1000] * (samples // 2))))
    return path


def test_variants_have_new_hashes_and_stay_valid_wavs(tmp_path: Path) -> None:
    """Every soak file gets its own SHA-256 (the idempotency key) and is the same audio."""
    base = _wav(tmp_path / "base.wav").read_bytes()
    hashes = set()
    for i in range(300):
        out = _variant(base, i, tmp_path / f"v{i}.wav")
        hashes.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(hashes) == 300
    with wave.open(str(tmp_path / "v299.wav")) as w:
        assert (w.getnframes(), w.getframerate()) == (16000, 16000)
        frames = w.readframes(w.getnframes())
    assert frames[:-4] == base[-len(frames):-4]  # only the last two samples differ


@pytest.mark.parametrize(
    ("series", "ok"),
    [
        ([(50, 470 * MB), (100, 475 * MB), (500, 480 * MB)], True),  # +5 MB after warm-up
        ([(50, 300 * MB), (100, 475 * MB), (500, 476 * MB)], True),  # warm-up growth ignored
        ([(50, 470 * MB), (100, 475 * MB), (500, 540 * MB)], False),  # +65 MB > 47 MB
        ([(50, 200 * MB), (100, 200 * MB), (500, 225 * MB)], False),  # +12.5% > 10%
        ([(100, 475 * MB)], False),  # one round cannot show a trend
    ],
)
def test_soak_verdict(series: list[tuple[int, int]], ok: bool) -> None:
    """Growth from the warm-up reference to the last round within the smaller of 10% and
    50 MB passes."""
    got, why = soak_verdict(series, warm_files=100, tolerance_pct=10, tolerance_mb=50)
    assert got is ok, why
    if len(series) > 1:
        assert ("OK" if ok else "GROWS") in why
