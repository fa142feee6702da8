"""sqlite_writes: Prefect's server transactions on SQLite take the write lock up front.

Replaces ``AioSqliteConfiguration.begin_transaction`` (module
``prefect.server.database.configurations``, ``prefect/server/database/configurations.py``)
in the server process by a version that always takes Prefect's own ``with_for_update=True``
path: ``BEGIN IMMEDIATE`` (the write lock first, waiting for it under SQLite's busy timeout)
instead of ``BEGIN DEFERRED``. PostgreSQL is not touched.

Why: a deferred transaction that reads and then writes while another connection has written
fails at once with "database is locked" (SQLite cannot upgrade a stale read snapshot, and
the busy timeout does not apply); the API answers 503 and the client retries 2-8 s later.
Measured with 20 dictations dropped at once: flow-run submissions stalled up to 7 s while
the worker sat idle, and the late-runs service failed its writes. Prefect has no setting for
the SQLite transaction mode (it uses IMMEDIATE only for its ``with_for_update``
transactions); one practice's server does not need concurrent deferred writers.

Relies on (``check``): ``begin_transaction(self, session, with_for_update=False)`` and
``begin_sqlite_stmt`` (which emits ``BEGIN <mode>``, registered by
``AioSqliteConfiguration.engine`` as the ``begin`` listener) with the bodies they were
written against.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.prefect_compat._source import Inspection

__all__ = ["NAME", "TARGET", "WRITTEN_FOR", "FINGERPRINTS", "apply", "check"]

NAME = "sqlite_writes"
MODULE = "prefect.server.database.configurations"
TARGET = f"{MODULE}.AioSqliteConfiguration.begin_transaction"
WRITTEN_FOR = {"prefect": "3.9.1"}
FINGERPRINTS = {
    (MODULE, "AioSqliteConfiguration.begin_transaction"): "50936cb808704e5a",
    (MODULE, "AioSqliteConfiguration.begin_sqlite_stmt"): "ffebc8e425a48c74",
}


def check(*, sources: Mapping[str, str] | None = None) -> None:
    """Raise ``PrefectCompatError`` if the installed Prefect no longer has what this patch
    replaces (``sources``: stand-in module sources, for tests)."""
    c = Inspection(sources)
    c.function(MODULE, "AioSqliteConfiguration.begin_transaction",
               params=("self", "session", "with_for_update"),
               defaults={"with_for_update": "False"})
    c.fingerprints(FINGERPRINTS)
    c.contains(MODULE, "AioSqliteConfiguration.engine",
               'event.listen(engine.sync_engine, "begin", self.begin_sqlite_stmt)',
               "registers begin_sqlite_stmt as the begin listener")
    c.done(NAME, TARGET, WRITTEN_FOR)


def apply() -> bool:
    """In the server process, on SQLite: every transaction Prefect opens with
    ``begin_transaction`` starts ``BEGIN IMMEDIATE``. Returns whether it applied."""
    from pipeline.prefect_compat import _applies, _replace

    if not _applies(check):
        return False
    from prefect.server.database.configurations import AioSqliteConfiguration

    def wrap(original: Any) -> Any:
        def begin_transaction(self: Any, session: Any, with_for_update: bool = False) -> Any:
            # Prefect's own IMMEDIATE path (the one it takes for ``with_for_update``)
            return original(self, session, with_for_update=True)

        return begin_transaction

    return _replace(AioSqliteConfiguration, "begin_transaction", wrap, TARGET)
