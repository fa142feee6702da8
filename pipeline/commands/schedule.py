"""``dictation schedule ...``: calendars, appointments, tasks and routing from the shell.

Times are the physician's local wall-clock time (``YYYY-MM-DD`` and ``HH:MM``, or
``YYYY-MM-DDTHH:MM``); the physician's zone is ``physicians.timezone`` (set with
``schedule physician``), else ``DICTATION_TIMEZONE``.
"""

from __future__ import annotations

import argparse
import getpass
import json
from datetime import date, datetime, time, timedelta
from pathlib import Path

from sqlalchemy import select

from pipeline.core.db.core import DraftRow, Physician
from pipeline.core.db.schedule import AvailabilityRule, Recipient, Resource
from pipeline.core.errors import ConflictError, NotFoundError
from pipeline.core.settings import get_settings
from pipeline.core.store import open_store
from pipeline.secretary import route, schedule, tasks
from pipeline.secretary.schedule.calendars import WEEKDAYS, ScheduleOptions, physician_zone
from pipeline.secretary.schedule.timeutil import local_day_bounds, local_to_utc, zone

__all__ = ["register"]


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in some containers
        return "cli"


def _weekday(value: str) -> int:
    v = value.strip().lower()[:3]
    names = [w.lower() for w in WEEKDAYS]
    if v in names:
        return names.index(v)
    if v.isdigit() and 0 <= int(v) <= 6:
        return int(v)
    raise ConflictError(f"weekday {value!r} arrived; expected mon..sun or 0..6")


def _local(s, pid: str, value: str, opts: ScheduleOptions) -> datetime:
    tz = physician_zone(s, pid, opts)
    try:
        naive = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ConflictError(f"the time {value!r} arrived; expected YYYY-MM-DDTHH:MM") from exc
    return local_to_utc(naive.date(), naive.time(), tz)


def _day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ConflictError(f"the date {value!r} arrived; expected YYYY-MM-DD") from exc


def _ctx():  # type: ignore[no-untyped-def]
    settings = get_settings()
    return settings, open_store(settings), ScheduleOptions.from_settings(settings)


def _physician(args: argparse.Namespace) -> int:
    settings, store, _ = _ctx()
    with store.session() as s:
        p = s.get(Physician, args.physician)
        if p is None:
            p = Physician(id=args.physician, name=args.physician)
            s.add(p)
        if args.name:
            p.name = args.name
        if args.timezone:
            zone(args.timezone)
            p.timezone = args.timezone
        if args.specialty:
            p.specialty = args.specialty
        print(f"{p.id}: {p.name} tz={p.timezone or settings.timezone + ' (practice)'}")
    return 0


def _location_add(args: argparse.Namespace) -> int:
    _, store, _ = _ctx()
    with store.session() as s:
        loc = schedule.add_location(s, args.name, address=args.address or "",
                                    timezone=args.timezone)
        print(f"location {loc.id}: {loc.name}")
    return 0


def _resource_add(args: argparse.Namespace) -> int:
    _, store, _ = _ctx()
    with store.session() as s:
        res = schedule.add_resource(s, args.name, args.kind, location_id=args.location)
        print(f"resource {res.id}: {res.name} ({res.kind})")
    return 0


def _resource_list(args: argparse.Namespace) -> int:
    _, store, _ = _ctx()
    with store.session() as s:
        for r in s.scalars(select(Resource).order_by(Resource.id)):
            print(f"{r.id:>4} {r.kind:<16} {r.name}{'' if r.active else ' (inactive)'}")
    return 0


def _availability_add(args: argparse.Namespace) -> int:
    _, store, _ = _ctx()
    with store.session() as s:
        for wd in args.weekdays.split(","):
            rule = schedule.add_availability(
                s, args.physician, _weekday(wd), args.start, args.end,
                valid_from=_day(args.valid_from) if args.valid_from else None,
                valid_until=_day(args.valid_until) if args.valid_until else None)
            print(f"rule {rule.id}: {args.physician} {WEEKDAYS[rule.weekday]} "
                  f"{rule.start_local:%H:%M}-{rule.end_local:%H:%M}")
    return 0


def _availability_list(args: argparse.Namespace) -> int:
    _, store, _ = _ctx()
    with store.session() as s:
        for r in s.scalars(select(AvailabilityRule).where(
                AvailabilityRule.physician_id == args.physician)
                .order_by(AvailabilityRule.weekday, AvailabilityRule.start_local)):
            span = f" {r.valid_from or '...'}..{r.valid_until or '...'}" \
                if r.valid_from or r.valid_until else ""
            print(f"{r.id:>4} {WEEKDAYS[r.weekday]} {r.start_local:%H:%M}-{r.end_local:%H:%M}"
                  f"{span}")
    return 0


def _exception_add(args: argparse.Namespace) -> int:
    _, store, _ = _ctx()
    with store.session() as s:
        exc = schedule.add_exception(s, args.physician, _day(args.day), args.kind,
                                     start=args.start, end=args.end, reason=args.reason or "")
        print(f"exception {exc.id}: {args.physician} {exc.day} {exc.kind}")
    return 0


def _timeoff(args: argparse.Namespace) -> int:
    _, store, opts = _ctx()
    with store.session() as s:
        block = schedule.add_time_off(s, args.physician, _day(args.first),
                                      _day(args.last) if args.last else None, options=opts,
                                      actor=_actor())
        print(f"time off {block.id}: {args.physician} {args.first}..{args.last or args.first}")
    return 0


def _oncall(args: argparse.Namespace) -> int:
    _, store, opts = _ctx()
    with store.session() as s:
        block = schedule.add_on_call(s, args.physician, _local(s, args.physician, args.start,
                                                               opts),
                                     _local(s, args.physician, args.end, opts), actor=_actor())
        print(f"on call {block.id}: {args.physician}")
    return 0


def _meeting(args: argparse.Namespace) -> int:
    _, store, opts = _ctx()
    with store.session() as s:
        first = args.physicians[0]
        blocks = schedule.add_meeting(s, args.physicians, _local(s, first, args.start, opts),
                                      _local(s, first, args.end, opts), title=args.title,
                                      actor=_actor())
        print(f"meeting for {len(blocks)} physician(s)")
    return 0


def _book(args: argparse.Namespace) -> int:
    _, store, opts = _ctx()
    with store.session() as s:
        start = _local(s, args.physician, f"{args.date}T{args.time}", opts)
        appt = schedule.book(s, physician_id=args.physician, start=start, type_code=args.type,
                             duration_min=args.duration, resource_id=args.resource,
                             patient_name=args.patient, patient_phone=args.phone, mrn=args.mrn,
                             reason=args.reason or "", actor=_actor(), options=opts)
        print(f"appointment {appt.id} booked")
    return 0


def _status(args: argparse.Namespace) -> int:
    _, store, _ = _ctx()
    with store.session() as s:
        appt = schedule.set_status(s, args.appointment, args.status, actor=_actor(),
                                   note=args.note or "")
        print(f"appointment {appt.id}: {appt.status}")
    return 0


def _list(args: argparse.Namespace) -> int:
    settings, store, opts = _ctx()
    with store.session() as s:
        ids = [args.physician] if args.physician else list(s.scalars(select(Physician.id)))
        tz = physician_zone(s, args.physician, opts) if args.physician \
            else zone(settings.timezone)
        first = _day(args.date) if args.date else datetime.now(tz).date()
        start, _ = local_day_bounds(first, tz)
        _, end = local_day_bounds(first + timedelta(days=args.days - 1), tz)
        for e in schedule.master_schedule(s, start, end, physician_ids=ids, tz=tz):
            what = f"appointment {e.ref_id} {e.title} [{e.status}]" if e.kind == "appointment" \
                else f"{e.kind} {e.title}"
            when = f"{e.start:%a %Y-%m-%d} all day" if e.all_day \
                else f"{e.start:%a %Y-%m-%d %H:%M}-{e.end:%H:%M}"
            print(f"{when} {e.physician_id or '-':<12} {what}")
    return 0


def _rota(args: argparse.Namespace) -> int:
    settings, store, _ = _ctx()
    with store.session() as s:
        tz = zone(settings.timezone)
        start, _ = local_day_bounds(datetime.now(tz).date(), tz)
        for e in schedule.master_schedule(s, start, start + timedelta(weeks=args.weeks), tz=tz):
            if e.kind == "on_call":
                print(f"{e.start:%a %Y-%m-%d %H:%M} - {e.end:%a %Y-%m-%d %H:%M} "
                      f"{e.physician_id}")
    return 0


def _free(args: argparse.Namespace) -> int:
    settings, store, opts = _ctx()
    with store.session() as s:
        atype = schedule.get_type(s, args.type)
        ids = args.physician or list(s.scalars(select(Physician.id).where(Physician.active)))
        tz = zone(settings.timezone)
        after = local_to_utc(_day(args.after), time(0), tz) if args.after else datetime.now(tz)
        slots = schedule.find_free_slots(
            s, physician_ids=ids, duration_min=args.duration or atype.duration_min, after=after,
            limit=args.limit, resource_ids=args.resource or None,
            resource_kind=args.resource_kind, options=opts)
        for sl in slots:
            local = sl.start.astimezone(physician_zone(s, sl.physician_id, opts))
            res = f" resource {sl.resource_id}" if sl.resource_id else ""
            print(f"{local:%a %Y-%m-%d %H:%M %Z} {sl.physician_id}{res}")
        if not slots:
            print("no free slot in the search horizon")
    return 0


def _confirmations(args: argparse.Namespace) -> int:
    _, store, opts = _ctx()
    with store.session() as s:
        calls = schedule.confirmation_list(s, day=_day(args.date) if args.date else None,
                                           options=opts)
        for c in calls:
            print(f"{c.start_local:%H:%M} {c.physician_id:<12} appointment {c.appointment_id} "
                  f"{c.type_name}: {c.patient_name or '-'} {c.patient_phone or '-'}")
        print(f"{len(calls)} to call")
    return 0


def _export(args: argparse.Namespace) -> int:
    settings, store, opts = _ctx()
    with store.session() as s:
        tz = zone(settings.timezone)
        start = datetime.now(tz) - timedelta(days=7)
        end = start + timedelta(days=args.days + 7)
        if args.format == "ics":
            data = schedule.export_ics(s, args.physician, start, end,
                                       include_patient=args.include_patient)
        else:
            data = json.dumps(schedule.fhir_bundle(s, args.physician, start, end, options=opts),
                              indent=1).encode()
    if args.out:
        Path(args.out).write_bytes(data)
        print(f"wrote {args.out}")
    else:
        print(data.decode())
    return 0


def _recipient_add(args: argparse.Namespace) -> int:
    _, store, _ = _ctx()
    with store.session() as s:
        rec = route.add_recipient(s, args.name, args.kind, args.channel, args.address or "",
                                  organization=args.organization or "",
                                  specialty=args.specialty, actor=_actor())
        print(f"recipient {rec.id}: {rec.name} via {rec.channel}")
    return 0


def _recipient_list(args: argparse.Namespace) -> int:
    _, store, _ = _ctx()
    with store.session() as s:
        for r in s.scalars(select(Recipient).order_by(Recipient.name)):
            print(f"{r.id:>4} {r.name:<30} {r.kind:<20} {r.channel:<11} {r.address}")
    return 0


def _deliver(args: argparse.Namespace) -> int:
    import time as _time

    settings = get_settings()
    while True:
        report = route.deliver_due(settings, actor=_actor())
        print(f"delivered {len(report.delivered)}, retrying {len(report.retrying)}, failed "
              f"{len(report.failed)}, waiting for signature "
              f"{len(report.waiting_for_signature)}", flush=True)
        if not args.every:
            return 1 if report.failed else 0
        _time.sleep(args.every)


def _tasks(args: argparse.Namespace) -> int:
    _, store, opts = _ctx()
    with store.session() as s:
        if args.from_draft:
            draft = s.get(DraftRow, args.from_draft)
            if draft is None:
                raise NotFoundError(f"draft {args.from_draft} arrived; expected a known draft")
            made = tasks.tasks_from_draft(s, draft, actor=_actor(),
                                          options=tasks.TaskOptions(schedule=opts))
            print(f"{len(made)} task(s) for draft {draft.id}")
        for t in tasks.task_list(s, include_closed=args.all):
            print(f"{t.id:>5} due {t.due_date} {t.kind:<8} {t.status:<18} "
                  f"{t.owner or 'unassigned':<12} {t.title}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``schedule`` command."""
    parser = subparsers.add_parser("schedule", help="calendars, appointments, tasks, routing")
    sub = parser.add_subparsers(dest="schedule_command", metavar="ACTION", required=True)

    p = sub.add_parser("physician", help="set a physician's name, time zone, specialty")
    p.add_argument("physician")
    p.add_argument("--name")
    p.add_argument("--timezone", help="IANA zone, e.g. America/New_York")
    p.add_argument("--specialty")
    p.set_defaults(func=_physician)

    p = sub.add_parser("location", help="add a location")
    p.add_argument("name")
    p.add_argument("--address")
    p.add_argument("--timezone")
    p.set_defaults(func=_location_add)

    p = sub.add_parser("resource", help="add a resource (operating_room, ultrasound, ...)")
    p.add_argument("name")
    p.add_argument("kind")
    p.add_argument("--location", type=int)
    p.set_defaults(func=_resource_add)
    p = sub.add_parser("resources", help="list resources")
    p.set_defaults(func=_resource_list)

    p = sub.add_parser("availability", help="add weekly availability (local time)")
    p.add_argument("physician")
    p.add_argument("weekdays", help="e.g. mon,tue,wed or 0,1,2")
    p.add_argument("start", help="HH:MM")
    p.add_argument("end", help="HH:MM (at or before start: runs past midnight)")
    p.add_argument("--valid-from")
    p.add_argument("--valid-until")
    p.set_defaults(func=_availability_add)
    p = sub.add_parser("availability-list", help="list a physician's weekly template")
    p.add_argument("physician")
    p.set_defaults(func=_availability_list)

    p = sub.add_parser("exception", help="dated override: closed (all day or window) or open")
    p.add_argument("physician")
    p.add_argument("day", help="YYYY-MM-DD")
    p.add_argument("kind", choices=["closed", "open"])
    p.add_argument("--start")
    p.add_argument("--end")
    p.add_argument("--reason")
    p.set_defaults(func=_exception_add)

    p = sub.add_parser("time-off", help="all-day time off, FIRST..LAST (local days)")
    p.add_argument("physician")
    p.add_argument("first")
    p.add_argument("last", nargs="?")
    p.set_defaults(func=_timeoff)

    p = sub.add_parser("on-call", help="an on-call shift (local START END as YYYY-MM-DDTHH:MM)")
    p.add_argument("physician")
    p.add_argument("start")
    p.add_argument("end")
    p.set_defaults(func=_oncall)

    p = sub.add_parser("rota", help="the on-call rota (practice time)")
    p.add_argument("--weeks", type=int, default=4)
    p.set_defaults(func=_rota)

    p = sub.add_parser("meeting", help="a meeting for several physicians")
    p.add_argument("start")
    p.add_argument("end")
    p.add_argument("physicians", nargs="+")
    p.add_argument("--title", default="Meeting")
    p.set_defaults(func=_meeting)

    p = sub.add_parser("book", help="book an appointment (conflicts are refused)")
    p.add_argument("physician")
    p.add_argument("date", help="YYYY-MM-DD (physician's local)")
    p.add_argument("time", help="HH:MM")
    p.add_argument("--type", default="follow_up",
                   help="new_consultation, follow_up, diagnostic_test, surgical_procedure")
    p.add_argument("--duration", type=int)
    p.add_argument("--resource", type=int)
    p.add_argument("--patient")
    p.add_argument("--phone")
    p.add_argument("--mrn")
    p.add_argument("--reason")
    p.set_defaults(func=_book)

    p = sub.add_parser("status", help="change an appointment's status")
    p.add_argument("appointment", type=int)
    p.add_argument("status", choices=list(schedule.STATUSES))
    p.add_argument("--note")
    p.set_defaults(func=_status)

    p = sub.add_parser("list", help="the master schedule for some days")
    p.add_argument("--physician")
    p.add_argument("--date")
    p.add_argument("--days", type=int, default=1)
    p.set_defaults(func=_list)

    p = sub.add_parser("free", help="find the next free slots")
    p.add_argument("--physician", action="append", help="repeat for several (default: all)")
    p.add_argument("--type", default="follow_up")
    p.add_argument("--duration", type=int)
    p.add_argument("--after", help="YYYY-MM-DD (default: now)")
    p.add_argument("--resource", type=int, action="append")
    p.add_argument("--resource-kind")
    p.add_argument("--limit", type=int, default=5)
    p.set_defaults(func=_free)

    p = sub.add_parser("confirmations", help="tomorrow's confirmation call list")
    p.add_argument("--date")
    p.set_defaults(func=_confirmations)

    p = sub.add_parser("export", help="a physician's calendar as .ics or FHIR JSON")
    p.add_argument("physician")
    p.add_argument("--format", choices=["ics", "fhir"], default="ics")
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--include-patient", action="store_true", help=".ics: patient names too")
    p.add_argument("--out")
    p.set_defaults(func=_export)

    p = sub.add_parser("recipient", help="add a recipient to the routing directory")
    p.add_argument("name")
    p.add_argument("kind", choices=list(route.RECIPIENT_KINDS))
    p.add_argument("channel", choices=list(route.CHANNELS))
    p.add_argument("address", nargs="?", help="e-mail, folder or URL")
    p.add_argument("--organization")
    p.add_argument("--specialty")
    p.set_defaults(func=_recipient_add)
    p = sub.add_parser("recipients", help="list the routing directory")
    p.set_defaults(func=_recipient_list)

    p = sub.add_parser("deliver", help="send every due delivery of signed drafts now")
    p.add_argument("--every", type=float, default=0,
                   help="keep running, sending every N seconds (a delivery service)")
    p.set_defaults(func=_deliver)

    p = sub.add_parser("tasks", help="list tasks (or create them for a draft)")
    p.add_argument("--all", action="store_true", help="include done and cancelled")
    p.add_argument("--from-draft", help="create the tasks of this draft's instructions")
    p.set_defaults(func=_tasks)
