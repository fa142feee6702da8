"""sqlite_cache: each of the Prefect server's SQLite connections caches at most 8 MiB.

Replaces ``AioSqliteConfiguration.setup_sqlite`` (module
``prefect.server.database.configurations``, ``prefect/server/database/configurations.py``),
the ``connect`` hook that sets Prefect's pragmas, in the server process by the same hook
followed by ``PRAGMA cache_size = -<kib>``.

Why: Prefect asks for ``PRAGMA cache_size = 20000`` pages (80 MB) per connection and has no
setting for it; the server pools several connections and each fills its cache as the
database grows with every flow run, so the server's memory rose with the number of
dictations processed (the operating system's file cache holds the pages anyway).

Relies on (``check``): ``setup_sqlite(self, conn, record)`` with the body it was written
against (the 20,000 pages among its pragmas), registered by ``AioSqliteConfiguration.engine``
as the engine's ``connect`` listener, looked up on the instance when an engine is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.prefect_compat._source import Inspection

__all__ = ["NAME", "TARGET", "WRITTEN_FOR", "FINGERPRINTS", "CACHE_KIB", "apply", "check"]

NAME = "sqlite_cache"
MODULE = "prefect.server.database.configurations"
TARGET = f"{MODULE}.AioSqliteConfiguration.setup_sqlite"
WRITTEN_FOR = {"prefect": "3.9.1"}
FINGERPRINTS = {(MODULE, "AioSqliteConfiguration.setup_sqlite"): "b5e70b4ffb803109"}

#: SQLite page cache per connection of the local Prefect server, KiB
CACHE_KIB = 8192


def check(*, sources: Mapping[str, str] | None = None) -> None:
    """Raise ``PrefectCompatError`` if the installed Prefect no longer has what this patch
    replaces (``sources``: stand-in module sources, for tests)."""
    c = Inspection(sources)
    c.function(MODULE, "AioSqliteConfiguration.setup_sqlite",
               params=("self", "conn", "record"))
    c.fingerprints(FINGERPRINTS)
    c.contains(MODULE, "AioSqliteConfiguration.engine",
               'event.listen(engine.sync_engine, "connect", self.setup_sqlite)',
               "registers setup_sqlite as the connect listener")
    c.done(NAME, TARGET, WRITTEN_FOR)


def apply(kib: int = CACHE_KIB) -> bool:
    """In the server process, on SQLite: each connection's page cache is at most ``kib``
    KiB, set after Prefect's own connection set-up. Returns whether it applied."""
    from pipeline.prefect_compat import _applies, _replace

    if not _applies(check):
        return False
    from prefect.server.database.configurations import AioSqliteConfiguration

    def wrap(original: Any) -> Any:
        def setup_sqlite(self: Any, conn: Any, record: Any) -> None:
            original(self, conn, record)
            cursor = conn.cursor()
            cursor.execute(f"PRAGMA cache_size = -{int(kib)};")
            cursor.close()

        return setup_sqlite

    return _replace(AioSqliteConfiguration, "setup_sqlite", wrap, TARGET)
