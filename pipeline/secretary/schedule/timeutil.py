"""Time helpers: UTC storage, local display, the booking grid and interval arithmetic.

Rules: every instant handed to the database is an aware UTC ``datetime``; values read back
from SQLite are naive UTC and go through ``as_utc``. Wall-clock times (availability
templates, the booking form) are turned into instants with ``local_to_utc`` for the date in
question, so daylight-saving changes are applied per day.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.core.errors import ConfigError, ConflictError
from pipeline.core.times import as_utc

__all__ = [
    "GRID_MINUTES",
    "Interval",
    "as_utc",
    "to_utc",
    "zone",
    "local_to_utc",
    "to_local",
    "local_day_bounds",
    "ceil_to_grid",
    "check_on_grid",
    "grid_units",
    "merge",
    "subtract",
    "intersect",
    "covers",
    "overlaps",
]

#: Appointment starts and ends lie on this grid (minutes); slot claims are per grid unit.
GRID_MINUTES = 5

Interval = tuple[datetime, datetime]


def to_utc(value: datetime) -> datetime:
    """An aware datetime converted to UTC; a naive one is refused (its zone is unknown)."""
    if value.tzinfo is None:
        raise ValueError("a naive datetime arrived where an aware one was expected")
    return value.astimezone(UTC)


@lru_cache(maxsize=256)
def zone(name: str | None, default: str = "UTC") -> ZoneInfo:
    """The ``ZoneInfo`` for ``name`` (or ``default``); raise ``ConfigError`` if unknown."""
    key = name or default or "UTC"
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"time zone {key!r} is unknown; expected an IANA name such as "
                          "'Europe/Paris' or 'America/New_York'") from exc


def local_to_utc(day: date, clock: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of wall-clock ``clock`` on ``day`` in ``tz`` (DST applied for that day)."""
    return datetime.combine(day, clock, tzinfo=tz).astimezone(UTC)


def to_local(value: datetime, tz: ZoneInfo) -> datetime:
    """A stored instant shown in ``tz``."""
    return as_utc(value).astimezone(tz)


def local_day_bounds(day: date, tz: ZoneInfo) -> Interval:
    """UTC start and end of the local calendar ``day`` (23 or 25 hours on DST days)."""
    return local_to_utc(day, time(0), tz), local_to_utc(day + timedelta(days=1), time(0), tz)


def ceil_to_grid(value: datetime, minutes: int = GRID_MINUTES) -> datetime:
    """Round up to the next grid line (unchanged when already on it)."""
    value = to_utc(value)
    base = value.replace(second=0, microsecond=0)
    if base != value:
        base += timedelta(minutes=1)
    rem = base.minute % minutes
    if rem:
        base += timedelta(minutes=minutes - rem)
    return base


def check_on_grid(start: datetime, end: datetime, minutes: int = GRID_MINUTES) -> None:
    """Raise ``ConflictError`` unless ``start < end`` and both lie on the booking grid."""
    if end <= start:
        raise ConflictError(
            f"an appointment from {start.isoformat()} to {end.isoformat()} arrived; "
            "expected the end after the start"
        )
    for label, value in (("start", start), ("end", end)):
        if value.second or value.microsecond or value.minute % minutes:
            raise ConflictError(
                f"the {label} time {value.isoformat()} is not on the {minutes}-minute grid; "
                f"expected minutes divisible by {minutes}"
            )


def grid_units(start: datetime, end: datetime, minutes: int = GRID_MINUTES) -> list[datetime]:
    """The grid unit starts covering ``[start, end)``."""
    step = timedelta(minutes=minutes)
    units = []
    t = start
    while t < end:
        units.append(t)
        t += step
    return units


def overlaps(a: Interval, b: Interval) -> bool:
    """Half-open overlap: touching intervals (a.end == b.start) do not overlap."""
    return a[0] < b[1] and b[0] < a[1]


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Sorted union of intervals (touching ones joined)."""
    out: list[Interval] = []
    for s, e in sorted(intervals):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def subtract(base: Iterable[Interval], remove: Iterable[Interval]) -> list[Interval]:
    """``base`` minus ``remove`` (both any order); result sorted and merged."""
    result = merge(base)
    cuts = merge(remove)
    if not cuts:
        return result
    out: list[Interval] = []
    j = 0
    for s, e in result:
        cur = s
        while j < len(cuts) and cuts[j][1] <= cur:
            j += 1
        k = j
        while k < len(cuts) and cuts[k][0] < e:
            cs, ce = cuts[k]
            if cs > cur:
                out.append((cur, cs))
            cur = max(cur, ce)
            if cur >= e:
                break
            k += 1
        if cur < e:
            out.append((cur, e))
    return out


def intersect(a: Iterable[Interval], b: Iterable[Interval]) -> list[Interval]:
    """Intersection of two interval sets."""
    a_m, b_m = merge(a), merge(b)
    out: list[Interval] = []
    i = j = 0
    while i < len(a_m) and j < len(b_m):
        s = max(a_m[i][0], b_m[j][0])
        e = min(a_m[i][1], b_m[j][1])
        if s < e:
            out.append((s, e))
        if a_m[i][1] < b_m[j][1]:
            i += 1
        else:
            j += 1
    return out


def covers(intervals: Iterable[Interval], target: Interval) -> bool:
    """Whether the union of ``intervals`` covers ``target`` completely."""
    return not subtract([target], intervals)
