"""``dictation status``: how many dictations are queued, in progress, done, quarantined,
duplicates; the most recent ones (ids only). Also the live view ``dictation run`` shows."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.core.settings import Settings

__all__ = ["register", "run", "StatusView", "LABELS"]

#: status -> label shown to people
LABELS = {
    "waiting_in_inbox": "waiting in inbox",
    "received": "queued",
    "processing": "in progress",
    "done": "done",
    "quarantined": "quarantined",
    "failed": "failed",
    "duplicate": "duplicates",
}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``status`` sub-command."""
    p = subparsers.add_parser("status", help="counts and recent dictations of the inbox service")
    p.add_argument("--data-dir", type=Path, help="data directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--limit", type=int, default=10, help="recent items to list (default 10)")
    p.set_defaults(func=run)


def _table(settings: Settings, limit: int, extra: str = "") -> Any:
    from rich.console import Group
    from rich.table import Table

    from pipeline.ingest import inbox

    counts = inbox.status_counts(settings)
    summary = Table(title=f"Dictation inbox {extra}".strip(), show_header=True)
    for key in LABELS:
        summary.add_column(LABELS[key], justify="right")
    summary.add_row(*(str(counts.get(k, 0)) for k in LABELS))
    recent = Table(title="Recent", show_header=True)
    for col in ("dictation", "status", "priority", "physician", "seconds", "reason code"):
        recent.add_column(col)
    for r in inbox.recent(settings, limit):
        recent.add_row(r["id"], r["status"], r["priority"], r["physician_id"] or "-",
                       f"{r['duration_s']:.1f}" if r["duration_s"] else "-",
                       r["error_code"] or (f"dup of {r['duplicate_of'][:8]}"
                                           if r["duplicate_of"] else ""))
    return Group(summary, recent)


class StatusView:
    """The live status of a running service (rich Live on a terminal, lines otherwise)."""

    def __init__(self, settings: Settings, service: Any = None) -> None:
        self.settings = settings
        self.service = service

    def line(self) -> str:
        """One line of counts."""
        from pipeline.ingest import inbox

        counts = inbox.status_counts(self.settings)
        return " | ".join(f"{LABELS[k]} {counts.get(k, 0)}" for k in LABELS)

    @contextmanager
    def live(self, enabled: bool = True, out: Any = None) -> Iterator[Callable[[], bool]]:
        """Yield an ``update()`` to call now and then; it redraws only when the counts
        changed and returns whether they did. No refresh thread: an idle service draws
        nothing (rich's auto-refresh would re-render every second)."""
        import sys

        from pipeline.ingest import inbox

        out = out or sys.stdout
        last: list[tuple[tuple[str, int], ...] | None] = [None]

        def changed() -> bool:
            counts = tuple(sorted(inbox.status_counts(self.settings).items()))
            if counts == last[0]:
                return False
            last[0] = counts
            return True

        if enabled and hasattr(out, "isatty") and out.isatty():
            from rich.console import Console
            from rich.live import Live

            with Live(_table(self.settings, 8), console=Console(file=out),
                      auto_refresh=False, transient=False) as live:
                changed()

                def update_live() -> bool:
                    if not changed():
                        return False
                    live.update(_table(self.settings, 8, "(Ctrl-C stops)"), refresh=True)
                    return True

                yield update_live
            return

        def update() -> bool:
            if not changed():
                return False
            print(" | ".join(f"{LABELS[k]} {dict(last[0] or ()).get(k, 0)}" for k in LABELS),
                  file=out, flush=True)
            return True

        yield update


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

    Console().print(_table(settings, args.limit))
    return 0
