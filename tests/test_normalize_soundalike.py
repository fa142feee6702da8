"""Context-restricted sound-alike repair: misheard terms across word boundaries, English kept."""

from __future__ import annotations

import re

import pytest

from pipeline.core.records import Segment, Transcript, Word
from pipeline.core.settings import Settings
from pipeline.language.normalize import normalize, normalize_text
from pipeline.language.normalize.soundalike import Candidate, _candidate, window_score


def _transcript(words: list[tuple[str, float]]) -> Transcript:
    ws = [Word(" " + w, i * 0.5, i * 0.5 + 0.4, p) for i, (w, p) in enumerate(words)]
    seg = Segment(0, 0.0, len(ws) * 0.5, "".join(w.word for w in ws), ws)
    return Transcript("t1", "tiny.en", "en", len(ws) * 0.5, [seg])


def _spoken(text: str, unsure: set[str] = frozenset(), prob: float = 0.3) -> Transcript:
    """Words with Whisper's confidence: those in ``unsure`` low, the rest high."""
    return _transcript([(w, prob if w.strip(".,").lower() in unsure else 0.95)
                        for w in text.split()])


# (Whisper's words, the unsure ones, document type, expected text)
REPAIRS = [
    # a common drug right before a dose, from words that sound alike
    ("continue roast uvastatin 10 milligrams daily.", {"roast", "uvastatin"},
     "progress_note", "Continue rosuvastatin 10 mg daily."),
    ("we gave seft tree axone 1 gram daily.", {"seft", "tree", "axone"},
     "discharge_summary", "We gave ceftriaxone 1 g daily."),
    # the dose's number was lost, its unit still marks the drug's place
    ("she was treated with septryoxone gram intravenously daily.", {"septryoxone"},
     "discharge_summary", "She was treated with ceftriaxone gram intravenously daily."),
    ("she takes metro nida zole 500 milligrams twice daily.", {"metro", "nida", "zole"},
     "progress_note", "She takes metronidazole 500 mg twice daily."),
    # function words inside the misheard stretch, the article glued to the term
    ("he is taking meth for min 1000 milligrams daily.", {"meth", "min"}, "progress_note",
     "He is taking metformin 1000 mg daily."),
    ("start a moxy sillin 500 milligrams three times daily.", {"a", "moxy", "sillin"},
     "discharge_summary", "Start amoxicillin 500 mg 3 times daily."),
    # a local anaesthetic after its strength
    ("10 milliliters of 1 percent lido cane was injected.", {"lido", "cane"},
     "operative_report", "10 mL of 1% lidocaine was injected."),
    # a specialty term of the document type
    ("a well padded tranecate was applied.", {"tranecate"}, "operative_report",
     "A well padded tourniquet was applied."),
    ("the medial femoral condel was intact.", {"condel"}, "operative_report",
     "The medial femoral condyle was intact."),
    ("she had tachypnean on arrival.", {"tachypnean"}, "discharge_summary",
     "She had tachypnea on arrival."),
    ("he has paroxies mal atrial fibrillation.", {"paroxies", "mal"}, "progress_note",
     "He has paroxysmal atrial fibrillation."),
    # Whisper dropped the unstressed first vowel: ibuprofen, not bupropion (an antidepressant)
    ("take buprofen 600 milligrams every 8 hours as needed.", {"buprofen"}, "referral_letter",
     "Take ibuprofen 600 mg every 8 hours as needed."),
]


@pytest.mark.parametrize(("words", "unsure", "doc_type", "expected"), REPAIRS)
def test_sound_alike_repairs(settings: Settings, words: str, unsure: set[str],
                             doc_type: str, expected: str) -> None:
    note = normalize(_spoken(words, unsure), settings, document_type=doc_type)
    assert note.text == expected
    terms = [c for c in note.corrections if c.kind == "term"]
    assert terms, "every repair is recorded as a Correction"
    assert all(c.original and c.replacement for c in terms)


# Ordinary speech that must stay as it is, even where Whisper was unsure of it.
KEPT = [
    ("she takes more than 10 milligrams of it.", {"more", "than"}, "progress_note"),
    ("he ran more than 10 miles today.", {"more"}, "progress_note"),
    ("medication overuse may be contributing.", {"may"}, "referral_letter"),
    ("the pain is unilaterally located.", {"unilaterally"}, "referral_letter"),
    ("propranolol was tried without relief.", {"was"}, "referral_letter"),
    ("the skin was closed with a horizontal mattress suture.", {"horizontal"},
     "operative_report"),
    ("we went to the river bank and had a picnic with the children.",
     {"river", "bank", "picnic"}, "operative_report"),
    ("take the master key to the office at noon.", {"master", "key"}, "progress_note"),
    ("the left knee was injected with 40 milligrams of it.", {"left", "knee"},
     "operative_report"),
    ("no fever, no chills, and no cough.", {"fever", "chills"}, "discharge_summary"),
    ("give a double dose of 5 milligrams.", {"a", "double", "dose"}, "progress_note"),
    ("she was a teacher for 20 years.", {"a", "teacher"}, "progress_note"),
    # a bare mass unit marks a dose, but "gram stain" is a test, "grams" of speech stay
    ("the sputum gram stain showed gram positive cocci.", {"sputum", "showed"},
     "discharge_summary"),
    ("she lost a few grams of weight.", {"a", "few"}, "progress_note"),
    # a real word the frequency list lacks is not a term less its first vowel ("adrenal")
    ("no extraluminal gas and no drainable fluid collection.", {"drainable"},
     "radiology_report"),
    # two everyday words that spell a short term are speech (the urology consult said it)
    ("if the stone has not passed, or if he develops fever, I will proceed.", {"or"},
     "consult_letter"),
    ("if the stone has not passed, or if he develops fever, I will proceed.", set(),
     "operative_report"),
]


@pytest.mark.parametrize(("words", "unsure", "doc_type"), KEPT)
def test_ordinary_speech_is_kept(settings: Settings, words: str, unsure: set[str],
                                 doc_type: str) -> None:
    note = normalize(_spoken(words, unsure), settings, document_type=doc_type)
    assert not [c for c in note.corrections if c.kind == "term"], note.text


def test_no_document_type_no_context_repairs(settings: Settings) -> None:
    """Without a document type or physician words nothing says the speech is medical."""
    note = normalize(_spoken("continue roast uvastatin 10 milligrams daily.",
                             {"roast", "uvastatin"}), settings)
    assert not [c for c in note.corrections if c.original == "roast uvastatin"]


def test_plain_text_without_probabilities_is_not_guessed_into_drugs(settings: Settings) -> None:
    # plain text carries no doubt: English words are never turned into a drug
    note = normalize_text("start at or master in 40 milligrams daily", settings,
                          document_type="progress_note")
    assert not [c for c in note.corrections if c.kind == "term"]


def test_window_score_rules() -> None:
    cand: Candidate = _candidate("lidocaine")
    assert window_score("lidocane", cand) > 80
    assert window_score("nidocaine", cand) == 0.0  # the first sound must agree
    assert window_score("lidocaines", cand) == 0.0  # an ending, not a mishearing
    assert window_score("li", cand) == 0.0  # far too short
    two = _candidate("medication overuse headache")
    assert window_score("medicationoveruse", two) == 0.0  # a dropped word is no mishearing


def test_repair_keeps_audio_time_and_goes_to_review_when_from_english(
        settings: Settings) -> None:
    note = normalize(_spoken("start listen a pril 20 milligrams daily.",
                             {"listen", "a", "pril"}), settings, document_type="progress_note")
    assert "lisinopril 20 mg" in note.text
    (c,) = [c for c in note.corrections if c.kind == "term"]
    assert c.original == "listen a pril"
    assert (c.source_start_s, c.source_end_s) == (0.5, 1.9)


def test_two_medical_words_that_are_one_compound_are_joined(settings: Settings) -> None:
    note = normalize(_spoken("the patella femoral joint was normal.", set()), settings,
                     document_type="operative_report")
    assert note.text == "The patellofemoral joint was normal."


def test_a_specialty_the_text_names_joins_the_context(settings: Settings) -> None:
    from pipeline.language.normalize.soundalike import context_candidates
    from pipeline.language.vocab import get_index

    index = get_index(settings)
    plain = {c.display for c in context_candidates(index, "referral_letter", [])}
    named = {c.display for c in context_candidates(index, "referral_letter", [],
                                                   {"neurology"})}
    assert "topiramate" not in plain and "topiramate" in named


def test_mined_specialty_terms_repair_a_non_english_word_only() -> None:
    """Terms mined from real reports of the specialty the text names (urology) repair words
    that are not English at all ("sistoskopy", "sisto scopy" -> cystoscopy; without them the
    second became "sisto syncope"); ordinary words around them are left alone."""
    from pipeline.core.settings import Settings
    from pipeline.language.normalize import normalize_text

    settings = Settings()
    for text in ("Referred to urology period we performed a sisto scopy period",
                 "Referred to urology period the patient underwent sistoskopy and stent "
                 "placement period"):
        note = normalize_text(text, settings, document_type="consult_letter")
        assert "cystoscopy" in note.text, note.text
        assert "syncope" not in note.text
    assert "stent placement" in note.text


def test_every_drug_repair_goes_to_review(settings: Settings) -> None:
    """A wrong drug is a patient-safety error: a drug name made from words that sound alike
    is always listed for review, even from a word that is not English ("metapral")."""
    note = normalize(_spoken("start metapral 25 milligrams twice daily.", {"metapral"}),
                     settings, document_type="progress_note")
    assert "metoprolol 25 mg" in note.text
    items = [r for r in note.review_items if r.get("original") == "metapral"]
    assert items and "Drug name" in items[0]["message"], note.review_items
    # a non-drug term repaired from a non-English word is recorded but not listed
    note = normalize(_spoken("a well padded tranecate was applied.", {"tranecate"}),
                     settings, document_type="operative_report")
    assert "tourniquet" in note.text
    assert not [r for r in note.review_items if r.get("original") == "tranecate"]


def test_window_score_allows_a_dropped_first_vowel_only_at_the_same_length() -> None:
    ibu = _candidate("ibuprofen")
    assert 85 <= window_score("buprofen", ibu) < 100
    assert window_score("drainable", _candidate("adrenal")) == 0.0


# --- options and the guards' log (issue #14) ----------------------------------------------


def test_thresholds_come_from_the_options_passed_down(settings: Settings) -> None:
    """``normalize(..., options=...)`` reaches the sound-alike repair: a dose threshold above
    every score turns the repair off; the defaults keep it."""
    from pipeline.language.normalize import LanguageOptions, SoundalikeOptions

    words = _spoken("continue roast uvastatin 10 milligrams daily.", {"roast", "uvastatin"})
    default = normalize(words, settings, document_type="progress_note")
    assert default.text == "Continue rosuvastatin 10 mg daily."
    strict = LanguageOptions(soundalike=SoundalikeOptions(dose_min=101.0, context_min=101.0,
                                                          wide_min=101.0, mined_min=101.0))
    note = normalize(words, settings, document_type="progress_note", options=strict)
    assert note.text.startswith("Continue roast ")  # the two-word window was not repaired


def test_guard_decisions_are_logged_with_numbers_not_words(settings: Settings,
                                                           caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    """Each repair and each vetoed match is logged at DEBUG with token positions and scores;
    no word of the transcript appears in the log."""
    text = "continue roast uvastatin 10 milligrams daily. medication overuse may recur."
    with caplog.at_level("DEBUG", logger="pipeline.language.normalize"):
        normalize(_spoken(text, {"roast", "uvastatin", "overuse", "may"}), settings,
                  document_type="progress_note")
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("soundalike repair tokens=1-3 words=2 score=") for m in lines)
    words = {w.strip(".,").lower() for w in text.split()} | {"rosuvastatin"}
    logged = " ".join(lines).lower()
    leaked = {w for w in words if len(w) > 3 and re.search(rf"\b{w}\b", logged)}
    assert leaked == set()
