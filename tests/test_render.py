"""Rendering drafts: .docx (hostile values, missing markers), text, PDF, atomic writes,
re-render after signing."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import docx
import hl7
import pytest

from pipeline.core.errors import PipelineError
from pipeline.core.records import (
    AudioInfo,
    Dictation,
    DictationMeta,
    Document,
    HeaderField,
    Instruction,
    Note,
    Section,
)
from pipeline.documents.fhir import validate_document_reference
from pipeline.documents.pdf import SOFFICE_MISSING, find_soffice
from pipeline.documents.render import render_outputs
from pipeline.documents.sections import structure
from pipeline.documents.templates import DOCUMENT_TYPES, get_template

LONG = ("Very long dictated paragraph with R&D <b>tags</b>. " * 400)[:20_000]
HOSTILE = [
    "Fish & chips <b>bold</b> </w:t> {{ not_a_tag }} {% if x %}",
    'She said "no" and \'maybe\' — 5 < 7 > 3',
    "Emoji \U0001F600 and accents: café, naïve, Zoë",
    LONG,
    "",
]


def make_dictation(meta: DictationMeta | None = None) -> Dictation:
    """A dictation record for rendering tests (the audio is not read by the renderer)."""
    return Dictation(
        id="dict-test",
        audio=AudioInfo(path=Path("dictation.wav"), sha256="0" * 64, size_bytes=1, format="wav",
                        codec="pcm_s16le", sample_rate=16000, channels=1, duration_s=60.0),
        meta=meta or DictationMeta(physician_id="dr-smith", mrn="12345",
                                   patient_name="John Smith", encounter_id="enc-9"),
    )


def hostile_document(doc_type: str, settings) -> Document:
    """Every field of the template filled with hostile values, except one required field."""
    spec = get_template(doc_type, settings)
    sections = []
    required = [f for f in spec.sections if f.required]
    left_out = required[-1]
    for i, f in enumerate(spec.sections):
        if f is left_out:
            continue
        sections.append(Section(key=f.key, heading=f.label, text=HOSTILE[i % len(HOSTILE)]))
    return Document(
        document_type=doc_type,
        title=spec.title,
        sections=sections,
        header={
            "patient_name": HeaderField("O'Brien & <Sons> \U0001F600", "sidecar"),
            "date_of_birth": HeaderField("March 4, 1962", "sidecar"),
            "mrn": HeaderField("A&B|12^3~4\\5", "sidecar"),
            "date_of_service": HeaderField(None, "none"),
            "physician": HeaderField("Dr. Smith", "settings"),
            "referring_physician": HeaderField('Dr. "Lee" <lee@x>', "dictation"),
        },
        instructions=[Instruction("copy", "cc Dr. A&B", {"recipient": "Dr. A&B"})],
        missing=[left_out.label],
    )


def all_text(path: Path) -> str:
    """Every piece of text in a .docx: body, tables, page headers and footers."""
    document = docx.Document(str(path))
    parts = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            parts.extend(cell.text for cell in row.cells)
    for section in document.sections:
        parts.extend(p.text for p in section.header.paragraphs)
        parts.extend(p.text for p in section.footer.paragraphs)
    return "\n".join(parts)


@pytest.mark.parametrize("doc_type", DOCUMENT_TYPES)
def test_hostile_values_survive_in_every_template(doc_type: str, settings, tmp_path) -> None:
    document = hostile_document(doc_type, settings)
    out = render_outputs(document, make_dictation(), "draft-1", tmp_path / "draft-1", settings)
    assert set(out) == {"docx", "txt", "fhir", "hl7"}
    text = all_text(out["docx"])
    used = {s.text for s in document.sections}
    for value in HOSTILE:
        if value and value in used:
            assert value in text, value[:40]
    assert "O'Brien & <Sons> \U0001F600" in text
    assert "A&B|12^3~4\\5" in text
    # no template tag survives (the hostile value's own braces are text, checked apart)
    leftover = text.replace("{{ not_a_tag }}", "").replace("{% if x %}", "")
    assert "{{" not in leftover and "{%" not in leftover
    with zipfile.ZipFile(out["docx"]) as zf:
        xml = zf.read("word/document.xml").decode("utf-8")
    assert "{%p" not in xml and "{%r" not in xml
    # the missing required section is visible and highlighted
    missing_label = document.missing[0]
    assert f"[MISSING: {missing_label}]" in text
    assert "w:highlight" in xml
    assert "DRAFT — not signed" in text
    plain = out["txt"].read_text(encoding="utf-8")
    assert f"[MISSING: {missing_label}]" in plain and "Fish & chips <b>bold</b>" in plain
    assert validate_document_reference(json.loads(out["fhir"].read_text())) == []
    message = hl7.parse(out["hl7"].read_bytes().decode("utf-8"))
    assert str(message.segment("MSH")[9]) == "MDM^T02^MDM_T02"


def test_empty_document_renders(settings, tmp_path) -> None:
    document = structure(Note(text=""), DictationMeta(document_type="operative_report"), settings)
    out = render_outputs(document, make_dictation(DictationMeta()), "e", tmp_path / "e", settings)
    text = all_text(out["docx"])
    for label in document.missing:
        assert f"[MISSING: {label}]" in text
    assert "[MISSING: Patient]" in text and "[MISSING: MRN]" in text


@pytest.mark.slow
@pytest.mark.skipif(find_soffice() is None, reason="LibreOffice (soffice) is not installed")
def test_every_template_converts_to_pdf(settings, tmp_path) -> None:
    """All six templates, filled with hostile values, become PDFs with the text in them."""
    settings.pdf = "always"
    for doc_type in DOCUMENT_TYPES:
        document = hostile_document(doc_type, settings)
        out = render_outputs(document, make_dictation(), doc_type, tmp_path / doc_type, settings)
        pdf = out["pdf"]
        assert pdf.read_bytes()[:5] == b"%PDF-"
        if shutil.which("pdftotext"):
            text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True,
                                  check=True).stdout
            assert "MISSING:" in text and "DRAFT" in text
            assert "O'Brien & <Sons>" in text


def test_pdf_always_without_libreoffice_is_a_clear_error(settings, tmp_path, monkeypatch) -> None:
    """No soffice on PATH: pdf=always fails with one sentence and leaves no partial draft."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    settings.pdf = "always"
    document = hostile_document("progress_note", settings)
    with pytest.raises(PipelineError) as info:
        render_outputs(document, make_dictation(), "p", tmp_path / "drafts" / "p", settings)
    assert str(info.value) == SOFFICE_MISSING
    assert not (tmp_path / "drafts" / "p").exists()
    assert list((tmp_path / "drafts").iterdir()) == []  # temp folder removed too
    settings.pdf = "auto"  # auto: skipped quietly
    out = render_outputs(document, make_dictation(), "p", tmp_path / "drafts" / "p", settings)
    assert "pdf" not in out and out["docx"].is_file()


def test_rerender_after_signing(settings, tmp_path) -> None:
    """The workbench re-renders with final=True into the same folder: status changes, files
    others put there stay."""
    meta = DictationMeta(physician_id="dr-smith", mrn="12345", patient_name="John Smith",
                         date_of_service=date(2026, 11, 20))
    text = "FINDINGS: Normal.\nIMPRESSION: No acute disease."
    document = structure(Note(text=text), DictationMeta(document_type="radiology_report"),
                         settings)
    out_dir = tmp_path / "draft-9"
    first = render_outputs(document, make_dictation(meta), "draft-9", out_dir, settings)
    assert json.loads(first["fhir"].read_text())["docStatus"] == "preliminary"
    (out_dir / "audit-note.txt").write_text("kept", encoding="utf-8")
    signed_at = datetime(2026, 11, 21, 9, 30, tzinfo=UTC)
    edited = structure(Note(text=text + " Signed text edit."),
                       DictationMeta(document_type="radiology_report"), settings)
    final = render_outputs(edited, make_dictation(meta), "draft-9", out_dir, settings,
                           final=True, signed_by="Dr. Smith", signed_at=signed_at)
    assert final["docx"] == first["docx"]
    text_out = all_text(final["docx"])
    assert "FINAL — signed by Dr. Smith on November 21, 2026" in text_out
    assert "DRAFT" not in text_out
    assert "Signed text edit." in text_out
    resource = json.loads(final["fhir"].read_text())
    assert resource["docStatus"] == "final"
    assert resource["authenticator"] == {"display": "Dr. Smith"}
    message = hl7.parse(final["hl7"].read_bytes().decode("utf-8"))
    assert str(message.segment("TXA")[17]) == "AU"
    assert (out_dir / "audit-note.txt").read_text(encoding="utf-8") == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["draft-9"]


def test_letters_use_dictated_addressee_and_cc(settings, tmp_path) -> None:
    text = ("Dear Dr. Moreno,\n\nThank you for referring this patient.\n\nIMPRESSION: Migraine."
            "\n\nRECOMMENDATIONS: Start topiramate. Please copy Dr. Patel at Riverside "
            "Cardiology.\n\nSincerely,\nDr. Shah")
    document = structure(Note(text=text), DictationMeta(document_type="consult_letter"),
                         settings)
    out = render_outputs(document, make_dictation(), "l", tmp_path / "l", settings)
    body = all_text(out["docx"])
    assert "Dear Dr. Moreno," in body
    assert body.count("Thank you for referring") == 1  # dictated opening replaces the template's
    assert "cc: Dr. Patel, Riverside Cardiology" in body
    assert "Please copy" not in body


def test_render_command_writes_a_draft(tmp_path, monkeypatch, capsys) -> None:
    """`dictation render TEXT --json` structures a text and writes every output."""
    from pipeline.cli import main
    from pipeline.core.settings import get_settings

    monkeypatch.setenv("DICTATION_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("DICTATION_PDF", "never")
    get_settings.cache_clear()
    text = tmp_path / "dictation.txt"
    text.write_text("EXAM: CT head.\nHISTORY: Fall.\nFINDINGS: No bleed.\nIMPRESSION: Normal."
                    "\nPlease copy Dr. Lee.", encoding="utf-8")
    side = tmp_path / "side.json"
    side.write_text(json.dumps({"patient_name": "Ann Lee", "mrn": "777"}), encoding="utf-8")
    code = main(["render", str(text), "--sidecar", str(side), "--out", str(tmp_path / "o"),
                 "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["document"]["document_type"] == "radiology_report"
    assert result["document"]["instructions"][0]["params"] == {"recipient": "Dr. Lee"}
    assert set(result["outputs"]) == {"docx", "txt", "fhir", "hl7"}
    assert "Ann Lee" in all_text(Path(result["outputs"]["docx"]))
    assert main(["render", str(tmp_path / "nope.txt")]) == 1
    get_settings.cache_clear()


@pytest.mark.slow
@pytest.mark.skipif(find_soffice() is None, reason="LibreOffice (soffice) is not installed")
def test_concurrent_pdf_conversions_do_not_collide(settings, tmp_path) -> None:
    """Two renders at once each get their own LibreOffice profile and both produce a PDF."""
    from concurrent.futures import ThreadPoolExecutor

    settings.pdf = "always"
    document = hostile_document("radiology_report", settings)

    def one(i: int) -> Path:
        out = render_outputs(document, make_dictation(), f"c{i}", tmp_path / f"c{i}", settings)
        return out["pdf"]

    with ThreadPoolExecutor(max_workers=2) as pool:
        pdfs = list(pool.map(one, range(2)))
    assert all(p.read_bytes()[:5] == b"%PDF-" for p in pdfs)



def test_failing_libreoffice_does_not_lose_the_draft(
    fake_soffice: Callable[[Path, str], Path], settings, tmp_path, monkeypatch) -> None:
    """pdf=auto: a LibreOffice that fails leaves a complete draft without PDF;
    pdf=always: a clear error and no partial draft."""
    bin_dir = fake_soffice(tmp_path / "bin", "echo broken >&2; exit 3")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    document = hostile_document("radiology_report", settings)
    settings.pdf = "auto"
    out = render_outputs(document, make_dictation(), "a", tmp_path / "d" / "a", settings)
    assert "pdf" not in out and out["docx"].is_file()
    settings.pdf = "always"
    with pytest.raises(PipelineError, match="exit status 3"):
        render_outputs(document, make_dictation(), "b", tmp_path / "d" / "b", settings)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["a"]


@pytest.mark.slow
def test_hanging_libreoffice_is_killed_after_the_timeout(
    fake_soffice: Callable[[Path, str], Path], tmp_path, monkeypatch) -> None:
    """The wrapper and its child are both killed; the call returns after the timeout."""
    import time

    import psutil

    from pipeline.documents.pdf import PdfConversionError, convert_to_pdf

    pid_file = tmp_path / "child.pid"
    bin_dir = fake_soffice(tmp_path / "bin", f"sleep 30 & echo $! > '{pid_file}'; wait")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    docx_path = tmp_path / "x.docx"
    docx_path.write_bytes(b"not really a docx")
    t0 = time.monotonic()
    with pytest.raises(PdfConversionError, match="within 1 s"):
        convert_to_pdf(docx_path, tmp_path / "out", profile_root=tmp_path / "p", timeout=1)
    # waiting for the child instead of killing it would take its full 30 s
    assert time.monotonic() - t0 < 30
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the wrapper's child was left running"
        time.sleep(0.05)


def test_profile_slots_are_exclusive_and_reused(tmp_path) -> None:
    """Two conversions at once never share a LibreOffice profile; a freed slot is reused."""
    from pipeline.documents.pdf import _profile_slot

    with _profile_slot(tmp_path) as first, _profile_slot(tmp_path) as second:
        assert first != second
    with _profile_slot(tmp_path) as again:
        assert again == first
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["slot-0", "slot-1"]


def test_libreoffice_runs_nicer_than_the_pipeline(
    fake_soffice: Callable[[Path, str], Path], tmp_path, monkeypatch) -> None:
    """The PDF is made after the draft is queued: LibreOffice yields the CPU to transcription."""
    import os

    from pipeline.documents.pdf import NICENESS, PdfConversionError, convert_to_pdf

    bin_dir = fake_soffice(tmp_path / "bin", f"nice > {tmp_path}/niceness; exit 3")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    docx_path = tmp_path / "x.docx"
    docx_path.write_bytes(b"not really a docx")
    with pytest.raises(PdfConversionError):
        convert_to_pdf(docx_path, tmp_path / "out", profile_root=tmp_path / "p", timeout=10)
    ours = os.nice(0)
    assert int((tmp_path / "niceness").read_text()) == min(ours + NICENESS, 19) > ours
