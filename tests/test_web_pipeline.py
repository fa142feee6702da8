"""The workbench on a draft made by the real pipeline (``process_file`` with tiny.en):
the editor aligns the normalised text to Whisper's words, marks the normaliser's
corrections with what Whisper heard, and signing renders the final outputs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from pipeline.core import files
from pipeline.core.db.core import DraftRow
from pipeline.core.records import DictationMeta
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.review.users import create_user
from pipeline.web.app import create_app

PASSWORD = "correct-horse-9"
SPOKEN = ("Progress note. The patient reports cough for three days. "
          "Assessment: acute bronchitis. Plan: start amoxicillin five hundred milligrams "
          "three times daily and follow up in two weeks.")


def _token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m
    return m.group(1)


def _login(app, username: str) -> TestClient:  # type: ignore[no-untyped-def]
    c = TestClient(app, client=("127.0.0.1", 50000))
    r = c.post("/login", data={"csrf_token": _token(c.get("/login").text),
                               "username": username, "password": PASSWORD},
               follow_redirects=False)
    assert r.status_code == 303
    return c


@pytest.mark.slow
def test_pipeline_draft_in_the_workbench(settings: Settings, tmp_path: Path) -> None:
    process = pytest.importorskip("pipeline.service.process")
    wav = tmp_path / "note.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), SPOKEN], check=True,
                   capture_output=True)
    meta = DictationMeta(physician_id="dr-smith", patient_name="Pat Pipeline", mrn="MRN-PIPE",
                         document_type="progress_note", source="sidecar")
    result = process.process_file(wav, settings, meta)
    with open_store(settings).session() as s:
        create_user(s, "sec", PASSWORD, "secretary", ["dr-smith"])
        create_user(s, "smith", PASSWORD, "physician", ["dr-smith"])
        draft = s.scalars(select(DraftRow)).one()
        corrections = list(draft.corrections)
    assert draft.id == result.draft.id and draft.status == "queued_for_review"

    app = create_app(settings)
    sec = _login(app, "sec")
    html = sec.get(f"/drafts/{draft.id}").text
    spans = re.findall(r'<span class="w[^"]*" data-s="([\d.]+)"', html)
    assert len(spans) >= 15
    times = [float(t) for t in spans]
    assert times[-1] > times[0]  # words follow the audio
    assert max(times) <= result.dictation.audio.duration_s + 0.5
    assert corrections, "the normaliser changed nothing (numbers, units)"
    # every normaliser change worth reviewing is marked with what Whisper heard; spoken
    # commands ("period" -> ".") are applied quietly (issue 16: flags worth looking at)
    from pipeline.language.normalize.review_flags import needs_review

    assert any(needs_review(c) for c in corrections), corrections
    for c in corrections:
        heard = c["original"].replace("&", "&amp;").replace("<", "&lt;").replace("'", "&#39;")
        assert (f'title="Whisper heard: {heard}"' in html) is needs_review(c), c
    audio = sec.get(f"/drafts/{draft.id}/audio", headers={"Range": "bytes=0-99"})
    assert audio.status_code == 206 and audio.content[:4] == b"RIFF"

    # tiny.en runs the headings into one Subjective section: the secretary types the
    # assessment (a required section: signing a [MISSING: Assessment] is refused, issue 16)
    edited = draft.text.rstrip() + "\n\nAssessment: acute bronchitis. Chest X-ray ordered.\n"
    r = sec.post(f"/drafts/{draft.id}/save", data={"csrf_token": _token(html), "text": edited,
                                                   "base_version": "1", "action": "submit"},
                 follow_redirects=False)
    assert r.status_code == 303
    doc = _login(app, "smith")
    page = doc.get(f"/drafts/{draft.id}").text
    # the dose the normaliser wrote ("500 mg") must be reviewed before signing (issue 16)
    sign_page = doc.get(f"/drafts/{draft.id}/sign").text
    keys = re.findall(r'name="key" value="([^"]+)"', sign_page)
    assert keys and 'id="sign-form"' not in sign_page
    for key in keys:
        doc.post(f"/drafts/{draft.id}/acknowledge",
                 data={"csrf_token": _token(page), "key": key, "back": "sign"})
    assert 'id="no-blockers"' in doc.get(f"/drafts/{draft.id}/sign").text
    r = doc.post(f"/drafts/{draft.id}/sign", data={"csrf_token": _token(page),
                                                   "password": PASSWORD},
                 follow_redirects=False)
    assert r.headers["location"].endswith("signed=1")
    with open_store(settings).session() as s:
        signed = s.get(DraftRow, draft.id)
        assert signed.status == "signed"
        txt = files.read_bytes(Path(signed.outputs["txt"]), settings).decode()
    assert "Chest X-ray ordered." in txt
    assert "signed by smith" in txt.lower()
    assert doc.get(f"/drafts/{draft.id}/outputs/docx").status_code == 200
