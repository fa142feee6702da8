"""normalize()/normalize_text()/prompt_terms(): the public surface, hostile and empty input."""

from __future__ import annotations

import pytest

from pipeline.core.records import Note, Segment, Transcript, Word
from pipeline.core.settings import PROJECT_ROOT, Settings
from pipeline.language import normalize
from pipeline.language.normalize import Compose, normalize_text, prompt_terms
from pipeline.language.normalize.prompt import MAX_PROMPT_CHARS, MAX_PROMPT_TERMS
from pipeline.language.vocab import add_physician_terms

DOCUMENT_TYPES = ["operative_report", "consult_letter", "progress_note", "discharge_summary",
                  "radiology_report", "referral_letter"]


def test_empty_text_gives_an_empty_note(settings: Settings) -> None:
    note = normalize_text("", settings)
    assert isinstance(note, Note)
    assert (note.text, note.corrections, note.review_items) == ("", [], [])


def test_empty_transcript_gives_an_empty_note(settings: Settings) -> None:
    tr = Transcript("d1", "tiny.en", "en", 3.0, [], flags=["no_speech"])
    note = normalize.normalize(tr, settings)
    assert note.text == "" and note.flags == ["no_speech"]


@pytest.mark.parametrize(
    "hostile",
    ["<script>alert('x')</script> period", "A & B comma C < D > E period", "'; DROP TABLE x;--",
     "\x00\x01 weird \u202e text", "period period comma colon new paragraph", "scratch that",
     "correction", "all caps", "end caps", "over over over", "point point", "L L L four",
     "😀 emoji period"],
)
def test_hostile_text_is_processed_without_error(hostile: str, settings: Settings) -> None:
    note = normalize_text(hostile, settings)
    assert isinstance(note.text, str)
    for c in note.corrections:
        assert 0 <= c.start <= c.end <= len(note.text)


def test_markup_is_kept_as_text_not_interpreted(settings: Settings) -> None:
    note = normalize_text("<script>alert(1)</script> & more", settings)
    assert "<script>alert(1)</script>" in note.text and "&" in note.text


@pytest.mark.timeout(120)  # runaway behaviour fails here with its stack (pytest-timeout)
def test_very_long_input_is_processed_and_flagged(settings: Settings) -> None:
    text = "the wound was closed period " * 8_000  # 224,000 characters
    note = normalize_text(text, settings)
    assert "text_too_long" in note.flags
    assert note.text.startswith("The wound was closed. The wound was closed.")


def test_100k_characters_get_the_full_chain(settings: Settings) -> None:
    text = ("the patient received twenty five milligrams period " * 2000)[:100_000]
    note = normalize_text(text, settings)
    assert "text_too_long" not in note.flags
    assert note.text.startswith("The patient received 25 mg.")


def test_corrections_point_into_the_final_text(settings: Settings) -> None:
    """Every correction's start/end locate its replacement in Note.text (reviewer undo)."""
    ref = (PROJECT_ROOT / "samples" / "synthetic_medical" / "op_lap_chole.ref.txt")
    text = ref.read_text() if ref.exists() else (
        "Procedure colon laparoscopic cholecystectomy period new paragraph.")
    note = normalize_text(text, settings, document_type="operative_report")
    assert note.corrections
    for c in note.corrections:
        if c.replacement.strip():
            assert note.text[c.start : c.end] == c.replacement, c


def test_transcript_words_keep_their_audio_times(settings: Settings) -> None:
    words = [Word(" Twenty", 1.0, 1.3, 0.9), Word(" five", 1.3, 1.6, 0.9),
             Word(" milligrams", 1.6, 2.2, 0.9), Word(" period.", 2.3, 2.7, 0.9)]
    tr = Transcript("d1", "tiny.en", "en", 3.0,
                    [Segment(0, 1.0, 2.7, " Twenty five milligrams period.", words)])
    note = normalize.normalize(tr, settings)
    assert note.text == "25 mg."
    number = next(c for c in note.corrections if c.kind == "number")
    assert (number.source_start_s, number.source_end_s) == (1.0, 2.2)


def test_transcript_without_word_timings_uses_segment_text(settings: Settings) -> None:
    tr = Transcript("d1", "tiny.en", "en", 3.0,
                    [Segment(0, 0.0, 3.0, " Blood pressure one twenty over eighty period.")])
    assert normalize.normalize(tr, settings).text == "Blood pressure 120/80."


def test_presets_are_composed_transforms() -> None:
    assert isinstance(normalize.DICTATION, Compose)
    names = [type(t).__name__ for t in normalize.DICTATION.transforms]
    assert names[0] == "SpokenCommands" and "TermCorrection" in names and names[-1] == "Casing"
    for t in normalize.DICTATION.transforms:
        assert type(t).__doc__, f"{type(t).__name__} needs a docstring saying its one job"


def test_custom_chain(settings: Settings) -> None:
    note = normalize_text("twenty five milligrams period", settings, chain=normalize.COMMANDS_ONLY)
    assert note.text == "Twenty five milligrams."


@pytest.mark.parametrize("doc_type", DOCUMENT_TYPES)
def test_prompt_terms_are_short(doc_type: str | None, settings: Settings) -> None:
    terms = prompt_terms(settings, document_type=doc_type)
    assert terms.hotwords is not None
    assert len(terms.hotwords) <= MAX_PROMPT_CHARS
    assert 5 <= len(terms.terms) <= MAX_PROMPT_TERMS
    assert terms.initial_prompt is None
    # written the way a physician dictates, so Whisper keeps spoken commands as words
    assert " comma " in terms.hotwords and terms.hotwords.endswith(" period.")


@pytest.mark.parametrize("doc_type", [None, "unknown_type"])
def test_no_prompt_when_nothing_says_what_is_dictated(doc_type: str | None,
                                                      settings: Settings) -> None:
    terms = prompt_terms(settings, document_type=doc_type)
    assert (terms.initial_prompt, terms.hotwords, terms.terms) == (None, None, [])


def test_physician_words_alone_make_a_prompt(settings: Settings) -> None:
    add_physician_terms(settings, "dr-smith", ["Exparel"])
    terms = prompt_terms(settings, physician_id="dr-smith")
    assert terms.terms[0] == "Exparel" and terms.hotwords is not None


def test_prompt_terms_follow_the_document_type(settings: Settings) -> None:
    op = prompt_terms(settings, document_type="operative_report")
    rad = prompt_terms(settings, document_type="radiology_report")
    assert "trocar" in op.terms and "trocar" not in rad.terms
    assert op.hotwords.startswith("Operative report new paragraph. ")
    assert rad.hotwords.startswith("Radiology report new paragraph. ")


def test_prompt_terms_put_the_physicians_words_first(settings: Settings) -> None:
    add_physician_terms(settings, "dr-smith", ["Exparel", "Dermabond"])
    terms = prompt_terms(settings, document_type="operative_report", physician_id="dr-smith")
    assert terms.terms[:2] == ["Exparel", "Dermabond"]
    other = prompt_terms(settings, document_type="operative_report", physician_id="dr-patel")
    assert "Exparel" not in other.terms


def test_warm_up_loads_everything_once(settings: Settings) -> None:
    """After ``warm_up`` a dictation loads nothing: the vocabulary index and the spaCy
    pipeline come from their caches (no cache miss while normalizing)."""
    from pipeline.language import vocab
    from pipeline.language.normalize.terms import get_nlp

    assert normalize.warm_up(settings) >= 0.0
    nlp_misses = get_nlp.cache_info().misses
    index_misses = vocab._cached_index.cache_info().misses
    normalize_text("twenty five milligrams period", settings)
    assert get_nlp.cache_info().misses == nlp_misses
    assert vocab._cached_index.cache_info().misses == index_misses


def test_language_options_default_to_the_measured_values() -> None:
    """Issue #14: the thresholds are fields of frozen options objects whose defaults are the
    values the README measured; every field documents itself."""
    import dataclasses

    from pipeline.language.normalize import LanguageOptions

    opts = LanguageOptions()
    assert (opts.soundalike.dose_min, opts.soundalike.context_min, opts.soundalike.wide_min,
            opts.terms.unsure_prob, opts.prompt.max_terms, opts.max_input_chars) == (
        70.0, 70.0, 84.0, 0.45, MAX_PROMPT_TERMS, normalize.MAX_INPUT_CHARS)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.soundalike.dose_min = 1.0  # type: ignore[misc]
    import inspect

    for group in [opts, *(getattr(opts, f.name) for f in dataclasses.fields(opts)
                          if dataclasses.is_dataclass(getattr(opts, f.name)))]:
        source = inspect.getsource(type(group))
        for field in dataclasses.fields(group):
            if dataclasses.is_dataclass(getattr(group, field.name)):
                continue  # a group, checked field by field
            # a docstring right after the field, naming where its value came from
            doc = source.split(f"    {field.name}: ", 1)[1].split('"""', 2)[1]
            assert any(k in doc for k in ("Measured", "Source", "Hand-set", "hand-set",
                                          "README")), (type(group).__name__, field.name)


def test_options_reach_the_review_and_prompt_steps(settings: Settings) -> None:
    from pipeline.language.normalize import LanguageOptions, PromptOptions, ReviewOptions

    words = [Word(" the", 0.0, 0.2, 0.99), Word(" left", 0.2, 0.4, 0.3),
             Word(" knee", 0.4, 0.6, 0.99)]
    tr = Transcript("d1", "tiny.en", "en", 1.0, [Segment(0, 0.0, 0.6, "the left knee", words)])
    assert [r["kind"] for r in normalize.normalize(tr, settings).review_items] == ["laterality"]
    never = LanguageOptions(review=ReviewOptions(unsure_prob=0.0))
    assert normalize.normalize(tr, settings, options=never).review_items == []
    short = prompt_terms(settings, document_type="operative_report",
                         options=PromptOptions(max_terms=5))
    assert len(short.terms) == 5
