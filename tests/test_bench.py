"""``dictation bench``: the pipeline side is measured to the review queue with the PDF timed on
its own line (nothing hidden); per-stage times are printed. No timing targets here (those are
for the benchmark command), only what is measured and shown."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from pipeline.commands.bench import report
from pipeline.core.settings import Settings
from pipeline.devtools.bench import BenchResult, RunFigures, _child
from pipeline.documents.pdf import find_soffice


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "dictation.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(path),
                    "Plan. Follow up in two weeks with a chest x-ray."], check=True)
    return path


@pytest.mark.slow
@pytest.mark.skipif(find_soffice() is None, reason="LibreOffice (soffice) is not installed")
def test_pipeline_figures_split_queue_and_pdf(settings: Settings, speech: Path) -> None:
    """The pipeline run (in this process) reports the time to the queue, the PDF's own time
    and the end-to-end time with it; the stages include the PDF after the enqueue."""
    settings.pdf = "auto"
    figures = RunFigures(**_child("pipeline", settings.model_dump(), str(speech), None))
    assert list(figures.stages)[-2:] == ["enqueue", "pdf"]
    assert figures.pdf_s == figures.stages["pdf"]
    assert figures.with_pdf_s is not None
    assert figures.wall_s + figures.pdf_s <= figures.with_pdf_s + 0.01
    assert figures.wall_s >= figures.stages["transcribe"]


@pytest.mark.slow
def test_pipeline_figures_without_pdf(settings: Settings, speech: Path) -> None:
    """pdf never: no PDF figure (it is not invented as zero)."""
    figures = RunFigures(**_child("pipeline", settings.model_dump(), str(speech), None))
    assert figures.pdf_s is None


def _result(pdf_s: float | None) -> BenchResult:
    raw = RunFigures("raw", 100.0, 10.0, 0.3, 0.9, 400.0, 250)
    pipe = RunFigures("pipeline", 100.0, 10.5, 0.3, 3.0, 530.0, 250,
                      stages={"load": 0.0, "transcribe": 10.3, "normalize": 0.05,
                              "render": 0.02, "enqueue": 0.01, "pdf": pdf_s or 0.0},
                      pdf_s=pdf_s, with_pdf_s=10.5 + (pdf_s or 0.0))
    return BenchResult("a.ogg", "tiny.en", "cpu", "int8", 5, raw, pipe)


def test_report_prints_the_pdf_and_the_stages_on_their_own_lines() -> None:
    console = Console(record=True, width=200)
    report(_result(1.0), console, repeat=2)
    out = console.export_text()
    assert "1.05 (target <= 1.15)" in out  # to the queue
    assert "pipeline stages (s): load 0.00, transcribe 10.30" in out
    assert "pdf 1.00" in out
    assert ("PDF (LibreOffice, made after the draft is queued): 1.00 s; end to end with the "
            "PDF: 11.50 s (8.7x real time, 1.15x raw)") in out
    assert "outside transcription, to the queue: 0.20 s" in out
    data = _result(1.0).to_dict()
    assert data["ratio"] == 1.05 and data["ratio_with_pdf"] == 1.15
    console = Console(record=True, width=200)
    report(_result(None), console)
    assert "PDF: none made" in console.export_text()


@pytest.mark.slow
def test_pipeline_figures_name_the_repairs_of_a_looping_dictation(settings: Settings) -> None:
    """The pipeline's figures name what the transcription guards decoded again (the reason
    its time can be above raw on a file): exactly the repairs the transcript records for the
    same file. On the shipped lap-chole dictation tiny.en loops for 30 s on some CPUs and not
    on others (docs/decoding-determinism.md), so the test compares the bench's figures with a
    transcription of the same file in this process (deterministic on one machine) rather than
    expecting a loop."""
    from pipeline.core.records import DictationMeta
    from pipeline.core.settings import PROJECT_ROOT
    from pipeline.service.process import process_file

    path = PROJECT_ROOT / "samples" / "synthetic_medical" / "op_lap_chole.ogg"
    figures = RunFigures(**_child("pipeline", settings.model_dump(), str(path), None))
    direct = process_file(path, settings, DictationMeta(source="bench"), store=False)
    diag = direct.transcript.options.get("diagnostics", {})
    expected = {k: int(diag.get(k) or 0)
                for k in ("repaired_loops", "recovered_words", "prompt_fallback")}
    assert figures.repairs == {k: v for k, v in expected.items() if v}
    if "repetition" in direct.transcript.flags:  # the loop of this CPU was repaired and named
        assert figures.repairs.get("repaired_loops", 0) >= 1
    assert "prompt_fallback" not in figures.repairs  # no sidecar: no prompt to fall back from


def test_clean_clip_reports_no_repairs(settings: Settings, speech: Path) -> None:
    figures = RunFigures(**_child("pipeline", settings.model_dump(), str(speech), None))
    assert figures.repairs == {}


def test_report_names_the_repairs_only_when_there_were_some() -> None:
    result = _result(None)
    result.pipeline.repairs = {"repaired_loops": 1, "recovered_words": 37}
    console = Console(record=True, width=240)
    report(result, console)
    out = console.export_text()
    assert ("pipeline repaired what the decode lost: 1 looping stretch(es) decoded again; "
            "37 words of skipped speech recovered") in out
    console = Console(record=True, width=240)
    report(_result(None), console)
    assert "repaired" not in console.export_text()
    assert _result(None).to_dict()["pipeline"]["repairs"] == {}
