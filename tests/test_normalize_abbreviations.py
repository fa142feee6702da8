"""Abbreviation policy (Do-Not-Use, ISMP, standard, ambiguous) and prescription style."""

from __future__ import annotations

import pytest

from pipeline.core.settings import Settings
from pipeline.language.normalize import normalize_text

DO_NOT_USE = [
    ("metoprolol 50 mg QD", "Metoprolol 50 mg daily"),
    ("aspirin 81 mg qd", "Aspirin 81 mg daily"),
    ("insulin 10 U at night", "Insulin 10 units at night"),
    ("insulin 10U at night", "Insulin 10 units at night"),
    ("vitamin D 1000 IU", "Vitamin D 1000 international units"),
    ("warfarin 5 mg QOD", "Warfarin 5 mg every other day"),
    ("MSO4 2 mg IV", "Morphine sulfate 2 mg IV"),
    ("morphine 2 mg then MS 2 mg", "Morphine 2 mg then MS 2 mg"),
    ("give 4 mg MS", "Give 4 mg morphine sulfate"),
    ("drew 5 cc of blood", "Drew 5 mL of blood"),
    ("heparin 5000 units SQ", "Heparin 5000 units subcutaneously"),
    ("zolpidem 5 mg HS", "Zolpidem 5 mg at bedtime"),
    ("fentanyl 50 µg", "Fentanyl 50 mcg"),
]


@pytest.mark.parametrize(("written", "expected"), DO_NOT_USE)
def test_do_not_use_abbreviations_are_expanded(written: str, expected: str,
                                               settings: Settings) -> None:
    note = normalize_text(written, settings)
    assert note.text == expected


def test_do_not_use_expansion_is_recorded(settings: Settings) -> None:
    note = normalize_text("metoprolol 50 mg QD", settings)
    (c,) = [c for c in note.corrections if c.kind == "abbreviation"]
    assert (c.original, c.replacement) == ("QD", "daily")
    assert note.text[c.start : c.end] == "daily"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("As discussed, he is well", "As discussed, he is well"), ("IN THE CLINIC", "IN THE CLINIC")],
)
def test_english_words_that_look_like_abbreviations_are_left(text: str, expected: str,
                                                             settings: Settings) -> None:
    assert normalize_text(text, settings).text == expected


@pytest.mark.parametrize(
    ("expand", "expected"),
    [(False, "CBC and BMP were normal"),
     (True, "Complete blood count and basic metabolic panel were normal")],
)
def test_standard_abbreviations_follow_the_setting(expand: bool, expected: str,
                                                   settings: Settings) -> None:
    s = settings.model_copy(update={"expand_standard_abbreviations": expand})
    assert normalize_text("CBC and BMP were normal", s).text == expected


def test_ambiguous_abbreviation_is_flagged_not_changed(settings: Settings) -> None:
    note = normalize_text("refer to PT for strengthening", settings)
    assert note.text == "Refer to PT for strengthening"
    assert [i["kind"] for i in note.review_items] == ["ambiguous_abbreviation"]
    assert "needs_review" in note.flags


def test_abbreviation_defined_in_the_text_is_not_flagged(settings: Settings) -> None:
    note = normalize_text("prothrombin time (PT) was normal and PT was repeated", settings)
    assert not [i for i in note.review_items if i["kind"] == "ambiguous_abbreviation"]


@pytest.mark.parametrize(
    ("latin", "spoken", "expected"),
    [
        (False, "twenty five milligrams by mouth twice daily", "25 mg by mouth twice daily"),
        (True, "twenty five milligrams by mouth twice daily", "25 mg p.o. b.i.d."),
        (True, "two tablets every 6 hours as needed", "2 tablets q.6h. p.r.n."),
        (True, "ten milligrams daily", "10 mg daily"),  # never q.d.
        (False, "lisinopril 10 mg PO BID", "Lisinopril 10 mg by mouth twice daily"),
        (False, "apixaban 5 mg b.i.d.", "Apixaban 5 mg twice daily"),
    ],
)
def test_prescription_style(latin: bool, spoken: str, expected: str, settings: Settings) -> None:
    s = settings.model_copy(update={"latin_abbreviations": latin})
    assert normalize_text(spoken, s).text == expected


def test_doctor_title(settings: Settings) -> None:
    note = normalize_text("please copy Doctor Patel at Riverside", settings)
    assert note.text == "Please copy Dr. Patel at Riverside"
