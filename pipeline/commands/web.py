"""``dictation web``: serve the review workbench alone (``dictation run`` serves it too)."""

from __future__ import annotations

import argparse

from pipeline.core.settings import get_settings

__all__ = ["register"]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pipeline.core.store import open_store
    from pipeline.review.users import user_count
    from pipeline.web.app import create_app

    settings = get_settings()
    host = args.host or settings.web_host
    port = args.port or settings.web_port
    app = create_app(settings)
    with open_store(settings).session() as s:
        first_run = user_count(s) == 0
    print(f"workbench: http://{host}:{port}/")
    if first_run:
        print(f"no user yet: create the first administrator at http://{host}:{port}/setup "
              "(from this machine) or with `dictation user add NAME --role admin`")
    # No access log: URLs can carry search terms (patient names).
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False,
                proxy_headers=False)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``web`` command."""
    parser = subparsers.add_parser("web", help="serve the review workbench")
    parser.add_argument("--host", help="default: settings.web_host (127.0.0.1)")
    parser.add_argument("--port", type=int, help="default: settings.web_port")
    parser.set_defaults(func=_serve)
