"""Map the draft text onto the audio: every word of the text gets a time and marks.

The draft text is the normalised note (numbers, drug names, commands applied), then
edited by people, so its words are not Whisper's words. We align them in two steps with
``difflib``: Whisper's words -> the pipeline's text (version 1; its ``Correction`` offsets
say which words our processing changed and what Whisper heard), then version 1 -> the
current text. Words that match inherit time and probability; the rest take the time of the
nearest matched word before them, so a click still lands close to the spot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Any

from markupsafe import Markup, escape
from rapidfuzz.distance import Levenshtein

__all__ = ["Token", "tokenize", "map_words", "words_html", "LOW_CONFIDENCE", "word_diff"]

#: Whisper word probability below which a word is marked for the reviewer.
LOW_CONFIDENCE = 0.5

_TOKEN = re.compile(r"\S+|\s+")
_NORM = re.compile(r"[^\w]+")


@dataclass
class Token:
    """A run of text in the editor: a word (with audio time and marks) or whitespace."""

    text: str
    is_word: bool
    start: float | None = None
    end: float | None = None
    probability: float | None = None
    heard: str | None = None  # what Whisper heard, when our processing changed the word
    kind: str | None = None  # correction kind
    edited: bool = False  # not in the pipeline's text: a person wrote it
    corr: int | None = None  # index of the pipeline correction covering this word

    @property
    def low(self) -> bool:
        return self.probability is not None and self.probability < LOW_CONFIDENCE

    @property
    def flagged(self) -> bool:
        return self.low or self.heard is not None


def tokenize(text: str) -> list[Token]:
    """Split ``text`` into word and whitespace tokens (joining them gives ``text`` back)."""
    return [Token(m.group(0), not m.group(0).isspace()) for m in _TOKEN.finditer(text)]


def _norm(word: str) -> str:
    return _NORM.sub("", word).lower()


def _opcodes(a: list[str], b: list[str]) -> list[tuple[str, int, int, int, int]]:
    """Edit operations turning word list ``a`` into ``b`` (rapidfuzz, C++: a 10-minute
    dictation aligns in milliseconds where difflib took a tenth of a second)."""
    return [(op.tag, op.src_start, op.src_end, op.dest_start, op.dest_end)
            for op in Levenshtein.opcodes(a, b)]


def map_words(
    text: str,
    base_text: str,
    segments: list[dict[str, Any]],
    corrections: list[dict[str, Any]],
) -> list[Token]:
    """Tokens of ``text`` with times, probabilities and correction marks.

    ``base_text`` is the pipeline's text (which the correction offsets refer to);
    ``segments`` are the transcript's segments with ``words`` (word, start, end, probability).
    """
    heard_words = [w for seg in segments for w in (seg.get("words") or [])]
    base = tokenize(base_text)
    # Marks from the pipeline's corrections (character offsets in base_text).
    offset = 0
    spans = sorted(
        (int(c.get("start", 0)), int(c.get("end", 0)), c) for c in corrections if c is not None
    )
    for tok in base:
        tok_start, tok_end = offset, offset + len(tok.text)
        offset = tok_end
        if not tok.is_word:
            continue
        for n, (c_start, c_end, corr) in enumerate(spans):
            if c_start < tok_end and tok_start < c_end:
                tok.corr = n
                tok.heard = str(corr.get("original", ""))
                tok.kind = str(corr.get("kind", "term"))
                if corr.get("source_start_s") is not None:
                    tok.start = float(corr["source_start_s"])
                    tok.end = float(corr.get("source_end_s") or corr["source_start_s"])
                break
            if c_start >= tok_end:
                break
    # Whisper's words -> base words. A corrected run is compared in the form Whisper heard
    # it (the correction's ``original``), so "ten milligrams" lines up with "10 mg".
    base_words = [t for t in base if t.is_word]
    keys: list[str] = []
    owners: list[list[Token]] = []
    groups: dict[int, list[Token]] = {}
    for t in base_words:
        if t.corr is not None:
            if t.corr in groups:
                groups[t.corr].append(t)
                continue
            groups[t.corr] = [t]
            for w in (t.heard or "").split() or [t.text]:
                keys.append(_norm(w))
                owners.append(groups[t.corr])
        else:
            keys.append(_norm(t.text))
            owners.append([t])

    def _give(owner: list[Token], w: dict[str, Any]) -> None:
        for t in owner:
            if t.start is None:
                t.start = float(w.get("start", 0.0))
            t.end = max(t.end or 0.0, float(w.get("end", 0.0)))
            p = float(w.get("probability", 1.0))
            t.probability = p if t.probability is None else min(t.probability, p)

    for tag, a0, a1, b0, b1 in _opcodes([_norm(str(w.get("word", ""))) for w in heard_words],
                                         keys):
        if tag == "equal":
            for k in range(a1 - a0):
                _give(owners[b0 + k], heard_words[a0 + k])
        elif tag == "replace":
            # Unrecognised words: spread the heard run over the draft run in order.
            n_heard, n_keys = a1 - a0, b1 - b0
            for k in range(n_keys):
                _give(owners[b0 + k], heard_words[a0 + (k * n_heard) // n_keys])
    if text == base_text:
        tokens = base
    else:
        tokens = tokenize(text)
        words = [t for t in tokens if t.is_word]
        for tag, a0, a1, b0, b1 in _opcodes([_norm(t.text) for t in base_words],
                                             [_norm(t.text) for t in words]):
            if tag == "equal":
                for k in range(b1 - b0):
                    src, dst = base_words[a0 + k], words[b0 + k]
                    dst.start, dst.end, dst.probability = src.start, src.end, src.probability
                    dst.heard, dst.kind = src.heard, src.kind
            elif tag in ("replace", "insert"):
                for k in range(b1 - b0):
                    dst = words[b0 + k]
                    dst.edited = True
                    src_i = min(a0 + k, a1 - 1) if a1 > a0 else a0
                    if src_i < len(base_words):
                        dst.start = base_words[src_i].start
                        dst.end = base_words[src_i].end
    # Fill gaps with the previous word's time so every word can be clicked.
    last: float | None = None
    for t in tokens:
        if not t.is_word:
            continue
        if t.start is None:
            t.start = last
        else:
            last = t.start
    first_time = next((t.start for t in tokens if t.is_word and t.start is not None), 0.0)
    for t in tokens:
        if t.is_word and t.start is None:
            t.start = first_time
    return tokens


def word_diff(old: str, new: str) -> list[tuple[str, str]]:
    """Word-level diff of two texts as (op, text) pairs; op is equal, delete or insert."""
    a = tokenize(old)
    b = tokenize(new)
    sm = SequenceMatcher(None, [t.text for t in a], [t.text for t in b], autojunk=False)
    out: list[tuple[str, str]] = []
    for tag, a0, a1, b0, b1 in sm.get_opcodes():
        if tag == "equal":
            out.append(("equal", "".join(t.text for t in a[a0:a1])))
            continue
        if a1 > a0:
            out.append(("delete", "".join(t.text for t in a[a0:a1])))
        if b1 > b0:
            out.append(("insert", "".join(t.text for t in b[b0:b1])))
    return out


def words_html(tokens: list[Token]) -> Markup:
    """The editor's text as HTML: one ``<span class="w">`` per word with its audio time
    (``data-s``) and marks; whitespace as is. Every piece of text is escaped here (one pass
    in Python instead of a template loop: a 10-minute dictation has ~3,000 tokens)."""
    out: list[str] = []
    for t in tokens:
        if not t.is_word:
            out.append(str(escape(t.text)))
            continue
        cls = "w"
        if t.low:
            cls += " low"
        if t.heard is not None:
            cls += " corr"
        if t.edited:
            cls += " edited"
        title = ""
        if t.heard is not None and t.kind == "learned":  # pipeline.review.learned
            cls += " learned"
            title = (f' title="Learned from earlier corrections; Whisper heard: '
                     f'{escape(t.heard)}"')
        elif t.heard is not None:
            title = f' title="Whisper heard: {escape(t.heard)}"'
        elif t.low and t.probability is not None:
            title = f' title="Low confidence ({t.probability:.2f})"'
        out.append(f'<span class="{cls}" data-s="{(t.start or 0.0):.2f}"{title}>'
                   f"{escape(t.text)}</span>")
    return Markup("".join(out))  # every part was escaped above
