"""Learning from corrections: WER of draft vs signed text, word-level corrections, the
per-physician trend, and repeated corrections feeding the physician's vocabulary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.review import learning
from pipeline.web.seed import add_draft


@pytest.mark.parametrize(
    ("draft", "signed", "wer"),
    [
        ("the patient is well", "the patient is well", 0.0),
        ("The patient, is well.", "the patient is well", 0.0),  # case and punctuation ignored
        ("the patient is sell", "the patient is well", 0.25),
        ("patient is well", "the patient is well", 0.25),  # one deletion
        ("", "the patient is well", 1.0),
    ],
)
def test_measure(draft: str, signed: str, wer: float) -> None:
    assert learning.measure(draft, signed).wer == pytest.approx(wer)


@pytest.mark.parametrize(
    ("draft", "signed", "pairs"),
    [
        ("start lisinopril ten mg", "start lisinopril 10 mg", [("ten", "10")]),
        ("acute sealer cyst itis today", "acute cholecystitis today",
         [("sealer cyst itis", "cholecystitis")]),
        ("Started metformin.", "Started Metformin.", []),  # case only: not a correction
        ("no change here", "no change here at all", []),  # insertion, not substitution
        ("a b c d e f", "u v w x y z", []),  # a rewrite is not a word correction
    ],
)
def test_word_corrections(draft: str, signed: str, pairs: list[tuple[str, str]]) -> None:
    assert learning.word_corrections(draft, signed) == pairs


def _signed(settings: Settings, first: str, final: str, when: datetime, pid: str = "dr-smith"):  # type: ignore[no-untyped-def]
    with open_store(settings).session() as s:
        draft_id = add_draft(s, text=final, segments=[], physician_id=pid)
        return learning.record_signed(s, settings, draft_id=draft_id, physician_id=pid,
                                      first_text=first, signed_text=final, signed_at=when)


def test_repeated_correction_goes_into_physician_vocabulary(settings: Settings) -> None:
    vocab_file = settings.physician_vocab_dir / "dr-smith.txt"
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    first = _signed(settings, "patient with sealer cyst itis", "patient with cholecystitis", t0)
    assert first.corrections == [("sealer cyst itis", "cholecystitis")]
    assert first.new_terms == [] and not vocab_file.exists()  # once is not a pattern
    second = _signed(settings, "known sealer cyst itis again", "known cholecystitis again",
                     t0 + timedelta(days=1))
    assert second.new_terms == ["cholecystitis"]
    assert "cholecystitis" in vocab_file.read_text().splitlines()
    # Another physician's corrections stay theirs.
    _signed(settings, "sealer cyst itis", "cholecystitis", t0, pid="dr-patel")
    assert not (settings.physician_vocab_dir / "dr-patel.txt").exists()
    # A third time adds nothing new (no duplicates in the list).
    _signed(settings, "sealer cyst itis", "cholecystitis", t0 + timedelta(days=2))
    assert vocab_file.read_text().splitlines().count("cholecystitis") == 1
    with open_store(settings).session() as s:
        assert learning.repeated_corrections(s, "dr-smith") == [
            ("sealer cyst itis", "cholecystitis", 3)
        ]


def test_stopword_substitutions_are_not_vocabulary(settings: Settings) -> None:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    for k in range(3):
        result = _signed(settings, "he was seen", "she was seen", t0 + timedelta(days=k))
        assert result.new_terms == []
    assert not (settings.physician_vocab_dir / "dr-smith.txt").exists()


def test_trend_oldest_first(settings: Settings) -> None:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    _signed(settings, "a b c d", "a b c x", t0 + timedelta(days=2))
    _signed(settings, "a b c d", "a b c d", t0)
    with open_store(settings).session() as s:
        points = learning.trend(s, "dr-smith")
    assert [p.wer for p in points] == [0.0, 0.25]
