"""Header data from the sidecar and the dictation; mismatches are flagged, never resolved."""

from __future__ import annotations

from datetime import date

import pytest

from pipeline.core.records import DictationMeta, Note
from pipeline.documents.header import (
    HEADER_MISMATCH,
    extract_dictated,
    merge_header,
    parse_date,
    physician_display_name,
)
from pipeline.documents.sections import structure


@pytest.mark.parametrize(
    ("spoken", "expected"),
    [
        ("Patient John Smith, date of birth March 4, 1962, MRN 12345.",
         {"patient_name": "John Smith", "date_of_birth": "March 4, 1962", "mrn": "12345"}),
        ("patient name is Mary Ann Jones DOB 03/04/1962 medical record number 1 2 3 4 5 6.",
         {"patient_name": "Mary Ann Jones", "date_of_birth": "03/04/1962", "mrn": "123456"}),
        ("This is Doctor Jane Whitaker for patient Rosa Delgado, date of service "
         "November 20th, 2026.",
         {"physician": "Dr. Jane Whitaker", "patient_name": "Rosa Delgado",
          "date_of_service": "November 20th, 2026"}),
        ("PATIENT: Daniel Okonkwo\nDATE OF BIRTH: July 22, 1979\nMRN: 5520914\n"
         "DATE OF SERVICE: November 25, 2026",
         {"patient_name": "Daniel Okonkwo", "date_of_birth": "July 22, 1979", "mrn": "5520914",
          "date_of_service": "November 25, 2026"}),
        ("Referred by Dr. Lee. Date of surgery 2026-11-02.",
         {"referring_physician": "Dr. Lee", "date_of_service": "2026-11-02"}),
        ("The patient tolerated the procedure well.", {}),
    ],
)
def test_extract_dictated(spoken: str, expected: dict[str, str]) -> None:
    assert extract_dictated(spoken).values == expected


@pytest.mark.parametrize(
    ("spoken", "expected"),
    [
        ("patient John Smith comma date of birth March fourth nineteen sixty two comma MRN one "
         "two three four five period",
         {"patient_name": "John Smith", "date_of_birth": "March 4, 1962", "mrn": "12345"}),
        ("date of birth January twenty first nineteen seventy period",
         {"date_of_birth": "January 21, 1970"}),
        ("date of service November seventeenth twenty twenty six period",
         {"date_of_service": "November 17, 2026"}),
    ],
)
def test_extract_dictated_after_spoken_numbers(spoken: str, expected: dict[str, str],
                                               settings) -> None:
    """Header dates and record numbers said in words reach the header through the number
    normaliser (the header reads digits; the spoken-number table is in one place)."""
    from pipeline.language.normalize import normalize_text

    assert extract_dictated(normalize_text(spoken, settings).text).values == expected


def test_parse_date_forms() -> None:
    assert parse_date("March 4th, 1962") == date(1962, 3, 4)
    assert parse_date("4 March 1962") == date(1962, 3, 4)
    assert parse_date("03/04/1962") == date(1962, 3, 4)
    assert parse_date("not a date") is None


def test_sidecar_wins_and_mismatch_is_flagged(settings) -> None:
    meta = DictationMeta(patient_name="John Smith", mrn="12346", physician_id="dr-smith",
                         date_of_birth=date(1962, 3, 4))
    text = ("Patient John Smith, date of birth March 5, 1962, MRN 12345.\n"
            "FINDINGS: Normal.")
    doc = structure(Note(text=text), meta, settings)
    assert HEADER_MISMATCH in doc.flags
    assert doc.header["mrn"].value == "12346"
    assert doc.header["mrn"].source == "sidecar"
    assert doc.header["mrn"].conflict == "12345"
    assert doc.header["date_of_birth"].value == "March 4, 1962"
    assert doc.header["date_of_birth"].conflict == "March 5, 1962"
    assert doc.header["patient_name"].conflict is None


def test_same_values_in_other_forms_are_not_a_mismatch(settings) -> None:
    meta = DictationMeta(patient_name="Smith, John", mrn="12-345", date_of_birth=date(1962, 3, 4))
    text = "Patient John Smith, date of birth 03/04/1962, MRN 12345.\nFINDINGS: Normal."
    doc = structure(Note(text=text), meta, settings)
    assert HEADER_MISMATCH not in doc.flags
    assert all(f.conflict is None for f in doc.header.values())


def test_dictation_fills_what_the_sidecar_lacks(settings) -> None:
    text = ("Patient Alan Brooks, date of birth June 2, 1958, MRN 5512093, referred by "
            "Doctor Lee.\nIMPRESSION: Normal.")
    doc = structure(Note(text=text), None, settings)
    assert doc.header["patient_name"].value == "Alan Brooks"
    assert doc.header["patient_name"].source == "dictation"
    assert doc.header["date_of_birth"].value == "June 2, 1958"
    assert doc.header["referring_physician"].value == "Dr. Lee"
    assert set(doc.header) >= {"patient_name", "date_of_birth", "mrn", "date_of_service",
                               "physician", "referring_physician"}


def test_physician_from_id_and_dictated_mismatch(settings) -> None:
    assert physician_display_name("dr-smith") == "Dr. Smith"
    assert physician_display_name("anna-maria_lopez") == "Dr. Anna Maria Lopez"
    meta = DictationMeta(physician_id="dr-smith")
    same, flags = merge_header(meta, extract_dictated("This is Dr. Jane Smith."), settings)
    assert same["physician"].value == "Dr. Jane Smith" and not flags
    other, flags = merge_header(meta, extract_dictated("This is Dr. Patel."), settings)
    assert other["physician"].value == "Dr. Smith"
    assert other["physician"].conflict == "Dr. Patel"
    assert flags == [HEADER_MISMATCH]


def test_header_without_any_source(settings) -> None:
    doc = structure(Note(text="FINDINGS: Normal."), None, settings)
    assert doc.header["mrn"].value is None and doc.header["mrn"].source == "none"


def test_preamble_sentences_with_header_data_are_not_document_text(settings) -> None:
    """Even when a name was misheard, the metadata sentence does not reach the letter."""
    text = ("Consultation letter for patient preinotrogen date of birth May 14, 1985, MRN "
            "7734120, seen November 16.\n\nThank you for referring her.\n\nIMPRESSION: Goitre.")
    doc = structure(Note(text=text), DictationMeta(document_type="consult_letter"), settings)
    assert doc.sections[0].key == "body"
    assert doc.sections[0].text == "Thank you for referring her."
    assert doc.header["mrn"].value == "7734120"


def test_stay_dates_from_the_opening_sentence(settings) -> None:
    text = ("Discharge summary for Evelyn Moss, date of birth June 17, 1941, MRN 8812345, "
            "admitted November 12, discharged November 16, 2026.\n\n"
            "DISCHARGE DIAGNOSIS: Pneumonia.\n\nHOSPITAL COURSE: Improved on antibiotics.")
    doc = structure(Note(text=text), DictationMeta(document_type="discharge_summary"), settings)
    by_key = {s.key: s.text for s in doc.sections}
    assert by_key["admission_date"] == "November 12, 2026"
    assert by_key["discharge_date"] == "November 16, 2026"
    assert [s.key for s in doc.sections][:2] == ["admission_date", "discharge_date"]
    assert doc.header["patient_name"].value == "Evelyn Moss"


def test_physician_display_name_from_settings_map(settings) -> None:
    """A configured printable name wins over the one derived from the id."""
    settings.physician_names = {"dr-smith": "Jane Smith, MD"}
    note = Note(text="Impression: stable.")
    doc = structure(note, DictationMeta(physician_id="dr-smith"), settings)
    assert doc.header["physician"].value == "Jane Smith, MD"
    doc = structure(note, DictationMeta(physician_id="dr-patel"), settings)
    assert doc.header["physician"].value == "Dr. Patel"
