"""Wrong patient: dictated names, MRNs and dates of birth compared with the sidecar by sound,
spelling and digit; spelled-out names joined into the name. Through the header functions,
``dictation transcribe --json`` on real speech, and the web app."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from pipeline.core.records import DictationMeta, Note
from pipeline.documents.header import (
    HEADER_MISMATCH,
    HeaderMatchOptions,
    compare_values,
    describe_mismatch,
    extract_dictated,
)
from pipeline.documents.sections import structure

sys.path.insert(0, str(Path(__file__).parent / "data" / "speech"))
import speechgen as gen

DICTATION = shutil.which("dictation", path=str(Path(sys.executable).parent)) or "dictation"


@pytest.mark.parametrize(
    ("key", "sidecar", "dictated", "expected"),
    [
        # the incident: a different name that partly sounds like the sidecar's
        ("patient_name", "Daniel Okonkwo", "Manual Kanko", "a different name"),
        ("patient_name", "Daniel Okonkwo", "Robert Chen", "a different name"),
        ("patient_name", "Daniel Okonkwo", "Daniel Okonkwo", None),
        ("patient_name", "Okonkwo, Daniel", "Daniel Okonkwo", None),
        ("patient_name", "Daniel Okonkwo", "daniel okonkwo", None),
        # a near-spelling may be the recogniser's or another patient: a person decides
        ("patient_name", "Daniel Okonkwo", "Daniel Okonkow", "sounds alike"),
        ("patient_name", "Margaret Ellison", "Margaret Allison", "sounds alike"),
        ("patient_name", "Jon Smith", "Joan Smith", "sounds alike"),
        ("mrn", "055781", "055718", "2 digits differ (positions 5-6, transposed)"),
        ("mrn", "055781", "055782", "1 digit differs (position 6)"),
        ("mrn", "055781", "05578", "5 characters against 6"),
        ("mrn", "05-5781", "055781", None),
        ("date_of_birth", "March 4, 1962", "March 5, 1962", "day differs"),
        ("date_of_birth", "March 4, 1962", "April 3, 1962", "day and month swapped"),
        ("date_of_birth", "March 4, 1962", "March 4, 1926", "year differs"),
        ("date_of_birth", "March 4, 1962", "03/04/1962", None),
    ],
)
def test_compare_header_values(key: str, sidecar: str, dictated: str,
                               expected: str | None) -> None:
    """Which field disagrees and how; the same value in another form is no mismatch."""
    how = compare_values(key, sidecar, dictated)
    if expected is None:
        assert how is None
    else:
        assert how is not None and how.startswith(expected), how


def test_thresholds_live_in_an_options_object() -> None:
    """A looser spelling threshold lets the recogniser's near-spelling through."""
    assert compare_values("patient_name", "Daniel Okonkwo", "Daniel Okonkow")
    loose = HeaderMatchOptions(name_same_ratio=90.0)
    assert compare_values("patient_name", "Daniel Okonkwo", "Daniel Okonkow", loose) is None
    assert compare_values("patient_name", "Daniel Okonkwo", "Manual Kanko", loose)


def test_mismatch_message_names_the_field_and_the_difference() -> None:
    assert describe_mismatch("mrn", "055781", "055718") == (
        "MRN: dictated 055718, sidecar 055781 (2 digits differ (positions 5-6, transposed))")


@pytest.mark.parametrize(
    ("spoken", "name"),
    [
        ("Patient Chidi Okafor, O K A F O R, date of birth March 4, 1962.", "Chidi Okafor"),
        ("Patient Chidi Okafor, OKAFOR, MRN 12345.", "Chidi Okafor"),
        # the spelling wins over what was heard
        ("Patient Chidi Okafer, spelled O-K-A-F-O-R. MRN 12345.", "Chidi Okafor"),
        ("patient manual Kanko, MRN 055718.", "manual Kanko"),
    ],
)
def test_spelled_out_names_are_joined_into_the_name(spoken: str, name: str) -> None:
    found = extract_dictated(spoken)
    assert found.values["patient_name"] == name
    assert found.spans[0][1] >= spoken.index(",", spoken.index(name.split()[-1][:3]))


def test_spelled_letters_do_not_stay_in_the_document_text(settings) -> None:  # type: ignore[no-untyped-def]
    text = ("Patient Chidi Okafor, O K A F O R, MRN 12345.\n"
            "ASSESSMENT: Stable.")
    doc = structure(Note(text=text), DictationMeta(document_type="progress_note",
                                                   patient_name="Chidi Okafor", mrn="12345"),
                    settings)
    body = " ".join(s.text for s in doc.sections)
    assert "O K A F O R" not in body and "Okafor" not in body
    assert HEADER_MISMATCH not in doc.flags


@pytest.mark.parametrize(
    ("said", "field", "mismatch"),
    [
        ("Clinic note for patient manual canco, MRN 055781.", "patient_name", True),
        ("Patient Manual Kanko, MRN 055781.", "patient_name", True),
        ("Patient Daniel Okonkwo, MRN 055718.", "mrn", True),
        ("Patient Daniel Okonkwo, date of birth July 23, 1979.", "date_of_birth", True),
        ("Patient Daniel Okonkwo, MRN 055781, date of birth July 22, 1979.", None, False),
        ("The patient denies chest pain.", None, False),
    ],
)
def test_wrong_patient_cases_are_flagged(said: str, field: str | None, mismatch: bool,
                                         settings) -> None:  # type: ignore[no-untyped-def]
    meta = DictationMeta(patient_name="Daniel Okonkwo", mrn="055781",
                         date_of_birth=date(1979, 7, 22), document_type="progress_note")
    doc = structure(Note(text=said + "\nASSESSMENT: Stable."), meta, settings)
    assert (HEADER_MISMATCH in doc.flags) is mismatch
    if field:
        assert doc.header[field].conflict


WRONG_SPEECH = ("Clinic note for patient Manual Kanko. Date of birth, March fifth, nineteen "
                "seventy nine. Medical record number, zero five five seven one eight. "
                "Assessment: stable hypertension. Plan: continue lisinopril.")


@pytest.mark.slow
def test_transcribe_json_lists_the_wrong_patient_blockers(tmp_path: Path) -> None:
    """Real speech (espeak-ng, tiny.en) under a sidecar for another patient: the JSON's
    flags say header_mismatch and its blockers say which fields disagree and how."""
    audio = gen.speak(tmp_path / "wrong.wav", WRONG_SPEECH, speed=140)
    (tmp_path / "wrong.json").write_text(json.dumps({
        "patient_name": "Daniel Okonkwo", "date_of_birth": "1979-03-04", "mrn": "055781",
        "document_type": "progress_note", "physician_id": "dr-smith"}), encoding="utf-8")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DICTATION_") or k.endswith("KEY_FILE")}  # keys: conftest
    env.update(DICTATION_DATA_DIR=str(tmp_path / "var"), DICTATION_MODEL="tiny.en",
               DICTATION_DEVICE="cpu", DICTATION_COMPUTE_TYPE="int8", DICTATION_PDF="never",
               DICTATION_PHYSICIANS='["dr-smith"]')
    proc = subprocess.run([DICTATION, "transcribe", "--json", str(audio)], env=env,
                          capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert "header_mismatch" in result["flags"]
    messages = [b["message"] for b in result["blockers"] if b["kind"] == "header_mismatch"]
    assert any(m.startswith("MRN: dictated 055718, sidecar 055781 (2 digits differ")
               for m in messages), messages
    assert any(m.startswith("Date of birth: dictated March 5, 1979, sidecar March 4, 1979")
               for m in messages), messages
    # The name: how tiny.en spells "Manual Kanko" depends on the CPU's kernels ("Manual
    # Kanko", "...an go": docs/decoding-determinism.md), and a name it does not hear as a name
    # gives no name blocker. The name rules are tested on text in
    # test_wrong_patient_cases_are_flagged; here: a name blocker, when there is one, shows both.
    for m in messages:
        if m.startswith("Patient name:"):
            assert "sidecar Daniel Okonkwo" in m, m
    for b in result["blockers"]:
        assert set(b) == {"kind", "message", "anchor", "key", "can_acknowledge"}


def test_wrong_patient_through_the_web_app(tmp_path: Path) -> None:
    """The editor and the sign page say which field disagrees and how."""
    from fastapi.testclient import TestClient

    from pipeline.core.db.core import DictationRow, DraftRow
    from pipeline.core.records import to_jsonable
    from pipeline.core.settings import Settings
    from pipeline.core.store import open_store
    from pipeline.review import signoff
    from pipeline.review import versions as wf
    from pipeline.review.users import create_user
    from pipeline.web.app import create_app
    from pipeline.web.seed import add_draft

    settings = Settings(data_dir=tmp_path / "var", model="tiny.en", device="cpu",
                        compute_type="int8", physicians=["dr-smith"], pdf="never")
    text = ("Clinic note for patient manual Kanko, date of birth July 23, 1979, "
            "MRN 055718.\n\nAssessment: stable.\n")
    with open_store(settings).session() as s:
        sec = create_user(s, "sec", "correct-horse-9", "secretary", ["dr-smith"])
        create_user(s, "smith", "correct-horse-9", "physician", ["dr-smith"])
        draft_id = add_draft(s, text=text, segments=[], physician_id="dr-smith",
                             patient_name="Daniel Okonkwo", mrn="055781",
                             document_type="progress_note")
        draft = s.get(DraftRow, draft_id)
        row = s.get(DictationRow, draft.dictation_id)
        row.meta = {**row.meta, "date_of_birth": "1979-07-22"}
        draft.document = to_jsonable(signoff.current_document(s, settings, draft))
        wf.claim(s, sec, draft)
        wf.send_for_signature(s, sec, draft)
    c = TestClient(create_app(settings), client=("127.0.0.1", 50000))
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text)
    assert token
    c.post("/login", data={"csrf_token": token.group(1), "username": "smith",
                           "password": "correct-horse-9"})
    editor = c.get(f"/drafts/{draft_id}").text
    assert "2 digits differ" in editor and "day differs" in editor
    sign = c.get(f"/drafts/{draft_id}/sign").text
    for expected in ("MRN: dictated 055718, sidecar 055781 (2 digits differ",
                     "Date of birth: dictated July 23, 1979, sidecar July 22, 1979 (day differs)",
                     "Patient name: dictated manual Kanko, sidecar Daniel Okonkwo (a different "
                     "name"):
        assert expected in sign, expected
    assert sign.count('class="blocker blocker-header_mismatch"') == 3
