"""Learning from reviewers' corrections.

When a draft is signed we compare the pipeline's first text (version 1) with the signed
text: the word error rate (jiwer, after the same light normalisation on both sides) and the
word-level substitutions. The rate gives a per-physician accuracy trend; a substitution seen
twice or more for the same physician goes into that physician's custom vocabulary, which
the speech stage uses as a prompt for the next dictations.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from difflib import SequenceMatcher

import jiwer
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.core.db.review import CorrectionStat, DraftAccuracy
from pipeline.core.settings import Settings

__all__ = [
    "Accuracy",
    "LearnResult",
    "TrendPoint",
    "normalize_words",
    "measure",
    "word_corrections",
    "record_signed",
    "repeated_corrections",
    "trend",
    "REPEAT_THRESHOLD",
]

log = logging.getLogger(__name__)

#: A substitution seen this many times for one physician becomes a custom vocabulary term.
REPEAT_THRESHOLD = 2
_MAX_PHRASE = 3  # words on either side of a substitution we still call "one correction"
_PUNCT = re.compile(r"[^\w'\-/.]+|(?<!\d)\.|\.(?!\d)")
_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "with",
        "is",
        "was",
        "be",
        "are",
        "were",
        "it",
        "this",
        "that",
        "he",
        "she",
        "they",
        "his",
        "her",
        "their",
        "we",
        "i",
        "you",
    ]
)


def normalize_words(text: str) -> list[str]:
    """Lower-case words without surrounding punctuation (the same on both sides of WER)."""
    cleaned = _PUNCT.sub(" ", text.lower())
    return [w.strip("'-/") for w in cleaned.split() if w.strip("'-/")]


@dataclass
class Accuracy:
    """WER of a draft against the signed text, with its error counts."""

    wer: float
    reference_words: int
    substitutions: int
    deletions: int
    insertions: int


def measure(draft_text: str, signed_text: str) -> Accuracy:
    """WER of ``draft_text`` (hypothesis) against ``signed_text`` (reference)."""
    ref = " ".join(normalize_words(signed_text))
    hyp = " ".join(normalize_words(draft_text))
    if not ref:
        return Accuracy(0.0 if not hyp else 1.0, 0, 0, 0, len(hyp.split()))
    if not hyp:
        n = len(ref.split())
        return Accuracy(1.0, n, 0, n, 0)
    out = jiwer.process_words(ref, hyp)
    return Accuracy(
        float(out.wer),
        out.hits + out.substitutions + out.deletions,
        out.substitutions,
        out.deletions,
        out.insertions,
    )


def _bare(word: str) -> str:
    return word.strip(".,;:!?()[]\"'")


def word_corrections(draft_text: str, signed_text: str) -> list[tuple[str, str]]:
    """The substitutions a reviewer made: (draft words, signed words) pairs.

    Short replaced runs (up to three words on each side) count: equal lengths pair word by
    word, unequal ones stay one phrase (e.g. "sealer cyst" -> "cholecystitis"). Longer runs
    are rewrites, and pure insertions and deletions are not substitutions: both left out.
    """
    a = [_bare(w) for w in draft_text.split()]
    b = [_bare(w) for w in signed_text.split()]
    a = [w for w in a if w]
    b = [w for w in b if w]
    sm = SequenceMatcher(None, [w.lower() for w in a], [w.lower() for w in b], autojunk=False)
    pairs: list[tuple[str, str]] = []
    for tag, a0, a1, b0, b1 in sm.get_opcodes():
        if tag != "replace" or a1 - a0 > _MAX_PHRASE or b1 - b0 > _MAX_PHRASE:
            continue  # longer runs are rewrites, not word corrections
        if a1 - a0 == b1 - b0:
            pairs.extend(
                (x, y) for x, y in zip(a[a0:a1], b[b0:b1], strict=True) if x.lower() != y.lower()
            )
        else:
            pairs.append((" ".join(a[a0:a1]), " ".join(b[b0:b1])))
    return pairs


@dataclass
class LearnResult:
    """What signing one draft taught us."""

    accuracy: Accuracy
    corrections: list[tuple[str, str]] = field(default_factory=list)
    new_terms: list[str] = field(default_factory=list)


def repeated_corrections(
    session: Session, physician_id: str, threshold: int = REPEAT_THRESHOLD
) -> list[tuple[str, str, int]]:
    """(original, replacement, count) seen at least ``threshold`` times for the physician."""
    rows = session.execute(
        select(CorrectionStat.original, CorrectionStat.replacement, func.count())
        .where(CorrectionStat.physician_id == physician_id)
        .group_by(CorrectionStat.original, CorrectionStat.replacement)
        .having(func.count() >= threshold)
        .order_by(func.count().desc())
    ).all()
    return [(str(o), str(r), int(n)) for o, r, n in rows]


def _is_term(replacement: str) -> bool:
    words = replacement.split()
    if not words or all(w.lower() in _STOP for w in words):
        return False
    return any(c.isalpha() for c in replacement) and len(replacement) >= 3


def _add_terms(settings: Settings, physician_id: str, terms: list[str]) -> int:
    from pipeline.language import vocab

    return int(vocab.add_physician_terms(settings, physician_id, terms))


def record_signed(
    session: Session,
    settings: Settings,
    *,
    draft_id: str,
    physician_id: str | None,
    first_text: str,
    signed_text: str,
    signed_at: datetime,
) -> LearnResult:
    """Store WER and word corrections of a signed draft; feed repeated ones to the vocabulary."""
    acc = measure(first_text, signed_text)
    existing = session.get(DraftAccuracy, draft_id)
    if existing is not None:  # signing happens once; keep the first measurement
        return LearnResult(acc)
    session.add(
        DraftAccuracy(
            draft_id=draft_id,
            physician_id=physician_id,
            wer=acc.wer,
            reference_words=acc.reference_words,
            substitutions=acc.substitutions,
            deletions=acc.deletions,
            insertions=acc.insertions,
            signed_at=signed_at,
        )
    )
    pairs = [(o[:200], r[:200]) for o, r in word_corrections(first_text, signed_text)]
    for original, replacement in pairs:
        session.add(
            CorrectionStat(
                draft_id=draft_id,
                physician_id=physician_id,
                original=original,
                replacement=replacement,
                created_at=signed_at,
            )
        )
    session.flush()
    new_terms: list[str] = []
    if physician_id and pairs:
        mine = {r for _, r in pairs}
        candidates = [
            r
            for _o, r, _n in repeated_corrections(session, physician_id)
            if r in mine and _is_term(r)
        ]
        if candidates:
            added = _add_terms(settings, physician_id, candidates)
            new_terms = candidates if added else []
    log.info(
        "draft=%s wer=%.3f corrections=%d new_terms=%d",
        draft_id,
        acc.wer,
        len(pairs),
        len(new_terms),
    )
    return LearnResult(acc, pairs, new_terms)


@dataclass
class TrendPoint:
    """One signed draft on the accuracy chart."""

    draft_id: str
    signed_at: datetime
    wer: float
    reference_words: int


def trend(session: Session, physician_id: str, limit: int = 200) -> list[TrendPoint]:
    """The physician's signed drafts, oldest first (the newest ``limit``)."""
    rows = session.execute(
        select(
            DraftAccuracy.draft_id,
            DraftAccuracy.signed_at,
            DraftAccuracy.wer,
            DraftAccuracy.reference_words,
        )
        .where(DraftAccuracy.physician_id == physician_id)
        .order_by(DraftAccuracy.signed_at.desc())
        .limit(limit)
    ).all()
    return [TrendPoint(str(d), t, float(w), int(n)) for d, t, w, n in reversed(rows)]
