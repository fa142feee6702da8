"""Log-in sessions, roles and CSRF protection for the workbench.

Sessions are server-side (table ``web_sessions``): the cookie holds a random token signed
with the secret key (HMAC-SHA256); the table holds the token's SHA-256 and when it was last
used, so an idle session ends after ``settings.session_idle_minutes``, any session ends
``settings.session_max_hours`` after log-in however active, and a log-out ends it everywhere
(a password change or a deactivation deletes all of that user's rows:
``pipeline.review.users.end_user_sessions``). Cookies are HttpOnly and SameSite=Lax, and
Secure when the request came over https.

CSRF: every form carries ``csrf_token`` (htmx sends it as the ``X-CSRF-Token`` header); the
token is an HMAC of the session token (or, before log-in, of an anonymous cookie), so a page
on another site can neither read nor forge it.

Other areas' routers use: ``current_user`` (dependency returning ``UserInfo`` with ``.id``,
``.username``, ``.role``, ``.physician_ids``), ``require_roles(*roles)``, ``csrf_protect``
and ``csrf_token(request)``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import Depends, HTTPException, Request, Response
from sqlalchemy import delete

from pipeline.core import audit
from pipeline.core.db.review import WebSession
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.core.times import as_utc
from pipeline.review.users import UserInfo, load_user

__all__ = [
    "SESSION_COOKIE",
    "ANON_COOKIE",
    "LoginRequired",
    "get_settings_dep",
    "secret_key",
    "current_user",
    "optional_user",
    "require_roles",
    "csrf_token",
    "csrf_protect",
    "start_session",
    "end_session",
    "is_local_request",
    "client_address",
]

log = logging.getLogger(__name__)

SESSION_COOKIE = "dictation_session"
ANON_COOKIE = "dictation_anon"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
# Write last_seen at most this often (a write per request would serialise SQLite readers).
_TOUCH_EVERY = timedelta(seconds=20)


class LoginRequired(Exception):
    """Raised by ``current_user`` when there is no valid session; the app redirects."""

    def __init__(self, reason: str = "login") -> None:
        super().__init__(reason)
        self.reason = reason


def get_settings_dep(request: Request) -> Settings:
    """The app's settings (dependency)."""
    settings: Settings = request.app.state.settings
    return settings


@lru_cache(maxsize=8)
def _key_from_file(path: Path) -> bytes:
    if path.exists():
        return path.read_text().strip().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    log.info("generated web secret key under the data directory")
    return value.encode()


def secret_key(settings: Settings) -> bytes:
    """``settings.secret_key``, or one generated once and kept in ``<data_dir>/secret_key``."""
    if settings.secret_key:
        return settings.secret_key.encode()
    try:
        return _key_from_file(settings.data_path / "secret_key")
    except FileExistsError:  # another process created it between exists() and open()
        _key_from_file.cache_clear()
        return _key_from_file(settings.data_path / "secret_key")


def _sign(settings: Settings, purpose: str, value: str) -> str:
    mac = hmac.new(secret_key(settings), f"{purpose}|{value}".encode(), hashlib.sha256)
    return mac.hexdigest()


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _session_token(request: Request) -> str | None:
    """The session token from the cookie when its signature is valid."""
    raw = request.cookies.get(SESSION_COOKIE)
    if not raw or "." not in raw:
        return None
    token, _, sig = raw.rpartition(".")
    settings = get_settings_dep(request)
    if not hmac.compare_digest(sig, _sign(settings, "session", token)):
        return None
    return token


def is_local_request(request: Request) -> bool:
    """True when the client is on this machine (loopback)."""
    host = request.client.host if request.client else ""
    return host in {"127.0.0.1", "::1", "localhost"} or host.startswith("127.")


def client_address(request: Request) -> str | None:
    """The client's address (the peer, or the forwarded one from a trusted proxy)."""
    return request.client.host if request.client else None


def _cookie_kwargs(request: Request) -> dict[str, Any]:
    return {
        "httponly": True,
        "samesite": "lax",
        "secure": request.url.scheme == "https",
        "path": "/",
    }


def start_session(request: Request, response: Response, user: UserInfo) -> None:
    """Create a server-side session for ``user`` and set the signed cookie on ``response``."""
    settings = get_settings_dep(request)
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    stale = now - timedelta(minutes=settings.session_idle_minutes)
    too_old = now - timedelta(hours=settings.session_max_hours)
    with open_store(settings).session() as s:
        s.execute(delete(WebSession).where(WebSession.last_seen_at < stale))  # housekeeping
        s.execute(delete(WebSession).where(WebSession.created_at < too_old))
        s.add(
            WebSession(
                id=_token_hash(token),
                user_id=user.id,
                created_at=now,
                last_seen_at=now,
                client=(request.client.host if request.client else None),
            )
        )
    response.set_cookie(
        SESSION_COOKIE, f"{token}.{_sign(settings, 'session', token)}", **_cookie_kwargs(request)
    )
    request.state.session_token = token


def end_session(request: Request, response: Response) -> None:
    """Delete the current session (if any) and clear the cookie."""
    token = _session_token(request)
    if token:
        with open_store(get_settings_dep(request)).session() as s:
            s.execute(delete(WebSession).where(WebSession.id == _token_hash(token)))
    response.delete_cookie(SESSION_COOKIE, path="/")


def optional_user(request: Request) -> UserInfo | None:
    """The logged-in user, or None (ends idle sessions)."""
    if hasattr(request.state, "user"):
        return request.state.user  # type: ignore[no-any-return]
    request.state.user = None
    token = _session_token(request)
    if token is None:
        return None
    settings = get_settings_dep(request)
    now = datetime.now(UTC)
    with open_store(settings).session() as s:
        row = s.get(WebSession, _token_hash(token))
        if row is None:
            return None
        if now - as_utc(row.last_seen_at) > timedelta(minutes=settings.session_idle_minutes):
            user = load_user(s, row.user_id)
            s.delete(row)
            audit.record(
                s,
                actor=user.username if user else f"user:{row.user_id}",
                action="logout",
                object_type="session",
                outcome="ok",
                detail={"reason": "idle", "idle_minutes": settings.session_idle_minutes},
            )
            request.state.idle_logout = True
            return None
        if now - as_utc(row.created_at) > timedelta(hours=settings.session_max_hours):
            user = load_user(s, row.user_id)
            s.delete(row)
            audit.record(
                s,
                actor=user.username if user else f"user:{row.user_id}",
                action="logout",
                object_type="session",
                outcome="ok",
                detail={"reason": "max_age", "max_hours": settings.session_max_hours},
            )
            request.state.expired_logout = True
            return None
        user = load_user(s, row.user_id)
        if user is None:
            return None
        if now - as_utc(row.last_seen_at) > _TOUCH_EVERY:
            row.last_seen_at = now
    request.state.user = user
    request.state.session_token = token
    return user


def current_user(request: Request) -> UserInfo:
    """Dependency: the logged-in user; without one the app redirects to the log-in page."""
    user = optional_user(request)
    if user is None:
        if getattr(request.state, "idle_logout", False):
            raise LoginRequired("idle")
        raise LoginRequired("expired" if getattr(request.state, "expired_logout", False)
                            else "login")
    return user


def require_roles(*roles: str) -> Callable[..., UserInfo]:
    """Dependency factory: the current user, or 403 when their role is not in ``roles``."""

    def dependency(user: UserInfo = Depends(current_user)) -> UserInfo:
        if user.role not in roles:
            raise HTTPException(status_code=403, detail="Your role may not open this page.")
        return user

    return dependency


def _anon_id(request: Request) -> str:
    value = getattr(request.state, "anon_id", None) or request.cookies.get(ANON_COOKIE)
    if not value:
        value = secrets.token_urlsafe(24)
        request.state.anon_id = value
        request.state.set_anon_cookie = True
    return value


def csrf_token(request: Request) -> str:
    """The CSRF token for forms on this page (bound to the session, or the anonymous id)."""
    settings = get_settings_dep(request)
    token = getattr(request.state, "session_token", None) or _session_token(request)
    if token:
        return _sign(settings, "csrf-session", token)
    return _sign(settings, "csrf-anon", _anon_id(request))


async def csrf_protect(request: Request) -> None:
    """Dependency for state-changing requests: 403 unless a valid CSRF token came along."""
    if request.method in {"GET", "HEAD", "OPTIONS"}:
        return
    sent = request.headers.get(CSRF_HEADER)
    if not sent:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
    settings = get_settings_dep(request)
    expected: list[str] = []
    token = _session_token(request)
    if token:
        expected.append(_sign(settings, "csrf-session", token))
    anon = request.cookies.get(ANON_COOKIE)
    if anon:
        expected.append(_sign(settings, "csrf-anon", anon))
    if not sent or not any(hmac.compare_digest(sent, e) for e in expected):
        raise HTTPException(status_code=403, detail="The form's CSRF token is missing or wrong.")


async def anon_cookie_middleware(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Set the anonymous cookie the log-in form's CSRF token is bound to, when it is new."""
    response = await call_next(request)
    if getattr(request.state, "set_anon_cookie", False):
        response.set_cookie(ANON_COOKIE, request.state.anon_id, **_cookie_kwargs(request))
    return response
