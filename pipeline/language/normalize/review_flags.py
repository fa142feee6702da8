"""Which of the normaliser's changes a reviewer should look at, and which are shown quietly.

Every change the normaliser makes is a ``Correction`` with a ``kind``. Formatting commands
("period" -> ".", "new paragraph", "colon"), casing and heading layout are what the physician
asked for: they are shown quietly and never stop the F2 navigation. What may be wrong is
flagged: term and drug-name repairs, doses, sides, other numbers, Do-Not-Use abbreviation
expansions (a meaning change, ISMP list) and trailing-zero safety edits.

The split was measured with ``dictation flags-eval`` on the synthetic sample set (see
docs/measurements.md, "Flags worth looking at"): showing every change flagged about 40 words
per 100, most of them spoken punctuation that was right.

    >>> classify({"kind": "command", "original": "period", "replacement": "."})
    'quiet'
    >>> classify({"kind": "number", "original": "ten milligrams", "replacement": "10 mg"})
    'dose'
    >>> classify({"kind": "term", "original": "left knee", "replacement": "right knee"})
    'side'
    >>> classify({"kind": "term", "original": "pane", "replacement": "pain"})
    'term'
    >>> needs_review({"kind": "casing", "original": "aspirin", "replacement": "Aspirin"})
    False
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.language.vocab import VocabIndex

__all__ = [
    "QUIET_KINDS",
    "SIGN_BLOCKING",
    "classify",
    "needs_review",
    "blocks_signing",
    "review_corrections",
    "unknown_word",
    "LABELS",
]

#: Correction kinds that are formatting the physician dictated or layout: shown quietly.
QUIET_KINDS = frozenset({"command", "casing", "heading", "break"})

#: Classes of change that must be reviewed before a document can be signed.
SIGN_BLOCKING = frozenset({"dose", "side", "drug"})

#: Human names of the classes (the editor's and the sign page's wording).
LABELS = {
    "dose": "dose changed",
    "side": "side (left/right) changed",
    "drug": "drug name repaired",
    "term": "medical term repaired",
    "number": "number written from speech",
    "abbreviation": "abbreviation expanded",
    "safety": "dose written safely (trailing or leading zero)",
    "quiet": "formatting command",
    "autotext": "auto-text inserted",
}

_LETTERS = re.compile(r"[A-Za-z']+")
_SIDE = re.compile(r"\b(?:left|right|bilateral|l|r)\b", re.I)
_DOSE_UNIT = re.compile(
    r"\d\s*(?:mg|mcg|µg|g|kg|ml|mL|l|units?|international units|meq|mEq|mmol|%|"
    r"milligrams?|micrograms?|grams?|milliliters?|tablets?|puffs?|drops?)\b",
    re.I,
)


def _is_drug(text: str, index: VocabIndex | None) -> bool:
    if index is None:
        return False
    drugs = index.drugs
    return any(w.lower() in drugs for w in _LETTERS.findall(text) if len(w) > 2)


def classify(correction: Mapping[str, Any], index: VocabIndex | None = None) -> str:
    """The review class of one correction (a ``Correction`` as a dict): ``quiet``, ``side``,
    ``dose``, ``drug`` (a repair whose result is a drug name in ``index``'s drug list),
    ``term`` (another repaired term), ``number``, ``abbreviation``, ``safety`` or
    ``autotext`` (an auto-text inserted by "insert <trigger>")."""
    kind = str(correction.get("kind") or "term")
    original = str(correction.get("original") or "")
    replacement = str(correction.get("replacement") or "")
    if kind in QUIET_KINDS:
        return "quiet"
    if kind == "autotext":  # the practice's own text, not heard: shown, never a dose or side
        return "autotext"
    sides_before = {m.group(0).lower()[0] for m in _SIDE.finditer(original)}
    sides_after = {m.group(0).lower()[0] for m in _SIDE.finditer(replacement)}
    if sides_before != sides_after and (sides_before or sides_after):
        return "side"
    if kind == "safety":
        return "safety"
    if _DOSE_UNIT.search(replacement) and kind in ("number", "abbreviation", "term"):
        return "dose"
    if kind == "number":
        return "number"
    if kind == "abbreviation":
        return "abbreviation"
    return "drug" if _is_drug(replacement, index) else "term"


def needs_review(correction: Mapping[str, Any]) -> bool:
    """Whether the editor flags this change (and F2 stops on it)."""
    return classify(correction) != "quiet"


def blocks_signing(correction: Mapping[str, Any], index: VocabIndex | None = None) -> bool:
    """Whether this change must be marked reviewed before the document can be signed (a
    dose, a side, or a drug name: ``index`` supplies the drug list)."""
    return classify(correction, index) in SIGN_BLOCKING


def review_corrections(corrections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The corrections the editor marks (``needs_review``); command conversions and casing
    are left out, so the word they are glued to ("cholecystitis" + ".") keeps its own
    recognition probability instead of taking the spoken command's."""
    return [c for c in corrections if isinstance(c, dict) and needs_review(c)]


def unknown_word(word: str, index: VocabIndex) -> bool:
    """Whether a word of the draft is neither in the medical vocabulary nor an English word
    (wordfreq): a likely mishearing ("Precedger", "Cardology") that the recogniser was sure
    of, so no low-confidence mark shows it. Acronyms in capitals and words with digits are
    left alone. On the synthetic set such words were wrong 26 times in 34 (precision 76%).

        >>> from pipeline.language.vocab import VocabIndex
        >>> index = VocabIndex(words={"cholecystitis"}, english={"the": 7.0})
        >>> unknown_word("cholecystitis.", index), unknown_word("Cardology.", index)
        (False, True)
        >>> unknown_word("MRN", index), unknown_word("4-0", index)
        (False, False)
    """
    if any(ch.isdigit() for ch in word):
        return False
    for part in _LETTERS.findall(word):
        low = part.lower().strip("'")
        if len(low) < 3 or part.isupper():
            continue
        if low.endswith("'s"):
            low = low[:-2]
        if low in index.words or low in index.english or low in index.displays:
            continue
        if index.is_medical(low):
            continue
        return True
    return False
