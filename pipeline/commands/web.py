"""``dictation web``: serve the review workbench alone (``dictation run`` serves it too), over
HTTPS with ``--certfile/--keyfile``; plain HTTP only on loopback unless ``--insecure-http``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pipeline.core.settings import Settings, get_settings
from pipeline.web.tls import server_options, web_url

__all__ = ["register", "with_tls_args", "add_tls_arguments"]


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from pipeline.core.store import open_store
    from pipeline.review.users import user_count
    from pipeline.web.app import create_app

    settings = with_tls_args(get_settings(), args)
    host = args.host or settings.web_host
    port = args.port or settings.web_port
    options = server_options(settings, host)  # refuses plain HTTP on a network address
    app = create_app(settings)
    with open_store(settings).session() as s:
        first_run = user_count(s) == 0
    url = web_url(settings, host, port)
    print(f"workbench: {url}")
    if first_run:
        print(f"no user yet: create the first administrator at {url}setup "
              "(from this machine) or with `dictation user add NAME --role admin`")
    # No access log: URLs can carry search terms (patient names).
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, **options)
    return 0


def with_tls_args(settings: Settings, args: argparse.Namespace) -> Settings:
    """``settings`` with ``--certfile``, ``--keyfile`` and ``--insecure-http`` applied."""
    update: dict[str, Any] = {}
    if getattr(args, "certfile", None):
        update["web_certfile"] = args.certfile
    if getattr(args, "keyfile", None):
        update["web_keyfile"] = args.keyfile
    if getattr(args, "insecure_http", False):
        update["web_insecure_http"] = True
    return settings.model_copy(update=update) if update else settings


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """``--certfile``, ``--keyfile`` and ``--insecure-http`` (for ``web`` and ``run``)."""
    parser.add_argument("--certfile", type=Path,
                        help="TLS certificate (PEM; default: settings.web_certfile)")
    parser.add_argument("--keyfile", type=Path,
                        help="TLS private key (PEM; default: settings.web_keyfile)")
    parser.add_argument("--insecure-http", action="store_true",
                        help="allow plain HTTP on a non-loopback address (only behind a TLS "
                        "reverse proxy)")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``web`` command."""
    parser = subparsers.add_parser("web", help="serve the review workbench")
    parser.add_argument("--host", help="default: settings.web_host (127.0.0.1)")
    parser.add_argument("--port", type=int, help="default: settings.web_port")
    add_tls_arguments(parser)
    parser.set_defaults(func=_serve)
