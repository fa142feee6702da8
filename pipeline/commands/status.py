"""``dictation status``: does the service run, what is queued, in progress (in truth: runs
actually running) and interrupted, how old the oldest waiting work is, what the inbox holds
that it does not take, and the most recent dictations (ids only).

Exit status: 0 when all is well, 2 (``NEEDS_PERSON``) when something needs a person: the
service down with work waiting, work waiting longer than it should, entries the inbox
holds, folders in processing/ without a record (and, with ``--strict``, dictations
quarantined or failed since the last ``--ack``). ``--json`` carries the same report and the
same exit status. The checks live in ``pipeline.service.status``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.service.status import status_table

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``status`` sub-command."""
    p = subparsers.add_parser(
        "status", help="is the service running, counts, ages, held files, recent dictations; "
        "exit 2 when something needs a person")
    p.add_argument("--data-dir", type=Path, help="data directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--limit", type=int, default=10, help="recent items to list (default 10)")
    p.add_argument("--strict", action="store_true",
                   help="also exit 2 for dictations quarantined or failed since the last --ack")
    p.add_argument("--ack", action="store_true",
                   help="record that the quarantine was looked at now (then report)")
    p.add_argument("--queued-max", type=float, default=None, metavar="SECONDS",
                   help="queued longer than this is overdue (default 900)")
    p.add_argument("--in-progress-max", type=float, default=None, metavar="SECONDS",
                   help="in progress longer than this is overdue (default 1800)")
    p.add_argument("--inbox-max", type=float, default=None, metavar="SECONDS",
                   help="a file in the inbox longer than this is overdue (default 300)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the report (no patient data: ids, statuses, codes, counts, ages); returns 0, or 2
    when something needs a person."""
    from pipeline.commands.transcribe import settings_from_args
    from pipeline.ingest import inbox
    from pipeline.service.status import StatusOptions, acknowledge, check, health_text

    settings = settings_from_args(args)
    options = StatusOptions(strict=args.strict)
    for name, attr in (("queued_max", "queued_max_s"), ("in_progress_max", "in_progress_max_s"),
                       ("inbox_max", "inbox_max_s")):
        value = getattr(args, name, None)
        if value is not None:
            setattr(options, attr, value)
    if args.ack:
        acknowledge(settings)
    health = check(settings, options)
    if args.json:
        report = health.as_dict()
        report["recent"] = inbox.recent(settings, args.limit)
        print(json.dumps(report, indent=2))
        return health.exit_code
    from rich.console import Console

    console = Console()
    console.print(status_table(settings, args.limit, health=health))
    for line in health_text(health):
        console.print(line, markup=False, highlight=False)
    return health.exit_code
