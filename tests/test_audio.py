"""audio.probe and the streaming decoder on real files made at test time (espeak-ng, ffmpeg)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.core.errors import (
    AudioDecodeError,
    AudioError,
    AudioTooLongError,
    EmptyAudioError,
    UnsupportedFormatError,
)
from pipeline.core.settings import Settings
from pipeline.ingest import audio

sys.path.insert(0, str(Path(__file__).parent / "data" / "speech"))
import speechgen as gen


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ~10 s espeak-ng dictation clip (22.05 kHz WAV as espeak writes it)."""
    return gen.speak(tmp_path_factory.mktemp("clip") / "clip.wav")


@pytest.fixture(scope="module")
def clip_duration(clip: Path) -> float:
    with av.open(str(clip)) as c:
        s = c.streams.audio[0]
        return float(s.duration * s.time_base)


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:
        return False


# (id, make(src, dir) -> path, expected container substring, expected codec substring, rate)
FORMATS = [
    ("wav16k", lambda s, d: gen.ffmpeg(s, d / "a.wav", "-ar", "16000"), "wav", "pcm_s16le", 16000),
    ("wav8k_mulaw", lambda s, d: gen.ffmpeg(s, d / "tel.wav", "-ar", "8000", "-c:a", "pcm_mulaw"),
     "wav", "pcm_mulaw", 8000),
    ("mp3", lambda s, d: gen.ffmpeg(s, d / "a.mp3"), "mp3", "mp3", 22050),
    ("m4a_aac", lambda s, d: gen.ffmpeg(s, d / "a.m4a"), "m4a", "aac", 22050),
    ("ogg_opus", lambda s, d: gen.ffmpeg(s, d / "a.ogg", "-c:a", "libopus"), "ogg", "opus", 48000),
    ("webm_opus", lambda s, d: gen.ffmpeg(s, d / "a.webm", "-c:a", "libopus"), "webm", "opus",
     48000),
    ("flac", lambda s, d: gen.ffmpeg(s, d / "a.flac"), "flac", "flac", 22050),
    ("stereo_44k", lambda s, d: gen.ffmpeg(s, d / "st.wav", "-ac", "2", "-ar", "44100"), "wav",
     "pcm_s16le", 44100),
    ("amr_nb", lambda s, d: gen.pyav_encode(s, d / "a.amr", "libopencore_amrnb", "amr", 8000),
     "amr", "amr", 8000),
]


@pytest.mark.parametrize(("make", "container", "codec", "rate"),
                         [f[1:] for f in FORMATS], ids=[f[0] for f in FORMATS])
def test_probe_reads_each_recorder_format(
    make, container, codec, rate, clip: Path, clip_duration: float, tmp_path: Path,
    settings: Settings,
) -> None:
    """Every format recorders and phones produce probes with the right facts and checksum."""
    if codec == "amr" and not _has_encoder("libopencore_amrnb"):
        pytest.skip("no AMR encoder in this PyAV build to make the fixture")
    path = make(clip, tmp_path)
    before = (gen.sha256(path), path.stat().st_mtime_ns)
    info = audio.probe(path, settings)
    assert container in info.format
    assert codec in info.codec
    assert info.sample_rate == rate
    assert info.channels in (1, 2)
    assert info.duration_s == pytest.approx(clip_duration, abs=0.2)
    assert info.sha256 == before[0]
    assert info.size_bytes == path.stat().st_size
    assert not info.truncated
    assert (gen.sha256(path), path.stat().st_mtime_ns) == before  # never modified
    # ...and it decodes to 16 kHz mono float32 of the same length
    samples = audio.decode(path)
    assert samples.dtype == np.float32
    assert samples.size / 16000 == pytest.approx(clip_duration, abs=0.25)
    assert 0.01 < float(np.abs(samples).max()) <= 1.0


def test_dss_decoder_is_bundled() -> None:
    """Olympus/Philips DSS: the bundled FFmpeg has the demuxer and the DSS SP decoder.

    (No encoder exists to make a DSS fixture, so only the decoder's presence is checked.)
    """
    assert "dss" in av.formats_available
    assert "dss_sp" in av.codecs_available


def test_iter_audio_yields_bounded_chunks(clip: Path, clip_duration: float) -> None:
    """Decoding streams in fixed-size chunks: every chunk but the last is exactly chunk long."""
    chunks = list(audio.iter_audio(clip, chunk_seconds=2.0))
    assert len(chunks) == int(clip_duration // 2) + 1
    assert all(c.size == 32000 for c in chunks[:-1])
    assert 0 < chunks[-1].size <= 32000
    whole = audio.decode(clip)
    assert np.array_equal(np.concatenate(chunks), whole)


def test_zero_byte_file_is_empty_audio(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(EmptyAudioError, match="0 bytes"):
        audio.probe(path, settings)
    assert path.exists() and path.stat().st_size == 0


def test_text_file_renamed_wav_is_named_as_text(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "dictation.wav"
    path.write_text("Patient notes, typed instead of dictated.\nSecond line.\n")
    with pytest.raises(AudioDecodeError, match="looks like a text file"):
        audio.probe(path, settings)


def test_pdf_renamed_mp3_is_named_as_pdf(tmp_path: Path, settings: Settings) -> None:
    path = tmp_path / "letter.mp3"
    path.write_bytes(b"%PDF-1.7\n" + bytes(range(256)) * 8)
    with pytest.raises(AudioError, match="PDF"):
        audio.probe(path, settings)


def test_container_without_audio_names_the_format(tmp_path: Path, settings: Settings) -> None:
    """A video-only MP4 is an unsupported input: the message names the container."""
    path = tmp_path / "video only.mp4"
    import subprocess

    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "color=c=red:s=32x32:d=1", "-c:v", "mpeg4", str(path)], check=True)
    with pytest.raises(UnsupportedFormatError, match=r"mp4.*no audio stream"):
        audio.probe(path, settings)


def test_unknown_codec_names_the_codec(clip: Path, tmp_path: Path, settings: Settings) -> None:
    path = gen.set_wav_format_tag(clip, tmp_path / "odd codec.wav", 0x7777)
    with pytest.raises(UnsupportedFormatError, match="0x7777"):
        audio.probe(path, settings)


def test_truncated_wav_is_accepted_and_flagged(
    clip: Path, clip_duration: float, tmp_path: Path, settings: Settings
) -> None:
    """The header promises the whole clip; half the bytes are there: truncated, real length."""
    path = gen.truncate_wav(clip, tmp_path / "cut.wav", 0.5)
    info = audio.probe(path, settings)
    assert info.truncated is True
    assert info.duration_s == pytest.approx(clip_duration / 2, abs=0.1)
    complete = audio.probe(clip, settings)
    assert complete.truncated is False


def test_streaming_wav_with_unknown_size_is_not_truncated(
    clip: Path, tmp_path: Path, settings: Settings
) -> None:
    """Recorders that stream leave 0xFFFFFFFF as the data size: that is not truncation."""
    data = bytearray(clip.read_bytes())
    i = data.index(b"data")
    data[i + 4 : i + 8] = b"\xff\xff\xff\xff"
    data[4:8] = b"\xff\xff\xff\xff"
    path = tmp_path / "stream.wav"
    path.write_bytes(bytes(data))
    info = audio.probe(path, settings)
    assert not info.truncated
    assert info.duration_s > 5


def test_three_hour_file_is_refused_without_decoding(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A complete 3-hour WAV (100 Hz, 8-bit: 1 MB) is refused from its header: the packets
    are never counted or decoded (the counting step is wrapped to record calls)."""
    path = gen.long_header_wav(tmp_path / "three hours.wav", 3 * 3600)
    settings.max_audio_seconds = 2 * 3600
    calls: list[float] = []
    real = audio._count_duration

    def counting(container, limit_s):  # type: ignore[no-untyped-def]
        calls.append(limit_s)
        return real(container, limit_s)

    monkeypatch.setattr(audio, "_count_duration", counting)
    with pytest.raises(AudioTooLongError, match=r"3:00:00.*2:00:00"):
        audio.probe(path, settings)
    assert calls == []


def test_max_audio_seconds_applies_to_compressed_files(
    clip: Path, tmp_path: Path, settings: Settings
) -> None:
    path = gen.ffmpeg(clip, tmp_path / "a.m4a")
    settings.max_audio_seconds = 5
    with pytest.raises(AudioTooLongError):
        audio.probe(path, settings)


def test_path_with_spaces_and_non_ascii(clip: Path, tmp_path: Path, settings: Settings) -> None:
    folder = tmp_path / "Dr. Müller – Diktate"
    folder.mkdir()
    path = folder / "Patientin Zoë 01 (ärztlich).wav"
    shutil.copy(clip, path)
    info = audio.probe(path, settings)
    assert info.path == path
    assert info.duration_s > 5
    assert audio.decode(path).size > 0


def test_missing_file_is_an_audio_error(tmp_path: Path, settings: Settings) -> None:
    with pytest.raises(AudioError, match="does not exist"):
        audio.probe(tmp_path / "nope.wav", settings)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"hello world\n", "looks like a text file"),
        (b'{"patient": 1}', "JSON"),
        (b"<!DOCTYPE html><html>", "HTML"),
        (b"\x89PNG\r\n\x1a\n", "PNG"),
        (b"PK\x03\x04", "ZIP"),
        ("Grüße aus München".encode(), "looks like a text file"),
        (bytes([0, 1, 2, 250, 251, 0, 7]), "not in any audio format"),
    ],
)
def test_sniff_names_what_a_file_is(head: bytes, expected: str) -> None:
    assert expected in audio.sniff(head)


def test_sha256_file_matches_hashlib(clip: Path) -> None:
    assert audio.sha256_file(clip) == gen.sha256(clip)


@pytest.mark.parametrize("ext", ["mp3", "flac"])
def test_truncated_compressed_file_is_flagged_with_the_length_present(
    clip: Path, clip_duration: float, tmp_path: Path, settings: Settings, ext: str
) -> None:
    """An MP3 or FLAC cut in half still states the full duration (Xing / STREAMINFO header):
    probe flags it truncated and reports the length present; the whole file is not flagged."""
    full = gen.ffmpeg(clip, tmp_path / f"full.{ext}")
    raw = full.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(raw[: len(raw) // 2])
    info = audio.probe(cut, settings)
    assert info.truncated is True
    assert info.duration_s < 0.75 * clip_duration
    complete = audio.probe(full, settings)
    assert complete.truncated is False
    assert complete.duration_s == pytest.approx(clip_duration, abs=0.2)


def test_reads_never_follow_links_or_open_fifos(clip: Path, tmp_path: Path) -> None:
    """sha256_file and completeness refuse a symlink (to /dev/zero) and a FIFO at once."""
    import os

    link = tmp_path / "zero.wav"
    os.symlink("/dev/zero", link)
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    for path in (link, fifo):
        with pytest.raises(audio.NotRegularFileError):
            audio.sha256_file(path)
        with pytest.raises(audio.NotRegularFileError):
            audio.completeness(path)
    with pytest.raises(audio.FileTooLargeError):
        audio.sha256_file(clip, max_bytes=1000)
