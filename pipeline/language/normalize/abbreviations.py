"""Abbreviation policy, prescription (sig) style, laterality/number review, casing."""

from __future__ import annotations

import re
from typing import ClassVar

from pipeline.language.normalize.compose import Transform
from pipeline.language.normalize.tokens import TextState, Tok, is_sentence_end, merge

__all__ = ["Titles", "AbbreviationPolicy", "SigStyle", "SafetyReview", "Casing", "SIG_PHRASES"]

_NUMBERISH = re.compile(r"\d")
_TITLE_WORDS = ("dr.", "mr.", "mrs.", "ms.")
#: Two-letter Do-Not-Use / ISMP entries that are also English words or common tokens: only
#: expanded right after a dose ("10 units SC").
_DOSE_CONTEXT_ONLY = {"U", "u", "IN", "AS", "AD", "AU", "BT", "SC", "SQ", "HS", "hs", "cc",
                      "c.c.", "MS", "ug", "qn"}

#: (English, Latin) pairs for prescriptions.
SIG_PHRASES: list[tuple[str, str]] = [
    ("by mouth", "p.o."),
    ("twice daily", "b.i.d."),
    ("twice a day", "b.i.d."),
    ("three times daily", "t.i.d."),
    ("three times a day", "t.i.d."),
    ("four times daily", "q.i.d."),
    ("four times a day", "q.i.d."),
    ("as needed", "p.r.n."),
    ("every 4 hours", "q.4h."),
    ("every 6 hours", "q.6h."),
    ("every 8 hours", "q.8h."),
    ("every 12 hours", "q.12h."),
    ("intravenously", "IV"),
    ("intramuscularly", "IM"),
    ("sublingually", "SL"),
    ("per rectum", "p.r."),
]
_LATIN_TOKENS = {
    "po": "by mouth", "p.o.": "by mouth", "bid": "twice daily", "b.i.d.": "twice daily",
    "tid": "three times daily", "t.i.d.": "three times daily", "qid": "four times daily",
    "q.i.d.": "four times daily", "prn": "as needed", "p.r.n.": "as needed",
}


def _low(t: Tok) -> str:
    return t.text.lower()


class SigStyle(Transform):
    """Prescription wording in the practice's style.

    ``latin_abbreviations=True``: "by mouth twice daily" -> "p.o. b.i.d."; otherwise Latin
    abbreviations Whisper wrote ("PO", "b.i.d.") become English. "Daily" is never "q.d."
    (Do-Not-Use list).
    """

    def process(self, state: TextState) -> TextState:
        latin = state.settings.latin_abbreviations
        toks = state.toks
        out: list[Tok] = []
        i = 0
        n = len(toks)
        phrases = [(e.split(), lat) for e, lat in SIG_PHRASES]
        while i < n:
            t = toks[i]
            if not t.is_word:
                out.append(t)
                i += 1
                continue
            if latin:
                hit = None
                for words, lat in phrases:
                    m = len(words)
                    seg = toks[i : i + m]
                    if len(seg) == m and all(s.is_word for s in seg) and [
                        s.text.lower() for s in seg
                    ] == words:
                        hit = (m, lat)
                        break
                if hit:
                    m, lat = hit
                    out.append(merge(toks[i : i + m], lat, "abbreviation", keep_case=True,
                                     protected=True))
                    i += m
                    continue
            else:
                eng = _LATIN_TOKENS.get(_low(t))
                # "PO"/"BID" are only sig words near a dose; "po" alone could be anything
                if eng and (t.text.isupper() or "." in t.text) and self._dose_near(out):
                    out.append(merge([t], eng, "abbreviation", protected=True))
                    i += 1
                    continue
            out.append(t)
            i += 1
        state.toks = out
        return state

    @staticmethod
    def _dose_near(out: list[Tok]) -> bool:
        for t in out[-4:]:
            if (
                t.change == "number"
                or _NUMBERISH.search(t.text)
                or t.text in _LATIN_TOKENS.values()
            ):
                return True
        return False


class AbbreviationPolicy(Transform):
    """Expand Do-Not-Use and ISMP abbreviations, optionally standard ones, flag ambiguous ones.

    "QD" -> "daily", "10 U" -> "10 units", "IU" -> "international units", "MSO4" ->
    "morphine sulfate". Standard abbreviations ("CBC") are kept unless
    ``expand_standard_abbreviations``. Ambiguous ones ("PT", "MS") not defined in the text
    ("prothrombin time (PT)") are flagged for review.
    """

    def process(self, state: TextState) -> TextState:
        index = state.index
        expand_std = state.settings.expand_standard_abbreviations
        out: list[Tok] = []
        for t in state.toks:
            if not t.is_word or t.kind == "heading":
                out.append(t)
                continue
            word = t.text
            dose_before = self._after_number(out)
            dnu = index.do_not_use.get(word)
            if dnu is not None and not t.keep_case:
                repl, _src = dnu
                if word not in _DOSE_CONTEXT_ONLY or dose_before:
                    if word == "MS" and not dose_before:
                        pass
                    else:
                        out.append(merge([t], repl, "abbreviation", protected=True))
                        continue
            # units glued to the number: "10U", "5cc"
            m = re.fullmatch(r"(\d+(?:\.\d+)?)(U|IU|cc)", word)
            if m:
                repl = {"U": "units", "IU": "international units", "cc": "mL"}[m.group(2)]
                out.append(merge([t], f"{m.group(1)} {repl}", "abbreviation", protected=True))
                continue
            if word in index.ambiguous and word not in state.defined_abbreviations:
                state.review(
                    "ambiguous_abbreviation", t,
                    f"Ambiguous abbreviation: {' or '.join(index.ambiguous[word])}.",
                )
            elif expand_std and word in index.standard and word.isupper():
                out.append(merge([t], index.standard[word], "abbreviation"))
                continue
            out.append(t)
        state.toks = out
        return state

    @staticmethod
    def _after_number(out: list[Tok]) -> bool:
        for t in reversed(out[-2:]):
            if t.is_word:
                return bool(re.match(r"^\d", t.text)) or t.change == "number"
        return False


class SafetyReview(Transform):
    """Send unsure laterality and numbers to review (never changed silently).

    A "left"/"right" or a number Whisper gave a low probability becomes a review item with its
    audio time, so the secretary listens to that spot.
    """

    def __init__(self, min_prob: float | None = None) -> None:
        #: None: ``state.options.review.unsure_prob`` (``ReviewOptions``)
        self.min_prob = min_prob

    def process(self, state: TextState) -> TextState:
        min_prob = self.min_prob if self.min_prob is not None else (
            state.options.review.unsure_prob)
        for t in state.toks:
            if not t.is_word or t.prob >= min_prob:
                continue
            low = t.text.lower()
            if re.search(r"\b(left|right|bilateral)\b", low):
                state.review("laterality", t, "Laterality uncertain in the recording.")
            elif _NUMBERISH.search(t.text):
                state.review("number", t, "Number uncertain in the recording.")
        return state


class Titles(Transform):
    """"Doctor Patel" -> "Dr. Patel"; the noun "follow up" -> "follow-up" ("in 2 weeks")."""

    _NOUN_BEFORE: ClassVar[set[str]] = {
        "for", "of", "a", "the", "at", "schedule", "routine", "arrange", "further", "close",
        "outpatient", "clinic", "her", "his", "their",
    }

    def process(self, state: TextState) -> TextState:
        toks = state.toks
        out: list[Tok] = []
        for i, t in enumerate(toks):
            if (
                t.is_word
                and t.text.lower() == "follow"
                and i + 1 < len(toks)
                and toks[i + 1].is_word
                and toks[i + 1].text.lower() == "up"
                and out
                and out[-1].is_word
                and out[-1].text.lower() in self._NOUN_BEFORE
            ):
                toks[i + 1] = merge([t, toks[i + 1]], t.text + "-up", "abbreviation")
                continue
            out.append(t)
        state.toks = toks = out
        for i, t in enumerate(toks[:-1]):
            nxt = toks[i + 1]
            if (
                t.is_word
                and t.text.lower() == "doctor"
                and nxt.is_word
                and nxt.text[:1].isupper()
                and nxt.text[1:].islower()
                and state.index.zipf(nxt.text) < state.options.review.title_name_zipf
            ):
                toks[i] = merge([t], "Dr.", "abbreviation", keep_case=True)
        return state


class Casing(Transform):
    """Sentence case and vocabulary spellings.

    The first word of the text, of a sentence, of a line and after a heading gets a capital;
    words Whisper capitalised only because of its own (dropped) sentence end lose it; terms
    the vocabulary spells with capitals get them ("vicryl" -> "Vicryl").
    """

    def process(self, state: TextState) -> TextState:
        index = state.index
        common = state.options.review.casing_zipf
        start = True
        prev: Tok | None = None
        for t in state.toks:
            if t.kind == "break" or t.kind == "heading":
                start = True
                prev = t
                continue
            if not t.is_word:
                if is_sentence_end(t):
                    start = True
                prev = t
                continue
            if not t.text:
                continue
            if not t.keep_case:
                display = index.display(t.text) if t.text.isalpha() else None
                if display and index.zipf(t.text) >= common and t.change != "term":
                    display = None  # "men" is a word, not "MEN" (multiple endocrine neoplasia)
                if display and display != display.lower() and t.text == t.text.lower():
                    t.text = display
                elif (
                    t.after_auto_stop
                    and not start
                    and t.text[:1].isupper()
                    and t.text[1:].islower()
                    and t.text != "I"
                    and index.zipf(t.text) >= common
                    and not (display and display != display.lower())
                    and not (prev is not None and prev.text.lower() in _TITLE_WORDS)
                ):
                    t.text = t.text.lower()
            if start and t.text[:1].islower() and not t.keep_case:
                t.text = t.text[:1].upper() + t.text[1:]
            start = False
            prev = t
        return state
