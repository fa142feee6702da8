"""The database: engine, schema migrations (Alembic) and sessions.

SQLite under the data directory by default (WAL mode, busy timeout, foreign keys on);
PostgreSQL when ``DICTATION_DATABASE_URL`` points at one. The schema is always created
and upgraded by Alembic (``migrate``), never by ``create_all``.

Encryption at rest (``settings.encrypt_database``, default on): the SQLite file, its WAL and
journal are SQLCipher 4 databases (AES-256, every page authenticated), opened through
``sqlcipher3`` with a raw 256-bit key that is an HKDF subkey of the data key
(``crypto.database_keys``: one secret to provision, never the file key itself). Each new
connection tries the current key's subkey first, then the older keys of the ring (a rotation
in progress); ``rekey_database`` moves the database to the current key. A plain database
found at start is converted once (``sqlcipher_export`` into a new file, swapped in under the
migration lock, logged with counts only). A database that is already encrypted is always
opened encrypted, whatever the setting. Why SQLCipher and not column encryption on SQLite:
docs/decisions.md.

PostgreSQL (``settings.encrypt_columns``, default on): the engine carries a column cipher
(``pipeline.core.db.encrypted``) and the patient columns are sealed with HKDF subkeys of the
data key before they are sent; the server's own options (volume encryption, TLS) are in
docs/operations.md. ``rekey_database`` moves every sealed value to the ring's current key
(a rotation), ``encrypt_columns`` seals plain values left from before (an upgrade, or the
setting turned on later), ``column_status`` counts them per key id.
"""

from __future__ import annotations

import fcntl
import logging
import os
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

__all__ = [
    "get_engine",
    "create_db_engine",
    "migrate",
    "open_store",
    "session_scope",
    "ensure_physicians",
    "Store",
    "sqlite_path",
    "is_encrypted_database",
    "encrypt_plain_database",
    "rekey_database",
    "connect_encrypted",
    "opening_key",
    "encrypt_columns",
    "column_status",
]

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


_SQLITE_MAGIC = b"SQLite format 3\x00"


def sqlite_path(url: str) -> Path | None:
    """The database file of an SQLite ``url`` (None for PostgreSQL or an in-memory one)."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url.removeprefix("sqlite:///"))
    return None


def is_encrypted_database(path: Path) -> bool:
    """True when ``path`` is a non-empty file that is not a plain SQLite database (a
    SQLCipher file starts with a random salt instead of the SQLite header)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except OSError:
        return False
    return len(head) == len(_SQLITE_MAGIC) and head != _SQLITE_MAGIC


def _keys_for(settings: Settings | None) -> list[bytes]:
    from pipeline.core import crypto
    from pipeline.core.settings import get_settings

    return crypto.database_keys(crypto.keyring(settings or get_settings()))


def _pragma_key(key: bytes) -> str:
    # a raw key (x'..'): no PBKDF2 per connection; the key is already 256 random bits
    return f"PRAGMA key = \"x'{key.hex()}'\""


def connect_encrypted(path: Path, keys: list[bytes], *, timeout: float = 30) -> Any:
    """A ``sqlcipher3`` connection to ``path`` opened with the first of ``keys`` that
    authenticates (a new, empty file takes the first key); ``DatabaseError`` if none does."""
    import sqlcipher3

    last: Exception | None = None
    for key in keys:
        conn = sqlcipher3.connect(str(path), timeout=timeout, check_same_thread=False)
        try:
            if len(keys) > 1:  # a wrong key is expected here: no "hmac check failed" noise
                conn.execute("PRAGMA cipher_log_level = NONE")
            conn.execute(_pragma_key(key))
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return conn
        except sqlcipher3.DatabaseError as exc:
            conn.close()
            last = exc
    raise sqlcipher3.DatabaseError(
        f"The database {path.name} does not open with any key of the data key ring "
        f"({len(keys)} tried): wrong DICTATION_KEY_FILE / DICTATION_DATA_KEY? ({last})"
    )


def opening_key(path: Path, keys: list[bytes]) -> bytes:
    """The first of ``keys`` that opens the encrypted database ``path`` (``DatabaseError``
    if none does)."""
    import sqlcipher3

    for key in keys[:-1]:
        try:
            connect_encrypted(path, [key]).close()
            return key
        except sqlcipher3.DatabaseError:
            continue
    connect_encrypted(path, keys[-1:]).close()
    return keys[-1]


def _wants_encryption(url: str, settings: Settings | None) -> bool:
    path = sqlite_path(url)
    if path is None:
        return False
    if path.exists() and path.stat().st_size > 0:
        return is_encrypted_database(path)  # the file says what it is
    return settings is not None and settings.encrypt_database


def _build_engine(url: str, settings: Settings | None, encrypted: bool) -> Engine:
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        path = sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        if encrypted:
            import sqlcipher3

            assert path is not None
            kwargs["module"] = sqlcipher3.dbapi2  # its exceptions, mapped by the dialect
            # keys looked up per new connection: a rotation elsewhere is picked up
            kwargs["creator"] = lambda: connect_encrypted(path, _keys_for(settings))
    else:
        kwargs["pool_pre_ping"] = True
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    elif engine.dialect.name == "postgresql":
        _attach_column_cipher(engine, settings)
    return engine


def _attach_column_cipher(engine: Engine, settings: Settings | None) -> None:
    """PostgreSQL: seal the patient columns (``pipeline.core.db.encrypted``) when
    ``encrypt_columns``; sealed values are opened either way."""
    from pipeline.core import crypto
    from pipeline.core.db import encrypted
    from pipeline.core.settings import get_settings

    resolved = settings or get_settings()

    def ring() -> crypto.KeyRing:
        if not resolved.encrypt_columns and not resolved.data_key:
            # reading only: never create a key file for a database that holds nothing sealed
            return crypto.load_keyring(resolved, create=False)
        return crypto.keyring(resolved)

    encrypted.attach(engine, ring, writes=resolved.encrypt_columns)


def get_engine(url: str, settings: Settings | None = None) -> Engine:
    """Return a cached engine for ``url`` (one per process and URL).

    An SQLite file that is encrypted is opened with SQLCipher (keys from ``settings``, or
    the process settings when none are given); a new one is created encrypted when
    ``settings.encrypt_database``.
    """
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _build_engine(url, settings, _wants_encryption(url, settings))
            _engines[url] = engine
        return engine


def create_db_engine(url: str, settings: Settings | None = None) -> Engine:
    """A new (uncached) engine for ``url``, opened as ``get_engine`` would; dispose it."""
    return _build_engine(url, settings, _wants_encryption(url, settings))


def _forget_engine(url: str) -> None:
    with _lock:
        engine = _engines.pop(url, None)
    if engine is not None:
        engine.dispose()


def encrypt_plain_database(path: Path, keys: list[bytes]) -> dict[str, int]:
    """Convert the plain SQLite database ``path`` into a SQLCipher one with ``keys[0]``, in
    place: WAL checkpointed, ``sqlcipher_export`` into a new 0600 file beside it, row counts
    compared, fsync, atomic rename. Returns counts (tables, rows) for the log. The caller
    holds the migration lock; no other process may have the database open."""
    import sqlcipher3

    tmp = path.with_name(path.name + ".encrypting")
    tmp.unlink(missing_ok=True)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    plain = sqlcipher3.connect(str(path), timeout=60)
    try:
        plain.execute("PRAGMA busy_timeout=60000")
        plain.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        tables = [r[0] for r in plain.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'")]
        before = {t: plain.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        plain.execute(f"ATTACH DATABASE ? AS enc KEY \"x'{keys[0].hex()}'\"", (str(tmp),))
        plain.execute("SELECT sqlcipher_export('enc')")
        version = plain.execute("PRAGMA user_version").fetchone()[0]
        plain.execute(f"PRAGMA enc.user_version = {int(version)}")
        plain.execute("DETACH DATABASE enc")
    finally:
        plain.close()
    enc = connect_encrypted(tmp, keys[:1])
    try:
        after = {t: enc.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        enc.execute("PRAGMA journal_mode=WAL")
    finally:
        enc.close()
    if after != before:
        tmp.unlink(missing_ok=True)
        raise RuntimeError("encrypting the database: row counts differ after export")
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"tables": len(tables), "rows": sum(before.values())}


def _encrypt_at_start(url: str, settings: Settings) -> None:
    """Once, at start: a plain SQLite database becomes a SQLCipher one (logged, counts)."""
    path = sqlite_path(url)
    if path is None or not settings.encrypt_database:
        return
    if not path.exists() or path.stat().st_size == 0 or is_encrypted_database(path):
        return
    with _file_lock(Path(str(path) + ".migrate.lock")):
        if is_encrypted_database(path):  # another process did it while we waited
            return
        _forget_engine(url)
        counts = encrypt_plain_database(path, _keys_for(settings))
    log.warning("database encrypted at rest (SQLCipher), converted from plain SQLite once: "
                "tables=%d rows=%d", counts["tables"], counts["rows"])


def rekey_database(settings: Settings, ring: Any = None) -> bool:
    """Move the database to the ring's current key (after a key rotation): an encrypted
    SQLite database is re-keyed to the current key's subkey; on PostgreSQL every sealed
    column value is sealed again with it (and plain ones sealed, when ``encrypt_columns``).
    True when done or nothing to do; False when no key of the ring opens it. Connections
    cached in this process are dropped; other processes must reconnect (rotate with the
    service stopped, docs/operations.md)."""
    from pipeline.core import crypto

    if not settings.db_url.startswith("sqlite"):
        try:
            _reencrypt_columns(settings, ring or crypto.keyring(settings),
                               only_plain=False, seal_plain=settings.encrypt_columns)
        except crypto.DecryptionError as exc:
            log.error("database re-key: a column value does not open with the ring: %s",
                      exc.code)
            return False
        return True
    path = sqlite_path(settings.db_url)
    if path is None or not is_encrypted_database(path):
        return True
    import sqlcipher3

    keys = crypto.database_keys(ring or crypto.keyring(settings))
    _forget_engine(settings.db_url)
    try:
        conn = connect_encrypted(path, keys)
    except sqlcipher3.DatabaseError:
        log.error("database re-key: no key of the ring opens the database")
        return False
    try:
        conn.execute(f"PRAGMA rekey = \"x'{keys[0].hex()}'\"")
        conn.commit()
    finally:
        conn.close()
    log.info("database re-keyed to the current data key")
    return True


def _reencrypt_columns(settings: Settings, ring: Any, *, only_plain: bool,
                       seal_plain: bool = True) -> Any:
    """Seal the patient columns of a PostgreSQL database with ``ring``'s current key, in one
    transaction (see ``encrypted.reencrypt``); ``seal_plain`` False leaves plain values."""
    from pipeline.core.db import encrypted

    migrate(settings.db_url, settings)
    engine = create_db_engine(settings.db_url, settings)
    try:
        cipher = encrypted.ColumnCipher(lambda: ring)
        with engine.begin() as conn:  # writing off: sealed values move, plain ones stay
            counts = encrypted.reencrypt(conn, cipher, encrypted.encrypted_columns(),
                                         only_plain=only_plain, skip_plain=not seal_plain)
    finally:
        engine.dispose()
    return counts


def encrypt_columns(settings: Settings) -> Any:
    """PostgreSQL: seal every plain value of the patient columns with the current key (an
    upgrade from a version without column encryption, or ``encrypt_columns`` turned on
    later); values already sealed are left as they are. Returns ``encrypted.ColumnCounts``.
    SQLite: nothing to do (``ConfigError``: the SQLCipher file holds these columns)."""
    from pipeline.core import crypto
    from pipeline.core.errors import ConfigError

    if settings.db_url.startswith("sqlite"):
        raise ConfigError("The database is SQLite: its columns are inside the SQLCipher file "
                          "(DICTATION_ENCRYPT_DATABASE); column encryption is for PostgreSQL.")
    if not settings.encrypt_columns:
        raise ConfigError("DICTATION_ENCRYPT_COLUMNS is off: turn it on (on every machine) "
                          "before sealing the stored values.")
    return _reencrypt_columns(settings, crypto.keyring(settings), only_plain=True)


def column_status(settings: Settings) -> Any:
    """PostgreSQL: how many patient column values are plain and how many are sealed per key
    id (``encrypted.ColumnCounts``); None for SQLite."""
    from pipeline.core.db import encrypted

    if settings.db_url.startswith("sqlite"):
        return None
    migrate(settings.db_url, settings)
    with get_engine(settings.db_url, settings).connect() as conn:
        return encrypted.count_values(conn, encrypted.encrypted_columns())


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


def migrate(url: str, settings: Settings | None = None) -> None:
    """Create or upgrade the schema to every head revision (idempotent, once per process).

    Several processes may start at once (two service instances, a worker and the web app):
    migrations are serialised by a PostgreSQL advisory lock, or a file lock beside an SQLite
    database, so only the first creates the schema and the others find it current.
    """
    if url in _migrated:
        return
    if settings is not None:
        _encrypt_at_start(url, settings)
    engine = get_engine(url, settings)
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

    def __init__(self, url: str, settings: Settings | None = None) -> None:
        self.url = url
        migrate(url, settings)
        self.engine = get_engine(url, settings)
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
        store = Store(url, settings)
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
