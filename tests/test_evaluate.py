"""Evaluation: the shared normalisation (table-driven), the metrics on hand-computed cases,
manifest validation, and one real ``dictation evaluate`` run with tiny.en."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.core.errors import ConfigError
from pipeline.core.records import Document, HeaderField, Instruction, Section
from pipeline.devtools.evaluate import (
    FileResult,
    TextScore,
    Totals,
    document_text,
    format_tokens,
    formatted_counts,
    medical_errors,
    normalise,
    score_text,
    term_recall,
    validate_manifest,
    word_counts,
)
from pipeline.devtools.samplegen import read_manifest, write_manifest

# (text as written or spoken, normalised form)
NORMALISATION_CASES = [
    # units and suture sizes survive (whisper-normalizer deletes "mm", turns "four-oh" into 40)
    ("a 5 mm trocar", "a 5 millimeter trocar"),
    ("mm hmm", "mm hmm"),
    ("412 milligray centimeters", "412 milligray centimeter"),
    ("412 mGy-cm", "412 milligray centimeter"),
    ("closed with 4-0 Vicryl", "closed with 4-0 vicryl"),
    ("closed with four oh Vicryl", "closed with 4-0 vicryl"),
    ("closed with four-oh Vicryl", "closed with 4-0 vicryl"),
    ("closed with four o' Vicryl", "closed with 4-0 vicryl"),
    ("forty Vicryl", "40 vicryl"),
    ("two oh Prolene and zero Vicryl", "2-0 prolene and 0 vicryl"),
    # vitals, doses, decimals
    ("blood pressure 142/88", "blood pressure 142 over 88"),
    ("blood pressure one forty two over eighty eight", "blood pressure 142 over 88"),
    ("twenty five milligrams by mouth twice daily", "25 milligram by mouth twice daily"),
    ("25 mg by mouth twice daily", "25 milligram by mouth twice daily"),
    ("hemoglobin eleven point two", "hemoglobin 11.2"),
    ("Hemoglobin 11.2.", "hemoglobin 11.2"),
    ("zero point two five percent bupivacaine", "0.25 percent bupivacaine"),
    ("0.25% bupivacaine", "0.25 percent bupivacaine"),
    ("eleven point two comma zero point two five", "11.2 0.25"),
    ("one thousand milligrams", "1000 milligram"),
    ("1,000 mg", "1000 milligram"),
    ("one hundred twelve", "112"),
    ("fifteen millimeters of mercury", "15 millimeter of mercury"),
    ("15 mmHg", "15 millimeter of mercury"),
    ("fourteen by eleven millimeters", "14 by 11 millimeter"),
    ("14 x 11 mm", "14 by 11 millimeter"),
    # dates, identifiers, codes
    ("March fourth nineteen sixty two", "march 4 1962"),
    ("March 4, 1962", "march 4 1962"),
    ("November twenty second twenty twenty six", "november 22 2026"),
    ("M R N four four seven one eight two three", "mrn 4471823"),
    ("five five", "5 5"),  # two cards, not fifty-five
    ("Five, five.", "5 5"),
    ("three five millimeter trocars", "3 5 millimeter trocars"),
    ("three 5 mm trocars", "3 5 millimeter trocars"),
    ("eight seventy five milligrams", "875 milligram"),
    ("Omnipaque three fifty", "omnipaque 350"),
    ("MRN: 4471823", "mrn 4471823"),
    ("free T four", "free t4"),
    ("hemoglobin A one C", "hemoglobin a1c"),
    ("L4-L5", "l4 l5"),
    ("vitamin D one thousand units", "vitamin d 1000 units"),
    ("at fourteen twenty", "at 1420"),
    ("at 14:20", "at 1420"),
    # words, titles, commands
    ("Calot's triangle", "calot's triangle"),
    ("Dr. Patel", "doctor patel"),
    ("Doctor Patel", "doctor patel"),
    ("a forty one year old", "a 41 year old"),
    ("a 41-year-old", "a 41 year old"),
    ("follow-up", "follow up"),
    ("same period new paragraph", "same"),
    ("Same.\n\n", "same"),
    ("open paren empagliflozin close paren", "empagliflozin"),
    ("(empagliflozin)", "empagliflozin"),
    ("", ""),
]


@pytest.mark.parametrize(("text", "expected"), NORMALISATION_CASES)
def test_normalisation_table(text: str, expected: str) -> None:
    assert normalise(text) == expected


def test_normalisation_keeps_suture_size_apart_from_forty() -> None:
    assert normalise("4-0 Vicryl") != normalise("40 Vicryl")
    assert normalise("2.5 mg") != normalise("25 mg")


def test_format_tokens_are_case_and_punctuation_sensitive() -> None:
    assert format_tokens("PREOPERATIVE DIAGNOSIS: 4-0 Vicryl, 142/88.") == [
        "PREOPERATIVE", "DIAGNOSIS", ":", "4-0", "Vicryl", ",", "142/88", "."]
    assert format_tokens("Dr. Smith\n\n0.25%") == ["Dr", ".", "Smith", "0.25", "%"]


def test_word_counts_hand_computed() -> None:
    # ref 6 words; hyp: 1 substitution (cat->bat), 1 deletion (the), 1 insertion (now)
    ref_words, s, d, i, hits, _ = word_counts("the cat sat on the mat", "bat sat on the mat now")
    assert (ref_words, s, d, i, hits) == (6, 1, 1, 1, 4)
    assert word_counts("", "words here")[:4] == (0, 0, 0, 2)
    assert word_counts("two words", "")[:4] == (2, 0, 2, 0)


def test_medical_errors_count_only_medical_reference_words() -> None:
    medical = {"cholecystectomy", "veress", "trocar"}.__contains__
    ref = "laparoscopic cholecystectomy with a veress needle and a trocar"
    hyp = "laparoscopic cholecystectomy with a maris needle and trucker"
    assert medical_errors(ref, hyp, medical) == (3, 2)
    assert medical_errors(ref, "", medical) == (3, 3)
    assert medical_errors("no terms here", "no terms here", medical) == (0, 0)


def test_term_recall_matches_whole_normalised_terms() -> None:
    hyp = normalise("The skin was closed with four-oh Vicryl. Calot's triangle was seen.")
    found, missed = term_recall(["4-0 Vicryl", "Calot's triangle", "Monocryl", "skin"], hyp)
    assert found == 3 and missed == ["Monocryl"]
    # a term must match whole words: "vicryl" is not found inside "vicrylate"
    assert term_recall(["Vicryl"], "vicrylate")[0] == 0


def test_formatted_counts_penalise_case_and_punctuation() -> None:
    expected = "PLAN: Continue metformin."
    assert formatted_counts(expected, "PLAN: Continue metformin.") == (5, 0)
    assert formatted_counts(expected, "plan continue metformin") == (5, 4)  # 2 case + : + .
    assert formatted_counts(expected, "") == (5, 5)


def test_score_text_wer_after_shared_normalisation() -> None:
    ref = "Blood pressure one forty two over eighty eight period Start lisinopril"
    hyp = "Blood pressure 142/88. Start Lisinopril."
    score = score_text(ref, hyp, is_medical={"lisinopril"}.__contains__,
                       terms=["lisinopril"], expected="Blood pressure 142/88. Start lisinopril.")
    assert score.ref_words == 7 and score.word_errors == 0
    assert (score.medical_ref_words, score.medical_errors) == (1, 0)
    assert (score.terms_total, score.terms_found) == (1, 1)
    assert (score.fmt_ref_tokens, score.fmt_errors) == (7, 1)  # "Lisinopril" vs "lisinopril"


def test_overall_rates_are_total_errors_over_total_reference() -> None:
    """Overall WER weights files by length (not a mean of per-file rates)."""
    totals = Totals(config="raw")
    totals.add(FileResult("a", "raw", 10.0, TextScore(ref_words=10, substitutions=5),
                          transcribe_s=2.0))
    totals.add(FileResult("b", "raw", 30.0, TextScore(ref_words=90, deletions=5),
                          transcribe_s=3.0))
    metrics = totals.metrics()
    assert metrics["wer"] == pytest.approx(10 / 100)  # the mean of rates would be 0.2778
    assert metrics["speed_x_realtime"] == pytest.approx(40 / 5)
    assert metrics["key_term_recall"] is None


def test_document_text_uses_the_expected_layout() -> None:
    document = Document(
        document_type="operative_report", title="Operative report",
        sections=[Section("preop_dx", "preoperative diagnosis", "Gallstones."),
                  Section("body", "", "Free text.")],
        header={"patient_name": HeaderField("Jane Roe", "sidecar"),
                "mrn": HeaderField("A1", "sidecar"), "physician": HeaderField("Dr. X")},
        instructions=[Instruction("schedule", "Schedule follow-up in 2 weeks.")],
    )
    assert document_text(document) == (
        "PATIENT: Jane Roe\nMRN: A1\n\nPREOPERATIVE DIAGNOSIS: Gallstones.\n\nFree text.\n")


def _write_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    write_manifest(path, rows)
    return path


def test_validate_manifest_names_the_problem(tmp_path: Path) -> None:
    (tmp_path / "a.ref.txt").write_text("hello there\n")
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    row = {"id": "a", "audio": "a.wav", "reference": "a.ref.txt", "licence": "MIT",
           "source": "test"}
    good = _write_rows(tmp_path / "manifest.csv", [row])
    assert [s.id for s in validate_manifest(good)] == ["a"]
    cases = [
        ({**row, "audio": "missing.wav"}, "audio file missing.wav"),
        ({**row, "licence": ""}, "no licence"),
        ({**row, "terms": "a.terms.txt"}, "terms file a.terms.txt"),
    ]
    for bad_row, message in cases:
        bad = _write_rows(tmp_path / "bad.csv", [bad_row])
        with pytest.raises(ConfigError, match=message):
            validate_manifest(bad)
    (tmp_path / "empty.ref.txt").write_text("  \n")
    bad = _write_rows(tmp_path / "bad.csv", [{**row, "reference": "empty.ref.txt"}])
    with pytest.raises(ConfigError, match="empty"):
        validate_manifest(bad)
    bad = _write_rows(tmp_path / "bad.csv", [row, row])
    with pytest.raises(ConfigError, match="twice"):
        validate_manifest(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        validate_manifest(tmp_path / "nope.csv")


def _two_file_manifest(samples_dir: Path, tmp_path: Path) -> Path:
    """A manifest with one general-speech clip and one synthetic dictation (copied)."""
    rows = []
    for set_name, sample_id in (("general_speech", "jfk"),
                                ("synthetic_medical", "instructions_short")):
        folder = samples_dir / set_name
        row = {r["id"]: r for r in read_manifest(folder / "manifest.csv")}[sample_id]
        for column in ("audio", "reference", "expected", "terms", "sidecar", "tasks"):
            if row.get(column):
                shutil.copy(folder / row[column], tmp_path / row[column])
        rows.append(row)
    return _write_rows(tmp_path / "manifest.csv", rows)


@pytest.mark.slow
def test_dictation_evaluate_end_to_end(
    samples_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Real tiny.en on two files, raw and pipeline: JSON, Markdown and PNG are written and
    the printed figures are the ones in results.json."""
    manifest = _two_file_manifest(samples_dir, tmp_path)
    out = tmp_path / "results"
    code = main(["evaluate", str(manifest), "--config", "raw", "--config", "pipeline",
                 "--config", "document", "--model", "tiny.en", "--data-dir",
                 str(tmp_path / "var"), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    for name in ("results.json", "results.md", "results.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "results.json").read_text())
    assert data["model"] == "tiny.en" and data["medical_vocabulary"] == "pipeline.language.vocab"
    assert len(data["files"]) == 6
    lines = printed.splitlines()
    for f in data["files"]:
        row = next(line for line in lines if f["id"] in line and f" {f['config']} " in line)
        cells = [c.strip() for c in re.split(r"[│|]", row) if c.strip()]
        assert cells[3] == f"{f['wer']:.3f}" and cells[4] == f"{f['cer']:.3f}", (row, f)
    for config, overall in data["overall"].items():
        row = next(line for line in lines if "OVERALL" in line and f" {config} " in line)
        assert f"{overall['wer']:.3f}" in row
        counts = overall["counts"]
        assert overall["wer"] == pytest.approx(counts["word_errors"] / counts["ref_words"],
                                               abs=1e-4)
    by_key = {(f["id"], f["config"]): f for f in data["files"]}
    # the real transcript: tiny.en hears JFK well
    assert by_key[("jfk", "raw")]["wer"] < 0.2
    assert "country" in by_key[("jfk", "raw")]["hypothesis"].lower()
    # the dictation has terms and an expected document, so these are measured
    dictation = by_key[("instructions_short", "raw")]
    assert dictation["key_term_recall"] is not None and dictation["formatted_ter"] is not None
    assert dictation["counts"]["medical_ref_words"] > 0
    assert dictation["speed_x_realtime"] > 0 and dictation["cpu_s"] > 0
    # the finished document carries the sidecar's header and is scored against expected.txt
    document = by_key[("instructions_short", "document")]
    assert document["error"] is None and "Okonkwo" in document["hypothesis"]
    assert document["formatted_ter"] is not None
    markdown = (out / "results.md").read_text()
    assert f"{data['overall']['raw']['wer']:.3f}" in markdown
    # re-scoring the stored hypotheses reproduces the same figures without transcribing
    code = main(["evaluate", "--rescore", str(out / "results.json"), "--data-dir",
                 str(tmp_path / "var")])
    assert code == 0
    again = json.loads((out / "rescored" / "results.json").read_text())
    for config, overall in data["overall"].items():
        redone = again["overall"][config]
        assert redone["counts"] == overall["counts"]
        for metric in ("wer", "cer", "medical_term_error_rate", "key_term_recall",
                       "formatted_ter"):
            assert redone[metric] == overall[metric], metric


def test_evaluate_rejects_an_unknown_manifest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["evaluate", str(tmp_path / "none.csv"), "--data-dir", str(tmp_path)])
    assert code == 1
    assert "does not exist" in capsys.readouterr().err


def test_manifest_csv_roundtrip_keeps_extra_columns(tmp_path: Path) -> None:
    rows = [{"id": "x", "audio": "x.wav", "reference": "x.ref.txt", "licence": "MIT",
             "source": "s", "extra": "kept"}]
    write_manifest(tmp_path / "m.csv", rows)
    with (tmp_path / "m.csv").open() as fh:
        header = next(csv.reader(fh))
    assert header[:3] == ["id", "audio", "reference"] and header[-1] == "extra"
    assert read_manifest(tmp_path / "m.csv")[0]["extra"] == "kept"
