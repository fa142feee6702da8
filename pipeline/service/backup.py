"""Backup and restore: one encrypted archive holding a consistent database snapshot, the
files under the data directory and a manifest of SHA-256 checksums.

``backup(settings, dest)`` runs while the service runs:

1. the database first: SQLite through its online backup API (``sqlite3.Connection.backup``
   into memory, one step, so the copy is one consistent snapshot even while workers write;
   nothing decrypted is written to disk), PostgreSQL through ``pg_dump --format=custom``
   (one transaction snapshot);
2. then every regular file under the data directory (audio, sidecars, drafts and exports,
   templates, vocabulary, ...), except the database files themselves, ``cache/``, the Prefect
   home, the backup folder and temporary files. A file that moved while the walk ran (a
   dictation going from ``processing/`` to ``archive/``) is picked up by a second sweep.
   Files are written after the database snapshot, so every file the snapshot refers to is in
   the archive (files are written before the rows that name them);
3. last, ``manifest.json``: format, creation time, the source data directory, and each
   member's size and SHA-256.

Everything is one tar stream written through ``pipeline.core.crypto.EncryptingWriter``
(AES-256-GCM in authenticated chunks, the last one marked final), so the manifest is
authenticated with the rest and a cut or edited archive does not open.

``restore(settings, src, target)`` reads the archive twice: first it decrypts everything and
checks every member against the manifest, writing nothing; only then, into an empty (or new)
target folder, it writes the files (0600, folders 0700) and the database, and points stored
file paths (``dictations.audio_path``, ``drafts.docx_path`` / ``outputs``, referral documents)
from the old data directory to the new one.

``nightly(settings)`` writes ``dictation-backup-<UTC time>.dxbak`` into
``settings.backup_path`` and keeps the newest ``settings.backup_keep``; the Prefect flow
``nightly-backup`` (deployment in ``prefect.yaml``, created by
``prefect_env.ensure_deployments``) runs it every night.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from pipeline.core import crypto
from pipeline.core.errors import PipelineError
from pipeline.core.settings import Settings

__all__ = [
    "BackupError",
    "BackupResult",
    "RestoreResult",
    "backup",
    "restore",
    "verify",
    "nightly",
    "prune",
    "register_flow",
    "BACKUP_SUFFIX",
]

log = logging.getLogger(__name__)

FORMAT = "dictation-backup"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BACKUP_SUFFIX = ".dxbak"
_PREFIX = "dictation-backup-"
_SQLITE_MEMBER = "db/dictation.sqlite"
_PG_MEMBER = "db/postgres.dump"
#: files up to this size are read whole (one consistent read); larger ones are streamed
_READ_WHOLE = 64 * 1024 * 1024
_SKIP_NAMES = {"service.json"}  # the running service's pid file: meaningless elsewhere


class BackupError(PipelineError):
    """A backup that cannot be made, or an archive that cannot be restored."""

    code = "backup_error"


@dataclass
class BackupResult:
    """A written archive: path, file count, plain bytes archived, database kind, seconds."""

    path: Path
    files: int
    bytes: int
    database: str
    seconds: float
    pruned: list[Path] = field(default_factory=list)


@dataclass
class RestoreResult:
    """A restored data directory: files written, database kind, paths re-pointed."""

    target: Path
    files: int
    database: str
    repointed: int
    manifest: dict[str, Any]


# --- database snapshots ------------------------------------------------------------------------


def _sqlite_file(settings: Settings) -> Path | None:
    url = settings.db_url
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url.removeprefix("sqlite:///"))
    return None


def _snapshot_sqlcipher(path: Path, settings: Settings) -> bytes:
    """A consistent copy of the SQLCipher database at ``path``, still encrypted with its
    key: SQLCipher's backup API copies between databases with the same key only, and
    sqlcipher3 has no ``serialize``, so the copy goes to a keyed file in a private (0700)
    temporary folder (cipher text only on disk), is read, and removed."""
    import tempfile

    from pipeline.core import store

    key = store.opening_key(path, crypto.database_keys(crypto.keyring(settings)))
    src = store.connect_encrypted(path, [key], timeout=60)
    try:
        src.execute("PRAGMA busy_timeout=60000")
        with tempfile.TemporaryDirectory(prefix="dictation-backup-") as tmp:
            copy = Path(tmp) / "snapshot.db"
            dst = store.connect_encrypted(copy, [key])
            try:
                src.backup(dst)  # the whole database in one step, one read transaction
                dst.execute("PRAGMA journal_mode=DELETE")
            finally:
                dst.close()
            return copy.read_bytes()
    finally:
        src.close()


def _snapshot_sqlite(path: Path, settings: Settings | None = None) -> bytes:
    """A consistent copy of the database at ``path``, as the bytes of a database file
    (encrypted with its own key when the database is a SQLCipher one)."""
    if not path.exists():
        raise BackupError(f"The database file {path.name} does not exist in the data directory.")
    from pipeline.core.store import is_encrypted_database

    if settings is not None and is_encrypted_database(path):
        return _snapshot_sqlcipher(path, settings)
    src = sqlite3.connect(path, timeout=60)
    dst = sqlite3.connect(":memory:")
    try:
        src.execute("PRAGMA busy_timeout=60000")
        src.backup(dst)  # pages=-1: the whole database in one step, one read transaction
        return dst.serialize()
    finally:
        dst.close()
        src.close()


def _pg_conninfo(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL without the password (which goes into PGPASSWORD, not the command line)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = str(parsed.password)
    conninfo = parsed.set(drivername="postgresql", password=None)
    return conninfo.render_as_string(hide_password=False), env


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} was not found; install the PostgreSQL client tools (Debian: "
            f"postgresql-client) of the server's major version."
        )
    return found


def _snapshot_postgres(url: str) -> bytes:
    conninfo, env = _pg_conninfo(url)
    proc = subprocess.run(
        [_pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
         "--dbname", conninfo],
        capture_output=True, env=env, timeout=3600, check=False,
    )
    if proc.returncode != 0:
        first = proc.stderr.decode(errors="replace").strip().splitlines()[:1]
        raise BackupError(f"pg_dump failed with status {proc.returncode}: "
                          f"{first[0] if first else 'no message'}")
    return proc.stdout


# --- writing -----------------------------------------------------------------------------------


def _excluded(settings: Settings) -> tuple[set[Path], set[Path]]:
    """(folders, files) never archived."""
    folders = {settings.cache_dir, settings.prefect_home, settings.backup_path}
    files: set[Path] = set()
    db = _sqlite_file(settings)
    if db is not None:
        for suffix in ("", "-wal", "-shm", "-journal", ".migrate.lock"):
            files.add(Path(str(db) + suffix))
    return {f.resolve() for f in folders}, {f.resolve() for f in files}


def _walk(root: Path, folders: set[Path], files: set[Path]) -> Iterator[Path]:
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs
                         if (here / d) not in folders and not (here / d).is_symlink())
        for name in sorted(names):
            path = here / name
            if path in files or name in _SKIP_NAMES or name.endswith(crypto.TMP_SUFFIX):
                continue
            yield path


class _Hashing(io.RawIOBase):
    """Reads exactly ``size`` bytes of ``src`` while hashing them."""

    def __init__(self, src: IO[bytes], size: int) -> None:
        super().__init__()
        self._src, self._left = src, size
        self.sha = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._left <= 0:
            return 0
        data = self._src.read(min(len(buffer), self._left))
        if not data:
            raise BackupError("A file became shorter while it was being backed up.")
        buffer[:len(data)] = data
        self._left -= len(data)
        self.sha.update(data)
        return len(data)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> dict[str, Any]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o600, int(mtime)
    tar.addfile(info, io.BytesIO(data))
    return {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _add_file(tar: tarfile.TarFile, name: str, path: Path) -> dict[str, Any] | None:
    try:
        fh = path.open("rb")
    except (FileNotFoundError, IsADirectoryError):
        return None  # moved or removed since the walk: the second sweep finds it
    with fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size <= _READ_WHOLE:
            return _add_bytes(tar, name, fh.read(), st.st_mtime)
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = st.st_size, 0o600, int(st.st_mtime)
        reader = _Hashing(fh, st.st_size)
        tar.addfile(info, io.BufferedReader(reader, crypto.CHUNK_SIZE))
        return {"path": name, "size": st.st_size, "sha256": reader.sha.hexdigest()}


def _target_path(dest: Path, now: datetime) -> Path:
    if dest.is_dir() or not (dest.name.endswith(BACKUP_SUFFIX) or dest.is_file()):
        crypto.private_mkdir(dest)
        return dest / f"{_PREFIX}{now:%Y%m%dT%H%M%S%fZ}{BACKUP_SUFFIX}"
    crypto.private_mkdir(dest.parent)
    return dest


def backup(settings: Settings, dest: Path, *, keys: crypto.KeyRing | None = None,
           after_database: Callable[[], None] | None = None) -> BackupResult:
    """Write one encrypted archive of the database and the data directory's files to
    ``dest`` (a file named ``*.dxbak``, or a folder, created if needed, to put a
    time-stamped archive in); returns what it wrote.

    ``after_database`` is called once the database snapshot is taken (the tests use it to
    let work go on between the snapshot and the file walk).
    """
    started = time.monotonic()
    keys = keys or crypto.keyring(settings)
    now = datetime.now(UTC)
    target = _target_path(dest.expanduser().absolute(), now)
    root = settings.data_path
    if target == root or (root in target.parents
                          and settings.backup_path not in target.parents):
        raise BackupError(
            "The backup destination is inside the data directory; choose another folder "
            "(or the configured backup folder)."
        )
    db_file = _sqlite_file(settings)
    if db_file is not None:
        kind, member, db_bytes = "sqlite", _SQLITE_MEMBER, _snapshot_sqlite(db_file, settings)
    else:
        kind, member, db_bytes = "postgresql", _PG_MEMBER, _snapshot_postgres(settings.db_url)
    if after_database is not None:
        after_database()
    folders, skip_files = _excluded(settings)
    entries: list[dict[str, Any]] = []
    total = 0
    with crypto.atomic_output(target) as out, crypto.EncryptingWriter(out, keys) as writer, \
            tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        db_entry = _add_bytes(tar, member, db_bytes, now.timestamp())
        total += len(db_bytes)
        del db_bytes
        done: set[Path] = set()
        for sweep in range(2):  # the second sweep picks up files that moved during the first
            for path in _walk(root, folders, skip_files):
                if path in done:
                    continue
                rel = path.relative_to(root).as_posix()
                entry = _add_file(tar, f"files/{rel}", path)
                if entry is None:
                    continue
                done.add(path)
                entries.append(entry)
                total += entry["size"]
            if sweep == 0:
                log.debug("backup first sweep files=%d", len(entries))
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "created_at": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "data_dir": str(root),
            "database": {"kind": kind, **db_entry},
            "files": entries,
            "key_id": keys.current_id.hex(),
        }
        _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=1).encode(), now.timestamp())
    seconds = time.monotonic() - started
    log.info("backup written files=%d bytes=%d database=%s seconds=%.1f",
             len(entries), total, kind, seconds)
    _audit(settings, "backup", target.name, {"files": len(entries), "bytes": total})
    return BackupResult(target, len(entries), total, kind, seconds)


def _audit(settings: Settings, action: str, object_id: str, detail: dict[str, Any]) -> None:
    from pipeline.core import audit
    from pipeline.core.store import open_store

    with open_store(settings).session() as s:
        audit.record(s, actor="system:backup", action=action, object_type="backup",
                     object_id=object_id, detail=detail)


# --- reading -----------------------------------------------------------------------------------


def _safe_member(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise BackupError("The archive holds a member with an unsafe path; it was not restored.")
    return path


def _members(src: Path, keys: crypto.KeyRing) -> Iterator[tuple[tarfile.TarInfo, IO[bytes]]]:
    """(member, reader) for every member of the archive at ``src``, decrypting as it goes."""
    with src.open("rb") as fh, crypto.DecryptingReader(fh, keys, name="the backup") as raw, \
            io.BufferedReader(raw, crypto.CHUNK_SIZE) as plain:
        try:
            with tarfile.open(fileobj=plain, mode="r|") as tar:
                for info in tar:
                    if not info.isfile():
                        raise BackupError("The archive holds something other than files.")
                    _safe_member(info.name)
                    reader = tar.extractfile(info)
                    assert reader is not None
                    yield info, reader
        except tarfile.TarError as exc:
            raise BackupError(f"The backup is not a readable archive ({exc}).") from None


def _copy_hash(reader: IO[bytes], out: IO[bytes] | None) -> tuple[int, str]:
    sha, size = hashlib.sha256(), 0
    while block := reader.read(crypto.CHUNK_SIZE):
        sha.update(block)
        size += len(block)
        if out is not None:
            out.write(block)
    return size, sha.hexdigest()


def verify(src: Path, keys: crypto.KeyRing) -> dict[str, Any]:
    """Decrypt the whole archive and check every member against the manifest; return the
    manifest. Writes nothing. ``BackupError`` / ``DecryptionError`` on any mismatch."""
    seen: dict[str, tuple[int, str]] = {}
    manifest: dict[str, Any] | None = None
    for info, reader in _members(src, keys):
        if info.name == MANIFEST:
            manifest = json.loads(reader.read())
            continue
        if info.name in seen:
            raise BackupError("The archive holds a member twice.")
        seen[info.name] = _copy_hash(reader, None)
    if manifest is None or manifest.get("format") != FORMAT:
        raise BackupError("The archive has no manifest: it is not a complete dictation backup.")
    if manifest.get("version") != FORMAT_VERSION:
        raise BackupError(f"The backup has format version {manifest.get('version')}; this "
                          f"version of the software reads version {FORMAT_VERSION}.")
    expected = {e["path"]: (e["size"], e["sha256"])
                for e in [manifest["database"], *manifest["files"]]}
    if set(expected) != set(seen):
        raise BackupError(f"The archive's members do not match its manifest "
                          f"({len(set(expected) ^ set(seen))} differ).")
    bad = [name for name in expected if expected[name] != seen[name]]
    if bad:
        raise BackupError(f"{len(bad)} members of the backup do not match their checksums.")
    return manifest


def _check_target(settings: Settings, target: Path, kind: str) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"The restore target {target} is not an empty folder; restore into "
                          f"a new or empty data directory.")
    sqlite_target = _sqlite_file(settings)
    if kind == "sqlite" and sqlite_target is None:
        raise BackupError("The backup holds an SQLite database, but DICTATION_DATABASE_URL "
                          "points at another database; unset it to restore.")
    if kind == "postgresql":
        if sqlite_target is not None:
            raise BackupError("The backup holds a PostgreSQL database: set "
                              "DICTATION_DATABASE_URL to an empty PostgreSQL database.")
        from sqlalchemy import create_engine, inspect

        engine = create_engine(settings.db_url)
        try:
            if inspect(engine).get_table_names():
                raise BackupError("The PostgreSQL database to restore into is not empty.")
        finally:
            engine.dispose()


def restore(settings: Settings, src: Path, *, keys: crypto.KeyRing | None = None
            ) -> RestoreResult:
    """Verify the archive ``src`` completely, then restore it into ``settings.data_path``
    (which must be empty or absent) and the database of ``settings``; returns what it did.
    Nothing is written when verification fails; a failure while writing removes what was
    written."""
    keys = keys or crypto.keyring(settings)
    target = settings.data_path
    manifest = verify(src, keys)  # pass 1: nothing written yet
    kind = manifest["database"]["kind"]
    _check_target(settings, target, kind)
    expected = {e["path"]: (e["size"], e["sha256"])
                for e in [manifest["database"], *manifest["files"]]}
    created = not target.exists()
    crypto.private_mkdir(target)
    written = 0
    try:
        for info, reader in _members(src, keys):  # pass 2: write
            if info.name == MANIFEST:
                continue
            if info.name == _PG_MEMBER:
                dump = reader.read()
                got = (len(dump), hashlib.sha256(dump).hexdigest())
                _pg_restore(settings.db_url, dump)
            else:
                if info.name == _SQLITE_MEMBER:
                    path = _sqlite_file(settings)
                    assert path is not None
                else:
                    rel = _safe_member(info.name).relative_to("files")
                    path = target.joinpath(*rel.parts)
                crypto.private_mkdir(path.parent)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    got = _copy_hash(reader, out)
                    out.flush()
                    os.fsync(out.fileno())
                if info.name != _SQLITE_MEMBER:
                    os.utime(path, (info.mtime, info.mtime))
                    written += 1
            if got != expected[info.name]:
                raise BackupError("The backup changed between verification and restore.")
        repointed = _repoint(settings, manifest["data_dir"], str(target))
    except BaseException:
        _undo(target, created)
        raise
    log.info("restore done files=%d database=%s repointed=%d", written, kind, repointed)
    return RestoreResult(target, written, kind, repointed, manifest)


def _undo(target: Path, created: bool) -> None:
    if created:
        shutil.rmtree(target, ignore_errors=True)
        return
    for child in target.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _pg_restore(url: str, dump: bytes) -> None:
    conninfo, env = _pg_conninfo(url)
    proc = subprocess.run(
        [_pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
         "--single-transaction", "--dbname", conninfo],
        input=dump, capture_output=True, env=env, timeout=3600, check=False,
    )
    if proc.returncode != 0:
        first = proc.stderr.decode(errors="replace").strip().splitlines()[:1]
        raise BackupError(f"pg_restore failed with status {proc.returncode}: "
                          f"{first[0] if first else 'no message'}")


#: (table, column, stored as JSON text) columns holding absolute paths under the data dir
_PATH_COLUMNS = (
    ("dictations", "audio_path", False),
    ("drafts", "docx_path", False),
    ("drafts", "outputs", True),
    ("sched_referral_documents", "path", False),
)


def _repoint(settings: Settings, old: str, new: str) -> int:
    """Rewrite stored absolute paths from the old data directory to the new one."""
    if old.rstrip("/") == new.rstrip("/"):
        return 0
    from sqlalchemy import inspect, text

    from pipeline.core.store import create_db_engine

    old_p, new_p = old.rstrip("/") + "/", new.rstrip("/") + "/"
    engine = create_db_engine(settings.db_url, settings)
    changed = 0
    try:
        tables = set(inspect(engine).get_table_names())
        pg = engine.dialect.name == "postgresql"
        with engine.begin() as conn:
            for table, column, is_json in _PATH_COLUMNS:
                if table not in tables:
                    continue
                if is_json:
                    # paths appear JSON-escaped inside the stored document
                    o, n = json.dumps(old_p)[1:-1], json.dumps(new_p)[1:-1]
                    col = f"CAST({column} AS TEXT)" if pg else column
                    value = f"REPLACE({col}, :o, :n)"
                    sql = (f"UPDATE {table} SET {column} = "
                           f"{'CAST(' + value + ' AS JSON)' if pg else value} "
                           f"WHERE {col} LIKE :like")
                    like = "%" + o.replace("%", r"\%").replace("_", r"\_") + "%"
                    sql += " ESCAPE '\\'"
                else:
                    o, n = old_p, new_p
                    sql = (f"UPDATE {table} SET {column} = :n || SUBSTR({column}, :k) "
                           f"WHERE SUBSTR({column}, 1, :m) = :o")
                    like = ""
                params: dict[str, Any] = {"o": o, "n": n, "like": like, "k": len(o) + 1,
                                          "m": len(o)}
                result = conn.execute(text(sql), params)
                changed += result.rowcount or 0
    finally:
        engine.dispose()
    return changed


# --- nightly -----------------------------------------------------------------------------------


def prune(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` backups (by their time-stamped names) in ``folder``;
    returns the deleted paths."""
    found = sorted(p for p in folder.glob(f"{_PREFIX}*{BACKUP_SUFFIX}") if p.is_file())
    old = found[:-keep] if keep > 0 else found
    for path in old:
        path.unlink(missing_ok=True)
    return old


def nightly(settings: Settings) -> BackupResult:
    """A backup into ``settings.backup_path``, then prune to ``settings.backup_keep``."""
    folder = crypto.private_mkdir(settings.backup_path)
    result = backup(settings, folder)
    result.pruned = prune(folder, settings.backup_keep)
    log.info("nightly backup kept=%d pruned=%d", settings.backup_keep, len(result.pruned))
    return result


def _nightly_backup() -> dict[str, Any]:
    """The body of the ``nightly-backup`` flow: figures only."""
    from pipeline.service import flows

    result = nightly(flows.current_settings())
    return {"file": result.path.name, "files": result.files, "bytes": result.bytes,
            "database": result.database, "seconds": round(result.seconds, 1),
            "pruned": len(result.pruned)}


_flow: Any = None


def register_flow() -> Any:
    """The Prefect flow ``nightly-backup`` (built on first use, so that importing this
    module does not import Prefect), registered with the warm worker; returns it."""
    global _flow
    if _flow is None:
        from prefect import flow

        from pipeline.service import flows

        _flow = flow(name="nightly-backup", persist_result=False, log_prints=False,
                     retries=1, retry_delay_seconds=300)(_nightly_backup)
        flows.register_flow("nightly-backup", _flow)
    return _flow


def __getattr__(name: str) -> Any:
    # ``pipeline.service.backup:nightly_backup`` is the deployment's entrypoint (prefect.yaml)
    if name == "nightly_backup":
        return register_flow()
    raise AttributeError(name)
