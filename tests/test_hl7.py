"""HL7 v2.5 MDM^T02: built for every draft, parsed back with the ``hl7`` package."""

from __future__ import annotations

from datetime import UTC, date, datetime

import hl7
import pytest

from pipeline.documents.hl7 import build_mdm_t02, escape, split_name

CREATED = datetime(2026, 11, 26, 10, 0, 5, tzinfo=UTC)


def _message(text: str = "LINE ONE\nLINE TWO", final: bool = False, **overrides) -> str:
    args = dict(
        draft_id="draft-42", document_type="operative_report", loinc="11504-8",
        loinc_display="Surgical operation note", text=text, practice_name="Riverside & Co",
        patient_name="John A. Smith", mrn="12345", date_of_birth=date(1962, 3, 4),
        physician_id="dr-smith", physician_name="Dr. Jane Smith",
        referring_physician="Dr. Lee", date_of_service=date(2026, 11, 20),
        encounter_id="enc-7", created=CREATED, final=final, file_name="document.docx",
    )
    args.update(overrides)
    return build_mdm_t02(**args)


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a|b", "a\\F\\b"), ("a^b", "a\\S\\b"), ("a&b", "a\\T\\b"), ("a~b", "a\\R\\b"),
        ("a\\b", "a\\E\\b"), ("C:\\x|y", "C:\\E\\x\\F\\y"), ("", ""),
    ],
)
def test_escape(raw: str, escaped: str) -> None:
    assert escape(raw) == escaped


def test_split_name() -> None:
    assert split_name("John A. Smith") == ("Smith", "John", "A.")
    assert split_name("Smith, John") == ("Smith", "John", "")
    assert split_name("Dr. Lee") == ("Lee", "", "")


def test_parse_back_fields() -> None:
    raw = _message()
    assert raw.count("\r") == len(raw.split("\r")) - 1 and "\n" not in raw
    message = hl7.parse(raw)
    assert str(message.segment("MSH")[9]) == "MDM^T02^MDM_T02"
    assert str(message.segment("MSH")[12]) == "2.5"
    assert message.unescape(str(message.segment("MSH")[4])) == "Riverside & Co"
    assert str(message.segment("EVN")[1]) == "T02"
    pid = message.segment("PID")
    assert str(pid[3][0][0]) == "12345" and str(pid[3][0][4]) == "MR"
    assert str(pid[5][0][0]) == "Smith" and str(pid[5][0][1]) == "John"
    assert str(pid[7]) == "19620304"
    pv1 = message.segment("PV1")
    assert str(pv1[7][0][1]) == "Smith" and str(pv1[8][0][1]) == "Lee"
    txa = message.segment("TXA")
    assert str(txa[2]) == "OP" and str(txa[3]) == "TX"
    assert str(txa[4]) == "20261120"
    assert str(txa[12]) == "draft-42"
    assert str(txa[17]) == "IP" and str(txa[19]) == "UN"
    obx = message.segments("OBX")
    assert [str(o[5]) for o in obx] == ["LINE ONE", "LINE TWO"]
    assert str(obx[0][2]) == "TX" and str(obx[0][3][0][0]) == "11504-8"
    assert str(obx[0][11]) == "P"


def test_signed_message_is_authenticated() -> None:
    message = hl7.parse(_message(final=True, signed_by="Dr. Jane Smith",
                                 signed_at=CREATED))
    txa = message.segment("TXA")
    assert str(txa[17]) == "AU" and str(txa[19]) == "AV"
    assert str(txa[22][0][1]) == "Smith"
    assert str(txa[22][0][14]).startswith("20261126100005")
    assert str(message.segments("OBX")[0][11]) == "F"


def test_hostile_text_round_trips() -> None:
    lines = ["Pipes | carets ^ tildes ~ ampersands & backslash \\ end",
             "<script>alert('x')</script> \U0001F600", ""]
    message = hl7.parse(_message(text="\n".join(lines), patient_name="O'Brien|Jr, Sean"))
    obx = message.segments("OBX")
    assert len(obx) == 3
    assert [message.unescape(str(o[5])) for o in obx] == lines
    assert message.unescape(str(message.segment("PID")[5][0][0])) == "O'Brien|Jr"


def test_missing_patient_data_still_parses() -> None:
    message = hl7.parse(_message(patient_name=None, mrn=None, date_of_birth=None,
                                 referring_physician=None, date_of_service=None))
    assert str(message.segment("PID")[3]) == ""
    assert str(message.segment("TXA")[17]) == "IP"
