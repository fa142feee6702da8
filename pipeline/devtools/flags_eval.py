"""How useful the editor's flags are: flagged words per 100, precision and recall.

    manifest.csv -> each audio file -> transcribe + normalize (the pipeline's draft text)
                 -> the editor's word marks (``pipeline.web.wordmap.map_words``)
                 -> each draft word: flagged? (per scheme) and wrong? (against the reference)

A draft word is *wrong* when, after the evaluator's shared normalisation
(``pipeline.devtools.evaluate.normalise``, the one WER uses), one of its words is substituted
or inserted in the alignment with the reference. Deleted reference words have no draft word
to flag and are not counted. Punctuation written from a spoken command normalises to nothing,
so it is never wrong.

Schemes: ``all`` flags every change the normaliser made plus low-confidence words (what the
editor did before flags were classified); ``review`` flags low-confidence words and the
changes ``pipeline.language.normalize.review_flags`` says need review (commands quiet, and
a word with a glued command keeps its own probability) and words that are neither medical
vocabulary nor English (``unknown_word``), exactly as the editor now does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rapidfuzz.distance import Levenshtein

from pipeline.core.records import to_jsonable
from pipeline.core.settings import Settings
from pipeline.language.vocab import VocabIndex, get_index

__all__ = ["SCHEMES", "FlagCounts", "FlagReport", "word_labels", "run_flags_eval"]

log = logging.getLogger(__name__)

SCHEMES = ("all", "review")


@dataclass
class FlagCounts:
    """Counts for one scheme (over one file or a whole set)."""

    words: int = 0
    flagged: int = 0
    wrong: int = 0
    flagged_wrong: int = 0

    def add(self, other: FlagCounts) -> None:
        """Add another file's counts."""
        self.words += other.words
        self.flagged += other.flagged
        self.wrong += other.wrong
        self.flagged_wrong += other.flagged_wrong

    @property
    def per_100(self) -> float:
        return 100.0 * self.flagged / self.words if self.words else 0.0

    @property
    def precision(self) -> float | None:
        return self.flagged_wrong / self.flagged if self.flagged else None

    @property
    def recall(self) -> float | None:
        return self.flagged_wrong / self.wrong if self.wrong else None

    def to_dict(self) -> dict[str, Any]:
        """Counts and rates as plain values."""
        return {"words": self.words, "flagged": self.flagged, "wrong": self.wrong,
                "flagged_wrong": self.flagged_wrong, "per_100": round(self.per_100, 1),
                "precision": None if self.precision is None else round(self.precision, 3),
                "recall": None if self.recall is None else round(self.recall, 3)}


@dataclass
class FlagReport:
    """Per-file and overall counts per scheme."""

    manifest: Path
    model: str
    files: dict[str, dict[str, FlagCounts]] = field(default_factory=dict)
    overall: dict[str, FlagCounts] = field(
        default_factory=lambda: {s: FlagCounts() for s in SCHEMES})


def word_labels(draft_words: list[str], reference: str) -> list[bool]:
    """For each draft word (whitespace token of the draft text): whether it is wrong against
    ``reference`` after the shared WER normalisation."""
    from pipeline.devtools.evaluate import normalise

    hyp: list[str] = []
    owner: list[int] = []
    for i, word in enumerate(draft_words):
        for piece in normalise(word).split():
            hyp.append(piece)
            owner.append(i)
    ref = normalise(reference).split()
    wrong = [False] * len(draft_words)
    for op in Levenshtein.opcodes(ref, hyp):
        if op.tag in ("replace", "insert"):
            for k in range(op.dest_start, op.dest_end):
                wrong[owner[k]] = True
    return wrong


def count_file(text: str, reference: str, segments: list[dict[str, Any]],
               corrections: list[dict[str, Any]],
               index: VocabIndex | None = None) -> dict[str, FlagCounts]:
    """Counts per scheme for one draft text against its reference (``index``: the
    vocabulary, for the ``review`` scheme's unknown-word flags)."""
    from pipeline.language.normalize.review_flags import review_corrections, unknown_word
    from pipeline.web.wordmap import map_words

    result: dict[str, FlagCounts] = {}
    for scheme in SCHEMES:
        marks = corrections if scheme == "all" else review_corrections(corrections)
        tokens = [t for t in map_words(text, text, segments, marks) if t.is_word]
        wrong = word_labels([t.text for t in tokens], reference)
        flags = [t.flagged or (scheme == "review" and index is not None and
                               unknown_word(t.text, index)) for t in tokens]
        result[scheme] = FlagCounts(
            words=len(tokens), flagged=sum(flags), wrong=sum(wrong),
            flagged_wrong=sum(1 for f, w in zip(flags, wrong, strict=True) if f and w),
        )
    return result


def run_flags_eval(manifest_path: Path, settings: Settings, *, limit: int | None = None,
                   progress: Callable[[str], None] | None = None) -> FlagReport:
    """Transcribe and normalise every file of a manifest and count its flags per scheme."""
    from pipeline.devtools.evaluate import _meta, validate_manifest
    from pipeline.service import process

    samples = validate_manifest(Path(manifest_path))
    if limit is not None:
        samples = samples[: max(limit, 0)]
    report = FlagReport(manifest=Path(manifest_path), model=settings.model)
    for sample in samples:
        if progress:
            progress(sample.id)
        dictation = process.load_dictation(sample.audio, settings, _meta(sample))
        transcript = process.transcribe_stage(dictation, settings)
        note = process.normalize_stage(transcript, dictation, settings)
        segments = to_jsonable(transcript.segments)
        corrections = to_jsonable(note.corrections)
        counts = count_file(note.text, sample.reference_text(), segments, corrections,
                            get_index(settings))
        report.files[sample.id] = counts
        for scheme, c in counts.items():
            report.overall[scheme].add(c)
        log.info("flags-eval sample=%s words=%d", sample.id, counts["all"].words)
    return report
