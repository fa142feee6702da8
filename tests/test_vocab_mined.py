"""Specialty term lists mined from sample reports (vocab/mined/) and how the index loads them.

The mining tests use a tiny CSV written here (text the project wrote), never the real reports.
"""

from __future__ import annotations

import csv
import json
import lzma
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.settings import PROJECT_ROOT
from pipeline.devtools import vocab_build
from pipeline.language import vocab
from pipeline.language.vocab import VocabIndex

VOCAB = PROJECT_ROOT / "vocab"
GROUPS = {"radiology": ("Radiology",), "general_surgery": ("Surgery", "Bariatrics")}

_RADIOLOGY = [
    "FINDINGS: A calcified appendicolith is seen. There is periappendiceal fat stranding.",
    "IMPRESSION: Appendicolith with fat stranding in the right lower quadrant. Dr. Zorblatt.",
    "The appendix contains an appendicolith. Mild fat stranding. Dr. Zorblatt reviewed.",
    "Hypoechoic lesion in the liver. Fat stranding around the cecum. Seen by Qwertyson.",
    "Fat stranding near the colon, no abscess per Qwertyson. Small hypoechoic focus.",
    "Pleural effusion reported to Qwertyson, fat stranding near the cecum.",
]
_SURGERY = [
    "The hernia sac was dissected free and closed with 2-0 Vicryl suture.",
    "The hernia sac was opened. The fascia was closed with Vicryl. Cholecystitis noted.",
    "Hernia sac reduced. Vicryl was used on the fascia.",
    "The hernia sac was ligated with Vicryl and the cholecystitis treated.",
    "HERNIA SAC: excised. Vicryl suture to the skin. T12 level.",
]


def _index() -> VocabIndex:
    """A hand-made index: what the mining reads (medical words, English Zipf, phrases)."""
    return VocabIndex(
        medical={"vicryl", "cholecystitis", "fascia", "hernia", "lesion", "appendix", "abscess",
                 "pleural", "effusion", "cecum"},
        english={"the": 7.7, "with": 7.0, "fat": 4.6, "sac": 3.1, "closed": 4.4, "seen": 5.1,
                 "stranding": 1.9, "calcified": 2.1, "small": 5.5, "liver": 4.0,
                 "agreed": 4.5, "around": 5.9, "reviewed": 4.1},
        phrases={"pleural effusion": "pleural effusion", "hernia sac": "hernia sac"},
    )


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with lzma.open(path, "wt", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["url", "medical_specialty", "sample_name", "transcription"])
        for k, (spec, text) in enumerate(rows):
            w.writerow([f"u{k}", f" {spec} ", f"s{k}", text])
    return path


@pytest.fixture
def sample_csv(tmp_path: Path) -> Path:
    rows = [("Radiology", t) for t in _RADIOLOGY] + [("Surgery", t) for t in _SURGERY]
    rows += [("Bariatrics", _SURGERY[0])]  # the same report twice counts once
    rows += [("Dentistry", "Appendicolith appendicolith appendicolith.")]  # no group
    return _write_csv(tmp_path / "reports.csv.xz", rows)


def test_mine_terms_counts_reports_per_specialty(sample_csv: Path) -> None:
    mined = vocab_build.mine_terms(sample_csv, _index(), groups=GROUPS)
    assert set(mined) == {"radiology", "general_surgery"}
    rad = dict(mined["radiology"])
    # not ordinary English and in >= 3 reports: a term even though no source lists it
    assert rad["appendicolith"] == 3
    assert rad["fat stranding"] == 6  # a collocation with a rare word, in >= 5 reports
    assert rad["stranding"] == 6
    assert "hypoechoic" not in {k.lower() for k in rad}  # in 2 reports only: could be a typo
    assert "periappendiceal" not in rad  # once
    assert "Zorblatt" not in rad and "zorblatt" not in rad  # a name after "Dr."
    assert "Qwertyson" not in rad and "qwertyson" not in rad  # always capitalised, unknown
    assert rad["cecum"] == 2  # a medical word in >= 2 reports
    assert "lesion" not in rad and "pleural" not in rad  # in one report only
    assert "pleural effusion" not in rad  # a known phrase but in one report only
    surg = dict(mined["general_surgery"])
    assert surg["Vicryl"] == 5  # the spelling the reports use; report counted once
    assert surg["hernia sac"] == 5
    assert surg["cholecystitis"] == 2
    assert "fascia" in surg
    assert not any(re.search(r"\d", t) for t, _ in mined["general_surgery"])
    assert "closed" not in surg  # ordinary English, not medical
    assert "level" not in surg
    for terms in mined.values():  # sorted by report count, then alphabetically
        assert terms == sorted(terms, key=lambda x: (-x[1], x[0].lower()))


def test_mine_terms_keeps_the_top_terms(sample_csv: Path) -> None:
    mined = vocab_build.mine_terms(sample_csv, _index(), groups=GROUPS, top=2, top_phrases=1)
    surg = mined["general_surgery"]
    assert [t for t, _ in surg if " " not in t] == ["hernia", "Vicryl"]  # ties: alphabetical
    assert [t for t, _ in surg if " " in t] == ["hernia sac"]


def test_mine_terms_refuses_a_csv_without_the_columns(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="medical_specialty"):
        vocab_build.mine_terms(bad, _index())
    with pytest.raises(ConfigError, match="does not exist"):
        vocab_build.mine_terms(tmp_path / "missing.csv", _index())


def _vocab_copy(tmp_path: Path) -> Path:
    out = tmp_path / "vocab"
    shutil.copytree(VOCAB, out, ignore=shutil.ignore_patterns("mined"))
    return out


def test_index_appends_mined_terms_after_curated(tmp_path: Path) -> None:
    vdir = _vocab_copy(tmp_path)
    curated = [r[0] for r in vocab.read_tsv(vdir / "curated" / "specialty" / "radiology.txt")]
    first = curated[0]
    vocab_build.write_mined(
        {"radiology": [("Zebrafoliant", 9), (first.upper(), 7), ("splenic crescent", 5),
                       ("nodule", 4)],
         "urology": [("Quixocele", 3)]},
        vdir / "mined",
    )
    idx = vocab.load_index(vdir)
    assert idx.specialty["radiology"] == curated  # the stage's lists: curated (for now)
    assert idx.specialty_mined["radiology"] == ["Zebrafoliant", "splenic crescent"]
    # curated first, curated spelling wins, no duplicates
    assert idx.specialty_all["radiology"] == [*curated, "Zebrafoliant", "splenic crescent"]
    assert idx.specialty_all["urology"] == ["Quixocele"]
    assert idx.specialty_all["neurology"] == idx.specialty["neurology"]  # no mined list
    # a mined word the vocabulary lacks becomes a medical vocabulary word
    assert idx.is_medical("zebrafoliant") and idx.display("zebrafoliant") == "Zebrafoliant"
    assert "zebrafoliant" in idx.phonetic[vocab.phonetic_key("zebrafoliant")]
    assert "zebrafoliant" in idx.mined_only
    assert idx.phrases["splenic crescent"] == "splenic crescent"


def test_mined_in_specialty_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vdir = _vocab_copy(tmp_path)
    vocab_build.write_mined({"radiology": [("Zebrafoliant", 9)]}, vdir / "mined")
    monkeypatch.setattr(vocab, "MINED_IN_SPECIALTY", True)
    idx = vocab.load_index(vdir)
    assert idx.specialty["radiology"] == idx.specialty_all["radiology"]
    assert idx.specialty["radiology"][-1] == "Zebrafoliant"


def test_build_folds_mined_words_into_the_vocabulary() -> None:
    """The committed build: new mined words are vocabulary words (source mined)."""
    manifest = json.loads((VOCAB / "manifest.json").read_text())
    src = {s["name"]: s for s in manifest["sources"]}
    assert "mtsamples.com" in src["mtsamples"]["licence"]
    assert "no report text" in src["mtsamples"]["licence"]
    assert manifest["counts"]["mined_new_words"] >= 100
    rows = {r[0]: r for r in vocab.read_tsv(VOCAB / "terms.tsv.gz")}
    assert rows["normocephalic"][2] == "mined" and rows["normocephalic"][5] == "1"


def test_committed_lists_are_terms_with_counts_only() -> None:
    files = sorted((VOCAB / "mined").glob("*.txt"))
    assert {p.stem for p in files} >= {"general_surgery", "orthopedics", "cardiology",
                                      "internal_medicine", "radiology", "neurology",
                                      "ophthalmology", "urology", "gastroenterology"}
    for path in files:
        rows = list(vocab.read_tsv(path))
        assert 200 <= len(rows) <= 600, path.name
        for term, count in rows:
            assert re.fullmatch(r"[A-Za-z]+( [A-Za-z]+){0,3}", term), (path.name, term)
            assert int(count) >= 2
        assert len({t.lower() for t, _ in rows}) == len(rows)


def test_committed_index_has_larger_specialty_lists(settings) -> None:  # type: ignore[no-untyped-def]
    idx = vocab.get_index(settings)
    for name in ("general_surgery", "radiology", "cardiology", "urology", "obgyn", "ent"):
        curated = idx.specialty.get(name, [])
        assert len(idx.specialty_all[name]) >= 250, name
        assert idx.specialty_all[name][: len(curated)] == curated
    for word in ("normocephalic", "nontender", "retroflexion", "hydrodissection"):
        assert idx.is_medical(word), word
    assert "Vicryl" in idx.specialty_all["general_surgery"]
    assert "hernia sac" in {t.lower() for t in idx.specialty_all["general_surgery"]}


@pytest.mark.slow
def test_cli_mine_terms_writes_lists(sample_csv: Path, tmp_path: Path) -> None:
    vdir = _vocab_copy(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "vocab", "mine-terms", str(sample_csv),
         "--out", str(vdir)],
        capture_output=True, text=True, check=True,
    )
    assert "radiology" in out.stdout
    rows = dict(vocab.read_tsv(vdir / "mined" / "radiology.txt"))
    assert rows["appendicolith"] == "3"
    text = (vdir / "mined" / "radiology.txt").read_text()
    assert "calcified appendicolith is seen" not in text  # no report text, terms only
