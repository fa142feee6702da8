"""Tuning thresholds of the medical-language stage, gathered the way faster-whisper gathers its
decoding thresholds in ``TranscriptionOptions``: frozen dataclasses with defaults.

``LanguageOptions`` composes one options object per transform family and travels on the
``TextState`` (``normalize(..., options=LanguageOptions(...))``); every field has a default, so
callers that pass nothing get the measured behaviour. Each field's docstring says what it
tunes and where its value came from: a style guide (AHDI Book of Style, the Joint Commission
"Do Not Use" list, ISMP), a measurement recorded in the README (section named), or "hand-set"
where no measurement was recorded. Scores are 0-100 (rapidfuzz ratios); Zipf values are
wordfreq's log10 frequency per billion words (7 for "the", 3 for words seen once per million).

>>> LanguageOptions().soundalike.dose_min
70.0
>>> from dataclasses import replace
>>> strict = replace(LanguageOptions(), soundalike=SoundalikeOptions(dose_min=80.0))
>>> strict.soundalike.dose_min, strict.terms.drug_min
(80.0, 88.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "SoundalikeOptions",
    "TermOptions",
    "NumberOptions",
    "CommandOptions",
    "PromptOptions",
    "ReviewOptions",
    "LearnedOptions",
    "LanguageOptions",
]


@dataclass(frozen=True)
class SoundalikeOptions:
    """Thresholds of ``SoundAlikeRepair`` (``soundalike.py``). A window's score is the mean of
    the spelling ratio and the phonetic-key ratio against a candidate term."""

    dose_min: float = 70.0
    """Lowest score for a common drug right before a dose ("listen up to 20 mg"). Measured:
    README "Medical language > Measured figures": lisinopril scored 58-64 there; 62 gained
    nothing on half A and produced "plavalin" -> Plavix, so 70 stayed."""
    context_min: float = 70.0
    """Lowest score for a specialty or physician term when a window word is not English.
    Measured: README "Medical language > Measured figures" (76 -> 70: tuned recall 0.629 ->
    0.635-0.645, held-out 0.330 -> 0.374, tiny.en)."""
    unsure_extra: float = 8.0
    """Added to ``context_min`` when the only evidence is Whisper's doubt about English words
    (a lone English word is never enough). Hand-set with the 76/82 pair of the first round
    (README "Medical language > What it does"); kept as an offset when 76 became 70."""
    mined_min: float = 80.0
    """Lowest score for a term mined from sample reports (long lists, so stricter). Measured:
    README "Specialty term lists mined from sample reports" (held-out recall 0.330 -> 0.374)."""
    wide_min: float = 84.0
    """Lowest score for any curated term or common drug outside the context lists. Hand-set:
    README "Medical language > What it does" (threshold 84)."""
    join_min: float = 88.0
    """Lowest spelling ratio for two words that are one medical word split apart ("super
    patellar" -> suprapatellar). Hand-set: README "Medical language > What it does"."""
    unsure_prob: float = 0.5
    """Whisper word probability below which a word counts as unsure (window evidence).
    Hand-set, the same cut as ``ReviewOptions.unsure_prob``."""
    doubt_prob: float = 0.6
    """Below it an English-only window has Whisper's doubt (dose and context tiers); at or
    above it a common edge word is what was said ("trucker was" is not "trocars"). Measured:
    README "Medical language > Guards" and "Measured figures" (the swallow guard)."""
    english_zipf: float = 2.5
    """Zipf below which a word is not ordinary English (about the 60,000 commonest words).
    Source: wordfreq's Zipf scale; README "Medical language > What it does"."""
    common_zipf: float = 4.0
    """Zipf at or above which a word is common ("was", "general"): never swallowed at a window
    edge, never joined into a short term. Measured: README "Measured figures" ("or if" had
    become ORIF)."""
    swallow_partial_max: float = 80.0
    """A sure common edge word whose partial ratio with the term is below this is not part of
    the term. Hand-set with the swallow guard (README "Measured figures")."""
    edge_min: float = 40.0
    """Lowest ratio between a window's first/last word and the start/end of the term, so a
    window never swallows a neighbour ("propranol was"). Hand-set: README "Guards"."""
    edge_long_min: float = 50.0
    """The same for the last word of a window of three or more words whose last two words are
    not inside the term. Hand-set: README "Guards"."""
    length_tolerance: float = 0.35
    """Largest length difference between heard words and the term, as a share of the term's
    length (at least ``length_slack`` letters). Hand-set: README "Guards" ("within 35%")."""
    length_slack: int = 3
    """Letters of length difference always allowed (short terms). Hand-set."""
    min_letters: int = 5
    """Windows with fewer letters are never repaired (too many neighbours). Hand-set."""
    max_window: int = 4
    """Most words joined into one window. Hand-set: README "What it does" (1-4 words)."""
    vowel_drop_penalty: float = 5.0
    """Taken off a match made without the term's first vowel ("buprofen" -> ibuprofen).
    Measured: README "Measured figures" (precision round: "drainable" stays)."""


@dataclass(frozen=True)
class TermOptions:
    """Thresholds of the spaCy ``medical_term_corrector`` (``terms.py``, ``best_candidate``)."""

    key_match_min: float = 60.0
    """Lowest spelling ratio for a curated term with the same phonetic key ("sefalad").
    Hand-set: README "Medical language > What it does"."""
    list_min: float = 80.0
    """The same for a term only found in a big list (ICD-10, PCS). Hand-set."""
    short_word_min: float = 75.0
    """The same for words of ``short_word_letters`` letters or fewer (many neighbours).
    Hand-set."""
    short_word_letters: int = 6
    """Length at or below which ``short_word_min`` applies. Hand-set."""
    fuzzy_min: float = 86.0
    """Lowest spelling ratio without a phonetic-key match (curated terms only). Hand-set:
    ``best_candidate`` docstring."""
    fuzzy_long_min: float = 80.0
    """The same for words of ``long_word_letters`` letters or more ("gallander" ->
    gallbladder scores 80). Hand-set."""
    long_word_letters: int = 8
    """Length from which ``fuzzy_long_min`` applies. Hand-set."""
    drug_min: float = 88.0
    """Lowest spelling ratio for a drug name (a wrong drug is a patient-safety error, ISMP).
    Hand-set."""
    unsure_min: float = 70.0
    """Lowest ratio for an English word Whisper was unsure of, in a surgical dictation.
    Hand-set."""
    unsure_prob: float = 0.45
    """Whisper probability below which an English word may be repaired. Hand-set: README
    "Medical language > What it does" (probability < 0.45)."""
    english_zipf: float = 2.5
    """Zipf below which a joined word is not ordinary English. Source: wordfreq's scale."""
    everyday_zipf: float = 3.0
    """Zipf at or above which a same-key candidate is an everyday word, not a target
    ("stride"). Hand-set."""
    common_zipf: float = 4.0
    """Zipf at or above which an unsure word is never replaced ("roads" beside "radius").
    Measured: README "Medical language > What it does"."""
    trusted_min: float = 75.0
    """Curated or physician repairs at or above this are made without review. Hand-set."""
    min_letters: int = 5
    """Unknown words shorter than this are left alone. Hand-set."""
    phrase_first_min: float = 45.0
    """Lowest ratio of a misheard first word of a two-word curated phrase ("various needle"
    -> Veress needle) that shares its phonetic key. Hand-set."""
    suture_min: float = 60.0
    """Lowest WRatio of a word after a suture size to a suture material ("4-0 crill").
    Hand-set."""


@dataclass(frozen=True)
class NumberOptions:
    """Ranges and windows of ``SpokenNumbers`` (``numbers.py``)."""

    bp_systolic_min: int = 50
    """Lowest first number of "A over B" read as a blood pressure without a vital word.
    Hand-set to cover dictated adult pressures (no measurement recorded)."""
    bp_systolic_max: int = 260
    """Highest such number. Hand-set (no measurement recorded)."""
    bp_diastolic_min: int = 20
    """Lowest second number of a blood pressure. Hand-set (no measurement recorded)."""
    bp_diastolic_max: int = 200
    """Highest second number of a blood pressure. Hand-set (no measurement recorded)."""
    vital_window: int = 4
    """Words looked back for a vital-sign word ("blood pressure ... one forty two"), which
    makes numbers colloquial ("one forty two" -> 142) and always digits. Hand-set."""
    digit_run_min: int = 3
    """Digit words said one by one that make a record number ("four four seven" -> 447).
    Hand-set: two digit words are more often a count ("one two")."""
    suture_size_max: int = 10
    """Largest N of an "N-0" suture size. Source: the USP suture size scale (down to 10-0
    for ophthalmic sutures)."""
    level_max: int = 12
    """Largest number after C/T/L/S read as a spinal level (T1-T12). Source: anatomy."""
    small_number: int = 10
    """Counts below this stay words in ordinary speech ("one of the"), and with
    ``numbers_style="words_under_ten"`` before time words. Source: AHDI Book of Style
    (numerals for doses, vitals, measurements; words for small counts in prose)."""


@dataclass(frozen=True)
class CommandOptions:
    """Reach of the spoken "correction X" command (``commands.py``)."""

    correction_max_words: int = 6
    """Most words after "correction" taken as the replacement. Hand-set (README "Limits")."""
    correction_lookback: int = 8
    """Tokens looked back for the words being corrected. Hand-set."""
    number_lookback: int = 4
    """Tokens looked back for the number a "correction thirty" replaces. Hand-set."""


@dataclass(frozen=True)
class PromptOptions:
    """Size of the decoding prompt (``prompt.py``)."""

    max_terms: int = 24
    """Most terms in the prompt. Measured: README "Medical language > Measured figures" (12 or
    6 terms derailed Whisper as often and recalled less); STACK-NOTES (long prompts skip
    audio or loop)."""
    max_chars: int = 360
    """Most characters in the prompt text. Measured: STACK-NOTES (long prompts derail)."""
    physician_terms: int = 10
    """Most physician words put first. Hand-set."""
    other_specialty_quota: int = 6
    """Terms taken from each specialty after the document type's first one. Hand-set."""


@dataclass(frozen=True)
class ReviewOptions:
    """Review and casing cut-offs (``abbreviations.py``)."""

    unsure_prob: float = 0.5
    """Whisper probability below which a side (left/right) or a number goes to review
    (``SafetyReview``). The rule follows the Joint Commission Universal Protocol (sides are
    verified, never guessed); the cut itself is hand-set."""
    casing_zipf: float = 3.0
    """Zipf at or above which a word keeps ordinary casing ("men" is not "MEN"). Hand-set."""
    title_name_zipf: float = 5.0
    """"Doctor X" becomes "Dr. X" only when the capitalised X is rarer than this (a name,
    not an ordinary word Whisper capitalised). Hand-set."""


@dataclass(frozen=True)
class LearnedOptions:
    """Which of a physician's repeated review corrections are applied to the next drafts
    (``LearnedCorrections``, ``learned.py``)."""

    min_count: int = 2
    """Times a reviewer must have made the same replacement for the physician (net of times
    it was undone) before it is applied. Source: issue #15 ("a correction a reviewer made
    twice"), the same as ``pipeline.review.learning.REPEAT_THRESHOLD``."""
    max_words: int = 3
    """Most words on either side of a learned pair. Source: the longest substitution
    ``pipeline.review.learning.word_corrections`` records (three words a side)."""
    sound_min: float = 52.0
    """Lowest sound-alike score (mean of the spelling and phonetic-key ratios, as in
    ``soundalike.window_score``) between the original and the replacement: a mishearing
    sounds like the term, a style edit ("belly" -> abdomen) does not. Measured on the pairs
    in tests/test_learned_corrections.py: 13 mishearings scored 56-95 ("sealer cyst" ->
    cholecystitis 56), 9 lay words and rewordings 7-42; the cut is set between them."""
    single_word_max_zipf: float = 4.0
    """A one-word original at least this common in English is everyday speech ("raped" for
    draped would rewrite a history of assault): never replaced everywhere. Hand-set: the
    same cut as ``SoundalikeOptions.common_zipf``."""
    max_pairs: int = 500
    """Most learned pairs read for one dictation (the most frequent first). Hand-set."""


@dataclass(frozen=True)
class LanguageOptions:
    """Every tuning threshold of the medical-language stage, one object per transform family.

    Passed to ``normalize``/``normalize_text`` and carried on ``TextState.options``.
    """

    soundalike: SoundalikeOptions = field(default_factory=SoundalikeOptions)
    """``SoundAlikeRepair`` thresholds."""
    terms: TermOptions = field(default_factory=TermOptions)
    """``TermCorrection`` / ``best_candidate`` thresholds."""
    numbers: NumberOptions = field(default_factory=NumberOptions)
    """``SpokenNumbers`` ranges."""
    commands: CommandOptions = field(default_factory=CommandOptions)
    """"correction X" reach."""
    prompt: PromptOptions = field(default_factory=PromptOptions)
    """Decoding prompt size."""
    review: ReviewOptions = field(default_factory=ReviewOptions)
    """Review and casing cut-offs."""
    learned: LearnedOptions = field(default_factory=LearnedOptions)
    """Which learned corrections (repeated review corrections) are applied."""
    max_input_chars: int = 200_000
    """Longer input is processed by the cheap steps only and flagged ``text_too_long`` (a
    hostile or runaway transcript must not stall the pipeline). Measured: README "Medical
    language > Tests" (100,000 and 224,000 characters)."""
