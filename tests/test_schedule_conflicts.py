"""Conflict detection: table-driven edge cases on a real SQLite store.

Calendar under test (dr-smith, America/New_York, Mon-Fri 09:00-17:00 local):
an appointment Tue 2027-03-09 10:00-10:30 in the operating room, all-day time off Wed
03-10, on call Thu 03-11 12:00-18:00, a meeting Fri 03-12 12:00-13:00, Mon 03-08 afternoon
closed, an extra Saturday morning 03-13 10:00-12:00. DST starts Sun 2027-03-14 in New York.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from pipeline.core.db.core import Physician
from pipeline.core.errors import ConflictError
from pipeline.core.store import open_store
from pipeline.secretary import schedule
from pipeline.secretary.schedule.calendars import ScheduleOptions

NY = ZoneInfo("America/New_York")
OPTS = ScheduleOptions(default_timezone="America/New_York")


def ny(day: str, hm: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), time.fromisoformat(hm), tzinfo=NY)


@pytest.fixture
def store(settings):
    store = open_store(settings)
    with store.session() as s:
        s.get(Physician, "dr-smith").name = "Dr. Smith"
        s.get(Physician, "dr-patel").name = "Dr. Patel"
        for wd in range(5):
            schedule.add_availability(s, "dr-smith", wd, "09:00", "17:00")
            schedule.add_availability(s, "dr-patel", wd, "08:00", "18:00")
        orr = schedule.add_resource(s, "Operating room 1", "operating_room")
        schedule.book(s, physician_id="dr-smith", start=ny("2027-03-09", "10:00"),
                      type_code="follow_up", duration_min=30, resource_id=orr.id, options=OPTS)
        schedule.add_time_off(s, "dr-smith", date(2027, 3, 10), options=OPTS)
        schedule.add_on_call(s, "dr-smith", ny("2027-03-11", "12:00"), ny("2027-03-11", "18:00"))
        schedule.add_meeting(s, ["dr-smith"], ny("2027-03-12", "12:00"), ny("2027-03-12", "13:00"))
        schedule.add_exception(s, "dr-smith", date(2027, 3, 8), "closed", start="13:00",
                               end="17:00", reason="teaching")
        schedule.add_exception(s, "dr-smith", date(2027, 3, 13), "open", start="10:00",
                               end="12:00")
    return store


CASES = [
    # (id, physician, day, start, minutes, use resource, expected conflict kinds)
    ("touching-before", "dr-smith", "2027-03-09", "09:30", 30, False, []),
    ("touching-after", "dr-smith", "2027-03-09", "10:30", 20, False, []),
    ("overlap-start-edge", "dr-smith", "2027-03-09", "09:45", 20, False, ["physician_booked"]),
    ("overlap-end-edge", "dr-smith", "2027-03-09", "10:25", 20, False, ["physician_booked"]),
    ("inside", "dr-smith", "2027-03-09", "10:10", 10, False, ["physician_booked"]),
    ("enclosing", "dr-smith", "2027-03-09", "09:50", 50, False, ["physician_booked"]),
    ("resource-other-physician", "dr-patel", "2027-03-09", "10:15", 30, True,
     ["resource_booked"]),
    ("resource-touching", "dr-patel", "2027-03-09", "10:30", 30, True, []),
    ("before-hours", "dr-smith", "2027-03-09", "08:40", 20, False, ["outside_availability"]),
    ("straddles-opening", "dr-smith", "2027-03-09", "08:50", 20, False,
     ["outside_availability"]),
    ("ends-at-closing", "dr-smith", "2027-03-09", "16:40", 20, False, []),
    ("past-closing", "dr-smith", "2027-03-09", "16:50", 20, False, ["outside_availability"]),
    ("all-day-time-off-morning", "dr-smith", "2027-03-10", "09:00", 20, False, ["time_off"]),
    ("all-day-time-off-late", "dr-smith", "2027-03-10", "16:40", 20, False, ["time_off"]),
    ("on-call", "dr-smith", "2027-03-11", "13:00", 20, False, ["on_call"]),
    ("touching-on-call", "dr-smith", "2027-03-11", "11:40", 20, False, []),
    ("meeting", "dr-smith", "2027-03-12", "12:30", 20, False, ["meeting"]),
    ("exception-closed-afternoon", "dr-smith", "2027-03-08", "14:00", 20, False,
     ["outside_availability"]),
    ("exception-closed-morning-still-open", "dr-smith", "2027-03-08", "11:00", 20, False, []),
    ("exception-open-saturday", "dr-smith", "2027-03-13", "10:00", 20, False, []),
    ("exception-open-saturday-past-end", "dr-smith", "2027-03-13", "11:50", 20, False,
     ["outside_availability"]),
    ("sunday-no-template", "dr-smith", "2027-03-14", "10:00", 20, False,
     ["outside_availability"]),
    ("dst-monday-after-switch-0900-local", "dr-smith", "2027-03-15", "09:00", 20, False, []),
    ("dst-monday-after-switch-0840-local", "dr-smith", "2027-03-15", "08:40", 20, False,
     ["outside_availability"]),
    ("dst-monday-after-switch-1640-local", "dr-smith", "2027-03-15", "16:40", 20, False, []),
    ("several-at-once", "dr-smith", "2027-03-11", "16:50", 20, False,
     ["on_call", "outside_availability"]),
]


@pytest.mark.parametrize(("case", "physician", "day", "hm", "minutes", "use_res", "expected"),
                         CASES, ids=[c[0] for c in CASES])
def test_conflict_table(store, case, physician, day, hm, minutes, use_res, expected):
    """Each proposed time yields exactly the expected conflict kinds."""
    with store.session() as s:
        res_id = s.scalar(schedule.calendars.select(schedule.calendars.Resource.id)) \
            if use_res else None
        start = ny(day, hm)
        got = schedule.check_conflicts(s, physician, start, start + timedelta(minutes=minutes),
                                       resource_id=res_id, options=OPTS)
        assert sorted(c.kind for c in got) == sorted(expected), [c.message for c in got]
        for c in got:
            assert c.message and len(c.message) < 300


def test_dst_template_stays_nine_local(store):
    """'Mon 09:00-17:00' is 14:00 UTC before the DST switch and 13:00 UTC after it."""
    with store.session() as s:
        before = schedule.availability(s, "dr-smith", datetime(2027, 3, 1, tzinfo=UTC),
                                       datetime(2027, 3, 2, tzinfo=UTC), OPTS)
        after = schedule.availability(s, "dr-smith", datetime(2027, 3, 15, tzinfo=UTC),
                                      datetime(2027, 3, 16, tzinfo=UTC), OPTS)
    assert before == [(datetime(2027, 3, 1, 14, tzinfo=UTC), datetime(2027, 3, 1, 22, tzinfo=UTC))]
    assert after == [(datetime(2027, 3, 15, 13, tzinfo=UTC), datetime(2027, 3, 15, 21, tzinfo=UTC))]


def test_all_day_time_off_spans_local_day_on_dst_day(store):
    """All-day time off on the 23-hour DST day covers local midnight to midnight."""
    with store.session() as s:
        block = schedule.add_time_off(s, "dr-patel", date(2027, 3, 14), options=OPTS)
        start = block.start_utc.replace(tzinfo=UTC) if block.start_utc.tzinfo is None \
            else block.start_utc
        end = block.end_utc.replace(tzinfo=UTC) if block.end_utc.tzinfo is None else block.end_utc
        assert start.astimezone(NY).hour == 0 and end.astimezone(NY).hour == 0
        assert end - start == timedelta(hours=23)


def test_messages_are_clear(store):
    """A double-booking message names the physician, local time and the other appointment."""
    with store.session() as s, pytest.raises(ConflictError) as err:
        schedule.book(s, physician_id="dr-smith", start=ny("2027-03-09", "10:00"),
                      type_code="follow_up", options=OPTS)
    text = str(err.value)
    assert "Dr. Smith is already booked Tue 2027-03-09 10:00-10:30 EST" in text
    assert "appointment 1" in text and "Follow-up" in text
    assert [c.kind for c in err.value.conflicts] == ["physician_booked"]


def test_all_day_message(store):
    with store.session() as s:
        got = schedule.check_conflicts(s, "dr-smith", ny("2027-03-10", "11:00"),
                                       ny("2027-03-10", "11:20"), options=OPTS)
    assert "on time off" in got[0].message and "(all day)" in got[0].message


def test_template_validity_window(store):
    """A template rule only applies between valid_from and valid_until (inclusive)."""
    with store.session() as s:
        schedule.add_availability(s, "dr-patel", 5, "09:00", "12:00",
                                  valid_from=date(2027, 3, 6), valid_until=date(2027, 3, 13))
        inside = schedule.check_conflicts(s, "dr-patel", ny("2027-03-13", "09:00"),
                                          ny("2027-03-13", "09:20"), options=OPTS)
        outside = schedule.check_conflicts(s, "dr-patel", ny("2027-03-20", "09:00"),
                                           ny("2027-03-20", "09:20"), options=OPTS)
    assert inside == []
    assert [c.kind for c in outside] == ["outside_availability"]


def test_cancelled_appointment_frees_time(store):
    with store.session() as s:
        schedule.set_status(s, 1, "cancelled", actor="alice")
        got = schedule.check_conflicts(s, "dr-smith", ny("2027-03-09", "10:00"),
                                       ny("2027-03-09", "10:30"), options=OPTS)
        assert got == []
        appt = schedule.book(s, physician_id="dr-smith", start=ny("2027-03-09", "10:00"),
                             options=OPTS)
        assert appt.id == 2


def test_off_grid_and_naive_times_refused(store):
    with store.session() as s:
        with pytest.raises(ConflictError, match="5-minute grid"):
            schedule.book(s, physician_id="dr-smith", start=ny("2027-03-09", "11:03"),
                          options=OPTS)
        with pytest.raises(ValueError):
            schedule.book(s, physician_id="dr-smith", start=datetime(2027, 3, 9, 11),
                          options=OPTS)


def test_surgery_requires_operating_room(store):
    with store.session() as s:
        us = schedule.add_resource(s, "Ultrasound A", "ultrasound")
        with pytest.raises(ConflictError, match="needs a resource"):
            schedule.book(s, physician_id="dr-patel", start=ny("2027-03-09", "13:00"),
                          type_code="surgical_procedure", options=OPTS)
        with pytest.raises(ConflictError, match="needs a resource of kind operating_room"):
            schedule.book(s, physician_id="dr-patel", start=ny("2027-03-09", "13:00"),
                          type_code="surgical_procedure", resource_id=us.id, options=OPTS)
