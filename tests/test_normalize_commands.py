"""Spoken dictation commands: table-driven (spoken -> expected), including the traps."""

from __future__ import annotations

import pytest

from pipeline.core.settings import Settings
from pipeline.language.normalize import normalize_text

COMMANDS = [
    ("the wound was closed period", "The wound was closed."),
    ("the wound was closed full stop", "The wound was closed."),
    ("after induction comma the abdomen was prepped", "After induction, the abdomen was prepped."
     .rstrip(".")),
    ("findings include colon distension", "Findings include colon distension"),
    ("allergies colon none period", "ALLERGIES: None."),
    ("list colon apples and pears", "List: apples and pears"),
    ("one semicolon two", "One; two"),
    ("one semi colon two", "One; two"),
    ("is he allergic question mark", "Is he allergic?"),
    ("stop exclamation point", "Stop!"),
    ("first line new line second line", "First line\nsecond line".replace("\ns", "\nS")),
    ("first line next line second line", "First line\nSecond line"),
    ("end of one new paragraph start of two", "End of one\n\nStart of two"),
    ("end of one next paragraph start of two", "End of one\n\nStart of two"),
    ("empagliflozin open paren jardiance close paren daily",
     "Empagliflozin (Jardiance) daily"),
    ("she said quote I feel fine unquote period", 'She said "I feel fine".'),
    ("she said open quote no close quote", 'She said "no"'),
    ("well hyphen healed scar", "Well-healed scar"),
    ("the result dash normal", "The result - normal"),
    ("and slash or", "And/or"),
    ("all caps do not resuscitate end caps period", "DO NOT RESUSCITATE."),
    ("preoperative diagnosis colon acute cholecystitis period",
     "PREOPERATIVE DIAGNOSIS: Acute cholecystitis."),
    ("history colon none period new paragraph estimated blood loss colon minimal period",
     "HISTORY: None.\n\nESTIMATED BLOOD LOSS: Minimal."),
    ("labs colon sodium normal period", "Labs: Sodium normal."),
    ("impression colon one period appendicitis period two period no abscess period",
     "IMPRESSION:\n1. Appendicitis.\n2. No abscess."),
    # corrections
    ("the skin was closed with nylon period it bled scratch that",
     "The skin was closed with nylon."),
    ("the skin was closed with nylon scratch that", ""),
    ("examined the left knee correction right knee period", "Examined the right knee."),
    ("gave twenty milligrams correction thirty of morphine period", "Gave 30 mg of morphine."),
]

TRAPS = [
    # ordinary speech that contains command words is left alone
    ("for the period of time she was well", "For the period of time she was well"),
    ("over a period of two days", "Over a period of 2 days"),
    ("her last menstrual period was in May", "Her last menstrual period was in May"),
    ("a comma shaped lesion", "A comma shaped lesion"),
    ("the sigmoid colon was mobilized", "The sigmoid colon was mobilized"),
    ("the colon was normal", "The colon was normal"),
    ("the next line of treatment", "The next line of treatment"),
    ("a quote from the insurer", "A quote from the insurer"),
    ("no correction was needed", "No correction was needed"),
]


@pytest.mark.parametrize(("spoken", "expected"), COMMANDS)
def test_spoken_command(spoken: str, expected: str, settings: Settings) -> None:
    assert normalize_text(spoken, settings).text == expected


@pytest.mark.parametrize(("spoken", "expected"), TRAPS)
def test_ordinary_speech_is_not_a_command(spoken: str, expected: str, settings: Settings) -> None:
    assert normalize_text(spoken, settings).text == expected


def test_whisper_punctuation_next_to_a_dictated_period_is_not_doubled(settings: Settings) -> None:
    """Whisper often writes "closed. Period." for a spoken period: one period remains."""
    note = normalize_text("The wound was closed. Period. The patient left.", settings)
    assert note.text == "The wound was closed. The patient left."


def test_whisper_capital_after_its_own_dropped_period_is_undone(settings: Settings) -> None:
    """With dictated commas/periods, Whisper's own sentence breaks go and so do their capitals."""
    note = normalize_text("The abdomen was prepped. And draped period", settings)
    assert note.text == "The abdomen was prepped and draped."


def test_without_dictated_punctuation_whisper_punctuation_is_kept(settings: Settings) -> None:
    note = normalize_text("The patient is well. She has no pain, no fever.", settings)
    assert note.text == "The patient is well. She has no pain, no fever."


def test_every_command_is_recorded_as_a_correction(settings: Settings) -> None:
    note = normalize_text("closed period new paragraph plan colon rest period", settings)
    kinds = [c.kind for c in note.corrections]
    assert kinds.count("command") == 3  # period, new paragraph, period
    assert "heading" in kinds
    for c in note.corrections:
        if c.replacement:
            assert note.text[c.start : c.end] == c.replacement


def test_scratch_that_is_recorded_with_the_deleted_words(settings: Settings) -> None:
    note = normalize_text("the patient is stable period she is unwell scratch that", settings)
    assert note.text == "The patient is stable."
    gone = [c for c in note.corrections if c.original.endswith("scratch that")]
    assert gone and "she is unwell" in gone[0].original and gone[0].replacement == ""


def test_correction_of_a_side_goes_to_review(settings: Settings) -> None:
    note = normalize_text("examined the left knee correction right knee period", settings)
    assert any(item["kind"] == "correction_command" for item in note.review_items)
