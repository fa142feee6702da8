"""Workbench pages of the secretary's day: calendars, booking, confirmations, tasks,
referrals and routing.

Same roles as the drafts: a secretary sees the physicians assigned to them, a physician
their own calendar and work, an admin everything. Every page that shows patient data and
every change is written to the audit log. Times are shown in the practice time zone
(``settings.timezone``); the booking form takes the physician's local time.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import PurePath
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.core import audit
from pipeline.core.db.core import DraftRow, Physician
from pipeline.core.db.schedule import Appointment, Delivery, Recipient, Referral, Resource, Task
from pipeline.core.errors import ConflictError, NotFoundError, PermissionDeniedError
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.review.users import UserInfo
from pipeline.secretary import referrals, route, schedule, tasks
from pipeline.secretary.schedule.appointments import STATUS_LABELS, TRANSITIONS
from pipeline.secretary.schedule.calendars import ScheduleOptions, master_schedule, physician_zone
from pipeline.secretary.schedule.timeutil import as_utc, local_day_bounds, local_to_utc, zone
from pipeline.web.auth import csrf_protect, current_user, get_settings_dep
from pipeline.web.templating import register_nav, render

__all__ = ["router", "week_context", "day_context", "visible_physicians"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/schedule")

#: Button labels for moving an appointment to a status.
ACTIONS = {"confirmed": "confirm", "arrived": "check in", "completed": "complete",
           "cancelled": "cancel", "no_show": "no-show"}
#: Status changes that ask "are you sure?" first (they tell the patient's slot is lost).
CONFIRM_STATUSES = ("cancelled", "no_show")

register_nav("Calendar", "/schedule/week")
register_nav("Tasks", "/schedule/tasks")
register_nav("Referrals", "/schedule/referrals")
register_nav("Routing", "/schedule/routing")


def _render(request: Request, name: str, ctx: dict[str, Any], status_code: int = 200
            ) -> Response:
    ctx.setdefault("actions", ACTIONS)
    ctx.setdefault("notice", "")
    ctx.setdefault("error", "")
    ctx.setdefault("physician", "")
    return render(request, name, ctx, status_code=status_code)


# --- access -----------------------------------------------------------------------------


def visible_physicians(session: Session, user: UserInfo) -> list[str]:
    """Physician ids the user may see: all for an admin, else the assigned ones."""
    if user.role == "admin":
        return list(session.scalars(select(Physician.id).where(Physician.active)
                                    .order_by(Physician.id)))
    return sorted(user.physician_ids)


def _check(user: UserInfo, physician_id: str | None, session: Session) -> None:
    known = physician_id is None or session.get(Physician, physician_id) is not None
    if user.role == "admin" and known:
        return
    if physician_id is None or physician_id not in visible_physicians(session, user):
        raise PermissionDeniedError("This physician's calendar is not assigned to you.")


def _scope(session: Session, user: UserInfo, physician: str) -> list[str]:
    """The physicians a page shows: one (checked) or every visible one."""
    if physician:
        _check(user, physician, session)
        return [physician]
    return visible_physicians(session, user)


def _options(settings: Settings) -> ScheduleOptions:
    return ScheduleOptions.from_settings(settings)


def _tz(settings: Settings) -> ZoneInfo:
    return zone(settings.timezone)


def _view_tz(session: Session, settings: Settings, physician: str) -> ZoneInfo:
    """One physician's calendar in their zone; the master schedule in the practice's."""
    if physician:
        return physician_zone(session, physician, _options(settings))
    return _tz(settings)


def _parse_day(value: str | None, tz: ZoneInfo) -> date:
    if value:
        try:
            return date.fromisoformat(value)
        except ValueError as exc:
            raise ConflictError(f"the date {value!r} arrived; expected YYYY-MM-DD") from exc
    return datetime.now(tz).date()


def _view_audit(session: Session, user: UserInfo, what: str, **detail: Any) -> None:
    audit.record(session, actor=user.username, action="view", object_type=what,
                 detail={k: v for k, v in detail.items() if v is not None})


def _patients(s: Session, user: UserInfo, draft_ids: list[str | None]
              ) -> dict[str, dict[str, str]]:
    """Patient name and MRN of the drafts the user may see (the worklist's rule: an admin
    all, anyone else the drafts of their physicians), by draft id."""
    ids = sorted({d for d in draft_ids if d})
    if not ids:
        return {}
    out: dict[str, dict[str, str]] = {}
    for did, pid, name, mrn in s.execute(
            select(DraftRow.id, DraftRow.physician_id, DraftRow.patient_name, DraftRow.mrn)
            .where(DraftRow.id.in_(ids))):
        if user.may_see_physician(pid):
            out[did] = {"name": name or "", "mrn": mrn or ""}
    return out


def _back(url: str, **params: str) -> RedirectResponse:
    query = urlencode({k: v for k, v in params.items() if v})
    return RedirectResponse(url + (("&" if "?" in url else "?") + query if query else ""),
                            status_code=303)


def _safe_back(value: str, default: str) -> str:
    return value if value.startswith("/schedule") and "//" not in value else default


# --- calendar views ---------------------------------------------------------------------


@dataclass
class _Cell:
    entries: list[dict[str, Any]] = field(default_factory=list)


def _entry_dict(entry: schedule.calendars.CalendarEntry, names: dict[int, str]
                ) -> dict[str, Any]:
    appt = entry.kind == "appointment"
    return {
        "kind": entry.kind,
        "id": entry.ref_id,
        "time": "all day" if entry.all_day else (
            f"{entry.start.hour:02d}:{entry.start.minute:02d}-"
            f"{entry.end.hour:02d}:{entry.end.minute:02d}"),
        "title": entry.title,
        "status": entry.status,
        "status_label": STATUS_LABELS.get(entry.status, entry.status),
        "patient": entry.patient,
        "resource": names.get(entry.resource_id) if entry.resource_id else None,
        "next": TRANSITIONS.get(entry.status, ()) if appt else (),
    }


def _resource_names(session: Session) -> dict[int, str]:
    return {rid: name for rid, name in session.execute(select(Resource.id, Resource.name))}


def week_context(session: Session, physician_ids: list[str], day: date,
                 tz: ZoneInfo, *, resource_ids: list[int] | None = None) -> dict[str, Any]:
    """Context of the week view: Monday-Sunday columns, one row per physician, or one row
    per resource with ``resource_ids`` (patient names only for ``physician_ids``)."""
    monday = day - timedelta(days=day.weekday())
    days = [monday + timedelta(days=i) for i in range(7)]
    start, _ = local_day_bounds(monday, tz)
    _, end = local_day_bounds(days[-1], tz)
    entries = master_schedule(session, start, end, physician_ids=physician_ids, tz=tz,
                              with_patient=True, resource_ids=resource_ids)
    names = _resource_names(session)
    labels: dict[str, str]
    if resource_ids is not None:
        keys = [f"r{r}" for r in resource_ids]
        labels = {f"r{r}": names.get(r, str(r)) for r in resource_ids}
        links = {f"r{r}": f"/schedule/week?resource={r}" for r in resource_ids}
    else:
        keys = list(physician_ids)
        labels = {p.id: p.name or p.id for p in session.scalars(
            select(Physician).where(Physician.id.in_(physician_ids)))}
        links = {p: f"/schedule/week?physician={p}" for p in physician_ids}
    visible = set(physician_ids)
    grid: dict[str, dict[date, _Cell]] = {k: {d: _Cell() for d in days} for k in keys}
    for e in entries:
        key = f"r{e.resource_id}" if resource_ids is not None else e.physician_id
        if key not in grid:
            continue
        item = _entry_dict(e, names)
        if resource_ids is not None:
            item["title"] = f"{item['title']} ({e.physician_id})"
            if e.physician_id not in visible:
                item["patient"] = None
                item["private"] = True
        d = e.start.date()
        last = (e.end - timedelta(microseconds=1)).date()
        while d <= last:
            if d in grid[key]:
                grid[key][d].entries.append(item)
            d += timedelta(days=1)
    return {"days": days, "grid": grid, "physicians": labels, "links": links,
            "monday": monday, "prev": monday - timedelta(days=7),
            "next": monday + timedelta(days=7),
            "count": sum(1 for e in entries if e.kind == "appointment"), "tz": tz.key}


def day_context(session: Session, physician_ids: list[str], day: date,
                tz: ZoneInfo) -> dict[str, Any]:
    """Context of the day view: one column per physician, entries in time order."""
    start, end = local_day_bounds(day, tz)
    entries = master_schedule(session, start, end, physician_ids=physician_ids, tz=tz,
                              include_cancelled=True, with_patient=True)
    names = _resource_names(session)
    columns: dict[str, list[dict[str, Any]]] = {p: [] for p in physician_ids}
    for e in entries:
        if e.physician_id in columns:
            columns[e.physician_id].append(_entry_dict(e, names))
    physicians = {p.id: p.name or p.id for p in session.scalars(
        select(Physician).where(Physician.id.in_(physician_ids)))}
    return {"day": day, "columns": columns, "physicians": physicians,
            "prev": day - timedelta(days=1), "next": day + timedelta(days=1), "tz": tz.key}


@router.get("")
def schedule_home() -> Response:
    """The calendar's default view."""
    return RedirectResponse("/schedule/week", status_code=303)


@router.get("/week")
def week_view(request: Request, date: str = "", physician: str = "", resource: str = "",
              user: UserInfo = Depends(current_user)) -> Response:
    """The week calendar for one physician, every visible one (master schedule), or the
    resources (``resource=all`` or an id: operating rooms, ultrasound...)."""
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        scope = _scope(s, user, physician)
        tz = _view_tz(s, settings, physician)
        res_ids = None
        if resource:
            all_res = list(s.scalars(select(Resource.id).where(Resource.active)
                                     .order_by(Resource.name)))
            res_ids = all_res if resource == "all" else [int(resource)] \
                if resource.isdigit() and int(resource) in all_res else []
            if not res_ids and resource != "all":
                raise NotFoundError(f"resource {resource!r} does not exist")
            scope = visible_physicians(s, user)
        ctx = week_context(s, scope, _parse_day(date, tz), tz, resource_ids=res_ids)
        _view_audit(s, user, "calendar_week", date=str(ctx["monday"]), physician=physician or
                    None, physicians=len(scope), resource=resource or None)
        ctx.update(title="Week", physician=physician, resource=resource,
                   all_physicians=visible_physicians(s, user))
    return _render(request, "schedule/week.html", ctx)


@router.get("/day")
def day_view(request: Request, date: str = "", physician: str = "",
             user: UserInfo = Depends(current_user)) -> Response:
    """The day calendar with status actions for each appointment."""
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        scope = _scope(s, user, physician)
        tz = _view_tz(s, settings, physician)
        ctx = day_context(s, scope, _parse_day(date, tz), tz)
        _view_audit(s, user, "calendar_day", date=str(ctx["day"]), physician=physician or None,
                    physicians=len(scope))
        ctx.update(title="Day", physician=physician, all_physicians=visible_physicians(s, user),
                   notice=request.query_params.get("notice", ""),
                   error=request.query_params.get("error", ""))
    return _render(request, "schedule/day.html", ctx)


# --- booking ----------------------------------------------------------------------------


def _book_form_context(s: Session, user: UserInfo, values: dict[str, str]) -> dict[str, Any]:
    return {
        "title": "Book an appointment",
        "physicians": visible_physicians(s, user),
        "types": schedule.appointment_types(s),
        "resources": list(s.scalars(select(Resource).where(Resource.active)
                                    .order_by(Resource.name))),
        "values": values,
        "conflicts": [],
        "slots": [],
        "error": "",
    }


@router.get("/book")
def book_form(request: Request, physician: str = "", date: str = "", time: str = "",
              type: str = "follow_up", resource: str = "", find: int = 0,
              user: UserInfo = Depends(current_user)) -> Response:
    """The booking form; with ``find=1`` it lists the next free slots to pick from."""
    settings = get_settings_dep(request)
    values = {"physician": physician, "date": date, "time": time, "type": type,
              "resource": resource, "find": "1" if find else ""}
    with open_store(settings).session() as s:
        ctx = _book_form_context(s, user, values)
        if find:
            scope = _scope(s, user, physician)
            atype = schedule.get_type(s, type)
            tz = _tz(settings)
            after = datetime.now(tz)
            if date:
                after = max(after, local_to_utc(_parse_day(date, tz),
                                                _parse_time(time or "00:00"), tz))
            res_ids = [int(resource)] if resource else None
            slots = schedule.find_free_slots(
                s, physician_ids=scope, duration_min=atype.duration_min, after=after, limit=8,
                resource_ids=res_ids,
                resource_kind=atype.resource_kind if atype.resource_required and not res_ids
                else None, options=_options(settings))
            ctx["slots"] = [
                {"physician": sl.physician_id, "resource": sl.resource_id,
                 "local": sl.start.astimezone(physician_zone(s, sl.physician_id,
                                                             _options(settings))),
                 } for sl in slots]
    return _render(request, "schedule/book.html", ctx)


def _parse_time(value: str) -> time:
    try:
        return time.fromisoformat(value)
    except ValueError as exc:
        raise ConflictError(f"the time {value!r} arrived; expected HH:MM") from exc


@router.post("/book", dependencies=[Depends(csrf_protect)])
def book_submit(
    request: Request,
    physician: str = Form(...),
    date: str = Form(...),
    time: str = Form(...),
    type: str = Form("follow_up"),
    duration: str = Form(""),
    resource: str = Form(""),
    patient_name: str = Form(""),
    patient_phone: str = Form(""),
    mrn: str = Form(""),
    reason: str = Form(""),
    user: UserInfo = Depends(current_user),
) -> Response:
    """Book; on a conflict the form comes back (409) with every reason listed."""
    settings = get_settings_dep(request)
    options = _options(settings)
    values = {"physician": physician, "date": date, "time": time, "type": type,
              "duration": duration, "resource": resource, "patient_name": patient_name,
              "patient_phone": patient_phone, "mrn": mrn, "reason": reason}
    store = open_store(settings)
    with store.session() as s:
        _check(user, physician, s)
        tz = physician_zone(s, physician, options)
        try:
            start = local_to_utc(_parse_day(date, tz), _parse_time(time), tz)
            appt = schedule.book(
                s, physician_id=physician, start=start, type_code=type,
                duration_min=int(duration) if duration.strip() else None,
                resource_id=int(resource) if resource else None,
                patient_name=patient_name.strip() or None,
                patient_phone=patient_phone.strip() or None, mrn=mrn.strip() or None,
                reason=reason.strip(), actor=user.username, options=options)
            appt_id = appt.id
        except ConflictError as exc:
            s.rollback()
            ctx = _book_form_context(s, user, values)
            ctx["conflicts"] = [c.message for c in getattr(exc, "conflicts", [])] or [str(exc)]
            ctx["conflict_title"] = "The appointment was not booked:"
            return _render(request, "schedule/book.html", ctx, status_code=409)
    return _back(f"/schedule/day?date={quote(date)}&physician={quote(physician)}",
                 notice=f"Appointment {appt_id} booked.")


@router.post("/appointments/{appointment_id}/status", dependencies=[Depends(csrf_protect)])
def appointment_status(request: Request, appointment_id: int, status: str = Form(...),
                       back: str = Form(""), confirmed: str = Form(""),
                       user: UserInfo = Depends(current_user)) -> Response:
    """Move an appointment along booked -> confirmed -> arrived -> completed (or cancel...).
    Cancel and no-show first show a confirmation step (``confirmed=1`` carries them out)."""
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        appt = s.get(Appointment, appointment_id)
        if appt is None:
            raise NotFoundError(f"appointment {appointment_id} does not exist")
        _check(user, appt.physician_id, s)
        if status in CONFIRM_STATUSES and confirmed != "1":
            tz = physician_zone(s, appt.physician_id, _options(settings))
            audit.record(s, actor=user.username, action="view", object_type="appointment",
                         object_id=str(appt.id), patient_ref=appt.mrn,
                         detail={"confirm": status})
            ctx = {"title": f"{ACTIONS.get(status, status).capitalize()} appointment {appt.id}?",
                   "a": appt, "status": status, "label": STATUS_LABELS.get(status, status),
                   "verb": ACTIONS.get(status, status),
                   "start": as_utc(appt.start_utc).astimezone(tz), "tz": tz.key,
                   "back": _safe_back(back, "/schedule/day")}
            return _render(request, "schedule/confirm_status.html", ctx)
        schedule.set_status(s, appointment_id, status, actor=user.username)
    return _back(_safe_back(back, "/schedule/day"),
                 notice=f"Appointment {appointment_id}: {STATUS_LABELS.get(status, status)}.")


@router.get("/appointments/{appointment_id}")
def appointment_detail(request: Request, appointment_id: int,
                       user: UserInfo = Depends(current_user)) -> Response:
    """One appointment with its status history."""
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        appt = s.get(Appointment, appointment_id)
        if appt is None:
            raise NotFoundError(f"appointment {appointment_id} does not exist")
        _check(user, appt.physician_id, s)
        tz = physician_zone(s, appt.physician_id, _options(settings))
        audit.record(s, actor=user.username, action="view", object_type="appointment",
                     object_id=str(appt.id), patient_ref=appt.mrn)
        ctx = {"title": f"Appointment {appt.id}", "a": appt,
               "start": as_utc(appt.start_utc).astimezone(tz),
               "end": as_utc(appt.end_utc).astimezone(tz),
               "type": schedule.get_type(s, appt.type_code).name,
               "history": schedule.history(s, appt.id), "tz": tz.key,
               "next": TRANSITIONS.get(appt.status, ()), "labels": STATUS_LABELS,
               "notice": request.query_params.get("notice", ""),
               "error": request.query_params.get("error", "")}
    return _render(request, "schedule/appointment.html", ctx)


@router.post("/appointments/{appointment_id}/move", dependencies=[Depends(csrf_protect)])
def appointment_move(request: Request, appointment_id: int, date: str = Form(...),
                     time: str = Form(...), user: UserInfo = Depends(current_user)
                     ) -> Response:
    """Move a booked or confirmed appointment (physician's local date and time)."""
    settings = get_settings_dep(request)
    options = _options(settings)
    with open_store(settings).session() as s:
        appt = s.get(Appointment, appointment_id)
        if appt is None:
            raise NotFoundError(f"appointment {appointment_id} does not exist")
        _check(user, appt.physician_id, s)
        tz = physician_zone(s, appt.physician_id, options)
        try:
            start = local_to_utc(_parse_day(date, tz), _parse_time(time), tz)
            schedule.reschedule(s, appointment_id, start, actor=user.username,
                                options=options)
        except ConflictError as exc:
            s.rollback()
            return _back(f"/schedule/appointments/{appointment_id}", error=str(exc))
    return _back(f"/schedule/appointments/{appointment_id}",
                 notice=f"Appointment {appointment_id} moved to {date} {time}.")


@router.get("/rota")
def rota(request: Request, weeks: int = 4, user: UserInfo = Depends(current_user)
         ) -> Response:
    """The on-call rota: every on-call shift of the visible physicians, next ``weeks``."""
    settings = get_settings_dep(request)
    tz = _tz(settings)
    with open_store(settings).session() as s:
        scope = visible_physicians(s, user)
        start, _ = local_day_bounds(datetime.now(tz).date(), tz)
        end = start + timedelta(weeks=max(1, min(weeks, 52)))
        shifts = [e for e in master_schedule(s, start, end, physician_ids=scope, tz=tz)
                  if e.kind == "on_call"]
        names = {p.id: p.name or p.id for p in s.scalars(
            select(Physician).where(Physician.id.in_(scope)))}
        ctx = {"title": "On-call rota", "shifts": shifts, "names": names, "weeks": weeks,
               "tz": tz.key}
    return _render(request, "schedule/rota.html", ctx)


@router.get("/confirmations")
def confirmations(request: Request, date: str = "", physician: str = "",
                  user: UserInfo = Depends(current_user)) -> Response:
    """Tomorrow's (or ``date``'s) appointments still to confirm by phone."""
    settings = get_settings_dep(request)
    tz = _tz(settings)
    with open_store(settings).session() as s:
        scope = _scope(s, user, physician)
        day = _parse_day(date, tz) if date else datetime.now(tz).date() + timedelta(days=1)
        calls = schedule.confirmation_list(s, day=day, physician_ids=scope,
                                           options=_options(settings))
        _view_audit(s, user, "confirmation_list", date=str(day), count=len(calls))
        ctx = {"title": "Confirmation calls", "calls": calls, "day": day,
               "physician": physician, "all_physicians": visible_physicians(s, user),
               "notice": request.query_params.get("notice", "")}
    return _render(request, "schedule/confirmations.html", ctx)


@router.get("/ics/{physician_id}.ics")
def ics_export(request: Request, physician_id: str, days: int = 90,
               user: UserInfo = Depends(current_user)) -> Response:
    """The physician's calendar as iCalendar (from 7 days ago, ``days`` ahead)."""
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        _check(user, physician_id, s)
        now = datetime.now(_tz(settings))
        data = schedule.export_ics(s, physician_id, now - timedelta(days=7),
                                   now + timedelta(days=max(1, min(days, 730))))
        audit.record(s, actor=user.username, action="export", object_type="calendar",
                     object_id=physician_id, detail={"format": "ics"})
    return Response(data, media_type="text/calendar", headers={
        "Content-Disposition": f'attachment; filename="{physician_id}.ics"'})


@router.get("/fhir/{physician_id}.json")
def fhir_export(request: Request, physician_id: str, days: int = 14,
                user: UserInfo = Depends(current_user)) -> Response:
    """FHIR R4 Bundle (Schedule, Slots, Appointments) for the next ``days`` days."""
    import json

    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        _check(user, physician_id, s)
        now = datetime.now(_tz(settings))
        bundle = schedule.fhir_bundle(s, physician_id, now,
                                      now + timedelta(days=max(1, min(days, 180))),
                                      options=_options(settings))
        audit.record(s, actor=user.username, action="export", object_type="calendar",
                     object_id=physician_id, detail={"format": "fhir"})
    return Response(json.dumps(bundle, indent=1), media_type="application/fhir+json")


# --- tasks ------------------------------------------------------------------------------


@router.get("/tasks")
def task_page(request: Request, show: str = "open", mine: int = 0,
              user: UserInfo = Depends(current_user)) -> Response:
    """The task list: instructions from dictations, due first; overdue highlighted."""
    settings = get_settings_dep(request)
    tz = _tz(settings)
    with open_store(settings).session() as s:
        scope = visible_physicians(s, user)
        rows = tasks.task_list(s, physician_ids=scope, include_closed=show == "all",
                               owner=user.username if mine else None)
        today = datetime.now(tz).date()
        options = _options(settings)
        items = []
        for t in rows:
            proposals = []
            for i, p in enumerate(t.proposed_slots or []):
                ptz = physician_zone(s, p["physician_id"], options)
                proposals.append((i, datetime.fromisoformat(p["start"]).astimezone(ptz)))
            delivery = s.get(Delivery, t.delivery_id) if t.delivery_id else None
            items.append({"t": t, "overdue": tasks.is_overdue(t, today),
                          "next": tasks.FLOWS[t.kind].get(t.status, ()),
                          "proposals": proposals, "delivery": delivery})
        patients = _patients(s, user, [t.draft_id for t in rows])
        for t, it in zip(rows, items, strict=True):
            it["patient"] = patients.get(t.draft_id or "")
        _view_audit(s, user, "task_list", count=len(items), patients=len(patients))
        ctx = {"title": "Tasks", "items": items, "show": show, "mine": mine,
               "notice": request.query_params.get("notice", ""),
               "error": request.query_params.get("error", "")}
    return _render(request, "schedule/tasks.html", ctx)


def _task_for(s: Session, user: UserInfo, task_id: int) -> Task:
    task = s.get(Task, task_id)
    if task is None:
        raise NotFoundError(f"task {task_id} does not exist")
    _check(user, task.physician_id, s)
    return task


@router.post("/tasks/{task_id}/status", dependencies=[Depends(csrf_protect)])
def task_status(request: Request, task_id: int, status: str = Form(...),
                user: UserInfo = Depends(current_user)) -> Response:
    """Move a task along its flow."""
    with open_store(get_settings_dep(request)).session() as s:
        _task_for(s, user, task_id)
        tasks.set_task_status(s, task_id, status, actor=user.username)
    return _back("/schedule/tasks", notice=f"Task {task_id}: {status.replace('_', ' ')}.")


@router.post("/tasks/{task_id}/take", dependencies=[Depends(csrf_protect)])
def task_take(request: Request, task_id: int, user: UserInfo = Depends(current_user)
              ) -> Response:
    """Make the current user the task's owner."""
    with open_store(get_settings_dep(request)).session() as s:
        _task_for(s, user, task_id)
        tasks.assign_task(s, task_id, user.username, actor=user.username)
    return _back("/schedule/tasks", notice=f"Task {task_id} is yours.")


@router.post("/tasks/{task_id}/book", dependencies=[Depends(csrf_protect)])
def task_book(request: Request, task_id: int, slot: int = Form(0),
              user: UserInfo = Depends(current_user)) -> Response:
    """Book one of a scheduling task's proposed slots."""
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        _task_for(s, user, task_id)
        try:
            appt = tasks.book_task(s, task_id, actor=user.username, slot_index=slot,
                                   options=_options(settings))
            msg = f"Appointment {appt.id} booked for task {task_id}."
        except ConflictError as exc:
            s.rollback()
            return _back("/schedule/tasks", error=str(exc))
    return _back("/schedule/tasks", notice=msg)


# --- referrals --------------------------------------------------------------------------


@router.get("/referrals")
def referral_page(request: Request, show: str = "open",
                  user: UserInfo = Depends(current_user)) -> Response:
    """The referral tracker: overdue first."""
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        scope = visible_physicians(s, user)
        board = referrals.referral_board(s, physician_ids=scope, include_closed=show == "all")
        patients = _patients(s, user, [v.referral.draft_id for v in board])
        shown = {}
        for v in board:
            r = v.referral
            p = dict(patients.get(r.draft_id or "", {}))
            if r.mrn and user.may_see_physician(r.physician_id):
                p["mrn"] = r.mrn
            shown[r.id] = p
        _view_audit(s, user, "referral_list", count=len(board),
                    patients=sum(1 for p in shown.values() if p))
        ctx = {"title": "Referrals", "board": board, "patients": shown, "show": show,
               "physicians": scope,
               "transitions": referrals.TRANSITIONS, "labels": referrals.LABELS,
               "recipients": list(s.scalars(select(Recipient).where(Recipient.active)
                                            .order_by(Recipient.name))),
               "notice": request.query_params.get("notice", ""),
               "error": request.query_params.get("error", "")}
    return _render(request, "schedule/referrals.html", ctx)


def _referral_for(s: Session, user: UserInfo, referral_id: int) -> Referral:
    ref = s.get(Referral, referral_id)
    if ref is None:
        raise NotFoundError(f"referral {referral_id} does not exist")
    _check(user, ref.physician_id, s)
    return ref


@router.post("/referrals", dependencies=[Depends(csrf_protect)])
def referral_new(request: Request, specialty: str = Form(...), physician: str = Form(...),
                 mrn: str = Form(""), reason: str = Form(""), recipient: str = Form(""),
                 user: UserInfo = Depends(current_user)) -> Response:
    """Open a referral by hand (dictated ones come from tasks)."""
    with open_store(get_settings_dep(request)).session() as s:
        _check(user, physician, s)
        try:
            ref = referrals.create_referral(
                s, specialty, physician_id=physician, mrn=mrn.strip() or None,
                reason=reason.strip(), recipient_id=int(recipient) if recipient else None,
                actor=user.username)
        except ConflictError as exc:
            s.rollback()
            return _back("/schedule/referrals", error=str(exc))
        rid = ref.id
    return _back("/schedule/referrals", notice=f"Referral {rid} opened.")


@router.post("/referrals/{referral_id}/advance", dependencies=[Depends(csrf_protect)])
def referral_advance(request: Request, referral_id: int, status: str = Form(...),
                     appointment_at: str = Form(""), recipient: str = Form(""),
                     user: UserInfo = Depends(current_user)) -> Response:
    """Move a referral on (the appointment time is local practice time)."""
    settings = get_settings_dep(request)
    tz = _tz(settings)
    with open_store(settings).session() as s:
        _referral_for(s, user, referral_id)
        when = None
        if appointment_at:
            try:
                when = datetime.fromisoformat(appointment_at).replace(tzinfo=tz)
            except ValueError:
                return _back("/schedule/referrals",
                             error=f"The date {appointment_at!r} is not YYYY-MM-DDTHH:MM.")
        try:
            referrals.advance(s, referral_id, status, actor=user.username, appointment_at=when,
                              recipient_id=int(recipient) if recipient else None)
        except ConflictError as exc:
            s.rollback()
            return _back("/schedule/referrals", error=str(exc))
    return _back("/schedule/referrals",
                 notice=f"Referral {referral_id}: {referrals.LABELS.get(status, status)}.")


@router.post("/referrals/{referral_id}/attach", dependencies=[Depends(csrf_protect)])
async def referral_attach(request: Request, referral_id: int, role: str = Form("report"),
                          name: str = Form(""), draft_id: str = Form(""),
                          file: UploadFile | None = File(None),
                          user: UserInfo = Depends(current_user)) -> Response:
    """Attach a document to a referral: a file uploaded from the browser (the report back:
    PDF, image or Word, stored encrypted with the referral) or one of the practice's
    drafts. A file that is refused comes back as one sentence on the page."""
    settings = get_settings_dep(request)
    data = b""
    filename = ""
    if file is not None and file.filename:
        filename = file.filename
        data = await file.read(referrals.MAX_ATTACHMENT_BYTES + 1)
        await file.close()
    return _attach(settings, user, referral_id, role, name, draft_id, filename, data)


def _attach(settings: Settings, user: UserInfo, referral_id: int, role: str, name: str,
            draft_id: str, filename: str, data: bytes) -> Response:
    with open_store(settings).session() as s:
        _referral_for(s, user, referral_id)
        try:
            if filename:
                referrals.attach_upload(s, settings, referral_id, filename, data, role=role,
                                        name=name, actor=user.username)
            elif draft_id:
                draft = s.get(DraftRow, draft_id)
                if draft is None:
                    raise NotFoundError(f"draft {draft_id} does not exist")
                _check(user, draft.physician_id, s)
                referrals.attach_document(s, referral_id, role, actor=user.username,
                                          draft_id=draft_id, name=name)
            else:
                raise ConflictError("no file arrived; choose the report's file (PDF, image or "
                                    "Word) and attach it again")
        except ConflictError as exc:
            s.rollback()
            return _back("/schedule/referrals", error=f"Not attached to referral {referral_id}: "
                         f"{exc}.")
    return _back("/schedule/referrals", notice=f"Document attached to referral {referral_id}.")


@router.get("/referrals/documents/{document_id}")
def referral_document(request: Request, document_id: int,
                      user: UserInfo = Depends(current_user)) -> Response:
    """Download an uploaded referral document (decrypted through the files layer; audited)."""
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        doc, media, data = referrals.read_attachment(s, settings, document_id)
        ref = _referral_for(s, user, doc.referral_id)
        audit.record(s, actor=user.username, action="download", object_type="referral_document",
                     object_id=str(doc.id), patient_ref=ref.mrn,
                     detail={"referral_id": ref.id, "role": doc.role})
        filename = re.sub(r"[^\w.()-]", "_", doc.name or f"document-{doc.id}")
        if not filename.lower().endswith(PurePath(doc.path or "").suffix.lower()):
            filename += PurePath(doc.path or "").suffix.lower()
    return Response(data, media_type=media, headers={
        "Content-Disposition": f'attachment; filename="{filename}"',
        "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


# --- routing ----------------------------------------------------------------------------


@router.get("/routing")
def routing_page(request: Request, user: UserInfo = Depends(current_user)) -> Response:
    """The recipient directory and the deliveries of the user's drafts (failed first)."""
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        scope = visible_physicians(s, user)
        stmt = (select(Delivery, DraftRow.physician_id, DraftRow.status)
                .join(DraftRow, DraftRow.id == Delivery.draft_id)
                .order_by(Delivery.id.desc()).limit(300))
        if user.role != "admin":  # an admin also sees drafts without a physician
            stmt = stmt.where(DraftRow.physician_id.in_(scope))
        order = {"failed": 0, "needs_recipient": 1, "retry": 2, "pending": 3, "sending": 4,
                 "delivered": 5}
        rows = sorted(s.execute(stmt).all(), key=lambda r: order.get(r[0].status, 9))
        recipients = {r.id: r for r in s.scalars(select(Recipient).order_by(Recipient.name))}
        patients = _patients(s, user, [r[0].draft_id for r in rows])
        _view_audit(s, user, "routing", count=len(rows), patients=len(patients))
        ctx = {"title": "Routing", "rows": rows, "patients": patients, "recipients": recipients,
               "channels": route.CHANNELS, "kinds": route.RECIPIENT_KINDS,
               "notice": request.query_params.get("notice", ""),
               "error": request.query_params.get("error", "")}
    return _render(request, "schedule/routing.html", ctx)


@router.post("/recipients", dependencies=[Depends(csrf_protect)])
def recipient_add(request: Request, name: str = Form(...), kind: str = Form(...),
                  channel: str = Form(...), address: str = Form(""),
                  organization: str = Form(""), specialty: str = Form(""),
                  user: UserInfo = Depends(current_user)) -> Response:
    """Add a recipient to the directory (secretaries and admins)."""
    if user.role not in ("secretary", "admin"):
        raise PermissionDeniedError("Only secretaries and administrators edit the directory.")
    if channel not in ("email", "print") and user.role != "admin":
        # folders and URLs point the server at places on disk or the network
        raise PermissionDeniedError("Only administrators add folder, HL7 or FHIR recipients.")
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        try:
            rec = route.add_recipient(s, name, kind, channel, address,
                                      organization=organization,
                                      specialty=specialty or None, actor=user.username,
                                      practice_domains=settings.practice_email_domains,
                                      approver=user.username if user.role == "admin" else None)
        except ConflictError as exc:
            s.rollback()
            return _back("/schedule/routing", error=str(exc))
        rid, approved = rec.id, rec.approved
    if not approved:
        return _back("/schedule/routing", notice=(
            f"Recipient {rid} added, waiting for an administrator's approval: the address is "
            "outside the practice's own e-mail domains."))
    return _back("/schedule/routing", notice=f"Recipient {rid} added.")


def _delivery_for(s: Session, user: UserInfo, delivery_id: int) -> Delivery:
    delivery = s.get(Delivery, delivery_id)
    if delivery is None:
        raise NotFoundError(f"delivery {delivery_id} does not exist")
    draft = s.get(DraftRow, delivery.draft_id)
    _check(user, draft.physician_id if draft else None, s)
    return delivery


@router.post("/deliveries/{delivery_id}/retry", dependencies=[Depends(csrf_protect)])
def delivery_retry(request: Request, delivery_id: int,
                   user: UserInfo = Depends(current_user)) -> Response:
    """Re-queue a failed delivery."""
    with open_store(get_settings_dep(request)).session() as s:
        _delivery_for(s, user, delivery_id)
        route.retry(s, delivery_id, actor=user.username)
    return _back("/schedule/routing", notice=f"Delivery {delivery_id} queued again.")


@router.post("/deliveries/{delivery_id}/assign", dependencies=[Depends(csrf_protect)])
def delivery_assign(request: Request, delivery_id: int, recipient: int = Form(...),
                    user: UserInfo = Depends(current_user)) -> Response:
    """Pick the recipient of a route the dictation named but the directory did not match."""
    with open_store(get_settings_dep(request)).session() as s:
        _delivery_for(s, user, delivery_id)
        route.assign_recipient(s, delivery_id, recipient, actor=user.username)
    return _back("/schedule/routing", notice=f"Delivery {delivery_id} has its recipient.")


@router.post("/deliver", dependencies=[Depends(csrf_protect)])
def deliver_now(request: Request, user: UserInfo = Depends(current_user)) -> Response:
    """Send every due delivery now (signed drafts only)."""
    if user.role not in ("secretary", "admin"):
        raise PermissionDeniedError("Only secretaries and administrators send documents.")
    report = route.deliver_due(get_settings_dep(request), actor=user.username)
    return _back("/schedule/routing", notice=(
        f"Delivered {len(report.delivered)}, retrying {len(report.retrying)}, "
        f"failed {len(report.failed)}, waiting for signature "
        f"{len(report.waiting_for_signature)}, waiting for approval "
        f"{len(report.waiting_for_approval)}."))
