"""The adaptation learning curve: how much a physician's model gains from that physician's
signed dictations (issue #15, section 6).

One synthetic voice plays the physician. It dictates realistic reports (MTSamples, read at
run time from a path the maintainer gives; never shipped), each cut to 60-120 s of speech:

    MTSamples CSV -> unique reports, shuffled with a seed -> cut at sentence ends to a word
        budget -> spoken form ("Plan colon ... period new paragraph", numbers in words)
        -> one TTS voice, sentence by sentence (cached by engine, voice, rate and text)
        -> one FLAC per report, with the exact start and end of every sentence

    signed = the first N reports (N = 0, 5, 10, 20, 40), held out = the M reports after the
    first 40 (the same M for every N and every run, so the curve compares like with like)

    for each model and N: train on the signed reports' windows (<= 30 s of whole sentences,
    the spoken text as target) with the training module's defaults -> score the held-out
    reports of that voice, the same reports in a second voice never trained on, and the
    general-speech set, with ``dictation evaluate``'s own scoring (``run_evaluation``)

N = 0 is the stock model. The sentence times come from the rendering itself (each sentence
is synthesised on its own and the files are joined sample-exactly), so the training windows
need no forced alignment: that is the simplest honest alignment a synthetic voice allows.

Key terms of a report are the MTSamples keywords (curated by the site) that the cut
dictation says and that hold at least one word the medical vocabulary counts as medical.
The medical-term error rate, formatted token error and WER are ``pipeline.devtools.evaluate``'s,
unchanged. Logs name reports by opaque ids (``mts-<hash>``) and counts, never their text.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import random
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError
from pipeline.core.settings import PROJECT_ROOT, Settings

__all__ = [
    "DEFAULT_MTSAMPLES",
    "Voice",
    "PHYSICIAN_VOICE",
    "OTHER_VOICE",
    "CorpusOptions",
    "CurveOptions",
    "QUICK",
    "CorpusReport",
    "RenderedReport",
    "Window",
    "read_source",
    "spoken_sentence",
    "build_report",
    "select_reports",
    "key_terms",
    "render_report",
    "windows",
    "write_set",
    "report_id",
    "run_curve",
    "CurvePoint",
    "CurveReport",
    "table_rows",
    "TABLE_HEADER",
    "write_outputs",
    "load_report",
    "default_mtsamples",
]

log = logging.getLogger(__name__)

#: Where the MTSamples crawl lies in a checkout that has the shared data beside it.
DEFAULT_MTSAMPLES = (PROJECT_ROOT.parent / "shared" / "data" / "mtsamples"
                     / "mtsamples_2018_scrape.csv.xz")

_SOURCE_LICENCE = ("reference material from mtsamples.com (credit and link: "
                   "https://mtsamples.com); rendered at evaluation time, never shipped")


@dataclass(frozen=True)
class Voice:
    """A text-to-speech voice as ``samplegen`` renders it (rate: words per minute for
    espeak-ng, a duration stretch for flite)."""

    engine: str
    voice: str
    rate: str

    @property
    def label(self) -> str:
        return f"{self.engine} {self.voice} @ {self.rate}"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", f"{self.engine}-{self.voice}-{self.rate}").strip("-")


#: The simulated physician: one espeak-ng voice at one fixed rate.
PHYSICIAN_VOICE = Voice("espeak-ng", "en-us+m3", "150")
#: The speaker never trained on: another synthesiser altogether (flite's unit-selection "slt"
#: voice), so a gain there is not the physician's voice learnt but the reports' language.
OTHER_VOICE = Voice("flite", "slt", "1.0")


@dataclass(frozen=True)
class CorpusOptions:
    """How reports are picked and cut."""

    seed: int = 15
    #: spoken words per report, formatting commands included: at espeak-ng's 150 words a
    #: minute and its sentence pauses, 150-260 words are about 60-120 s of speech
    min_words: int = 150
    max_words: int = 260
    #: a sentence longer than this is spoken in pieces (a training window holds whole pieces)
    max_chunk_words: int = 45
    #: keep only reports whose MTSamples specialty contains one of these (case-insensitive)
    specialties: tuple[str, ...] = ()


@dataclass(frozen=True)
class CurveOptions:
    """One learning-curve run."""

    models: tuple[str, ...] = ("tiny.en", "base")
    n_values: tuple[int, ...] = (0, 5, 10, 20, 40)
    m: int = 10
    #: the held-out reports are the M after the first ``pool`` (or after the largest N when
    #: that is larger): the same held-out set whichever N values a run measures
    pool: int = 40
    #: held-out reports the second voice reads (the first of the M); None: all M
    other_m: int | None = None
    configs: tuple[str, ...] = ("raw", "pipeline")
    voice: Voice = PHYSICIAN_VOICE
    other_voice: Voice = OTHER_VOICE
    corpus: CorpusOptions = field(default_factory=CorpusOptions)
    #: longest training window; whole sentences only
    window_s: float = 28.0
    #: overrides of the training module's defaults (``TrainOptions`` fields); {} = defaults
    train_overrides: dict[str, Any] = field(default_factory=dict)
    #: score general speech (samples/general_speech) at each N
    general: bool = True
    #: only the first K files of the general-speech set (None: all)
    general_limit: int | None = None
    #: training targets: "signed" = what ``pipeline.adaptation.pairs`` makes of the stock
    #: model's draft and the signed report (the product's pairs); "spoken" = exactly the
    #: words the voice spoke, in windows of whole sentences (the ideal label)
    targets: str = "signed"


#: the kinds of training target (``CurveOptions.targets``)
TARGETS = ("signed", "spoken")

#: ``--quick``: the smoke run and the test (2 signed reports, 2 held out, a few steps).
QUICK = CurveOptions(
    models=("tiny.en",), n_values=(0, 2), m=2, pool=2, other_m=1, configs=("raw",),
    corpus=CorpusOptions(min_words=40, max_words=90),
    train_overrides={"epochs": 1, "max_steps": 4}, general_limit=2,
)


def default_mtsamples() -> Path:
    """The MTSamples crawl beside the checkout (``../shared/data/mtsamples/...``)."""
    if not DEFAULT_MTSAMPLES.is_file():
        raise ConfigError(
            f"No MTSamples file at {DEFAULT_MTSAMPLES}; give its path with --mtsamples "
            "(mtsamples_2018_scrape.csv.xz, reference data that the project does not ship)."
        )
    return DEFAULT_MTSAMPLES


# ------------------------------------------------------------------------------------------
# Corpus: MTSamples reports as a physician dictates them
# ------------------------------------------------------------------------------------------


def read_source(path: Path) -> list[dict[str, str]]:
    """Rows of an MTSamples-layout CSV (.csv, .csv.xz or .csv.gz): url, medical_specialty,
    sample_name, description, transcription, keywords."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"MTSamples file {path} does not exist; expected the .csv or .csv.xz.")
    try:
        raw = path.read_bytes()
        if path.suffix == ".xz":
            raw = lzma.decompress(raw)
        elif path.suffix == ".gz":
            raw = gzip.decompress(raw)
        rows = [dict(r) for r in csv.DictReader(io.StringIO(raw.decode("utf-8"), newline=""))]
    except (OSError, lzma.LZMAError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"Cannot read {path.name} as an MTSamples CSV "
                          f"({type(exc).__name__}).") from exc
    if rows and "transcription" not in rows[0]:
        raise ConfigError(f"{path.name} has no 'transcription' column; expected the MTSamples "
                          "layout (url, medical_specialty, sample_name, description, "
                          "transcription, keywords).")
    return rows


_UNITS_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen",
                "seventeen", "eighteen", "nineteen"]
_TENS_WORDS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty",
               "ninety"]
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth",
                  "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}
_MONTH_NAMES = ["January", "February", "March", "April", "May", "June", "July", "August",
                "September", "October", "November", "December"]


def _cardinal(n: int) -> str:
    """An integer in words as dictated: 1234 -> "one thousand two hundred thirty four"."""
    if n < 20:
        return _UNITS_WORDS[n]
    if n < 100:
        tens, unit = divmod(n, 10)
        return _TENS_WORDS[tens] + (f" {_UNITS_WORDS[unit]}" if unit else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_UNITS_WORDS[hundreds]} hundred" + (f" {_cardinal(rest)}" if rest else "")
    if n < 1_000_000:
        thousands, rest = divmod(n, 1000)
        return f"{_cardinal(thousands)} thousand" + (f" {_cardinal(rest)}" if rest else "")
    return " ".join(_UNITS_WORDS[int(d)] for d in str(n))  # long ids: digit by digit


def _ordinal(n: int) -> str:
    """3 -> "third", 21 -> "twenty first"."""
    words = _cardinal(n).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _year(n: int) -> str:
    """A year as said: 1974 -> "nineteen seventy four", 2008 -> "two thousand eight"."""
    if 2000 <= n < 2010:
        return _cardinal(n)
    high, low = divmod(n, 100)
    if low == 0:
        return f"{_cardinal(high)} hundred"
    return f"{_cardinal(high)} {'oh ' + _cardinal(low) if low < 10 else _cardinal(low)}"


def _digits_words(text: str) -> str:
    return " ".join(_UNITS_WORDS[int(d)] for d in text)


#: units said in full after a number (the normalisation maps both forms to one)
_UNIT_WORDS = {
    "mg": "milligrams", "mcg": "micrograms", "g": "grams", "gm": "grams", "kg": "kilograms",
    "ml": "milliliters", "cc": "cc", "l": "liters", "mm": "millimeters", "cm": "centimeters",
    "mmhg": "millimeters of mercury", "meq": "milliequivalents", "lbs": "pounds",
    "lb": "pounds", "bpm": "beats per minute", "mg/dl": "milligrams per deciliter",
    "hrs": "hours", "hr": "hours", "min": "minutes", "mins": "minutes", "cm2": "square centimeters",
}
#: written abbreviations read out in words
_SAY = [
    (re.compile(r"\bDr\.(?=\s)"), "Doctor"), (re.compile(r"\bMr\.(?=\s)"), "Mister"),
    (re.compile(r"\bMrs\.(?=\s)"), "Missus"), (re.compile(r"\bMs\.(?=\s)"), "Miz"),
    (re.compile(r"\bvs\.?(?=\s)"), "versus"), (re.compile(r"\be\.g\.,?"), "for example"),
    (re.compile(r"\bi\.e\.,?"), "that is"), (re.compile(r"\bapprox\.(?=\s)"), "approximately"),
    (re.compile(r"\b[aA]\.[mM]\."), "a m"), (re.compile(r"\b[pP]\.[mM]\."), "p m"),
    (re.compile(r"\bNo\.(?=\s*\d)"), "number"), (re.compile(r"\bq\.(?=\s)"), "every"),
    (re.compile(r"\bsq\.(?=\s)"), "square"), (re.compile(r"\bSt\.(?=\s)"), "Saint"),
]
_DATE = re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{2}|\d{4})\b")
_MONTH_DATE = re.compile(r"\b(" + "|".join(_MONTH_NAMES) + r")\s+(\d{1,2})(?:st|nd|rd|th)?"
                         r"(?:,?\s+(\d{4}))?\b")
_RATIO = re.compile(r"\b(\d+)\s*/\s*(\d+)\b")
_TIME = re.compile(r"\b(\d{1,2}):(\d{2})\b")
_DECIMAL = re.compile(r"(?<![\d.])(\d*)\.(\d+)\b")
_SUTURE = re.compile(r"\b(\d)-0\b")
_ORDINAL_NUM = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_YEAR = re.compile(r"\b(19\d\d|20\d\d)\b")
_BY = re.compile(r"(?<=\d)\s*[xX]\s*(?=\d)")
_NUMBER_UNIT = re.compile(r"(\d)\s*(" + "|".join(sorted((re.escape(u) for u in _UNIT_WORDS),
                                                           key=len, reverse=True))
                          + r")\b", re.IGNORECASE)
_INT = re.compile(r"\d+")


def _numbers_in_words(text: str) -> str:
    """Every number of a written sentence as a physician says it."""

    def date(m: re.Match[str]) -> str:
        month, day, year = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if not (1 <= month <= 12 and 1 <= day <= 31):
            return f"{_cardinal(month)} {_cardinal(day)} {_cardinal(year)}"
        year = year + 2000 if year < 30 else year + 1900 if year < 100 else year
        return f"{_MONTH_NAMES[month - 1]} {_ordinal(day)} {_year(year)}"

    def month_date(m: re.Match[str]) -> str:
        spoken = f"{m.group(1)} {_ordinal(int(m.group(2)))}"
        return spoken + (f" {_year(int(m.group(3)))}" if m.group(3) else "")

    def clock(m: re.Match[str]) -> str:
        hour, minute = int(m.group(1)), int(m.group(2))
        if minute == 0:
            return f"{_cardinal(hour)} hundred" if hour >= 13 else f"{_cardinal(hour)} o'clock"
        return f"{_cardinal(hour)} {'oh ' if minute < 10 else ''}{_cardinal(minute)}"

    def decimal(m: re.Match[str]) -> str:
        whole = m.group(1) or "0"
        return f"{_cardinal(int(whole))} point {_digits_words(m.group(2))}"

    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = _DATE.sub(date, text)
    text = _MONTH_DATE.sub(month_date, text)
    text = _TIME.sub(clock, text)
    text = _NUMBER_UNIT.sub(lambda m: f"{m.group(1)} {_UNIT_WORDS[m.group(2).lower()]}", text)
    text = _SUTURE.sub(lambda m: f"{_cardinal(int(m.group(1)))} oh", text)
    text = _BY.sub(" by ", text)
    text = _RATIO.sub(lambda m: f"{_cardinal(int(m.group(1)))} over "
                                f"{_cardinal(int(m.group(2)))}", text)
    text = _DECIMAL.sub(decimal, text)
    text = _ORDINAL_NUM.sub(lambda m: _ordinal(int(m.group(1))), text)
    text = _YEAR.sub(lambda m: _year(int(m.group(1))), text)
    text = text.replace("%", " percent")
    # what is left: plain integers, also inside codes ("L4" -> "L four", "x3" -> "x three")
    return _INT.sub(lambda m: f" {_cardinal(int(m.group(0)))} ", text)


_SPOKEN_PUNCT = [
    ("(", " open paren "), (")", " close paren "), (";", " semicolon "), (":", " colon "),
    (",", " comma "), ("?", " question mark "), ("!", " period "),
]


def spoken_sentence(written: str) -> str:
    """One written sentence (or list item) in the words a physician dictates: numbers and
    units in words, punctuation as commands ("comma", "colon", "period", "open paren").

    >>> spoken_sentence("BP 124/78, weight 130 lbs.")
    'BP one hundred twenty four over seventy eight comma weight one hundred thirty pounds period'
    >>> spoken_sentence("Closed with 4-0 Vicryl on 05/03/2008.")
    'Closed with four oh Vicryl on May third two thousand eight period'
    """
    text = written.strip()
    for pattern, said in _SAY:
        text = pattern.sub(said, text)
    text = text.replace("&", " and ").replace("+", " plus ").replace("°", " degrees ")
    text = text.replace("#", " number ")
    ends = text.endswith(".")
    text = text.rstrip(". ")
    # a list number: "1. Hypertension" -> "one period hypertension"
    text = re.sub(r"^(\d{1,2})\.\s+", lambda m: f"{_cardinal(int(m.group(1)))} period ", text)
    text = _numbers_in_words(text)
    for mark, said in _SPOKEN_PUNCT:
        text = text.replace(mark, said)
    text = text.replace(".", " ")  # abbreviations left with dots ("p.o.") are read as letters
    text = re.sub(r"(?<=\w)[/-](?=\w)", " ", text)  # "and/or", "follow-up", "L four-L five"
    text = re.sub(r"[^\w\s']", " ", text)
    text = " ".join(text.split())
    if ends and text:
        text += " period"
    return text


_HEADING = re.compile(r"^([A-Z][A-Z0-9 ,/&'()\-]{1,70}[A-Z0-9)])\s*:\s*,?\s*(.*)$")
_TITLE_LINE = re.compile(r"^[A-Z][A-Z0-9 /&'()\-]{2,70}[A-Z)]$")
_SENTENCE_END = re.compile(r"(?<=[a-z0-9)%][.!?])\s+(?=[A-Z0-9(])")


def _sentences(body: str) -> list[str]:
    """The sentences of a paragraph (a list item is one)."""
    return [s.strip() for s in _SENTENCE_END.split(body) if s.strip()]


@dataclass
class CorpusReport:
    """One report as the simulated physician dictates it.

    ``chunks`` are the spoken pieces, in order, each rendered on its own (a sentence, or a
    piece of a long one); their concatenation is the reference. ``expected`` is the written
    report cut at the same place (the finished document the formatted score compares with).
    """

    id: str
    specialty: str
    chunks: list[str]
    expected: str
    keywords: list[str] = field(default_factory=list)
    terms: list[str] = field(default_factory=list)

    @property
    def reference(self) -> str:
        return "\n".join(self.chunks) + "\n"

    @property
    def spoken_words(self) -> int:
        return sum(len(c.split()) for c in self.chunks)


def report_id(text: str) -> str:
    """Opaque, stable id of a report: ``mts-`` and 10 hex digits of its text's SHA-256."""
    return "mts-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]


def _split_long(spoken: str, limit: int) -> list[str]:
    words = spoken.split()
    if len(words) <= limit:
        return [spoken]
    pieces = -(-len(words) // limit)
    size = -(-len(words) // pieces)
    return [" ".join(words[i:i + size]) for i in range(0, len(words), size)]


def build_report(row: dict[str, str], options: CorpusOptions) -> CorpusReport | None:
    """A report cut to the word budget at a sentence end, in written and spoken form; None
    when the report is shorter than ``options.min_words`` spoken words.

    A heading is said with the sentence after it ("Allergies colon none known period"), so a
    heading whose text did not fit is neither said nor written; each source paragraph ends
    with "new paragraph" (not the last one)."""
    text = (row.get("transcription") or "").replace("\r", "")
    chunks: list[str] = []
    paragraphs: list[list[str]] = []  # written lines per paragraph
    words = 0
    said_headings: list[str] = []  # headings waiting for their first sentence
    written_headings: list[str] = []
    full = False
    for para in re.split(r"\n\s*\n", text):
        if full:
            break
        lines: list[str] = []
        for raw in para.split("\n"):
            line = raw.strip()
            match = _HEADING.match(line)
            if match:
                heading, line = match.group(1).strip().rstrip(","), match.group(2).strip()
                written_headings.append(f"{heading}:")
                said_headings.append(f"{spoken_sentence(heading.lower())} colon")
            elif _TITLE_LINE.match(line):
                written_headings.append(line)
                said_headings.append(spoken_sentence(line.lower()))
                line = ""
            written: list[str] = []
            for sentence in _sentences(line):
                spoken = spoken_sentence(sentence)
                if not spoken:
                    continue
                pieces = _split_long(" ".join([*said_headings, spoken]), options.max_chunk_words)
                n = sum(len(p.split()) for p in pieces)
                if words + n > options.max_words:
                    full = True
                    break
                chunks.extend(pieces)
                words += n
                written += [*written_headings, sentence]
                said_headings.clear()
                written_headings.clear()
            if written:
                lines.append(" ".join(written))
            if full:
                break
        if lines:
            paragraphs.append(lines)
            chunks[-1] += " new paragraph"
            words += 2
    if chunks:
        chunks[-1] = chunks[-1].removesuffix(" new paragraph")
    if words < options.min_words or not chunks:
        return None
    chunks = [c[:1].upper() + c[1:] for c in chunks]
    expected = "\n\n".join("\n".join(lines) for lines in paragraphs) + "\n"
    keywords = [k.strip() for k in (row.get("keywords") or "").split(",") if k.strip()]
    return CorpusReport(id=report_id(text), specialty=(row.get("medical_specialty") or "").strip(),
                        chunks=chunks, expected=expected, keywords=keywords)


def key_terms(report: CorpusReport, is_medical: Callable[[str], bool]) -> list[str]:
    """The report's keywords that its cut dictation says and that hold a medical word.

    The specialty label the site puts first among the keywords is not a term."""
    from pipeline.devtools.evaluate import normalise

    said = f" {normalise(report.reference)} "
    specialty = normalise(report.specialty)
    terms: list[str] = []
    seen: set[str] = set()
    for keyword in report.keywords:
        norm = normalise(keyword)
        if not norm or norm in seen or norm == specialty or f" {norm} " not in said:
            continue
        if not any(is_medical(w) for w in norm.split()):
            continue
        seen.add(norm)
        terms.append(keyword)
    return terms


def select_reports(
    rows: Sequence[dict[str, str]], count: int, options: CorpusOptions
) -> list[CorpusReport]:
    """``count`` reports picked deterministically for ``options.seed``: unique texts (the
    crawl lists many reports twice), in a seeded shuffle of their hash order, those of the
    word budget; a specialty filter when given. Raises ``ConfigError`` when too few fit."""
    unique: dict[str, dict[str, str]] = {}
    for row in rows:
        text = (row.get("transcription") or "").strip()
        if not text:
            continue
        if options.specialties:
            specialty = (row.get("medical_specialty") or "").lower()
            if not any(s.lower() in specialty for s in options.specialties):
                continue
        unique.setdefault(report_id(text), row)
    order = sorted(unique)  # independent of the file's row order
    random.Random(options.seed).shuffle(order)
    picked: list[CorpusReport] = []
    starts: set[str] = set()
    for rid in order:
        report = build_report(unique[rid], options)
        if report is None:
            continue
        opening = " ".join(report.reference.split()[:25])
        if opening in starts:  # the same template filled twice: one of them only
            continue
        starts.add(opening)
        picked.append(report)
        if len(picked) == count:
            return picked
    raise ConfigError(
        f"Only {len(picked)} reports of {len(unique)} fit the word budget "
        f"({options.min_words}-{options.max_words} spoken words); {count} are needed."
    )


# ------------------------------------------------------------------------------------------
# Rendering (cached) and training windows
# ------------------------------------------------------------------------------------------


@dataclass
class RenderedReport:
    """A report spoken by one voice: its audio and where each chunk starts and ends."""

    report: CorpusReport
    voice: Voice
    audio: Path
    duration_s: float
    spans: list[tuple[float, float]]


@dataclass(frozen=True)
class Window:
    """<= 30 s of a rendered report: whole chunks and the words they say."""

    audio: Path
    start_s: float
    end_s: float
    text: str
    report_id: str


def _tts_key(voice: Voice, text: str) -> str:
    blob = json.dumps([voice.engine, voice.voice, voice.rate, text], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _sox(args: list[str]) -> None:
    sox = shutil.which("sox")
    if not sox:
        raise ConfigError("The tool 'sox' is not installed; rendering needs espeak-ng, flite and "
                          "sox (apt-get install espeak-ng flite sox).")
    proc = subprocess.run([sox, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ConfigError(f"sox failed with status {proc.returncode}: {proc.stderr.strip()[:300]}")


def render_report(report: CorpusReport, voice: Voice, cache_dir: Path) -> RenderedReport:
    """Speak every chunk of ``report`` with ``voice`` (each chunk cached under ``cache_dir``
    by engine, voice, rate and text) and join them into one 16 kHz FLAC, also cached.
    Returns the audio with each chunk's exact start and end."""
    from pipeline.devtools.samplegen import SAMPLE_RATE, audio_duration, render_audio

    tts_dir = Path(cache_dir) / "tts"
    tts_dir.mkdir(parents=True, exist_ok=True)
    parts: list[Path] = []
    for chunk in report.chunks:
        part = tts_dir / f"{_tts_key(voice, chunk)}.flac"
        if not part.is_file():
            tmp = part.with_name(f".{part.stem}.{os.getpid()}.flac")
            render_audio(chunk, voice.engine, voice.voice, voice.rate, tmp)
            tmp.replace(part)
        parts.append(part)
    joined_key = hashlib.sha256("".join(p.stem for p in parts).encode()).hexdigest()[:16]
    audio = Path(cache_dir) / "reports" / voice.slug / f"{report.id}-{joined_key}.flac"
    # sample counts (not float seconds) so that the spans add up exactly
    counts = [round(audio_duration(p) * SAMPLE_RATE) for p in parts]
    if not audio.is_file():
        audio.parent.mkdir(parents=True, exist_ok=True)
        tmp = audio.with_name(f".{audio.stem}.{os.getpid()}.flac")
        _sox(["-R", *map(str, parts), "-C", "8", str(tmp)])
        tmp.replace(audio)
    spans: list[tuple[float, float]] = []
    at = 0
    for n in counts:
        spans.append((at / SAMPLE_RATE, (at + n) / SAMPLE_RATE))
        at += n
    return RenderedReport(report=report, voice=voice, audio=audio, duration_s=at / SAMPLE_RATE,
                          spans=spans)


def windows(rendered: RenderedReport, max_s: float = 28.0) -> list[Window]:
    """Consecutive whole chunks grouped into windows of at most ``max_s`` seconds, each
    with the words its chunks say (the signed text of that stretch, as spoken)."""
    out: list[Window] = []
    group: list[int] = []

    def flush() -> None:
        if group:
            start, end = rendered.spans[group[0]][0], rendered.spans[group[-1]][1]
            text = " ".join(rendered.report.chunks[i] for i in group)
            out.append(Window(rendered.audio, start, end, text, rendered.report.id))
            group.clear()

    for i, (start, end) in enumerate(rendered.spans):
        if end - start > max_s:  # one chunk alone too long: not a training window
            flush()
            log.info("learning-curve window skipped report=%s chunk=%d seconds=%.1f",
                     rendered.report.id, i, end - start)
            continue
        if group and end - rendered.spans[group[0]][0] > max_s:
            flush()
        group.append(i)
    flush()
    return out


def write_set(set_dir: Path, rendered: Sequence[RenderedReport]) -> Path:
    """Write a sample set (manifest.csv, ref/expected/terms files) for ``run_evaluation``
    over rendered reports; return the manifest's path."""
    from pipeline.devtools.samplegen import write_manifest

    set_dir = Path(set_dir)
    set_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    for r in rendered:
        rid = r.report.id
        (set_dir / f"{rid}.ref.txt").write_text(r.report.reference, encoding="utf-8")
        (set_dir / f"{rid}.expected.txt").write_text(r.report.expected, encoding="utf-8")
        (set_dir / f"{rid}.terms.txt").write_text(
            "".join(f"{t}\n" for t in r.report.terms), encoding="utf-8")
        rows.append({
            "id": rid, "audio": os.path.relpath(r.audio, set_dir), "reference": f"{rid}.ref.txt",
            "expected": f"{rid}.expected.txt", "terms": f"{rid}.terms.txt",
            "voice": r.voice.voice, "engine": r.voice.engine, "rate": r.voice.rate,
            "duration_s": f"{r.duration_s:.2f}", "licence": _SOURCE_LICENCE,
            "source": f"MTSamples report {rid} ({r.report.specialty}), spoken by {r.voice.label}",
            "purpose": "adaptation learning curve",
        })
    manifest = set_dir / "manifest.csv"
    write_manifest(manifest, rows)
    return manifest


# ------------------------------------------------------------------------------------------
# The curve: train on the first N, score the held-out M
# ------------------------------------------------------------------------------------------

#: the figures kept per set (``Totals.metrics()`` names of ``pipeline.devtools.evaluate``)
OWN_METRICS = ("key_term_recall", "medical_term_error_rate", "formatted_ter", "wer")
OTHER_METRICS = ("wer", "medical_term_error_rate", "key_term_recall")
GENERAL_METRICS = ("wer",)


@dataclass
class CurvePoint:
    """One model after N signed dictations: what training cost and what it scored."""

    model: str
    n: int
    signed_audio_s: float = 0.0
    windows: int = 0
    train_s: float = 0.0  # wall-clock seconds of training, conversion back included
    train: dict[str, Any] | None = None  # ``TrainResult.to_dict()`` (figures only)
    #: config -> set ("own", "other", "general") -> metric -> value
    figures: dict[str, dict[str, dict[str, float | None]]] = field(default_factory=dict)
    #: config -> set -> counts behind the figures
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    decode_s: float = 0.0
    results_dirs: dict[str, str] = field(default_factory=dict)
    #: counts of the training pairs (``_pair_figures``)
    pairs: dict[str, Any] = field(default_factory=dict)

    def figure(self, config: str, part: str, metric: str) -> float | None:
        return self.figures.get(config, {}).get(part, {}).get(metric)


@dataclass
class CurveReport:
    """Everything one learning-curve run measured (figures and ids; no report text)."""

    options: CurveOptions
    started_at: str
    source: str
    commit: str
    command: str
    signed_ids: list[str]
    held_out_ids: list[str]
    other_ids: list[str]
    held_out_audio_s: float
    other_audio_s: float
    signed_audio_s: float
    terms_per_report: float
    render_s: float
    points: list[CurvePoint] = field(default_factory=list)
    elapsed_s: float = 0.0
    machine: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None

    def targets(self) -> list[dict[str, Any]]:
        """The issue's targets for each model and config, at N = 20 (or the largest N below
        it that ran) against N = 0: key-term recall >= 0.90, medical-term error rate <= half
        the stock model's, general-speech WER within +0.5 point; training base on 20
        dictations within 60 minutes."""
        out: list[dict[str, Any]] = []
        for model in self.options.models:
            points = {p.n: p for p in self.points if p.model == model}
            stock = points.get(0)
            adapted_n = max((n for n in points if 0 < n <= 20), default=None)
            if stock is None or adapted_n is None:
                continue
            adapted = points[adapted_n]
            for config in self.options.configs:
                recall = adapted.figure(config, "own", "key_term_recall")
                mter0 = stock.figure(config, "own", "medical_term_error_rate")
                mter = adapted.figure(config, "own", "medical_term_error_rate")
                gen0 = stock.figure(config, "general", "wer")
                gen = adapted.figure(config, "general", "wer")
                rows = [
                    ("key-term recall >= 0.90", recall, 0.90,
                     None if recall is None else recall >= 0.90),
                    ("medical-term error rate <= half of stock", mter,
                     None if mter0 is None else mter0 / 2,
                     None if mter is None or mter0 is None else mter <= mter0 / 2),
                    ("general-speech WER within +0.005 of stock", gen,
                     None if gen0 is None else gen0 + 0.005,
                     None if gen is None or gen0 is None else gen <= gen0 + 0.005),
                ]
                for name, value, bound, met in rows:
                    out.append({"model": model, "n": adapted_n, "config": config,
                                "target": name, "value": value, "bound": bound, "met": met})
            if model == "base" and adapted_n == 20:
                out.append({"model": model, "n": 20, "config": "-",
                            "target": "training on 20 dictations <= 3600 s",
                            "value": round(adapted.train_s, 1), "bound": 3600.0,
                            "met": adapted.train_s <= 3600.0})
        return out

    def to_dict(self) -> dict[str, Any]:
        options = asdict(self.options)
        return {
            "what": "adaptation learning curve (issue #15)",
            "started_at": self.started_at,
            "commit": self.commit,
            "command": self.command,
            "source": self.source,
            "options": options,
            "machine": self.machine,
            "corpus": {
                "signed_ids": self.signed_ids, "held_out_ids": self.held_out_ids,
                "other_voice_ids": self.other_ids,
                "signed_audio_s": round(self.signed_audio_s, 1),
                "held_out_audio_s": round(self.held_out_audio_s, 1),
                "other_voice_audio_s": round(self.other_audio_s, 1),
                "key_terms_per_report": round(self.terms_per_report, 2),
                "render_s": round(self.render_s, 1),
            },
            "points": [asdict(p) for p in self.points],
            "targets": self.targets(),
            "elapsed_s": round(self.elapsed_s, 1),
        }


def _git_commit() -> str:
    git = shutil.which("git")
    if not git:
        return "unknown"
    try:
        head = subprocess.run([git, "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run([git, "status", "--porcelain", "--untracked-files=no"],
                               cwd=PROJECT_ROOT, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}{' (uncommitted changes)' if dirty else ''}"


def _machine() -> dict[str, Any]:
    import platform

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover - not Unix
        load = []
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "load_at_start": load}


#: the simulated physician's id on the training pairs (no real physician)
_PHYSICIAN = "simulated-physician"


@dataclass
class PairStats:
    """What turning the signed reports into training pairs gave (counts only)."""

    reports: int = 0
    pairs: int = 0
    audio_s: float = 0.0
    skipped_reports: dict[str, int] = field(default_factory=dict)
    skipped_windows: dict[str, int] = field(default_factory=dict)
    corrected_words: int = 0
    decode_s: float = 0.0


def _spoken_pairs(rendered: RenderedReport, max_s: float) -> list[Any]:
    """Pairs whose targets are the words the voice spoke, one per window of whole chunks."""
    from pipeline.adaptation.pairs import TrainingPair

    return [
        TrainingPair(pair_id=f"{w.report_id}-{k:03d}", dictation_id=w.report_id,
                     draft_id=w.report_id, physician_id=_PHYSICIAN, start_s=w.start_s,
                     end_s=w.end_s, text=w.text, words=len(w.text.split()),
                     source_audio=str(w.audio))
        for k, w in enumerate(windows(rendered, max_s))
    ]


def _signed_pairs(rendered: RenderedReport, settings: Settings, stats: PairStats
                  ) -> list[Any]:
    """Pairs as the product makes them from a signed draft (``pipeline.adaptation.pairs``):
    the stock model's transcript of the report (the draft) aligned with the written report
    (what the physician signed), Whisper's words kept where the signed text confirms them
    and the signed words carried over where it corrects them, cut at word timestamps.
    The whole-draft checks are ``pairs.draft_pairs``' own (departure, dropped words)."""
    import time

    from pipeline.adaptation.pairs import PairOptions, TrainingPair, cut_windows, target_words
    from pipeline.core.records import DictationMeta
    from pipeline.service import process

    o = PairOptions()
    rid = rendered.report.id
    t0 = time.perf_counter()
    dictation = process.load_dictation(rendered.audio, settings, DictationMeta(),
                                       dictation_id=rid)
    transcript = process.transcribe_stage(dictation, settings)
    stats.decode_s += time.perf_counter() - t0
    words, align = target_words(transcript.words, rendered.report.expected, o)
    reason = ""
    if align.signed_content < o.min_content_words:
        reason = "no_words"
    elif align.departure > o.max_departure:
        reason = "typed_content" if align.typed >= align.rewritten else "rewritten"
    elif align.raw_dropped_fraction > o.max_raw_dropped:
        reason = "rewritten"
    if reason:
        stats.skipped_reports[reason] = stats.skipped_reports.get(reason, 0) + 1
        log.info("learning-curve report=%s gave no pairs reason=%s", rid, reason)
        return []
    kept, left_out = cut_windows(words, o, duration_s=rendered.duration_s)
    for skipped in left_out:
        stats.skipped_windows[skipped.reason] = stats.skipped_windows.get(skipped.reason, 0) + 1
    stats.corrected_words += sum(w.corrected for w in kept)
    return [
        TrainingPair(pair_id=f"{rid}-{k:03d}", dictation_id=rid, draft_id=rid,
                     physician_id=_PHYSICIAN, start_s=w.start_s, end_s=w.end_s, text=w.text,
                     words=w.words, corrected=w.corrected, agreement=round(w.agreement, 4),
                     source_audio=str(rendered.audio))
        for k, w in enumerate(kept)
    ]


def _score(manifest: Path, settings: Settings, configs: Sequence[str], out_dir: Path,
           metrics: Sequence[str], limit: int | None = None
           ) -> tuple[dict[str, dict[str, float | None]], dict[str, dict[str, int]], float]:
    """``run_evaluation`` on one set: (config -> metric -> value, config -> counts, seconds)."""
    from pipeline.devtools.evaluate import rounded_metrics, run_evaluation

    report = run_evaluation(manifest, settings, configs, out_dir, limit=limit)
    figures: dict[str, dict[str, float | None]] = {}
    counts: dict[str, dict[str, int]] = {}
    for config, totals in report.overall.items():
        m = rounded_metrics(totals.metrics())
        figures[config] = {k: m.get(k) for k in metrics}
        counts[config] = dict(totals.to_dict()["counts"], files=totals.files,
                              failed=totals.failed)
    return figures, counts, report.elapsed_s


def run_curve(
    rows: Sequence[dict[str, str]],
    settings: Settings,
    options: CurveOptions,
    out_dir: Path,
    *,
    cache_dir: Path | None = None,
    source: str = "",
    command: str = "",
    progress: Callable[[str], None] | None = None,
) -> CurveReport:
    """Pick and render the corpus, then for each model and N train on the first N signed
    reports and score the held-out ones (own voice, other voice, general speech). Writes
    results.json and results.md into ``out_dir`` after every point (each evaluation's own
    results below it); returns the report."""
    import time

    from pipeline.devtools.evaluate import ALL_CONFIGS
    from pipeline.language import vocab
    from pipeline.speech import models as speech_models

    for config in options.configs:
        if config not in ALL_CONFIGS:
            raise ConfigError(f"Unknown evaluation config {config!r}; expected one of "
                              f"{', '.join(ALL_CONFIGS)}.")
    if options.targets not in TARGETS:
        raise ConfigError(f"Unknown training target {options.targets!r}; expected one of "
                          f"{', '.join(TARGETS)}.")
    n_values = sorted(set(options.n_values))
    if not n_values or n_values[0] < 0 or options.m < 1:
        raise ConfigError(f"N values {list(options.n_values)} must be >= 0 and M "
                          f"({options.m}) >= 1.")
    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir) if cache_dir else settings.data_path / "cache" / "learning-curve"
    # the stock model or the one trained here, never a physician's adapted model from the
    # data directory's database
    settings = settings.model_copy(update={"adapted_models": False})
    started = datetime.now(UTC).isoformat(timespec="seconds")
    machine = _machine()

    max_n = n_values[-1]
    pool = max(options.pool, max_n)
    reports = select_reports(rows, pool + options.m, options.corpus)
    index = vocab.get_index(settings)
    for report in reports:
        report.terms = key_terms(report, index.is_medical)
    signed, held = reports[:max_n], reports[pool:]
    reports = signed + held
    other_m = options.m if options.other_m is None else min(options.other_m, options.m)
    say(f"rendering {len(reports)} reports, {other_m} of them also in the second voice")
    t_render = time.perf_counter()
    signed_r = [render_report(r, options.voice, cache_dir) for r in signed]
    held_r = [render_report(r, options.voice, cache_dir) for r in held]
    other_r = [render_report(r, options.other_voice, cache_dir) for r in held[:other_m]]
    render_s = time.perf_counter() - t_render
    corpus_dir = out_dir / "corpus"
    own_manifest = write_set(corpus_dir / f"held-out-{options.voice.slug}", held_r)
    other_manifest = (write_set(corpus_dir / f"held-out-{options.other_voice.slug}", other_r)
                      if other_r else None)
    general_manifest = Path(settings.samples_dir) / "general_speech" / "manifest.csv"
    log.info("learning-curve corpus signed=%d held_out=%d other=%d render_s=%.1f",
             len(signed_r), len(held_r), len(other_r), render_s)

    curve = CurveReport(
        options=options, started_at=started, source=source, commit=_git_commit(),
        command=command, signed_ids=[r.id for r in signed],
        held_out_ids=[r.id for r in held], other_ids=[r.report.id for r in other_r],
        held_out_audio_s=sum(r.duration_s for r in held_r),
        other_audio_s=sum(r.duration_s for r in other_r),
        signed_audio_s=sum(r.duration_s for r in signed_r),
        terms_per_report=sum(len(r.terms) for r in reports) / max(len(reports), 1),
        render_s=render_s, machine=machine, out_dir=out_dir,
    )
    for model in options.models:
        stock = settings.model_copy(update={"model": model})
        base_folder = speech_models.model_files(model, settings)
        per_report: list[list[Any]] = []
        stats = PairStats()
        if max_n:
            say(f"{model}: training pairs of {len(signed_r)} signed reports "
                f"({options.targets} targets)")
            for r in signed_r:
                pairs = (_signed_pairs(r, stock, stats) if options.targets == "signed"
                         else _spoken_pairs(r, options.window_s))
                per_report.append(pairs)
        for n in n_values:
            point = CurvePoint(model=model, n=n)
            model_ref = model
            if n:
                point.signed_audio_s = sum(r.duration_s for r in signed_r[:n])
                pairs = [p for report_pairs in per_report[:n] for p in report_pairs]
                point.pairs = _pair_figures(pairs, per_report[:n], stats if n == max_n else None)
                folder = out_dir / "models" / f"{_slug(model)}-n{n}"
                _adapt(base_folder, pairs, stock, options, point, folder, say)
                model_ref = str(folder)
            scored = stock.model_copy(update={"model": model_ref})
            point_dir = out_dir / "evaluations" / f"{_slug(model)}-n{n}"
            sets: list[tuple[str, Path | None, Sequence[str], int | None]] = [
                ("own", own_manifest, OWN_METRICS, None),
                ("other", other_manifest, OTHER_METRICS, None),
                ("general", general_manifest if options.general else None, GENERAL_METRICS,
                 options.general_limit),
            ]
            for part, manifest, metrics, limit in sets:
                if manifest is None:
                    continue
                say(f"{model} N={n}: scoring the {part} set")
                figures, counts, secs = _score(manifest, scored, options.configs,
                                               point_dir / part, metrics, limit)
                point.decode_s += secs
                point.results_dirs[part] = str(point_dir / part)
                for config in options.configs:
                    point.figures.setdefault(config, {})[part] = figures[config]
                    point.counts.setdefault(config, {})[part] = counts[config]
            log.info("learning-curve point model=%s n=%d pairs=%d train_s=%.1f decode_s=%.1f",
                     model, n, point.pairs.get("pairs", 0), point.train_s, point.decode_s)
            curve.points.append(point)
            curve.elapsed_s = time.perf_counter() - t0
            write_outputs(curve, out_dir)  # a partial curve survives an interrupted run
    curve.elapsed_s = time.perf_counter() - t0
    write_outputs(curve, out_dir)
    return curve


def _pair_figures(pairs: Sequence[Any], per_report: Sequence[Sequence[Any]],
                  stats: PairStats | None) -> dict[str, Any]:
    """Counts of the pairs one point trained on (the skip reasons for the whole pool)."""
    out: dict[str, Any] = {
        "pairs": len(pairs),
        "pairs_audio_s": round(sum(p.end_s - p.start_s for p in pairs), 1),
        "reports_with_pairs": sum(1 for r in per_report if r),
        "corrected_words": sum(int(p.corrected) for p in pairs),
    }
    if stats is not None:
        out.update(skipped_reports=dict(stats.skipped_reports),
                   skipped_windows=dict(stats.skipped_windows),
                   draft_decode_s=round(stats.decode_s, 1))
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def _adapt(base_folder: Path, pairs: Sequence[Any], settings: Settings, options: CurveOptions,
           point: CurvePoint, folder: Path, say: Callable[[str], None]) -> None:
    """Train on ``pairs`` from the stock model with the training module's defaults (plus
    ``train_overrides``) and write the CTranslate2 folder; fill ``point``'s training
    figures. The time counted is the product's: conversion, encoding, training, writing."""
    import time

    from pipeline.adaptation.convert import write_ct2
    from pipeline.adaptation.train import TrainOptions, train

    if not pairs:
        raise ConfigError(f"No training pair came out of the first {point.n} signed reports.")
    train_options = TrainOptions(**options.train_overrides)
    say(f"{point.model} N={point.n}: training on {len(pairs)} windows "
        f"({sum(p.end_s - p.start_s for p in pairs) / 60:.1f} min)")

    def progress(phase: str, done: int, total: int) -> None:
        say(f"{point.model} N={point.n}: {phase} {done}/{total}")

    t0 = time.perf_counter()
    result = train(pairs, base_folder, train_options, settings=settings, progress=progress)
    if folder.exists():
        shutil.rmtree(folder)
    write_ct2(result.model, folder, like=base_folder)
    point.train_s = time.perf_counter() - t0
    point.train = result.to_dict()
    point.windows = result.examples + result.validation_examples


# ------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------

_COLUMNS = (
    ("own", "key_term_recall", "term recall"),
    ("own", "medical_term_error_rate", "med-term ER"),
    ("own", "formatted_ter", "formatted TER"),
    ("own", "wer", "WER"),
    ("other", "wer", "WER other voice"),
    ("general", "wer", "general WER"),
)


def table_rows(report: CurveReport) -> list[list[str]]:
    """The side-by-side table (one row per model, N and config), as strings."""
    from pipeline.devtools.evaluate import fmt

    rows: list[list[str]] = []
    for p in report.points:
        for config in report.options.configs:
            rows.append([
                p.model, str(p.n), f"{p.signed_audio_s / 60:.1f}",
                f"{p.train_s:.0f}" if p.n else "-", config,
                *(fmt(p.figure(config, part, metric)) for part, metric, _ in _COLUMNS),
            ])
    return rows


TABLE_HEADER = ("model", "N signed", "signed audio min", "train s", "config",
                *(label for _, _, label in _COLUMNS))


def _markdown(report: CurveReport) -> str:
    o = report.options
    lines = [
        "# Adaptation learning curve",
        "",
        f"- started: {report.started_at} UTC, {report.elapsed_s / 60:.1f} min; commit "
        f"{report.commit}",
        f"- command: `{report.command}`" if report.command else "- command: (library call)",
        f"- machine: {report.machine.get('cpus')} CPUs, load at start "
        f"{report.machine.get('load_at_start')}",
        f"- source: {report.source or '(rows given)'}; seed {o.corpus.seed}; reports of "
        f"{o.corpus.min_words}-{o.corpus.max_words} spoken words"
        + (f"; specialties {', '.join(o.corpus.specialties)}" if o.corpus.specialties else ""),
        f"- physician voice: {o.voice.label}; never-trained voice: {o.other_voice.label}",
        f"- signed pool {len(report.signed_ids)} reports ({report.signed_audio_s / 60:.1f} min); "
        f"held out {len(report.held_out_ids)} ({report.held_out_audio_s / 60:.1f} min), "
        f"{len(report.other_ids)} of them also in the other voice "
        f"({report.other_audio_s / 60:.1f} min); {report.terms_per_report:.1f} key terms a "
        "report",
        "- training: the training module's defaults"
        + (f" with {o.train_overrides}" if o.train_overrides else "")
        + ("; targets: the product's pairs (`pipeline.adaptation.pairs`: the stock model's "
           "draft aligned with the signed report, cut at its word times)"
           if o.targets == "signed" else
           f"; targets: the words spoken, in windows of whole sentences <= {o.window_s:.0f} s"),
        "",
        "| " + " | ".join(TABLE_HEADER) + " |",
        "|---|---:|---:|---:|---|" + "---:|" * len(_COLUMNS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    targets = report.targets()
    if targets:
        lines += ["", "## Targets", "", "| model | N | config | target | value | bound | met |",
                  "|---|---:|---|---|---:|---:|---|"]
        for t in targets:
            value = "-" if t["value"] is None else f"{t['value']:.3f}"
            bound = "-" if t["bound"] is None else f"{t['bound']:.3f}"
            met = {True: "yes", False: "no", None: "-"}[t["met"]]
            lines.append(f"| {t['model']} | {t['n']} | {t['config']} | {t['target']} | "
                         f"{value} | {bound} | {met} |")
    trained = [p for p in report.points if p.train]
    if trained:
        lines += ["", "## Training", "",
                  "| model | N | windows | steps | stopped | best step | train s | encode s |",
                  "|---|---:|---:|---:|---|---:|---:|---:|"]
        for p in trained:
            t = p.train or {}
            lines.append(f"| {p.model} | {p.n} | {p.windows} | {t.get('steps')} | "
                         f"{t.get('stopped')} | {t.get('best_step')} | {p.train_s:.0f} | "
                         f"{t.get('encode_seconds')} |")
    lines += ["", "Scored with `dictation evaluate`'s metrics (`run_evaluation`): term recall "
              "and medical-term error rate on the held-out reports of the physician's voice, "
              "formatted TER against the written report, WER of the same reports in the "
              "never-trained voice and of samples/general_speech. N = 0 is the stock model.", ""]
    return "\n".join(lines)


def load_report(results_json: Path) -> CurveReport:
    """A ``CurveReport`` back from the results.json a run wrote (to print it again or
    rewrite its results.md without training or decoding anything)."""
    results_json = Path(results_json)
    try:
        data = json.loads(results_json.read_text(encoding="utf-8"))
        o = dict(data["options"])
        o["voice"] = Voice(**o["voice"])
        o["other_voice"] = Voice(**o["other_voice"])
        corpus = dict(o["corpus"])
        corpus["specialties"] = tuple(corpus.get("specialties") or ())
        o["corpus"] = CorpusOptions(**corpus)
        for name in ("models", "n_values", "configs"):
            o[name] = tuple(o[name])
        names = {f.name for f in fields(CurveOptions)}
        options = CurveOptions(**{k: v for k, v in o.items() if k in names})
        point_names = {f.name for f in fields(CurvePoint)}
        points = [CurvePoint(**{k: v for k, v in p.items() if k in point_names})
                  for p in data["points"]]
        c = data["corpus"]
        return CurveReport(
            options=options, started_at=data["started_at"], source=data.get("source", ""),
            commit=data.get("commit", ""), command=data.get("command", ""),
            signed_ids=list(c["signed_ids"]), held_out_ids=list(c["held_out_ids"]),
            other_ids=list(c["other_voice_ids"]), held_out_audio_s=c["held_out_audio_s"],
            other_audio_s=c["other_voice_audio_s"], signed_audio_s=c["signed_audio_s"],
            terms_per_report=c["key_terms_per_report"], render_s=c["render_s"],
            points=points, elapsed_s=float(data.get("elapsed_s", 0.0)),
            machine=dict(data.get("machine") or {}), out_dir=results_json.parent,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{results_json} is not a results.json written by dictation "
                          f"evaluate-adaptation ({type(exc).__name__}).") from exc


def write_outputs(report: CurveReport, out_dir: Path) -> dict[str, Path]:
    """Write results.json and results.md into ``out_dir``; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md"}
    paths["json"].write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n",
                             encoding="utf-8")
    paths["md"].write_text(_markdown(report), encoding="utf-8")
    return paths
