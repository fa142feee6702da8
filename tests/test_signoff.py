"""Nothing wrong gets signed: placeholders, header mismatches and unreviewed dose/side/drug
changes block signing until settled; the header can be corrected and the draft reassigned
(audited, rendered again); command conversions are shown quietly; the preview shows the
document as it will print. Through the review functions and the real web app."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from pipeline.core import files
from pipeline.core.db.core import AuditEvent, DictationRow, DraftRow
from pipeline.core.records import AudioInfo, Dictation, DictationMeta, Note
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.documents.render import render_outputs
from pipeline.documents.sections import structure
from pipeline.language.normalize.review_flags import classify, needs_review
from pipeline.review import signing, signoff
from pipeline.review import versions as wf
from pipeline.review.users import create_user
from pipeline.web.app import create_app
from pipeline.web.seed import add_draft

PASSWORD = "correct-horse-9"
GOOD = (
    "Subjective: cough for 3 days.\n\n"
    "Assessment: acute bronchitis.\n\n"
    "Plan: rest and fluids.\n"
)
DOSE = "Plan: start amoxicillin 500 mg three times daily.\n\nAssessment: otitis media.\n"


def _settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, model="tiny.en", device="cpu", compute_type="int8",
                    physicians=["dr-smith", "dr-patel"], pdf="never")


@pytest.fixture(scope="module")
def users_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Users made once (argon2 is slow); each test copies this database."""
    settings = _settings(tmp_path_factory.mktemp("signoff") / "var")
    with open_store(settings).session() as s:
        create_user(s, "sec", PASSWORD, "secretary", ["dr-smith"])
        create_user(s, "smith", PASSWORD, "physician", ["dr-smith"])
        create_user(s, "patel", PASSWORD, "physician", ["dr-patel"])
    with open_store(settings).engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return settings.data_path / "dictation.db"


@pytest.fixture
def world(users_db: Path, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    import shutil

    settings = _settings(tmp_path / "var")
    settings.data_path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(users_db, settings.data_path / "dictation.db")
    store = open_store(settings)
    with store.session() as s:
        from pipeline.core.db.review import User
        from pipeline.review.users import UserInfo, _info

        users: dict[str, UserInfo] = {
            u.username: _info(s, u) for u in s.scalars(select(User))
        }
    return {"settings": settings, "store": store, **users}


def _draft(world, text: str, *, meta: dict | None = None,  # type: ignore[no-untyped-def]
           corrections: list[dict] | None = None, doc_type: str = "progress_note") -> str:
    """A draft awaiting dr-smith's signature (sidecar values in ``meta``)."""
    with world["store"].session() as s:
        draft_id = add_draft(s, text=text, segments=[], physician_id="dr-smith",
                             patient_name=(meta or {}).get("patient_name", "Test Patient"),
                             mrn=(meta or {}).get("mrn", "MRN-1"), document_type=doc_type,
                             corrections=corrections)
        draft = s.get(DraftRow, draft_id)
        if meta:
            row = s.get(DictationRow, draft.dictation_id)
            row.meta = {**row.meta, **meta}
        draft.document = {**signoff.current_document(s, world["settings"], draft).to_dict()}
        wf.claim(s, world["sec"], draft)
        wf.send_for_signature(s, world["sec"], draft)
    return draft_id


def _sign(world, draft_id: str):  # type: ignore[no-untyped-def]
    with world["store"].session() as s:
        draft = s.get(DraftRow, draft_id)
        return signing.sign_draft(s, world["settings"], world["smith"], draft, PASSWORD)


def _blockers(world, draft_id: str) -> list[signoff.Blocker]:  # type: ignore[no-untyped-def]
    with world["store"].session() as s:
        return signoff.blockers(s, world["settings"], s.get(DraftRow, draft_id))


def _status(world, draft_id: str) -> str:  # type: ignore[no-untyped-def]
    with world["store"].session() as s:
        return s.get(DraftRow, draft_id).status


def _edit(world, draft_id: str, text: str, who: str = "smith") -> None:  # type: ignore[no-untyped-def]
    with world["store"].session() as s:
        draft = s.get(DraftRow, draft_id)
        wf.save_text(s, world[who], draft, text, None)


# ---- signing refused, then allowed --------------------------------------------------------


def test_signing_refused_while_a_required_section_is_missing(world) -> None:  # type: ignore[no-untyped-def]
    """The signed FINAL PDF had "[MISSING: ...]": a missing required section blocks."""
    draft_id = _draft(world, "Subjective: cough for 3 days.\n\nObjective: lungs clear.\n")
    with pytest.raises(signoff.SignBlockedError, match="Assessment") as info:
        _sign(world, draft_id)
    assert [b.kind for b in info.value.blockers] == ["placeholder"]
    assert _status(world, draft_id) == "awaiting_signature"
    with world["store"].session() as s:
        ev = s.scalars(select(AuditEvent).where(AuditEvent.action == "sign")).all()[-1]
        assert ev.outcome == "refused" and ev.detail["reason"] == "blocked"
    _edit(world, draft_id, "Subjective: cough.\n\nObjective: lungs clear.\n\n"
                           "Assessment: viral bronchitis.\n")
    assert _blockers(world, draft_id) == []
    _sign(world, draft_id)
    assert _status(world, draft_id) == "signed"


def test_signing_refused_while_a_missing_marker_is_in_the_text(world) -> None:  # type: ignore[no-untyped-def]
    draft_id = _draft(world, GOOD + "\nNote: [MISSING: Plan]\n")
    found = _blockers(world, draft_id)
    assert [b.kind for b in found] == ["placeholder"] and "[MISSING: Plan]" in found[0].message
    assert re.fullmatch(r"w\d+", found[0].anchor)
    with pytest.raises(signoff.SignBlockedError):
        _sign(world, draft_id)
    _edit(world, draft_id, GOOD)
    _sign(world, draft_id)
    assert _status(world, draft_id) == "signed"


def test_signing_refused_while_a_header_mismatch_is_unacknowledged(world) -> None:  # type: ignore[no-untyped-def]
    draft_id = _draft(world, "Patient Daniel Okonkwo, MRN 055718.\n\n" + GOOD,
                      meta={"patient_name": "Daniel Okonkwo", "mrn": "055781"})
    found = _blockers(world, draft_id)
    assert [b.kind for b in found] == ["header_mismatch"]
    assert found[0].message.startswith("MRN: dictated 055718, sidecar 055781 (2 digits differ")
    assert found[0].anchor == "hdr-mrn" and found[0].can_acknowledge
    with pytest.raises(signoff.SignBlockedError, match="MRN"):
        _sign(world, draft_id)
    with world["store"].session() as s:
        signoff.acknowledge(s, world["settings"], world["smith"], s.get(DraftRow, draft_id),
                            found[0].key)
    assert _blockers(world, draft_id) == []
    _sign(world, draft_id)
    with world["store"].session() as s:
        ack = s.scalars(select(AuditEvent).where(AuditEvent.action == "acknowledge")).one()
        assert ack.actor == "smith" and ack.detail == {"kind": "header_mismatch",
                                                       "key": "header:mrn"}
        assert "055718" not in str(ack.detail)  # no patient data in the audit detail


def test_signing_refused_while_a_dose_change_is_unreviewed(world) -> None:  # type: ignore[no-untyped-def]
    start = DOSE.index("500 mg")
    corrections = [
        {"original": "period", "replacement": ".", "start": DOSE.index("."),
         "end": DOSE.index(".") + 1, "kind": "command"},
        {"original": "five hundred milligrams", "replacement": "500 mg", "start": start,
         "end": start + 6, "kind": "number"},
    ]
    draft_id = _draft(world, DOSE, corrections=corrections)
    found = _blockers(world, draft_id)
    assert [(b.kind, b.key) for b in found] == [("unreviewed_change", "change:1")]
    assert "dose" in found[0].message and "500 mg" in found[0].message
    with pytest.raises(signoff.SignBlockedError):
        _sign(world, draft_id)
    # a command conversion never blocks: there is nothing to clear
    with world["store"].session() as s, pytest.raises(Exception, match="does not block"):
        signoff.acknowledge(s, world["settings"], world["smith"],
                            s.get(DraftRow, draft_id), "change:0")
    with world["store"].session() as s:
        signoff.acknowledge(s, world["settings"], world["smith"], s.get(DraftRow, draft_id),
                            "change:1")
    _sign(world, draft_id)
    assert _status(world, draft_id) == "signed"


@pytest.mark.parametrize(
    ("correction", "expected"),
    [
        ({"kind": "command", "original": "period", "replacement": "."}, "quiet"),
        ({"kind": "command", "original": "new paragraph", "replacement": "\n\n"}, "quiet"),
        ({"kind": "casing", "original": "lipitor", "replacement": "Lipitor"}, "quiet"),
        ({"kind": "number", "original": "ten milligrams", "replacement": "10 mg"}, "dose"),
        ({"kind": "number", "original": "three", "replacement": "3"}, "number"),
        ({"kind": "term", "original": "left", "replacement": "right"}, "side"),
        ({"kind": "term", "original": "lisinoprill", "replacement": "lisinopril"}, "drug"),
        ({"kind": "term", "original": "pane", "replacement": "pain"}, "term"),
        ({"kind": "abbreviation", "original": "QD", "replacement": "daily"}, "abbreviation"),
        ({"kind": "safety", "original": "5.0 mg", "replacement": "5 mg"}, "safety"),
    ],
)
def test_change_classes(correction: dict, expected: str,  # type: ignore[type-arg]
                        settings: Settings) -> None:
    """Command conversions are quiet; doses, sides, drug names, terms and numbers are
    flagged; doses, sides and drug names (the vocabulary's drug list) block signing."""
    from pipeline.language.normalize.review_flags import blocks_signing
    from pipeline.language.vocab import get_index

    index = get_index(settings)
    assert classify(correction, index) == expected
    assert needs_review(correction) is (expected != "quiet")
    assert blocks_signing(correction, index) is (expected in ("dose", "side", "drug"))


# ---- document types decide what is required ----------------------------------------------


def test_short_clinic_note_gets_no_empty_soap_headings(settings: Settings,
                                                       tmp_path: Path) -> None:
    """A clinic note dictated without SOAP headings prints no [MISSING: Objective] etc."""
    text = ("Seen for follow-up of hypertension. Blood pressure is well controlled at home. "
            "Continue lisinopril and recheck in 3 months.")
    doc = structure(Note(text=text), DictationMeta(document_type="progress_note"), settings)
    assert doc.missing == []
    dictation = Dictation(
        id="dict-test",
        audio=AudioInfo(path=Path("d.wav"), sha256="0" * 64, size_bytes=1, format="wav",
                        codec="pcm_s16le", sample_rate=16000, channels=1, duration_s=60.0),
        meta=DictationMeta(physician_id="dr-smith", patient_name="John Smith"),
    )
    out = render_outputs(doc, dictation, "d1", tmp_path / "d1", settings)
    printed = out["txt"].read_text(encoding="utf-8")
    assert "[MISSING:" not in printed
    for heading in ("SUBJECTIVE", "OBJECTIVE", "ASSESSMENT", "PLAN"):
        assert heading not in printed
    assert "Continue lisinopril" in printed


def test_required_sections_still_come_from_the_document_type(settings: Settings) -> None:
    """Optional sections never show as missing; a required one does (radiology: findings)."""
    doc = structure(Note(text="Subjective: cough.\n\nObjective: lungs clear."),
                    DictationMeta(document_type="progress_note"), settings)
    assert doc.missing == ["Assessment"]
    rad = structure(Note(text="EXAM: CT abdomen.\nIMPRESSION: Normal."),
                    DictationMeta(document_type="radiology_report"), settings)
    assert "Findings" in rad.missing


# ---- header correction and reassignment --------------------------------------------------


def test_header_correction_is_audited_and_rendered_again(world) -> None:  # type: ignore[no-untyped-def]
    draft_id = _draft(world, "Patient Daniel Okonkwo, MRN 055718.\n\n" + GOOD,
                      meta={"patient_name": "Daniel Okonkwo", "mrn": "055781"})
    with world["store"].session() as s:
        draft = s.get(DraftRow, draft_id)
        wf.return_to_review(s, world["smith"], draft)
    with world["store"].session() as s:
        draft = s.get(DraftRow, draft_id)
        changed = wf.correct_header(s, world["settings"], world["sec"], draft,
                                    {"mrn": "055718", "date_of_birth": "July 22, 1979",
                                     "patient_name": "Daniel Okonkwo"})
    assert changed == ["mrn", "date_of_birth"]
    with world["store"].session() as s:
        draft = s.get(DraftRow, draft_id)
        assert draft.mrn == "055718"
        meta = s.get(DictationRow, draft.dictation_id).meta
        assert meta["date_of_birth"] == "1979-07-22"
        assert meta["sidecar_original"]["mrn"] == "055781"  # the first form is kept
        printed = files.read_bytes(Path(draft.outputs["txt"]), world["settings"]).decode()
        assert "MRN: 055718" in printed and "Date of birth: July 22, 1979" in printed
        assert Path(draft.outputs["docx"]).is_file()
        ev = s.scalars(select(AuditEvent).where(AuditEvent.action == "header_correct")).one()
        assert ev.actor == "sec" and ev.detail == {"fields": ["mrn", "date_of_birth"]}
        assert signoff.blockers(s, world["settings"], draft) == []  # the mismatch is gone
    with world["store"].session() as s, \
            pytest.raises(Exception, match="could not be read as a date"):
        wf.correct_header(s, world["settings"], world["sec"], s.get(DraftRow, draft_id),
                          {"date_of_service": "next Blursday"})


def test_reassignment_moves_the_draft_to_another_physician(world) -> None:  # type: ignore[no-untyped-def]
    draft_id = _draft(world, GOOD)
    with world["store"].session() as s:
        wf.return_to_review(s, world["smith"], s.get(DraftRow, draft_id))
    with world["store"].session() as s:
        wf.correct_header(s, world["settings"], world["sec"], s.get(DraftRow, draft_id),
                          {"physician_id": "dr-patel"})
    with world["store"].session() as s:
        draft = s.get(DraftRow, draft_id)
        assert draft.physician_id == "dr-patel"
        assert s.get(DictationRow, draft.dictation_id).physician_id == "dr-patel"
        ev = s.scalars(select(AuditEvent).where(AuditEvent.action == "reassign")).one()
        assert ev.detail == {"from": "dr-smith", "to": "dr-patel"}
        assert "Dr. Patel" in files.read_bytes(Path(draft.outputs["txt"]),
                                         world["settings"]).decode()
        with pytest.raises(Exception, match="not assigned"):
            wf.load_draft(s, world["sec"], draft_id)  # sec works for dr-smith only


# ---- through the web app -----------------------------------------------------------------


def _login(world, username: str) -> TestClient:  # type: ignore[no-untyped-def]
    c = TestClient(create_app(world["settings"]), client=("127.0.0.1", 50000))
    r = c.post("/login", data={"csrf_token": _token(c.get("/login").text),
                               "username": username, "password": PASSWORD},
               follow_redirects=False)
    assert r.status_code == 303, r.text
    return c


def _token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "page has no CSRF token"
    return m.group(1)


def test_sign_page_lists_blockers_with_links_and_refuses(world) -> None:  # type: ignore[no-untyped-def]
    start = DOSE.index("500 mg")
    draft_id = _draft(world, "Patient Daniel Okonkwo, MRN 055718.\n\n" + DOSE,
                      meta={"patient_name": "Daniel Okonkwo", "mrn": "055781"},
                      corrections=[{"original": "five hundred milligrams",
                                    "replacement": "500 mg", "start": start + 37,
                                    "end": start + 43, "kind": "number"}])
    c = _login(world, "smith")
    page = c.get(f"/drafts/{draft_id}/sign")
    assert page.status_code == 200
    html = page.text
    assert 'id="sign-form"' not in html  # no password form while something blocks
    assert f'href="/drafts/{draft_id}#hdr-mrn"' in html
    assert "MRN: dictated 055718, sidecar 055781 (2 digits differ" in html
    word = re.search(rf'href="/drafts/{draft_id}#(w\d+)"', html)
    assert word, html
    editor = c.get(f"/drafts/{draft_id}").text
    assert f'id="{word.group(1)}"' in editor and 'id="hdr-mrn"' in editor  # links land
    refused = c.post(f"/drafts/{draft_id}/sign",
                     data={"csrf_token": _token(html), "password": PASSWORD},
                     follow_redirects=False)
    assert refused.status_code == 409 and 'id="sign-refused"' in refused.text
    assert _status(world, draft_id) == "awaiting_signature"
    for key in re.findall(r'name="key" value="([^"]+)"', html):
        r = c.post(f"/drafts/{draft_id}/acknowledge",
                   data={"csrf_token": _token(html), "key": key, "back": "sign"},
                   follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith(
            f"/drafts/{draft_id}/sign")
    html = c.get(f"/drafts/{draft_id}/sign").text
    assert 'id="no-blockers"' in html and 'id="sign-form"' in html
    r = c.post(f"/drafts/{draft_id}/sign",
               data={"csrf_token": _token(html), "password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 303 and _status(world, draft_id) == "signed"


def test_header_correction_through_the_editor_form(world) -> None:  # type: ignore[no-untyped-def]
    draft_id = _draft(world, GOOD)
    with world["store"].session() as s:
        wf.return_to_review(s, world["smith"], s.get(DraftRow, draft_id))
    c = _login(world, "sec")
    html = c.get(f"/drafts/{draft_id}").text
    assert 'id="header-form"' in html
    r = c.post(f"/drafts/{draft_id}/header",
               data={"csrf_token": _token(html), "patient_name": "Ada Lovelace",
                     "mrn": "MRN-1", "date_of_birth": "", "date_of_service": "2026-11-30",
                     "document_type": "progress_note", "physician_id": "dr-smith"},
               follow_redirects=False)
    assert r.status_code == 303, r.text
    page = c.get(r.headers["location"]).text
    assert 'id="header-saved"' in page and "Ada Lovelace" in page
    preview = c.get(f"/drafts/{draft_id}/preview").text
    assert "Ada Lovelace" in preview and "November 30, 2026" in preview
    assert "DRAFT — not signed" in preview and "CLINIC NOTE" in preview


def test_command_conversions_are_not_flagged_in_the_editor(world) -> None:  # type: ignore[no-untyped-def]
    """42 of 79 flags were spoken punctuation: they are shown quietly (no mark, F2 skips)."""
    text = "Assessment: stable. Plan: continue lisinopril.\n"
    corrections = [
        {"original": "colon", "replacement": ":", "start": 10, "end": 11, "kind": "command"},
        {"original": "period", "replacement": ".", "start": 18, "end": 19, "kind": "command"},
        {"original": "lice in a pril", "replacement": "lisinopril",
         "start": text.index("lisinopril"), "end": text.index("lisinopril") + 10,
         "kind": "term"},
    ]
    draft_id = _draft(world, text, corrections=corrections)
    html = _login(world, "smith").get(f"/drafts/{draft_id}").text
    words = html[html.index('id="words"'):]
    words = words[:words.index("</div>")]
    marked = re.findall(r'<span class="w[^"]*\bcorr\b[^"]*"[^>]*>([^<]*)<', words)
    assert marked == ["lisinopril."]
    assert "Whisper heard: colon" not in html and "Whisper heard: period" not in html
