"""Training pairs from signed drafts: (audio window, target text), cut at word timestamps.

A physician's signed drafts are the best labels the practice has for that physician's voice:
Whisper heard the audio, a reviewer corrected what it wrote, the physician signed the
result. This module turns each signed draft into windows of at most 30 s (Whisper's input
length) with the text the model should have written for them.

**The target is what was said, in Whisper's style.** The signed text is a document, not a
transcript: spoken commands became punctuation ("period" -> "."), numbers were formatted
("five milligrams" -> "5 mg"), headings were capitalised, the header was filled in from
the sidecar. Training on it would teach the model to write documents and starve the
medical-language stage (``pipeline.language``) of the spoken forms it expects. So the
target is Whisper's raw transcript with only the reviewer's *content* corrections carried
over (``target_words``):

1. Both texts become comparison keys: lower case, punctuation dropped, number words as
   digits ("five" -> "5"), units in one spelling ("milligrams" -> "mg"), "136/82" as
   "136 over 82". Raw words that are spoken commands ("new paragraph", "full stop",
   ``pipeline.language.normalize.commands``) get no keys: they are kept as said.
2. The keys are aligned with ``difflib.SequenceMatcher`` (Ratcliff/Obershelp, as
   ``pipeline.review.learning.word_corrections`` does for the same two texts), and each
   difference is widened to whole raw words and whole signed words.
3. Each difference is classified. Same numbers and units written another way ("five
   milligrams" / "5 mg", "nineteen fifty three" / "1953"): Whisper's form stays. Only
   function words changed ("a" / "the"): Whisper's form stays. Content words changed in a
   short run ("epics are on" -> "apixaban"): the reviewer's words, written the way Whisper
   writes (units and numbers in the transcript's own style, "/" as "over"). A long run
   is a rewrite: unsure. Raw words the signed text lacks (a spoken header the reviewer
   removed, a hesitation) stay but are unconfirmed, except a misheard command ("Coma"
   where the signed text has a comma) which becomes the command. Signed words with no
   raw counterpart are added only when short, inside a sentence and not a heading: a
   word Whisper dropped; headings, header lines and typed paragraphs nobody said are not.

**Drafts and windows too far from their audio are skipped with a recorded reason**
(``SkippedDraft`` / ``SkippedWindow``): a draft whose signed content words mostly have no
counterpart in the transcript (``typed_content``: added by typing; ``rewritten``: replaced
by the reviewer's own wording), a window whose words are too often unconfirmed
(``unsure``) or corrected (``too_many_corrections``), or whose signed text has words the
target leaves out (``missing_words``: typed there, or said where Whisper skipped audio).
Thresholds live in ``PairOptions``.

**Storage.** ``write_pairs`` keeps a physician's pairs under
``<data_dir>/adaptation/<physician_id>/pairs/``: each window's samples as 16 kHz int16
(exactly what the decoder produced: it decodes to s16, ``pipeline.ingest.audio``), the
targets in one file, and a manifest with ids, times and counts only; every file is written
through ``pipeline.core.files`` (encrypted when ``settings.encrypt_files``, 0600), every
folder 0700. Nothing here leaves the machine and no log line carries a target's text:
ids, times and counts only.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.core import files
from pipeline.core.db.core import DictationRow, DraftRow, TranscriptRow
from pipeline.core.db.review import Signature
from pipeline.core.errors import AudioError, ConfigError, NotFoundError
from pipeline.core.records import Word
from pipeline.core.settings import Settings
from pipeline.ingest import audio as audio_mod
from pipeline.language.normalize.commands import PUNCTUATION_COMMANDS, is_command_context
from pipeline.language.spoken_numbers import (
    DIGIT_WORDS,
    ONES,
    ORDINALS,
    TENS,
    is_number_word,
    parse_cardinal,
)
from pipeline.language.vocab import phonetic_key
from pipeline.review.signing import text_sha256

__all__ = [
    "PairOptions",
    "TargetWord",
    "AlignmentStats",
    "Window",
    "TrainingPair",
    "SkippedDraft",
    "SkippedWindow",
    "DraftPairs",
    "PairSet",
    "SIGNED_STATUSES",
    "SAMPLE_RATE",
    "words_from_segments",
    "join_words",
    "target_words",
    "cut_windows",
    "draft_pairs",
    "pairs_for_draft",
    "collect_pairs",
    "pairs_dir",
    "write_pairs",
    "load_pairs",
    "load_window_audio",
]

log = logging.getLogger(__name__)

#: Draft statuses whose text is signed (and immutable: ``pipeline.review.signing``).
SIGNED_STATUSES = ("signed", "delivered")
#: Windows are stored at Whisper's sample rate.
SAMPLE_RATE = audio_mod.SAMPLE_RATE
_MANIFEST = "manifest.json"
_TARGETS = "targets.json"
_FORMAT = 1
_AUDIO_NAME = re.compile(r"^[0-9a-f]{1,64}-\d{3,}\.npy$")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class PairOptions:
    """Thresholds for turning signed drafts into training pairs (defaults and why)."""

    #: Whisper's encoder sees exactly 30 s; a longer window cannot be one example.
    max_window_s: float = 30.0
    #: Silence kept before the first and after the last word of a window (never past the
    #: middle of the pause to the neighbouring word): faster-whisper's word times (cross-
    #: attention alignment) are off by about a tenth of a second, and a clipped onset
    #: teaches the model to hear a different word.
    pad_s: float = 0.15
    #: A pause this long between words is a good place to cut (a breath between phrases).
    min_pause_s: float = 0.3
    #: A window is cut at the last sentence end or pause once it holds this share of
    #: ``max_window_s``; before that it keeps growing (fewer, fuller windows).
    min_fill: float = 0.5
    #: Shorter windows (and windows of fewer words) teach little and carry the least
    #: reliable word times: dropped as ``too_short``.
    min_window_s: float = 1.0
    min_window_words: int = 3
    #: A window needs this share of its raw words confirmed by the signed text (kept,
    #: reformatted, spoken commands or corrected); below it the alignment is ``unsure``.
    #: 0.8 lets a spoken header the reviewer removed share a window with text that was kept,
    #: not a window made mostly of words nobody confirmed.
    min_agreement: float = 0.8
    #: More of a window's raw words than this corrected: Whisper's word times around them
    #: come from a decode that went wrong, so the cut may not match the words.
    max_corrected_fraction: float = 0.5
    #: A difference longer than this many words on either side is a rewrite, not a
    #: correction. ``pipeline.review.learning`` calls up to 3 a correction; a misheard drug
    #: name takes up to 4 or 5 Whisper pieces ("Rose-U-Vastate-and" for "rosuvastatin").
    max_correction_words: int = 6
    #: Share of the signed content words with no counterpart in the raw transcript (typed
    #: or rewritten) above which the whole draft is skipped: beyond a quarter the reviewer
    #: wrote a different document, and the islands that still align are not to be trusted.
    max_departure: float = 0.25
    #: Share of the raw content words the signed text dropped above which the draft is
    #: skipped as rewritten. Looser than ``max_departure``: a reviewer removing the spoken
    #: header (patient, date of birth, MRN: often a quarter of a short dictation) is normal.
    max_raw_dropped: float = 0.6
    #: Signed words with no raw counterpart are carried into the target (a word Whisper
    #: dropped) only in runs of at most this many words inside a sentence.
    carry_insertions: bool = True
    max_inserted_words: int = 2
    #: Signed content words the target leaves out inside a window (a typed sentence, or
    #: words said where Whisper skipped audio: with long prompts faster-whisper was
    #: measured skipping ~25 s): above this the audio may hold speech the target lacks.
    max_missing_words: int = 0
    #: This many unconfirmed raw words in a row get windows of their own (dropped as
    #: ``unsure``) instead of lowering the agreement of the windows around them.
    min_doubtful_run: int = 3
    #: A draft with fewer signed content words than this is skipped as ``no_words``.
    min_content_words: int = 5


TargetKind = Literal[
    "kept", "format", "command", "corrected", "inserted", "unconfirmed", "rewrite", "unsure"
]
#: Kinds whose raw words the signed text confirms (or that are spoken commands).
_CONFIRMED: frozenset[str] = frozenset({"kept", "format", "command", "corrected"})
_DOUBTFUL: frozenset[str] = frozenset({"unconfirmed", "rewrite", "unsure"})


@dataclass
class TargetWord:
    """One word of the target with its time in the audio.

    ``kind``: ``kept`` (Whisper's word, confirmed), ``format`` (Whisper's word; the signed
    text writes the same number or unit another way), ``command`` (a spoken command, as
    said), ``corrected`` (the reviewer's word over ``raw_count`` misheard raw words),
    ``inserted`` (a signed word Whisper dropped), ``unconfirmed`` (Whisper's word, absent
    from the signed text), ``rewrite`` (Whisper's word inside a long rewritten run),
    ``unsure`` (Whisper's word in a difference that cannot be resolved: a spoken command
    inside it, or the document's header labels mixed into it).
    Words with the same ``span`` came from one alignment unit: windows never split one.
    ``join_words`` writes a list of them as text.
    """

    text: str
    start: float
    end: float
    kind: TargetKind
    span: int
    raw_count: int = 1
    #: written against the previous word, as Whisper wrote it ("73" "-year" "-old")
    joined: bool = False
    #: signed content words right after this word that the target leaves out (typed, or
    #: said in audio Whisper skipped: the window cannot tell which)
    missing_after: int = 0

    @property
    def confirmed(self) -> bool:
        """Whether the signed text backs this word (or it is a spoken command)."""
        return self.kind in _CONFIRMED


@dataclass
class AlignmentStats:
    """What aligning a raw transcript with its signed text found (counts only)."""

    raw_words: int = 0  #: raw words that carry content keys (commands excluded)
    commands: int = 0  #: raw words that are spoken commands
    kept: int = 0  #: raw words kept as Whisper wrote them, confirmed
    formatted: int = 0  #: ... of which the signed text writes as another format
    corrected: int = 0  #: raw words replaced by the reviewer's words
    corrections: int = 0  #: corrected runs
    inserted: int = 0  #: signed words carried in with no raw counterpart
    unconfirmed: int = 0  #: raw words the signed text does not have
    rewritten_raw: int = 0  #: raw words inside runs too long to be corrections
    unsure: int = 0  #: raw words in differences that cannot be resolved
    signed_content: int = 0  #: signed content words (headings excluded)
    typed: int = 0  #: signed content words with no raw counterpart (insertions)
    rewritten: int = 0  #: signed content words inside rewritten runs
    raw_content: int = 0  #: raw content words
    raw_dropped: int = 0  #: raw content words with no signed counterpart

    @property
    def departure(self) -> float:
        """Share of the signed content words with no counterpart in the raw transcript."""
        return (self.typed + self.rewritten) / self.signed_content if self.signed_content else 0.0

    @property
    def raw_dropped_fraction(self) -> float:
        """Share of the raw content words the signed text dropped or rewrote."""
        return self.raw_dropped / self.raw_content if self.raw_content else 0.0

    def figures(self) -> dict[str, float]:
        """The counts and the two fractions, as plain numbers (for a manifest or a log)."""
        out: dict[str, float] = {k: float(v) for k, v in vars(self).items()}
        out["departure"] = round(self.departure, 4)
        out["raw_dropped_fraction"] = round(self.raw_dropped_fraction, 4)
        return out


@dataclass
class Window:
    """One cut of the target: its time in the audio, its text and its counts."""

    start_s: float
    end_s: float
    text: str = field(repr=False)
    words: int = 0  #: target words
    raw_words: int = 0  #: raw words it covers, spoken commands aside
    corrected: int = 0  #: target words written by the reviewer (corrected or inserted)
    corrected_raw: int = 0  #: raw words the reviewer's words replace
    missing: int = 0  #: signed content words inside it that the target leaves out
    agreement: float = 1.0  #: share of its raw words (commands aside) the signed text confirms

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class SkippedWindow:
    """A window left out, why (``too_short``, ``too_long``, ``unsure``,
    ``too_many_corrections``, ``missing_words``, ``audio_unreadable``) and the figures
    that decided it."""

    dictation_id: str
    start_s: float
    end_s: float
    reason: str
    figures: dict[str, float] = field(default_factory=dict)


@dataclass
class SkippedDraft:
    """A signed draft that gave no pairs and why: ``not_signed``, ``signature_mismatch``,
    ``no_transcript``, ``no_words``, ``audio_missing``, ``audio_unreadable``,
    ``typed_content``, ``rewritten``, ``no_windows``; with the figures that decided it."""

    dictation_id: str
    reason: str
    figures: dict[str, float] = field(default_factory=dict)
    draft_id: str = ""


@dataclass
class TrainingPair:
    """One (audio window, target text) pair of a physician's signed dictation.

    ``text`` never appears in a repr, a manifest or a log. ``audio_file`` is the stored
    window (``write_pairs``); ``source_audio`` the dictation's own file, from which
    ``load_window_audio`` cuts the window when it is not stored yet.
    """

    pair_id: str
    dictation_id: str
    draft_id: str
    physician_id: str
    start_s: float
    end_s: float
    text: str = field(repr=False)
    words: int = 0
    corrected: int = 0
    agreement: float = 1.0
    source_audio: str | None = field(default=None, repr=False)
    audio_file: str | None = field(default=None, repr=False)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class DraftPairs:
    """What one signed draft gave: its pairs, the windows left out and the alignment."""

    draft_id: str
    dictation_id: str
    pairs: list[TrainingPair] = field(default_factory=list)
    skipped_windows: list[SkippedWindow] = field(default_factory=list)
    stats: AlignmentStats = field(default_factory=AlignmentStats)


@dataclass
class PairSet:
    """A physician's pairs, with every draft and window that was left out and why."""

    physician_id: str
    pairs: list[TrainingPair] = field(default_factory=list)
    skipped: list[SkippedDraft] = field(default_factory=list)
    skipped_windows: list[SkippedWindow] = field(default_factory=list)

    @property
    def audio_s(self) -> float:
        """Seconds of audio in the pairs."""
        return sum(p.duration_s for p in self.pairs)


# --- words and keys ---------------------------------------------------------------------

#: Function words: a reviewer changing only these did not correct what was heard.
_FUNCTION_WORDS = frozenset([
    "a", "an", "the", "and", "or", "but", "of", "to", "in", "on", "at", "for", "with", "by",
    "from", "as", "is", "was", "be", "been", "are", "were", "it", "its", "this", "that",
    "these", "those", "he", "she", "they", "his", "her", "their", "him", "them", "we", "i",
    "you", "our", "your", "my", "me", "has", "have", "had", "do", "does", "did", "so", "then",
    "there", "than",
])
#: Unit spellings -> one key (the formatter abbreviates what Whisper spells out).
_UNIT_KEYS: dict[str, str] = {
    "mg": "mg", "milligram": "mg", "milligrams": "mg",
    "mcg": "mcg", "microgram": "mcg", "micrograms": "mcg",
    "kg": "kg", "kilogram": "kg", "kilograms": "kg", "kilo": "kg", "kilos": "kg",
    "gram": "g", "grams": "g", "g": "g",
    "ml": "ml", "milliliter": "ml", "milliliters": "ml", "millilitre": "ml",
    "millilitres": "ml",
    "mm": "mm", "millimeter": "mm", "millimeters": "mm", "millimetre": "mm",
    "millimetres": "mm",
    "cm": "cm", "centimeter": "cm", "centimeters": "cm", "centimetre": "cm",
    "centimetres": "cm",
    "ms": "ms", "millisecond": "ms", "milliseconds": "ms", "msec": "ms",
    "percent": "percent", "%": "percent",
}
#: How a unit is said when the transcript never wrote it (the target is speech).
_UNIT_SPOKEN: dict[str, str] = {
    "mg": "milligrams", "mcg": "micrograms", "kg": "kilograms", "g": "grams",
    "ml": "milliliters", "mm": "millimeters", "cm": "centimeters", "ms": "milliseconds",
    "percent": "percent",
}
#: Keys a number or measurement is written with besides its digits.
_FORMAT_KEYS = frozenset(set(_UNIT_KEYS.values()) | {"over", "point"})
_PIECE = re.compile(r"\d+(?:,\d{3})+(?!\d)|\d+|[^\W\d_]+|%|(?<=\d)[/.:](?=\d)")
_ORDINAL_SUFFIX = frozenset({"st", "nd", "rd", "th", "s"})
_EDGE_PUNCT = ".,;:!?()[]{}\"'“”‘’«»…"
#: Spoken commands beyond punctuation (``commands.SpokenCommands`` acts on them too).
_EXTRA_COMMANDS: tuple[tuple[str, ...], ...] = (
    ("scratch", "that"), ("delete", "that"), ("strike", "that"), ("all", "caps"),
    ("caps", "on"), ("caps", "off"), ("end", "caps"),
)
_COMMANDS: dict[tuple[str, ...], str] = {
    **{k: v[0] for k, v in PUNCTUATION_COMMANDS.items()},
    **{k: "" for k in _EXTRA_COMMANDS},
}
_SENTENCE_END_COMMANDS = frozenset(
    {("period",), ("full", "stop"), ("new", "paragraph"), ("next", "paragraph"),
     ("new", "line"), ("next", "line"), ("question", "mark")}
)
#: Misheard one-word commands: the command, its phonetic keys, the mark the signed text has.
_SOUNDALIKE_COMMANDS: tuple[tuple[str, frozenset[str], str], ...] = (
    ("comma", frozenset({"KM", "KMS"}), ","),
    ("colon", frozenset({"KLN", "KLNS"}), ":"),
    ("period", frozenset({"PRD", "PRDS"}), "."),
)
#: How alike (``phonetic_key`` skeletons) raw words and a heading must be for the heading to
#: count as said; measured on the shipped samples' misheard headings (see ``_sounds_alike``).
_HEADING_LIKENESS = 0.6
_NUMBER_TO_WORD = {v: k for k, v in ONES.items()} | {v: k for k, v in TENS.items()}


@dataclass
class _Key:
    key: str  # canonical, compared
    word: str  # the lower-case piece it came from
    owner: int  # raw word index or signed token index


def _norm(word: str) -> str:
    return word.strip().lower().strip(_EDGE_PUNCT)


def _canon(piece: str) -> str:
    if piece in _UNIT_KEYS:
        return _UNIT_KEYS[piece]
    if piece in ORDINALS:
        return str(ORDINALS[piece])
    if piece in ONES:
        return str(ONES[piece])
    if piece in TENS:
        return str(TENS[piece])
    return piece


def _pieces(text: str) -> list[tuple[str, str]]:
    """(key, piece) pairs of one written word.

    >>> _pieces("73-year-old")
    [('73', '73'), ('year', 'year'), ('old', 'old')]
    >>> _pieces("136/82"), _pieces("55%")
    ([('136', '136'), ('over', '/'), ('82', '82')], [('55', '55'), ('percent', '%')])
    >>> _pieces("Milligrams,"), _pieces("five"), _pieces("11th")
    ([('mg', 'milligrams')], [('5', 'five')], [('11', '11')])
    """
    low = text.lower().replace("’", "").replace("'", "")
    out: list[tuple[str, str]] = []
    prev_digit = False
    for m in _PIECE.finditer(low):
        s = m.group(0)
        if s[0].isdigit():
            out.append((s.replace(",", ""), s.replace(",", "")))
            prev_digit = True
            continue
        if s == "%":
            out.append(("percent", "%"))
        elif s == "/":
            out.append(("over", "/"))
        elif s == ".":
            out.append(("point", "."))
        elif s == ":":
            pass  # a time, "3:30": the two numbers are the keys
        elif prev_digit and s in _ORDINAL_SUFFIX:
            pass  # "11th", "1990s"
        else:
            out.append((_canon(s), s))
        prev_digit = False
    return out


def words_from_segments(segments: Sequence[Any]) -> list[Word]:
    """The timed words of a transcript's segments (``TranscriptRow.segments`` JSON or
    ``Segment`` records), in order, without empty ones."""
    out: list[Word] = []
    for seg in segments:
        words = seg.get("words") if isinstance(seg, dict) else getattr(seg, "words", None)
        for w in words or []:
            if isinstance(w, Word):
                word = w
            else:
                word = Word(str(w.get("word", "")), float(w.get("start", 0.0)),
                            float(w.get("end", 0.0)), float(w.get("probability", 0.0)))
            if word.word.strip():
                out.append(word)
    return out


def _command_words(low: list[str]) -> dict[int, tuple[int, tuple[str, ...]]]:
    """Raw word index -> (first index of its command, the command's words) for every raw
    word that is part of a spoken command said as a command."""
    found: dict[int, tuple[int, tuple[str, ...]]] = {}
    i = 0
    n = len(low)
    while i < n:
        for size in (2, 1):
            words = tuple(low[i : i + size])
            if len(words) < size or words not in _COMMANDS:
                continue
            before = low[i - 1] if i > 0 else None
            after = low[i + size] if i + size < n else None
            if is_command_context(words, before, after):
                for j in range(i, i + size):
                    found[j] = (i, words)
                i += size
                break
        else:
            i += 1
    return found


@dataclass
class _SignedToken:
    text: str
    keys: list[tuple[str, str]]
    line_start: bool
    sentence_start: bool
    heading: bool
    position: int  # in its line


def _signed_tokens(text: str) -> list[_SignedToken]:
    """The signed text's words, with where each stands (line start, sentence start,
    heading: a line's first words up to a colon, or a short all-capitals line)."""
    tokens: list[_SignedToken] = []
    for line in text.splitlines():
        words = line.split()
        if not words:
            continue
        heading_upto = -1
        for k, w in enumerate(words[:6]):
            if w.endswith(":") and any(c.isalpha() for c in w):
                heading_upto = k
                break
        letters = "".join(c for c in line if c.isalpha())
        if len(words) <= 6 and letters and letters.isupper() and heading_upto < 0:
            heading_upto = len(words) - 1
        for k, w in enumerate(words):
            prev = words[k - 1] if k else ""
            tokens.append(_SignedToken(
                text=w, keys=_pieces(w), line_start=k == 0,
                sentence_start=k == 0 or prev.rstrip("\"')”’").endswith((".", "?", "!", ":")),
                heading=k <= heading_upto, position=k,
            ))
    return tokens


def _number_values(words: Sequence[str]) -> tuple[list[int], list[str]] | None:
    """(numbers, format keys) of a run made only of numbers and measurement words, else
    None. "five milligrams" -> ([5], ["mg"]); "nineteen fifty three" -> ([19, 53], [])."""
    values: list[int] = []
    others: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        if w.isdigit():
            values.append(int(w))
            i += 1
        elif w == "oh" and (values or (i + 1 < len(words) and words[i + 1] in DIGIT_WORDS)):
            values.append(0)
            i += 1
        elif is_number_word(w):
            parsed = parse_cardinal(list(words), i, colloquial=True)
            if parsed is None:
                return None
            values.append(parsed[0])
            i += parsed[1]
        elif w in ORDINALS:
            values.append(ORDINALS[w])
            i += 1
        elif w == "and":
            i += 1
        elif _canon(w) in _FORMAT_KEYS or w in ("/", ".", "%", "over"):
            others.append({"/": "over", ".": "point"}.get(w, _canon(w)))
            i += 1
        else:
            return None
    return values, others


def _same_number(raw: Sequence[str], signed: Sequence[str]) -> bool:
    """Whether two runs say the same numbers and units ("five milligrams" / "5 mg",
    "nineteen fifty three" / "1953", "five five two" / "552")."""
    a, b = _number_values(raw), _number_values(signed)
    if a is None or b is None or not (a[0] or b[0]):
        return False
    if a[1] != b[1]:
        return False
    return a[0] == b[0] or "".join(map(str, a[0])) == "".join(map(str, b[0]))


def _command_for(low: Sequence[str], mark: str | None) -> tuple[str, int] | None:
    """The command that the raw words at the start of ``low`` are a mishearing of, when it
    writes ``mark`` (any mark when None): ("comma", 1) for "Coma", ("colon", 2) for
    "goal and"."""
    if not low:
        return None
    key = phonetic_key(low[0])
    for command, keys, writes in _SOUNDALIKE_COMMANDS:
        if mark is not None and writes != mark:
            continue
        if low[0] == command or key in keys:
            return command, 1
        if (command == "colon" and key in ("KL", "GL") and len(low) > 1
                and low[1] in ("and", "in", "on")):
            return command, 2
    return None


def _mark_of(token: _SignedToken | None) -> str:
    """The punctuation mark a signed word ends with ("" for none)."""
    if token is None:
        return ""
    core = token.text.rstrip("\"')”’")
    return core[-1] if core and core[-1] in ",:.;?!" else ""


# --- alignment --------------------------------------------------------------------------


@dataclass
class _Region:
    a0: int
    a1: int
    b0: int
    b1: int


class _Aligner:
    """Key-level alignment of raw words with signed tokens, widened to whole words."""

    def __init__(self, raw_keys: list[_Key], signed_keys: list[_Key]) -> None:
        self.raw = raw_keys
        self.signed = signed_keys
        sm = SequenceMatcher(None, [k.key for k in raw_keys], [k.key for k in signed_keys],
                             autojunk=False)
        self.partner_a: dict[int, int] = {}
        self.partner_b: dict[int, int] = {}
        diffs: list[_Region] = []
        for tag, a0, a1, b0, b1 in sm.get_opcodes():
            if tag == "equal":
                for d in range(a1 - a0):
                    self.partner_a[a0 + d] = b0 + d
                    self.partner_b[b0 + d] = a0 + d
            else:
                diffs.append(_Region(a0, a1, b0, b1))
        self.regions = self._merge([self._grow(r) for r in diffs])

    @staticmethod
    def _bounds(keys: list[_Key], lo: int, hi: int) -> tuple[int, int]:
        """Widen [lo, hi) to whole owners (an empty range inside an owner takes it)."""
        n = len(keys)
        if lo == hi:
            if 0 < lo < n and keys[lo - 1].owner == keys[lo].owner:
                lo, hi = lo - 1, lo + 1
            else:
                return lo, hi
        while lo > 0 and keys[lo - 1].owner == keys[lo].owner:
            lo -= 1
        while hi < n and keys[hi].owner == keys[hi - 1].owner:
            hi += 1
        return lo, hi

    def _grow(self, r: _Region) -> _Region:
        while True:
            a0, a1 = self._bounds(self.raw, r.a0, r.a1)
            b0, b1 = self._bounds(self.signed, r.b0, r.b1)
            for a in range(a0, a1):
                if a in self.partner_a:
                    b0, b1 = min(b0, self.partner_a[a]), max(b1, self.partner_a[a] + 1)
            for b in range(b0, b1):
                if b in self.partner_b:
                    a0, a1 = min(a0, self.partner_b[b]), max(a1, self.partner_b[b] + 1)
            grown = _Region(a0, a1, b0, b1)
            if grown == r:
                return r
            r = grown

    def _merge(self, regions: list[_Region]) -> list[_Region]:
        """Regions that overlap after widening become one (touching ones stay two)."""
        out: list[_Region] = []
        for r in sorted(regions, key=lambda x: (x.a0, x.b0)):
            while out and (r.a0 < out[-1].a1 or r.b0 < out[-1].b1):
                prev = out.pop()
                r = self._grow(_Region(min(prev.a0, r.a0), max(prev.a1, r.a1),
                                       min(prev.b0, r.b0), max(prev.b1, r.b1)))
            out.append(r)
        return out


def _number_text(value: int, style: str) -> str:
    if style == "words" or (style == "auto" and value < 10):
        if value in _NUMBER_TO_WORD:
            return _NUMBER_TO_WORD[value]
        if value < 100 and value // 10 * 10 in _NUMBER_TO_WORD:
            return f"{_NUMBER_TO_WORD[value // 10 * 10]}-{_NUMBER_TO_WORD[value % 10]}"
    return str(value)


class _Builder:
    """Walks the raw words and the aligned regions and writes the target words."""

    def __init__(self, raw: Sequence[Word], signed_text: str, options: PairOptions) -> None:
        self.raw = [w for w in raw if w.word.strip()]
        self.options = options
        self.low = [_norm(w.word) for w in self.raw]
        self.commands = _command_words(self.low)
        self.tokens = _signed_tokens(signed_text)
        raw_keys: list[_Key] = []
        unit_surfaces: dict[str, Counter[str]] = {}
        for i, w in enumerate(self.raw):
            if i in self.commands:
                continue
            for key, piece in _pieces(w.word):
                raw_keys.append(_Key(key, piece, i))
                if key in _UNIT_SPOKEN:
                    unit_surfaces.setdefault(key, Counter())[piece] += 1
        self.unit_surface = {k: c.most_common(1)[0][0] for k, c in unit_surfaces.items()}
        signed_keys = [_Key(key, piece, t) for t, tok in enumerate(self.tokens)
                       for key, piece in tok.keys]
        self.aligner = _Aligner(raw_keys, signed_keys)
        self.keys_of: dict[int, list[_Key]] = {}
        for k in raw_keys:
            self.keys_of.setdefault(k.owner, []).append(k)
        self.stats = AlignmentStats()
        self.out: list[TargetWord] = []
        self.span = 0

    # -- emitting ------------------------------------------------------------------------

    def _emit(self, text: str, start: float, end: float, kind: TargetKind,
              raw_count: int, new_span: bool = True, joined: bool = False) -> None:
        if not text:
            return
        if new_span or not self.out:
            self.span += 1
        self.out.append(TargetWord(text, start, end, kind, self.span, raw_count,
                                   joined and bool(self.out)))

    def _emit_raw(self, i: int, kind: TargetKind) -> None:
        w = self.raw[i]
        self._emit(w.word.strip(), w.start, w.end, kind, 1,
                   joined=i > 0 and not w.word[:1].isspace())

    # -- the walk ------------------------------------------------------------------------

    def build(self) -> tuple[list[TargetWord], AlignmentStats]:
        st = self.stats
        st.commands = len(self.commands)
        for tok in self.tokens:
            if not tok.heading:
                st.signed_content += sum(1 for k, _ in tok.keys if k not in _FUNCTION_WORDS)
        for k in self.aligner.raw:
            if k.key not in _FUNCTION_WORDS:
                st.raw_content += 1
        st.raw_words = len({k.owner for k in self.aligner.raw})
        regions = self.aligner.regions
        raw_keys = self.aligner.raw
        # raw word -> region that owns it; a region with no raw words goes before a raw word
        owned: dict[int, int] = {}
        before: dict[int, list[int]] = {}
        for n, r in enumerate(regions):
            if r.a1 > r.a0:
                for a in range(r.a0, r.a1):
                    owned[raw_keys[a].owner] = n
            else:
                before.setdefault(self._insert_at(r), []).append(n)
        done: set[int] = set()
        i = 0
        while i <= len(self.raw):
            for n in before.get(i, []):
                self._insertion(regions[n])
            if i == len(self.raw):
                break
            if i in self.commands:
                _, words = self.commands[i]
                size = len(words)
                w0, w1 = self.raw[i], self.raw[min(i + size, len(self.raw)) - 1]
                text = " ".join(w.word.strip() for w in self.raw[i : i + size])
                self._emit(text, w0.start, w1.end, "command", size)
                self._late_insertions(before, regions, i + 1, i + size)
                i += size
                continue
            region = owned.get(i)
            if region is None:
                self._emit_raw(i, "kept")  # all its keys matched (or it has none)
                st.kept += 1
                i += 1
                continue
            if region in done:
                i += 1
                continue
            done.add(region)
            r = regions[region]
            last = max(raw_keys[a].owner for a in range(r.a0, r.a1))
            self._region(r, i, last)
            self._late_insertions(before, regions, i + 1, last + 1)
            i = last + 1
        return self.out, st

    def _late_insertions(self, before: dict[int, list[int]], regions: list[_Region],
                         lo: int, hi: int) -> None:
        """Insertions placed before raw words ``lo..hi-1``, which the walk jumped over."""
        for j in range(lo, hi):
            for n in before.get(j, []):
                self._insertion(regions[n])

    def _insert_at(self, r: _Region) -> int:
        """The raw word an insertion goes before: right after the raw word before it, or
        after the commands that follow that word when the signed text ends a sentence
        there ("pain today. He" against "pain period he")."""
        keys = self.aligner.raw
        nxt = keys[r.a0].owner if r.a0 < len(keys) else len(self.raw)
        if r.a0 == 0:
            return nxt
        after_prev = keys[r.a0 - 1].owner + 1
        return nxt if _mark_of(self._token_before(r.b0)) in (".", "?", "!", ":") else after_prev

    def _region(self, r: _Region, first: int, last: int) -> None:
        """Write the target for one difference between raw words ``first..last`` and
        signed keys ``r.b0..r.b1``."""
        st = self.stats
        idx = [i for i in range(first, last + 1) if i not in self.commands]
        inner_commands = [i for i in range(first, last + 1) if i in self.commands]
        signed_keys = self.aligner.signed[r.b0 : r.b1]
        tok_ids = sorted({k.owner for k in signed_keys})
        tok_before = self._token_before(r.b0)
        # a misheard command at the start ("Coma", "colony") where the signed text has
        # the mark just before the difference
        lead = _command_for([self.low[i] for i in idx], _mark_of(tok_before))
        if lead is not None and tok_ids:
            first_signed = _norm(self.tokens[tok_ids[0]].text)
            if phonetic_key(first_signed) == phonetic_key(self.low[idx[0]]):
                lead = None  # the reviewer kept the word: not a command
        if lead is not None:
            command, size = lead
            w0, w1 = self.raw[idx[0]], self.raw[idx[size - 1]]
            self._emit(command, w0.start, w1.end, "command", size)
            st.commands += size
            idx = idx[size:]
        if not idx:
            self._insertion(r)
            self._flush_commands(inner_commands)
            return
        if inner_commands and not signed_keys:
            # raw words the signed text lacks, with commands among them: in spoken order
            run: list[int] = []
            for i in range(idx[0], last + 1):
                if i in self.commands:
                    if run:
                        self._deletion(run, r)
                        run = []
                    self._emit_raw(i, "command")
                else:
                    run.append(i)
            if run:
                self._deletion(run, r)
            return
        if inner_commands:
            # a command inside a difference: where its mark falls in the signed words is
            # not known, so neither is which words go on which side of it
            for i in range(idx[0], last + 1):
                if i in self.commands:
                    self._emit_raw(i, "command")
                else:
                    self._unsure([i])
            self._count_unmatched(signed_keys)
            return
        for part_idx, part_toks in self._heading_parts(idx, tok_ids):
            self._settle(part_idx, part_toks, r)

    def _heading_parts(self, idx: list[int], tok_ids: list[int]
                       ) -> list[tuple[list[int], list[int] | None]]:
        """Split a difference around the headings in its signed words. A heading is said
        (misheard: "some captive" for SUBJECTIVE:) when it sounds like the raw words, else
        it is the document's own label (PATIENT:) and nobody said it. A part whose signed
        side is None is unsure (a label mixed into a difference in a way that cannot be
        told apart)."""
        heads = [t for t in tok_ids if self.tokens[t].heading]
        if not heads:
            return [(idx, tok_ids)]
        if len(heads) == len(tok_ids):
            return [(idx, tok_ids if self._sounds_alike(idx, tok_ids) else [])]
        run = 0  # a heading at the end ("Riley Coma day 8" / "Reilly\nDATE OF BIRTH:")
        while run < len(tok_ids) and self.tokens[tok_ids[-1 - run]].heading:
            run += 1
        if run and len(heads) == run:
            for size in range(1, min(len(idx) - 1, run + 2) + 1):
                if self._sounds_alike(idx[-size:], tok_ids[-run:]):
                    return [(idx[:-size], tok_ids[:-run]), (idx[-size:], tok_ids[-run:])]
        run = 0  # a heading at the start, said as alphabetic words
        while run < len(tok_ids) and self.tokens[tok_ids[run]].heading:
            run += 1
        if run and len(heads) == run:
            for size in range(1, min(len(idx) - 1, run + 2) + 1):
                if all(p.isalpha() for i in idx[:size] for _, p in _pieces(self.raw[i].word)) \
                        and self._sounds_alike(idx[:size], tok_ids[:run]):
                    return [(idx[:size], tok_ids[:run]), (idx[size:], tok_ids[run:])]
        return [(idx, None)]

    def _unsure(self, idx: Sequence[int]) -> None:
        for i in idx:
            self._emit_raw(i, "unsure")
            self.stats.raw_dropped += sum(1 for key, _ in _pieces(self.raw[i].word)
                                          if key not in _FUNCTION_WORDS)
        self.stats.unsure += len(idx)

    def _count_unmatched(self, signed_keys: Sequence[_Key]) -> None:
        """Signed content words (headings aside) left without a raw counterpart."""
        self.stats.rewritten += sum(1 for k in signed_keys if k.key not in _FUNCTION_WORDS
                                    and not self.tokens[k.owner].heading)

    def _settle(self, idx: list[int], tok_ids: list[int] | None, r: _Region) -> None:
        """Write the target for raw words ``idx`` against signed words ``tok_ids``."""
        st = self.stats
        if not idx:
            return
        if tok_ids is None:
            self._unsure(idx)
            self._count_unmatched(self.aligner.signed[r.b0 : r.b1])
            return
        wanted = set(tok_ids)
        signed_keys = [k for k in self.aligner.signed[r.b0 : r.b1] if k.owner in wanted]
        if not signed_keys:
            self._deletion(idx, r)
            return
        raw_pieces = [k for i in idx for k in self.keys_of.get(i, [])]
        raw_content = {k.key for k in raw_pieces if k.key not in _FUNCTION_WORDS}
        signed_content = {k.key for k in signed_keys if k.key not in _FUNCTION_WORDS}
        if _same_number([k.word for k in raw_pieces], [k.word for k in signed_keys]):
            for i in idx:
                self._emit_raw(i, "format")
            st.kept += len(idx)
            st.formatted += len(idx)
        elif raw_content == signed_content:
            for i in idx:  # only function words differ: what Whisper heard stands
                self._emit_raw(i, "kept")
            st.kept += len(idx)
        elif (len(idx) > self.options.max_correction_words
              or len(tok_ids) > self.options.max_correction_words):
            for i in idx:
                self._emit_raw(i, "rewrite")
            st.rewritten_raw += len(idx)
            self._count_unmatched(signed_keys)
            st.raw_dropped += sum(1 for k in raw_pieces if k.key not in _FUNCTION_WORDS)
        else:
            self._correction(idx, tok_ids)

    def _sounds_alike(self, idx: Sequence[int], tok_ids: Sequence[int]) -> bool:
        """Whether raw words ``idx`` sound like signed words ``tok_ids`` (consonant
        skeletons ``phonetic_key`` at least 60 % alike: "some captive" / "subjective" 0.67,
        "clinic note for" / "patient" 0.33)."""
        said = phonetic_key("".join(self.low[i] for i in idx))
        written = phonetic_key("".join(_norm(self.tokens[t].text) for t in tok_ids))
        return bool(said and written) and \
            SequenceMatcher(None, said, written).ratio() >= _HEADING_LIKENESS

    def _flush_commands(self, inner: list[int]) -> None:
        for i in inner:
            self._emit_raw(i, "command")

    def _token_before(self, b: int) -> _SignedToken | None:
        keys = self.aligner.signed
        if 0 < b <= len(keys):
            return self.tokens[keys[b - 1].owner]
        return None

    def _deletion(self, idx: list[int], r: _Region) -> None:
        """Raw words the signed text lacks: misheard commands become the command, the rest
        stay as Whisper wrote them, unconfirmed."""
        st = self.stats
        mark = _mark_of(self._token_before(r.b0))
        k = 0
        while k < len(idx):
            found = _command_for([self.low[i] for i in idx[k:]], mark)
            if found is not None:
                command, size = found
                w0, w1 = self.raw[idx[k]], self.raw[idx[k + size - 1]]
                self._emit(command, w0.start, w1.end, "command", size)
                st.commands += size
                mark = ""  # one mark, one command
                k += size
                continue
            i = idx[k]
            self._emit_raw(i, "unconfirmed")
            st.unconfirmed += 1
            st.raw_dropped += sum(1 for key, _ in _pieces(self.raw[i].word)
                                  if key not in _FUNCTION_WORDS)
            k += 1

    def _style(self, idx: Sequence[int]) -> str:
        pieces = [p for i in idx for _, p in _pieces(self.raw[i].word)]
        if any(p.isdigit() for p in pieces):
            return "digits"
        if any(is_number_word(p) for p in pieces):
            return "words"
        return "auto"

    def _spoken(self, tok: _SignedToken, style: str, raw_first: str,
                raw_caps: frozenset[str] = frozenset()) -> str:
        """A signed word written the way Whisper writes speech: numbers in the style of
        the raw words it replaces, units as the transcript writes them (else spelled out),
        "136/82" as "136 over 82", sentence-start capitals and heading capitals undone."""
        core = tok.text.strip(_EDGE_PUNCT)
        if not core:
            return ""
        m = re.fullmatch(r"(\d+(?:\.\d+)?)(%?)", core)
        if m:
            num = m.group(1)
            text = _number_text(int(num), style) if num.isdigit() else num
            if m.group(2):
                percent = self.unit_surface.get("percent", "percent")
                text = f"{text}%" if percent == "%" else f"{text} {percent}"
            return text
        m = re.fullmatch(r"(\d+)/(\d+)", core)
        if m:
            return f"{m.group(1)} over {m.group(2)}"
        unit = _UNIT_KEYS.get(core.lower())
        if unit is not None and unit in _UNIT_SPOKEN:
            return self.unit_surface.get(unit, _UNIT_SPOKEN[unit])
        if tok.heading and core.isupper() and len(core) > 1:
            # a heading's capitals are the document's; write it as Whisper wrote the word
            if core.lower() in raw_caps:
                return core
            return core.capitalize() if raw_first[:1].isupper() and tok.position == 0 \
                else core.lower()
        if (raw_first[:1].islower() and tok.sentence_start and core[:1].isupper()
                and not core[1:2].isupper()):
            return core[:1].lower() + core[1:]
        return core

    def _correction(self, idx: list[int], tok_ids: list[int]) -> None:
        """The reviewer's words over raw words ``idx`` (one span, the raw words' time); a
        misheard command at the end of the raw words ("Riley Coma" / "Reilly") stays a
        command after them."""
        st = self.stats
        trail: tuple[str, int] | None = None
        last_signed = phonetic_key(_norm(self.tokens[tok_ids[-1]].text))
        for size in (2, 1):
            if len(idx) > size:
                found = _command_for([self.low[i] for i in idx[-size:]], None)
                if found is not None and found[1] == size and \
                        phonetic_key(self.low[idx[-size]]) != last_signed:
                    trail = found
                    break
        tail_idx: list[int] = []
        if trail is not None:
            idx, tail_idx = idx[: -trail[1]], idx[-trail[1] :]
        style = self._style(idx)
        raw_first = self.raw[idx[0]].word.strip()
        caps = frozenset(p for i in idx for _, p in _pieces(self.raw[i].word)
                         if any(c.isupper() for c in self.raw[i].word))
        words = [self._spoken(self.tokens[t], style, raw_first, caps) for t in tok_ids]
        words = [w for w in words if w]
        tail = self.raw[idx[-1]].word.strip()
        mark = tail[-1] if tail and tail[-1] in ",.;:?!" else ""
        if words and mark and not words[-1].endswith(mark):
            words[-1] += mark  # Whisper's punctuation stays Whisper's
        start, end = self.raw[idx[0]].start, self.raw[idx[-1]].end
        for k, w in enumerate(words):
            self._emit(w, start, end, "corrected", len(idx) if k == 0 else 0, new_span=k == 0)
        st.corrected += len(idx)
        st.corrections += 1
        if trail is not None:
            w0, w1 = self.raw[tail_idx[0]], self.raw[tail_idx[-1]]
            self._emit(trail[0], w0.start, w1.end, "command", len(tail_idx))
            st.commands += len(tail_idx)

    def _insertion(self, r: _Region) -> None:
        """Signed words with no raw counterpart, at the end of the target written so far:
        carried in only when short, inside a sentence, not a heading and between two
        timed words (a word Whisper dropped); otherwise counted as typed."""
        st = self.stats
        o = self.options
        keys = self.aligner.signed[r.b0 : r.b1]
        if not keys:
            return
        tok_ids = sorted({k.owner for k in keys})
        toks = [self.tokens[t] for t in tok_ids]
        content = [k for k in keys
                   if k.key not in _FUNCTION_WORDS and not self.tokens[k.owner].heading]
        prev = self.out[-1] if self.out else None
        nxt = r.a0 < len(self.aligner.raw)
        carry = (
            o.carry_insertions and content and len(tok_ids) <= o.max_inserted_words
            and not any(t.heading or t.line_start for t in toks)
            and prev is not None and nxt
        )
        st.typed += len(content)
        if not carry or prev is None:
            if prev is not None and nxt and content:
                prev.missing_after += len(content)
            return
        # the same word said as a "command" next to it ("colon" the organ): not twice
        spoken = [_norm(t.text) for t in toks]
        if prev.kind == "command" and _norm(prev.text) == " ".join(spoken):
            prev.kind = "kept"
            return
        style = "auto"
        for t in toks:
            text = self._spoken(t, style, prev.text)
            self._emit(text, prev.end, prev.end, "inserted", 0, new_span=False)
            st.inserted += 1


def target_words(
    raw_words: Sequence[Word], signed_text: str, options: PairOptions | None = None
) -> tuple[list[TargetWord], AlignmentStats]:
    """The target for a raw transcript and its signed text: Whisper's words with the
    reviewer's content corrections carried over, each with its time (see the module
    docstring), and what the alignment found.

    A misheard drug name corrected by the reviewer is carried over; numbers and spoken
    commands stay as Whisper wrote them; a heading nobody said is not added:

    >>> def said(text, step=0.4):
    ...     return [Word(" " + w, k * step, k * step + 0.3, 0.9)
    ...             for k, w in enumerate(text.split())]
    >>> def target(raw, signed):
    ...     return join_words(target_words(said(raw), signed)[0])
    >>> target("Medications colon epics are gone five milligrams twice daily period",
    ...        "MEDICATIONS: Apixaban 5 mg twice daily.")
    'Medications colon apixaban five milligrams twice daily period'
    >>> target("new paragraph plan colon continue the same dose full stop",
    ...        "PLAN: Continue the same dose.")
    'new paragraph plan colon continue the same dose full stop'
    >>> target("blood pressure 136 over 80 to comma pulse 64",
    ...        "Blood pressure 136/82, pulse 64.")
    'blood pressure 136 over 82 comma pulse 64'
    >>> target("history colon she has no chest pain period",
    ...        "PATIENT: Jane Roe\\nDATE OF BIRTH: 1 May 1950\\n\\n"
    ...        "HISTORY: She has no chest pain.\\n\\nASSESSMENT: Stable.")
    'history colon she has no chest pain period'
    >>> target("the patient reports pain Coma swelling", "The patient reports pain, swelling.")
    'the patient reports pain comma swelling'
    """
    options = options or PairOptions()
    builder = _Builder(raw_words, signed_text, options)
    return builder.build()


# --- windows ----------------------------------------------------------------------------


def join_words(words: Iterable[TargetWord]) -> str:
    """Target words as text: one space between words, none before a word Whisper wrote
    against the previous one.

    >>> join_words([TargetWord("73", 0, 1, "kept", 1), TargetWord("-year", 1, 2, "kept", 2,
    ...             joined=True), TargetWord("old", 2, 3, "kept", 3)])
    '73-year old'
    """
    out: list[str] = []
    for w in words:
        if out and not w.joined:
            out.append(" ")
        out.append(w.text)
    return "".join(out)


def _sentence_end(word: TargetWord) -> bool:
    if word.kind == "command":
        return tuple(_norm(word.text).split()) in _SENTENCE_END_COMMANDS
    return word.text.rstrip("\"')”’").endswith((".", "?", "!"))


def cut_windows(
    words: Sequence[TargetWord], options: PairOptions | None = None, *,
    duration_s: float | None = None,
) -> tuple[list[Window], list[SkippedWindow]]:
    """Cut target words into windows of at most ``options.max_window_s`` at word
    boundaries (preferring sentence ends and pauses, never inside one alignment span),
    padded by ``pad_s`` of silence within the pauses and clamped to ``[0, duration_s]``.
    Returns the windows kept and those left out with their reason (``too_short``,
    ``too_long``, ``unsure``, ``too_many_corrections``, ``missing_words``);
    ``dictation_id`` is left empty.
    """
    o = options or PairOptions()
    # spans: groups of words a cut never separates
    spans: list[list[TargetWord]] = []
    for w in words:
        if spans and spans[-1][-1].span == w.span:
            spans[-1].append(w)
        else:
            spans.append([w])
    n = len(spans)
    if n == 0:
        return [], []
    starts = [min(w.start for w in s) for s in spans]
    ends = [max(w.end for w in s) for s in spans]
    limit = duration_s if duration_s and duration_s > 0 else max(ends) + o.pad_s

    def left(k: int) -> float:
        """Where a window starting at span ``k`` starts."""
        lo = 0.0 if k == 0 else max(ends[k - 1], (ends[k - 1] + starts[k]) / 2)
        return min(max(lo, starts[k] - o.pad_s), starts[k])

    def right(k: int) -> float:
        """Where a window ending with span ``k`` ends."""
        hi = limit if k == n - 1 else min(starts[k + 1], (ends[k] + starts[k + 1]) / 2)
        return min(max(ends[k], min(hi, ends[k] + o.pad_s)), limit)

    # a run of unconfirmed words (a spoken header the reviewer removed, instructions moved
    # elsewhere) gets windows of its own, so that it does not sink the words around it
    # (spoken commands in it belong to it: they confirm nothing)
    doubtful = [any(w.kind in _DOUBTFUL for w in s) for s in spans]
    command = [all(w.kind == "command" for w in s) for s in spans]
    forced: set[int] = set()  # a window must end just before these spans
    k = 0
    while k < n:
        if not doubtful[k]:
            k += 1
            continue
        m = k + 1
        last = k
        while m < n and (doubtful[m] or command[m]):
            if doubtful[m]:
                last = m
            m += 1
        m = last + 1
        if sum(w.raw_count for s in spans[k:m] for w in s if w.kind != "command") \
                >= o.min_doubtful_run:
            forced |= {k, m}
        k = m
    kept: list[Window] = []
    skipped: list[SkippedWindow] = []
    i = 0
    while i < n:
        stop = min([f for f in forced if f > i], default=n)
        t0 = left(i)
        if right(i) - t0 > o.max_window_s:
            skipped.append(SkippedWindow("", round(t0, 3), round(right(i), 3), "too_long",
                                         {"duration_s": round(right(i) - t0, 3)}))
            i += 1
            continue
        j = i
        best: int | None = None
        while j < stop and right(j) - t0 <= o.max_window_s:
            pause = starts[j + 1] - ends[j] if j + 1 < n else 0.0
            # "period new paragraph" is cut after the paragraph, not between the commands
            ends_here = _sentence_end(spans[j][-1]) and not (
                j + 1 < n and spans[j + 1][0].kind == "command")
            if (ends_here or pause >= o.min_pause_s) and \
                    right(j) - t0 >= o.min_fill * o.max_window_s:
                best = j
            j += 1
        if j == stop:
            cut = stop - 1
        elif best is not None:
            cut = best
        else:  # no good place in the second half: the longest pause, else the last fit
            cands = [(starts[k + 1] - ends[k], k) for k in range(i, j)
                     if right(k) - t0 >= o.min_fill * o.max_window_s]
            cut = max(cands)[1] if cands else j - 1
        chosen = [w for s in spans[i : cut + 1] for w in s]
        window = _window(chosen, t0, right(cut))
        reason = _window_problem(window, o)
        if reason is None:
            kept.append(window)
        else:
            skipped.append(SkippedWindow(
                "", window.start_s, window.end_s, reason,
                {"words": float(window.words), "raw_words": float(window.raw_words),
                 "agreement": round(window.agreement, 4),
                 "corrected": float(window.corrected),
                 "corrected_raw": float(window.corrected_raw),
                 "missing": float(window.missing),
                 "duration_s": round(window.duration_s, 3)}))
        i = cut + 1
    return kept, skipped


def _window(words: list[TargetWord], start: float, end: float) -> Window:
    # spoken commands are kept as said whatever the signed text has: they confirm nothing
    raw = sum(w.raw_count for w in words if w.kind != "command")
    confirmed = sum(w.raw_count for w in words if w.confirmed and w.kind != "command")
    corrected = sum(1 for w in words if w.kind in ("corrected", "inserted"))
    corrected_raw = sum(w.raw_count for w in words if w.kind == "corrected")
    missing = sum(w.missing_after for w in words)
    return Window(
        start_s=round(start, 3), end_s=round(end, 3),
        text=join_words(words),
        words=len(words), raw_words=raw, corrected=corrected, corrected_raw=corrected_raw,
        missing=missing,
        agreement=confirmed / raw if raw else 0.0,
    )


def _window_problem(w: Window, o: PairOptions) -> str | None:
    if w.duration_s < o.min_window_s or w.words < o.min_window_words:
        return "too_short"
    if w.agreement < o.min_agreement:
        return "unsure"
    if w.raw_words and w.corrected_raw / w.raw_words > o.max_corrected_fraction:
        return "too_many_corrections"
    if w.missing > o.max_missing_words:
        return "missing_words"
    return None


# --- from the database ------------------------------------------------------------------


def _signed_text(session: Session, draft: DraftRow) -> tuple[str | None, str]:
    """(signed text, problem): the draft's text when it is signed and the signature covers
    exactly that text; else None and ``not_signed`` or ``signature_mismatch``."""
    if draft.status not in SIGNED_STATUSES:
        return None, "not_signed"
    sig = session.scalar(
        select(Signature).where(Signature.draft_id == draft.id, Signature.addendum_id.is_(None))
        .order_by(Signature.id.desc()).limit(1)
    )
    if sig is None:
        return None, "not_signed"
    if sig.text_sha256 != text_sha256(draft.text):
        return None, "signature_mismatch"
    return draft.text, ""


def draft_pairs(
    session: Session, settings: Settings, draft_id: str, options: PairOptions | None = None
) -> DraftPairs | SkippedDraft:
    """The training pairs of one signed draft with the windows left out, or why the whole
    draft gives none. Reads the database and checks the audio file exists; the audio
    itself is read by ``write_pairs`` / ``load_window_audio``."""
    o = options or PairOptions()
    draft = session.get(DraftRow, draft_id)
    if draft is None:
        raise NotFoundError(f"No draft with id {draft_id}; expected the id of a signed draft.")
    did = draft.dictation_id

    def skip(reason: str, figures: dict[str, float] | None = None) -> SkippedDraft:
        log.info("pairs draft=%s dictation=%s skipped reason=%s", draft_id, did, reason)
        return SkippedDraft(did, reason, figures or {}, draft_id)

    signed, problem = _signed_text(session, draft)
    if signed is None:
        return skip(problem)
    dictation = session.get(DictationRow, did)
    transcript = session.scalar(
        select(TranscriptRow).where(TranscriptRow.dictation_id == did)
        .order_by(TranscriptRow.id.desc()).limit(1)
    )
    if transcript is None:
        return skip("no_transcript")
    raw = words_from_segments(transcript.segments or [])
    if not raw:
        return skip("no_words")
    audio_path = dictation.audio_path if dictation is not None else None
    if not audio_path or not Path(audio_path).is_file():
        return skip("audio_missing")
    words, stats = target_words(raw, signed, o)
    figures = stats.figures()
    if stats.signed_content < o.min_content_words:
        return skip("no_words", figures)
    if stats.departure > o.max_departure:
        return skip("typed_content" if stats.typed >= stats.rewritten else "rewritten", figures)
    if stats.raw_dropped_fraction > o.max_raw_dropped:
        return skip("rewritten", figures)
    duration = float(transcript.duration_s or (dictation.duration_s if dictation else 0) or 0)
    windows, left_out = cut_windows(words, o, duration_s=duration or None)
    for s in left_out:
        s.dictation_id = did
    physician = draft.physician_id or ""
    pairs = [
        TrainingPair(
            pair_id=f"{did}-{k:03d}", dictation_id=did, draft_id=draft.id,
            physician_id=physician, start_s=w.start_s, end_s=w.end_s, text=w.text,
            words=w.words, corrected=w.corrected, agreement=round(w.agreement, 4),
            source_audio=audio_path,
        )
        for k, w in enumerate(windows)
    ]
    log.info(
        "pairs draft=%s dictation=%s pairs=%d skipped_windows=%d audio_s=%.1f corrected=%d "
        "inserted=%d unconfirmed=%d departure=%.3f",
        draft_id, did, len(pairs), len(left_out), sum(p.duration_s for p in pairs),
        stats.corrected, stats.inserted, stats.unconfirmed, stats.departure,
    )
    if not pairs:
        return SkippedDraft(did, "no_windows", {**figures, "windows_skipped": len(left_out)},
                            draft_id)
    return DraftPairs(draft.id, did, pairs, left_out, stats)


def pairs_for_draft(
    session: Session, settings: Settings, draft_id: str, options: PairOptions | None = None
) -> list[TrainingPair] | SkippedDraft:
    """The training pairs of one signed draft, or why it gives none (``draft_pairs``
    also returns the windows left out)."""
    result = draft_pairs(session, settings, draft_id, options)
    return result if isinstance(result, SkippedDraft) else result.pairs


def collect_pairs(
    session: Session, settings: Settings, physician_id: str,
    options: PairOptions | None = None, *, exclude: Iterable[str] = frozenset(),
) -> PairSet:
    """Pairs from every signed draft of ``physician_id``, oldest signature first; drafts
    whose id or dictation id is in ``exclude`` (held back to judge a model) are left out
    without a record."""
    leave_out = set(exclude)
    rows = session.execute(
        select(DraftRow.id, DraftRow.dictation_id)
        .join(Signature, (Signature.draft_id == DraftRow.id) & Signature.addendum_id.is_(None))
        .where(DraftRow.physician_id == physician_id, DraftRow.status.in_(SIGNED_STATUSES))
        .order_by(Signature.signed_at, DraftRow.id)
    ).all()
    out = PairSet(physician_id)
    seen: set[str] = set()
    for draft_id, dictation_id in rows:
        if draft_id in seen or draft_id in leave_out or dictation_id in leave_out:
            continue
        seen.add(draft_id)
        result = draft_pairs(session, settings, draft_id, options)
        if isinstance(result, SkippedDraft):
            out.skipped.append(result)
        else:
            out.pairs.extend(result.pairs)
            out.skipped_windows.extend(result.skipped_windows)
    log.info("pairs physician=%s drafts=%d pairs=%d skipped_drafts=%d audio_s=%.1f",
             physician_id, len(seen), len(out.pairs), len(out.skipped), out.audio_s)
    return out


# --- the store --------------------------------------------------------------------------


def _check_id(value: str) -> str:
    """``value`` when it is a safe folder name (physician ids are slugs), else ConfigError."""
    if not _SAFE_ID.match(value or "") or ".." in value:
        raise ConfigError(
            f"Physician id {value[:70]!r} cannot name a folder; expected letters, digits, "
            "'.', '_' or '-' (at most 64)."
        )
    return value


def pairs_dir(settings: Settings, physician_id: str) -> Path:
    """``<data_dir>/adaptation/<physician_id>/pairs``: where a physician's pairs live."""
    return settings.data_path / "adaptation" / _check_id(physician_id) / "pairs"


def _private_dirs(path: Path, settings: Settings) -> None:
    """Make ``path`` and its parents up to the data directory, each 0700 (ours only)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    root = settings.data_path
    p = path.resolve()
    os.chmod(p, 0o700)
    while p != root and p.is_relative_to(root):
        os.chmod(p, 0o700)
        p = p.parent


def _npy(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, samples, allow_pickle=False)
    return buf.getvalue()


def _decode(path: str, settings: Settings) -> np.ndarray:
    chunks = list(audio_mod.iter_audio(files.AudioRef(Path(path), settings), 60.0))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)


def _int16(samples: np.ndarray) -> np.ndarray:
    scaled = np.round(np.asarray(samples, dtype=np.float64) * 32768.0)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def write_pairs(pair_set: PairSet, settings: Settings, out_dir: Path | None = None) -> PairSet:
    """Store ``pair_set`` under ``out_dir`` (default ``pairs_dir``), replacing what was
    there: each window's samples (16 kHz int16, ``<pair_id>.npy``), the targets
    (``targets.json``) and a manifest of ids, times and counts (``manifest.json``), all
    written through ``pipeline.core.files`` (encrypted when ``settings.encrypt_files``).
    A dictation whose audio cannot be read loses its pairs (recorded as skipped,
    ``audio_unreadable``). Returns the stored set, each pair's ``audio_file`` set."""
    folder = Path(out_dir) if out_dir is not None else pairs_dir(settings, pair_set.physician_id)
    _private_dirs(folder, settings)
    stored = PairSet(pair_set.physician_id, skipped=list(pair_set.skipped),
                     skipped_windows=list(pair_set.skipped_windows))
    by_dictation: dict[str, list[TrainingPair]] = {}
    for p in pair_set.pairs:
        by_dictation.setdefault(p.dictation_id, []).append(p)
    for did, pairs in by_dictation.items():
        try:
            samples = _decode(pairs[0].source_audio or "", settings) \
                if pairs[0].source_audio else None
        except (AudioError, OSError) as exc:
            log.warning("pairs dictation=%s audio unreadable (%s)", did, type(exc).__name__)
            samples = None
        if samples is None:
            stored.skipped.append(SkippedDraft(did, "audio_unreadable", {}, pairs[0].draft_id))
            continue
        for p in pairs:
            a = round(p.start_s * SAMPLE_RATE)
            b = min(round(p.end_s * SAMPLE_RATE), samples.size)
            if b - a < SAMPLE_RATE * 0.1:
                stored.skipped_windows.append(SkippedWindow(
                    did, p.start_s, p.end_s, "audio_unreadable",
                    {"samples": float(max(b - a, 0))}))
                continue
            target = folder / f"{p.pair_id}.npy"
            files.write_bytes(target, _npy(_int16(samples[a:b])), settings)
            stored.pairs.append(TrainingPair(
                p.pair_id, p.dictation_id, p.draft_id, p.physician_id, p.start_s, p.end_s,
                p.text, p.words, p.corrected, p.agreement, p.source_audio, str(target)))
    targets = {p.pair_id: p.text for p in stored.pairs}
    files.write_bytes(folder / _TARGETS, json.dumps(targets).encode("utf-8"), settings)
    files.write_bytes(folder / _MANIFEST, json.dumps(_manifest(stored)).encode("utf-8"),
                      settings)
    keep = {f"{p.pair_id}.npy" for p in stored.pairs}
    for old in folder.iterdir():  # windows of an earlier run that are not in this one
        if _AUDIO_NAME.match(old.name) and old.name not in keep and old.is_file():
            old.unlink()
    log.info("pairs stored physician=%s pairs=%d audio_s=%.1f skipped_drafts=%d "
             "skipped_windows=%d encrypted=%s", stored.physician_id, len(stored.pairs),
             stored.audio_s, len(stored.skipped), len(stored.skipped_windows),
             settings.encrypt_files)
    return stored


def _manifest(ps: PairSet) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "physician_id": ps.physician_id,
        "sample_rate": SAMPLE_RATE,
        "dtype": "int16",
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "pairs": [
            {"pair_id": p.pair_id, "dictation_id": p.dictation_id, "draft_id": p.draft_id,
             "start_s": p.start_s, "end_s": p.end_s, "words": p.words,
             "corrected": p.corrected, "agreement": p.agreement}
            for p in ps.pairs
        ],
        "skipped": [
            {"dictation_id": s.dictation_id, "draft_id": s.draft_id, "reason": s.reason,
             "figures": s.figures}
            for s in ps.skipped
        ],
        "skipped_windows": [
            {"dictation_id": s.dictation_id, "start_s": s.start_s, "end_s": s.end_s,
             "reason": s.reason, "figures": s.figures}
            for s in ps.skipped_windows
        ],
    }


def load_pairs(settings: Settings, physician_id: str, out_dir: Path | None = None) -> PairSet:
    """The pairs ``write_pairs`` stored for ``physician_id`` (texts included); raises
    ``NotFoundError`` when none were written."""
    folder = Path(out_dir) if out_dir is not None else pairs_dir(settings, physician_id)
    manifest_path = folder / _MANIFEST
    if not manifest_path.is_file():
        raise NotFoundError(
            f"No training pairs are stored for physician {physician_id}; expected "
            f"{_MANIFEST} under {folder} (collect and write them first)."
        )
    manifest = json.loads(files.read_bytes(manifest_path, settings))
    if manifest.get("format") != _FORMAT:
        raise ConfigError(
            f"The pairs of physician {physician_id} are in format {manifest.get('format')}; "
            f"this version reads format {_FORMAT}. Write them again."
        )
    targets: dict[str, str] = json.loads(files.read_bytes(folder / _TARGETS, settings))
    out = PairSet(str(manifest.get("physician_id") or physician_id))
    for m in manifest.get("pairs", []):
        pid = str(m["pair_id"])
        out.pairs.append(TrainingPair(
            pid, str(m["dictation_id"]), str(m["draft_id"]), out.physician_id,
            float(m["start_s"]), float(m["end_s"]), targets.get(pid, ""),
            int(m.get("words", 0)), int(m.get("corrected", 0)),
            float(m.get("agreement", 1.0)), None, str(folder / f"{pid}.npy"),
        ))
    out.skipped = [SkippedDraft(str(s["dictation_id"]), str(s["reason"]),
                                dict(s.get("figures") or {}), str(s.get("draft_id") or ""))
                   for s in manifest.get("skipped", [])]
    out.skipped_windows = [SkippedWindow(str(s["dictation_id"]), float(s["start_s"]),
                                         float(s["end_s"]), str(s["reason"]),
                                         dict(s.get("figures") or {}))
                           for s in manifest.get("skipped_windows", [])]
    return out


def load_window_audio(pair: TrainingPair, settings: Settings) -> np.ndarray:
    """The pair's samples: 16 kHz mono float32 in [-1, 1), as Whisper takes them. From the
    stored window when there is one, else cut from the dictation's own audio."""
    if pair.audio_file:
        data = files.read_bytes(Path(pair.audio_file), settings)
        samples = np.load(io.BytesIO(data), allow_pickle=False)
        return (samples.astype(np.float32) / 32768.0).astype(np.float32)
    if not pair.source_audio:
        raise NotFoundError(
            f"Pair {pair.pair_id} has neither a stored window nor its dictation's audio."
        )
    whole = _decode(pair.source_audio, settings)
    a = round(pair.start_s * SAMPLE_RATE)
    b = min(round(pair.end_s * SAMPLE_RATE), whole.size)
    # through int16, so a window reads the same before and after it is stored
    return (_int16(whole[a:b]).astype(np.float32) / 32768.0).astype(np.float32)
