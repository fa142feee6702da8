"""The database: engine, schema migrations (Alembic) and sessions.

SQLite under the data directory by default (WAL mode, busy timeout, foreign keys on);
PostgreSQL when ``DICTATION_DATABASE_URL`` points at one. The schema is always created
and upgraded by Alembic (``migrate``), never by ``create_all``.
"""

from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, select, text
from sqlalchemy.orm import Session, sessionmaker

from pipeline.core.db.core import Physician
from pipeline.core.settings import Settings

__all__ = ["get_engine", "migrate", "open_store", "session_scope", "ensure_physicians", "Store"]

log = logging.getLogger(__name__)

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def get_engine(url: str) -> Engine:
    """Return a cached engine for ``url`` (one per process and URL)."""
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            kwargs: dict[str, Any] = {"future": True}
            if url.startswith("sqlite"):
                kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
                if url.startswith("sqlite:///"):
                    Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            else:
                kwargs["pool_pre_ping"] = True
            engine = create_engine(url, **kwargs)
            if url.startswith("sqlite"):
                event.listen(engine, "connect", _sqlite_pragmas)
            _engines[url] = engine
        return engine


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the package's migrations and ``url``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


_migrated: set[str] = set()
_MIGRATION_LOCK_KEY = 7243501  # arbitrary, fixed: PostgreSQL advisory lock for migrations


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def migrate(url: str) -> None:
    """Create or upgrade the schema to every head revision (idempotent, once per process).

    Several processes may start at once (two service instances, a worker and the web app):
    migrations are serialised by a PostgreSQL advisory lock, or a file lock beside an SQLite
    database, so only the first creates the schema and the others find it current.
    """
    if url in _migrated:
        return
    engine = get_engine(url)
    lock: AbstractContextManager[None] = nullcontext()
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        lock = _file_lock(Path(url.removeprefix("sqlite:///") + ".migrate.lock"))
    with lock, engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        cfg = alembic_config(url)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "heads")
    _migrated.add(url)


class Store:
    """A migrated database with a session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        migrate(url)
        self.engine = get_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()


_stores: dict[str, Store] = {}


def open_store(settings: Settings) -> Store:
    """Return the (cached) store for the settings' database, migrated and with physicians."""
    url = settings.db_url
    with _lock:
        store = _stores.get(url)
    if store is None:
        store = Store(url)
        with store.session() as s:
            ensure_physicians(s, settings.physicians)
        with _lock:
            _stores[url] = store
    return store


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """Shortcut: ``with session_scope(settings) as s: ...``."""
    with open_store(settings).session() as s:
        yield s


def ensure_physicians(session: Session, ids: list[str]) -> None:
    """Make sure a row exists for every configured physician id."""
    existing = set(session.scalars(select(Physician.id)))
    for pid in ids:
        if pid not in existing:
            session.add(Physician(id=pid, name=pid))
    session.flush()
