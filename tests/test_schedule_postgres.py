"""Scheduling on a real PostgreSQL (throwaway server on loopback): the migration, booking
with conflict messages, the double-booking guard under two concurrent threads, tasks and
routes. Skipped when the PostgreSQL server binaries are not installed."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import date, datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pgserver import postgres_server
from sqlalchemy import func, select

from pipeline.core import audit
from pipeline.core.db.core import DictationRow, DraftRow
from pipeline.core.db.schedule import Appointment
from pipeline.core.errors import ConflictError
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.secretary import route, schedule, tasks
from pipeline.secretary.schedule.calendars import ScheduleOptions

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

NY = ZoneInfo("America/New_York")
OPTS = ScheduleOptions(default_timezone="America/New_York")


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with postgres_server(["sched"]) as address:
        yield f"postgresql+psycopg2://postgres@{address}/sched"


def ny(day: str, hm: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), time.fromisoformat(hm), tzinfo=NY)


def test_scheduling_on_postgres(pg_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var", database_url=pg_url,
                        physicians=["dr-smith", "dr-patel"], timezone="America/New_York")
    store = open_store(settings)
    with store.session() as s:
        for wd in range(5):
            schedule.add_availability(s, "dr-smith", wd, "09:00", "17:00")
        schedule.add_time_off(s, "dr-smith", date(2027, 3, 10), options=OPTS)
        first = schedule.book(s, physician_id="dr-smith", start=ny("2027-03-15", "09:00"),
                              options=OPTS)
        assert first.start_utc == ny("2027-03-15", "09:00")  # DST week: 13:00 UTC
        with pytest.raises(ConflictError, match="already booked Mon 2027-03-15 09:00-09:20"):
            schedule.book(s, physician_id="dr-smith", start=ny("2027-03-15", "09:10"),
                          options=OPTS)
    with store.session() as s:
        kinds = [c.kind for c in schedule.check_conflicts(
            s, "dr-smith", ny("2027-03-10", "10:00"), ny("2027-03-10", "10:20"), options=OPTS)]
        assert kinds == ["time_off"]
        slot = schedule.next_free_slot(s, physician_ids=["dr-smith"], duration_min=20,
                                       after=ny("2027-03-15", "08:00"), options=OPTS)
        assert slot is not None and slot.start == ny("2027-03-15", "09:20")

    barrier = threading.Barrier(2, timeout=30)
    results: list[object] = []

    def worker(name: str) -> None:
        try:
            with store.session() as s:
                results.append(schedule.book(s, physician_id="dr-smith", start=slot.start,
                                             actor=name, options=OPTS,
                                             on_checked=barrier.wait).id)
        except ConflictError as exc:
            results.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert sorted(type(r).__name__ for r in results) == ["ConflictError", "int"], results

    with store.session() as s:
        assert s.scalar(select(func.count()).select_from(Appointment)) == 2
        did = uuid.uuid4().hex
        s.add(DictationRow(id=did, sha256=did * 2, physician_id="dr-smith"))
        draft = DraftRow(id=uuid.uuid4().hex, dictation_id=did, physician_id="dr-smith",
                         document_type="progress_note", audio_sha256=did * 2,
                         document={"instructions": [
                             {"kind": "schedule", "text": "Follow up in 2 weeks.",
                              "params": {"interval_days": 14}},
                             {"kind": "copy", "text": "Copy Dr. Patel.",
                              "params": {"recipient": "Dr. Patel"}}]})
        s.add(draft)
        route.add_recipient(s, "Dr. Anil Patel", "referring_physician", "print")
        s.flush()
        made = tasks.tasks_from_draft(s, draft, settings=settings)
        assert [t.kind for t in made] == ["schedule", "copy"]
        assert len(made[0].proposed_slots) == 3
        assert len(tasks.tasks_from_draft(s, draft, settings=settings)) == 2
        assert audit.verify(s).ok
