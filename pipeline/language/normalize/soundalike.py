"""Context-restricted sound-alike repair: misheard medical terms, also across word boundaries.

Whisper often turns a medical word it does not know into ordinary words that sound like it
("listen up to 20 mg" for lisinopril, "boop of the cane" for bupivacaine, "super patellar"
for suprapatellar, "tranecate" for tourniquet). Matched against the whole 100,000-word
vocabulary such guesses would turn ordinary speech into drug names, so this repair only
considers a small candidate set chosen by context:

- the document type's specialty lists and the physician's own words (``DOCUMENT_SPECIALTIES``);
- common drug names (``vocab/curated/common_drugs.txt``) only right before a dose
  ("... 20 mg", "... 1 gram") or right after a strength in percent ("1% ... with
  epinephrine");
- any vocabulary word, but only for two words joined into one that share the phonetic key
  of a medical word and are spelled almost the same ("super patellar" -> suprapatellar).

A window of one to three adjacent words is joined and compared with each candidate by
spelling and by phonetic key; the first sound must agree, the length must be close, and the
window must hold evidence of a mishearing (a word that is not ordinary English, or a word
Whisper was unsure of, or the dose position). Numbers, units, commands, laterality and
negations are never part of a window. Every repair is a ``Correction`` (kind ``term``) and
repairs made from ordinary English words go to review.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from rapidfuzz import fuzz

from pipeline.language.normalize.compose import Transform
from pipeline.language.normalize.options import SoundalikeOptions
from pipeline.language.normalize.tokens import TextState, Tok, merge
from pipeline.language.vocab import DOCUMENT_SPECIALTIES, VocabIndex, phonetic_key, read_tsv

__all__ = ["SoundAlikeRepair", "Candidate", "context_candidates", "window_score",
           "common_drugs", "DOSE_UNITS"]

#: Units that make the words before a number a drug name ("... 20 mg").
DOSE_UNITS = {"mg", "mcg", "g", "gram", "grams", "units", "unit", "mL", "ml", "mEq", "IU",
              "milligram", "milligrams", "microgram", "micrograms", "%", "percent"}
#: Never part of a window: sides, negations, grading, function words that carry meaning.
_STOP = {
    "left", "right", "bilateral", "no", "not", "none", "without", "negative", "positive",
    "normal", "abnormal", "mild", "moderate", "severe", "and", "or", "with", "the", "a", "an",
    "of", "to", "in", "on", "at", "for", "by", "is", "was", "were", "be", "he", "she", "they",
    "we", "i", "you", "it", "his", "her", "their", "this", "that", "mouth", "daily", "twice",
    "once", "every", "as", "needed", "start", "started", "continue", "stop", "stopped",
    "increase", "increased", "decrease", "decreased", "take", "takes", "taking", "dose",
}
#: Words that may sit inside a misheard window but never start or end it ("boop of the cane").
_INNER_OK = {"of", "the", "a", "to", "in", "on", "at", "or", "and", "is", "was", "are", "up",
             "for"}
_WORD = re.compile(r"^[A-Za-z][A-Za-z'\-]*$")
_NUMBER = re.compile(r"^\d+(?:[.,/]\d+)*$")
_VOWELISH = set("AEIOU")

log = logging.getLogger(__name__)

#: The thresholds (``SoundalikeOptions``) when a caller passes none.
_DEFAULTS = SoundalikeOptions()


@dataclass(frozen=True)
class Candidate:
    """A term that may be meant, with its comparison forms (computed once)."""

    display: str
    compact: str  # lower case letters only
    key: str  # phonetic key of ``compact``
    words: int  # number of words in the display form
    first: str = ""  # first sound of the key ("V" for a vowel)
    parts: tuple[str, ...] = ()  # word prefixes and suffixes of the term, compacted


def _compact(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


def _first_sound(key: str) -> str:
    return "V" if key and key[0] in _VOWELISH else key[:1]


def _candidate(term: str) -> Candidate:
    c = _compact(term)
    key = phonetic_key(c)
    ws = [_compact(w) for w in term.split()]
    parts = tuple(p for k in range(1, len(ws)) for p in ("".join(ws[:k]), "".join(ws[k:])))
    return Candidate(term, c, key, len(ws), _first_sound(key), parts)


@lru_cache(maxsize=4096)
def _without_first(compact: str) -> Candidate:
    """The candidate for a term less its first letter (a dropped first vowel)."""
    return _candidate(compact[1:])


_ENDINGS = ("", "s", "es", "ed", "d", "ly", "al", "ing", "ic")


def _part_of(h: str, cand: Candidate) -> bool:
    """``h`` is the term less some of its words, or the term with an ending added or dropped
    ("medication overuse" / "... headache", "unilaterally" / "unilateral")."""
    if h in cand.parts:
        return True
    c = cand.compact
    if c in h and len(h) - len(c) >= 3:
        return True  # the window holds the whole term and more ("... mattress suture")
    return any(h == c + e or c == h + e for e in _ENDINGS[1:])


def window_score(heard: str, cand: Candidate, options: SoundalikeOptions | None = None) -> float:
    """How well the joined words ``heard`` sound like ``cand`` (0-100); 0 when the first
    sound or the length disagree, or when the difference is a whole word or an ending.

    The score is the mean of two rapidfuzz ratios, on the spelling and on the phonetic key
    (``pipeline.language.vocab.phonetic_key``), in the spirit of the approximate matching of
    Zobel & Dart, "Phonetic string matching: lessons from information retrieval" (SIGIR 1996).

    >>> window_score("lidocane", _candidate("lidocaine")) > 80
    True
    >>> window_score("metro nida zole", _candidate("metronidazole"))  # the term in pieces
    100.0
    >>> window_score("nidocaine", _candidate("lidocaine"))  # the first sound must agree
    0.0
    >>> window_score("lidocaines", _candidate("lidocaine"))  # an ending, not a mishearing
    0.0
    >>> 85 <= window_score("buprofen", _candidate("ibuprofen")) < 100  # first vowel dropped
    True
    """
    h = _compact(heard)
    return _score(h, phonetic_key(h) if h else "", cand, 0.0, options or _DEFAULTS)


def _score(
    h: str, hk: str, cand: Candidate, cutoff: float = 0.0, opts: SoundalikeOptions = _DEFAULTS
) -> float:
    """``window_score`` with the heard forms precomputed; below ``cutoff`` may return 0."""
    if not h or not cand.compact:
        return 0.0
    if abs(len(h) - len(cand.compact)) > max(opts.length_slack,
                                             int(len(cand.compact) * opts.length_tolerance)):
        return 0.0
    if h == cand.compact:
        return 100.0  # the term split into pieces ("metro nida zole")
    if _first_sound(hk) != cand.first:
        # Whisper drops an unstressed first vowel ("buprofen" for ibuprofen): compare with
        # the term less that vowel, a little lower than a match in full
        rest = cand.compact[1:]
        if (cand.first == "V" and len(rest) >= 5 and h[:2] == rest[:2]
                and abs(len(h) - len(rest)) <= 1):
            penalty = opts.vowel_drop_penalty
            return max(0.0, _score(h, hk, _without_first(cand.compact), cutoff + penalty,
                                   opts) - penalty)
        return 0.0
    # the mean of two ratios reaches the cutoff only if the spelling ratio reaches 2c - 100
    r1 = fuzz.ratio(h, cand.compact, score_cutoff=max(0.0, 2 * cutoff - 100))
    if cutoff and r1 == 0:
        return 0.0
    score = (r1 + fuzz.ratio(hk, cand.key)) / 2.0
    if score < cutoff or _part_of(h, cand):
        return 0.0  # _part_of: an added or dropped word or ending, not a mishearing
    return score


@lru_cache(maxsize=4)
def common_drugs(vocab_dir: Path) -> tuple[Candidate, ...]:
    """The curated common-drug list as candidates (empty when the file is missing)."""
    path = vocab_dir / "curated" / "common_drugs.txt"
    if not path.exists():
        return ()
    return tuple(_candidate(r[0].strip()) for r in read_tsv(path) if r[0].strip())


@lru_cache(maxsize=4)
def _all_curated(index: VocabIndex, vocab_dir: Path) -> tuple[Candidate, ...]:
    out: dict[str, Candidate] = {}
    for terms in index.specialty.values():
        for t in terms:
            out.setdefault(_compact(t), _candidate(t))
    for c in common_drugs(vocab_dir):
        out.setdefault(c.compact, c)
    return tuple(out.values())


@lru_cache(maxsize=64)
def _mined_candidates(
    index: VocabIndex, document_type: str, named: tuple[str, ...] = ()
) -> tuple[Candidate, ...]:
    """Terms mined from real reports of the document type's specialties and of those the
    text names (not curated): tried only for a word that is not English at all, and only
    when no curated term fits."""
    out: dict[str, Candidate] = {}
    names = tuple(dict.fromkeys(DOCUMENT_SPECIALTIES.get(document_type, ()) + named))
    curated = {_compact(t) for n in names for t in index.specialty.get(n, [])}
    for name in names:
        for t in getattr(index, "specialty_mined", {}).get(name, []):
            c = _compact(t)
            if c and c not in curated:
                out.setdefault(c, _candidate(t))
    return tuple(out.values())


@lru_cache(maxsize=64)
def _specialty_candidates(index: VocabIndex, document_type: str) -> tuple[Candidate, ...]:
    out: dict[str, Candidate] = {}
    for name in DOCUMENT_SPECIALTIES.get(document_type, ()):
        for t in index.specialty.get(name, []):
            out.setdefault(_compact(t), _candidate(t))
    return tuple(out.values())


#: A specialty the dictation names ("referred to neurology") joins the context.
SPECIALTY_CUES = {
    "neurology": "neurology", "neurologist": "neurology", "neurological": "neurology",
    "cardiology": "cardiology", "cardiologist": "cardiology",
    "orthopedic": "orthopedics", "orthopedics": "orthopedics", "orthopaedic": "orthopedics",
    "ophthalmology": "ophthalmology", "ophthalmologist": "ophthalmology",
    "radiology": "radiology", "radiologist": "radiology",
    "surgery": "general_surgery", "surgeon": "general_surgery",
    "urology": "urology", "urologist": "urology", "urological": "urology",
    "gastroenterology": "gastroenterology", "gastroenterologist": "gastroenterology",
    "endoscopy": "gastroenterology", "colonoscopy": "gastroenterology",
    "dermatology": "dermatology", "dermatologist": "dermatology",
    "gynecology": "obgyn", "gynecologist": "obgyn", "obstetrics": "obgyn",
    "otolaryngology": "ent", "otolaryngologist": "ent",
}


@lru_cache(maxsize=64)
def _named_specialty(index: VocabIndex, name: str) -> tuple[Candidate, ...]:
    return tuple(_candidate(t) for t in index.specialty.get(name, []))


def context_candidates(
    index: VocabIndex,
    document_type: str | None,
    physician_terms: list[str],
    named: set[str] | frozenset[str] = frozenset(),
) -> list[Candidate]:
    """The specialty and physician terms that this dictation's context allows: the
    document type's lists, lists of specialties the text names, the physician's words."""
    cands = list(_specialty_candidates(index, document_type or ""))
    for name in sorted(named - set(DOCUMENT_SPECIALTIES.get(document_type or "", ()))):
        cands += _named_specialty(index, name)
    cands += [_candidate(t) for t in physician_terms if _compact(t)]
    return cands


Buckets = dict[int, list[Candidate]]


def _buckets(cands: list[Candidate] | tuple[Candidate, ...]) -> Buckets:
    """Candidates by the length of their compact form (most lengths are never compared)."""
    out: Buckets = {}
    for c in cands:
        out.setdefault(len(c.compact), []).append(c)
    return out


def _near(buckets: Buckets, n: int, opts: SoundalikeOptions = _DEFAULTS) -> list[Candidate]:
    """Candidates whose length is close enough to ``n`` letters for ``_score``."""
    out: list[Candidate] = []
    tol, slack = opts.length_tolerance, opts.length_slack
    for lc in range(max(1, int(n / (1 + tol)) - 1), int(n / (1 - tol)) + 2):
        if lc in buckets and abs(n - lc) <= max(slack, int(lc * tol)):
            out += buckets[lc]
    return out


def _plain(t: Tok) -> bool:
    return t.is_word and not t.protected and t.change is None and bool(_WORD.match(t.text))


class SoundAlikeRepair(Transform):
    """Repair one to four words that sound like a term the context allows.

    Thresholds come from ``state.options.soundalike`` (``SoundalikeOptions``); each repair
    and each guard that vetoes a match is logged at DEBUG with token positions and scores.

    >>> SoundAlikeRepair().on_text("roast uvastatin 10 mg daily",
    ...                            document_type="progress_note")
    'rosuvastatin 10 mg daily'
    >>> SoundAlikeRepair().on_text("super patellar pouch", document_type="operative_report")
    'suprapatellar pouch'
    >>> SoundAlikeRepair().on_text("she spoke with a teacher", document_type="progress_note")
    'she spoke with a teacher'
    >>> SoundAlikeRepair().on_text("roast uvastatin 10 mg daily")  # no context: no repair
    'roast uvastatin 10 mg daily'
    """

    def process(self, state: TextState) -> TextState:
        toks = state.toks
        if not any(t.is_word for t in toks):
            return state
        opts = state.options.soundalike
        index = state.index
        named = {SPECIALTY_CUES[t.low] for t in toks if t.low in SPECIALTY_CUES}
        ctx = context_candidates(index, state.document_type, state.physician_terms,
                                 named if state.document_type else frozenset())
        medical = bool(state.document_type or state.physician_terms)
        vocab_dir = Path(state.settings.vocab_dir).resolve()
        drugs = common_drugs(vocab_dir) if medical else ()
        wide = _all_curated(index, vocab_dir) if medical else ()
        ctx_b, drugs_b, wide_b = _buckets(ctx), _buckets(drugs), _buckets(wide)
        mined_b = _buckets(_mined_candidates(
            index, state.document_type or "",
            tuple(sorted(named)) if state.document_type else ()))
        out: list[Tok] = []
        i = 0
        n = len(toks)
        while i < n:
            best = self._best_at(toks, i, index, ctx_b, drugs_b, wide_b, mined_b, opts)
            if best is None:
                out.append(toks[i])
                i += 1
                continue
            j, cand, score, review = best
            log.debug("soundalike repair tokens=%d-%d words=%d score=%.1f from_english=%s",
                      i, j, j - i, score, review)
            new = merge(toks[i:j], cand.display, "term", score=score / 100.0,
                        keep_case=cand.display != cand.display.lower())
            out.append(new)
            if cand.display.lower() in index.drugs:
                # a wrong drug is a patient-safety error: every drug repair is checked
                state.review("term", new, "Drug name repaired from words that sound alike; "
                             "check it against the audio.", original=new.orig)
            elif review:
                state.review("term", new, "Medical term repaired from words that sound "
                             "alike; check it.", original=new.orig)
            i = j
        state.toks = out
        return state

    def _best_at(
        self,
        toks: list[Tok],
        i: int,
        index: VocabIndex,
        ctx: Buckets,
        drugs: Buckets,
        wide: Buckets,
        mined: Buckets | None = None,
        opts: SoundalikeOptions = _DEFAULTS,
    ) -> tuple[int, Candidate, float, bool] | None:
        """The best repair of a window starting at token ``i``: (end, term, score, review)."""
        first = toks[i]
        if not _plain(first) or (first.low in _STOP and first.low != "a") or (
                first.low in _INNER_OK and first.low != "a"):
            return None  # "a" may start one: Whisper hears "a federal" for afebrile
        best: tuple[int, Candidate, float, bool] | None = None
        words: list[Tok] = []
        j = i
        while j < len(toks) and len(words) < opts.max_window:
            t = toks[j]
            if not _plain(t):
                break
            if t.low in _STOP and t.low not in _INNER_OK:
                break
            words.append(t)
            j += 1
            found = self._score_window(toks, i, j, words, index, ctx, drugs, wide, mined, opts)
            if found is not None and len(words) > 1 and not _edges_agree(words, found[0], opts):
                # "medication overuse may" is not "... overuse headache"
                log.debug("soundalike veto=edges tokens=%d-%d score=%.1f edge_min=%.0f",
                          i, j, found[1], opts.edge_min)
                found = None
            if found is not None and len(words) > 1 and _swallows(words, found[0], index, opts):
                # "trucker was" is not "trocars": Whisper was sure of "was"
                log.debug("soundalike veto=swallow tokens=%d-%d score=%.1f prob>=%.2f "
                          "zipf>=%.1f", i, j, found[1], opts.doubt_prob, opts.common_zipf)
                found = None
            if found is not None and (best is None or found[1] > best[2]):
                best = (j, found[0], found[1], found[2])
        return best

    def _score_window(
        self,
        toks: list[Tok],
        i: int,
        j: int,
        words: list[Tok],
        index: VocabIndex,
        ctx: Buckets,
        drugs: Buckets,
        wide: Buckets,
        mined: Buckets | None = None,
        opts: SoundalikeOptions = _DEFAULTS,
    ) -> tuple[Candidate, float, bool] | None:
        """The best term for the window ``toks[i:j]`` (its words ``words``): (term, score,
        review) or None. The tiers, each with its own threshold, are tried in order."""
        lows = [w.low for w in words]
        heard = "".join(lows)
        if len(heard) < opts.min_letters:
            return None
        if len(words) == 1 and index.is_medical(lows[0]):
            return None  # already a medical word
        if all(index.is_medical(w) for w in lows if w not in _INNER_OK):
            # two medical words that are one compound split apart ("patella femoral")
            return _joined(index, words, opts) if len(words) == 2 else None
        unknown = any(index.zipf(w) < opts.english_zipf and not index.is_medical(w)
                      for w in lows if w not in _INNER_OK)
        unsure = any(w.prob < opts.unsure_prob for w in words)
        hk = phonetic_key(heard)
        doubt = unknown or min(w.prob for w in words) < opts.doubt_prob
        n_heard = len(heard)
        best: tuple[Candidate, float, bool] | None = None
        # 1. a common drug right before a dose or after a strength in percent
        if drugs and doubt and (_dose_after(toks, j) or _percent_before(toks, i)):
            need = opts.dose_min
            for cand in _near(drugs, n_heard, opts):
                if cand.compact == heard and len(words) == 1:
                    return None
                s = _score(heard, hk, cand, need, opts)
                if s >= need and (best is None or s > best[1]):
                    best = (cand, s, not unknown)
        # 2. a specialty or physician term, with evidence of a mishearing (a lone English
        # word is never enough: "roads" is not "radius")
        if unknown or (unsure and len(words) > 1):
            need = opts.context_min if unknown else opts.context_min + opts.unsure_extra
            for cand in _near(ctx, n_heard, opts):
                if cand.compact == heard and len(words) == 1:
                    return None
                s = _score(heard, hk, cand, need, opts)
                if s >= need and (best is None or s > best[1]):
                    best = (cand, s, not unknown)
        # 2b. a term mined from real reports of this specialty, when a word is not English
        # at all and no curated term fits (stricter: these lists are long)
        if best is None and unknown and mined:
            need = opts.mined_min
            for cand in _near(mined, n_heard, opts):
                s = _score(heard, hk, cand, need, opts)
                if s >= need and (best is None or s > best[1]):
                    best = (cand, s, True)
        # 3. any curated term, when a word of the window is not English at all
        if unknown and wide:
            need = opts.wide_min
            for cand in _near(wide, n_heard, opts):
                s = _score(heard, hk, cand, need, opts)
                if s >= need and (best is None or s > best[1]):
                    best = (cand, s, False)
        if best is not None and lows[0] == "a" and (
                len(words) == 1 or not best[0].compact.startswith("a")):
            # the article is only part of a term that starts with its sound
            log.debug("soundalike veto=article tokens=%d-%d score=%.1f", i, j, best[1])
            return None
        # 4. two words that are one medical word split apart ("super patellar")
        if best is None and len(words) == 2 and (unknown or unsure or n_heard >= 10):
            best = _joined(index, words, opts)
        if best is not None and len(words) > 1 and index.spelled_by_chance(lows,
                                                                           best[0].compact):
            # "or if" is not ORIF
            log.debug("soundalike veto=chance_spelling tokens=%d-%d score=%.1f", i, j, best[1])
            return None
        return best


_DOSE = re.compile(
    r"^\d+(?:[.,/]\d+)*\s*(?:mg|mcg|g|gram|grams|units?|mL|ml|mEq|IU|%|percent|"
    r"milligrams?|micrograms?)(?:/\w+)?$"
)
_STRENGTH = re.compile(r"^\d+(?:\.\d+)?\s*(?:%|percent)$")


def _joined(
    index: VocabIndex, words: list[Tok], opts: SoundalikeOptions = _DEFAULTS
) -> tuple[Candidate, float, bool] | None:
    """Two words that are one medical word with the same phonetic key, spelled almost the
    same ("super patellar" -> suprapatellar, "patella femoral" -> patellofemoral)."""
    heard = "".join(w.low for w in words)
    if any(w.low in _INNER_OK for w in words):
        return None
    key = phonetic_key(heard)
    best: tuple[Candidate, float, bool] | None = None
    for w in index.phonetic.get(key, ()):
        if not index.is_medical(w) or index.zipf(w) >= opts.english_zipf or not w.isalpha():
            continue  # "blood-pressure" is a spelling of the same two words
        s = fuzz.ratio(heard, w)
        if s >= opts.join_min and (best is None or s > best[1]):
            best = (Candidate(index.display(w) or w, w, key, 1), s, False)
    return best


def _swallows(
    words: list[Tok], cand: Candidate, index: VocabIndex, opts: SoundalikeOptions = _DEFAULTS
) -> bool:
    """The window begins or ends with a common English word Whisper was sure of that is not
    a word of the term: that word is what was said, not part of a misheard term."""
    for tok in (words[0], words[-1]):
        if (tok.prob >= opts.doubt_prob and index.zipf(tok.low) >= opts.common_zipf
                and fuzz.partial_ratio(_compact(tok.text), cand.compact)
                < opts.swallow_partial_max):
            return True
    return False


def _edges_agree(
    words: list[Tok], cand: Candidate, opts: SoundalikeOptions = _DEFAULTS
) -> bool:
    """The first and last words of a window must sound like the start and end of the term,
    so that a window never swallows a neighbouring word ("propranol was").

    >>> _edges_agree([Tok("propranol"), Tok("was")], _candidate("propranolol"))
    False
    >>> _edges_agree([Tok("super"), Tok("patellar")], _candidate("suprapatellar"))
    True
    """
    first, last = _compact(words[0].text), _compact(words[-1].text)
    head, tail = cand.compact[: len(first)], cand.compact[-len(last):] if last else ""
    return (fuzz.ratio(first, head) >= opts.edge_min and fuzz.ratio(last, tail) >= opts.edge_min
            and not (len(words) > 2 and _compact(words[-2].text + words[-1].text)
                     not in cand.compact and fuzz.ratio(last, tail) < opts.edge_long_min))


#: A mass unit on its own also marks a dose whose number Whisper lost ("septryoxone gram
#: intravenously"); "units" and "percent" alone do not ("the unit", "percent of").
_BARE_DOSE_UNITS = {"mg", "mcg", "gram", "grams", "milligram", "milligrams", "microgram",
                    "micrograms"}


def _dose_after(toks: list[Tok], j: int) -> bool:
    """A dose follows position ``j`` ("... 20 mg", "... 1 gram", "... gram")."""
    if j >= len(toks):
        return False
    if _DOSE.match(toks[j].text) or toks[j].low in _BARE_DOSE_UNITS:
        return True
    return bool(_NUMBER.match(toks[j].text) and j + 1 < len(toks)
                and toks[j + 1].text in DOSE_UNITS)


def _percent_before(toks: list[Tok], i: int) -> bool:
    """A strength in percent precedes position ``i`` ("1% ...", "0.25 percent ...")."""
    if i < 1:
        return False
    prev = toks[i - 1].text
    return bool(_STRENGTH.match(prev)) or (prev in ("%", "percent") and i >= 2
                                          and _NUMBER.match(toks[i - 2].text) is not None)
