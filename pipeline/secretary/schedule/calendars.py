"""Calendars: locations, resources, weekly availability with dated exceptions, time off,
on-call duty and meetings, and the master schedule across physicians.

Weekly availability is kept as local wall-clock windows and expanded per local date with
the physician's time zone (``Physician.timezone``, else the practice's ``settings.timezone``),
so "Mon 09:00-17:00" stays 09:00 local on both sides of a daylight-saving change.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import literal, or_, select
from sqlalchemy.orm import Session

from pipeline.core import audit
from pipeline.core.db.core import Physician
from pipeline.core.db.schedule import (
    Appointment,
    AvailabilityException,
    AvailabilityRule,
    CalendarBlock,
    Location,
    Resource,
)
from pipeline.core.errors import ConflictError, NotFoundError
from pipeline.secretary.schedule.timeutil import (
    Interval,
    as_utc,
    local_day_bounds,
    local_to_utc,
    merge,
    subtract,
    to_utc,
    zone,
)

__all__ = [
    "ScheduleOptions",
    "BLOCK_KINDS",
    "ACTIVE_STATUSES",
    "WEEKDAYS",
    "physician_zone",
    "physician_zones",
    "add_location",
    "add_resource",
    "add_availability",
    "add_exception",
    "add_block",
    "add_time_off",
    "remove_availability",
    "remove_block",
    "add_on_call",
    "add_meeting",
    "availability",
    "availability_many",
    "busy_items",
    "BusyItem",
    "master_schedule",
    "CalendarEntry",
]

log = logging.getLogger(__name__)

#: Kinds of calendar blocks and how a clash with each is described.
BLOCK_KINDS = {
    "time_off": "time off",
    "on_call": "on-call duty",
    "meeting": "a meeting",
    "maintenance": "maintenance",
}
#: Appointment statuses that hold the physician's and resource's time.
ACTIVE_STATUSES = ("booked", "confirmed", "arrived", "completed")
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


@dataclass
class ScheduleOptions:
    """Scheduling options (defaults; ``from_settings`` reads the practice time zone)."""

    default_timezone: str = "UTC"
    search_horizon_days: int = 180
    search_chunk_days: int = 14
    #: follow-up proposals: how many slots, and how many days before the target date to start
    proposals: int = 3
    proposal_lead_days: int = 2

    @classmethod
    def from_settings(cls, settings: Any) -> ScheduleOptions:
        """Options for ``settings`` (the practice time zone)."""
        return cls(default_timezone=getattr(settings, "timezone", "UTC") or "UTC")


def physician_zone(session: Session, physician_id: str, options: ScheduleOptions) -> ZoneInfo:
    """The physician's time zone, else the practice default; ``NotFoundError`` if unknown."""
    physician = session.get(Physician, physician_id)
    if physician is None:
        raise NotFoundError(f"physician {physician_id!r} arrived; expected a known physician id")
    return zone(physician.timezone, options.default_timezone)


def physician_zones(session: Session, physician_ids: list[str],
                    options: ScheduleOptions) -> dict[str, ZoneInfo]:
    """Time zones of several physicians in one query; ``NotFoundError`` for unknown ids."""
    rows = dict(session.execute(select(Physician.id, Physician.timezone)
                                .where(Physician.id.in_(physician_ids))).all())
    missing = [p for p in physician_ids if p not in rows]
    if missing:
        raise NotFoundError(f"physician {missing[0]!r} arrived; expected a known physician id")
    return {pid: zone(rows[pid], options.default_timezone) for pid in physician_ids}


# --- directory --------------------------------------------------------------------------


def add_location(session: Session, name: str, *, address: str = "",
                 timezone: str | None = None) -> Location:
    """Create a location (validating its time zone)."""
    if timezone:
        zone(timezone)
    loc = Location(name=name, address=address, timezone=timezone)
    session.add(loc)
    session.flush()
    return loc


def add_resource(session: Session, name: str, kind: str, *,
                 location_id: int | None = None) -> Resource:
    """Create a bookable resource (an operating room, an ultrasound...)."""
    res = Resource(name=name, kind=kind, location_id=location_id)
    session.add(res)
    session.flush()
    return res


def _hm(value: time | str) -> time:
    if isinstance(value, time):
        return value
    try:
        return time.fromisoformat(value)
    except ValueError as exc:
        raise ConflictError(f"the time {value!r} arrived; expected HH:MM") from exc


def add_availability(session: Session, physician_id: str, weekday: int, start: time | str,
                     end: time | str, *, location_id: int | None = None,
                     valid_from: date | None = None, valid_until: date | None = None
                     ) -> AvailabilityRule:
    """Add a weekly window (weekday 0 = Monday) in the physician's local time.

    An end at or before the start means the window runs past midnight.
    """
    if not 0 <= weekday <= 6:
        raise ConflictError(f"weekday {weekday} arrived; expected 0 (Monday) to 6 (Sunday)")
    if session.get(Physician, physician_id) is None:
        raise NotFoundError(f"physician {physician_id!r} arrived; expected a known physician id")
    rule = AvailabilityRule(physician_id=physician_id, weekday=weekday, start_local=_hm(start),
                            end_local=_hm(end), location_id=location_id,
                            valid_from=valid_from, valid_until=valid_until)
    session.add(rule)
    session.flush()
    return rule


def add_exception(session: Session, physician_id: str, day: date, kind: str, *,
                  start: time | str | None = None, end: time | str | None = None,
                  reason: str = "") -> AvailabilityException:
    """Override the template on ``day``: ``closed`` (all day or a window) or ``open`` (extra)."""
    if kind not in ("closed", "open"):
        raise ConflictError(f"exception kind {kind!r} arrived; expected 'closed' or 'open'")
    if kind == "open" and (start is None or end is None):
        raise ConflictError("an 'open' exception arrived without times; expected start and end")
    exc = AvailabilityException(
        physician_id=physician_id, day=day, kind=kind,
        start_local=_hm(start) if start is not None else None,
        end_local=_hm(end) if end is not None else None, reason=reason)
    session.add(exc)
    session.flush()
    return exc


def add_block(session: Session, kind: str, start: datetime, end: datetime, *,
              physician_id: str | None = None, resource_id: int | None = None,
              all_day: bool = False, title: str = "", actor: str = "system") -> CalendarBlock:
    """Add busy time (time off, on-call, meeting, maintenance) for a physician or resource."""
    if kind not in BLOCK_KINDS:
        raise ConflictError(f"block kind {kind!r} arrived; expected one of {sorted(BLOCK_KINDS)}")
    if physician_id is None and resource_id is None:
        raise ConflictError("a calendar block arrived without a physician or resource")
    start, end = to_utc(start), to_utc(end)
    if end <= start:
        raise ConflictError("a calendar block arrived with its end before its start")
    block = CalendarBlock(kind=kind, start_utc=start, end_utc=end, physician_id=physician_id,
                          resource_id=resource_id, all_day=all_day, title=title, created_by=actor)
    session.add(block)
    session.flush()
    audit.record(session, actor=actor, action=f"calendar_{kind}", object_type="calendar_block",
                 object_id=str(block.id),
                 detail={"physician_id": physician_id, "resource_id": resource_id})
    return block


def add_time_off(session: Session, physician_id: str, first_day: date, last_day: date | None
                 = None, *, options: ScheduleOptions | None = None, start: datetime | None = None,
                 end: datetime | None = None, title: str = "Time off",
                 actor: str = "system") -> CalendarBlock:
    """Time off: whole local days ``first_day``..``last_day`` (all-day), or ``start``-``end``."""
    options = options or ScheduleOptions()
    if start is not None and end is not None:
        return add_block(session, "time_off", start, end, physician_id=physician_id,
                         title=title, actor=actor)
    tz = physician_zone(session, physician_id, options)
    s, _ = local_day_bounds(first_day, tz)
    _, e = local_day_bounds(last_day or first_day, tz)
    return add_block(session, "time_off", s, e, physician_id=physician_id, all_day=True,
                     title=title, actor=actor)


def add_on_call(session: Session, physician_id: str, start: datetime, end: datetime, *,
                title: str = "On call", actor: str = "system") -> CalendarBlock:
    """An on-call shift on the rota: no clinic appointments during it."""
    return add_block(session, "on_call", start, end, physician_id=physician_id, title=title,
                     actor=actor)


def add_meeting(session: Session, physician_ids: list[str], start: datetime, end: datetime, *,
                title: str = "Meeting", actor: str = "system") -> list[CalendarBlock]:
    """A meeting for one or several physicians (one block each)."""
    return [add_block(session, "meeting", start, end, physician_id=p, title=title, actor=actor)
            for p in physician_ids]


def remove_availability(session: Session, rule_id: int) -> AvailabilityRule:
    """Delete one weekly working-hours window; returns the deleted row."""
    rule = session.get(AvailabilityRule, rule_id)
    if rule is None:
        raise NotFoundError(f"working-hours rule {rule_id} arrived; expected an existing one")
    session.delete(rule)
    session.flush()
    return rule


def remove_block(session: Session, block_id: int, *, actor: str = "system") -> CalendarBlock:
    """Delete a calendar block (time off, on-call...): audited; returns the deleted row."""
    block = session.get(CalendarBlock, block_id)
    if block is None:
        raise NotFoundError(f"calendar block {block_id} arrived; expected an existing one")
    session.delete(block)
    session.flush()
    audit.record(session, actor=actor, action=f"calendar_{block.kind}_removed",
                 object_type="calendar_block", object_id=str(block_id),
                 detail={"physician_id": block.physician_id, "resource_id": block.resource_id})
    return block


# --- availability -----------------------------------------------------------------------


@dataclass
class _Template:
    rules: dict[int, list[AvailabilityRule]] = field(default_factory=lambda: defaultdict(list))
    exceptions: dict[date, list[AvailabilityException]] = field(
        default_factory=lambda: defaultdict(list))


def _load_templates(session: Session, physician_ids: list[str], first: date,
                    last: date) -> dict[str, _Template]:
    """Weekly rules and the dated exceptions in ``[first, last]`` of several physicians
    (two queries in all)."""
    tpls = {pid: _Template() for pid in physician_ids}
    for rule in session.scalars(
        select(AvailabilityRule).where(AvailabilityRule.physician_id.in_(physician_ids))
    ):
        tpls[rule.physician_id].rules[rule.weekday].append(rule)
    for exc in session.scalars(
        select(AvailabilityException).where(
            AvailabilityException.physician_id.in_(physician_ids),
            AvailabilityException.day >= first, AvailabilityException.day <= last)
    ):
        tpls[exc.physician_id].exceptions[exc.day].append(exc)
    return tpls


def _window(day: date, start: time, end: time, tz: ZoneInfo) -> Interval:
    s = local_to_utc(day, start, tz)
    end_day = day if end > start else day + timedelta(days=1)
    return s, local_to_utc(end_day, end, tz)


def _day_windows(day: date, tpl: _Template, tz: ZoneInfo) -> list[Interval]:
    windows = [
        _window(day, r.start_local, r.end_local, tz)
        for r in tpl.rules.get(day.weekday(), [])
        if (r.valid_from is None or r.valid_from <= day)
        and (r.valid_until is None or day <= r.valid_until)
    ]
    closed: list[Interval] = []
    for exc in tpl.exceptions.get(day, []):
        if exc.kind == "open" and exc.start_local and exc.end_local:
            windows.append(_window(day, exc.start_local, exc.end_local, tz))
    for exc in tpl.exceptions.get(day, []):
        if exc.kind == "closed":
            if exc.start_local is None or exc.end_local is None:
                closed.append(local_day_bounds(day, tz))
            else:
                closed.append(_window(day, exc.start_local, exc.end_local, tz))
    return subtract(windows, closed)


def availability(session: Session, physician_id: str, start: datetime, end: datetime,
                 options: ScheduleOptions | None = None) -> list[Interval]:
    """The physician's working windows within ``[start, end)`` (UTC), exceptions applied.

    Time off and other blocks are *not* removed here; see ``busy_items``.
    """
    return availability_many(session, [physician_id], start, end, options)[physician_id]


def availability_many(session: Session, physician_ids: list[str], start: datetime,
                      end: datetime, options: ScheduleOptions | None = None, *,
                      preloaded: tuple[dict[str, ZoneInfo], dict[str, _Template]] | None = None
                      ) -> dict[str, list[Interval]]:
    """``availability`` for several physicians at once (each in their own time zone).

    ``preloaded`` (from ``preload_templates``) saves the queries when called repeatedly.
    """
    options = options or ScheduleOptions()
    start, end = to_utc(start), to_utc(end)
    zones, tpls = preloaded or preload_templates(session, physician_ids, start, end, options)
    result: dict[str, list[Interval]] = {}
    for pid in physician_ids:
        tz, tpl = zones[pid], tpls[pid]
        out: list[Interval] = []
        day = start.astimezone(tz).date() - timedelta(days=1)
        stop = end.astimezone(tz).date()
        while day <= stop:
            for s, e in _day_windows(day, tpl, tz):
                s2, e2 = max(s, start), min(e, end)
                if s2 < e2:
                    out.append((s2, e2))
            day += timedelta(days=1)
        result[pid] = merge(out)
    return result


def preload_templates(session: Session, physician_ids: list[str], start: datetime,
                      end: datetime, options: ScheduleOptions
                      ) -> tuple[dict[str, ZoneInfo], dict[str, _Template]]:
    """Zones and availability templates (exceptions within ``[start, end)``) of physicians."""
    zones = physician_zones(session, physician_ids, options)
    first = min(to_utc(start).astimezone(tz).date() for tz in zones.values()) - timedelta(days=1)
    last = max(to_utc(end).astimezone(tz).date() for tz in zones.values())
    return zones, _load_templates(session, physician_ids, first, last)


# --- busy time --------------------------------------------------------------------------


@dataclass
class BusyItem:
    """Something holding a physician's or resource's time."""

    kind: str  # appointment | time_off | on_call | meeting | maintenance
    start: datetime
    end: datetime
    ref_id: int
    physician_id: str | None = None
    resource_id: int | None = None
    label: str = ""


#: The longest appointment we accept; bounds the overlap query from below (index range scan).
MAX_APPOINTMENT = timedelta(hours=24)


def busy_items(session: Session, start: datetime, end: datetime, *,
               physician_ids: list[str] | None = None, resource_ids: list[int] | None = None,
               exclude_appointment_id: int | None = None) -> list[BusyItem]:
    """Appointments (active statuses) and blocks overlapping ``[start, end)`` for the owners."""
    start, end = to_utc(start), to_utc(end)
    items: list[BusyItem] = []
    owners = []
    if physician_ids:
        owners.append(Appointment.physician_id.in_(physician_ids))
    if resource_ids:
        owners.append(Appointment.resource_id.in_(resource_ids))
    if not owners:
        return items
    stmt = select(
        Appointment.id, Appointment.start_utc, Appointment.end_utc, Appointment.physician_id,
        Appointment.resource_id, Appointment.type_code,
    ).where(
        or_(*owners),
        Appointment.start_utc < end,
        Appointment.start_utc > start - MAX_APPOINTMENT,
        Appointment.end_utc > start,
        Appointment.status.in_(ACTIVE_STATUSES),
    )
    if exclude_appointment_id is not None:
        stmt = stmt.where(Appointment.id != exclude_appointment_id)
    for aid, s, e, pid, rid, code in session.execute(stmt):
        items.append(BusyItem("appointment", as_utc(s), as_utc(e), aid, pid, rid, code))
    block_owners = []
    if physician_ids:
        block_owners.append(CalendarBlock.physician_id.in_(physician_ids))
    if resource_ids:
        block_owners.append(CalendarBlock.resource_id.in_(resource_ids))
    bstmt = select(
        CalendarBlock.kind, CalendarBlock.start_utc, CalendarBlock.end_utc, CalendarBlock.id,
        CalendarBlock.physician_id, CalendarBlock.resource_id, CalendarBlock.title,
    ).where(or_(*block_owners), CalendarBlock.start_utc < end, CalendarBlock.end_utc > start)
    for row in session.execute(bstmt):
        items.append(BusyItem(row[0], as_utc(row[1]), as_utc(row[2]), row[3], row[4], row[5],
                              row[6]))
    items.sort(key=lambda i: (i.start, i.end))
    return items


# --- master schedule --------------------------------------------------------------------


@dataclass
class CalendarEntry:
    """One row of a calendar view: an appointment or a block, with local times."""

    kind: str
    ref_id: int
    physician_id: str | None
    resource_id: int | None
    start: datetime  # local
    end: datetime  # local
    title: str
    status: str = ""
    all_day: bool = False
    patient: str | None = None  # only with ``with_patient=True`` (PHI)


def master_schedule(session: Session, start: datetime, end: datetime, *,
                    physician_ids: list[str] | None = None, tz: ZoneInfo | None = None,
                    include_cancelled: bool = False, with_patient: bool = False,
                    resource_ids: list[int] | None = None) -> list[CalendarEntry]:
    """Every appointment and block in ``[start, end)`` for the physicians (all when None)
    or, with ``resource_ids``, for those resources; in display time zone ``tz``, sorted by
    start. Patient names only with ``with_patient``."""
    from pipeline.core.db.schedule import AppointmentType

    start, end = to_utc(start), to_utc(end)
    tz = tz or zone("UTC")
    names = {t.code: t.name for t in session.scalars(select(AppointmentType))}
    stmt = select(Appointment.id, Appointment.physician_id, Appointment.resource_id,
                  Appointment.start_utc, Appointment.end_utc, Appointment.type_code,
                  Appointment.status,
                  Appointment.patient_name if with_patient else literal(None)).where(
        Appointment.start_utc < end, Appointment.end_utc > start,
        Appointment.start_utc > start - MAX_APPOINTMENT)
    if resource_ids is not None:
        stmt = stmt.where(Appointment.resource_id.in_(resource_ids))
    elif physician_ids is not None:
        stmt = stmt.where(Appointment.physician_id.in_(physician_ids))
    if not include_cancelled:
        stmt = stmt.where(Appointment.status.in_((*ACTIVE_STATUSES, "no_show")))
    entries = [
        CalendarEntry("appointment", row[0], row[1], row[2], as_utc(row[3]).astimezone(tz),
                      as_utc(row[4]).astimezone(tz), names.get(row[5], row[5]), row[6],
                      patient=row[7])
        for row in session.execute(stmt)
    ]
    bstmt = select(CalendarBlock).where(CalendarBlock.start_utc < end,
                                        CalendarBlock.end_utc > start)
    if resource_ids is not None:
        bstmt = bstmt.where(CalendarBlock.resource_id.in_(resource_ids))
    elif physician_ids is not None:
        bstmt = bstmt.where(CalendarBlock.physician_id.in_(physician_ids))
    entries += [
        CalendarEntry(b.kind, b.id, b.physician_id, b.resource_id,
                      as_utc(b.start_utc).astimezone(tz), as_utc(b.end_utc).astimezone(tz),
                      b.title or BLOCK_KINDS.get(b.kind, b.kind), all_day=b.all_day)
        for b in session.scalars(bstmt)
    ]
    entries.sort(key=lambda e: (e.start, e.physician_id or "", e.kind))
    return entries
