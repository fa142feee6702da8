"""Medical-language normalisation: what a medical transcriptionist would type.

``normalize(transcript, settings)`` turns Whisper's words into a ``Note``: spoken commands
applied, numbers, doses and vitals written in medical style, misheard medical terms repaired,
Do-Not-Use abbreviations expanded, every change listed as a ``Correction`` and anything
uncertain (laterality, numbers, drug names) put in ``Note.review_items``.

The work is a chain of small transforms (``Compose``), each with one job; ``DICTATION`` is
the full chain, ``TEXT_ONLY`` the same without the parts that need audio (used on plain text).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from pipeline.core.records import Note, Transcript
from pipeline.core.settings import Settings
from pipeline.language.normalize.abbreviations import (
    AbbreviationPolicy,
    Casing,
    SafetyReview,
    SigStyle,
    Titles,
)
from pipeline.language.normalize.autotexts import InsertAutoText
from pipeline.language.normalize.commands import DropAutoPunctuation, NumberedLists, SpokenCommands
from pipeline.language.normalize.compose import Compose, Transform
from pipeline.language.normalize.learned import LearnedCorrections, LearnedPair
from pipeline.language.normalize.numbers import LetterSequences, SpokenNumbers, ZeroSafety
from pipeline.language.normalize.options import (
    CommandOptions,
    LanguageOptions,
    LearnedOptions,
    NumberOptions,
    PromptOptions,
    ReviewOptions,
    SoundalikeOptions,
    TermOptions,
)
from pipeline.language.normalize.prompt import PromptTerms, prompt_terms
from pipeline.language.normalize.soundalike import SoundAlikeRepair
from pipeline.language.normalize.terms import TermCorrection
from pipeline.language.normalize.tokens import TextState, from_text, from_transcript, render
from pipeline.language.vocab import get_index, physician_terms

__all__ = [
    "normalize",
    "normalize_text",
    "prompt_terms",
    "PromptTerms",
    "Compose",
    "Transform",
    "DICTATION",
    "TEXT_ONLY",
    "COMMANDS_ONLY",
    "MAX_INPUT_CHARS",
    "warm_up",
    "LanguageOptions",
    "SoundalikeOptions",
    "TermOptions",
    "NumberOptions",
    "CommandOptions",
    "PromptOptions",
    "ReviewOptions",
    "LearnedOptions",
    "LearnedPair",
]

log = logging.getLogger(__name__)

_DEFAULT_OPTIONS = LanguageOptions()

#: Longer input is processed in full by the cheap steps only (a hostile or runaway transcript
#: must not stall the pipeline); it is flagged. The default of
#: ``LanguageOptions.max_input_chars``.
MAX_INPUT_CHARS = LanguageOptions().max_input_chars

#: The full chain for a Whisper transcript.
DICTATION = Compose(
    [
        SpokenCommands(),
        InsertAutoText(),  # after the commands: a body is never read as one
        DropAutoPunctuation(),
        NumberedLists(),
        LetterSequences(),
        SpokenNumbers(),
        ZeroSafety(),
        SoundAlikeRepair(),
        TermCorrection(),
        LearnedCorrections(),  # after the built-in repairs; a no-op without learned pairs
        SigStyle(),
        AbbreviationPolicy(),
        Titles(),
        SafetyReview(),
        Casing(),
    ]
)
#: The same for plain text (no word probabilities, so no audio-based review).
TEXT_ONLY = Compose(
    [
        SpokenCommands(),
        InsertAutoText(),  # after the commands: a body is never read as one
        DropAutoPunctuation(),
        NumberedLists(),
        LetterSequences(),
        SpokenNumbers(),
        ZeroSafety(),
        SoundAlikeRepair(),
        TermCorrection(),
        LearnedCorrections(),  # after the built-in repairs; a no-op without learned pairs
        SigStyle(),
        AbbreviationPolicy(),
        Titles(),
        Casing(),
    ]
)
#: Commands and casing only (what a formatting-only evaluation would apply).
COMMANDS_ONLY = Compose([SpokenCommands(), InsertAutoText(), DropAutoPunctuation(), Casing()])


def warm_up(settings: Settings) -> float:
    """Load the vocabulary and build the spaCy pipeline now (about 0.5-1.5 s, once per process)
    so that the first dictation does not pay for it; returns the seconds spent."""
    t0 = time.perf_counter()
    from pipeline.language.normalize.terms import get_nlp

    get_index(settings)
    get_nlp(str(settings.vocab_dir.resolve()))
    normalize_text("warm up period", settings)
    return time.perf_counter() - t0


def _run(
    state: TextState, chain: Compose, transcript_flags: list[str] | None = None
) -> Note:
    t0 = time.perf_counter()
    state = chain(state)
    text, corrections = render(state.toks)
    flags = list(dict.fromkeys((transcript_flags or []) + state.flags))
    if state.review_items and "needs_review" not in flags:
        flags.append("needs_review")
    log.info(
        "normalized tokens=%d corrections=%d review_items=%d in %.1f ms",
        len(state.toks), len(corrections), len(state.review_items),
        (time.perf_counter() - t0) * 1000,
    )
    return Note(text=text, corrections=corrections, flags=flags, review_items=state.review_items)


def normalize(
    transcript: Transcript,
    settings: Settings,
    *,
    document_type: str | None = None,
    physician_id: str | None = None,
    chain: Compose | None = None,
    options: LanguageOptions | None = None,
    autotexts: Mapping[str, str] | None = None,
    learned: Sequence[LearnedPair] | None = None,
) -> Note:
    """Whisper's transcript -> the note a medical transcriptionist would type.

    ``options`` tunes the thresholds of every transform (default: the measured values);
    ``autotexts`` (trigger phrase -> body) are what "insert <trigger>" may insert;
    ``learned`` are the physician's learned corrections (``learned.py``).
    """
    options = options or _DEFAULT_OPTIONS
    toks = from_transcript(transcript)
    state = TextState(
        toks=toks,
        settings=settings,
        index=get_index(settings),
        document_type=document_type,
        physician_id=physician_id,
        physician_terms=physician_terms(settings, physician_id),
        options=options,
        autotexts=dict(autotexts or {}),
        learned=list(learned or []),
    )
    if sum(len(t.text) + 1 for t in toks) > options.max_input_chars:
        state.flags.append("text_too_long")
        chain = chain or COMMANDS_ONLY
    return _run(state, chain or DICTATION, list(transcript.flags))


def normalize_text(
    text: str,
    settings: Settings,
    *,
    document_type: str | None = None,
    physician_id: str | None = None,
    chain: Compose | None = None,
    options: LanguageOptions | None = None,
    autotexts: Mapping[str, str] | None = None,
    learned: Sequence[LearnedPair] | None = None,
) -> Note:
    """Plain text (e.g. a raw transcript string) -> normalised ``Note`` (text-only path);
    ``autotexts`` (trigger phrase -> body) are what "insert <trigger>" may insert;
    ``learned`` are the physician's learned corrections (``learned.py``)."""
    options = options or _DEFAULT_OPTIONS
    text = text or ""
    toks = from_text(text)
    state = TextState(
        toks=toks,
        settings=settings,
        index=get_index(settings),
        document_type=document_type,
        physician_id=physician_id,
        physician_terms=physician_terms(settings, physician_id),
        options=options,
        autotexts=dict(autotexts or {}),
        learned=list(learned or []),
    )
    if len(text) > options.max_input_chars:
        state.flags.append("text_too_long")
        chain = chain or COMMANDS_ONLY
    return _run(state, chain or TEXT_ONLY)
