"""The inbox service's status: counts and recent dictations (ids only), as a table or the
live view ``dictation run`` shows. ``dictation status`` prints the same table."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.core.settings import Settings

__all__ = ["StatusView", "LABELS", "status_table"]

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


def status_table(settings: Settings, limit: int, extra: str = "") -> Any:
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

            with Live(status_table(self.settings, 8), console=Console(file=out),
                      auto_refresh=False, transient=False) as live:
                changed()

                def update_live() -> bool:
                    if not changed():
                        return False
                    live.update(status_table(self.settings, 8, "(Ctrl-C stops)"), refresh=True)
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


