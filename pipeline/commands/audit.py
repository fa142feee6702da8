"""``dictation audit verify`` and ``dictation audit search``: the hash-chained audit log."""

from __future__ import annotations

import argparse
import json

from pipeline.core import audit
from pipeline.core.settings import get_settings
from pipeline.core.store import open_store

__all__ = ["register"]


def _verify(args: argparse.Namespace) -> int:
    settings = get_settings()
    with open_store(settings).session() as s:
        result = audit.verify(s, settings)
    if result.key_missing:
        print(f"audit log NOT VERIFIED: {result.reason}")
        return 3
    if result.ok:
        keyed = (f", keyed from event {result.keyed_from}" if result.keyed_from is not None
                 else "")
        print(f"audit log intact: {result.checked} events verified{keyed}, "
              f"{result.checkpoints} signed checkpoints checked")
        for warning in result.warnings:
            print(f"warning: {warning}")
        return 0
    where = f"event {result.first_bad_id}" if result.first_bad_id is not None else "the end"
    print(f"audit log TAMPERED at {where}: {result.reason} "
          f"({result.checked} events before it verified)")
    return 2


def _search(args: argparse.Namespace) -> int:
    from pipeline.web.routes.admin import search_audit

    with open_store(get_settings()).session() as s:
        rows, total = search_audit(s, user=args.user or "", action=args.action or "",
                                   patient=args.patient or "", draft=args.draft or "",
                                   since=args.since or "", until=args.until or "",
                                   per_page=args.limit)
        for e in rows:
            item = {"id": e.id, "ts": e.ts.isoformat(), "actor": e.actor, "action": e.action,
                    "object_type": e.object_type, "object_id": e.object_id,
                    "patient_ref": e.patient_ref, "outcome": e.outcome}
            if args.json:
                print(json.dumps(item))
            else:
                print(f"{e.id:>7} {e.ts:%Y-%m-%d %H:%M:%S} {e.actor:<16} {e.action:<18} "
                      f"{e.object_type}:{e.object_id or '-'} patient={e.patient_ref or '-'} "
                      f"{e.outcome}")
    if not args.json:
        print(f"{len(rows)} of {total} matching events shown")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``audit`` command."""
    parser = subparsers.add_parser("audit", help="verify or search the audit log")
    sub = parser.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = sub.add_parser("verify", help="check the keyed hash chain and its signed checkpoints; "
                       "exit 2 when tampered, 3 when the audit key is missing")
    v.set_defaults(func=_verify)
    q = sub.add_parser("search", help="search events (newest first)")
    q.add_argument("--user")
    q.add_argument("--action")
    q.add_argument("--patient", help="patient reference (MRN)")
    q.add_argument("--draft", help="draft id")
    q.add_argument("--since", help="YYYY-MM-DD")
    q.add_argument("--until", help="YYYY-MM-DD")
    q.add_argument("--limit", type=int, default=50)
    q.add_argument("--json", action="store_true", help="one JSON object per line")
    q.set_defaults(func=_search)
