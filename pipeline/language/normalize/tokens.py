"""The working form of a dictation while it is normalised: a list of tokens with timings.

Whisper's words (with their audio times and probabilities) become ``Tok`` objects; punctuation
Whisper attached to a word becomes its own token (``kind="auto"``) so that spoken commands can
replace it. Each transform changes the token list; a token that replaced spoken words keeps
the original words in ``orig`` so that ``render`` can list every change as a ``Correction``
with its position in the final text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.core.records import Correction, Transcript, Word
from pipeline.core.settings import Settings
from pipeline.language.normalize.options import LanguageOptions
from pipeline.language.vocab import VocabIndex

if TYPE_CHECKING:
    from pipeline.language.normalize.learned import LearnedPair

__all__ = ["Tok", "TextState", "from_words", "from_text", "render", "BREAK", "PARAGRAPH"]

BREAK = "\n"
PARAGRAPH = "\n\n"

#: Words that keep their period ("Dr." is a word, not a sentence end).
_TITLES = {"dr.", "mr.", "mrs.", "ms.", "st.", "vs.", "etc.", "e.g.", "i.e.", "no.", "jr.", "sr."}
_DOTTED = re.compile(r"^(?:[A-Za-z]\.){2,}$")  # "b.i.d.", "p.o.", "a.m." stay whole
_LEAD = "\"'(["
_TRAIL = ".,;:!?\"')]"
_SENTENCE_END = {".", "?", "!"}
_NO_SPACE_BEFORE = {".", ",", ";", ":", "?", "!", ")", "]", "%"}
_NO_SPACE_AFTER = {"(", "["}


@dataclass
class Tok:
    """One token of the text being normalised."""

    text: str
    start_s: float | None = None
    end_s: float | None = None
    prob: float = 1.0
    kind: str = "word"  # word, auto (Whisper punctuation), punct (dictated), break, heading
    orig: str | None = None  # the spoken words this token replaced; None if unchanged
    change: str | None = None  # command, number, term, abbreviation, casing, ...
    score: float = 1.0
    glue_left: bool = False  # no space before
    glue_right: bool = False  # no space after
    keep_case: bool = False  # casing decided (all caps span, vocabulary spelling, heading)
    after_auto_stop: bool = False  # Whisper capitalised it after its own sentence end
    protected: bool = False  # numbers, units, commands: the term corrector leaves them alone

    @property
    def low(self) -> str:
        return self.text.lower()

    @property
    def is_word(self) -> bool:
        return self.kind == "word"


@dataclass
class TextState:
    """Tokens plus what the transforms share: settings, vocabulary, tuning options, findings."""

    toks: list[Tok]
    settings: Settings
    index: VocabIndex
    document_type: str | None = None
    physician_id: str | None = None
    physician_terms: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    review_items: list[dict[str, Any]] = field(default_factory=list)
    deletions: list[tuple[int, str, float | None, float | None]] = field(default_factory=list)
    defined_abbreviations: set[str] = field(default_factory=set)
    options: LanguageOptions = field(default_factory=LanguageOptions)
    #: auto-texts the dictation may insert ("insert normal exam"): trigger phrase -> body
    autotexts: dict[str, str] = field(default_factory=dict)
    #: the physician's learned corrections (misheard phrase -> term), handed in by the service
    learned: list[LearnedPair] = field(default_factory=list)

    def review(self, kind: str, tok: Tok, message: str, **extra: Any) -> None:
        """Ask the reviewer to check ``tok`` (stored on the note, with its audio time)."""
        item: dict[str, Any] = {
            "kind": kind,
            "text": tok.text,
            "message": message,
            "source_start_s": tok.start_s,
            "source_end_s": tok.end_s,
        }
        item.update(extra)
        self.review_items.append(item)


def merge(toks: list[Tok], text: str, change: str, score: float = 1.0, **kw: Any) -> Tok:
    """One token replacing ``toks`` (keeps their audio span and the lowest probability)."""
    orig = " ".join(t.orig if t.orig is not None else t.text for t in toks if t.kind != "break")
    starts = [t.start_s for t in toks if t.start_s is not None]
    ends = [t.end_s for t in toks if t.end_s is not None]
    return Tok(
        text=text,
        start_s=min(starts) if starts else None,
        end_s=max(ends) if ends else None,
        prob=min((t.prob for t in toks), default=1.0),
        orig=orig,
        change=change,
        score=score,
        **kw,
    )


def _split(word: str, start: float | None, end: float | None, prob: float) -> list[Tok]:
    """Split one recognised word into leading punctuation, the word, trailing punctuation."""
    w = word.strip()
    if not w:
        return []
    lead: list[Tok] = []
    trail: list[Tok] = []
    while w and w[0] in _LEAD and len(w) > 1:
        lead.append(Tok(w[0], start, start, prob, kind="auto", glue_right=w[0] in "(["))
        w = w[1:]
    if w.lower() not in _TITLES and not _DOTTED.match(w):
        while w and w[-1] in _TRAIL and len(w) > 1:
            # keep "s/p" and decimals whole; "11.2." loses only the final period
            trail.insert(0, Tok(w[-1], end, end, prob, kind="auto"))
            w = w[:-1]
    if w in _TRAIL or w in _LEAD:
        return [*lead, Tok(w, start, end, prob, kind="auto"), *trail]
    return [*lead, Tok(w, start, end, prob), *trail]


#: Pieces of a hyphenated Whisper word that are dictation commands ("period-new-paragraph").
_COMMAND_PIECES = {"period", "comma", "colon", "semicolon", "paragraph", "line"}


def _pieces(word: str) -> list[str]:
    """Split "period-new-paragraph" into words; "4-0" and "well-healed" stay whole."""
    parts = word.split("-")
    if len(parts) > 1 and any(p.lower().strip(".,;:") in _COMMAND_PIECES for p in parts):
        return [p for p in parts if p]
    return [word]


def from_words(words: list[Word]) -> list[Tok]:
    """Tokens from Whisper's timed words.

    A Whisper word without a leading space continues the previous one ("98" + ".4",
    "68" + "-year" + "-old"), so the pieces are joined before punctuation is split off.
    """
    merged: list[list] = []  # [text, start, end, prob]
    for w in words:
        text = w.word
        if merged and text and not text[0].isspace() and not merged[-1][0].endswith(" "):
            m = merged[-1]
            m[0] += text
            m[2] = w.end
            m[3] = min(m[3], float(w.probability))
        else:
            merged.append([text, w.start, w.end, float(w.probability)])
    out: list[Tok] = []
    for text, start, end, prob in merged:
        for piece in _pieces(text.strip()):
            out.extend(_split(piece, start, end, prob))
    return out


def from_text(text: str) -> list[Tok]:
    """Tokens from plain text (no timings); line breaks are kept as break tokens."""
    out: list[Tok] = []
    for para_i, para in enumerate(re.split(r"\n\s*\n", text)):
        if para_i and out:
            out.append(Tok(PARAGRAPH, kind="break"))
        for line_i, line in enumerate(para.split("\n")):
            if line_i and out and out[-1].kind != "break":
                out.append(Tok(BREAK, kind="break"))
            for word in line.split():
                for piece in _pieces(word):
                    out.extend(_split(piece, None, None, 1.0))
    return out


def from_transcript(transcript: Transcript) -> list[Tok]:
    """Tokens from a transcript: timed words when Whisper gave them, else segment text."""
    words = transcript.words
    if words:
        return from_words(words)
    toks: list[Tok] = []
    for seg in transcript.segments:
        for word in seg.text.split():
            for piece in _pieces(word):
                toks.extend(_split(piece, seg.start, seg.end, 1.0))
    return toks


def render(toks: list[Tok]) -> tuple[str, list[Correction]]:
    """Join tokens into the final text; every changed token becomes a ``Correction``."""
    parts: list[str] = []
    pos = 0
    corrections: list[Correction] = []
    prev: Tok | None = None
    for tok in toks:
        if tok.kind == "break":
            # a break replaces any space before it
            while parts and parts[-1] == " ":
                parts.pop()
                pos -= 1
            before = pos
            if parts and parts[-1].endswith("\n"):
                if tok.text == PARAGRAPH and not parts[-1].endswith("\n\n"):
                    parts.append("\n")
                    pos += 1
            elif parts:
                parts.append(tok.text)
                pos += len(tok.text)
            prev = tok
            if tok.orig is not None:
                corrections.append(_corr(tok, before, pos))
            continue
        if not tok.text:
            if tok.orig is not None:
                corrections.append(_corr(tok, pos, pos))
            continue
        need_space = (
            prev is not None
            and prev.kind != "break"
            and parts
            and not prev.glue_right
            and not tok.glue_left
            and tok.text not in _NO_SPACE_BEFORE
            and prev.text not in _NO_SPACE_AFTER
        )
        if (
            tok.text in (".", "?", "!")
            and prev is not None
            and prev.kind != "break"
            and parts
            and parts[-1].endswith(tok.text)
        ):
            # "10:30 a.m." + dictated period: one period is enough
            if tok.orig is not None:
                dropped = _corr(tok, pos, pos)
                dropped.replacement = ""
                corrections.append(dropped)
            continue
        if need_space:
            parts.append(" ")
            pos += 1
        start = pos
        parts.append(tok.text)
        pos += len(tok.text)
        if tok.orig is not None and tok.orig != tok.text:
            corrections.append(_corr(tok, start, pos))
        prev = tok
    text = "".join(parts).rstrip()
    for c in corrections:  # a trailing break may have been stripped
        c.start = min(c.start, len(text))
        c.end = min(c.end, len(text))
    return text, corrections


def _corr(tok: Tok, start: int, end: int) -> Correction:
    return Correction(
        original=tok.orig or "",
        replacement=tok.text,
        start=start,
        end=end,
        score=round(float(tok.score), 3),
        kind=tok.change or "term",
        source_start_s=tok.start_s,
        source_end_s=tok.end_s,
    )


def is_sentence_end(tok: Tok | None) -> bool:
    """True for ".", "?", "!" tokens (dictated or Whisper's)."""
    return tok is not None and tok.kind in ("punct", "auto") and tok.text in _SENTENCE_END
