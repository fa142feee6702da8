"""Repair misrecognised medical words with a spaCy pipeline (scispaCy tokenizer + our component).

The pipeline is ``spacy.blank("en")`` with scispaCy's ``combined_rule_tokenizer`` (keeps "s/p",
"L4-L5" whole), scispaCy's ``AbbreviationDetector`` (abbreviations defined in the text as
"long form (SHORT)"), and our ``medical_term_corrector`` component, which proposes repairs:

- known Whisper confusions in their context ("trucker" -> "trocar" in a surgical dictation,
  "various needle" -> "Veress needle", a suture material after "4-0");
- words Whisper split ("chole cystitis" -> "cholecystitis");
- unknown words whose phonetic key and spelling match a vocabulary term
  ("cholisestitis" -> "cholecystitis");
- ordinary English words only when Whisper was unsure of them (low word probability), the
  dictation is medical, and a curated term sounds the same.

Numbers, units, commands and laterality (left/right) are never touched. Each repair carries
its score; repairs into drug names go to review.
"""

from __future__ import annotations

import logging
import re
import warnings
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from rapidfuzz import fuzz, process

from pipeline.language.normalize.compose import Transform
from pipeline.language.normalize.options import TermOptions
from pipeline.language.normalize.tokens import TextState, Tok, merge
from pipeline.language.spacy_import import spacy  # imported without torch: see there
from pipeline.language.vocab import VocabIndex, _cached_index, phonetic_key

Language = spacy.language.Language
Doc = spacy.tokens.Doc

__all__ = [
    "TermCorrection",
    "MedicalTermCorrector",
    "Fix",
    "get_nlp",
    "best_candidate",
    "SURGICAL_CUES",
]

log = logging.getLogger(__name__)

SURGICAL_CUES = {
    "incision", "incisions", "trocar", "trocars", "laparoscopic", "laparoscope", "port",
    "ports", "fascia", "suture", "sutures", "prepped", "draped", "anesthesia", "dissection",
    "dissected", "umbilicus", "umbilical", "insufflated", "insufflation", "operative",
    "operating", "surgeon", "retracted", "cautery", "electrocautery", "hemostasis", "scalpel",
    "closed", "specimen", "gallbladder", "abdomen", "peritoneum", "stapler", "mesh",
}
_NEVER = {
    "left", "right", "bilateral", "no", "not", "none", "without", "negative", "positive",
    "normal", "abnormal", "mild", "moderate", "severe",
}
_SUTURE_SIZE = re.compile(r"^\d-0$")
_MEDICAL_PREFIX = re.compile(
    r"^(hyper|hypo|peri|intra|extra|sub|trans|post|pre|non|anti|endo|para|retro|supra|infra|"
    r"inter|multi|poly|micro|macro|pseudo|neo|de|re|un)"
)
_SUTURE_BEFORE = re.compile(r"(?:\b\d-0|\b(?:with|of|and) (?:zero|0))\s+$")
_WORDLIKE = re.compile(r"^[A-Za-z][A-Za-z'\-]*$")

#: The thresholds (``TermOptions``, rapidfuzz ratios 0-100) when a caller passes none.
_DEFAULTS = TermOptions()


@dataclass
class Fix:
    """A proposed repair of the characters ``start:end`` of the text."""

    start: int
    end: int
    replacement: str
    score: float
    reason: str
    review: bool = False


def _context(words: set[str], document_type: str | None) -> set[str]:
    ctx: set[str] = set()
    if document_type == "operative_report" or len(words & SURGICAL_CUES) >= 2:
        ctx.add("surgical")
    return ctx


def _context_ok(need: str, ctx: set[str], before: list[str], after: list[str]) -> bool:
    """Whether a confusion's context requirement holds around the word."""
    if need == "surgical":
        return "surgical" in ctx
    if need == "suture":
        return bool(
            (before and (_SUTURE_SIZE.match(before[-1]) or before[-1] == "0"))
            or (after and after[0] in ("suture", "sutures", "stitch", "stitches"))
        )
    if need == "needle":
        return bool(after and after[0] == "needle")
    return need in before[-3:] or need in after[:1]


def best_candidate(
    index: VocabIndex,
    word: str,
    extra: dict[str, str] | None = None,
    options: TermOptions | None = None,
) -> tuple[str, float, str] | None:
    """The vocabulary term ``word`` most likely stands for: (display, score, source) or None.

    Candidates share the word's phonetic key (then a ratio of ``key_match_min``, 60, is
    enough) or, among the curated and physician terms, have a ratio of at least
    ``fuzzy_min`` (86); thresholds from ``options`` (``TermOptions``).
    """
    opts = options or _DEFAULTS
    low = word.lower()
    key = phonetic_key(low)
    best: tuple[str, float, str] | None = None
    everyday = 0.0  # best score of an everyday word with the same key
    cands = list(index.phonetic.get(key, ()))
    if extra:
        cands += [t for t in extra if phonetic_key(t) == key]
    for cand in cands:
        if cand == low or abs(len(cand) - len(low)) > max(3, len(low) // 3):
            continue
        if cand in low or cand.startswith(low):
            continue  # an inflection or compound of the same word, not a mishearing
        if _MEDICAL_PREFIX.match(low) and index.is_medical(_MEDICAL_PREFIX.sub("", low)):
            return None  # "hyperenhancement": a well-formed compound of a medical word
        score = fuzz.ratio(low, cand)
        source = "physician" if extra and cand in extra else index.source(cand)
        if source != "physician" and (not index.is_medical(cand)
                                      or index.zipf(cand) >= opts.everyday_zipf):
            # an everyday word ("stride") is not a target: Whisper spells those right
            everyday = max(everyday, score)
            continue
        min_score = opts.drug_min if source == "drug" else opts.key_match_min
        if source not in ("curated", "physician"):
            min_score = max(min_score, opts.list_min)  # big lists: closer spelling needed
        if len(low) <= opts.short_word_letters:
            # short words: few letters, many neighbours
            min_score = max(min_score, opts.short_word_min)
        if score < min_score:
            continue
        # curated and physician terms win ties over big-list words
        rank = score + (8 if "curated" in source or source == "physician" else 0)
        if best is None or rank > best[1] + (8 if "curated" in best[2] else 0):
            display = (extra or {}).get(cand) or index.display(cand) or cand
            best = (display, score, source)
    if best is not None and everyday >= best[1]:
        # "sympatomatic" is "symptomatic" misheard, not "sympathomimetic"
        log.debug("term veto=everyday score=%.1f everyday_score=%.1f", best[1], everyday)
        return None
    if best is None:
        pool = _curated_pool(index)
        if extra:
            pool = {**pool, **extra}
        # long words carry more evidence: "gallander" -> "gallbladder" (80)
        cutoff = opts.fuzzy_min if len(low) < opts.long_word_letters else opts.fuzzy_long_min
        hit = process.extractOne(low, list(pool), scorer=fuzz.ratio, score_cutoff=cutoff)
        # the ending carries the meaning ("-itis" vs "-lith"): it must agree
        # a word that holds the term ("hyperenhancement" / "enhancement") is a compound of it
        if (hit is not None and hit[0] not in low and not hit[0].startswith(low)
                and hit[0][-3:] == low[-3:]):
            best = (pool[hit[0]], float(hit[1]), "curated")
    return best


@lru_cache(maxsize=4)
def _curated_pool_cached(index: VocabIndex) -> dict[str, str]:
    pool: dict[str, str] = {}
    for terms in index.specialty.values():
        for t in terms:
            if " " not in t:
                pool[t.lower()] = t
    return pool


def _curated_pool(index: VocabIndex) -> dict[str, str]:
    return _curated_pool_cached(index)


@lru_cache(maxsize=4)
def _phrase_anchors(index: VocabIndex) -> dict[str, list[tuple[str, str, str]]]:
    """Two-word curated phrases by their last word: last -> [(first, key of first, display)]."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    for terms in index.specialty.values():
        for t in terms:
            parts = t.lower().split()
            if len(parts) == 2:
                out.setdefault(parts[1], []).append((parts[0], phonetic_key(parts[0]), t))
    return out


class MedicalTermCorrector:
    """spaCy component: proposes repairs into ``doc.user_data["term_fixes"]``.

    Reads ``doc.user_data``: ``probs`` (character offset -> Whisper word probability),
    ``protected`` (sorted character ranges not to touch), ``document_type``,
    ``physician_terms`` (lower -> display), ``term_options`` (``TermOptions``; default: one
    built from the component's ``unsure_prob`` config).
    """

    def __init__(self, nlp: Language, name: str, vocab_dir: str, unsure_prob: float) -> None:
        self.name = name
        self.vocab_dir = vocab_dir
        self.unsure_prob = unsure_prob
        self.options = TermOptions(unsure_prob=unsure_prob)

    @property
    def index(self) -> VocabIndex:
        return _cached_index(Path(self.vocab_dir).resolve())

    def __call__(self, doc: Doc) -> Doc:
        index = self.index
        with doc.retokenize() as retok:  # "Calot's" is one word here, not "Calot" + "'s"
            for t in doc[1:]:
                if t.lower_ in ("'s", "’s") and not doc[t.i - 1].whitespace_:
                    retok.merge(doc[t.i - 1 : t.i + 1])
        ud = doc.user_data
        probs: dict[int, float] = ud.get("probs", {})
        prot_starts: list[int] = ud.get("protected_starts", [])
        prot_ends: list[int] = ud.get("protected_ends", [])
        extra: dict[str, str] = ud.get("physician_terms", {})
        opts: TermOptions = ud.get("term_options") or self.options
        lows = [t.lower_ for t in doc]
        text = doc.text
        ctx = _context(set(lows), ud.get("document_type"))
        anchors = _phrase_anchors(index)
        fixes: list[Fix] = []

        def protected(tok_i: int) -> bool:
            t = doc[tok_i]
            k = bisect_right(prot_starts, t.idx) - 1
            return k >= 0 and t.idx < prot_ends[k]

        i = 0
        n = len(doc)
        while i < n:
            tok = doc[i]
            low = lows[i]
            nxt0 = i + 1 if i + 1 < n else None
            if (
                nxt0 is not None
                and _WORDLIKE.match(tok.text)
                and _WORDLIKE.match(doc[nxt0].text)
                and not protected(i)
                and not protected(nxt0)
                and low not in _NEVER
                and not (index.is_medical(low) and index.is_medical(lows[nxt0]))
            ):
                # a word Whisper split in two ("chole cystitis", "he mostasis")
                joined = low + lows[nxt0]
                if ((index.is_medical(joined) and index.zipf(joined) < opts.english_zipf)
                        or joined in extra) and not index.spelled_by_chance(
                            (low, lows[nxt0]), joined):
                    disp = extra.get(joined) or index.display(joined) or joined
                    fixes.append(Fix(tok.idx, doc[nxt0].idx + len(doc[nxt0]), disp, 95.0,
                                     "joined"))
                    log.debug("term fix=joined token=%d zipf=%.2f<%.1f", i,
                              index.zipf(joined), opts.english_zipf)
                    i += 2
                    continue
            if (
                not _WORDLIKE.match(tok.text)
                or protected(i)
                or low in _NEVER
                or len(low) < 3
            ):
                i += 1
                continue
            before = lows[max(0, i - 3) : i]
            nxt = i + 1 if i + 1 < n else None
            after = lows[i + 1 : i + 3]
            prob = probs.get(tok.idx, 1.0)
            # 1. known confusions, two words then one
            if nxt is not None and _WORDLIKE.match(doc[nxt].text) and not protected(nxt):
                pair = f"{low} {lows[nxt]}"
                conf = index.confusions.get(pair)
                if conf and _context_ok(conf[1], ctx, before, lows[nxt + 1 : nxt + 3]):
                    fixes.append(Fix(tok.idx, doc[nxt].idx + len(doc[nxt]), conf[0], 90.0,
                                     "confusion"))
                    i += 2
                    continue
            conf = index.confusions.get(low)
            if conf and _context_ok(conf[1], ctx, before, after):
                fixes.append(Fix(tok.idx, tok.idx + len(tok), _match_plural(conf[0], tok.text),
                                 90.0, "confusion"))
                i += 1
                continue
            # 2. a two-word curated phrase whose first word was misheard ("various needle")
            if nxt is not None and lows[nxt] in anchors and not index.is_medical(low):
                key = phonetic_key(low)
                for first, fkey, display in anchors[lows[nxt]]:
                    if (fkey == key and first != low
                            and fuzz.ratio(low, first) >= opts.phrase_first_min):
                        fixes.append(Fix(tok.idx, doc[nxt].idx + len(doc[nxt]), display, 80.0,
                                         "phrase"))
                        i += 2
                        break
                else:
                    pass
                if fixes and fixes[-1].start == tok.idx:
                    continue
            # 3. a suture material after a size ("4-0 crill")
            if _SUTURE_BEFORE.search(text[max(0, tok.idx - 12) : tok.idx]) and not (
                index.is_medical(low)
            ):
                hit = process.extractOne(low, list(_SUTURES), scorer=fuzz.WRatio,
                                         score_cutoff=opts.suture_min)
                if hit is not None and hit[0] != low:
                    fixes.append(Fix(tok.idx, tok.idx + len(tok), _SUTURES[hit[0]],
                                     float(hit[1]), "suture"))
                    log.debug("term fix=suture token=%d score=%.1f>=%.0f", i, hit[1],
                              opts.suture_min)
                    i += 1
                    continue
            if index.is_medical(low) or low in extra:
                i += 1
                continue
            zipf = index.zipf(low)
            # 5. unknown word: phonetic key + spelling
            if (zipf == 0.0 and len(low) >= opts.min_letters
                    and not _inflection_of_known(index, low, opts.english_zipf)):
                cand = best_candidate(index, low, extra, opts)
                if cand is not None:
                    display, score, source = cand
                    # only curated/physician terms are trusted without a second look
                    trusted = source in ("curated", "physician") and score >= opts.trusted_min
                    fixes.append(Fix(tok.idx, tok.idx + len(tok), display, score, "phonetic",
                                     review=not trusted))
                    log.debug("term fix=phonetic token=%d score=%.1f trusted=%s (>=%.0f)",
                              i, score, trusted, opts.trusted_min)
                i += 1
                continue
            # 6. an ordinary word Whisper was unsure of, in a medical dictation
            if (prob < opts.unsure_prob and "surgical" in ctx and len(low) >= opts.min_letters
                    and zipf < opts.common_zipf):  # "roads" is said, not a misheard "radius"
                pool = _curated_pool(index)
                key = phonetic_key(low)
                for cand_low, display in pool.items():
                    if phonetic_key(cand_low) != key:
                        continue
                    ratio = fuzz.ratio(low, cand_low)
                    if ratio >= opts.unsure_min:
                        fixes.append(Fix(tok.idx, tok.idx + len(tok), display, ratio, "unsure",
                                         review=True))
                        log.debug("term fix=unsure token=%d prob=%.2f<%.2f ratio=%.1f>=%.0f",
                                  i, prob, opts.unsure_prob, ratio, opts.unsure_min)
                        break
            i += 1
        ud["term_fixes"] = fixes
        return doc


def _inflection_of_known(index: VocabIndex, low: str, english_zipf: float = 2.5) -> bool:
    """ "sutured", "debrides", "intubating": an ending added to a word we know."""
    for suffix in ("ed", "d", "s", "es", "ing", "ly", "ally"):
        stem = low[: -len(suffix)] if low.endswith(suffix) else ""
        if len(stem) >= 4 and (index.is_medical(stem) or index.zipf(stem) >= english_zipf or (
            index.is_medical(stem + "e")
        )):
            return True
    return False


_SUTURES = {
    "vicryl": "Vicryl", "monocryl": "Monocryl", "prolene": "Prolene", "nylon": "nylon",
    "silk": "silk", "chromic": "chromic", "pds": "PDS", "ethilon": "Ethilon",
    "ethibond": "Ethibond", "maxon": "Maxon", "biosyn": "Biosyn", "polysorb": "Polysorb",
}


def _match_plural(term: str, heard: str) -> str:
    """Keep the plural the physician said ("truckers" -> "trocars" is in the table itself)."""
    return term


@Language.factory(
    "medical_term_corrector",
    default_config={"vocab_dir": "", "unsure_prob": 0.45},
)
def make_medical_term_corrector(
    nlp: Language, name: str, vocab_dir: str, unsure_prob: float
) -> MedicalTermCorrector:
    """Factory for ``nlp.add_pipe("medical_term_corrector", config={"vocab_dir": ...})``."""
    return MedicalTermCorrector(nlp, name, vocab_dir, unsure_prob)


@lru_cache(maxsize=4)
def get_nlp(vocab_dir: str) -> Language:
    """The spaCy pipeline (built once per vocabulary folder)."""
    from scispacy.abbreviation import AbbreviationDetector  # noqa: F401  (registers factory)
    from scispacy.custom_tokenizer import combined_rule_tokenizer

    nlp = spacy.blank("en")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # a regex in spaCy's tables
        nlp.tokenizer = combined_rule_tokenizer(nlp)
    nlp.add_pipe("abbreviation_detector")
    nlp.add_pipe("medical_term_corrector", config={"vocab_dir": vocab_dir})
    nlp.max_length = 2_000_000
    return nlp


class TermCorrection(Transform):
    """Run the spaCy pipeline over the text and apply its repairs to the tokens."""

    def process(self, state: TextState) -> TextState:
        toks = state.toks
        if not any(t.is_word for t in toks):
            return state
        parts: list[str] = []
        spans: list[tuple[int, int]] = []  # per token: char start, end
        pos = 0
        probs: dict[int, float] = {}
        prot: list[tuple[int, int]] = []
        for t in toks:
            text = "\n" if t.kind == "break" else t.text
            if parts:
                parts.append(" ")
                pos += 1
            spans.append((pos, pos + len(text)))
            if t.is_word and not t.protected:
                # every piece of the word gets the word's probability
                for m in re.finditer(r"\S+", text):
                    probs[pos + m.start()] = t.prob
            else:
                prot.append((pos, pos + len(text)))
            parts.append(text)
            pos += len(text)
        text = "".join(parts)
        nlp = get_nlp(str(Path(state.settings.vocab_dir).resolve()))
        doc = nlp.make_doc(text)
        doc.user_data.update(
            probs=probs,
            protected_starts=[a for a, _ in prot],
            protected_ends=[b for _, b in prot],
            document_type=state.document_type,
            physician_terms={t.lower(): t for t in state.physician_terms},
            term_options=state.options.terms,
        )
        with warnings.catch_warnings():
            # scispaCy's detector warns on every call that its global matcher is empty
            warnings.filterwarnings("ignore", message=r".*\[W036\]")
            for _name, proc in nlp.pipeline:
                doc = proc(doc)
        for abrv in getattr(doc._, "abbreviations", []) or []:
            state.defined_abbreviations.add(abrv.text)
        fixes: list[Fix] = doc.user_data.get("term_fixes", [])
        if not fixes:
            return state
        starts = [a for a, _ in spans]
        replace: dict[int, tuple[int, Fix]] = {}
        for fx in fixes:
            a = bisect_right(starts, fx.start) - 1
            b = bisect_right(starts, fx.end - 1) - 1
            if a < 0 or spans[a][0] != fx.start or spans[b][1] != fx.end:
                continue  # a repair must cover whole tokens
            replace[a] = (b, fx)
        out: list[Tok] = []
        i = 0
        while i < len(toks):
            if i in replace:
                b, fx = replace[i]
                new = merge(toks[i : b + 1], fx.replacement, "term", score=fx.score / 100.0,
                            keep_case=fx.replacement != fx.replacement.lower())
                out.append(new)
                if fx.review:
                    state.review("term", new, f"Medical term repaired ({fx.reason}); check it.",
                                 original=new.orig)
                i = b + 1
                continue
            out.append(toks[i])
            i += 1
        state.toks = out
        return state


def describe_pipeline(vocab_dir: str) -> list[str]:
    """Names of the spaCy pipeline's components (for docs and tests)."""
    return list(get_nlp(vocab_dir).pipe_names)
