"""Secretary instructions: parsed into kind + params and lifted out of the document body."""

from __future__ import annotations

import pytest

from pipeline.core.records import DictationMeta, Note
from pipeline.documents.sections import structure
from pipeline.language.instructions import find_instructions, parse_sentence, split_sentences

CASES = [
    ("Please copy Dr. Patel at Riverside Cardiology.", "copy",
     {"recipient": "Dr. Patel", "organization": "Riverside Cardiology"}, True),
    ("cc Dr. Lee.", "copy", {"recipient": "Dr. Lee"}, True),
    ("Send a copy of this letter to Doctor Brown.", "copy", {"recipient": "Dr. Brown"}, True),
    ("Schedule follow-up in two weeks.", "schedule",
     {"interval_days": 14, "count": 2, "unit": "week"}, True),
    ("Follow up in 6 weeks.", "schedule", {"interval_days": 42, "count": 6, "unit": "week"}, True),
    ("Please book a return visit in three months.", "schedule",
     {"interval_days": 90, "count": 3, "unit": "month"}, True),
    ("Return to clinic in 4 to 6 weeks.", "schedule",
     {"interval_days": 42, "count": 6, "unit": "week"}, True),
    ("Follow-up with Dr. Patel in 10 days.", "schedule",
     {"interval_days": 10, "count": 10, "unit": "day", "with": "Dr. Patel"}, True),
    ("Order an MRI of the left knee.", "order", {"test": "MRI", "body_part": "left knee"}, True),
    ("Please schedule a CT scan of the abdomen.", "order",
     {"test": "CT scan", "body_part": "abdomen"}, True),
    ("Order a lipid panel.", "order", {"test": "lipid panel"}, True),
    ("Refer to endocrinology.", "refer", {"specialty": "endocrinology"}, True),
    ("Please refer him to Dr. Lee in cardiology.", "refer",
     {"recipient": "Dr. Lee", "specialty": "cardiology"}, True),
    ("Refer to physical therapy for quadriceps strengthening.", "refer",
     {"specialty": "physical therapy"}, True),
    ("Please call the patient with the results.", "other", {}, True),
    ("Send a letter to his primary care physician Doctor Moreno.", "other",
     {"recipient": "Dr. Moreno"}, True),
    # statements in the clinical plan: instruction made, text stays in the document
    ("We will see her back in three months.", "schedule",
     {"interval_days": 90, "count": 3, "unit": "month", "in_body": True}, False),
    ("I will refer her to rheumatology.", "refer",
     {"specialty": "rheumatology", "in_body": True}, False),
    # issue #14: every spoken count, from the one table in pipeline.language.spoken_numbers
    ("Schedule follow-up in seventeen days.", "schedule",
     {"interval_days": 17, "count": 17, "unit": "day"}, True),
    ("Follow up in twenty-one days.", "schedule",
     {"interval_days": 21, "count": 21, "unit": "day"}, True),
    ("Please book a return visit in two and a half weeks.", "schedule",
     {"interval_days": 18, "count": 2.5, "unit": "week"}, True),
    ("We will see him back in two to three weeks.", "schedule",
     {"interval_days": 21, "count": 3, "unit": "week", "in_body": True}, False),
]


@pytest.mark.parametrize(("sentence", "kind", "params", "removed"), CASES)
def test_instruction_table(sentence: str, kind: str, params: dict, removed: bool) -> None:
    parsed = parse_sentence(sentence)
    assert parsed is not None
    instruction, remove = parsed
    assert (instruction.kind, instruction.params, remove) == (kind, params, removed)
    assert instruction.text == sentence


@pytest.mark.parametrize(
    "sentence",
    [
        "The patient tolerated the procedure well.",
        "Please do not hesitate to contact me with any questions.",
        "Continue metformin 1000 mg twice daily.",
        "Check TSH.",
        "The MRI of the left knee showed a meniscal tear.",
        "She was referred by her family doctor.",
        "",
    ],
)
def test_not_instructions(sentence: str) -> None:
    assert parse_sentence(sentence) is None


def test_split_sentences_keeps_abbreviations() -> None:
    text = "Please copy Dr. Patel at St. Mary's. Order an MRI.\nNext line"
    pieces = [text[a:b].strip() for a, b in split_sentences(text)]
    assert pieces == ["Please copy Dr. Patel at St. Mary's.", "Order an MRI.", "Next line"]


def test_find_instructions_spans() -> None:
    text = "Knee is better. Order an MRI of the left knee. Continue ibuprofen."
    found = find_instructions(text)
    assert len(found) == 1
    assert text[found[0].start:found[0].end].strip() == "Order an MRI of the left knee."


def test_structure_lifts_instructions_out_of_the_body(settings) -> None:
    text = ("ASSESSMENT: Knee sprain.\nPLAN: Continue ibuprofen. Order an MRI of the left knee. "
            "Schedule follow-up in two weeks.\nPlease copy Dr. Patel at Riverside Cardiology. "
            "Refer to physical therapy.")
    doc = structure(Note(text=text), DictationMeta(document_type="progress_note"), settings)
    body = " ".join(s.text for s in doc.sections)
    assert "MRI" not in body and "Dr. Patel" not in body and "two weeks" not in body
    assert "physical therapy" not in body
    assert "Continue ibuprofen." in body
    assert [i.kind for i in doc.instructions] == ["order", "schedule", "copy", "refer"]


def test_office_passage_every_sentence_is_an_instruction(settings) -> None:
    text = ("BRIEF PROGRESS NOTE: Knee swelling is settling.\n\nInstructions for the office: "
            "please schedule follow up in two weeks. Order an MRI of the left knee. "
            "Pull the old x-rays for the chart.")
    doc = structure(Note(text=text), DictationMeta(document_type="progress_note"), settings)
    assert [s.text for s in doc.sections] == ["Knee swelling is settling."]
    kinds = [i.kind for i in doc.instructions]
    assert kinds == ["schedule", "order", "other"]


def test_plan_statement_that_is_the_whole_section_stays(settings) -> None:
    """Lifting the only sentence of FOLLOW-UP would leave a falsely empty section."""
    text = "HOSPITAL COURSE: Uneventful.\nFOLLOW-UP: Follow up in one week."
    doc = structure(Note(text=text), DictationMeta(document_type="discharge_summary"), settings)
    by_key = {s.key: s.text for s in doc.sections}
    assert by_key["follow_up"] == "Follow up in one week."
    assert doc.instructions[0].kind == "schedule"
    assert doc.instructions[0].params["interval_days"] == 7


def test_copy_to_several_recipients_gives_one_instruction_each(settings) -> None:
    text = "IMPRESSION: Stable.\nPlease send a copy to Dr. Lee and Dr. Brown at Mercy Hospital."
    doc = structure(Note(text=text), DictationMeta(document_type="progress_note"), settings)
    assert [(i.kind, i.params) for i in doc.instructions] == [
        ("copy", {"recipient": "Dr. Lee"}),
        ("copy", {"recipient": "Dr. Brown", "organization": "Mercy Hospital"}),
    ]
    assert [s.text for s in doc.sections] == ["Stable."]


def test_compound_request_gives_one_instruction_per_clause() -> None:
    found = find_instructions("Please book the fine needle aspiration and copy the letter to "
                              "Dr. Moreno.")
    assert [(f.instruction.kind, f.instruction.params) for f in found] == [
        ("order", {"test": "fine needle aspiration"}),
        ("copy", {"recipient": "Dr. Moreno"}),
    ]
    assert all(f.remove for f in found)


def test_requests_after_the_closing_of_a_letter_are_kept(settings) -> None:
    """Whisper runs "Sincerely, Dr. Shah, endocrinology. Please book ..." together."""
    text = ("Dear Dr. Moreno,\n\nIMPRESSION: Thyroiditis.\n\nRECOMMENDATIONS: Levothyroxine."
            "\n\nSincerely Dr. Shah endocrinology. Please book the fine needle aspiration.")
    doc = structure(Note(text=text), DictationMeta(document_type="consult_letter"), settings)
    assert [i.kind for i in doc.instructions] == ["order"]
    assert "Sincerely" not in " ".join(s.text for s in doc.sections)
