"""Administrator pages: search the audit log; list, add, deactivate and reactivate users and
reset their passwords (both end the user's sessions); approve outside recipients."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select

from pipeline.core import audit
from pipeline.core.db.core import AuditEvent, Physician
from pipeline.core.db.review import User, UserPhysician
from pipeline.core.db.schedule import Recipient
from pipeline.core.errors import PipelineError
from pipeline.core.store import open_store
from pipeline.review.users import ROLES, UserInfo, create_user, set_active, set_password
from pipeline.secretary import route
from pipeline.web.auth import csrf_protect, get_settings_dep, require_roles
from pipeline.web.templating import render

__all__ = ["router", "search_audit"]

router = APIRouter()
_admin = require_roles("admin")
PER_PAGE = 100


def _day(value: str) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        return None


def search_audit(session, *, user: str = "", action: str = "", patient: str = "",
                 draft: str = "", since: str = "", until: str = "", page: int = 1,
                 per_page: int = PER_PAGE) -> tuple[list[AuditEvent], int]:  # type: ignore[no-untyped-def]
    """Audit events matching the filters (newest first) and their total count."""
    conds = []
    if user:
        conds.append(AuditEvent.actor == user)
    if action:
        conds.append(AuditEvent.action == action)
    if patient:
        conds.append(AuditEvent.patient_ref == patient)
    if draft:
        conds.append(AuditEvent.object_id == draft)
    start, end = _day(since), _day(until)
    if start:
        conds.append(AuditEvent.ts >= datetime.combine(start, time.min, UTC))
    if end:
        conds.append(AuditEvent.ts < datetime.combine(end + timedelta(days=1), time.min, UTC))
    rows = list(session.scalars(
        select(AuditEvent).where(*conds).order_by(AuditEvent.id.desc())
        .limit(per_page).offset((max(page, 1) - 1) * per_page)
    ))
    total = session.scalar(select(func.count()).select_from(AuditEvent).where(*conds))
    return rows, int(total or 0)


@router.get("/admin/audit")
def audit_page(request: Request, user: UserInfo = Depends(_admin), actor: str = "",
               action: str = "", patient: str = "", draft: str = "", since: str = "",
               until: str = "", page: int = 1) -> Response:
    """Search the audit log by user, action, patient reference, draft and date."""
    with open_store(get_settings_dep(request)).session() as s:
        rows, total = search_audit(s, user=actor, action=action, patient=patient, draft=draft,
                                   since=since, until=until, page=page)
        actions = sorted(s.scalars(select(AuditEvent.action).distinct()))
        audit.record(s, actor=user.username, action="audit_search", object_type="audit",
                     patient_ref=patient or None, detail={"results": total})
    return render(request, "admin_audit.html", {
        "title": "Audit log", "rows": rows, "total": total, "page": page,
        "pages": max(1, (total + PER_PAGE - 1) // PER_PAGE), "actions": actions,
        "f": {"actor": actor, "action": action, "patient": patient, "draft": draft,
              "since": since, "until": until},
    })


def _users_ctx(session) -> dict:  # type: ignore[no-untyped-def]
    users = list(session.scalars(select(User).order_by(User.username)))
    assigned: dict[int, list[str]] = {}
    for uid, pid in session.execute(select(UserPhysician.user_id, UserPhysician.physician_id)):
        assigned.setdefault(uid, []).append(pid)
    pending = list(session.scalars(select(Recipient).where(Recipient.approved.is_(False))
                                   .order_by(Recipient.id)))
    return {"users": users, "assigned": assigned, "roles": ROLES,
            "physicians": list(session.scalars(select(Physician.id).order_by(Physician.id))),
            "pending_recipients": pending}


@router.get("/admin/users")
def users_page(request: Request, user: UserInfo = Depends(_admin)) -> Response:
    """The list of users and a form to add one."""
    with open_store(get_settings_dep(request)).session() as s:
        ctx = _users_ctx(s)
    ctx.update({"title": "Users", "error": "", "added": request.query_params.get("added", ""),
                "notice": request.query_params.get("notice", ""),
                "action_error": request.query_params.get("error", "")})
    return render(request, "admin_users.html", ctx)


@router.post("/admin/users", dependencies=[Depends(csrf_protect)])
def add_user(
    request: Request,
    user: UserInfo = Depends(_admin),
    username: str = Form(""),
    role: str = Form(""),
    password: str = Form(""),
    name: str = Form(""),
    physician: list[str] = Form([]),
) -> Response:
    """Add a user (role, password, physician assignments)."""
    username = username.strip()
    physicians = list(physician)
    settings = get_settings_dep(request)
    try:
        with open_store(settings).session() as s:
            new = create_user(s, username, password, role, physicians,
                              display_name=name.strip()[:200])
            audit.record(s, actor=user.username, action="user_add", object_type="user",
                         object_id=str(new.id), detail={"role": role,
                                                        "physicians": len(physicians)})
    except PipelineError as exc:
        with open_store(settings).session() as s:
            ctx = _users_ctx(s)
        ctx.update({"title": "Users", "error": str(exc), "added": "", "notice": "",
                    "action_error": ""})
        return render(request, "admin_users.html", ctx, status_code=400)
    return RedirectResponse(f"/admin/users?added={username}", status_code=303)


def _back(notice: str = "", error: str = "") -> Response:
    query = urlencode({"notice": notice} if notice else {"error": error})
    return RedirectResponse(f"/admin/users?{query}", status_code=303)


@router.post("/admin/users/{username}/disable", dependencies=[Depends(csrf_protect)])
def disable_user(request: Request, username: str, user: UserInfo = Depends(_admin)) -> Response:
    """Deactivate a user: they cannot log in and their sessions end at once."""
    return _set_active(request, username, False, user)


@router.post("/admin/users/{username}/enable", dependencies=[Depends(csrf_protect)])
def enable_user(request: Request, username: str, user: UserInfo = Depends(_admin)) -> Response:
    """Reactivate a deactivated user."""
    return _set_active(request, username, True, user)


def _set_active(request: Request, username: str, active: bool, admin: UserInfo) -> Response:
    try:
        with open_store(get_settings_dep(request)).session() as s:
            ended = set_active(s, username, active)
            audit.record(s, actor=admin.username,
                         action="user_enable" if active else "user_disable",
                         object_type="user", object_id=username,
                         detail={"sessions_ended": ended})
    except PipelineError as exc:
        return _back(error=str(exc))
    return _back(f"{username} reactivated." if active
                 else f"{username} deactivated; {ended} session(s) ended.")


@router.post("/admin/users/{username}/password", dependencies=[Depends(csrf_protect)])
def reset_password(request: Request, username: str, password: str = Form(""),
                   user: UserInfo = Depends(_admin)) -> Response:
    """Set a new password for a user (it ends their sessions)."""
    try:
        with open_store(get_settings_dep(request)).session() as s:
            ended = set_password(s, username, password)
            audit.record(s, actor=user.username, action="password_reset", object_type="user",
                         object_id=username, detail={"sessions_ended": ended})
    except PipelineError as exc:
        return _back(error=str(exc))
    return _back(f"Password of {username} reset; {ended} session(s) ended.")


@router.post("/admin/recipients/{recipient_id}/approve", dependencies=[Depends(csrf_protect)])
def approve_recipient(request: Request, recipient_id: int,
                      user: UserInfo = Depends(_admin)) -> Response:
    """Approve a recipient outside the practice's domains for delivery (audited)."""
    with open_store(get_settings_dep(request)).session() as s:
        route.approve_recipient(s, recipient_id, actor=user.username)
    return _back(f"Recipient {recipient_id} approved.")
