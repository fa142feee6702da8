"""Learned corrections between trainings: what reviewers keep replacing for one physician is
applied to that physician's next drafts, and a reviewer can undo it in the editor.

Issue #15, section 5. Signing records every word-level substitution (``CorrectionStat``,
``pipeline.review.learning``). ``learned_pairs`` reads the physician's repeated ones, net
of undoes: restoring a learned change and signing records the reverse substitution, which
takes one off the count, so one undo stops a pair that was learned from two corrections.
The service hands the pairs to the language stage
(``pipeline.language.normalize.learned``), which decides which are safe mishearings (never a
dose or a side) and records each replacement as a correction of kind ``learned``.

In the editor a learned change is listed with what was heard and a button that puts the
heard words back (``undo_learned``). The button submits the editor's own form, so the text
on the screen (typed, not yet saved) is what the undo is applied to, and the result is
saved as a new version; when the change cannot be found in that text any more, the typed
text is kept as the user's autosave and nothing else changes. Nothing typed is lost either
way.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.core import audit
from pipeline.core.db.core import DraftRow
from pipeline.core.db.review import CorrectionStat
from pipeline.core.errors import NotFoundError
from pipeline.core.settings import Settings
from pipeline.language.normalize.learned import KIND
from pipeline.review import signoff
from pipeline.review import versions as wf
from pipeline.review.learning import REPEAT_THRESHOLD
from pipeline.review.signing import first_text
from pipeline.review.users import UserInfo

__all__ = [
    "LearnedChange",
    "learned_pairs",
    "learned_changes",
    "restore_original",
    "undo_learned",
]

log = logging.getLogger(__name__)

_SENTENCE_START = re.compile(r"(?:\A|[.!?:]\s+|\n\s*)\Z")


def learned_pairs(session: Session, physician_id: str | None,
                  min_count: int = REPEAT_THRESHOLD,
                  limit: int = 500) -> list[tuple[str, str, int]]:
    """(original, replacement, count) a reviewer made at least ``min_count`` times for the
    physician, ignoring case, the count net of the reverse replacement (an undo signed);
    the most frequent first, at most ``limit``.

    SQL groups the exact pairs only (on PostgreSQL the pair columns are sealed
    deterministically, ``pipeline.core.db.encrypted``: equal texts compare equal, nothing
    else can be computed there); case folding and the reverse counts are done here."""
    if not physician_id:
        return []
    rows = session.execute(
        select(CorrectionStat.original, CorrectionStat.replacement, func.count())
        .where(CorrectionStat.physician_id == physician_id)
        .group_by(CorrectionStat.original, CorrectionStat.replacement)
    ).all()
    counts: Counter[tuple[str, str]] = Counter()
    spelled: dict[tuple[str, str], Counter[tuple[str, str]]] = {}
    for original, replacement, n in rows:
        key = (str(original).lower(), str(replacement).lower())
        counts[key] += int(n)
        spelled.setdefault(key, Counter())[(str(original), str(replacement))] += int(n)
    out: list[tuple[str, str, int]] = []
    for key, n in counts.items():
        net = n - counts.get((key[1], key[0]), 0)
        if net >= min_count:
            original, replacement = spelled[key].most_common(1)[0][0]
            out.append((original, replacement, net))
    out.sort(key=lambda r: (-r[2], r[0].lower(), r[1].lower()))
    return out[:limit]


def _occurrences(text: str, phrase: str) -> list[int]:
    """Start offsets of ``phrase`` in ``text`` as whole words (case as written)."""
    if not phrase:
        return []
    return [m.start() for m in re.finditer(rf"(?<!\w){re.escape(phrase)}(?!\w)", text)]


def restore_original(base_text: str, text: str, correction: dict[str, Any]) -> str | None:
    """``text`` with the learned ``correction`` (offsets in ``base_text``, the pipeline's
    text) put back to what was heard, or None when it cannot be found unambiguously: the
    written term must occur as often in ``text`` as in ``base_text`` (the k-th occurrence is
    the one restored). A capital the term got at a sentence start goes to the heard words.

        >>> c = {"original": "sealer cyst", "replacement": "cholecystitis", "start": 6}
        >>> restore_original("Acute cholecystitis.", "Acute cholecystitis, typed.", c)
        'Acute sealer cyst, typed.'
        >>> restore_original("Acute cholecystitis.", "Acute gallstones.", c) is None
        True
    """
    original = str(correction.get("original") or "")
    replacement = str(correction.get("replacement") or "")
    start = int(correction.get("start") or 0)
    if not original or not replacement:
        return None
    before = _occurrences(base_text, replacement)
    if start not in before:
        return None
    now = _occurrences(text, replacement)
    if len(now) != len(before):
        return None
    pos = now[before.index(start)]
    heard = original
    if replacement[:1].isupper() and heard[:1].islower() and _SENTENCE_START.search(text[:pos]):
        heard = heard[:1].upper() + heard[1:]
    return text[:pos] + heard + text[pos + len(replacement):]


@dataclass(frozen=True)
class LearnedChange:
    """A learned change of a draft as the editor lists it: its index in the draft's
    corrections, what was heard, what was written, and whether it can be restored in the
    current text."""

    index: int
    original: str
    replacement: str
    undoable: bool


def learned_changes(corrections: list[Any], base_text: str, text: str) -> list[LearnedChange]:
    """The learned changes among a draft's ``corrections`` (``text``: the text the editor
    shows now; ``base_text``: the pipeline's text the offsets refer to)."""
    out: list[LearnedChange] = []
    for i, corr in enumerate(corrections):
        if not isinstance(corr, dict) or corr.get("kind") != KIND:
            continue
        out.append(LearnedChange(i, str(corr.get("original") or ""),
                                 str(corr.get("replacement") or ""),
                                 restore_original(base_text, text, corr) is not None))
    return out


def undo_learned(session: Session, settings: Settings, user: UserInfo, draft: DraftRow,
                 index: int, text: str, base_version: int | None) -> int | None:
    """Put learned change ``index`` of ``draft`` back to what was heard, in ``text`` (the
    editor's text, typed or saved), and save the result as a new version; returns the
    version. The change counts as reviewed (its sign-off flag is cleared). When the change
    is no longer in ``text``, ``text`` is kept as the user's autosave and None is returned.
    Same rights as saving (``versions.save_text``); audited."""
    corrections = list(draft.corrections or [])
    corr = corrections[index] if 0 <= index < len(corrections) else None
    if not isinstance(corr, dict) or corr.get("kind") != KIND:
        raise NotFoundError(f"Draft {draft.id} has no learned change number {index}.")
    restored = restore_original(first_text(session, draft), text, corr)
    if restored is None:
        wf.autosave_text(session, user, draft, text, base_version)
        log.info("draft=%s learned change=%d not found; text kept as autosave", draft.id, index)
        return None
    version = wf.save_text(session, user, draft, restored, base_version)
    key = f"change:{index}"
    if any(b.key == key for b in signoff.blockers(session, settings, draft)):
        signoff.acknowledge(session, settings, user, draft, key)
    audit.record(session, actor=user.username, action="edit", object_type="draft",
                 object_id=draft.id, patient_ref=draft.mrn,
                 detail={"kind": "learned_undone", "change": index, "version": version})
    log.info("draft=%s learned change=%d undone version=%d by user=%s", draft.id, index,
             version, user.id)
    return version
