"""``dictation retention [--dry-run | --apply]``: delete what the retention rules allow
(``pipeline.service.retention``). The dry run (the default) lists ids, relative paths and
ages only; ``--apply`` deletes, auditing every item."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.commands.transcribe import settings_from_args

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from pipeline.service import retention

    settings = settings_from_args(args)
    rules = {
        "audio_days_after_signing": settings.retention_audio_days_after_signing,
        "quarantine_days": settings.retention_quarantine_days,
        "exports_days": settings.retention_exports_days,
    }
    items = retention.plan(settings)
    if args.apply:
        items = retention.apply(settings, items, actor=args.actor)
    verb = "deleted" if args.apply else "eligible"
    if args.json:
        for item in items:
            print(json.dumps({"kind": item.kind, "id": item.id, "path": item.shown,
                              "age_days": item.age_days, "draft_id": item.draft_id,
                              "action": verb}))
        return 0
    print("rules: " + ", ".join(f"{k}={'keep' if v is None else v}" for k, v in rules.items()))
    for item in items:
        print(f"{verb}: {item.kind:<10} {item.id:<32} {item.shown}  ({item.age_days:g} days)")
    print(f"{len(items)} items {verb}" + ("" if args.apply else " (dry run: nothing deleted)"))
    if args.apply:
        print("each deletion is in the audit log (action retention_delete)")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``retention`` command."""
    p = subparsers.add_parser(
        "retention", help="list (default) or delete what the retention rules allow",
        description="Rules: DICTATION_RETENTION_AUDIO_DAYS_AFTER_SIGNING, "
        "DICTATION_RETENTION_QUARANTINE_DAYS, DICTATION_RETENTION_EXPORTS_DAYS (unset: keep). "
        "Signed documents are kept; nothing unsigned is deleted; every deletion is audited.",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="list only (the default)")
    mode.add_argument("--apply", action="store_true", help="delete, auditing each item")
    p.add_argument("--json", action="store_true", help="one JSON object per item")
    p.add_argument("--actor", default="system:retention", help="audit actor (default %(default)s)")
    p.add_argument("--data-dir", type=Path, help="data directory (default DICTATION_DATA_DIR)")
    p.set_defaults(func=_run)
