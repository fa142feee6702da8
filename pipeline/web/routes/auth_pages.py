"""Log in, log out and the first-run administrator set-up."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from starlette.routing import Match

from pipeline.core import audit
from pipeline.core.db.review import User
from pipeline.core.errors import PipelineError
from pipeline.core.store import open_store
from pipeline.review.users import (
    authenticate,
    clear_failures,
    create_user,
    note_failure,
    throttle_wait,
    user_count,
)
from pipeline.web.auth import (
    client_address,
    csrf_protect,
    end_session,
    get_settings_dep,
    is_local_request,
    optional_user,
    start_session,
)
from pipeline.web.templating import render

__all__ = ["router"]

router = APIRouter()

_HOME = "/worklist"


def _get_route_exists(request: Request, path: str) -> bool:
    scope = {"type": "http", "path": path, "method": "GET", "root_path": ""}
    return any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes)


def _safe_next(request: Request, value: str | None) -> str:
    """Where to go after log-in: ``value`` when it is a path on this site that a browser can
    open (a GET page); a form's POST target ("/drafts/x/save", where an idle log-out
    caught a save) becomes the nearest page above it ("/drafts/x"), since a redirect is a GET
    (it used to answer 405). Anything else (another site, "//host", "/\\host", control
    characters, which browsers strip into "//host") goes to the worklist: no open redirect."""
    if (not value or not value.startswith("/") or value.startswith("//") or "\\" in value
            or any(ord(ch) < 33 or ord(ch) == 127 for ch in value) or len(value) > 2000):
        return _HOME
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return _HOME
    path = parts.path
    if path in ("/login", "/logout"):
        return _HOME
    if _get_route_exists(request, path):
        return path + (f"?{parts.query}" if parts.query else "")
    while "/" in path.rstrip("/"):
        path = path.rstrip("/").rsplit("/", 1)[0]
        if path and _get_route_exists(request, path):
            return path
    return _HOME


@router.get("/")
def index(request: Request) -> Response:
    """Home: the worklist, or the set-up page on a fresh install."""
    with open_store(get_settings_dep(request)).session() as s:
        if user_count(s) == 0:
            return RedirectResponse("/setup", status_code=303)
    return RedirectResponse("/worklist", status_code=303)


@router.get("/login")
def login_page(request: Request, next: str | None = None, idle: int = 0,
               expired: int = 0) -> Response:
    """The log-in form."""
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        if user_count(s) == 0:
            return RedirectResponse("/setup", status_code=303)
    message = "You were logged out after a period of inactivity." if idle else ""
    if expired:
        message = (f"Your session reached its maximum length ({settings.session_max_hours:g} "
                   "hours); log in again.")
    return render(request, "login.html",
                  {"next": _safe_next(request, next), "error": "", "message": message,
                   "title": "Log in"})


@router.post("/login", dependencies=[Depends(csrf_protect)])
def login(
    request: Request,
    username: str = Form(...),
    password: str = Form(...),
    next: str = Form("/worklist"),
) -> Response:
    """Check the password (throttled per account and per client address, across restarts);
    on success start a session and go to ``next``. The audit event carries the address."""
    settings = get_settings_dep(request)
    username = username.strip()
    client = client_address(request)
    actor = username[:100] or "?"
    with open_store(settings).session() as s:
        wait = throttle_wait(s, settings, "login", username, client)
        if wait > 0:
            audit.record(s, actor=actor, action="login", object_type="session",
                         outcome="refused",
                         detail={"reason": "throttled", "client": client,
                                 "wait_s": math.ceil(wait)})
            user = None
            error = (f"Too many failed attempts. Wait {math.ceil(wait)} seconds and "
                     "try again.")
        else:
            user = authenticate(s, username, password)
            error = "" if user else "Wrong user name or password."
            if user:
                row = s.get(User, user.id)
                if row is not None:
                    row.last_login_at = datetime.now(UTC)
                clear_failures(s, settings, "login", username)
            else:
                note_failure(s, "login", username, client)
            audit.record(s, actor=actor, action="login", object_type="session",
                         outcome="ok" if user else "failed", detail={"client": client})
    if user is None:
        return render(request, "login.html",
                      {"next": _safe_next(request, next), "error": error, "message": "",
                       "title": "Log in"}, status_code=429 if wait > 0 else 401)
    response = RedirectResponse(_safe_next(request, next), status_code=303)
    start_session(request, response, user)
    return response


@router.post("/logout", dependencies=[Depends(csrf_protect)])
def logout(request: Request) -> Response:
    """End the session."""
    user = optional_user(request)
    response = RedirectResponse("/login", status_code=303)
    end_session(request, response)
    if user is not None:
        with open_store(get_settings_dep(request)).session() as s:
            audit.record(s, actor=user.username, action="logout", object_type="session")
    return response


@router.get("/setup")
def setup_page(request: Request) -> Response:
    """First-run: create the first administrator (only while no user exists, only locally)."""
    _check_setup_allowed(request)
    return render(request, "setup.html", {"error": "", "title": "First-run set-up"})


def _check_setup_allowed(request: Request) -> None:
    with open_store(get_settings_dep(request)).session() as s:
        if user_count(s) > 0:
            raise HTTPException(status_code=404, detail="Set-up is already done; log in instead.")
    if not is_local_request(request):
        raise HTTPException(status_code=403,
                            detail="The first-run set-up is only open from this machine.")


@router.post("/setup", dependencies=[Depends(csrf_protect)])
def setup(
    request: Request,
    username: str = Form(...),
    password: str = Form(...),
    password2: str = Form(...),
) -> Response:
    """Create the first administrator and log them in."""
    _check_setup_allowed(request)
    if password != password2:
        return render(request, "setup.html", {"error": "The passwords differ.",
                                              "title": "First-run set-up"}, status_code=400)
    try:
        with open_store(get_settings_dep(request)).session() as s:
            if user_count(s) > 0:
                raise HTTPException(status_code=404, detail="Set-up is already done.")
            user = create_user(s, username.strip(), password, "admin")
            audit.record(s, actor=user.username, action="user_add", object_type="user",
                         object_id=str(user.id), detail={"role": "admin", "via": "setup"})
    except PipelineError as exc:
        return render(request, "setup.html", {"error": str(exc), "title": "First-run set-up"},
                      status_code=400)
    response = RedirectResponse("/admin/users", status_code=303)
    start_session(request, response, user)
    return response
