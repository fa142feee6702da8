"""``dictation models``: list the speech models, where each comes from and whether it is here.

``dictation models --verify`` hashes every file of every installed registry model again and
compares it with the SHA-256 in ``models/registry.toml`` (joining a split model if needed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.commands.transcribe import settings_from_args
from pipeline.core.errors import ModelIntegrityError, ModelNotFoundError
from pipeline.core.settings import Settings
from pipeline.speech.models import (
    choose_device,
    describe_models,
    load_registry,
    registry_path,
    resolve,
)

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``models`` sub-command."""
    p = subparsers.add_parser("models", help="list the available speech models")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--data-dir", type=Path, help="data directory")
    p.add_argument("--verify", action="store_true",
                   help="hash every installed registry model's files again and compare them "
                        "with the SHA-256 sums in models/registry.toml")
    p.set_defaults(func=run)


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.0f} MB"


def run(args: argparse.Namespace) -> int:
    """Print the models table (or JSON)."""
    settings = settings_from_args(args)
    if args.verify:
        return _verify(settings)
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


def _verify(settings: Settings) -> int:
    """One line per registry model: ok, not installed, or the mismatch; 1 if any mismatch."""
    failed = 0
    for name in load_registry(registry_path(settings)):
        try:
            resolved = resolve(name, settings, rehash=True)
        except ModelIntegrityError as exc:
            failed += 1
            print(f"{name}: FAILED: {exc}")
        except ModelNotFoundError as exc:
            print(f"{name}: not installed ({exc})")
        else:
            print(f"{name}: ok ({resolved.source})")
    return 1 if failed else 0
