"""``dictation flags-eval MANIFEST...``: flagged words per 100, precision and recall.

Transcribes and normalises each sample, marks the words the editor would flag (every change,
the old way, and only the changes worth reviewing, the new way) and compares them with the
words that are actually wrong against the reference. Prints one table per manifest.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pipeline.core.settings import Settings, get_settings

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``flags-eval`` sub-command."""
    p = subparsers.add_parser(
        "flags-eval",
        help="how useful the editor's flags are (per 100 words, precision, recall)",
        description="Flagged words per 100 words, and the share of flags on wrong words "
        "(precision) and of wrong words flagged (recall), for every change flagged (all) "
        "and for the changes worth reviewing (review).",
    )
    p.add_argument("manifests", nargs="+", type=Path, metavar="MANIFEST",
                   help="samples/<set>/manifest.csv")
    p.add_argument("--model", help="speech model: tiny.en, base or a CTranslate2 folder")
    p.add_argument("--limit", type=int, help="only the first N files of each manifest")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the counts as JSON")
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


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def run(args: argparse.Namespace) -> int:
    """Measure each manifest and print the per-file and overall table."""
    from pipeline.devtools.flags_eval import SCHEMES, run_flags_eval

    settings = _settings(args)
    console = Console(width=160, highlight=False)
    dump: dict[str, Any] = {}
    for manifest in args.manifests:
        report = run_flags_eval(manifest, settings, limit=args.limit)
        table = Table(title=f"{manifest.parent.name} - model {report.model} - flags")
        for col in ("file", "scheme", "words", "flagged", "per 100", "wrong", "precision",
                    "recall"):
            table.add_column(col, justify="left" if col in ("file", "scheme") else "right")
        rows = [*report.files.items(), ("OVERALL", report.overall)]
        for name, counts in rows:
            for scheme in SCHEMES:
                c = counts[scheme]
                table.add_row(name, scheme, str(c.words), str(c.flagged), f"{c.per_100:.1f}",
                              str(c.wrong), _pct(c.precision), _pct(c.recall),
                              style="bold" if name == "OVERALL" else None)
        console.print(table)
        dump[str(manifest)] = {
            "model": report.model,
            "files": {k: {s: c.to_dict() for s, c in v.items()} for k, v in report.files.items()},
            "overall": {s: c.to_dict() for s, c in report.overall.items()},
        }
    if args.json:
        args.json.write_text(json.dumps(dump, indent=2), encoding="utf-8")
    return 0
