"""Datetimes read back from the database.

Every instant is stored as UTC. SQLite returns naive datetimes (PostgreSQL aware ones), so
every reader turns them back into aware UTC with ``as_utc`` before comparing or formatting.
"""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["as_utc"]


def as_utc(value: datetime) -> datetime:
    """A datetime read from the database as aware UTC (SQLite returns naive UTC).

    >>> as_utc(datetime(2026, 12, 2, 9, 30)).isoformat()
    '2026-12-02T09:30:00+00:00'
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
