"""``dictation sections-eval MTSAMPLES_CSV_XZ``: heading-detection precision/recall on real reports.

The MTSamples reports carry their headings as upper-case lines ending in a colon. Each report
is turned into three forms of the same text and the detector runs on each:

- ``written``: as typed ("PREOPERATIVE DIAGNOSIS: ..."), what the normalizer produces;
- ``spoken``: one line, headings in lower case followed by " colon", a comma or nothing, as
  Whisper writes a dictation ("preoperative diagnosis, acute cholecystitis. procedure ...");
- ``runon``: one line, lower case, no punctuation at all.

Figures: precision = detected headings that sit where the report has a heading; recall =
report headings known to the template's field map that were detected (with the right field);
coverage = report headings (all upper-case colon lines, including exam sub-headings such as
HEENT) that the field maps know. The data is reference material read at run time, never copied
into the project.
"""

from __future__ import annotations

import argparse
import csv
import io
import lzma
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["register", "evaluate", "GROUPS"]

#: MTSamples specialty -> (our template key, filter on the text)
GROUPS: dict[str, tuple[str, str, str | None]] = {
    "operative": ("Surgery", "operative_report", "OPERATIVE DIAGNOS"),
    "consult": ("Consult - History and Phy.", "consult_letter", None),
    "progress": ("SOAP / Chart / Progress Notes", "progress_note", None),
    "discharge": ("Discharge Summary", "discharge_summary", None),
    "radiology": ("Radiology", "radiology_report", None),
}
_TRUTH = re.compile(
    r"(?m)^[ \t]*(?:(?P<h>[A-Z][A-Za-z0-9 /&'()\-]{0,60}?[A-Za-z)])[ \t]*:[ \t,]*"
    r"|(?P<u>[A-Z][A-Z0-9 /&'()\-]{1,60}[A-Z)])[ \t]*(?:\n|$))"
)
MODES = ("written", "spoken", "runon")


@dataclass
class Score:
    """Counts for one group and mode."""

    reports: int = 0
    detected: int = 0
    detected_correct: int = 0
    truth_all: int = 0
    truth_known: int = 0
    known_found: int = 0
    type_correct: int = 0
    seconds: float = 0.0
    examples: list[str] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.detected_correct / self.detected if self.detected else 0.0

    @property
    def recall(self) -> float:
        return self.known_found / self.truth_known if self.truth_known else 0.0

    @property
    def coverage(self) -> float:
        return self.truth_known / self.truth_all if self.truth_all else 0.0


def _read(path: Path) -> list[dict[str, str]]:
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:  # type: ignore[operator]
        return list(csv.DictReader(io.StringIO(fh.read())))


def _transform(text: str, mode: str) -> tuple[str, list[tuple[int, str]]]:
    """The report in one form, with the start of each true heading in the new text."""
    matches = list(_TRUTH.finditer(text))
    if not matches:
        return "", []
    pieces: list[str] = []
    truths: list[tuple[int, str]] = []
    pre = text[: matches[0].start()].strip()
    length = 0

    def add(piece: str) -> None:
        nonlocal length
        pieces.append(piece)
        length += len(piece)

    if pre:
        add(_body(pre, mode) + ("\n" if mode == "written" else " "))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        heading = (m.group("h") or m.group("u")).strip()
        body = text[m.end(): end].strip()
        truths.append((length, heading))
        if mode == "written":
            add(f"{heading}: {body}\n")
        elif mode == "spoken":
            delim = (" colon ", ", ", " ")[i % 3]
            add(f"{heading.lower()}{delim}{_body(body, mode)} ")
        else:
            add(f"{heading.lower()} {_body(body, mode)} ")
    return "".join(pieces), truths


def _body(text: str, mode: str) -> str:
    if mode == "written":
        return text
    text = re.sub(r"\s+", " ", text)
    if mode == "runon":
        text = re.sub(r"[^\w\s'/-]", " ", text.lower())
        text = re.sub(r"\s+", " ", text)
        return text.strip()
    text = text[:1].lower() + text[1:]
    if text and text[-1] not in ".!?":
        text += "."
    return text


def evaluate(path: Path, limit: int | None = None) -> dict[str, dict[str, Score]]:
    """Scores per group and mode for the MTSamples file at ``path``."""
    from pipeline.core.settings import get_settings
    from pipeline.documents.sections import detect_document_type, detect_headings, lexicon_for
    from pipeline.documents.templates import list_templates

    templates = list_templates(get_settings())
    rows = _read(path)
    results: dict[str, dict[str, Score]] = {}
    for group, (specialty, key, must) in GROUPS.items():
        spec = templates[key]
        lexicon = lexicon_for(spec, templates.values())
        seen: set[str] = set()
        texts = []
        for row in rows:
            text = row.get("transcription") or ""
            if row.get("medical_specialty", "").strip() != specialty or text in seen:
                continue
            if must and must not in text:
                continue
            seen.add(text)
            texts.append(text)
        texts = texts[:limit] if limit else texts
        results[group] = {}
        for mode in MODES:
            score = Score()
            t0 = time.perf_counter()
            for text in texts:
                new, truths = _transform(text, mode)
                if not truths:
                    continue
                score.reports += 1
                found = detect_headings(new, lexicon)
                if mode == "written":
                    guess, _ = detect_document_type(new, templates)
                    score.type_correct += guess == key
                truth_at = {pos: h for pos, h in truths}
                score.detected += len(found)
                for f in found:
                    if any(abs(f.start - p) <= 1 for p in truth_at):
                        score.detected_correct += 1
                    elif len(score.examples) < 8:
                        score.examples.append(new[max(0, f.start - 30): f.end + 30])
                for pos, heading in truths:
                    score.truth_all += 1
                    looked = lexicon.lookup(heading)
                    if looked is None:
                        continue
                    score.truth_known += 1
                    if any(abs(f.start - pos) <= 1 and f.key == looked[0] for f in found):
                        score.known_found += 1
            score.seconds = time.perf_counter() - t0
            results[group][mode] = score
    return results


def _handler(args: argparse.Namespace) -> int:
    from pipeline.core.errors import ConfigError

    path = Path(args.path)
    if not path.is_file():
        raise ConfigError(f"MTSamples file {path} does not exist; expected the .csv or .csv.xz.")
    results = evaluate(path, args.limit)
    print(f"{'group':<11} {'mode':<8} {'reports':>7} {'precision':>9} {'recall':>7} "
          f"{'coverage':>8} {'type ok':>7} {'ms/report':>9}")
    for group, modes in results.items():
        for mode, s in modes.items():
            type_ok = f"{s.type_correct / s.reports:.3f}" if mode == "written" and s.reports else ""
            ms = 1000 * s.seconds / s.reports if s.reports else 0.0
            print(f"{group:<11} {mode:<8} {s.reports:>7} {s.precision:>9.3f} {s.recall:>7.3f} "
                  f"{s.coverage:>8.3f} {type_ok:>7} {ms:>9.2f}")
            if args.examples:
                for ex in s.examples:
                    print("      false positive:", repr(ex))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``sections-eval`` command."""
    p = subparsers.add_parser(
        "sections-eval", help="measure heading detection on MTSamples reports",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument("path", help="mtsamples_2018_scrape.csv.xz (reference data, not shipped)")
    p.add_argument("--limit", type=int, default=None, help="reports per group (default all)")
    p.add_argument("--examples", action="store_true", help="print some false positives")
    p.set_defaults(func=_handler)
