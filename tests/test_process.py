"""``process_file`` and ``pdf_stage``: the draft is queued before its PDF is made, the PDF is
recorded in the draft's outputs afterwards, and a failing LibreOffice never loses or
un-queues the draft (real tiny.en, real SQLite, real LibreOffice where installed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.core import files
from pipeline.core.db.core import DraftRow
from pipeline.core.errors import PdfConversionError
from pipeline.core.records import DictationMeta
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.documents.pdf import find_soffice
from pipeline.service.process import pdf_stage, process_file

NEEDS_SOFFICE = pytest.mark.skipif(find_soffice() is None,
                                   reason="LibreOffice (soffice) is not installed")




def _stored(settings: Settings, draft_id: str) -> DraftRow:
    with open_store(settings).session() as s:
        row = s.get(DraftRow, draft_id)
        assert row is not None
        s.expunge(row)
        return row


META = DictationMeta(physician_id="dr-smith", document_type="consult_note")


@pytest.mark.slow
@NEEDS_SOFFICE
def test_pdf_is_made_after_the_draft_is_queued_and_recorded(settings: Settings,
                                                             speech: Path) -> None:
    """pdf=auto with LibreOffice: the PDF is in the draft's outputs, on disk and in the store;
    the pdf step is timed on its own, after the queue."""
    settings.pdf = "auto"
    result = process_file(speech, settings, META)
    assert list(result.timings)[-2:] == ["enqueue", "pdf"]
    assert result.queued_s >= sum(v for k, v in result.timings.items() if k != "pdf")
    pdf = result.draft.outputs["pdf"]
    assert files.read_bytes(pdf, settings)[:5] == b"%PDF-"
    assert pdf.parent == result.draft.docx_path.parent
    row = _stored(settings, result.draft.id)
    assert row.status == "queued_for_review"
    assert row.outputs["pdf"] == str(pdf)
    assert {"docx", "txt", "fhir", "hl7"} <= set(row.outputs)
    assert not [p for p in pdf.parent.parent.iterdir() if p.name.startswith(".")]  # no temp


@pytest.mark.slow
def test_failing_libreoffice_leaves_the_draft_queued(
    fake_soffice: Callable[[Path, str], Path], settings: Settings, speech: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: the file completes, the draft is queued with every other output and no PDF;
    always: a clear error after the draft was queued (nothing is lost)."""
    bin_dir = fake_soffice(tmp_path / "bin", "echo broken >&2; exit 3")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    settings.pdf = "auto"
    result = process_file(speech, settings, META)
    assert "pdf" not in result.draft.outputs
    row = _stored(settings, result.draft.id)
    assert row.status == "queued_for_review" and "pdf" not in row.outputs
    assert all(Path(row.outputs[k]).is_file() for k in ("docx", "txt", "fhir", "hl7"))

    settings.pdf = "always"
    with pytest.raises(PdfConversionError, match="queued for review without its PDF"):
        process_file(speech, settings, META)
    with open_store(settings).session() as s:
        rows = s.query(DraftRow).all()
        assert len(rows) == 2
        assert all(r.status == "queued_for_review" and "pdf" not in r.outputs for r in rows)
        assert all(Path(r.outputs["docx"]).is_file() for r in rows)
    with pytest.raises(PdfConversionError, match="was written without its PDF"):
        pdf_stage(result.draft, settings, store=False)  # --no-store: nothing was queued


def test_pdf_never_and_missing_libreoffice_make_no_pdf(
    fake_soffice: Callable[[Path, str], Path], settings: Settings, speech: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch) -> None:
    """never: no LibreOffice run at all; auto without soffice on PATH: skipped quietly;
    always without soffice: the install hint, draft still queued."""
    bin_dir = fake_soffice(tmp_path / "bin", f"touch {tmp_path}/ran; exit 3")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    settings.pdf = "never"
    result = process_file(speech, settings, META)
    assert "pdf" not in result.draft.outputs and not (tmp_path / "ran").exists()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    settings.pdf = "auto"
    assert "pdf" not in pdf_stage(result.draft, settings).outputs
    settings.pdf = "always"
    with pytest.raises(PdfConversionError, match="not installed"):
        pdf_stage(result.draft, settings)
    assert _stored(settings, result.draft.id).status == "queued_for_review"


@NEEDS_SOFFICE
def test_pdf_of_a_draft_signed_meanwhile_is_not_recorded(settings: Settings,
                                                         speech: Path) -> None:
    """A reviewer moved the draft on before its PDF was ready: the draft PDF is discarded
    (signing renders its own outputs) and the stored outputs are left alone."""
    result = process_file(speech, settings, META)  # pdf never (conftest)
    with open_store(settings).session() as s:
        row = s.get(DraftRow, result.draft.id)
        assert row is not None
        row.status = "signed"
    settings.pdf = "always"
    draft = pdf_stage(result.draft, settings)
    assert "pdf" not in draft.outputs
    assert not (result.draft.docx_path.parent / "document.pdf").exists()
    assert "pdf" not in _stored(settings, result.draft.id).outputs


@pytest.mark.slow
@NEEDS_SOFFICE
def test_pdf_stage_without_store_records_in_the_result(settings: Settings,
                                                       speech: Path) -> None:
    """``--no-store`` path: the PDF is made and listed in the draft's outputs."""
    settings.pdf = "always"
    result = process_file(speech, settings, META, store=False)
    assert result.draft.outputs["pdf"].is_file()
