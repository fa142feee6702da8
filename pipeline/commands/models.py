"""``dictation models``: list the speech models, where each comes from and whether it is here."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.commands.transcribe import settings_from_args
from pipeline.speech.models import choose_device, describe_models

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``models`` sub-command."""
    p = subparsers.add_parser("models", help="list the available speech models")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--data-dir", type=Path, help="data directory")
    p.set_defaults(func=run)


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.0f} MB"


def run(args: argparse.Namespace) -> int:
    """Print the models table (or JSON)."""
    settings = settings_from_args(args)
    rows = describe_models(settings)
    device, compute = choose_device(settings)
    if args.json:
        print(json.dumps({"device": device, "compute_type": compute, "models": rows}, indent=2))
        return 0
    table = Table(title=f"Speech models (device {device}, {compute})")
    for col in ("name", "language", "installed", "size", "source", "path"):
        table.add_column(col, overflow="fold")
    for r in rows:
        name = r["name"] + (" (default)" if r.get("default") else "")
        installed = "yes" if r["installed"] else "no"
        if r.get("joined") is False and r["installed"]:
            installed = "yes (joined on first use)"
        table.add_row(name, r["language"], installed, _size(r["size_bytes"]), r["source"],
                      r["path"] or "-")
    Console().print(table)
    return 0
