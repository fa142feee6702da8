"""The adaptation learning curve (``pipeline/devtools/learning_curve.py``,
``dictation evaluate-adaptation``): the corpus a synthetic physician dictates, its rendering
and the curve's report. Built from reports this test writes in the MTSamples layout; never
from the MTSamples crawl itself (``../shared`` is not needed)."""

from __future__ import annotations

import csv
import json
import lzma
import shutil
from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.devtools.evaluate import normalise
from pipeline.devtools.learning_curve import (
    PHYSICIAN_VOICE,
    CorpusOptions,
    build_report,
    key_terms,
    read_source,
    render_report,
    select_reports,
    spoken_sentence,
    windows,
)

needs_tts = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("espeak-ng", "flite", "sox")),
    reason="espeak-ng, flite and sox render the dictations",
)

#: (specialty, report, keywords): written by the project in the MTSamples layout
REPORTS = [
    ("Surgery",
     "PREOPERATIVE DIAGNOSIS: Right inguinal hernia.\n\nPROCEDURE: Open repair with mesh.\n\n"
     "DESCRIPTION: The patient was placed supine. The groin was prepped and draped. An "
     "incision was made over the inguinal canal. The hernia sac was reduced. A polypropylene "
     "mesh was sutured in place with 2-0 Prolene. The skin was closed with 4-0 Monocryl.",
     "surgery, inguinal hernia, hernia sac, polypropylene mesh, prolene, monocryl, groin"),
    ("Cardiovascular / Pulmonary",
     "HISTORY: A 67-year-old man with atrial fibrillation on apixaban 5 mg twice daily.\n\n"
     "EXAM: Blood pressure 142/88, pulse 76 and irregular. Lungs are clear.\n\n"
     "ASSESSMENT: Atrial fibrillation, rate controlled. Hypertension.\n\n"
     "PLAN: Continue apixaban. Start amlodipine 5 mg daily. Echocardiogram in 3 months.",
     "cardiovascular / pulmonary, atrial fibrillation, apixaban, amlodipine, echocardiogram, "
     "blood pressure"),
    ("Gastroenterology",
     "PROCEDURE: Colonoscopy.\n\nINDICATION: Screening. Family history of colon cancer.\n\n"
     "FINDINGS: The cecum was reached. A 6 mm sessile polyp was removed from the sigmoid "
     "colon with a cold snare. Mild diverticulosis was seen.\n\nIMPRESSION: Sigmoid polyp, "
     "removed. Diverticulosis. Repeat colonoscopy in 5 years.",
     "gastroenterology, colonoscopy, sessile polyp, sigmoid colon, diverticulosis, cecum"),
    ("Neurology",
     "CHIEF COMPLAINT: Headache.\n\nHISTORY OF PRESENT ILLNESS: This 34-year-old woman has "
     "migraine with aura twice a month. Sumatriptan 50 mg helps. She has no weakness and no "
     "numbness.\n\nIMPRESSION: Migraine with aura.\n\nPLAN: Start topiramate 25 mg at bedtime "
     "and keep a headache diary.",
     "neurology, migraine, aura, sumatriptan, topiramate, headache"),
    ("Orthopedic",
     "DIAGNOSIS: Left carpal tunnel syndrome.\n\nHISTORY: Numbness in the thumb and index "
     "finger for 6 months. Nerve conduction studies confirmed median neuropathy at the "
     "wrist.\n\nPLAN: Carpal tunnel release under local anesthesia. A wrist splint at night "
     "until surgery. Follow up in 2 weeks after the release.",
     "orthopedic, carpal tunnel syndrome, median neuropathy, nerve conduction, splint"),
    ("Radiology",
     "EXAM: CT of the abdomen and pelvis with contrast.\n\nFINDINGS: The liver, spleen and "
     "pancreas are normal. There is a 4 mm nonobstructing stone in the left kidney. The "
     "appendix is normal. No free fluid.\n\nIMPRESSION: Left nephrolithiasis without "
     "hydronephrosis.",
     "radiology, nephrolithiasis, hydronephrosis, appendix, pancreas, kidney stone"),
]


def write_mtsamples_like(path: Path, reports: list[tuple[str, str, str]] = REPORTS) -> Path:
    """An .xz CSV in the MTSamples layout holding ``reports``."""
    with lzma.open(path, "wt", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["url", "medical_specialty", "sample_name", "description",
                         "transcription", "keywords"])
        for specialty, text, keywords in reports:
            writer.writerow(["", specialty, "sample", "written by the project", text,
                             keywords])
    return path


SMALL = CorpusOptions(min_words=30, max_words=90)


@pytest.mark.parametrize(("written", "spoken"), [
    ("BP 124/78, weight 130 lbs.",
     "BP one hundred twenty four over seventy eight comma weight one hundred thirty pounds "
     "period"),
    ("Closed with 4-0 Vicryl on 05/03/2008.",
     "Closed with four oh Vicryl on May third two thousand eight period"),
    ("A 6 mm polyp at L4-L5 (left).",
     "A six millimeters polyp at L four L five open paren left close paren period"),
    ("Seen on July 17, 2008 at 10:30 by Dr. Smith.",
     "Seen on July seventeenth two thousand eight at ten thirty by Doctor Smith period"),
    ("Hemoglobin 11.2; INR 2.5", "Hemoglobin eleven point two semicolon INR two point five"),
    ("1. Hypertension.", "one period Hypertension period"),
    ("Mass of 1,250 g since 1974.", "Mass of one thousand two hundred fifty grams since nineteen "
     "seventy four period"),
])
def test_spoken_sentence_says_numbers_units_and_punctuation(written: str, spoken: str) -> None:
    """Numbers, units, dates and punctuation come out as a physician dictates them."""
    assert spoken_sentence(written) == spoken


def test_spoken_reference_normalises_to_the_written_report() -> None:
    """The spoken reference and the written report are the same words once normalised (the
    shared WER normalisation), so the scoring measures the model, not the conversion."""
    import jiwer

    for specialty, text, keywords in REPORTS:
        report = build_report({"medical_specialty": specialty, "transcription": text,
                               "keywords": keywords}, CorpusOptions(min_words=1, max_words=500))
        assert report is not None
        assert jiwer.wer(normalise(report.expected), normalise(report.reference)) <= 0.03


def test_report_is_cut_at_a_sentence_end_within_the_word_budget() -> None:
    """A long report is cut at the last whole sentence that fits; a heading is said with its
    first sentence ("plan colon ..."), and one whose text did not fit is left out of both
    forms; paragraphs are separated by "new paragraph"."""
    specialty, text, keywords = REPORTS[1]
    row = {"medical_specialty": specialty, "transcription": text, "keywords": keywords}
    report = build_report(row, CorpusOptions(min_words=10, max_words=45))
    assert report is not None
    assert 10 <= report.spoken_words <= 45
    assert report.chunks[0].startswith("History colon A sixty seven year old man")
    assert "new paragraph" in report.reference
    assert not report.reference.rstrip().endswith("new paragraph")
    assert "PLAN" not in report.expected and "plan colon" not in report.reference.lower()
    assert report.expected.startswith("HISTORY: A 67-year-old man")
    # every sentence of the written form is said, and only those
    assert normalise(report.expected) == normalise(report.reference)
    assert build_report(row, CorpusOptions(min_words=500, max_words=900)) is None


def test_key_terms_are_medical_keywords_the_dictation_says() -> None:
    """Key terms: the report's keywords that its cut dictation says and that hold a medical
    word; the specialty label and everyday words are not terms."""
    from pipeline.core.settings import Settings
    from pipeline.language import vocab

    specialty, text, keywords = REPORTS[1]
    report = build_report({"medical_specialty": specialty, "transcription": text,
                           "keywords": keywords}, CorpusOptions(min_words=1, max_words=500))
    assert report is not None
    index = vocab.get_index(Settings())
    terms = key_terms(report, index.is_medical)
    assert "atrial fibrillation" in terms and "apixaban" in terms
    assert "cardiovascular / pulmonary" not in terms
    assert "blood pressure" not in terms or index.is_medical("pressure")
    short = build_report({"medical_specialty": specialty, "transcription": text,
                          "keywords": keywords}, CorpusOptions(min_words=1, max_words=30))
    assert short is not None
    assert "echocardiogram" not in key_terms(short, index.is_medical)  # not said before the cut


def test_selection_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    """The same seed picks the same reports in the same order, whatever the file's row
    order; another seed shuffles differently; too few reports is a clear error."""
    rows = read_source(write_mtsamples_like(tmp_path / "a.csv.xz"))
    again = read_source(write_mtsamples_like(tmp_path / "b.csv.xz", list(reversed(REPORTS))))
    first = [r.id for r in select_reports(rows, 5, SMALL)]
    assert first == [r.id for r in select_reports(again, 5, SMALL)]
    assert len(set(first)) == 5 and all(i.startswith("mts-") for i in first)
    orders = {tuple(r.id for r in select_reports(rows, 5, CorpusOptions(
        seed=s, min_words=30, max_words=90))) for s in range(6)}
    assert len(orders) > 1
    with pytest.raises(ConfigError, match="fit the word budget"):
        select_reports(rows, 7, SMALL)
    only = select_reports(rows, 1, CorpusOptions(min_words=30, max_words=90,
                                                  specialties=("radiology",)))
    assert only[0].specialty == "Radiology"


def test_unreadable_source_is_a_clear_error(tmp_path: Path) -> None:
    """A missing file, a file that is not xz, or a CSV without a transcription column."""
    with pytest.raises(ConfigError, match="does not exist"):
        read_source(tmp_path / "missing.csv.xz")
    bad = tmp_path / "bad.csv.xz"
    bad.write_bytes(b"not xz at all")
    with pytest.raises(ConfigError, match="Cannot read"):
        read_source(bad)
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="transcription"):
        read_source(other)


@needs_tts
def test_rendering_gives_exact_spans_and_is_cached(tmp_path: Path) -> None:
    """Each chunk is spoken on its own; the spans tile the audio exactly; a second render
    reuses the cache; training windows hold whole chunks and stay under the limit."""
    rows = read_source(write_mtsamples_like(tmp_path / "a.csv.xz"))
    report = select_reports(rows, 1, SMALL)[0]
    rendered = render_report(report, PHYSICIAN_VOICE, tmp_path / "cache")
    assert len(rendered.spans) == len(report.chunks)
    assert rendered.spans[0][0] == 0.0
    for (_, end), (start, _) in zip(rendered.spans, rendered.spans[1:], strict=False):
        assert start == end
    assert rendered.spans[-1][1] == pytest.approx(rendered.duration_s)
    from pipeline.devtools.samplegen import audio_duration

    assert audio_duration(rendered.audio) == pytest.approx(rendered.duration_s, abs=0.01)
    stamp = rendered.audio.stat().st_mtime_ns
    again = render_report(report, PHYSICIAN_VOICE, tmp_path / "cache")
    assert again.audio == rendered.audio and again.audio.stat().st_mtime_ns == stamp
    cut = windows(rendered, 10.0)
    assert all(w.end_s - w.start_s <= 10.0 for w in cut)
    assert " ".join(w.text for w in cut).split() == report.reference.split() or \
        len(cut) < len(report.chunks)


def test_out_folder_inside_the_repository_is_refused(tmp_path: Path) -> None:
    """Rendered reports never land in the checkout (outside the ignored data directory)."""
    from pipeline.cli import main
    from pipeline.core.settings import PROJECT_ROOT

    data = write_mtsamples_like(tmp_path / "a.csv.xz")
    code = main(["evaluate-adaptation", "--mtsamples", str(data), "--quick",
                 "--data-dir", str(tmp_path / "var"), "--out", str(PROJECT_ROOT / "docs" / "x")])
    assert code == 1
    assert not (PROJECT_ROOT / "docs" / "x").exists()


def test_bad_arguments_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    """An unknown training option or a bad N list is one line, exit 1."""
    from pipeline.cli import main

    data = write_mtsamples_like(tmp_path / "a.csv.xz")
    base = ["evaluate-adaptation", "--mtsamples", str(data), "--data-dir", str(tmp_path / "v"),
            "--out", str(tmp_path / "out")]
    assert main([*base, "--train-option", "nonsense=1"]) == 1
    assert "NAME=VALUE" in capsys.readouterr().err
    assert main([*base, "--n", "0,five"]) == 1
    assert "whole numbers" in capsys.readouterr().err


@needs_tts
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_quick_curve_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``dictation evaluate-adaptation --quick`` on a corpus the test wrote: tiny.en, stock
    and after 2 signed dictations. The report has every point and figure; the figures are
    rates from decoded text (N = 0 equals a direct ``run_evaluation`` of the stock model on
    the same files, and each stored hypothesis rescored gives the stored figure); the
    adapted model is a CTranslate2 folder that was really trained."""
    pytest.importorskip("torch")
    from pipeline.cli import main
    from pipeline.core.settings import Settings
    from pipeline.devtools.evaluate import rescore, rounded_metrics, run_evaluation

    data = write_mtsamples_like(tmp_path / "a.csv.xz")
    out = tmp_path / "out"
    var = tmp_path / "var"
    code = main(["evaluate-adaptation", "--mtsamples", str(data), "--quick",
                 "--data-dir", str(var), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Adaptation learning curve" in printed and "tiny.en" in printed

    result = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert (out / "results.md").read_text(encoding="utf-8").startswith(
        "# Adaptation learning curve")
    assert result["commit"] and result["started_at"]
    corpus = result["corpus"]
    assert len(corpus["signed_ids"]) == 2 and len(corpus["held_out_ids"]) == 2
    assert len(corpus["other_voice_ids"]) == 1
    assert not set(corpus["signed_ids"]) & set(corpus["held_out_ids"])
    points = {(p["model"], p["n"]): p for p in result["points"]}
    assert set(points) == {("tiny.en", 0), ("tiny.en", 2)}
    for point in points.values():
        figures = point["figures"]["raw"]
        assert set(figures) == {"own", "other", "general"}
        for part, metrics in figures.items():
            for name, value in metrics.items():
                assert isinstance(value, float), (part, name)
                if name == "key_term_recall":
                    assert 0.0 <= value <= 1.0
                else:
                    assert value >= 0.0
        counts = point["counts"]["raw"]["own"]
        assert counts["files"] == 2 and counts["failed"] == 0 and counts["ref_words"] > 50

    stock, adapted = points[("tiny.en", 0)], points[("tiny.en", 2)]
    assert stock["train"] is None and stock["train_s"] == 0.0
    assert adapted["train"]["steps"] >= 1 and adapted["train_s"] > 0
    assert adapted["pairs"]["pairs"] >= 1 and adapted["signed_audio_s"] > 20
    assert (out / "models" / "tiny.en-n2" / "model.bin").is_file()

    # N = 0 is the stock model: the same figures as evaluating it directly on those files
    manifest = next((out / "corpus").glob("held-out-espeak*/manifest.csv"))
    direct = run_evaluation(manifest, Settings(data_dir=var, model="tiny.en",
                                               adapted_models=False),
                            ["raw"], tmp_path / "direct")
    m = rounded_metrics(direct.overall["raw"].metrics())
    for name, value in stock["figures"]["raw"]["own"].items():
        assert value == m[name], name

    # --report prints the finished run again and writes the same results.json back
    before = (out / "results.json").read_text(encoding="utf-8")
    assert main(["evaluate-adaptation", "--report", str(out / "results.json")]) == 0
    assert "tiny.en" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text(encoding="utf-8")) == json.loads(before)

    # every stored figure is the score of the stored hypothesis text
    for point in (stock, adapted):
        stored = Path(point["results_dirs"]["own"]) / "results.json"
        again = rescore(stored, Settings(data_dir=var), tmp_path / f"rescored-{point['n']}")
        m = rounded_metrics(again.overall["raw"].metrics())
        for name, value in point["figures"]["raw"]["own"].items():
            assert value == m[name], (point["n"], name)


def test_docstring_examples_of_the_spoken_form_run() -> None:
    """The examples in ``spoken_sentence``'s docstring give the output they show."""
    import doctest

    from pipeline.devtools import learning_curve

    result = doctest.testmod(learning_curve, report=False)
    assert result.attempted > 0 and result.failed == 0
