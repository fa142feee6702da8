"""Numbers, doses, vitals, sizes, dates and times in medical style (spoken -> expected)."""

from __future__ import annotations

import pytest

from pipeline.core.settings import Settings
from pipeline.language.normalize import normalize_text
from pipeline.language.normalize.numbers import parse_cardinal

NUMBERS = [
    # doses and units
    ("twenty five milligrams by mouth twice daily", "25 mg by mouth twice daily"),
    ("one gram of cefazolin", "1 g of cefazolin"),
    ("fifty micrograms of fentanyl", "50 mcg of fentanyl"),
    ("fifty milligrams of tramadol", "50 mg of tramadol"),
    ("ten units of insulin", "10 units of insulin"),
    ("twenty milliequivalents of potassium", "20 mEq of potassium"),
    ("five milliliters of lidocaine", "5 mL of lidocaine"),
    ("one hundred milliliters of contrast", "100 mL of contrast"),
    ("fifteen millimeters of mercury", "15 mmHg"),
    ("a two millimeter appendicolith", "A 2 mm appendicolith"),
    ("a ten millimeter trocar", "A 10 mm trocar"),
    ("two point four by one centimeters", "2.4 by 1 cm"),
    ("one milligram per kilogram", "1 mg/kg"),
    ("eight seventy five milligrams", "875 mg"),
    ("metformin one thousand milligrams", "Metformin 1000 mg"),
    # safety: leading and trailing zeros
    ("point five milligrams", "0.5 mg"),
    ("zero point five milligrams", "0.5 mg"),
    ("five point zero milligrams", "5 mg"),
    ("give .5 mg now", "Give 0.5 mg now"),
    ("give 5.0 mg now", "Give 5 mg now"),
    # vitals and labs
    ("blood pressure one forty two over eighty eight", "Blood pressure 142/88"),
    ("blood pressure one twenty over eighty", "Blood pressure 120/80"),
    ("BP 136/82", "BP 136/82"),
    ("heart rate seventy six", "Heart rate 76"),
    ("hemoglobin eleven point two", "Hemoglobin 11.2"),
    ("creatinine one point one", "Creatinine 1.1"),
    ("temperature ninety eight point six degrees fahrenheit", "Temperature 98.6°F"),
    ("temperature thirty eight point five degrees celsius", "Temperature 38.5°C"),
    ("oxygen saturation ninety seven percent", "Oxygen saturation 97%"),
    ("ejection fraction of fifty five percent", "Ejection fraction of 55%"),
    ("hemoglobin A one C eight point one percent", "Hemoglobin A1c 8.1%"),
    # sutures
    ("closed with four oh vicryl", "Closed with 4-0 Vicryl"),
    ("three oh nylon sutures", "3-0 nylon sutures"),
    ("two-oh silk", "2-0 silk"),
    ("the skin with four on nylon", "The skin with 4-0 nylon"),
    ("three of silk ties", "3-0 silk ties"),
    ("three of the nurses", "Three of the nurses"),
    ("biopsy with 2mm margins", "Biopsy with 2 mm margins"),
    # letters and levels
    ("C B C and B M P", "CBC and BMP"),
    ("an E K G", "An EKG"),
    ("T four is normal", "T4 is normal"),
    ("vitamin d1000 units daily", "Vitamin D 1000 units daily"),
    ("vitamin E400 daily", "Vitamin E 400 daily"),
    ("vitamin D50,000 units weekly", "Vitamin D 50,000 units weekly"),
    ("vitamin B12 and vitamin D3", "Vitamin B12 and vitamin D3"),
    ("the d1000 form", "The d1000 form"),
    ("disc herniation at L four L five", "Disc herniation at L4-L5"),
    ("L five S one", "L5-S1"),
    ("C five to C six", "C5-C6"),
    # dates and times
    ("seen on January fifth twenty twenty four", "Seen on January 5, 2024"),
    ("born March fourth nineteen sixty two", "Born March 4, 1962"),
    ("on November eighteenth", "On November 18"),
    ("at ten thirty a m", "At 10:30 a.m."),
    ("at three p m", "At 3:00 p.m."),
    ("at fourteen twenty", "At 14:20"),
    # ages, counts, record numbers
    ("a fifty five year old man", "A 55-year-old man"),
    ("seventy three year old woman", "73-year-old woman"),
    ("M R N four four seven one eight two three", "MRN 4471823"),
    ("type two diabetes", "Type 2 diabetes"),
    ("postoperative day three", "Postoperative day 3"),
    ("one of the nurses", "One of the nurses"),
    ("twenty four hours", "24 hours"),
]


@pytest.mark.parametrize(("spoken", "expected"), NUMBERS)
def test_number_forms(spoken: str, expected: str, settings: Settings) -> None:
    assert normalize_text(spoken, settings).text == expected


@pytest.mark.parametrize(
    ("style", "expected"),
    [("numerals", "Follow up in 2 weeks"), ("words_under_ten", "Follow up in two weeks")],
)
def test_two_weeks_follows_the_numbers_style(style: str, expected: str, settings: Settings) -> None:
    s = settings.model_copy(update={"numbers_style": style})
    assert normalize_text("follow up in two weeks", s).text == expected


def test_digits_become_words_under_ten_in_that_style(settings: Settings) -> None:
    s = settings.model_copy(update={"numbers_style": "words_under_ten"})
    assert normalize_text("Follow up in 2 weeks", s).text == "Follow up in two weeks"


def test_doses_stay_numerals_in_words_style(settings: Settings) -> None:
    s = settings.model_copy(update={"numbers_style": "words_under_ten"})
    assert normalize_text("give two milligrams", s).text == "Give 2 mg"


def test_milligrams_and_micrograms_stay_distinct(settings: Settings) -> None:
    note = normalize_text("fifty micrograms and fifty milligrams", settings)
    assert note.text == "50 mcg and 50 mg"


def test_trailing_zero_removal_goes_to_review(settings: Settings) -> None:
    note = normalize_text("five point zero milligrams", settings)
    assert note.text == "5 mg"
    assert [i["kind"] for i in note.review_items] == ["trailing_zero"]


def test_number_changes_are_recorded_with_positions(settings: Settings) -> None:
    note = normalize_text("give twenty five milligrams now", settings)
    (c,) = [c for c in note.corrections if c.kind == "number"]
    assert (c.original, c.replacement) == ("twenty five milligrams", "25 mg")
    assert note.text[c.start : c.end] == "25 mg"


@pytest.mark.parametrize(
    ("words", "colloquial", "value"),
    [
        ("twenty five", False, 25),
        ("one hundred and five", False, 105),
        ("two thousand twenty four", False, 2024),
        ("one forty two", True, 142),
        ("one forty two", False, 1),
        ("eleven", False, 11),
    ],
)
def test_parse_cardinal(words: str, colloquial: bool, value: int) -> None:
    parsed = parse_cardinal(words.split(), 0, colloquial=colloquial)
    assert parsed is not None and parsed[0] == value
