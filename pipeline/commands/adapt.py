"""``dictation adapt --physician ID [--now]``: adapt a physician's speech model to their voice.

Without ``--now`` the nightly deployment ``adapt-models`` does it: when the service's Prefect
server answers, a run for this physician is queued (it runs in the worker, after the
dictations waiting before it); otherwise the command says when the nightly run is.
With ``--now`` it runs here, with a progress bar: training pairs, encoding, training steps,
evaluation of the candidate and of the current model, and the gate's verdict
(``pipeline.adaptation.adapt``). ``--practice`` trains one model for the whole practice on
every physician's dictations instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from pipeline.commands.transcribe import settings_from_args
from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings

__all__ = ["register"]

_PHASES = {
    "pairs": "training pairs",
    "encode": "encoding windows",
    "train": "training steps",
    "validate": "validation",
    "evaluate candidate": "evaluating candidate",
    "evaluate current": "evaluating current model",
}


@contextmanager
def _bar(console: Console, enabled: bool) -> Iterator[Any]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )
    tasks: dict[str, Any] = {}

    def update(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = progress.add_task(_PHASES.get(phase, phase), total=max(total, 1))
        progress.update(tasks[phase], completed=done, total=max(total, 1))

    with progress:
        yield update


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _queue(settings: Settings, physician_id: str | None) -> str | None:
    """Queue an ``adapt-models`` run for ``physician_id`` on the running service; return the
    flow run id, or None when no Prefect server answers."""
    from pipeline.service import prefect_env

    api = prefect_env.api_url_for(settings)
    if not prefect_env.is_healthy(api, timeout=1.0):
        return None
    import os

    os.environ.update(prefect_env.prefect_env(settings, api))
    with prefect_env.client(api) as c:
        dep = c.read_deployment_by_name(prefect_env.ADAPT_DEPLOYMENT)
        params: dict[str, Any] = {"physician_ids": [physician_id] if physician_id else None,
                                  "force": bool(physician_id)}
        run = c.create_flow_run_from_deployment(
            dep.id, parameters=params, name=f"adapt-{physician_id or 'practice'}")
    return str(run.id)


def _run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    physician_id: str | None = None if args.practice else args.physician
    if not args.practice and not args.physician:
        print("error: give --physician ID, or --practice for one model for the whole practice",
              file=sys.stderr)
        return 2
    if physician_id is not None and physician_id not in settings.physicians:
        raise ConfigError(
            f"Physician {physician_id!r} is not configured; expected one of "
            f"{', '.join(settings.physicians)} (DICTATION_PHYSICIANS)."
        )
    if not args.now:
        from pipeline.service.prefect_env import ADAPT_CRON

        if physician_id is not None:
            run_id = _queue(settings, physician_id)
            if run_id is not None:
                print(f"queued: adapt-models run {run_id} for {physician_id} (the worker runs "
                      "it after the dictations waiting before it)")
                return 0
        if physician_id is None:
            print("A practice-wide model is adapted on demand only: run it with --now.")
            return 0
        print(f"No service answers, so nothing was queued. The nightly deployment "
              f"adapt-models runs at cron '{ADAPT_CRON}' ({settings.timezone}) for each "
              "physician with enough new signed dictations. Run it here and now with --now.")
        return 0

    from pipeline.adaptation import adapt

    options = adapt.AdaptOptions()
    train_changes: dict[str, Any] = {}
    if args.epochs is not None:
        train_changes["epochs"] = args.epochs
    if args.max_minutes is not None:
        train_changes["max_minutes"] = args.max_minutes
    if args.device is not None:
        train_changes["device"] = args.device
    if train_changes:
        options.train = replace(options.train, **train_changes)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    with _bar(err, err.is_terminal and not args.json) as update:
        report = adapt.adapt_physician(settings, physician_id, options, progress=update)
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
        return 0
    who = physician_id or "the practice"
    print(f"{who}: {report.status}"
          + (f" (version {report.version})" if report.version else ""))
    print(f"  {report.dictations} dictations, {report.pairs} windows "
          f"({report.train_audio_s / 60:.1f} min) trained on; {report.held_back} held back")
    if report.candidate and report.current:
        c, b = report.candidate, report.current
        print(f"  held-back WER            {_pct(b.wer)} -> {_pct(c.wer)}")
        print(f"  medical-term error rate  {_pct(b.term_error_rate)} -> "
              f"{_pct(c.term_error_rate)}")
        print(f"  general-speech WER       {_pct(b.general_wer)} -> {_pct(c.general_wer)}")
    if report.reason:
        print(f"  {report.reason}")
    print(f"  {report.seconds / 60:.1f} min")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``adapt`` command."""
    p = subparsers.add_parser(
        "adapt", help="adapt a physician's speech model to their voice (nightly or --now)",
        description="Fine-tune the speech model on a physician's signed dictations and "
        "promote the result only if it beats the current model on held-back dictations "
        "without losing general English (docs/adaptation.md).",
    )
    who = p.add_mutually_exclusive_group()
    who.add_argument("--physician", metavar="ID", help="the physician id")
    who.add_argument("--practice", action="store_true",
                     help="one model for the whole practice (every physician's dictations)")
    p.add_argument("--now", action="store_true",
                   help="run here and now (default: queue it for the nightly deployment)")
    p.add_argument("--epochs", type=int, help="training epochs (default: TrainOptions)")
    p.add_argument("--max-minutes", type=float, help="stop training after this long")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="training device")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--data-dir", type=Path, help="data directory (default DICTATION_DATA_DIR)")
    p.set_defaults(func=_run)
