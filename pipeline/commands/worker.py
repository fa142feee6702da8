"""``dictation worker``: a warm Prefect worker for the ``dictation`` work pool.

It keeps the speech model and vocabularies loaded and runs ``settings.workers`` dictations at a
time. ``dictation run`` starts one; on other machines sharing the data directory, start more
with ``PREFECT_API_URL`` pointing at the one Prefect server (see the README's scale-out part).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``worker`` sub-command."""
    p = subparsers.add_parser("worker", help="run a warm worker for the dictation work pool")
    p.add_argument("--data-dir", type=Path, help="data directory (shared by all workers)")
    p.add_argument("--limit", type=int, default=None,
                   help="dictations at once (default: settings.workers)")
    p.add_argument("--exit-when-idle", type=float, default=None, metavar="SECONDS",
                   help="exit after this many seconds with nothing to do")
    p.add_argument("--poll", type=float, default=2.0,
                   help="seconds between polls of the work pool (default 2; SIGUSR1 wakes it)")
    p.add_argument("--grace", type=float, default=5.0,
                   help="seconds in-flight runs get to finish on SIGTERM (default 5)")
    p.set_defaults(func=run)


def _warm_up(settings: Any) -> None:
    """Load the speech model and the medical-language pipeline before the first dictation."""
    import logging

    log = logging.getLogger(__name__)
    try:
        from pipeline.language import normalize
        from pipeline.speech import models as speech_models

        speech_models.load(settings)
        normalize.warm_up(settings)
    except Exception as exc:  # the first dictation then loads them (and reports any error)
        log.warning("worker warm-up skipped: %s", type(exc).__name__)


def run(args: argparse.Namespace) -> int:
    """Run the worker until SIGTERM/SIGINT (or idle with ``--exit-when-idle``)."""
    from pipeline.commands.transcribe import settings_from_args
    from pipeline.prefect_compat import check_all
    from pipeline.service import prefect_env

    # SIGINT explicitly, even when inherited as ignored (a background job of a shell script):
    # while warming up it interrupts; once the worker runs, it stops it like SIGTERM
    signal.signal(signal.SIGINT, signal.default_int_handler)
    check_all()  # a Prefect that our patches no longer match stops here, in one line
    settings = settings_from_args(args)
    api_url = prefect_env.api_url_for(settings)
    os.environ.update(prefect_env.prefect_env(settings, api_url))  # before importing prefect
    prefect_env.wait_healthy(api_url, timeout=60)

    from pipeline.core.store import open_store
    from pipeline.devtools import nightly  # noqa: F401  (registers the nightly flow)
    from pipeline.service import backup

    backup.register_flow()  # the nightly-backup deployment runs in the warm worker too
    from pipeline.service.flows import WarmWorker, use_settings

    use_settings(settings)
    open_store(settings)  # migrate once, before the first run
    _warm_up(settings)
    worker = WarmWorker(api_url, settings, limit=args.limit, poll_seconds=args.poll)

    def _stop(_signum: int, _frame: Any) -> None:
        worker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # `dictation run` sends SIGUSR1 right after it submits a run: no waiting for the next poll
    signal.signal(signal.SIGUSR1, lambda _s, _f: worker.wake())
    print(f"worker {worker.name} polling pool {prefect_env.POOL} at {api_url}", flush=True)
    worker.run(exit_when_idle=args.exit_when_idle)
    left = worker.shutdown(grace_seconds=args.grace)
    print(f"worker stopped ({worker.completed} runs; {len(left)} interrupted)", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # do not wait for interrupted flow threads: their runs are marked Crashed
