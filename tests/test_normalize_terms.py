"""The spaCy term corrector: misheard medical words repaired, ordinary English left alone."""

from __future__ import annotations

import pytest

from pipeline.core.records import Segment, Transcript, Word
from pipeline.core.settings import Settings
from pipeline.language.normalize import normalize, normalize_text
from pipeline.language.normalize.terms import best_candidate, describe_pipeline
from pipeline.language.vocab import get_index

REPAIRS = [
    ("acute cholisestitis", "operative_report", "Acute cholecystitis"),
    ("the trucker was placed under direct vision", "operative_report",
     "The trocar was placed under direct vision"),
    ("three truckers were placed", "operative_report", "Three trocars were placed"),
    ("a various needle was inserted at the umbilicus", "operative_report",
     "A Veress needle was inserted at the umbilicus"),
    ("the fascia was closed with four oh crill", "operative_report",
     "The fascia was closed with 4-0 Vicryl"),
    ("pneumo peritoneum was established", "operative_report", "Pneumoperitoneum was established"),
    ("the abdomen was prepped and raped", "operative_report",
     "The abdomen was prepped and draped"),
    ("retracted sefalad", "operative_report", "Retracted cephalad"),
    ("electro cautery was used", "operative_report", "Electrocautery was used"),
    ("he mostasis was obtained", "operative_report", "Hemostasis was obtained"),
]

PLAIN_ENGLISH = (
    "Yesterday we drove to the coast with our friends. The weather was mild and the trucker "
    "at the gas station told us about a various set of roads that were closed for repairs. "
    "We stopped for lunch, walked along the beach for a period of time and watched the boats. "
    "In the evening my sister cooked dinner while the children played cards in the garden. "
    "Nobody wanted to leave, so we stayed another night and drove home early on Sunday."
)


@pytest.mark.parametrize(("spoken", "doc_type", "expected"), REPAIRS)
def test_misheard_term_is_repaired(spoken: str, doc_type: str, expected: str,
                                   settings: Settings) -> None:
    note = normalize_text(spoken, settings, document_type=doc_type)
    assert note.text == expected
    assert any(c.kind == "term" for c in note.corrections)


def test_term_repairs_record_original_score_and_position(settings: Settings) -> None:
    note = normalize_text("acute cholisestitis", settings)
    (c,) = [c for c in note.corrections if c.kind == "term"]
    assert c.original == "cholisestitis" and c.replacement == "cholecystitis"
    assert note.text[c.start : c.end] == "cholecystitis"
    assert 0.6 <= c.score <= 1.0


def test_plain_english_paragraph_gets_no_term_corrections(settings: Settings) -> None:
    """The corrector must not damage ordinary English ("trucker" outside surgery, "various")."""
    note = normalize_text(PLAIN_ENGLISH, settings)
    assert [c for c in note.corrections if c.kind == "term"] == []
    assert "trucker" in note.text and "various" in note.text


def test_trucker_outside_a_surgical_dictation_is_left_alone(settings: Settings) -> None:
    note = normalize_text("he works as a trucker and smokes", settings,
                          document_type="progress_note")
    assert note.text == "He works as a trucker and smokes"


@pytest.mark.parametrize("word", ["left", "right", "bilateral"])
def test_laterality_is_never_corrected(word: str, settings: Settings) -> None:
    note = normalize_text(f"the {word} trocar site was closed", settings,
                          document_type="operative_report")
    assert word in note.text
    assert not [c for c in note.corrections if c.kind == "term"]


def _transcript(words: list[tuple[str, float]]) -> Transcript:
    ws = [Word(" " + w, i * 0.5, i * 0.5 + 0.4, p) for i, (w, p) in enumerate(words)]
    seg = Segment(0, 0.0, len(ws) * 0.5, "".join(w.word for w in ws), ws)
    return Transcript("t1", "tiny.en", "en", len(ws) * 0.5, [seg])


def test_repair_carries_the_audio_time_of_the_original_words(settings: Settings) -> None:
    tr = _transcript([("The", 0.9), ("various", 0.4), ("needle", 0.9), ("was", 0.9),
                      ("inserted.", 0.9)])
    note = normalize(tr, settings, document_type="operative_report")
    assert note.text == "The Veress needle was inserted."
    (c,) = [c for c in note.corrections if c.kind == "term"]
    assert (c.source_start_s, c.source_end_s) == (0.5, 1.4)


def test_unsure_laterality_goes_to_review_and_is_kept(settings: Settings) -> None:
    tr = _transcript([("The", 0.9), ("left", 0.2), ("knee.", 0.9)])
    note = normalize(tr, settings)
    assert note.text == "The left knee."
    assert [i["kind"] for i in note.review_items] == ["laterality"]
    assert note.review_items[0]["source_start_s"] == 0.5


def test_unsure_number_goes_to_review(settings: Settings) -> None:
    tr = _transcript([("Give", 0.9), ("25", 0.3), ("milligrams.", 0.9)])
    note = normalize(tr, settings)
    assert note.text == "Give 25 mg."
    assert [i["kind"] for i in note.review_items] == ["number"]


def test_physician_custom_word_is_a_correction_target(settings: Settings) -> None:
    from pipeline.language.vocab import add_physician_terms

    add_physician_terms(settings, "dr-smith", ["Zylastrin"])
    note = normalize_text("start zilastrin today", settings, physician_id="dr-smith")
    assert note.text == "Start Zylastrin today"
    plain = normalize_text("start zilastrin today", settings, physician_id="dr-patel")
    assert plain.text == "Start zilastrin today"


def test_best_candidate_uses_phonetic_key(settings: Settings) -> None:
    index = get_index(settings)
    cand = best_candidate(index, "cholisestitis")
    assert cand is not None and cand[0] == "cholecystitis"
    assert best_candidate(index, "yesterday") is None


def test_spacy_pipeline_uses_scispacy_parts(settings: Settings) -> None:
    names = describe_pipeline(str(settings.vocab_dir.resolve()))
    assert names == ["abbreviation_detector", "medical_term_corrector"]


def test_misheard_everyday_word_is_not_turned_into_a_rarer_term(settings: Settings) -> None:
    """ "sympatomatic" sounds like "symptomatic" (everyday) more than "sympathomimetic"."""
    note = normalize_text("sympatomatic gallstones", settings, document_type="operative_report")
    assert note.text == "Sympatomatic gallstones"
    assert not [c for c in note.corrections if c.kind == "term"]


def test_repairs_from_the_big_lists_go_to_review(settings: Settings) -> None:
    # "osteomyelitis" is in no curated list of an operative report: a big-list repair
    note = normalize_text("the wound showed osteomylitis of the bone", settings,
                          document_type="operative_report")
    assert "osteomyelitis" in note.text
    assert [i["original"] for i in note.review_items if i["kind"] == "term"] == ["osteomylitis"]


@pytest.mark.parametrize(
    "doc_type",
    [None, "operative_report", "progress_note", "consult_letter", "discharge_summary",
     "radiology_report", "referral_letter"],
)
def test_plain_english_with_unsure_words_gets_no_term_corrections(
        doc_type: str | None, settings: Settings) -> None:
    """Even when Whisper was unsure of every word and the document is medical, ordinary
    English is not turned into terms (the sound-alike repair included)."""
    sentences = [
        "My brother drove the truck to the market on various days of the week.",
        "She listened to the music and went up to the top of a hill at noon.",
        "The children played near the river bank while their parents read books.",
        "We bought more than ten apples and a loaf of bread for the picnic.",
        "He said the weather was fine and the roads were clear all the way home.",
    ]
    words = [(w, 0.3) for s in sentences for w in s.split()]
    note = normalize(_transcript(words), settings, document_type=doc_type)
    assert [c for c in note.corrections if c.kind == "term"] == []


def test_a_compound_word_is_not_cut_down_to_the_term_it_holds() -> None:
    """ "hyperenhancement" is not a vocabulary word but holds "enhancement": it is a
    compound, not a mishearing, and is left alone (it became "enhancement", dropping the
    finding)."""
    from pipeline.core.settings import Settings
    from pipeline.language.normalize import normalize_text

    note = normalize_text("wall thickening and hyperenhancement period", Settings(),
                          document_type="radiology_report")
    assert "hyperenhancement" in note.text, note.text
