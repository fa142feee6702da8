"""The workbench application: ``create_app(settings) -> FastAPI``.

Pages are rendered on the server (Jinja2, autoescape on) with a little progressive
JavaScript (vendored htmx and ``static/workbench.js``); nothing is loaded from a CDN.
Other areas plug in routers: ``pipeline.web.routes.schedule.router`` is included when
that module exists.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import time
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.core import audit
from pipeline.core.errors import ConflictError, NotFoundError, PermissionDeniedError, PipelineError
from pipeline.core.settings import Settings, get_settings
from pipeline.core.store import open_store
from pipeline.web.auth import LoginRequired, anon_cookie_middleware
from pipeline.web.templating import TEMPLATES_DIR, render

__all__ = ["create_app", "STATIC_DIR"]

log = logging.getLogger(__name__)

STATIC_DIR = TEMPLATES_DIR.parent / "static"

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; media-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
    "form-action 'self'; base-uri 'none'; object-src 'none'"
)

_HSTS = "max-age=31536000"

_ROUTERS = (
    "pipeline.web.routes.auth_pages",
    "pipeline.web.routes.worklist",
    "pipeline.web.routes.editor",
    "pipeline.web.routes.sign",
    "pipeline.web.routes.accuracy",
    "pipeline.web.routes.admin",
    "pipeline.web.routes.schedule",
    "pipeline.web.routes.autotexts",
)


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "") or request.method == "POST"


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the workbench app on ``settings`` (default: the process settings)."""
    settings = settings or get_settings()
    open_store(settings)  # migrate before the first request
    audit.configure(settings)  # this app's audit key and checkpoint file
    app = FastAPI(title="Dictation workbench", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        response: Response = await anon_cookie_middleware(request, call_next)
        elapsed_ms = (time.perf_counter() - started) * 1000
        response.headers["Server-Timing"] = f"app;dur={elapsed_ms:.1f}"
        response.headers.setdefault("Content-Security-Policy", _CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        if request.url.scheme == "https":
            # browsers then refuse plain http to this host for a year (RFC 6797)
            response.headers.setdefault("Strict-Transport-Security", _HSTS)
        return response

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        url = f"/login?next={quote(target, safe='')}"
        if exc.reason == "idle":
            url += "&idle=1"
        elif exc.reason == "expired":
            url += "&expired=1"
        if request.headers.get("hx-request"):
            return Response(status_code=401, headers={"HX-Redirect": url})
        return RedirectResponse(url, status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if not _wants_html(request):
            return Response(str(exc.detail), status_code=exc.status_code, media_type="text/plain")
        return render(
            request,
            "error.html",
            {"status": exc.status_code, "message": exc.detail, "title": "Error"},
            status_code=exc.status_code,
        )

    @app.exception_handler(PipelineError)
    async def _pipeline_error(request: Request, exc: PipelineError) -> Response:
        status = 400
        if isinstance(exc, PermissionDeniedError):
            status = 403
        elif isinstance(exc, NotFoundError):
            status = 404
        elif isinstance(exc, ConflictError):
            status = 409
        return await _http_error(request, HTTPException(status_code=status, detail=str(exc)))

    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    for name in _ROUTERS:
        app.include_router(importlib.import_module(name).router)
    return app
