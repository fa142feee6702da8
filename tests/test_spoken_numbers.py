"""One spoken-number vocabulary (issue #14): the tables and parsing in
``pipeline.language.spoken_numbers`` and every caller that reads numbers said in words."""

from __future__ import annotations

import re

import pytest

from pipeline.core.settings import Settings
from pipeline.language import spoken_numbers
from pipeline.language.instructions import find_instructions, interval_days
from pipeline.language.normalize import normalize_text
from pipeline.language.spoken_numbers import (
    count_pattern,
    is_number_word,
    parse_cardinal,
    parse_count,
    parse_number,
)
from pipeline.secretary.tasks import _interval_days

# every count from 1 to 99 in words, as the physician says them
_UNITS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_TEENS = ["ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
          "seventeen", "eighteen", "nineteen"]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
ALL_COUNTS = [(w, v) for v, w in enumerate(_UNITS + _TEENS, start=1)] + [
    (f"{t}{sep}{u}" if u else t, 20 + 10 * k + j)
    for k, t in enumerate(_TENS)
    for j, u in enumerate(["", *_UNITS])
    for sep in ((" ", "-") if u else ("",))
]

PARSE = [
    ("seventeen", 17),
    ("sixteen", 16),
    ("nineteen", 19),
    ("twenty-one", 21),
    ("twenty one", 21),
    ("Ninety Nine", 99),
    ("one hundred", 100),
    ("one hundred and five", 105),
    ("two thousand twenty four", 2024),
    ("17", 17),
    ("seventeen days", None),
    ("one two", None),  # two numbers, not one
    ("", None),
    ("half", None),
]


@pytest.mark.parametrize(("said", "expected"), PARSE)
def test_parse_number(said: str, expected: int | None) -> None:
    """A whole phrase that is one cardinal gives its value; anything else gives None."""
    assert parse_number(said) == expected


@pytest.mark.parametrize(("said", "expected"), ALL_COUNTS)
def test_every_count_from_1_to_99_parses_and_matches_the_pattern(said: str,
                                                                expected: int) -> None:
    """The table has no holes ("seventeen" was missing from the instructions' copy)."""
    assert parse_number(said) == expected
    assert re.fullmatch(count_pattern(), said, re.I)


COUNTS = [
    ("two and a half", 2.5),
    ("one and a half", 1.5),
    ("a", 1),
    ("an", 1),
    ("a couple of", 2),
    ("a few", 3),
    ("several", 3),
    ("6", 6),
    ("about", None),
]


@pytest.mark.parametrize(("said", "expected"), COUNTS)
def test_parse_count(said: str, expected: float | None) -> None:
    """Counts before a unit: numbers, halves and the vague counts an office books."""
    assert parse_count(said) == expected


def test_colloquial_reading_is_only_on_request() -> None:
    """ "one forty two" is 142 only where vitals are said that way."""
    words = ["one", "forty", "two"]
    assert parse_cardinal(words) == (1, 1)
    assert parse_cardinal(words, colloquial=True) == (142, 3)


def test_number_words_cover_compounds_but_not_ordinals() -> None:
    assert is_number_word("seventeen") and is_number_word("forty-two")
    assert not is_number_word("seventeenth") and not is_number_word("forty-")


def test_no_other_module_keeps_its_own_table_of_number_words() -> None:
    """Regression for issue #14: four copies of the table disagreed. The language stage and
    the task list read the words from ``spoken_numbers`` only."""
    from pathlib import Path

    root = Path(spoken_numbers.__file__).resolve().parents[1]
    table = re.compile(r"[\"']fifteen[\"'][^\n]{0,12}[\"']sixteen[\"']"
                       r"|[\"']one[\"']\s*:\s*1\s*,\s*[\"']two[\"']")
    offenders = [
        str(p.relative_to(root))
        for sub in ("language", "secretary", "documents")
        for p in (root / sub).rglob("*.py")
        if p.name != "spoken_numbers.py" and table.search(p.read_text(encoding="utf-8"))
    ]
    assert offenders == []


# --- the callers ------------------------------------------------------------------------

SCHEDULE = [
    ("Schedule follow-up in seventeen days.", 17, 17, "day"),
    ("Schedule follow-up in sixteen days.", 16, 16, "day"),
    ("Follow up in twenty-one days.", 21, 21, "day"),
    ("Follow up in twenty one days.", 21, 21, "day"),
    ("Return in two and a half weeks.", 18, 2.5, "week"),
    ("See her back in two to three weeks.", 21, 3, "week"),
    ("Follow up in a couple of weeks.", 14, 2, "week"),
    ("Follow up in nineteen months.", 570, 19, "month"),
    ("Return to clinic in 4 to 6 weeks.", 42, 6, "week"),
    ("Follow up in 4-6 weeks.", 42, 6, "week"),
]


@pytest.mark.parametrize(("sentence", "days", "count", "unit"), SCHEDULE)
def test_schedule_instruction_reads_every_spoken_count(sentence: str, days: int,
                                                       count: float, unit: str) -> None:
    """Regression: "seventeen days" found no instruction while "sixteen days" did."""
    found = find_instructions(sentence)
    assert [f.instruction.kind for f in found] == ["schedule"]
    params = found[0].instruction.params
    assert (params["interval_days"], params["count"], params["unit"]) == (days, count, unit)


@pytest.mark.parametrize(
    ("count", "unit", "expected"),
    [("seventeen", "days", (17, 17, "day")), ("twenty-one", "day", (21, 21, "day")),
     ("4 to 6", "weeks", (42, 6, "week")), ("two to three", "weeks", (21, 3, "week")),
     ("one and a half", "months", (45, 1.5, "month")), ("a", "week", (7, 1, "week"))],
)
def test_interval_days(count: str, unit: str, expected: tuple[int, float, str]) -> None:
    assert interval_days(count, unit) == expected


TASK_TEXT = [
    ("book a follow-up in seventeen days", 17),
    ("book a follow-up in twenty-one days", 21),
    ("follow up in eleven weeks", 77),
    ("follow up in seven days", 7),
    ("follow up in nine months", 270),
    ("follow up in two and a half weeks", 18),
    ("follow up in 3 months", 90),
    ("call the patient", None),
]


@pytest.mark.parametrize(("text", "days"), TASK_TEXT)
def test_task_interval_from_the_instruction_text(text: str, days: int | None) -> None:
    """The task list's fallback read only one..twelve, without seven, nine or eleven."""
    assert _interval_days({}, text) == days


NORMALIZED = [
    ("follow up in seventeen days", "Follow up in 17 days"),
    ("follow up in twenty-one days", "Follow up in 21 days"),
    ("seventeen milligrams", "17 mg"),
    ("ninety nine percent", "99%"),
]


@pytest.mark.parametrize(("spoken", "expected"), NORMALIZED)
def test_normalizer_reads_the_same_table(spoken: str, expected: str,
                                         settings: Settings) -> None:
    assert normalize_text(spoken, settings).text == expected


def test_normalized_text_still_yields_the_instruction(settings: Settings) -> None:
    """The pipeline finds instructions in normalised text: spoken and written agree."""
    text = normalize_text("Please schedule follow-up in seventeen days period", settings).text
    found = find_instructions(text)
    assert [(f.instruction.kind, f.instruction.params["interval_days"]) for f in found] == [
        ("schedule", 17)
    ]
