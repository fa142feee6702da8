"""Learned corrections: a misheard phrase a reviewer replaced twice for the same physician is
replaced in that physician's next drafts, recorded and marked for review.

Issue #15, section 5: between trainings of the speech model, what reviewers keep fixing
should not have to be fixed again. Signing records each word-level substitution
(``pipeline.review.learning``); the service reads the physician's repeated ones
(``pipeline.review.learned.learned_pairs``) and hands them to this stage as data
(``LearnedPair``), the way auto-texts are handed in: the language stage never reads the
database.

Only mishearings are applied, never edits of meaning or style (``refusal`` says why a pair is
left out):

- nothing that touches a dose or a side: a pair whose original or replacement holds a digit,
  a number word, a unit, a frequency ("twice daily", "b.i.d."), a side word (left, right,
  bilateral) or a negation is never applied (Joint Commission Universal Protocol: sides are
  verified, never guessed; ISMP: doses are never rewritten by a machine);
- the replacement must bring a known medical word (a drug, a procedure, a condition: the
  vocabulary's medical words, drugs and phrases);
- the original must not itself be a drug, an abbreviation or a medical term (replacing one
  real term by another is a clinical decision, "hypertension" -> hypotension), nor a single
  common English word (it would be rewritten everywhere);
- the two must sound alike (``LearnedOptions.sound_min``): "sealer cyst" -> cholecystitis is
  a mishearing, "belly" -> abdomen a style edit;
- an original learned with two different replacements is ambiguous and not applied.

Each replacement is a ``Correction`` of kind ``learned`` (the editor marks it and offers to
restore the original), a review item, and the note's ``learned_correction`` flag. Matching is
on whole words and ignores case; the replacement takes the vocabulary's spelling.

    >>> from pipeline.language.normalize.tokens import from_text, render
    >>> from pipeline.language.vocab import VocabIndex
    >>> index = VocabIndex(words={"cholecystitis"}, medical={"cholecystitis"})
    >>> state = _State(from_text("Acute sealer cyst. Sealer cysts are rare."), index,
    ...                [LearnedPair("sealer cyst", "cholecystitis", 2)])
    >>> text, corrections = render(LearnedCorrections().process(state).toks)
    >>> text
    'Acute cholecystitis. Sealer cysts are rare.'
    >>> corrections[0].kind, corrections[0].original, corrections[0].replacement
    ('learned', 'sealer cyst', 'cholecystitis')
    >>> refusal(LearnedPair("left knee", "right knee", 5), index)
    'side'
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz import fuzz

from pipeline.language.normalize.abbreviations import SIG_PHRASES
from pipeline.language.normalize.compose import Transform
from pipeline.language.normalize.options import LanguageOptions, LearnedOptions
from pipeline.language.normalize.soundalike import DOSE_UNITS
from pipeline.language.normalize.tokens import TextState, Tok, merge
from pipeline.language.spoken_numbers import DIGIT_WORDS, NUMBER_WORDS, ORDINALS, is_number_word
from pipeline.language.vocab import VocabIndex, phonetic_key

__all__ = ["LearnedPair", "LearnedCorrections", "refusal", "usable_pairs", "sound_score",
           "FLAG", "KIND"]

log = logging.getLogger(__name__)

#: The ``Correction.kind`` of a learned change (the editor's undo looks for it).
KIND = "learned"
#: The note flag set when any learned change was made.
FLAG = "learned_correction"

_DEFAULTS = LearnedOptions()

#: Side words (Joint Commission Universal Protocol: a side is verified, never guessed).
_SIDES = frozenset({"left", "right", "bilateral", "bilaterally", "unilateral", "unilaterally",
                    "l", "r", "lt", "rt", "contralateral", "ipsilateral", "both"})
#: How often and how a drug is taken: part of the dose (ISMP), with the Latin sig forms.
_FREQUENCY = frozenset(
    {"daily", "once", "twice", "thrice", "nightly", "weekly", "monthly", "hourly", "every",
     "hour", "hours", "day", "days", "week", "weeks", "times", "bedtime", "qd", "qod", "qhs",
     "hs", "bid", "tid", "qid", "prn", "needed", "dose", "doses", "tablet", "tablets",
     "capsule", "capsules", "puff", "puffs", "drop", "drops", "cc", "iu", "half", "quarter",
     "dozen"}
    | {latin.lower().replace(".", "") for _english, latin in SIG_PHRASES}
)
_NEGATIONS = frozenset({"no", "not", "none", "without", "negative", "positive", "denies",
                        "denied", "never", "nor"})
_Q_HOURS = re.compile(r"^q\d+h$")


def _plain(text: str) -> bool:
    """Letters (any script), apostrophes, hyphens and spaces only: no digits, %, /, ".",
    or other symbols (a dose is written with them)."""
    return bool(text) and text[0].isalpha() and all(ch.isalpha() or ch in " '-" for ch in text)


@dataclass(frozen=True)
class LearnedPair:
    """A replacement a reviewer made repeatedly for one physician: the words as drafted
    (``original``), as signed (``replacement``), and how often (net of undoes)."""

    original: str
    replacement: str
    count: int = 0


def _words(text: str) -> list[str]:
    return [w.strip(".,;:!?\"()[]").lower() for w in text.split() if w.strip(".,;:!?\"()[]")]


def _compact(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


def sound_score(original: str, replacement: str) -> float:
    """How much ``original`` sounds like ``replacement`` (0-100): the mean of the rapidfuzz
    ratios of the spelling and of the phonetic key, the measure of
    ``soundalike.window_score`` without its first-sound and length gates (the reviewer
    already chose the term).

    >>> sound_score("vicar ill", "Vicryl") > 80
    True
    >>> sound_score("belly", "abdomen") < 40
    True
    """
    a, b = _compact(original), _compact(replacement)
    if not a or not b:
        return 0.0
    return (fuzz.ratio(a, b) + fuzz.ratio(phonetic_key(a), phonetic_key(b))) / 2.0


#: Words of multi-word unit names that are not units themselves ("millimeters of mercury").
_UNIT_GLUE = frozenset({"of", "per", "a", "the"})


def _unit_words(index: VocabIndex) -> set[str]:
    """Every word of a unit name the vocabulary knows (``vocab/curated/units.tsv``) and the
    dose units of the sound-alike repair."""
    units = {u.lower() for u in DOSE_UNITS}
    for spoken, (written, _kind) in index.units.items():
        units.update(spoken.lower().split())
        units.update(written.lower().split())
    return units - _UNIT_GLUE


def _dose_or_side(words: list[str], units: set[str]) -> str | None:
    for w in words:
        bare = w.replace("-", " ").split() or [w]
        for part in (p.replace(".", "") or p for p in bare):
            if part in _SIDES:
                return "side"
            if (part in NUMBER_WORDS or part in ORDINALS or part in DIGIT_WORDS
                    or is_number_word(part)):
                return "number"
            if part in units:
                return "unit"
            if part in _FREQUENCY or _Q_HOURS.match(part):
                return "frequency"
            if part in _NEGATIONS:
                return "negation"
    return None


def _is_medical_word(word: str, index: VocabIndex) -> bool:
    return index.is_medical(word) or word in index.drugs


def refusal(pair: LearnedPair, index: VocabIndex, options: LearnedOptions | None = None,
            *, units: set[str] | None = None) -> str | None:
    """Why ``pair`` is never applied (``number``, ``unit``, ``frequency``, ``side``,
    ``negation``, ``symbols``, ``too_long``, ``style``, ``not_medical``, ``drug_original``,
    ``term_original``, ``abbreviation``, ``common_word``, ``not_soundalike``), or None when
    it is a mishearing that may be applied.

        >>> from pipeline.language.vocab import VocabIndex
        >>> index = VocabIndex(medical={"cholecystitis"})
        >>> refusal(LearnedPair("sealer cyst", "cholecystitis", 2), index) is None
        True
        >>> refusal(LearnedPair("ten", "two", 2), index)
        'number'
        >>> refusal(LearnedPair("twice daily", "b.i.d.", 2), index)
        'frequency'
    """
    opts = options or _DEFAULTS
    original, replacement = pair.original.strip(), pair.replacement.strip()
    o_words, r_words = _words(original), _words(replacement)
    if not o_words or not r_words:
        return "style"
    if any(ch.isdigit() for ch in original + replacement):
        return "number"
    reason = _dose_or_side(o_words + r_words, units if units is not None else _unit_words(index))
    if reason:
        return reason
    if not (_plain(original) and _plain(replacement)):
        return "symbols"
    if len(o_words) > opts.max_words or len(r_words) > opts.max_words:
        return "too_long"
    if _compact(original) == _compact(replacement):
        return "style"  # case, spacing or hyphens only (the term repairs join split words)
    new_words = [w for w in r_words if w not in o_words]
    phrase = " ".join(r_words)
    if not (phrase in index.phrases or any(_is_medical_word(w, index) for w in new_words)):
        return "not_medical"
    if any(w in index.drugs for w in o_words):
        return "drug_original"  # one drug for another: ISMP look-alike/sound-alike pairs
    if len(o_words) == 1:
        token = original.strip(".,;:!?\"()[]")
        if (token in index.abbreviations or token.upper() in index.abbreviations
                or token in index.standard or token.upper() in index.standard
                or token in index.do_not_use):
            return "abbreviation"
        if index.is_medical(o_words[0]):
            return "term_original"
        if index.zipf(o_words[0]) >= opts.single_word_max_zipf:
            return "common_word"
    elif " ".join(o_words) in index.phrases:
        return "term_original"
    if sound_score(original, replacement) < opts.sound_min:
        return "not_soundalike"
    return None


def usable_pairs(pairs: list[LearnedPair], index: VocabIndex,
                 options: LearnedOptions | None = None) -> tuple[list[LearnedPair], Counter[str]]:
    """The pairs that may be applied (longest original first) and the count of refusal
    reasons of the others. A pair seen fewer than ``min_count`` times is ``too_rare``; an
    original learned with two replacements is ``ambiguous`` (neither is applied)."""
    opts = options or _DEFAULTS
    units = _unit_words(index)
    refused: Counter[str] = Counter()
    frequent: list[LearnedPair] = []
    for pair in pairs[: opts.max_pairs]:
        if pair.count < opts.min_count:
            refused["too_rare"] += 1
        else:
            frequent.append(pair)
    # reviewers who wrote two different terms for the same words disagree: neither is applied
    meant: dict[str, set[str]] = {}
    for pair in frequent:
        meant.setdefault(" ".join(_words(pair.original)), set()).add(_compact(pair.replacement))
    kept: dict[str, LearnedPair] = {}
    for pair in frequent:
        key = " ".join(_words(pair.original))
        reason = "ambiguous" if len(meant[key]) > 1 else refusal(pair, index, opts, units=units)
        if reason:
            refused[reason] += 1
        elif key not in kept:
            kept[key] = pair
    ordered = sorted(kept.values(), key=lambda p: (-len(_words(p.original)), -p.count))
    return ordered, refused


def _spelling(replacement: str, index: VocabIndex) -> str:
    """The replacement in the vocabulary's spelling ("vicryl" -> "Vicryl"), word by word;
    unknown words as the reviewer typed them, a lone leading capital (sentence start)
    dropped for a known word so that casing is decided where the word lands."""
    out: list[str] = []
    for word in replacement.split():
        display = index.display(word) if word.lower() in index.words else None
        out.append(display if display is not None else word)
    phrase = index.phrases.get(" ".join(w.lower() for w in out))
    return phrase or " ".join(out)


@dataclass
class _State:
    """The fields the transform reads (the doctest's stand-in for ``TextState``)."""

    toks: list[Tok]
    index: VocabIndex
    learned: list[LearnedPair] = field(default_factory=list)
    options: LanguageOptions = field(default_factory=LanguageOptions)
    physician_id: str | None = None
    flags: list[str] = field(default_factory=list)
    review_items: list[dict[str, Any]] = field(default_factory=list)

    def review(self, kind: str, tok: Tok, message: str, **extra: Any) -> None:
        self.review_items.append({"kind": kind, "text": tok.text, "message": message, **extra})


def _matchable(tok: Tok) -> bool:
    return tok.is_word and not tok.protected and bool(tok.text)


class LearnedCorrections(Transform):
    """Replace the physician's learned misheard phrases (``TextState.learned``, handed in by
    the service) with the term reviewers wrote, as a recorded, reviewable change.

    Runs after the built-in term repairs, so a phrase the vocabulary already repairs is left
    to them; only whole consecutive words match (punctuation between them breaks a match)."""

    def process(self, state: TextState) -> TextState:
        offered: list[LearnedPair] = list(getattr(state, "learned", None) or [])
        if not offered:
            return state
        opts = state.options.learned
        pairs, refused = usable_pairs(offered, state.index, opts)
        applied = 0
        if pairs:
            by_first: dict[str, list[tuple[list[str], LearnedPair]]] = {}
            for p in pairs:
                words = _words(p.original)
                by_first.setdefault(words[0], []).append((words, p))
            toks = state.toks
            out: list[Tok] = []
            i = 0
            while i < len(toks):
                t = toks[i]
                hit = None
                if _matchable(t):
                    for words, p in by_first.get(t.text.lower(), ()):
                        span = toks[i : i + len(words)]
                        if len(span) == len(words) and all(
                            _matchable(s) and s.text.lower() == w for s, w in zip(span, words,
                                                                                  strict=True)
                        ):
                            hit = (span, p)
                            break
                if hit is None:
                    out.append(t)
                    i += 1
                    continue
                span, p = hit
                tok = merge(span, _spelling(p.replacement, state.index), KIND, protected=True)
                out.append(tok)
                state.review(KIND, tok, "Changed from this physician's earlier corrections "
                             f"(made {p.count} times): check it.",
                             original=tok.orig, replacement=tok.text, count=p.count)
                applied += 1
                i += len(span)
            state.toks = out
        if applied and FLAG not in state.flags:
            state.flags.append(FLAG)
        log.info("learned corrections physician=%s offered=%d usable=%d applied=%d refused=%s",
                 state.physician_id, len(offered), len(pairs), applied, dict(refused))
        return state
