"""Appointments: status flow with history, illegal moves, confirmation list, concurrent
booking of the last free slot (real SQLite, two threads), free-slot search, exports."""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from icalendar import Calendar
from sqlalchemy import func, select

from pipeline.core import audit
from pipeline.core.db.core import Physician
from pipeline.core.db.schedule import Appointment, SlotClaim
from pipeline.core.errors import ConflictError
from pipeline.core.store import open_store
from pipeline.secretary import schedule
from pipeline.secretary.schedule.calendars import ScheduleOptions

PARIS = ZoneInfo("Europe/Paris")
OPTS = ScheduleOptions(default_timezone="Europe/Paris")


def paris(day: str, hm: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), time.fromisoformat(hm), tzinfo=PARIS)


@pytest.fixture
def store(settings):
    store = open_store(settings)
    with store.session() as s:
        for pid in ("dr-smith", "dr-patel"):
            s.get(Physician, pid).timezone = "Europe/Paris"
            for wd in range(5):
                schedule.add_availability(s, pid, wd, "09:00", "12:00")
    return store


def test_status_flow_and_history(store):
    """booked -> confirmed -> arrived -> completed, each change with who and when."""
    with store.session() as s:
        appt = schedule.book(s, physician_id="dr-smith", start=paris("2027-06-07", "09:00"),
                             actor="alice", options=OPTS)
        aid = appt.id
    for status, who in (("confirmed", "alice"), ("arrived", "bob"), ("completed", "dr-smith")):
        with store.session() as s:
            schedule.set_status(s, aid, status, actor=who)
    with store.session() as s:
        hist = schedule.history(s, aid)
        assert [(h.from_status, h.to_status, h.actor) for h in hist] == [
            (None, "booked", "alice"), ("booked", "confirmed", "alice"),
            ("confirmed", "arrived", "bob"), ("arrived", "completed", "dr-smith")]
        assert all(h.at is not None for h in hist)
        assert audit.verify(s).ok


@pytest.mark.parametrize(("path", "illegal"), [
    ([], "completed"),
    (["cancelled"], "confirmed"),
    (["confirmed", "arrived", "completed"], "cancelled"),
    (["no_show"], "arrived"),
    (["confirmed"], "booked"),
])
def test_illegal_transitions_rejected(store, path, illegal):
    with store.session() as s:
        aid = schedule.book(s, physician_id="dr-smith", start=paris("2027-06-07", "10:00"),
                            options=OPTS).id
        for st in path:
            schedule.set_status(s, aid, st, actor="alice")
        with pytest.raises(ConflictError, match="cannot go from"):
            schedule.set_status(s, aid, illegal, actor="alice")


def test_confirmation_list_next_day(store):
    """Tomorrow's still-booked appointments, in order; confirmed and other days left out."""
    now = paris("2027-06-06", "15:00")  # a Sunday; tomorrow is Monday 06-07
    with store.session() as s:
        a = schedule.book(s, physician_id="dr-patel", start=paris("2027-06-07", "10:00"),
                          patient_name="P One", patient_phone="555-0101", options=OPTS)
        b = schedule.book(s, physician_id="dr-smith", start=paris("2027-06-07", "09:00"),
                          options=OPTS)
        c = schedule.book(s, physician_id="dr-smith", start=paris("2027-06-07", "11:00"),
                          options=OPTS)
        schedule.book(s, physician_id="dr-smith", start=paris("2027-06-08", "09:00"),
                      options=OPTS)
        schedule.set_status(s, c.id, "confirmed", actor="alice")
        calls = schedule.confirmation_list(s, now=now, options=OPTS)
        assert [x.appointment_id for x in calls] == [b.id, a.id]
        assert calls[1].patient_phone == "555-0101"
        assert calls[0].start_local.hour == 9
        only_patel = schedule.confirmation_list(s, now=now, physician_ids=["dr-patel"],
                                                options=OPTS)
        assert [x.appointment_id for x in only_patel] == [a.id]


def test_concurrent_last_slot_booked_once(store):
    """Two threads both see the last free slot as free; exactly one booking commits."""
    with store.session() as s:
        # leave only 11:40-12:00 free on Monday
        t = paris("2027-06-07", "09:00")
        while t < paris("2027-06-07", "11:40"):
            schedule.book(s, physician_id="dr-smith", start=t, options=OPTS)
            t += timedelta(minutes=20)
        slot = schedule.next_free_slot(s, physician_ids=["dr-smith"], duration_min=20,
                                       after=paris("2027-06-07", "08:00"),
                                       before=paris("2027-06-07", "23:00"), options=OPTS)
        assert slot is not None and slot.start == paris("2027-06-07", "11:40")
    barrier = threading.Barrier(2, timeout=20)
    results: list[object] = []

    def worker(name: str) -> None:
        try:
            with store.session() as s:
                appt = schedule.book(s, physician_id="dr-smith", start=slot.start, actor=name,
                                     options=OPTS, on_checked=barrier.wait)
                results.append(appt.id)
        except ConflictError as exc:
            results.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("alice", "bob")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert len(results) == 2
    ok = [r for r in results if isinstance(r, int)]
    errors = [r for r in results if isinstance(r, ConflictError)]
    assert len(ok) == 1 and len(errors) == 1, results
    assert "booked by someone else" in str(errors[0])
    with store.session() as s:
        n = s.scalar(select(func.count()).select_from(Appointment).where(
            Appointment.start_utc == slot.start.astimezone(UTC)))
        assert n == 1
        assert audit.verify(s).ok


def test_claims_released_on_cancel_and_rebook(store):
    with store.session() as s:
        a = schedule.book(s, physician_id="dr-smith", start=paris("2027-06-07", "09:00"),
                          options=OPTS)
        assert s.scalar(select(func.count()).select_from(SlotClaim)) == 4
        schedule.set_status(s, a.id, "cancelled", actor="alice")
        assert s.scalar(select(func.count()).select_from(SlotClaim)) == 0
        schedule.book(s, physician_id="dr-smith", start=paris("2027-06-07", "09:00"),
                      options=OPTS)


def test_reschedule_rechecks(store):
    with store.session() as s:
        a = schedule.book(s, physician_id="dr-smith", start=paris("2027-06-07", "09:00"),
                          options=OPTS)
        schedule.book(s, physician_id="dr-smith", start=paris("2027-06-07", "10:00"),
                      options=OPTS)
        with pytest.raises(ConflictError, match="already booked"):
            schedule.reschedule(s, a.id, paris("2027-06-07", "09:50"), actor="alice",
                                options=OPTS)
        moved = schedule.reschedule(s, a.id, paris("2027-06-07", "09:20"), actor="alice",
                                    options=OPTS)
        assert moved.end_utc.replace(tzinfo=UTC) == paris("2027-06-07", "09:40")


def test_next_free_slot_across_physicians_and_resources(store):
    """The earliest slot across two physicians, skipping busy times and a busy resource."""
    with store.session() as s:
        us1 = schedule.add_resource(s, "Ultrasound 1", "ultrasound")
        us2 = schedule.add_resource(s, "Ultrasound 2", "ultrasound")
        # dr-smith off Monday, dr-patel booked 09:00-09:30 Monday
        schedule.add_time_off(s, "dr-smith", date(2027, 6, 7), options=OPTS)
        schedule.book(s, physician_id="dr-patel", start=paris("2027-06-07", "09:00"),
                      duration_min=30, options=OPTS)
        slots = schedule.find_free_slots(s, physician_ids=["dr-smith", "dr-patel"],
                                         duration_min=20, after=paris("2027-06-07", "08:00"),
                                         limit=3, options=OPTS)
        assert [(x.physician_id, x.start) for x in slots] == [
            ("dr-patel", paris("2027-06-07", "09:30")),
            ("dr-patel", paris("2027-06-07", "09:50")),
            ("dr-patel", paris("2027-06-07", "10:10"))]
        # both ultrasounds busy 09:30-10:30 for other bookings -> first slot with one free
        schedule.book(s, physician_id="dr-smith", start=paris("2027-06-08", "09:00"),
                      duration_min=60, resource_id=us1.id, type_code="diagnostic_test",
                      options=OPTS)
        schedule.add_block(s, "maintenance", paris("2027-06-08", "09:00"),
                           paris("2027-06-08", "09:40"), resource_id=us2.id)
        slot = schedule.next_free_slot(s, physician_ids=["dr-patel"], duration_min=30,
                                       after=paris("2027-06-08", "08:00"),
                                       resource_kind="ultrasound", options=OPTS)
        assert slot.start == paris("2027-06-08", "09:40") and slot.resource_id == us2.id
        # the proposal is really bookable
        schedule.book(s, physician_id=slot.physician_id, start=slot.start, duration_min=30,
                      resource_id=slot.resource_id, type_code="diagnostic_test", options=OPTS)


def test_ics_and_fhir_export(store):
    with store.session() as s:
        a = schedule.book(s, physician_id="dr-smith", start=paris("2027-06-07", "09:00"),
                          patient_name="Jane Roe", mrn="MRN1", options=OPTS)
        schedule.add_meeting(s, ["dr-smith"], paris("2027-06-07", "11:00"),
                             paris("2027-06-07", "12:00"), title="Staff meeting")
        lo, hi = paris("2027-06-07", "00:00"), paris("2027-06-08", "00:00")
        raw = schedule.export_ics(s, "dr-smith", lo, hi)
        cal = Calendar.from_ical(raw)
        events = list(cal.walk("VEVENT"))
        assert {str(e["summary"]) for e in events} == {"Follow-up", "Staff meeting"}
        ev = next(e for e in events if str(e["summary"]) == "Follow-up")
        assert ev.decoded("dtstart") == paris("2027-06-07", "09:00")
        assert b"Jane Roe" not in raw
        assert b"Jane Roe" in schedule.export_ics(s, "dr-smith", lo, hi, include_patient=True)
        bundle = schedule.fhir_bundle(s, "dr-smith", lo, hi, options=OPTS)
        json.dumps(bundle)
        kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
        assert kinds[0] == "Schedule" and "Appointment" in kinds
        slots = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Slot"]
        assert [(x["status"], x["start"], x["end"]) for x in slots] == [
            ("busy", "2027-06-07T07:00:00Z", "2027-06-07T07:20:00Z"),
            ("free", "2027-06-07T07:20:00Z", "2027-06-07T09:00:00Z"),
            ("busy-unavailable", "2027-06-07T09:00:00Z", "2027-06-07T10:00:00Z")]
        appt = next(e["resource"] for e in bundle["entry"]
                    if e["resource"]["resourceType"] == "Appointment")
        assert appt["id"] == f"appointment-{a.id}" and appt["status"] == "booked"
        assert appt["minutesDuration"] == 20


_CHILD = r"""
import sys, time
from datetime import datetime
from pathlib import Path
from pipeline.secretary import schedule
from pipeline.core.errors import ConflictError
from pipeline.secretary.schedule.calendars import ScheduleOptions
from pipeline.core.store import Store

url, start, name, folder = sys.argv[1:5]
folder = Path(folder)

def wait_for_go():
    (folder / f"ready-{name}").touch()
    deadline = time.time() + 60
    while not (folder / "go").exists():
        if time.time() > deadline:
            raise SystemExit("no go signal")
        time.sleep(0.01)

store = Store(url)
try:
    with store.session() as s:
        appt = schedule.book(s, physician_id="dr-smith", start=datetime.fromisoformat(start),
                             actor=name, options=ScheduleOptions("Europe/Paris"),
                             on_checked=wait_for_go)
        print("booked", appt.id)
except ConflictError as exc:
    print("conflict", exc)
"""


@pytest.mark.slow
def test_concurrent_booking_from_two_processes(store, settings, tmp_path):
    """Two separate processes, both past the conflict check, book the same slot: one wins."""
    import subprocess
    import sys
    import time as _time

    start = paris("2027-06-07", "11:40").isoformat()
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, settings.db_url, start, name,
                               str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for name in ("p1", "p2")]
    deadline = _time.time() + 120
    while not all((tmp_path / f"ready-{n}").exists() for n in ("p1", "p2")):
        assert _time.time() < deadline, [p.stderr.read() for p in procs if p.poll() is not None]
        _time.sleep(0.05)
    (tmp_path / "go").touch()
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(o.split()[0] for o in outs) == ["booked", "conflict"], outs
    assert any("booked by someone else" in o for o in outs)
    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(Appointment)) == 1
