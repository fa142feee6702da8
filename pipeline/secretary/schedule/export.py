"""Calendar exports: iCalendar (.ics) per physician and FHIR R4 Schedule / Slot / Appointment.

Exports carry appointment types, times and statuses. Patient names go into the .ics only
when asked (``include_patient=True``), since calendar files tend to travel to phones.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from icalendar import Calendar, Event
from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.core.db.core import Physician
from pipeline.core.db.schedule import Appointment, AppointmentType, CalendarBlock, Resource
from pipeline.core.errors import NotFoundError
from pipeline.secretary.schedule.calendars import (
    ACTIVE_STATUSES,
    BLOCK_KINDS,
    ScheduleOptions,
    availability,
    busy_items,
)
from pipeline.secretary.schedule.timeutil import as_utc, subtract, to_utc

__all__ = ["export_ics", "fhir_schedule", "fhir_slots", "fhir_appointment", "fhir_bundle"]

_ICS_STATUS = {"booked": "TENTATIVE", "confirmed": "CONFIRMED", "arrived": "CONFIRMED",
               "completed": "CONFIRMED", "cancelled": "CANCELLED", "no_show": "CANCELLED"}
_FHIR_STATUS = {"booked": "booked", "confirmed": "booked", "arrived": "arrived",
                "completed": "fulfilled", "cancelled": "cancelled", "no_show": "noshow"}


def _physician(session: Session, physician_id: str) -> Physician:
    physician = session.get(Physician, physician_id)
    if physician is None:
        raise NotFoundError(f"physician {physician_id!r} arrived; expected a known physician id")
    return physician


def export_ics(session: Session, physician_id: str, start: datetime, end: datetime, *,
               include_patient: bool = False, include_cancelled: bool = False,
               domain: str = "dictation.local") -> bytes:
    """An iCalendar file with the physician's appointments and blocks in ``[start, end)``."""
    physician = _physician(session, physician_id)
    start, end = to_utc(start), to_utc(end)
    names = {t.code: t.name for t in session.scalars(select(AppointmentType))}
    cal = Calendar()
    cal.add("prodid", "-//dictation-pipeline//schedule//EN")
    cal.add("version", "2.0")
    cal.add("x-wr-calname", f"{physician.name or physician.id} appointments")
    stmt = select(Appointment).where(Appointment.physician_id == physician_id,
                                     Appointment.start_utc < end, Appointment.end_utc > start)
    if not include_cancelled:
        stmt = stmt.where(Appointment.status.in_(ACTIVE_STATUSES))
    now = datetime.now(UTC)
    for appt in session.scalars(stmt.order_by(Appointment.start_utc)):
        ev = Event()
        ev.add("uid", f"appointment-{appt.id}@{domain}")
        ev.add("dtstamp", now)
        ev.add("dtstart", as_utc(appt.start_utc))
        ev.add("dtend", as_utc(appt.end_utc))
        summary = names.get(appt.type_code, appt.type_code)
        if include_patient and appt.patient_name:
            summary += f": {appt.patient_name}"
        ev.add("summary", summary)
        ev.add("status", _ICS_STATUS.get(appt.status, "TENTATIVE"))
        ev.add("categories", ["appointment", appt.type_code])
        if appt.resource_id is not None:
            res = session.get(Resource, appt.resource_id)
            if res is not None:
                ev.add("location", res.name)
        cal.add_component(ev)
    bstmt = select(CalendarBlock).where(CalendarBlock.physician_id == physician_id,
                                        CalendarBlock.start_utc < end,
                                        CalendarBlock.end_utc > start)
    for block in session.scalars(bstmt):
        ev = Event()
        ev.add("uid", f"block-{block.id}@{domain}")
        ev.add("dtstamp", now)
        ev.add("dtstart", as_utc(block.start_utc))
        ev.add("dtend", as_utc(block.end_utc))
        ev.add("summary", block.title or BLOCK_KINDS.get(block.kind, block.kind))
        ev.add("transp", "OPAQUE")
        ev.add("categories", [block.kind])
        cal.add_component(ev)
    return cal.to_ical()


def _iso(value: datetime) -> str:
    return as_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def fhir_schedule(session: Session, physician_id: str, start: datetime,
                  end: datetime) -> dict[str, Any]:
    """A FHIR R4 ``Schedule`` for the physician over the planning horizon."""
    physician = _physician(session, physician_id)
    return {
        "resourceType": "Schedule",
        "id": f"schedule-{physician_id}",
        "active": bool(physician.active),
        "actor": [{"reference": f"Practitioner/{physician_id}",
                   "display": physician.name or physician_id}],
        "planningHorizon": {"start": _iso(start), "end": _iso(end)},
    }


def fhir_slots(session: Session, physician_id: str, start: datetime, end: datetime, *,
               options: ScheduleOptions | None = None) -> list[dict[str, Any]]:
    """FHIR R4 ``Slot`` resources: busy for appointments and blocks, free for the rest of
    the working hours in ``[start, end)``."""
    start, end = to_utc(start), to_utc(end)
    windows = availability(session, physician_id, start, end, options)
    items = busy_items(session, start, end, physician_ids=[physician_id])
    slots: list[dict[str, Any]] = []
    ref = {"reference": f"Schedule/schedule-{physician_id}"}
    for item in items:
        status = "busy" if item.kind == "appointment" else "busy-unavailable"
        slots.append({"resourceType": "Slot", "id": f"{item.kind}-{item.ref_id}",
                      "schedule": ref, "status": status,
                      "start": _iso(max(item.start, start)), "end": _iso(min(item.end, end))})
    for s, e in subtract(windows, [(i.start, i.end) for i in items]):
        slots.append({"resourceType": "Slot", "id": f"free-{physician_id}-{int(s.timestamp())}",
                      "schedule": ref, "status": "free", "start": _iso(s), "end": _iso(e)})
    slots.sort(key=lambda s: s["start"])
    return slots


def fhir_appointment(session: Session, appt: Appointment) -> dict[str, Any]:
    """A FHIR R4 ``Appointment`` (patient by MRN identifier when known)."""
    atype = session.get(AppointmentType, appt.type_code)
    participants: list[dict[str, Any]] = [
        {"actor": {"reference": f"Practitioner/{appt.physician_id}"}, "status": "accepted",
         "required": "required"}]
    if appt.mrn:
        participants.append({"actor": {"identifier": {"value": appt.mrn}, "type": "Patient"},
                             "status": "accepted", "required": "required"})
    if appt.resource_id is not None:
        participants.append({"actor": {"reference": f"Device/resource-{appt.resource_id}"},
                             "status": "accepted", "required": "required"})
    start, end = as_utc(appt.start_utc), as_utc(appt.end_utc)
    return {
        "resourceType": "Appointment",
        "id": f"appointment-{appt.id}",
        "status": _FHIR_STATUS.get(appt.status, "booked"),
        "appointmentType": {"coding": [{"system": "urn:dictation-pipeline:appointment-type",
                                        "code": appt.type_code,
                                        "display": atype.name if atype else appt.type_code}]},
        "start": _iso(start),
        "end": _iso(end),
        "minutesDuration": int((end - start) / timedelta(minutes=1)),
        "participant": participants,
    }


def fhir_bundle(session: Session, physician_id: str, start: datetime, end: datetime, *,
                options: ScheduleOptions | None = None) -> dict[str, Any]:
    """A FHIR R4 collection ``Bundle``: the Schedule, its Slots and its Appointments."""
    start, end = to_utc(start), to_utc(end)
    resources: list[dict[str, Any]] = [fhir_schedule(session, physician_id, start, end)]
    resources += fhir_slots(session, physician_id, start, end, options=options)
    stmt = select(Appointment).where(Appointment.physician_id == physician_id,
                                     Appointment.start_utc < end, Appointment.end_utc > start)
    resources += [fhir_appointment(session, a)
                  for a in session.scalars(stmt.order_by(Appointment.start_utc))]
    return {"resourceType": "Bundle", "type": "collection",
            "timestamp": _iso(datetime.now(UTC)),
            "entry": [{"fullUrl": f"urn:uuid:{r['resourceType']}-{r['id']}", "resource": r}
                      for r in resources]}
