"""Appointments: booking with conflict checks and a database-level double-booking guard,
the status flow with history, and the next-day confirmation call list.

Status flow::

    booked -> confirmed -> arrived (checked in) -> completed
    booked | confirmed -> cancelled | no_show        (booked -> arrived for walk-ins)

Every change is written to ``sched_appointment_history`` (who, when, from, to) and to the
audit log. Booking claims every 5-minute grid unit of the physician's (and resource's) time
in ``sched_slot_claims`` under a unique constraint, so two concurrent bookings of the same
time cannot both commit, whatever they checked before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.core import audit
from pipeline.core.db.schedule import (
    Appointment,
    AppointmentHistory,
    AppointmentType,
    Resource,
    SlotClaim,
)
from pipeline.core.errors import ConflictError, NotFoundError
from pipeline.secretary.schedule.calendars import ScheduleOptions, physician_zone
from pipeline.secretary.schedule.conflicts import check_conflicts, raise_on_conflicts
from pipeline.secretary.schedule.timeutil import (
    as_utc,
    check_on_grid,
    grid_units,
    local_day_bounds,
    to_utc,
)

__all__ = [
    "STATUSES",
    "TRANSITIONS",
    "STATUS_LABELS",
    "appointment_types",
    "get_type",
    "book",
    "set_status",
    "reschedule",
    "history",
    "confirmation_list",
    "ConfirmationCall",
]

log = logging.getLogger(__name__)

STATUSES = ("booked", "confirmed", "arrived", "completed", "cancelled", "no_show")
TRANSITIONS: dict[str, tuple[str, ...]] = {
    "booked": ("confirmed", "arrived", "cancelled", "no_show"),
    "confirmed": ("arrived", "cancelled", "no_show"),
    "arrived": ("completed",),
    "completed": (),
    "cancelled": (),
    "no_show": (),
}
STATUS_LABELS = {
    "booked": "booked",
    "confirmed": "confirmed",
    "arrived": "arrived / checked in",
    "completed": "completed",
    "cancelled": "cancelled",
    "no_show": "no-show",
}
#: statuses that give the time back
_RELEASING = ("cancelled", "no_show")


def appointment_types(session: Session) -> list[AppointmentType]:
    """All appointment types, shortest first."""
    return list(session.scalars(select(AppointmentType).order_by(AppointmentType.duration_min)))


def get_type(session: Session, code: str) -> AppointmentType:
    """The appointment type ``code``; ``NotFoundError`` listing the known ones otherwise."""
    atype = session.get(AppointmentType, code)
    if atype is None:
        known = ", ".join(t.code for t in appointment_types(session))
        raise NotFoundError(f"appointment type {code!r} arrived; expected one of: {known}")
    return atype


def _claims(appt: Appointment) -> list[SlotClaim]:
    start, end = as_utc(appt.start_utc), as_utc(appt.end_utc)
    owners = [f"physician:{appt.physician_id}"]
    if appt.resource_id is not None:
        owners.append(f"resource:{appt.resource_id}")
    return [SlotClaim(owner=o, slot_start=u, appointment_id=appt.id)
            for o in owners for u in grid_units(start, end)]


def _taken(session: Session, exc: IntegrityError) -> ConflictError:
    session.rollback()
    return ConflictError("cannot book: the time was booked by someone else a moment ago; "
                         "refresh the calendar and pick another slot.")


def book(
    session: Session,
    *,
    physician_id: str,
    start: datetime,
    type_code: str = "follow_up",
    duration_min: int | None = None,
    resource_id: int | None = None,
    location_id: int | None = None,
    patient_name: str | None = None,
    patient_phone: str | None = None,
    mrn: str | None = None,
    reason: str = "",
    draft_id: str | None = None,
    actor: str = "system",
    check_availability: bool = True,
    options: ScheduleOptions | None = None,
    on_checked: Callable[[], None] | None = None,
) -> Appointment:
    """Book an appointment, or raise ``ConflictError`` naming every conflict.

    ``start`` is an aware datetime (any zone). The length is the type's default unless
    ``duration_min`` is given. If another transaction claims the same time first, the
    session is rolled back and ``ConflictError`` raised: the time is booked once.
    ``on_checked`` runs after the checks and before the write (tests use it to force races).
    """
    options = options or ScheduleOptions()
    atype = get_type(session, type_code)
    start = to_utc(start)
    end = start + timedelta(minutes=duration_min or atype.duration_min)
    check_on_grid(start, end)
    if end - start > timedelta(hours=24):
        raise ConflictError("an appointment longer than 24 hours arrived; expected at most 24")
    physician_zone(session, physician_id, options)  # raises NotFoundError for unknown ids
    if resource_id is None and atype.resource_required:
        raise ConflictError(f"a {atype.name.lower()} needs a resource ({atype.resource_kind}); "
                            "none was given")
    if resource_id is not None:
        res = session.get(Resource, resource_id)
        if res is None:
            raise NotFoundError(f"resource {resource_id} arrived; expected a known resource id")
        if atype.resource_required and atype.resource_kind and res.kind != atype.resource_kind:
            raise ConflictError(f"a {atype.name.lower()} needs a resource of kind "
                                f"{atype.resource_kind}; {res.name} is of kind {res.kind}")
    raise_on_conflicts(check_conflicts(session, physician_id, start, end,
                                       resource_id=resource_id,
                                       check_availability=check_availability, options=options))
    if on_checked is not None:
        on_checked()
    appt = Appointment(
        physician_id=physician_id, resource_id=resource_id, location_id=location_id,
        type_code=type_code, start_utc=start, end_utc=end, status="booked",
        patient_name=patient_name, patient_phone=patient_phone, mrn=mrn, reason=reason,
        draft_id=draft_id, created_by=actor,
    )
    try:
        session.add(appt)
        session.flush()
        session.add_all(_claims(appt))
        session.flush()
    except IntegrityError as exc:
        raise _taken(session, exc) from None
    session.add(AppointmentHistory(appointment_id=appt.id, from_status=None, to_status="booked",
                                   actor=actor))
    audit.record(session, actor=actor, action="appointment_booked", object_type="appointment",
                 object_id=str(appt.id), patient_ref=mrn,
                 detail={"physician_id": physician_id, "resource_id": resource_id,
                         "type": type_code, "draft_id": draft_id})
    session.flush()
    log.info("booked appointment=%s physician=%s type=%s", appt.id, physician_id, type_code)
    return appt


def _get(session: Session, appointment_id: int) -> Appointment:
    appt = session.get(Appointment, appointment_id)
    if appt is None:
        raise NotFoundError(f"appointment {appointment_id} arrived; expected a known appointment")
    return appt


def set_status(session: Session, appointment_id: int, to_status: str, *, actor: str,
               note: str = "") -> Appointment:
    """Move an appointment along the status flow; ``ConflictError`` for an illegal move."""
    appt = _get(session, appointment_id)
    if to_status not in STATUSES:
        raise ConflictError(f"status {to_status!r} arrived; expected one of {', '.join(STATUSES)}")
    allowed = TRANSITIONS[appt.status]
    if to_status not in allowed:
        raise ConflictError(
            f"appointment {appt.id} cannot go from {appt.status} to {to_status}; allowed from "
            f"{appt.status}: {', '.join(allowed) or 'nothing (final status)'}")
    from_status = appt.status
    appt.status = to_status
    if to_status in _RELEASING:
        session.execute(delete(SlotClaim).where(SlotClaim.appointment_id == appt.id))
    session.add(AppointmentHistory(appointment_id=appt.id, from_status=from_status,
                                   to_status=to_status, actor=actor, note=note[:500]))
    audit.record(session, actor=actor, action="appointment_status", object_type="appointment",
                 object_id=str(appt.id), patient_ref=appt.mrn,
                 detail={"from": from_status, "to": to_status})
    session.flush()
    return appt


def reschedule(session: Session, appointment_id: int, new_start: datetime, *, actor: str,
               options: ScheduleOptions | None = None) -> Appointment:
    """Move a booked or confirmed appointment to ``new_start`` (same length), re-checked."""
    appt = _get(session, appointment_id)
    if appt.status not in ("booked", "confirmed"):
        raise ConflictError(f"appointment {appt.id} is {appt.status}; only booked or confirmed "
                            "appointments can be moved")
    length = as_utc(appt.end_utc) - as_utc(appt.start_utc)
    start = to_utc(new_start)
    end = start + length
    check_on_grid(start, end)
    raise_on_conflicts(check_conflicts(session, appt.physician_id, start, end,
                                       resource_id=appt.resource_id,
                                       exclude_appointment_id=appt.id, options=options))
    old = as_utc(appt.start_utc)
    session.execute(delete(SlotClaim).where(SlotClaim.appointment_id == appt.id))
    appt.start_utc, appt.end_utc = start, end
    try:
        session.flush()
        session.add_all(_claims(appt))
        session.flush()
    except IntegrityError as exc:
        raise _taken(session, exc) from None
    session.add(AppointmentHistory(appointment_id=appt.id, from_status=appt.status,
                                   to_status=appt.status, actor=actor,
                                   note=f"moved from {old.isoformat()} to {start.isoformat()}"))
    audit.record(session, actor=actor, action="appointment_moved", object_type="appointment",
                 object_id=str(appt.id), patient_ref=appt.mrn)
    session.flush()
    return appt


def history(session: Session, appointment_id: int) -> list[AppointmentHistory]:
    """The appointment's status changes, oldest first."""
    return list(session.scalars(
        select(AppointmentHistory).where(AppointmentHistory.appointment_id == appointment_id)
        .order_by(AppointmentHistory.id)))


@dataclass
class ConfirmationCall:
    """One line of the confirmation call list (shown to the secretary; PHI)."""

    appointment_id: int
    physician_id: str
    start_local: datetime
    type_name: str
    patient_name: str | None
    patient_phone: str | None
    status: str


def confirmation_list(session: Session, *, day: date | None = None,
                      physician_ids: list[str] | None = None, now: datetime | None = None,
                      options: ScheduleOptions | None = None) -> list[ConfirmationCall]:
    """Appointments still ``booked`` (not yet confirmed) on ``day`` (default: tomorrow in
    the practice time zone), in start order, each in its physician's local time."""
    from pipeline.secretary.schedule.timeutil import zone

    options = options or ScheduleOptions()
    practice_tz = zone(options.default_timezone)
    now = to_utc(now) if now else datetime.now(practice_tz)
    if day is None:
        day = now.astimezone(practice_tz).date() + timedelta(days=1)
    start, end = local_day_bounds(day, practice_tz)
    # widen by a day either side, then keep the physician-local day (zones may differ)
    stmt = select(Appointment).where(
        Appointment.start_utc >= start - timedelta(days=1),
        Appointment.start_utc < end + timedelta(days=1),
        Appointment.status == "booked",
    ).order_by(Appointment.start_utc)
    if physician_ids is not None:
        stmt = stmt.where(Appointment.physician_id.in_(physician_ids))
    names = {t.code: t.name for t in appointment_types(session)}
    calls = []
    for appt in session.scalars(stmt):
        tz = physician_zone(session, appt.physician_id, options)
        local = as_utc(appt.start_utc).astimezone(tz)
        if local.date() != day:
            continue
        calls.append(ConfirmationCall(appt.id, appt.physician_id, local,
                                      names.get(appt.type_code, appt.type_code),
                                      appt.patient_name, appt.patient_phone, appt.status))
    return calls
