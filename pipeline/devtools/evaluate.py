"""Accuracy on the sample sets: WER, CER, medical-term error rate, key-term recall and the
"formatted" token error rate against the finished document, per file and overall.

    manifest.csv -> each audio file -> config "raw" (Whisper's text, no biased decoding)
                                    -> config "pipeline" (biased decoding + normalize stage)
                 -> one shared normalisation of reference and hypothesis -> jiwer alignment
                 -> EvaluationReport -> results.json, results.md, results.png

The shared normalisation (``WER_NORMALISATION``) is a chain of small jiwer-style transforms.
It keeps units and suture sizes ("mm", "4-0", "142/88" stay distinct from "40" or a filler);
it drops spoken formatting commands ("period", "new paragraph", ...) from both sides, so WER
measures the words while the formatted score measures the finished text.
"""

from __future__ import annotations

import json
import logging
import re
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import jiwer

from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.settings import Settings

__all__ = [
    "CONFIGS",
    "ALL_CONFIGS",
    "document_text",
    "Compose",
    "WER_NORMALISATION",
    "normalise",
    "format_tokens",
    "SampleRow",
    "read_samples",
    "validate_manifest",
    "TextScore",
    "score_text",
    "word_counts",
    "medical_errors",
    "term_recall",
    "formatted_counts",
    "FileResult",
    "Totals",
    "EvaluationReport",
    "run_evaluation",
    "rescore",
    "evaluate_all",
    "write_outputs",
    "default_out_dir",
    "rounded_metrics",
    "fmt",
    "METRIC_LABELS",
]

log = logging.getLogger(__name__)

#: The configurations an evaluation can compare; the first two run by default.
CONFIGS = ("raw", "pipeline")
#: Every configuration: ``document`` adds the sections stage to ``pipeline`` and scores the
#: finished document's text (header, headings, instructions lifted out).
ALL_CONFIGS = ("raw", "pipeline", "document")


# ------------------------------------------------------------------------------------------
# Normalisation: small transforms, one job each, chained by Compose (jiwer's shape).
# ------------------------------------------------------------------------------------------


#: Marks a clause boundary between transforms (never survives normalisation).
BOUNDARY = "|"


class Transform:
    """One text transformation (string -> string)."""

    def __call__(self, text: str) -> str:
        raise NotImplementedError


class Compose(Transform):
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, text: str) -> str:
        for transform in self.transforms:
            text = transform(text)
        return text


class UnicodeToAscii(Transform):
    """NFKC; curly quotes to straight ones; en/em dashes to hyphens; micro sign to 'u'."""

    _TABLE = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"',
                            "\u2013": "-", "\u2014": " - ", "\u00b5": "u", "\u03bc": "u",
                            "\u00d7": " x "})

    def __call__(self, text: str) -> str:
        return unicodedata.normalize("NFKC", text).translate(self._TABLE)


class Lowercase(Transform):
    """Lower-case everything."""

    def __call__(self, text: str) -> str:
        return text.lower()


class RemoveSpokenCommands(Transform):
    """Drop spoken formatting commands ("period", "new paragraph", "open paren", ...).

    Applied to reference and hypothesis alike, so a pipeline that turned "period" into "."
    and raw Whisper that wrote the word both score on the words that carry content.
    """

    COMMANDS = (
        "new paragraph", "next paragraph", "new line", "next line", "open parenthesis",
        "close parenthesis", "open paren", "close paren", "open bracket", "close bracket",
        "question mark", "exclamation point", "exclamation mark", "full stop", "semicolon",
        "semi colon", "period", "comma", "colon", "scratch that",
    )
    _RE = re.compile(r"\b(?:" + "|".join(re.escape(c).replace(r"\ ", r"\s+") for c in COMMANDS)
                     + r")\b")

    def __call__(self, text: str) -> str:
        return self._RE.sub(f" {BOUNDARY} ", text)


class SymbolsToWords(Transform):
    """Symbols that are read aloud: %, &, +, °, '14 x 11' -> by, '142/88' -> over."""

    def __call__(self, text: str) -> str:
        text = text.replace("%", " percent ").replace("&", " and ").replace("+", " plus ")
        text = text.replace("°", " degrees ")
        text = re.sub(r"(?<=\d)\s*x\s*(?=\d)", " by ", text)
        text = re.sub(r"(?<=\d)\s*/\s*(?=\d)", " over ", text)
        return text


class CleanDigits(Transform):
    """Thousands separators and clock colons go ("1,000" -> "1000", "14:20" -> "1420");
    ordinal suffixes go ("4th" -> "4"). "4-0" and "2.5" stay as they are."""

    def __call__(self, text: str) -> str:
        text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
        text = re.sub(r"\b(\d{1,2}):(\d{2})\b", r"\1\2", text)
        return re.sub(r"\b(\d+)(?:st|nd|rd|th)\b", r"\1", text)


class RemovePunctuation(Transform):
    """Punctuation goes, keeping what is part of a token: "4-0", "2.5", "calot's".

    Clause punctuation (, ; : . ! ?) becomes a boundary so that numbers on either side are
    never read as one ("eleven point two, zero point two five"). A hyphen stays only between
    digits ("4-0"); elsewhere it is a space ("follow-up" -> "follow up", "41-year-old" ->
    "41 year old").
    """

    def __call__(self, text: str) -> str:
        text = re.sub(r"(?<=\d)\.(?=\d)", "\x00", text)  # protect decimal points
        text = re.sub(r"(?<=\d)-(?=\d)", "\x01", text)  # protect "4-0"
        text = re.sub(r"(?<=[a-z])'(?=[a-z])", "\x02", text)  # protect "calot's", "o'clock"
        text = re.sub(r"[,;:.!?]", f" {BOUNDARY} ", text)
        text = re.sub(r"[^a-z0-9\x00\x01\x02|\s]", " ", text)
        return text.replace("\x00", ".").replace("\x01", "-").replace("\x02", "'")


class RemoveBoundaries(Transform):
    """Drop the clause boundaries the earlier transforms left."""

    def __call__(self, text: str) -> str:
        return " ".join(t for t in text.split() if t != BOUNDARY)


_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9,
}
_TEENS = {
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90,
}
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
    "fourteenth": 14, "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18,
    "nineteenth": 19, "twentieth": 20, "thirtieth": 30,
}
_MONTHS = {
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december",
}
_OH = {"oh", "o"}


def _kind(word: str) -> str | None:
    if word in _UNITS:
        return "unit"
    if word in _TEENS:
        return "teen"
    if word in _TENS:
        return "tens"
    if word == "hundred":
        return "hundred"
    if word == "thousand":
        return "thousand"
    return None


class NumbersToDigits(Transform):
    """Number words to digits, the way dictation reads numbers.

    "twenty five" -> 25, "one hundred twelve" -> 112, "eleven point two" -> 11.2,
    "four oh" -> 4-0 (a suture size, never 40), "March fourth" -> "march 4",
    "twenty second" -> 22. Adjacent numbers are read as one ("one forty two" -> 142,
    "nineteen sixty two" -> 1962) by ``MergeDigitRuns``.
    """

    def __call__(self, text: str) -> str:
        words = text.split()
        out: list[str] = []
        i = 0
        while i < len(words):
            w = words[i]
            if _kind(w) is None:
                if w in _ORDINALS and out and out[-1] in _MONTHS:
                    out.append(str(_ORDINALS[w]))
                else:
                    out.append(w)
                i += 1
                continue
            i = self._run(words, i, out)
        return " ".join(out)

    @staticmethod
    def _run(words: list[str], i: int, out: list[str]) -> int:
        """Convert one run of number words starting at ``i``; return the next index."""
        total = small = 0
        last: str | None = None
        started = False

        def flush() -> None:
            nonlocal total, small, last, started
            if started:
                out.append(str(total + small))
            total = small = 0
            last = None
            started = False

        while i < len(words):
            w = words[i]
            kind = _kind(w)
            if kind is None:
                # "twenty second" -> 22 (ordinal closing a tens word)
                if w in _ORDINALS and last == "tens" and _ORDINALS[w] < 10:
                    small += _ORDINALS[w]
                    i += 1
                    flush()
                    return i
                # "four oh" -> "4-0"
                if w in _OH and last == "unit" and total == 0 and small < 10 and started:
                    nxt = words[i + 1] if i + 1 < len(words) else ""
                    if _kind(nxt) is None:
                        out.append(f"{small}-0")
                        started = False
                        return i + 1
                # "eleven point two five" -> 11.25
                if w == "point" and started and i + 1 < len(words) and (
                    words[i + 1] in _UNITS or words[i + 1] in _OH
                ):
                    value = str(total + small)
                    started = False
                    j = i + 1
                    digits = ""
                    while j < len(words) and (words[j] in _UNITS or words[j] in _OH):
                        digits += str(_UNITS.get(words[j], 0))
                        j += 1
                    out.append(f"{value}.{digits}")
                    return j
                break
            v = _UNITS.get(w) or _TEENS.get(w) or _TENS.get(w) or 0
            if kind == "unit":
                if started and last in ("tens", "hundred", "thousand") and small % 10 == 0:
                    small += v
                else:
                    flush()
                    small = v
            elif kind in ("teen", "tens"):
                if started and last in ("hundred", "thousand") and small % 100 == 0:
                    small += v
                else:
                    flush()
                    small = v
            elif kind == "hundred":
                if started and last in ("unit", "teen", "tens") and small < 100:
                    small = (small or 1) * 100
                else:
                    flush()
                    small = 100
            else:  # thousand
                if started and last != "thousand":
                    total += (small or 1) * 1000
                    small = 0
                else:
                    flush()
                    total = 1000
            started = True
            last = kind
            i += 1
        flush()
        return i


class MergeDigitRuns(Transform):
    """Adjacent whole numbers read as one number become one, as dictated numbers are read:
    a number followed by a two-or-more-digit number ("1 42" -> "142", "19 62" -> "1962",
    "8 75" -> "875"), and three or more single digits (an MRN read digit by digit,
    "4 4 7 1 8 2 3" -> "4471823"). Two single digits stay apart ("five five" -> "5 5",
    "three 5 mm trocars"). "4-0" and "2.5" never merge; a day of the month stays apart
    from the year ("march 4 1962"); clause boundaries stop a run.
    """

    def __call__(self, text: str) -> str:
        out: list[str] = []
        run: list[str] = []

        def flush() -> None:
            if len(run) >= 3 and all(len(t) == 1 for t in run):
                out.append("".join(run))
            else:
                merged: list[str] = []
                for tok in run:
                    if merged and len(tok) >= 2:
                        merged[-1] += tok
                    else:
                        merged.append(tok)
                out.extend(merged)
            run.clear()

        for tok in text.split():
            if tok.isdigit():
                day_of_month = not run and bool(out) and out[-1] in _MONTHS
                if day_of_month:
                    out.append(tok)  # the day; a year that follows starts its own run
                    continue
                run.append(tok)
            else:
                flush()
                out.append(tok)
        flush()
        return " ".join(out)


class SpelledLetters(Transform):
    """Letters spelled one by one are one token: "m r n" -> "mrn", "e k g" -> "ekg"."""

    def __call__(self, text: str) -> str:
        out: list[str] = []
        run: list[str] = []
        for tok in [*text.split(), ""]:
            if len(tok) == 1 and tok.isalpha():
                run.append(tok)
                continue
            if len(run) >= 3 and run[0] in ("a", "i"):
                out.append(run.pop(0))  # "a c g r p" -> "a cgrp": the article stays a word
            if len(run) >= 2:
                out.append("".join(run))
            else:
                out.extend(run)
            run = []
            if tok:
                out.append(tok)
        return " ".join(out)


class LetterNumberCodes(Transform):
    """A letter read before a one- or two-digit number is one code: "t 4" -> "t4",
    "l 4 l 5" -> "l4 l5", "a 1 c" -> "a1c". "a" and "i" alone are words ("a 5" stays apart),
    and longer numbers are quantities ("vitamin d 1000")."""

    def __call__(self, text: str) -> str:
        toks = text.split()
        out: list[str] = []
        i = 0
        while i < len(toks):
            tok = toks[i]
            nxt = toks[i + 1] if i + 1 < len(toks) else ""
            after = toks[i + 2] if i + 2 < len(toks) else ""
            then = toks[i + 3] if i + 3 < len(toks) else ""
            single = len(tok) == 1 and tok.isalpha()
            short_number = nxt.isdigit() and len(nxt) <= 2
            if single and short_number and len(after) == 1 and after.isalpha() \
                    and after not in ("a", "i") and not then.isdigit():
                out.append(tok + nxt + after)  # "a 1 c" -> "a1c"
                i += 3
            elif single and tok not in ("a", "i") and short_number:
                out.append(tok + nxt)
                i += 2
            else:
                out.append(tok)
                i += 1
        return " ".join(out)


class CanonicalWords(Transform):
    """One spelling for words written several ways: units after a number ("mg" ->
    "milligram", "mm" -> "millimeter", "mmhg" -> "millimeter of mercury"), titles ("dr" ->
    "doctor"), British spellings, plurals of units. Ambiguous abbreviations ("mm", "g", "l",
    "min") are units only after a number: "mm hmm" is left alone."""

    UNITS: ClassVar[dict[str, str]] = {
        "mg": "milligram", "milligrams": "milligram", "mcg": "microgram", "ug": "microgram",
        "micrograms": "microgram", "g": "gram", "gm": "gram", "grams": "gram",
        "kg": "kilogram", "kilograms": "kilogram", "ml": "milliliter", "milliliters": "milliliter",
        "millilitre": "milliliter", "millilitres": "milliliter", "l": "liter", "liters": "liter",
        "litres": "liter", "litre": "liter", "cm": "centimeter", "centimeters": "centimeter",
        "centimetre": "centimeter", "centimetres": "centimeter", "mm": "millimeter",
        "millimeters": "millimeter", "millimetre": "millimeter", "millimetres": "millimeter",
        "mmhg": "millimeter of mercury", "mgy": "milligray",
        "mgy-cm": "milligray centimeter", "ms": "millisecond", "msec": "millisecond",
        "milliseconds": "millisecond", "lbs": "pound", "lb": "pound", "pounds": "pound",
        "bpm": "beats per minute", "min": "minute", "minutes": "minute", "hrs": "hour",
        "hours": "hour", "hr": "hour",
    }
    WORDS: ClassVar[dict[str, str]] = {
        "dr": "doctor", "mrs": "missus", "mr": "mister", "ok": "okay",
        "millimeters": "millimeter", "milligrams": "milligram", "milliliters": "milliliter",
        "centimeters": "centimeter", "kilograms": "kilogram", "micrograms": "microgram",
    }

    #: unit abbreviations that mean nothing else, so they are expanded even without a number
    ALWAYS: ClassVar[frozenset[str]] = frozenset(
        {"mg", "mcg", "ml", "cm", "kg", "mmhg", "mgy", "milligrams", "micrograms",
         "milliliters", "millimeters", "centimeters", "kilograms"})

    def __call__(self, text: str) -> str:
        out: list[str] = []
        for tok in text.split():
            prev_is_number = bool(out) and bool(re.fullmatch(r"[\d.\-]+", out[-1]))
            if (prev_is_number or tok in self.ALWAYS) and tok in self.UNITS:
                out.extend(self.UNITS[tok].split())
            else:
                out.append(self.WORDS.get(tok, tok))
        return " ".join(out)


class CollapseSpaces(Transform):
    """Single spaces, no leading or trailing space."""

    def __call__(self, text: str) -> str:
        return " ".join(text.split())


#: The one normalisation applied to every reference and hypothesis before WER/CER.
WER_NORMALISATION = Compose(
    [
        UnicodeToAscii(),
        Lowercase(),
        RemoveSpokenCommands(),
        SymbolsToWords(),
        CleanDigits(),
        RemovePunctuation(),
        NumbersToDigits(),
        MergeDigitRuns(),
        SpelledLetters(),
        LetterNumberCodes(),
        CanonicalWords(),
        RemoveBoundaries(),
        CollapseSpaces(),
    ]
)


def normalise(text: str) -> str:
    """Reference or hypothesis -> the normalised form WER is computed on."""
    return WER_NORMALISATION(text or "")


_FMT_TOKEN = re.compile(r"[A-Za-z0-9]+(?:[-'./:][A-Za-z0-9]+)*|[^\sA-Za-z0-9]")


def format_tokens(text: str) -> list[str]:
    """Case- and punctuation-sensitive tokens of a finished document.

    "PREOPERATIVE DIAGNOSIS: 4-0 Vicryl, 142/88." -> ["PREOPERATIVE", "DIAGNOSIS", ":",
    "4-0", "Vicryl", ",", "142/88", "."]. Whitespace and line breaks are not tokens.
    """
    text = UnicodeToAscii()(text or "")
    return _FMT_TOKEN.findall(text)


# ------------------------------------------------------------------------------------------
# Manifests
# ------------------------------------------------------------------------------------------


@dataclass
class SampleRow:
    """One row of a sample manifest with its paths resolved."""

    id: str
    audio: Path
    reference: Path
    expected: Path | None = None
    terms: Path | None = None
    sidecar: Path | None = None
    document_type: str | None = None
    voice: str = ""
    engine: str = ""
    duration_s: float = 0.0
    licence: str = ""
    source: str = ""
    purpose: str = ""
    tasks: Path | None = None

    def reference_text(self) -> str:
        return self.reference.read_text(encoding="utf-8")

    def expected_text(self) -> str | None:
        return self.expected.read_text(encoding="utf-8") if self.expected else None

    def term_list(self) -> list[str]:
        if not self.terms:
            return []
        lines = self.terms.read_text(encoding="utf-8").splitlines()
        return [t.strip() for t in lines if t.strip() and not t.startswith("#")]


REQUIRED_COLUMNS = ("id", "audio", "reference", "licence", "source")


def read_samples(manifest_path: Path) -> list[SampleRow]:
    """Read a manifest into ``SampleRow`` records (paths relative to the manifest)."""
    from pipeline.devtools.samplegen import read_manifest

    manifest_path = Path(manifest_path)
    if not manifest_path.is_file():
        raise ConfigError(f"Manifest {manifest_path} does not exist; expected a manifest.csv.")
    base = manifest_path.parent
    rows = read_manifest(manifest_path)
    if rows:
        missing = [c for c in REQUIRED_COLUMNS if c not in rows[0]]
        if missing:
            raise ConfigError(
                f"Manifest {manifest_path} lacks the column(s) {', '.join(missing)}."
            )

    def path(value: str | None) -> Path | None:
        return base / value if value else None

    samples = []
    for row in rows:
        samples.append(
            SampleRow(
                id=row["id"],
                audio=base / row["audio"],
                reference=base / row["reference"],
                expected=path(row.get("expected")),
                terms=path(row.get("terms")),
                sidecar=path(row.get("sidecar")),
                document_type=row.get("document_type") or None,
                voice=row.get("voice", ""),
                engine=row.get("engine", ""),
                duration_s=float(row.get("duration_s") or 0.0),
                licence=row.get("licence", ""),
                source=row.get("source", ""),
                purpose=row.get("purpose", ""),
                tasks=path(row.get("tasks")),
            )
        )
    return samples


def validate_manifest(manifest_path: Path) -> list[SampleRow]:
    """Read a manifest and check it: files exist, reference non-empty, licence and source set,
    ids unique. Raise ``ConfigError`` naming the first problem."""
    samples = read_samples(manifest_path)
    if not samples:
        raise ConfigError(f"Manifest {manifest_path} lists no samples.")
    seen: set[str] = set()
    for s in samples:
        if s.id in seen:
            raise ConfigError(f"Manifest {manifest_path}: id {s.id!r} appears twice.")
        seen.add(s.id)
        for label, p in (("audio", s.audio), ("reference", s.reference), ("expected", s.expected),
                         ("terms", s.terms), ("sidecar", s.sidecar), ("tasks", s.tasks)):
            if p is not None and not p.is_file():
                raise ConfigError(f"Manifest {manifest_path}: {label} file {p.name} of sample "
                                  f"{s.id!r} does not exist.")
        if not s.reference_text().strip():
            raise ConfigError(f"Manifest {manifest_path}: reference of {s.id!r} is empty.")
        if not s.licence.strip() or not s.source.strip():
            raise ConfigError(f"Manifest {manifest_path}: sample {s.id!r} has no licence or "
                              "source.")
    return samples


# ------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------


@dataclass
class TextScore:
    """Error counts of one hypothesis against one reference (normalised words)."""

    ref_words: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hits: int = 0
    ref_chars: int = 0
    char_errors: int = 0
    medical_ref_words: int = 0
    medical_errors: int = 0
    terms_total: int = 0
    terms_found: int = 0
    fmt_ref_tokens: int = 0
    fmt_errors: int = 0
    missed_terms: list[str] = field(default_factory=list)

    @property
    def word_errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    def rates(self) -> dict[str, float | None]:
        """WER, CER, medical-term error rate, key-term recall and formatted TER."""
        return {
            "wer": _ratio(self.word_errors, self.ref_words),
            "cer": _ratio(self.char_errors, self.ref_chars),
            "medical_term_error_rate": _ratio(self.medical_errors, self.medical_ref_words),
            "key_term_recall": _ratio(self.terms_found, self.terms_total),
            "formatted_ter": _ratio(self.fmt_errors, self.fmt_ref_tokens),
        }


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def word_counts(ref_norm: str, hyp_norm: str) -> tuple[int, int, int, int, int, Any]:
    """(ref words, S, D, I, hits, jiwer output) of normalised texts (empty ref allowed)."""
    ref_words = ref_norm.split()
    hyp_words = hyp_norm.split()
    if not ref_words:
        return 0, 0, 0, len(hyp_words), 0, None
    if not hyp_words:
        return len(ref_words), 0, len(ref_words), 0, 0, None
    out = jiwer.process_words(ref_norm, hyp_norm)
    return len(ref_words), out.substitutions, out.deletions, out.insertions, out.hits, out


def char_counts(ref_norm: str, hyp_norm: str) -> tuple[int, int]:
    """(reference characters, character edits) of normalised texts."""
    if not ref_norm:
        return 0, len(hyp_norm)
    if not hyp_norm:
        return len(ref_norm), len(ref_norm)
    out = jiwer.process_characters(ref_norm, hyp_norm)
    return len(ref_norm), out.substitutions + out.deletions + out.insertions


def medical_errors(
    ref_norm: str, hyp_norm: str, is_medical: Callable[[str], bool]
) -> tuple[int, int]:
    """(medical reference words, how many of them were not recognised exactly).

    A medical reference word counts as an error when the alignment substitutes or deletes
    it; insertions belong to no reference word and are not counted here.
    """
    ref_words = ref_norm.split()
    medical_idx = [i for i, w in enumerate(ref_words) if is_medical(w)]
    if not medical_idx:
        return 0, 0
    hyp_words = hyp_norm.split()
    if not hyp_words:
        return len(medical_idx), len(medical_idx)
    out = jiwer.process_words(ref_norm, hyp_norm)
    correct: set[int] = set()
    for chunk in out.alignments[0]:
        if chunk.type == "equal":
            correct.update(range(chunk.ref_start_idx, chunk.ref_end_idx))
    return len(medical_idx), sum(1 for i in medical_idx if i not in correct)


def term_recall(terms: Iterable[str], hyp_norm: str) -> tuple[int, list[str]]:
    """(terms found, terms missed): a term is found when its normalised words appear
    contiguously in the normalised hypothesis (case-insensitive)."""
    hyp = f" {hyp_norm} "
    found = 0
    missed: list[str] = []
    for term in terms:
        t = normalise(term)
        if t and f" {t} " in hyp:
            found += 1
        else:
            missed.append(term)
    return found, missed


def formatted_counts(expected: str, hypothesis: str) -> tuple[int, int]:
    """(expected tokens, token edits) of the hypothesis against the finished document,
    case- and punctuation-sensitive (``format_tokens``)."""
    ref = format_tokens(expected)
    hyp = format_tokens(hypothesis)
    if not ref:
        return 0, len(hyp)
    if not hyp:
        return len(ref), len(ref)
    # jiwer splits on whitespace; tokens never contain whitespace.
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return len(ref), out.substitutions + out.deletions + out.insertions


def score_text(
    reference: str,
    hypothesis: str,
    *,
    is_medical: Callable[[str], bool],
    terms: Sequence[str] = (),
    expected: str | None = None,
) -> TextScore:
    """Every metric of one hypothesis against its reference (and expected document)."""
    ref_norm = normalise(reference)
    hyp_norm = normalise(hypothesis)
    score = TextScore()
    (score.ref_words, score.substitutions, score.deletions, score.insertions, score.hits,
     _out) = word_counts(ref_norm, hyp_norm)
    score.ref_chars, score.char_errors = char_counts(ref_norm, hyp_norm)
    score.medical_ref_words, score.medical_errors = medical_errors(ref_norm, hyp_norm,
                                                                   is_medical)
    score.terms_total = len(terms)
    score.terms_found, score.missed_terms = term_recall(terms, hyp_norm)
    if expected is not None:
        score.fmt_ref_tokens, score.fmt_errors = formatted_counts(expected, hypothesis)
    return score


# ------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------


@dataclass
class FileResult:
    """One file under one configuration."""

    id: str
    config: str
    duration_s: float
    score: TextScore
    transcribe_s: float = 0.0
    normalize_s: float = 0.0
    flags: list[str] = field(default_factory=list)
    hypothesis: str = ""
    error: str | None = None
    cpu_s: float = 0.0  # process CPU seconds of the transcription (all threads)

    @property
    def speed(self) -> float | None:
        """How many times faster than real time the transcription ran."""
        return _ratio(self.duration_s, self.transcribe_s)

    def metrics(self) -> dict[str, Any]:
        return {**self.score.rates(), "speed_x_realtime": self.speed}

    def to_dict(self) -> dict[str, Any]:
        s = self.score
        return {
            "id": self.id,
            "config": self.config,
            "duration_s": round(self.duration_s, 3),
            **rounded_metrics(self.metrics()),
            "counts": {
                "ref_words": s.ref_words, "substitutions": s.substitutions,
                "deletions": s.deletions, "insertions": s.insertions, "hits": s.hits,
                "ref_chars": s.ref_chars, "char_errors": s.char_errors,
                "medical_ref_words": s.medical_ref_words, "medical_errors": s.medical_errors,
                "terms_total": s.terms_total, "terms_found": s.terms_found,
                "fmt_ref_tokens": s.fmt_ref_tokens, "fmt_errors": s.fmt_errors,
            },
            "missed_terms": s.missed_terms,
            "transcribe_s": round(self.transcribe_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "normalize_s": round(self.normalize_s, 4),
            "flags": self.flags,
            "error": self.error,
            "hypothesis": self.hypothesis,
        }


@dataclass
class Totals:
    """Sums over the files of one configuration; rates are total errors / total units."""

    config: str
    files: int = 0
    failed: int = 0
    duration_s: float = 0.0
    transcribe_s: float = 0.0
    cpu_s: float = 0.0
    normalize_s: float = 0.0
    score: TextScore = field(default_factory=TextScore)

    def add(self, result: FileResult) -> None:
        self.files += 1
        if result.error:
            self.failed += 1
        self.duration_s += result.duration_s
        self.transcribe_s += result.transcribe_s
        self.cpu_s += result.cpu_s
        self.normalize_s += result.normalize_s
        a, b = self.score, result.score
        for name in ("ref_words", "substitutions", "deletions", "insertions", "hits",
                     "ref_chars", "char_errors", "medical_ref_words", "medical_errors",
                     "terms_total", "terms_found", "fmt_ref_tokens", "fmt_errors"):
            setattr(a, name, getattr(a, name) + getattr(b, name))

    def metrics(self) -> dict[str, Any]:
        return {
            **self.score.rates(),
            "speed_x_realtime": _ratio(self.duration_s, self.transcribe_s),
        }

    def to_dict(self) -> dict[str, Any]:
        s = self.score
        return {
            "config": self.config,
            "files": self.files,
            "failed": self.failed,
            "duration_s": round(self.duration_s, 3),
            "transcribe_s": round(self.transcribe_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            # audio seconds per CPU second: less sensitive to other load than wall-clock speed
            "audio_per_cpu_s": round(self.duration_s / self.cpu_s, 2) if self.cpu_s else None,
            "normalize_s": round(self.normalize_s, 4),
            **rounded_metrics(self.metrics()),
            "counts": {
                "ref_words": s.ref_words, "word_errors": s.word_errors,
                "ref_chars": s.ref_chars, "char_errors": s.char_errors,
                "medical_ref_words": s.medical_ref_words, "medical_errors": s.medical_errors,
                "terms_total": s.terms_total, "terms_found": s.terms_found,
                "fmt_ref_tokens": s.fmt_ref_tokens, "fmt_errors": s.fmt_errors,
            },
        }


def rounded_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Rates to 4 decimals (what JSON stores and what the tables print)."""
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}


@dataclass
class EvaluationReport:
    """Everything one evaluation run measured."""

    manifest: Path
    set_name: str
    model: str
    device: str
    compute_type: str
    beam_size: int
    configs: list[str]
    medical_vocabulary: str  # "pipeline.language.vocab" or "terms.txt"
    files: list[FileResult]
    overall: dict[str, Totals]
    started_at: str
    elapsed_s: float
    model_load_s: float = 0.0
    out_dir: Path | None = None
    outputs: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "manifest": str(self.manifest),
            "set": self.set_name,
            "model": self.model,
            "device": self.device,
            "compute_type": self.compute_type,
            "beam_size": self.beam_size,
            "configs": self.configs,
            "medical_vocabulary": self.medical_vocabulary,
            "normalisation": [type(t).__name__ for t in WER_NORMALISATION.transforms],
            "started_at": self.started_at,
            "elapsed_s": round(self.elapsed_s, 2),
            "model_load_s": round(self.model_load_s, 2),
            "overall": {c: t.to_dict() for c, t in self.overall.items()},
            "files": [f.to_dict() for f in self.files],
        }

    def summary(self) -> dict[str, float]:
        """Flat numeric figures (``<config>_<metric>``), no text: for flows and dashboards."""
        flat: dict[str, float] = {}
        for config, totals in self.overall.items():
            for name, value in rounded_metrics(totals.metrics()).items():
                if isinstance(value, (int, float)):
                    flat[f"{self.set_name}_{config}_{name}"] = value
        return flat


# ------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------


def default_out_dir(settings: Settings) -> Path:
    """``<data_dir>/results/<UTC timestamp>/``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return settings.data_path / "results" / stamp


def _medical_predicate(
    settings: Settings, samples: list[SampleRow]
) -> tuple[Callable[[str], bool], str]:
    """The medical-vocabulary test and its name: ``pipeline.language.vocab`` when it loads, else the
    union of the set's terms.txt words."""
    try:
        from pipeline.language import vocab

        index = vocab.get_index(settings)
        return index.is_medical, "pipeline.language.vocab"
    except (ImportError, PipelineError, OSError) as exc:
        log.warning("medical vocabulary unavailable (%s); using the set's terms.txt",
                    type(exc).__name__)
    words: set[str] = set()
    stop = {"of", "the", "and", "a", "an", "to", "in", "with", "on", "for", "by"}
    for s in samples:
        for term in s.term_list():
            words.update(w for w in normalise(term).split() if w not in stop and
                         not w.replace(".", "").replace("-", "").isdigit())
    return words.__contains__, "terms.txt"


def _meta(sample: SampleRow) -> Any:
    from pipeline.core.records import DictationMeta
    from pipeline.ingest.sidecar import parse_sidecar

    if sample.sidecar:
        return parse_sidecar(sample.sidecar.read_bytes(), name=sample.sidecar.name)
    return DictationMeta(document_type=sample.document_type)


class _Transcriber:
    """Transcribes each file once per decoding setting and caches the transcript."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache: dict[tuple[str, bool], tuple[Any, Any, float]] = {}
        self.cpu: dict[tuple[str, bool], float] = {}

    def get(self, sample: SampleRow, biased: bool) -> tuple[Any, Any, float]:
        """(dictation, transcript, wall seconds) for ``sample`` with or without biasing.
        The process CPU seconds of that transcription are kept in ``cpu``."""
        key = (str(sample.audio), biased)
        if key not in self.cache:
            from pipeline.service import process

            settings = self.settings.model_copy(update={"biased_decoding": biased})
            dictation = process.load_dictation(sample.audio, settings, _meta(sample))
            t0, c0 = time.perf_counter(), time.process_time()
            transcript = process.transcribe_stage(dictation, settings)
            self.cache[key] = (dictation, transcript, time.perf_counter() - t0)
            self.cpu[key] = time.process_time() - c0
        return self.cache[key]


def _hypothesis(
    config: str, sample: SampleRow, transcriber: _Transcriber, settings: Settings
) -> tuple[str, float, float, float, list[str]]:
    """(text, audio seconds, transcribe seconds, normalize seconds, flags) of one config on
    one file."""
    if config == "raw":
        dictation, transcript, secs = transcriber.get(sample, biased=False)
        return (transcript.raw_text, float(dictation.audio.duration_s), secs, 0.0,
                list(transcript.flags))
    if config in ("pipeline", "document"):
        from pipeline.service import process

        dictation, transcript, secs = transcriber.get(sample, biased=settings.biased_decoding)
        t0 = time.perf_counter()
        note = process.normalize_stage(transcript, dictation, settings)
        text = note.text
        flags = list(dict.fromkeys([*transcript.flags, *note.flags]))
        if config == "document":
            document = process.structure_stage(note, dictation, settings)
            text = document_text(document)
            flags = list(dict.fromkeys([*flags, *document.flags]))
        norm_s = time.perf_counter() - t0
        return text, float(dictation.audio.duration_s), secs, norm_s, flags
    raise ConfigError(f"Unknown evaluation config {config!r}; expected one of "
                      f"{', '.join(ALL_CONFIGS)}.")


_HEADER_LINES = (("patient_name", "PATIENT"), ("date_of_birth", "DATE OF BIRTH"),
                 ("mrn", "MRN"), ("date_of_service", "DATE OF SERVICE"))


def document_text(document: Any) -> str:
    """A structured ``Document`` as plain text in the samples' expected.txt layout: header
    lines, "Dear ...," for letters, then "HEADING: text" paragraphs (instructions, which the
    sections stage lifted out, are not part of the text)."""
    lines: list[str] = []
    for key, label in _HEADER_LINES:
        field_ = document.header.get(key)
        if field_ is not None and field_.value:
            lines.append(f"{label}: {field_.value}")
    recipient = document.header.get("recipient")
    if recipient is not None and recipient.value:
        lines += ["", f"Dear {recipient.value},"]
    for section in document.sections:
        heading = (section.heading or "").strip().rstrip(":").strip()
        body = (section.text or "").strip()
        lines.append("")
        lines.append(f"{heading.upper()}: {body}" if heading else body)
    return "\n".join(lines).strip() + "\n"


def run_evaluation(
    manifest_path: Path,
    settings: Settings,
    configs: Sequence[str] = CONFIGS,
    out_dir: Path | None = None,
    *,
    limit: int | None = None,
    progress: Callable[[str, str], None] | None = None,
) -> EvaluationReport:
    """Transcribe every file of a manifest under each config, score it, and write
    results.json, results.md and results.png into ``out_dir`` (default
    ``<data_dir>/results/<UTC timestamp>/<set name>/``). Returns the report.

    ``progress(sample_id, config)`` is called before each file/config (for a progress bar).
    A file that fails to transcribe is recorded with its error and scored as empty.
    """
    configs = list(dict.fromkeys(configs))
    for config in configs:
        if config not in ALL_CONFIGS:
            raise ConfigError(f"Unknown evaluation config {config!r}; expected one of "
                              f"{', '.join(ALL_CONFIGS)}.")
    manifest_path = Path(manifest_path)
    samples = validate_manifest(manifest_path)
    if limit is not None:
        samples = samples[: max(limit, 0)]
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    is_medical, vocab_name = _medical_predicate(settings, samples)
    # Load the speech model before the clock starts on the first file, so that per-file
    # speed measures transcription, not loading.
    from pipeline.speech import models as speech_models

    t_load = time.perf_counter()
    speech_models.load(settings)
    model_load_s = time.perf_counter() - t_load
    transcriber = _Transcriber(settings)
    files: list[FileResult] = []
    overall = {c: Totals(config=c) for c in configs}
    for sample in samples:
        reference = sample.reference_text()
        expected = sample.expected_text()
        terms = sample.term_list()
        for config in configs:
            if progress:
                progress(sample.id, config)
            error = None
            try:
                text, duration, secs, norm_s, flags = _hypothesis(config, sample, transcriber,
                                                                  settings)
            except PipelineError as exc:
                text, duration, secs, norm_s, flags = "", sample.duration_s, 0.0, 0.0, []
                error = str(exc)
                log.warning("evaluate sample=%s config=%s failed code=%s", sample.id, config,
                            exc.code)
            except Exception as exc:  # another area's stage broke: record it, keep measuring
                if config != "document":
                    raise
                text, duration, secs, norm_s, flags = "", sample.duration_s, 0.0, 0.0, []
                error = f"The sections stage failed with {type(exc).__name__}."
                log.warning("evaluate sample=%s config=document failed %s", sample.id,
                            type(exc).__name__)
            score = score_text(reference, text, is_medical=is_medical, terms=terms,
                               expected=expected)
            biased = config != "raw" and settings.biased_decoding
            cpu_s = transcriber.cpu.get((str(sample.audio), biased), 0.0)
            result = FileResult(id=sample.id, config=config, duration_s=duration, score=score,
                                transcribe_s=secs, normalize_s=norm_s, flags=flags,
                                hypothesis=text, error=error, cpu_s=cpu_s)
            files.append(result)
            overall[config].add(result)
            log.info("evaluated sample=%s config=%s ref_words=%d errors=%d transcribe_s=%.2f",
                     sample.id, config, score.ref_words, score.word_errors, secs)
    report = EvaluationReport(
        manifest=manifest_path,
        set_name=manifest_path.parent.name,
        model=settings.model,
        device=settings.device,
        compute_type=settings.compute_type,
        beam_size=settings.beam_size,
        configs=configs,
        medical_vocabulary=vocab_name,
        files=files,
        overall=overall,
        started_at=started.isoformat(timespec="seconds"),
        elapsed_s=time.perf_counter() - t0,
        model_load_s=model_load_s,
    )
    out_dir = Path(out_dir) if out_dir else default_out_dir(settings) / report.set_name
    write_outputs(report, out_dir)
    return report


def rescore(
    results_json: Path, settings: Settings, out_dir: Path | None = None
) -> EvaluationReport:
    """Score the hypotheses stored in an earlier results.json again, with the current
    normalisation and references, without transcribing anything (timings are kept).
    Writes the outputs into ``out_dir`` (default: a ``rescored`` folder beside the JSON)."""
    results_json = Path(results_json)
    try:
        data = json.loads(results_json.read_text(encoding="utf-8"))
        manifest = Path(data["manifest"])
        configs = list(data["configs"])
        stored = list(data["files"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{results_json} is not a results.json written by dictation "
                          f"evaluate ({type(exc).__name__}).") from exc
    samples = {s.id: s for s in validate_manifest(manifest)}
    is_medical, vocab_name = _medical_predicate(settings, list(samples.values()))
    files: list[FileResult] = []
    overall = {c: Totals(config=c) for c in configs}
    for f in stored:
        sample = samples.get(f["id"])
        if sample is None:
            raise ConfigError(f"Sample {f['id']!r} of {results_json} is not in {manifest}.")
        score = score_text(sample.reference_text(), f.get("hypothesis") or "",
                           is_medical=is_medical, terms=sample.term_list(),
                           expected=sample.expected_text())
        result = FileResult(id=f["id"], config=f["config"], duration_s=f["duration_s"],
                            score=score, transcribe_s=f["transcribe_s"],
                            normalize_s=f["normalize_s"], flags=list(f.get("flags") or []),
                            cpu_s=float(f.get("cpu_s") or 0.0),
                            hypothesis=f.get("hypothesis") or "", error=f.get("error"))
        files.append(result)
        overall[result.config].add(result)
    report = EvaluationReport(
        manifest=manifest, set_name=data.get("set", manifest.parent.name),
        model=data.get("model", ""), device=data.get("device", ""),
        compute_type=data.get("compute_type", ""), beam_size=int(data.get("beam_size", 0)),
        configs=configs, medical_vocabulary=vocab_name, files=files, overall=overall,
        started_at=data.get("started_at", ""), elapsed_s=float(data.get("elapsed_s", 0.0)),
        model_load_s=float(data.get("model_load_s", 0.0)),
    )
    write_outputs(report, Path(out_dir) if out_dir else results_json.parent / "rescored")
    return report


def evaluate_all(
    settings: Settings, configs: Sequence[str] = CONFIGS, out_dir: Path | None = None
) -> dict[str, float]:
    """Evaluate every ``samples/*/manifest.csv`` (the nightly run); return flat figures."""
    out_dir = Path(out_dir) if out_dir else default_out_dir(settings)
    figures: dict[str, float] = {}
    for manifest in sorted(Path(settings.samples_dir).glob("*/manifest.csv")):
        report = run_evaluation(manifest, settings, configs, out_dir / manifest.parent.name)
        figures.update(report.summary())
    return figures


# ------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------

METRIC_LABELS = {
    "wer": "WER",
    "cer": "CER",
    "medical_term_error_rate": "Med-term ER",
    "key_term_recall": "Term recall",
    "formatted_ter": "Formatted TER",
    "speed_x_realtime": "Speed (x RT)",
}


def fmt(value: Any, metric: str = "") -> str:
    """How a figure is printed in the console table and in results.md."""
    if value is None:
        return "-"
    if metric == "speed_x_realtime":
        return f"{value:.1f}"
    return f"{value:.3f}"


def _markdown(report: EvaluationReport) -> str:
    lines = [
        f"# Evaluation: {report.set_name}",
        "",
        f"- manifest: `{report.manifest}`",
        f"- model: {report.model} ({report.device}, {report.compute_type}, beam "
        f"{report.beam_size})",
        f"- configs: {', '.join(report.configs)}",
        f"- medical vocabulary: {report.medical_vocabulary}",
        f"- started: {report.started_at} UTC, {report.elapsed_s:.1f} s",
        "",
        "## Overall",
        "",
        "| config | files | audio s | " + " | ".join(METRIC_LABELS.values())
        + " | audio s / CPU s |",
        "|---|---:|---:|" + "---:|" * (len(METRIC_LABELS) + 1),
    ]
    for config, totals in report.overall.items():
        m = rounded_metrics(totals.metrics())
        per_cpu = f"{totals.duration_s / totals.cpu_s:.1f}" if totals.cpu_s else "-"
        lines.append(f"| {config} | {totals.files} | {totals.duration_s:.1f} | "
                     + " | ".join(fmt(m[k], k) for k in METRIC_LABELS) + f" | {per_cpu} |")
    lines += ["", "## Per file", "",
              "| id | config | audio s | " + " | ".join(METRIC_LABELS.values()) + " |",
              "|---|---|---:|" + "---:|" * len(METRIC_LABELS)]
    for f in report.files:
        m = rounded_metrics(f.metrics())
        lines.append(f"| {f.id} | {f.config} | {f.duration_s:.1f} | "
                     + " | ".join(fmt(m[k], k) for k in METRIC_LABELS) + " |")
    lines += ["", "WER/CER after the shared normalisation "
              f"({', '.join(type(t).__name__ for t in WER_NORMALISATION.transforms)}); "
              "overall rates are total errors / total reference units. Formatted TER: "
              "case- and punctuation-sensitive tokens against the expected document.", ""]
    return "\n".join(lines)


def _chart(report: EvaluationReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["wer", "cer", "medical_term_error_rate", "formatted_ter", "key_term_recall"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5),
                                   gridspec_kw={"width_ratios": [1, 1.6]})
    width = 0.8 / max(len(report.configs), 1)
    for i, config in enumerate(report.configs):
        m = report.overall[config].metrics()
        values = [m[k] if m[k] is not None else 0.0 for k in metrics]
        xs = [j + i * width for j in range(len(metrics))]
        bars = ax1.bar(xs, values, width, label=config)
        ax1.bar_label(bars, labels=[fmt(m[k]) for k in metrics], fontsize=7, rotation=90,
                      padding=2)
    ax1.set_xticks([j + width * (len(report.configs) - 1) / 2 for j in range(len(metrics))])
    ax1.set_xticklabels([METRIC_LABELS[k] for k in metrics], rotation=20, fontsize=8)
    tallest = max((report.overall[c].metrics()[k] or 0.0 for c in report.configs
                   for k in metrics), default=1.0)
    ax1.set_ylim(0, max(1.15, tallest * 1.15))
    ax1.set_title(f"{report.set_name}: overall ({report.model})")
    ax1.legend(fontsize=8)
    ids = list(dict.fromkeys(f.id for f in report.files))
    for i, config in enumerate(report.configs):
        by_id = {f.id: f for f in report.files if f.config == config}
        values = [by_id[x].metrics()["wer"] or 0.0 for x in ids]
        ax2.bar([j + i * width for j in range(len(ids))], values, width, label=config)
    ax2.set_xticks([j + width * (len(report.configs) - 1) / 2 for j in range(len(ids))])
    ax2.set_xticklabels(ids, rotation=60, ha="right", fontsize=7)
    ax2.set_title("WER per file")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(report: EvaluationReport, out_dir: Path) -> dict[str, Path]:
    """Write results.json, results.md and results.png into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md",
             "png": out_dir / "results.png"}
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    paths["md"].write_text(_markdown(report), encoding="utf-8")
    _chart(report, paths["png"])
    report.out_dir = out_dir
    report.outputs = paths
    return paths
