"""``dictation status``: how many dictations are queued, in progress, done, quarantined,
duplicates; the most recent ones (ids only). The table comes from ``pipeline.service.status``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.service.status import status_table

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``status`` sub-command."""
    p = subparsers.add_parser("status", help="counts and recent dictations of the inbox service")
    p.add_argument("--data-dir", type=Path, help="data directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--limit", type=int, default=10, help="recent items to list (default 10)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print counts and recent items (no patient data: ids, statuses, codes)."""
    from pipeline.commands.transcribe import settings_from_args
    from pipeline.ingest import inbox

    settings = settings_from_args(args)
    if args.json:
        print(json.dumps({"counts": inbox.status_counts(settings),
                          "recent": inbox.recent(settings, args.limit)}, indent=2))
        return 0
    from rich.console import Console

    Console().print(status_table(settings, args.limit))
    return 0
