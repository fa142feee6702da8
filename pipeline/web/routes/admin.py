"""Administrator pages: search the audit log; list, add, deactivate and reactivate users,
reset their passwords, change their roles (all three end the user's sessions) and physician
assignments; approve outside recipients; run the practice's calendars (working hours, time
off, on-call, resources) through the same ``pipeline.secretary.schedule`` functions the CLI
uses. Every change is audited."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import func, select

from pipeline.core import audit
from pipeline.core.db.core import AuditEvent, Physician
from pipeline.core.db.review import User, UserPhysician
from pipeline.core.db.schedule import AvailabilityRule, CalendarBlock, Recipient, Resource
from pipeline.core.errors import ConflictError, PipelineError
from pipeline.core.store import open_store
from pipeline.review.users import (
    ROLES,
    UserInfo,
    create_user,
    set_active,
    set_password,
    set_role,
    set_user_physicians,
)
from pipeline.secretary import route, schedule
from pipeline.secretary.schedule.calendars import WEEKDAYS, ScheduleOptions, physician_zone
from pipeline.secretary.schedule.timeutil import as_utc, local_to_utc
from pipeline.web.auth import csrf_protect, get_settings_dep, require_roles
from pipeline.web.templating import register_nav, render

__all__ = ["router", "search_audit"]

router = APIRouter()
_admin = require_roles("admin")
register_nav("Practice", "/admin/practice", ("admin",))
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


def _back(notice: str = "", error: str = "", url: str = "/admin/users") -> Response:
    query = urlencode({"notice": notice} if notice else {"error": error})
    return RedirectResponse(f"{url}?{query}", status_code=303)


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


@router.post("/admin/users/{username}/role", dependencies=[Depends(csrf_protect)])
def change_role(request: Request, username: str, role: str = Form(""),
                user: UserInfo = Depends(_admin)) -> Response:
    """Change a user's role (their sessions end; the last administrator stays one)."""
    try:
        with open_store(get_settings_dep(request)).session() as s:
            ended = set_role(s, username, role)
            audit.record(s, actor=user.username, action="user_role", object_type="user",
                         object_id=username, detail={"role": role, "sessions_ended": ended})
    except PipelineError as exc:
        return _back(error=str(exc))
    return _back(f"{username} is now {role}; {ended} session(s) ended.")


@router.post("/admin/users/{username}/physicians", dependencies=[Depends(csrf_protect)])
def change_physicians(request: Request, username: str, physician: list[str] = Form([]),
                      user: UserInfo = Depends(_admin)) -> Response:
    """Replace the physicians a user is assigned to (what a secretary sees)."""
    try:
        with open_store(get_settings_dep(request)).session() as s:
            pids = set_user_physicians(s, username, list(physician))
            audit.record(s, actor=user.username, action="user_physicians", object_type="user",
                         object_id=username, detail={"physicians": pids})
    except PipelineError as exc:
        return _back(error=str(exc))
    return _back(f"{username} is assigned to {', '.join(pids) or 'no physician'}.")


@router.post("/admin/recipients/{recipient_id}/approve", dependencies=[Depends(csrf_protect)])
def approve_recipient(request: Request, recipient_id: int,
                      user: UserInfo = Depends(_admin)) -> Response:
    """Approve a recipient outside the practice's domains for delivery (audited)."""
    with open_store(get_settings_dep(request)).session() as s:
        route.approve_recipient(s, recipient_id, actor=user.username)
    return _back(f"Recipient {recipient_id} approved.")


# --- practice administration: working hours, time off, on-call, resources ---------------

_PRACTICE = "/admin/practice"


def _options(request: Request) -> ScheduleOptions:
    return ScheduleOptions.from_settings(get_settings_dep(request))


def _practice_back(notice: str = "", error: str = "", physician: str = "") -> Response:
    params = {"physician": physician} if physician else {}
    params.update({"notice": notice} if notice else {"error": error})
    return RedirectResponse(f"{_PRACTICE}?{urlencode(params)}", status_code=303)


def _parse_day(value: str, what: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ConflictError(f"the {what} {value!r} arrived; expected YYYY-MM-DD") from exc


def _parse_local(value: str, what: str) -> tuple[date, time]:
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ConflictError(f"the {what} {value!r} arrived; expected YYYY-MM-DDTHH:MM") from exc
    return dt.date(), dt.time()


@router.get(_PRACTICE)
def practice_page(request: Request, physician: str = "", user: UserInfo = Depends(_admin)
                  ) -> Response:
    """Working hours, time off, on-call shifts (next 90 days) and resources: one page with a
    form for each, for one physician at a time (the physician's local time)."""
    options = _options(request)
    with open_store(get_settings_dep(request)).session() as s:
        physicians = list(s.scalars(select(Physician.id).where(Physician.active)
                                    .order_by(Physician.id)))
        pid = physician if physician in physicians else (physicians[0] if physicians else "")
        ctx: dict[str, Any] = {"title": "Practice calendars", "physicians": physicians,
                               "physician": pid, "weekdays": WEEKDAYS, "hours": [],
                               "blocks": [], "tz": "", "timedelta1": timedelta(microseconds=1)}
        if pid:
            tz = physician_zone(s, pid, options)
            ctx["tz"] = tz.key
            ctx["hours"] = list(s.scalars(
                select(AvailabilityRule).where(AvailabilityRule.physician_id == pid)
                .order_by(AvailabilityRule.weekday, AvailabilityRule.start_local)))
            now = datetime.now(UTC)
            ctx["blocks"] = [
                {"b": b, "start": as_utc(b.start_utc).astimezone(tz),
                 "end": as_utc(b.end_utc).astimezone(tz)}
                for b in s.scalars(
                    select(CalendarBlock).where(
                        CalendarBlock.physician_id == pid,
                        CalendarBlock.kind.in_(("time_off", "on_call")),
                        CalendarBlock.end_utc >= now,
                        CalendarBlock.start_utc < now + timedelta(days=365))
                    .order_by(CalendarBlock.start_utc))]
        ctx["resources"] = list(s.scalars(select(Resource).order_by(Resource.active.desc(),
                                                                    Resource.name)))
        audit.record(s, actor=user.username, action="view", object_type="practice_calendar",
                     object_id=pid or None)
    ctx.update(notice=request.query_params.get("notice", ""),
               action_error=request.query_params.get("error", ""))
    return render(request, "admin_practice.html", ctx)


@router.post(f"{_PRACTICE}/hours", dependencies=[Depends(csrf_protect)])
def practice_add_hours(request: Request, physician: str = Form(...),
                       weekday: list[int] = Form([]), start: str = Form(...),
                       end: str = Form(...), valid_from: str = Form(""),
                       valid_until: str = Form(""), user: UserInfo = Depends(_admin)
                       ) -> Response:
    """Add weekly working hours (one window on each ticked weekday, physician's local time)."""
    try:
        if not weekday:
            raise ConflictError("no weekday arrived; expected at least one day ticked")
        with open_store(get_settings_dep(request)).session() as s:
            ids = [schedule.add_availability(
                s, physician, wd, start, end,
                valid_from=_parse_day(valid_from, "first day") if valid_from else None,
                valid_until=_parse_day(valid_until, "last day") if valid_until else None).id
                for wd in weekday]
            audit.record(s, actor=user.username, action="calendar_hours_add",
                         object_type="availability", object_id=physician,
                         detail={"rules": ids, "weekdays": list(weekday), "start": start,
                                 "end": end})
    except PipelineError as exc:
        return _practice_back(error=str(exc), physician=physician)
    days = ", ".join(WEEKDAYS[d] for d in weekday if 0 <= d <= 6)
    return _practice_back(f"Working hours {start}-{end} added on {days}.", physician=physician)


@router.post(f"{_PRACTICE}/hours/{{rule_id}}/delete", dependencies=[Depends(csrf_protect)])
def practice_remove_hours(request: Request, rule_id: int, user: UserInfo = Depends(_admin)
                          ) -> Response:
    """Remove one weekly working-hours window."""
    try:
        with open_store(get_settings_dep(request)).session() as s:
            rule = schedule.remove_availability(s, rule_id)
            pid = rule.physician_id
            audit.record(s, actor=user.username, action="calendar_hours_remove",
                         object_type="availability", object_id=pid,
                         detail={"rule": rule_id})
    except PipelineError as exc:
        return _practice_back(error=str(exc))
    return _practice_back("Working hours removed.", physician=pid)


@router.post(f"{_PRACTICE}/time-off", dependencies=[Depends(csrf_protect)])
def practice_time_off(request: Request, physician: str = Form(...), first_day: str = Form(...),
                      last_day: str = Form(""), title: str = Form("Time off"),
                      user: UserInfo = Depends(_admin)) -> Response:
    """Time off for whole days (the physician's local days; audited by the schedule stage)."""
    try:
        first = _parse_day(first_day, "first day")
        last = _parse_day(last_day, "last day") if last_day else first
        if last < first:
            raise ConflictError(f"the last day {last} arrived before the first day {first}")
        with open_store(get_settings_dep(request)).session() as s:
            schedule.add_time_off(s, physician, first, last, options=_options(request),
                                  title=title.strip()[:200] or "Time off", actor=user.username)
    except PipelineError as exc:
        return _practice_back(error=str(exc), physician=physician)
    return _practice_back(f"Time off {first} to {last} added.", physician=physician)


@router.post(f"{_PRACTICE}/on-call", dependencies=[Depends(csrf_protect)])
def practice_on_call(request: Request, physician: str = Form(...), start: str = Form(...),
                     end: str = Form(...), title: str = Form("On call"),
                     user: UserInfo = Depends(_admin)) -> Response:
    """An on-call shift (the physician's local date and time; audited by the schedule stage)."""
    try:
        with open_store(get_settings_dep(request)).session() as s:
            tz = physician_zone(s, physician, _options(request))
            start_utc = local_to_utc(*_parse_local(start, "start"), tz)
            end_utc = local_to_utc(*_parse_local(end, "end"), tz)
            schedule.add_on_call(s, physician, start_utc, end_utc,
                                 title=title.strip()[:200] or "On call", actor=user.username)
    except PipelineError as exc:
        return _practice_back(error=str(exc), physician=physician)
    return _practice_back("On-call shift added.", physician=physician)


@router.post(f"{_PRACTICE}/blocks/{{block_id}}/delete", dependencies=[Depends(csrf_protect)])
def practice_remove_block(request: Request, block_id: int, user: UserInfo = Depends(_admin)
                          ) -> Response:
    """Remove a time-off or on-call entry (audited)."""
    try:
        with open_store(get_settings_dep(request)).session() as s:
            block = schedule.remove_block(s, block_id, actor=user.username)
            pid, kind = block.physician_id or "", block.kind
    except PipelineError as exc:
        return _practice_back(error=str(exc))
    return _practice_back(f"{kind.replace('_', ' ').capitalize()} removed.", physician=pid)


@router.post(f"{_PRACTICE}/resources", dependencies=[Depends(csrf_protect)])
def practice_add_resource(request: Request, name: str = Form(...), kind: str = Form(...),
                          user: UserInfo = Depends(_admin)) -> Response:
    """Add a bookable resource (an operating room, an ultrasound...)."""
    name, kind = name.strip()[:200], kind.strip().lower().replace(" ", "_")[:50]
    try:
        if not name or not kind:
            raise ConflictError("a resource arrived without a name or kind; expected both")
        with open_store(get_settings_dep(request)).session() as s:
            if s.scalar(select(Resource.id).where(Resource.name == name)) is not None:
                raise ConflictError(f"a resource named {name!r} already exists; expected a "
                                    "new name")
            res = schedule.add_resource(s, name, kind)
            audit.record(s, actor=user.username, action="resource_add", object_type="resource",
                         object_id=str(res.id), detail={"kind": kind})
    except PipelineError as exc:
        return _practice_back(error=str(exc))
    return _practice_back(f"Resource {name} added.")


@router.post(f"{_PRACTICE}/resources/{{resource_id}}/active",
             dependencies=[Depends(csrf_protect)])
def practice_resource_active(request: Request, resource_id: int, active: int = Form(...),
                             user: UserInfo = Depends(_admin)) -> Response:
    """Take a resource out of booking (or back): existing appointments stay."""
    with open_store(get_settings_dep(request)).session() as s:
        res = s.get(Resource, resource_id)
        if res is None:
            return _practice_back(error=f"resource {resource_id} does not exist")
        res.active = bool(active)
        name = res.name
        audit.record(s, actor=user.username, action="resource_active", object_type="resource",
                     object_id=str(resource_id), detail={"active": bool(active)})
    return _practice_back(f"Resource {name} {'back in use' if active else 'taken out of use'}.")
