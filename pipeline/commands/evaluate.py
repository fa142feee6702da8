"""``dictation evaluate MANIFEST...``: accuracy of raw Whisper and the pipeline on sample sets.

Prints a table per set (per file and overall) and writes results.json, results.md and
results.png into ``--out`` when one manifest is given, else into ``<out>/<set>/`` (default
``<data_dir>/results/<UTC timestamp>/<set>/``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings, get_settings

__all__ = ["register", "run", "print_report"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``evaluate`` sub-command."""
    p = subparsers.add_parser(
        "evaluate",
        help="WER, CER, medical-term accuracy on sample sets",
        description="Transcribe every file of a sample manifest and score it: WER and CER "
        "after one shared normalisation, medical-term error rate, key-term recall and the "
        "formatted token error rate against the expected document.",
    )
    p.add_argument("manifests", nargs="*", type=Path, metavar="MANIFEST",
                   help="samples/<set>/manifest.csv")
    p.add_argument("--rescore", type=Path, action="append", metavar="RESULTS_JSON",
                   help="score the hypotheses of an earlier results.json again (current "
                   "normalisation), without transcribing")
    p.add_argument("--config", action="append", choices=["raw", "pipeline", "document"],
                   dest="configs",
                   help="raw (Whisper text, no biased decoding), pipeline (biased decoding + "
                   "normalize) or document (pipeline + sections: the finished text); repeat "
                   "to compare; default raw and pipeline")
    p.add_argument("--model", help="speech model: tiny.en, base or a CTranslate2 folder")
    p.add_argument("--out", type=Path, help="results folder (default <data_dir>/results/<UTC>)")
    p.add_argument("--limit", type=int, help="only the first N files of each manifest")
    p.add_argument("--data-dir", type=Path, help="data directory (default DICTATION_DATA_DIR)")
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.model:
        overrides["model"] = args.model
        overrides["adapted_models"] = False  # the model asked for, not an adapted one
    return Settings(**overrides) if overrides else get_settings()


def print_report(report: Any, console: Console) -> None:
    """Print a report's per-file and overall table (the figures results.json holds)."""
    from pipeline.devtools.evaluate import METRIC_LABELS, fmt, rounded_metrics

    table = Table(
        title=f"{report.set_name} - model {report.model} - medical vocabulary "
        f"{report.medical_vocabulary}",
        show_lines=False,
    )
    table.add_column("file")
    table.add_column("config")
    table.add_column("audio s", justify="right")
    for label in METRIC_LABELS.values():
        table.add_column(label, justify="right")
    for f in report.files:
        m = rounded_metrics(f.metrics())
        row = [f.id, f.config, f"{f.duration_s:.1f}", *(fmt(m[k], k) for k in METRIC_LABELS)]
        if f.error:
            row[0] += " (failed)"
        table.add_row(*row)
    table.add_section()
    for config, totals in report.overall.items():
        m = rounded_metrics(totals.metrics())
        table.add_row("OVERALL", config, f"{totals.duration_s:.1f}",
                      *(fmt(m[k], k) for k in METRIC_LABELS), style="bold")
    console.print(table)
    for f in report.files:
        if f.error:
            console.print(f"[red]{f.id} ({f.config}) failed:[/red] {f.error}", markup=True)
    console.print(f"results: {report.out_dir}")


def run(args: argparse.Namespace) -> int:
    """Evaluate each manifest; print the tables; exit 1 if any file failed."""
    from pipeline.devtools.evaluate import CONFIGS, default_out_dir, run_evaluation

    settings = _settings(args)
    console = Console(width=200, highlight=False)
    if args.rescore:
        from pipeline.devtools.evaluate import rescore

        for results_json in args.rescore:
            out_dir = args.out / results_json.parent.name if args.out else None
            print_report(rescore(results_json, settings, out_dir), console)
        return 0
    if not args.manifests:
        raise ConfigError("Give at least one manifest.csv (or --rescore RESULTS_JSON).")
    configs = args.configs or list(CONFIGS)
    out_root = args.out or default_out_dir(settings)
    single = len(args.manifests) == 1 and args.out is not None
    failed = 0
    for manifest in args.manifests:
        out_dir = out_root if single else out_root / manifest.parent.name
        with console.status(f"evaluating {manifest}") as status:

            def progress(sample_id: str, config: str, status: Any = status,
                         set_name: str = manifest.parent.name) -> None:
                status.update(f"{set_name}: {sample_id} ({config})")

            report = run_evaluation(manifest, settings, configs, out_dir, limit=args.limit,
                                    progress=progress)
        print_report(report, console)
        failed += sum(1 for f in report.files if f.error)
    return 1 if failed else 0
