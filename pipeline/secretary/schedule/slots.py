"""Find the next free slots across one or several physicians (and resources).

A slot is free when it lies inside the physician's working hours (weekly template plus
exceptions) and clear of appointments, time off, on-call duty and meetings, and, when
resources are asked for, when at least one of them is clear too. The search walks forward
in chunks (two weeks by default) with one query per chunk, so a year of bookings costs a
few milliseconds per chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.core.db.schedule import Resource
from pipeline.core.errors import ConflictError
from pipeline.secretary.schedule.calendars import (
    ScheduleOptions,
    availability_many,
    busy_items,
    preload_templates,
)
from pipeline.secretary.schedule.timeutil import (
    GRID_MINUTES,
    Interval,
    ceil_to_grid,
    subtract,
    to_utc,
)

__all__ = ["Slot", "find_free_slots", "next_free_slot"]


@dataclass(frozen=True)
class Slot:
    """A bookable time: physician, optional resource, UTC start and end."""

    physician_id: str
    start: datetime
    end: datetime
    resource_id: int | None = None

    def to_dict(self) -> dict[str, object]:
        return {"physician_id": self.physician_id, "resource_id": self.resource_id,
                "start": self.start.isoformat(), "end": self.end.isoformat()}


def _starts(free: list[Interval], length: timedelta, not_before: datetime,
            fits: Callable[[datetime], bool]) -> Iterator[datetime]:
    """Candidate starts on the grid; after a fit the next candidate starts at its end, so
    proposals for one physician never overlap."""
    step = timedelta(minutes=GRID_MINUTES)
    for s, e in free:
        t = ceil_to_grid(max(s, not_before))
        while t + length <= e:
            if fits(t):
                yield t
                t += length
            else:
                t += step


def _fits(t: datetime, *, length: timedelta, resource_ids: list[int],
          res_free: dict[int, list[Interval]], chosen: dict[datetime, int | None]) -> bool:
    """Whether a start fits the resources (records the first free resource in ``chosen``)."""
    if not resource_ids:
        chosen[t] = None
        return True
    rid = next((r for r in resource_ids if not subtract([(t, t + length)], res_free[r])), None)
    chosen[t] = rid
    return rid is not None


def find_free_slots(
    session: Session,
    *,
    physician_ids: list[str],
    duration_min: int,
    after: datetime,
    limit: int = 5,
    resource_ids: list[int] | None = None,
    resource_kind: str | None = None,
    before: datetime | None = None,
    options: ScheduleOptions | None = None,
) -> list[Slot]:
    """The earliest ``limit`` free slots of ``duration_min`` starting at or after ``after``.

    Slots from all given physicians are merged in time order (ties: physician order). With
    ``resource_ids`` (or ``resource_kind``: every active resource of that kind) each slot
    also names a free resource. The search stops at ``before`` or the options' horizon.
    """
    options = options or ScheduleOptions()
    if not physician_ids:
        raise ConflictError("a free-slot search arrived without physicians; expected at least one")
    if duration_min <= 0:
        raise ConflictError(f"a duration of {duration_min} minutes arrived; expected > 0")
    if resource_kind and not resource_ids:
        resource_ids = list(session.scalars(
            select(Resource.id).where(Resource.kind == resource_kind, Resource.active)))
        if not resource_ids:
            raise ConflictError(f"no active resource of kind {resource_kind!r} exists")
    after = ceil_to_grid(to_utc(after))
    horizon = to_utc(before) if before else after + timedelta(days=options.search_horizon_days)
    length = timedelta(minutes=duration_min)
    # windows grow 1, 2, 4... days up to the chunk size: most searches end on day one
    chunk = timedelta(days=1)
    max_chunk = timedelta(days=options.search_chunk_days)
    found: list[Slot] = []
    preloaded = preload_templates(session, physician_ids, after, horizon + length, options)
    lo = after
    while lo < horizon and len(found) < limit:
        hi = min(lo + chunk, horizon)
        chunk = min(chunk * 2, max_chunk)
        # one query for every physician and resource in this chunk
        items = busy_items(session, lo, hi + length, physician_ids=physician_ids,
                           resource_ids=resource_ids)
        res_free: dict[int, list[Interval]] = {}
        for rid in resource_ids or []:
            res_free[rid] = subtract([(lo, hi + length)],
                                     [(i.start, i.end) for i in items if i.resource_id == rid])
        chunk_found: list[Slot] = []
        all_windows = availability_many(session, physician_ids, lo, hi + length, options,
                                        preloaded=preloaded)
        for pid in physician_ids:
            windows = all_windows[pid]
            busy = [(i.start, i.end) for i in items if i.physician_id == pid]
            free = subtract(windows, busy)
            chosen: dict[datetime, int | None] = {}
            fits = partial(_fits, length=length, resource_ids=resource_ids or [],
                           res_free=res_free, chosen=chosen)
            for n, t in enumerate(_starts(free, length, lo, fits), start=1):
                if t >= hi:
                    break
                chunk_found.append(Slot(pid, t, t + length, chosen[t]))
                if n >= limit:
                    break
        chunk_found.sort(key=lambda s: (s.start, physician_ids.index(s.physician_id)))
        found.extend(chunk_found[: limit - len(found)])
        lo = hi
    return found


def next_free_slot(session: Session, **kwargs: object) -> Slot | None:
    """The single earliest free slot (see ``find_free_slots``), or None within the horizon."""
    slots = find_free_slots(session, limit=1, **kwargs)  # type: ignore[arg-type]
    return slots[0] if slots else None
