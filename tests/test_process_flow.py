"""The process-dictation flow makes the PDF after the draft is queued: a real LibreOffice PDF
is recorded in the stored draft, and a LibreOffice that keeps failing (after the pdf task's
retries) leaves the draft queued and the dictation done (real Prefect server, real tiny.en)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from test_flows import _row, _take, flow_settings, prefect_api  # noqa: F401 (fixtures)

from pipeline.core import files
from pipeline.core.db.core import DraftRow
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.documents.pdf import find_soffice

pytestmark = pytest.mark.slow


def _draft(settings: Settings, dictation_id: str) -> DraftRow:
    with open_store(settings).session() as s:
        (row,) = s.scalars(select(DraftRow).where(DraftRow.dictation_id == dictation_id))
        s.expunge(row)
        return row


@pytest.mark.skipif(find_soffice() is None, reason="LibreOffice (soffice) is not installed")
def test_flow_records_the_pdf_after_the_queue(flow_settings: Settings,  # noqa: F811
                                              speech: Path) -> None:
    from pipeline.service.flows import process_dictation

    flow_settings.pdf = "auto"
    did = _take(flow_settings, speech, "with_pdf.wav")
    assert process_dictation(did) == "done"
    draft = _draft(flow_settings, did)
    assert draft.status == "queued_for_review"
    assert files.read_bytes(Path(draft.outputs["pdf"]), flow_settings)[:5] == b"%PDF-"
    assert Path(draft.outputs["pdf"]).parent == Path(draft.outputs["docx"]).parent


def test_flow_failing_pdf_keeps_the_draft_queued(flow_settings: Settings,  # noqa: F811
                                                 speech: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """pdf=always and a LibreOffice that always fails: the flow still completes, the draft
    is queued with its .docx, text, FHIR and HL7, the audio archived, nothing quarantined."""
    from pipeline.service.flows import process_dictation

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "soffice").write_text(f"#!/bin/sh\necho x >> {tmp_path}/runs\nexit 3\n")
    (bin_dir / "soffice").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    flow_settings.pdf = "always"
    did = _take(flow_settings, speech, "no_pdf.wav")
    state = process_dictation(did, return_state=True)
    assert state.is_completed(), state
    assert (tmp_path / "runs").read_text().count("x") == 3  # first try and two retries
    assert _row(flow_settings, did).status == "done"
    draft = _draft(flow_settings, did)
    assert draft.status == "queued_for_review" and "pdf" not in draft.outputs
    assert all(Path(draft.outputs[k]).is_file() for k in ("docx", "txt", "fhir", "hl7"))
    assert not list(flow_settings.quarantine_dir.iterdir())
