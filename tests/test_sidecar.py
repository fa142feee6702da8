"""Sidecar JSON validation: good sidecars parse, malformed ones give one clear message."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from pipeline.core.errors import SidecarError
from pipeline.ingest.sidecar import parse_sidecar, read_sidecar


def test_full_sidecar_parses_into_meta() -> None:
    meta = parse_sidecar(
        b'{"patient_name": "Jane Doe", "date_of_birth": "1961-04-02", "mrn": "A12345",'
        b' "date_of_service": "2026-11-20", "document_type": "Operative Report",'
        b' "priority": "STAT", "physician_id": "dr-smith"}'
    )
    assert meta.patient_name == "Jane Doe"
    assert meta.date_of_birth == date(1961, 4, 2)
    assert meta.document_type == "operative_report"
    assert meta.priority == "stat"
    assert meta.source == "sidecar"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"patient": "x"}', "'patient' is not a known field"),
        (b'{"date_of_birth": "yesterday"}', "'date_of_birth'"),
        (b'{"priority": "urgent"}', "'priority'"),
        (b'{"mrn": "12 34; DROP"}', "'mrn'"),
        (b"\xff\xfe\x00bad", "not UTF-8"),
        (b"{" + b" " * 70000 + b"}", "at most"),
    ],
)
def test_malformed_sidecar_names_the_problem_not_the_value(raw: bytes, fragment: str) -> None:
    with pytest.raises(SidecarError) as info:
        parse_sidecar(raw, name="x.json")
    assert fragment in str(info.value)
    assert "x.json" in str(info.value)
    assert "DROP" not in str(info.value)  # values (possible PHI) are never echoed


def test_read_sidecar_beside_audio(tmp_path: Path) -> None:
    audio = tmp_path / "dict 1.wav"
    audio.write_bytes(b"RIFF")
    assert read_sidecar(audio) is None
    (tmp_path / "dict 1.json").write_text('{"mrn": "M1"}', encoding="utf-8")
    meta = read_sidecar(audio)
    assert meta is not None and meta.mrn == "M1"


def test_sidecar_link_or_fifo_is_refused_unread(tmp_path: Path) -> None:
    """A sidecar that is a link (to /dev/zero) or a FIFO is a SidecarError, never read."""
    import os

    os.symlink("/dev/zero", tmp_path / "a.json")
    os.mkfifo(tmp_path / "b.json")
    for name in ("a.wav", "b.wav"):
        with pytest.raises(SidecarError, match=r"link|not a regular file"):
            read_sidecar(tmp_path / name)
