"""Conflict detection for a proposed appointment, with messages a secretary can act on.

Checked: the physician or the resource already booked (half-open intervals: an appointment
ending at 10:00 and one starting at 10:00 do not clash), outside the physician's working
hours (weekly template plus dated exceptions), during time off, during on-call duty, during
a meeting, and a resource under maintenance. Times in messages are the physician's local time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.core.db.core import Physician
from pipeline.core.db.schedule import AppointmentType, Resource
from pipeline.core.errors import ConflictError
from pipeline.secretary.schedule.calendars import (
    BLOCK_KINDS,
    ScheduleOptions,
    availability,
    busy_items,
    physician_zone,
)
from pipeline.secretary.schedule.timeutil import covers, local_day_bounds, subtract, to_utc

__all__ = ["Conflict", "check_conflicts", "raise_on_conflicts", "fmt_span"]


@dataclass
class Conflict:
    """One reason a booking cannot go ahead."""

    kind: str  # physician_booked | resource_booked | outside_availability | time_off | on_call
    #            | meeting | resource_blocked
    message: str
    ref_id: int | None = None


def fmt_span(start: datetime, end: datetime, tz: ZoneInfo) -> str:
    """'Mon 2027-03-08 09:00-09:30' in ``tz`` (the end date added when it differs)."""
    s, e = start.astimezone(tz), end.astimezone(tz)
    text = s.strftime("%a %Y-%m-%d %H:%M") + "-"
    text += e.strftime("%H:%M") if e.date() == s.date() else e.strftime("%a %Y-%m-%d %H:%M")
    return text + f" {s.tzname()}"


def check_conflicts(session: Session, physician_id: str, start: datetime, end: datetime, *,
                    resource_id: int | None = None, exclude_appointment_id: int | None = None,
                    check_availability: bool = True,
                    options: ScheduleOptions | None = None) -> list[Conflict]:
    """Every conflict of an appointment ``[start, end)`` for the physician (and resource)."""
    options = options or ScheduleOptions()
    start, end = to_utc(start), to_utc(end)
    tz = physician_zone(session, physician_id, options)
    physician = session.get(Physician, physician_id)
    who = physician.name if physician and physician.name else physician_id
    conflicts: list[Conflict] = []
    names = {t.code: t.name for t in session.scalars(select(AppointmentType))}
    resource = session.get(Resource, resource_id) if resource_id is not None else None
    if resource_id is not None and resource is None:
        conflicts.append(Conflict("resource_unknown", f"resource {resource_id} does not exist"))
        resource_id = None

    items = busy_items(session, start, end, physician_ids=[physician_id],
                       resource_ids=[resource_id] if resource_id is not None else None,
                       exclude_appointment_id=exclude_appointment_id)
    for item in items:
        span = fmt_span(item.start, item.end, tz)
        if item.kind == "appointment":
            label = names.get(item.label, item.label)
            if item.physician_id == physician_id:
                conflicts.append(Conflict(
                    "physician_booked",
                    f"{who} is already booked {span} (appointment {item.ref_id}, {label})",
                    item.ref_id))
            if resource is not None and item.resource_id == resource_id:
                conflicts.append(Conflict(
                    "resource_booked",
                    f"{resource.name} is already booked {span} (appointment {item.ref_id}, "
                    f"{label})", item.ref_id))
        elif item.physician_id == physician_id:
            what = BLOCK_KINDS.get(item.kind, item.kind)
            if item.kind == "time_off":
                conflicts.append(Conflict(
                    "time_off", f"{who} is on time off {span}" + (" (all day)" if (
                        item.start, item.end) == local_day_bounds(item.start.astimezone(tz).date(),
                                                                  tz) else ""), item.ref_id))
            elif item.kind == "on_call":
                conflicts.append(Conflict("on_call", f"{who} is on call {span}", item.ref_id))
            else:
                conflicts.append(Conflict(item.kind, f"{who} has {what} {span}", item.ref_id))
        elif resource is not None and item.resource_id == resource_id:
            what = BLOCK_KINDS.get(item.kind, item.kind)
            conflicts.append(Conflict("resource_blocked",
                                      f"{resource.name} is unavailable ({what}) {span}",
                                      item.ref_id))

    if check_availability:
        windows = availability(session, physician_id, start, end, options)
        if not covers(windows, (start, end)):
            outside = subtract([(start, end)], windows)
            day_start, day_end = local_day_bounds(start.astimezone(tz).date(), tz)
            day_windows = availability(session, physician_id, day_start, day_end, options)
            hours = ", ".join(
                f"{s.astimezone(tz):%H:%M}-{e.astimezone(tz):%H:%M}" for s, e in day_windows
            ) or "none"
            conflicts.append(Conflict(
                "outside_availability",
                f"{fmt_span(outside[0][0], outside[-1][1], tz)} is outside {who}'s working hours "
                f"(that day: {hours})"))
    return conflicts


def raise_on_conflicts(conflicts: list[Conflict]) -> None:
    """Raise one ``ConflictError`` listing every conflict (``.conflicts`` holds them)."""
    if not conflicts:
        return
    error = ConflictError("cannot book: " + "; ".join(c.message for c in conflicts) + ".")
    error.conflicts = conflicts  # type: ignore[attr-defined]
    raise error
