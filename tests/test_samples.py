"""The shipped sample sets: manifests complete, files present, licences recorded, audio as
described, scripts consistent with their references, and the generator reproducible."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.devtools.evaluate import normalise, validate_manifest
from pipeline.devtools.samplegen import parse_script, read_manifest, render_audio, script_text
from pipeline.ingest.sidecar import parse_sidecar

DOC_TYPES = {"operative_report", "consult_letter", "progress_note", "discharge_summary",
             "radiology_report", "referral_letter"}
COMMAND_WORDS = re.compile(r"\b(period|comma|new paragraph|colon|open paren|close paren|"
                           r"scratch that)\b", re.IGNORECASE)
#: "colon" the organ, not the punctuation command, in a finished document
ANATOMY_COLON = re.compile(r"\b(ascending|descending|transverse|sigmoid|right|left|the) colon\b",
                           re.IGNORECASE)
SYNTHETIC_SETS = ("synthetic_medical", "synthetic_heldout")


def _pcm(path: Path) -> tuple[np.ndarray, int, int]:
    """Decoded samples (float mono), sample rate and channel count of an audio file."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate, channels = stream.rate, stream.channels
        frames = [f.to_ndarray() for f in container.decode(audio=0)]
    data = np.concatenate([f.reshape(-1) if f.ndim == 1 else f[0] for f in frames])
    if data.dtype.kind == "i":
        data = data.astype(np.float32) / 32768.0
    return data.astype(np.float32), rate, channels


def _stored_rate(path: Path, decoded_rate: int) -> int:
    """The sample rate the file was made from: Opus always decodes at 48 kHz, so for OGG/Opus
    read the input rate from the OpusHead header."""
    if path.suffix != ".ogg":
        return decoded_rate
    head = path.read_bytes()[:200]
    at = head.index(b"OpusHead")
    return int.from_bytes(head[at + 12 : at + 16], "little")


@pytest.fixture(scope="module")
def synthetic(samples_dir: Path) -> list:
    return validate_manifest(samples_dir / "synthetic_medical" / "manifest.csv")


@pytest.fixture(scope="module", params=SYNTHETIC_SETS)
def any_synthetic(request: pytest.FixtureRequest, samples_dir: Path) -> list:
    """Each synthetic set in turn: the tuned one and the held-out one."""
    return validate_manifest(samples_dir / request.param / "manifest.csv")


@pytest.fixture(scope="module")
def general(samples_dir: Path) -> list:
    return validate_manifest(samples_dir / "general_speech" / "manifest.csv")


def test_samples_folder_is_under_25_mb(samples_dir: Path) -> None:
    total = sum(p.stat().st_size for p in samples_dir.rglob("*") if p.is_file())
    assert total < 25 * 1024 * 1024, f"samples/ holds {total / 1e6:.1f} MB"


def test_every_manifest_has_the_standard_columns(samples_dir: Path) -> None:
    manifests = sorted(samples_dir.glob("*/manifest.csv"))
    assert len(manifests) >= 2
    for manifest in manifests:
        header = manifest.read_text(encoding="utf-8").splitlines()[0].split(",")
        for column in ("id", "audio", "reference", "expected", "terms", "sidecar",
                       "document_type", "voice", "engine", "duration_s", "licence", "source"):
            assert column in header, f"{manifest}: no {column}"
        for row in read_manifest(manifest):
            assert row["licence"].strip() and row["source"].strip(), row["id"]


def test_synthetic_set_covers_the_document_types(synthetic: list) -> None:
    dictations = [s for s in synthetic if s.purpose == "dictation"]
    assert len(dictations) >= 10
    types = [s.document_type for s in synthetic]
    assert set(types) == DOC_TYPES
    assert types.count("operative_report") >= 4
    assert {s.engine for s in synthetic} == {"espeak-ng", "flite"}
    assert len({(s.engine, s.voice) for s in synthetic}) >= 6
    assert {s.purpose for s in synthetic} >= {"dictation", "instructions", "silence_gaps"}


@pytest.mark.slow
def test_synthetic_durations_and_audio_format(any_synthetic: list) -> None:
    for s in any_synthetic:
        data, rate, channels = _pcm(s.audio)
        duration = len(data) / rate
        assert _stored_rate(s.audio, rate) == 16000 and channels == 1, s.id
        assert abs(duration - s.duration_s) < 0.1, (s.id, duration, s.duration_s)
        low = 30 if s.purpose == "instructions" else 45
        assert low <= s.duration_s <= 120, (s.id, s.duration_s)
        assert np.abs(data).max() > 0.05, f"{s.id} is silent"


def test_synthetic_texts_are_consistent(any_synthetic: list) -> None:
    """Reference = spoken words (no digits), expected = finished text (no spoken commands,
    no secretary instructions), every key term is spoken in the reference."""
    for s in any_synthetic:
        ref = s.reference_text()
        expected = s.expected_text()
        assert expected and s.terms and s.sidecar, s.id
        assert not re.search(r"\d", ref), f"{s.id}: reference must be spoken words"
        assert COMMAND_WORDS.search(ref), f"{s.id}: no spoken commands"
        assert not COMMAND_WORDS.search(ANATOMY_COLON.sub("", expected)), \
            f"{s.id}: expected keeps a command"
        for instruction in ("please copy", "schedule follow up", "please schedule"):
            assert instruction not in expected.lower(), (s.id, instruction)
        spoken = f" {normalise(ref)} "
        for term in s.term_list():
            assert f" {normalise(term)} " in spoken, f"{s.id}: term {term!r} is not spoken"


def test_sidecars_parse_and_agree_with_the_manifest(any_synthetic: list) -> None:
    for s in any_synthetic:
        meta = parse_sidecar(s.sidecar.read_bytes(), name=s.sidecar.name)
        assert meta.document_type == s.document_type, s.id
        assert meta.patient_name and meta.mrn and meta.date_of_birth and meta.physician_id
        # the spoken header names the same patient
        assert meta.patient_name.split()[-1].lower() in s.reference_text().lower(), s.id


def test_instructions_sample_lists_its_tasks(synthetic: list) -> None:
    (sample,) = [s for s in synthetic if s.purpose == "instructions"]
    tasks = json.loads(sample.tasks.read_text())
    kinds = [t["kind"] for t in tasks]
    assert set(kinds) <= {"copy", "schedule", "order", "refer", "other"}
    assert {"copy", "schedule", "order", "refer"} <= set(kinds)
    ref = sample.reference_text().lower()
    assert "order an m r i of the left knee" in ref and "schedule follow up in two weeks" in ref


def test_silence_gaps_sample_has_long_pauses(synthetic: list, samples_dir: Path) -> None:
    (sample,) = [s for s in synthetic if s.purpose == "silence_gaps"]
    script = (samples_dir / "synthetic_medical" / f"{sample.id}.script.txt").read_text()
    pauses = [c.pause_s for c in parse_script(script) if not c.text]
    assert len(pauses) >= 3 and all(3.0 <= p <= 5.0 for p in pauses)
    assert script_text(script) == sample.reference_text()
    data, rate, _ = _pcm(sample.audio)
    frame = rate // 10  # 100 ms
    rms = np.sqrt(np.mean(data[: len(data) // frame * frame].reshape(-1, frame) ** 2, axis=1))
    silent = rms < 0.003
    runs, run = [], 0
    for quiet in silent:
        run = run + 1 if quiet else 0
        if run == 1:
            runs.append(0)
        if quiet:
            runs[-1] = run
    assert sum(1 for r in runs if r >= 28) >= len(pauses), runs  # >= 2.8 s of silence


def test_general_speech_carries_attribution_and_licence(general: list, samples_dir: Path) -> None:
    folder = samples_dir / "general_speech"
    assert (folder / "ATTRIBUTION.md").is_file()
    licence = folder / "LICENSE-pocketsphinx-BSD-2.txt"
    assert "Carnegie Mellon University" in licence.read_text()
    bsd = [s for s in general if "BSD" in s.licence and "public domain" not in s.licence.lower()]
    assert bsd and all(licence.name in s.licence for s in bsd)
    assert len(general) >= 10 and any(s.id == "jfk" for s in general)


def test_samplegen_parse_script_splits_pauses() -> None:
    chunks = parse_script("Hello there period\n[pause 3.5]\nNext line\nmore\n[pause 4]\n")
    assert [(c.text, c.pause_s) for c in chunks] == [
        ("Hello there period", 0.0), ("", 3.5), ("Next line\nmore", 0.0), ("", 4.0)]
    assert script_text("a\n[pause 3]\nb\n") == "a\nb\n"


@pytest.mark.skipif(not (shutil.which("espeak-ng") and shutil.which("sox")),
                    reason="espeak-ng and sox render the samples")
def test_samplegen_renders_the_shipped_audio_exactly(synthetic: list, tmp_path: Path) -> None:
    """Re-rendering a sample from its script gives the same samples as the shipped file."""
    (sample,) = [s for s in synthetic if s.id == "instructions_short"]
    row = {r["id"]: r for r in read_manifest(sample.reference.parent / "manifest.csv")}[sample.id]
    out = tmp_path / sample.audio.name
    duration = render_audio(sample.reference_text(), row["engine"], row["voice"], row["rate"],
                            out)
    assert abs(duration - sample.duration_s) < 0.01
    assert np.array_equal(_pcm(out)[0], _pcm(sample.audio)[0])


def test_dictation_samples_check_lists_every_sample(
    synthetic: list, general: list, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli import main

    assert main(["samples", "check"]) == 0
    printed = capsys.readouterr().out
    for s in [*synthetic, *general]:
        assert s.id[:20] in printed
