"""``dictation models``: list the speech models, where each comes from and whether it is here,
and each physician's adapted model versions with their figures.

``dictation models --verify`` hashes every file of every installed registry model again and
compares it with the SHA-256 in ``models/registry.toml`` (joining a split model if needed).
``dictation models rollback --physician ID`` takes the physician's current adapted version out
of use and returns to the previous one (past the first: the stock model); the worker picks it
up from the next dictation on (``pipeline.adaptation.versions``).
"""

from __future__ import annotations

import argparse
import getpass
import json
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pipeline.commands.transcribe import settings_from_args
from pipeline.core.errors import ModelIntegrityError, ModelNotFoundError, PipelineError
from pipeline.core.settings import Settings
from pipeline.speech.models import (
    choose_device,
    describe_models,
    load_registry,
    registry_path,
    resolve,
)

__all__ = ["register", "run", "run_rollback"]

#: ``--physician`` value naming the practice-wide model (``pipeline.adaptation.versions``,
#: not imported here: the database layer would load with every ``dictation`` command)
PRACTICE = "_practice"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``models`` sub-command (and its ``rollback`` action)."""
    p = subparsers.add_parser(
        "models", help="list the speech models and physicians' adapted versions; roll back")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--data-dir", type=Path, help="data directory")
    p.add_argument("--physician", help="list only this physician's adapted versions")
    p.add_argument("--verify", action="store_true",
                   help="hash every installed registry model's files again and compare them "
                        "with the SHA-256 sums in models/registry.toml")
    p.set_defaults(func=run)
    actions = p.add_subparsers(dest="models_action", metavar="ACTION")
    rb = actions.add_parser(
        "rollback", help="return a physician to the previous model version (past the first "
                         "adapted one: the stock model)")
    rb.add_argument("--physician", required=True,
                    help=f"physician id ({PRACTICE} for the practice-wide model)")
    rb.add_argument("--reason", default=None, help="why (stored with the version)")
    # SUPPRESS: not given here, the value given before ``rollback`` stands
    rb.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help="data directory")
    rb.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                    help="print JSON")
    rb.set_defaults(func=run_rollback)


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.0f} MB"


def run(args: argparse.Namespace) -> int:
    """Print the models table and the adapted versions table (or JSON)."""
    settings = settings_from_args(args)
    if args.verify:
        return _verify(settings)
    rows = describe_models(settings)
    device, compute = choose_device(settings)
    adapted, problem = _adapted(settings, args.physician)
    if args.json:
        out: dict[str, Any] = {"device": device, "compute_type": compute, "models": rows,
                               "adapted": adapted}
        if problem:
            out["adapted_error"] = problem
        print(json.dumps(out, indent=2))
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
    console = Console()
    console.print(table)
    if problem:
        console.print(f"adapted versions not listed: {escape(problem)}")
    elif adapted:
        console.print(_adapted_table(adapted))
        for line in _reasons(adapted):
            console.print(escape(line))
    else:
        console.print("No adapted model versions: every physician uses the stock model.")
    return 0


def _adapted(settings: Settings, physician: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """The adapted versions as dicts, or an error message (the shipped models still list)."""
    from sqlalchemy.exc import SQLAlchemyError

    from pipeline.adaptation import versions
    from pipeline.core.store import open_store, sqlite_path

    db_file = sqlite_path(settings.db_url)
    if db_file is not None and not db_file.exists():
        return [], None  # no database yet: nothing adapted (and none created only to look)
    wanted = None if physician in (None, PRACTICE) else physician
    try:
        with open_store(settings).session() as s:
            rows = versions.list_versions(s, wanted)
            found = [versions.describe(r) for r in rows
                     if physician != PRACTICE or r.physician_id is None]
    except (PipelineError, SQLAlchemyError) as exc:
        return [], f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return found, None


def _pct(value: Any) -> str:
    return f"{100 * float(value):.1f}" if isinstance(value, int | float) else "-"


def _figure(metrics: dict[str, Any], key: str) -> str:
    """``compared→candidate`` in % for one figure of ``metrics`` (``versions.METRICS_KEYS``):
    the model it was compared with, then the candidate."""
    cand = (metrics.get("candidate") or {}).get(key)
    base = (metrics.get("baseline") or {}).get(key)
    if cand is None:
        return "-"
    return (f"{_pct(base)}→" if base is not None else "") + _pct(cand)


def _count(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    return str(value) if isinstance(value, int) else "-"


def _adapted_table(adapted: list[dict[str, Any]]) -> Table:
    table = Table(
        title="Adapted models", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0),
        caption="figures in %, the model it was compared with → the candidate, on held-back "
                "signed dictations (general: general-speech samples); trained: "
                "dictations/windows; held: dictations held back")
    for col in ("model", "status", "WER", "terms", "general", "trained", "held", "created"):
        table.add_column(col, no_wrap=True)
    for v in adapted:
        m = v["metrics"]
        status = "current" if v["current"] else v["status"]
        trained = f"{_count(m, 'dictations')}/{_count(m, 'pairs')}"
        table.add_row(f"{v['physician_id'] or PRACTICE}/v{v['version']}", status,
                      _figure(m, "wer"), _figure(m, "term_error_rate"),
                      _figure(m, "general_wer"), trained, str(v["held_back"]),
                      (v["created_at"] or "-")[:10])
    return table


def _reasons(adapted: list[dict[str, Any]]) -> list[str]:
    """One line per refused or rolled-back version: why (the gate's or the user's words)."""
    return [f"{v['physician_id'] or PRACTICE}/v{v['version']} {v['status']}: {v['reason']}"
            for v in adapted if v["reason"] and v["status"] in ("refused", "rolled_back")]


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in some containers
        return "cli"


def run_rollback(args: argparse.Namespace) -> int:
    """Roll the physician back one version; print what decodes their dictations now."""
    from pipeline.adaptation import versions
    from pipeline.core.store import open_store

    settings = settings_from_args(args)
    physician = None if args.physician == PRACTICE else args.physician
    with open_store(settings).session() as s:
        gone = versions.rollback(s, physician, _actor(), reason=args.reason)
        now = versions.current_model(s, physician)
        gone_label = versions.label(gone.physician_id, gone.version)
        now_label = now.label if now is not None else f"stock model {settings.model}"
        gone_id = gone.id
    if getattr(args, "json", False):
        print(json.dumps({"physician_id": physician, "rolled_back": gone_label,
                          "rolled_back_id": gone_id, "now": now_label,
                          "now_id": now.version_id if now is not None else None}))
    else:
        print(f"{gone_label} rolled back; {args.physician}'s dictations now use {now_label} "
              "(from the next dictation on)")
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
