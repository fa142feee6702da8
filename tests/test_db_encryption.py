"""The SQLite database encrypted at rest with SQLCipher (pipeline.core.store): real sqlcipher3,
real Alembic migrations, real files. A patient's name written through the store appears in
no byte of the database or its WAL; WAL mode and the busy timeout hold; a plain database is
converted once at start; the key is an HKDF subkey of the data key (never the file key);
a wrong key is refused with a clear message; a key rotation re-keys the database; the online
backup of an encrypted database restores."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import select, text

from pipeline.core import crypto, store
from pipeline.core.db.core import Physician
from pipeline.core.settings import Settings

NAME = "Zebulon Quixotewright"


@pytest.fixture
def keyed(settings: Settings, tmp_path: Path) -> Settings:
    settings.key_file = tmp_path / "config" / "data.key"
    return settings


def _db_files(settings: Settings) -> list[Path]:
    db = settings.data_path / "dictation.db"
    return [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-journal")) if p.exists()]


def _write_name(settings: Settings) -> None:
    with store.open_store(settings).session() as s:
        s.add(Physician(id="dr-secret", name=NAME))


def test_database_is_sqlcipher_and_the_name_is_in_no_byte_of_it_or_its_wal(
        keyed: Settings) -> None:
    _write_name(keyed)
    files = _db_files(keyed)
    assert any(p.name.endswith("-wal") for p in files), "WAL mode: a -wal file exists"
    for path in files:
        assert NAME.encode() not in path.read_bytes()
    db = keyed.data_path / "dictation.db"
    assert store.is_encrypted_database(db)
    with pytest.raises(sqlite3.DatabaseError):  # the plain driver cannot read it
        sqlite3.connect(db).execute("select count(*) from sqlite_master").fetchone()
    with store.open_store(keyed).session() as s:
        assert s.get(Physician, "dr-secret").name == NAME  # type: ignore[union-attr]
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert s.execute(text("PRAGMA busy_timeout")).scalar() == 30000
        assert s.execute(text("PRAGMA cipher_version")).scalar()


def test_database_key_is_an_hkdf_subkey_not_the_file_key(keyed: Settings) -> None:
    ring = crypto.keyring(keyed)
    (db_key,) = crypto.database_keys(ring)
    assert len(db_key) == 32 and db_key != ring.current
    assert db_key == crypto.derive_subkey(ring.current, crypto.DATABASE_KEY_INFO)
    _write_name(keyed)
    db = keyed.data_path / "dictation.db"
    with pytest.raises(Exception, match="does not open"):
        store.connect_encrypted(db, [ring.current])  # the raw file key does not open it
    store.connect_encrypted(db, [db_key]).close()


def test_wrong_key_is_refused_with_a_clear_message(keyed: Settings, tmp_path: Path) -> None:
    _write_name(keyed)
    other = keyed.model_copy(update={"key_file": tmp_path / "other" / "data.key"})
    with pytest.raises(Exception, match="does not open with any key of the data key ring"):
        store.connect_encrypted(keyed.data_path / "dictation.db",
                                crypto.database_keys(crypto.keyring(other)))


def test_encryption_off_keeps_a_plain_database(keyed: Settings) -> None:
    keyed.encrypt_database = False
    _write_name(keyed)
    db = keyed.data_path / "dictation.db"
    assert not store.is_encrypted_database(db)
    con = sqlite3.connect(db)
    assert con.execute("select name from physicians where id='dr-secret'").fetchone() == (NAME,)
    con.close()


def test_plain_database_is_converted_once_at_start(keyed: Settings,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    plain = keyed.model_copy(update={"encrypt_database": False})
    _write_name(plain)
    db = keyed.data_path / "dictation.db"
    assert NAME.encode() in db.read_bytes() + Path(f"{db}-wal").read_bytes()
    store._forget_engine(plain.db_url)  # a new process: nothing cached
    store._migrated.discard(plain.db_url)
    store._stores.pop(plain.db_url, None)
    with caplog.at_level("WARNING", logger="pipeline.core.store"):
        st = store.open_store(keyed)
    assert store.is_encrypted_database(db)
    for path in _db_files(keyed):
        assert NAME.encode() not in path.read_bytes()
    assert not Path(f"{db}.encrypting").exists()
    (line,) = [r.getMessage() for r in caplog.records if "converted" in r.getMessage()]
    assert "rows=" in line and NAME not in line
    with st.session() as s:  # every row is still there, migrations still current
        assert s.get(Physician, "dr-secret").name == NAME  # type: ignore[union-attr]
        assert set(s.scalars(select(Physician.id))) >= {"dr-smith", "dr-patel", "dr-secret"}


def test_an_encrypted_database_opens_encrypted_even_with_the_setting_off(
        keyed: Settings) -> None:
    _write_name(keyed)
    url = keyed.db_url
    store._forget_engine(url)
    engine = store.create_db_engine(url, keyed.model_copy(update={"encrypt_database": False}))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("select name from physicians where id='dr-secret'")
                                ).scalar() == NAME
    finally:
        engine.dispose()


def test_key_rotation_rekeys_the_database(keyed: Settings) -> None:
    _write_name(keyed)
    db = keyed.data_path / "dictation.db"
    old = crypto.database_keys(crypto.keyring(keyed))[0]
    result = crypto.rotate(keyed)
    assert result.complete and result.retired
    (new,) = crypto.database_keys(crypto.load_keyring(keyed))
    assert new != old
    store.connect_encrypted(db, [new]).close()
    with pytest.raises(Exception, match="does not open"):
        store.connect_encrypted(db, [old])
    with store.open_store(keyed).session() as s:
        assert s.get(Physician, "dr-secret").name == NAME  # type: ignore[union-attr]


def test_environment_key_rotation_opens_with_the_older_key_until_rekeyed(
        keyed: Settings) -> None:
    first, second = crypto.generate_key(), crypto.generate_key()
    keyed.data_key = base64.b64encode(first).decode()
    _write_name(keyed)
    store._forget_engine(keyed.db_url)
    keyed.data_key = ",".join(base64.b64encode(k).decode() for k in (second, first))
    engine = store.create_db_engine(keyed.db_url, keyed)  # new key first, old one decrypts
    try:
        with engine.connect() as conn:
            assert conn.execute(text("select count(*) from physicians")).scalar() == 3
    finally:
        engine.dispose()
    assert store.rekey_database(keyed)
    db = keyed.data_path / "dictation.db"
    store.connect_encrypted(db, [crypto.derive_subkey(second, crypto.DATABASE_KEY_INFO)]).close()


def test_backup_of_an_encrypted_database_is_encrypted_and_restores(
        keyed: Settings, tmp_path: Path) -> None:
    from pipeline.service import backup

    _write_name(keyed)
    snapshot = backup._snapshot_sqlite(keyed.data_path / "dictation.db", keyed)
    assert NAME.encode() not in snapshot and not snapshot.startswith(b"SQLite format 3")
    made = backup.backup(keyed, tmp_path / "backups")
    target = keyed.model_copy(update={"data_dir": tmp_path / "restored"})
    backup.restore(target, made.path)
    db = target.data_path / "dictation.db"
    assert store.is_encrypted_database(db) and NAME.encode() not in db.read_bytes()
    with store.open_store(target).session() as s:
        assert s.get(Physician, "dr-secret").name == NAME  # type: ignore[union-attr]
