"""``dictation run``: the main command. Starts a local Prefect server (SQLite under the data
directory, telemetry off; or uses ``PREFECT_API_URL``), a warm worker, the inbox watcher and
the review workbench, and shows the status live. Ctrl-C, SIGINT (even when started in the
background with SIGINT ignored), SIGTERM or SIGHUP stops everything."""

from __future__ import annotations

import argparse
import contextlib
import signal
from pathlib import Path
from typing import Any

from pipeline.commands.web import add_tls_arguments, with_tls_args
from pipeline.web.tls import server_options

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``run`` sub-command."""
    p = subparsers.add_parser(
        "run", help="start the inbox service (Prefect server, worker, watcher, workbench)"
    )
    p.add_argument("--data-dir", type=Path, help="data directory (default ./var)")
    p.add_argument("--model", help="speech model (tiny.en, base, or a path)")
    p.add_argument("--demo", action="store_true",
                   help="drop one sample dictation into the first physician's inbox")
    p.add_argument("--once", "--exit-when-idle", dest="exit_when_idle", action="store_true",
                   help="process what arrives and exit when the inbox is empty and all done")
    p.add_argument("--idle-seconds", type=float, default=3.0,
                   help="with --once: how long idle before exiting (default 3)")
    p.add_argument("--no-web", action="store_true", help="do not start the review workbench")
    p.add_argument("--no-live", action="store_true", help="plain status lines, no live table")
    add_tls_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Start the service and block until stopped."""
    from pipeline.commands.transcribe import settings_from_args
    from pipeline.service.supervisor import Service, ServiceOptions

    settings = with_tls_args(settings_from_args(args), args)
    if not args.no_web:
        server_options(settings, settings.web_host)  # refuses plain HTTP on a network address
    service = Service(settings, ServiceOptions(
        web=not args.no_web, demo=args.demo, exit_when_idle=args.exit_when_idle,
        idle_seconds=args.idle_seconds, live=not args.no_live,
    ))

    started = False
    interrupted: list[int] = []

    def _stop(signum: int, _frame: Any) -> None:
        # Before the service is up, or a second Ctrl-C while stopping: interrupt at once
        # (the shutdown below still runs). Otherwise stop the way SIGTERM does.
        again = bool(interrupted)
        interrupted.append(signum)
        if signum == signal.SIGINT and (not started or again):
            raise KeyboardInterrupt
        service.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    # Explicitly, not through Python's default KeyboardInterrupt: a shell starts background
    # jobs (`dictation run &` in a script) with SIGINT ignored, and Python then leaves it
    # ignored, so `kill -INT` did nothing (issue #18, 10).
    signal.signal(signal.SIGINT, _stop)
    try:
        service.start()
        started = True
        _say("Service running; Ctrl-C stops it.")
        code = service.serve_forever()
        if signal.SIGINT in interrupted:
            code = 130
    except KeyboardInterrupt:
        code = 130
    finally:
        _say("Stopping ...")
        try:
            service.shutdown()
        except KeyboardInterrupt:  # a second Ctrl-C: finish stopping anyway
            service.shutdown()
        _say("Stopped.")
    return code


def _say(text: str) -> None:
    """Print, but never let a closed terminal stop the shutdown."""
    with contextlib.suppress(OSError, ValueError):
        print(text, flush=True)
