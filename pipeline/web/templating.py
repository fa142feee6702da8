"""Jinja2 templates for the workbench (autoescape on) and ``render(request, name, context)``.

Other areas' routers render their own templates (under ``pipeline/web/templates/<area>/``)
with the same base layout, and may add a navigation link with ``register_nav``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from pipeline.core.times import as_utc
from pipeline.web.auth import csrf_token

__all__ = ["TEMPLATES_DIR", "env", "render", "register_nav", "NavItem", "STATUS_LABELS"]

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"

#: How the worklist names the draft statuses stored in ``drafts.status``.
STATUS_LABELS = {
    "queued_for_review": "new",
    "in_review": "in review",
    "awaiting_signature": "awaiting signature",
    "signed": "signed",
    "delivered": "delivered",
}


@dataclass(frozen=True)
class NavItem:
    """A link in the top navigation, shown to the listed roles."""

    label: str
    href: str
    roles: tuple[str, ...] = ("secretary", "physician", "admin")


_NAV: list[NavItem] = [
    NavItem("Worklist", "/worklist"),
    NavItem("Accuracy", "/accuracy"),
    NavItem("Users", "/admin/users", ("admin",)),
    NavItem("Audit log", "/admin/audit", ("admin",)),
]


def register_nav(label: str, href: str, roles: tuple[str, ...] | None = None) -> None:
    """Add a navigation link (idempotent per href)."""
    if any(item.href == href for item in _NAV):
        return
    _NAV.append(NavItem(label, href, roles or ("secretary", "physician", "admin")))


def _age(value: datetime | None) -> str:
    if value is None:
        return ""
    seconds = max(0, int((datetime.now(UTC) - as_utc(value)).total_seconds()))
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def _dt(value: datetime | None) -> str:
    if value is None:
        return ""
    return as_utc(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    return f"{s // 60}:{s % 60:02d}"


env = Environment(
    loader=FileSystemLoader(str(TEMPLATES_DIR)),
    autoescape=select_autoescape(["html", "htm", "xml", "svg"], default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters["age"] = _age
env.filters["dt"] = _dt
env.filters["clock"] = _clock
env.globals["STATUS_LABELS"] = STATUS_LABELS


def render(
    request: Request,
    name: str,
    context: dict[str, Any] | None = None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """Render template ``name`` with the request, user, CSRF token and navigation."""
    user = getattr(request.state, "user", None)
    ctx: dict[str, Any] = {
        "request": request,
        "user": user,
        "csrf_token": csrf_token(request),
        "nav": [n for n in _NAV if user is not None and user.role in n.roles],
        "path": request.url.path,
        "title": "",
    }
    ctx.update(context or {})
    html = env.get_template(name).render(ctx)
    return HTMLResponse(html, status_code=status_code, headers=headers)
