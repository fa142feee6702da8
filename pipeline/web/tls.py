"""Transport security of the workbench: uvicorn's TLS options and the refusal of plain HTTP
on a network address.

``server_options(settings, host)`` returns the keyword arguments for ``uvicorn.Config`` /
``uvicorn.run``: ``ssl_certfile``/``ssl_keyfile`` from ``settings.web_certfile`` /
``web_keyfile``, and the trusted-proxy options (``settings.web_forwarded_allow_ips``). It
raises ``ConfigError`` (one line at the CLI) when ``host`` is not a loopback address and
neither TLS nor ``settings.web_insecure_http`` (``--insecure-http``: a TLS reverse proxy in
front, see docs/operations.md) is set: passwords and patient data must not cross a network in
clear text. Under HTTPS the app marks cookies Secure and sends HSTS (``pipeline.web.app``).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings

__all__ = ["server_options", "is_loopback", "web_url"]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a network address


def server_options(settings: Settings, host: str) -> dict[str, Any]:
    """uvicorn options for serving on ``host``; ``ConfigError`` when that would be plain
    HTTP on a network address without ``web_insecure_http``."""
    cert, key = settings.web_certfile, settings.web_keyfile
    options: dict[str, Any] = {}
    if settings.web_forwarded_allow_ips:
        options.update(proxy_headers=True,
                       forwarded_allow_ips=settings.web_forwarded_allow_ips)
    else:
        options["proxy_headers"] = False
    if cert or key:
        if not (cert and key):
            raise ConfigError("A TLS certificate arrived without its key (or the key without "
                              "the certificate); expected both --certfile and --keyfile.")
        for label, path in (("certificate", cert), ("key", key)):
            if not path.expanduser().is_file():
                raise ConfigError(f"TLS {label} {path} does not exist; expected a PEM file.")
        options.update(ssl_certfile=str(cert.expanduser()), ssl_keyfile=str(key.expanduser()))
        return options
    if not is_loopback(host) and not settings.web_insecure_http:
        raise ConfigError(
            f"Refusing plain HTTP on {host}: passwords and patient data would cross the network "
            "in clear text; expected --certfile and --keyfile, or --insecure-http behind a TLS "
            "reverse proxy."
        )
    return options


def web_url(settings: Settings, host: str, port: int) -> str:
    """The workbench's address as users type it."""
    scheme = "https" if settings.web_certfile else "http"
    return f"{scheme}://{host}:{port}/"
