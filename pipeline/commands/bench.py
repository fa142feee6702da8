"""``dictation bench AUDIO``: raw faster-whisper vs the full pipeline, measured in one run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from pipeline.commands.transcribe import settings_from_args

if TYPE_CHECKING:  # pipeline.devtools.bench imports numpy: only when the command runs
    from pipeline.devtools.bench import BenchResult

__all__ = ["register", "run", "report"]

TARGET_RATIO = 1.15
TARGET_LONG_MB = 700.0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``bench`` sub-command."""
    p = subparsers.add_parser(
        "bench",
        help="raw faster-whisper vs the pipeline: wall time, speed, peak memory",
        description="Measure raw faster-whisper and the full pipeline side by side on the "
        "same audio, model and options; each in its own process.",
    )
    p.add_argument("audio", type=Path, metavar="AUDIO")
    p.add_argument("--model", help="registry name or CTranslate2 folder (default: settings)")
    p.add_argument("--beam-size", type=int, help="beam size (default: settings)")
    p.add_argument("--long-minutes", type=float, metavar="N",
                   help="also build an N-minute file from AUDIO and measure its peak memory")
    p.add_argument("--long-raw", action="store_true",
                   help="with --long-minutes, also run raw faster-whisper on the long file")
    p.add_argument("--no-bias", action="store_true",
                   help="pipeline without prompt terms (biased_decoding off)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="alternate raw and pipeline N times; report the median of each")
    p.add_argument("--document-type", metavar="TYPE",
                   help="document type, as a sidecar would give it (e.g. operative_report): "
                   "selects the term prompt, given to both raw faster-whisper and the pipeline")
    p.add_argument("--data-dir", type=Path, help="data directory (model cache)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run)


def _row(table: Table, name: str, values: list[Any]) -> None:
    table.add_row(name, *[str(v) for v in values])


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print a table (or JSON)."""
    from pipeline.devtools.bench import run_bench

    settings = settings_from_args(args)
    if args.beam_size:
        settings.beam_size = args.beam_size
    if args.no_bias:
        settings.biased_decoding = False
    result = run_bench(args.audio, settings, long_minutes=args.long_minutes,
                       long_raw=args.long_raw, repeat=args.repeat,
                       document_type=args.document_type)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    report(result, Console(), repeat=args.repeat, document_type=args.document_type)
    return 0


def report(result: BenchResult, console: Console, *, repeat: int = 1,
           document_type: str | None = None) -> None:
    """Print the figures: the side-by-side table, per-stage times, the PDF on its own line."""
    raw, pipe = result.raw, result.pipeline
    runs = f", median of {repeat} alternating runs" if repeat > 1 else ""
    if document_type:
        runs += f", pipeline as {document_type}"
    table = Table(
        title=f"{Path(result.audio).name}: {raw.audio_s:.1f} s audio, model {result.model}, "
        f"{result.device}/{result.compute_type}, beam {result.beam_size}{runs}",
        caption="pipeline wall time: until the draft is in the review queue (PDF below)",
    )
    table.add_column("")
    table.add_column("raw faster-whisper", justify="right")
    table.add_column("pipeline", justify="right")
    table.add_column("pipeline / raw", justify="right")
    _row(table, "wall time (s)", [f"{raw.wall_s:.2f}", f"{pipe.wall_s:.2f}",
                                  f"{result.ratio:.2f} (target <= {TARGET_RATIO})"])
    _row(table, "x real time", [f"{raw.speed:.1f}", f"{pipe.speed:.1f}", ""])
    _row(table, "peak RSS (MB)", [f"{raw.peak_rss_mb:.0f}", f"{pipe.peak_rss_mb:.0f}",
                                  f"{pipe.peak_rss_mb / raw.peak_rss_mb:.2f}"])
    _row(table, "model load (s)", [f"{raw.load_s:.2f}", f"{pipe.load_s:.2f}", ""])
    _row(table, "warm-up, first 5 s (s)", [f"{raw.warmup_s:.2f}", f"{pipe.warmup_s:.2f}", ""])
    _row(table, "words", [raw.words, pipe.words, ""])
    console.print(table)
    if pipe.stages:
        console.print("pipeline stages (s): " + ", ".join(
            f"{k} {v:.2f}" for k, v in pipe.stages.items() if k != "runs")
            + " (pdf runs after the draft is queued)")
        others = sum(v for k, v in pipe.stages.items() if k not in ("runs", "transcribe", "pdf"))
        outside = pipe.wall_s - pipe.stages.get("transcribe", 0.0)
        console.print(f"pipeline outside transcription, to the queue: {outside:.2f} s "
                      f"({others:.2f} s in the other stages)")
    if pipe.repairs:
        done = []
        if pipe.repairs.get("prompt_fallback"):
            done.append("the whole file decoded again without the term prompt")
        if pipe.repairs.get("repaired_loops"):
            done.append(f"{pipe.repairs['repaired_loops']} looping stretch(es) decoded again")
        if pipe.repairs.get("recovered_words"):
            done.append(f"{pipe.repairs['recovered_words']} words of skipped speech recovered")
        console.print("pipeline repaired what the decode lost: " + "; ".join(done)
                      + " (decoding raw faster-whisper does not do, inside the pipeline's time)")
    if pipe.pdf_s is not None and pipe.with_pdf_s is not None:
        console.print(
            f"PDF (LibreOffice, made after the draft is queued): {pipe.pdf_s:.2f} s; "
            f"end to end with the PDF: {pipe.with_pdf_s:.2f} s "
            f"({pipe.speed_with_pdf or 0:.1f}x real time, {result.ratio_with_pdf or 0:.2f}x raw)"
        )
    else:
        console.print("PDF: none made (settings.pdf is 'never' or LibreOffice is missing)")
    for fig in (result.long, result.long_raw):
        if fig is None:
            continue
        verdict = "within" if fig.peak_rss_mb <= TARGET_LONG_MB else "OVER"
        console.print(
            f"{fig.label}: {fig.audio_s / 60:.1f} min audio in {fig.wall_s:.1f} s "
            f"({fig.speed:.1f}x real time), peak RSS {fig.peak_rss_mb:.0f} MB "
            f"({verdict} the {TARGET_LONG_MB:.0f} MB target)"
        )
