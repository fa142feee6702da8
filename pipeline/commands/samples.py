"""``dictation samples``: check the sample sets, or re-render the synthetic dictations.

    dictation samples check             # validate every samples/*/manifest.csv
    dictation samples build [--only ID] # re-render TTS audio from the scripts (espeak-ng,
                                        # flite, sox, ffmpeg) and rewrite durations
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.core.settings import get_settings

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``samples`` sub-command."""
    p = subparsers.add_parser(
        "samples",
        help="check the sample sets or re-render the synthetic dictations",
        description="Validate the sample manifests, or re-render the synthetic dictations' "
        "audio from their scripts (voice, engine and rate from the manifest).",
    )
    p.add_argument("action", choices=["check", "build"])
    p.add_argument("--set", type=Path, dest="set_dir",
                   help="sample set folder (default: every set with TTS rows / every set)")
    p.add_argument("--only", action="append", metavar="ID", help="only these sample ids")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check or build; print a table of the samples concerned."""
    from pipeline.devtools.evaluate import validate_manifest
    from pipeline.devtools.samplegen import build_set

    settings = get_settings()
    sets = [args.set_dir] if args.set_dir else sorted(
        p.parent for p in Path(settings.samples_dir).glob("*/manifest.csv"))
    console = Console(width=160, highlight=False)
    table = Table(title=f"samples {args.action}")
    for column in ("set", "id", "engine", "voice", "duration s", "licence"):
        table.add_column(column)
    for set_dir in sets:
        if args.action == "build":
            rows = build_set(set_dir, only=args.only)
            for row in rows:
                table.add_row(set_dir.name, row["id"], row["engine"], row["voice"],
                              row["duration_s"], row["licence"][:40])
        samples = validate_manifest(set_dir / "manifest.csv")
        if args.action == "check":
            for s in samples:
                table.add_row(set_dir.name, s.id, s.engine, s.voice[:30], f"{s.duration_s:.1f}",
                              s.licence[:40])
    console.print(table)
    return 0
