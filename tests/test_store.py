"""The database is created by Alembic migrations and the audit chain detects tampering."""

from __future__ import annotations

import threading

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text

from pipeline.core import audit
from pipeline.core.db.core import AuditEvent, Physician
from pipeline.core.settings import Settings
from pipeline.core.store import alembic_config, open_store


def test_migrations_create_core_tables_and_physicians(settings: Settings) -> None:
    store = open_store(settings)
    names = set(inspect(store.engine).get_table_names())
    assert {"dictations", "transcripts", "drafts", "audit_events", "alembic_version"} <= names
    with store.session() as s:
        assert set(s.scalars(select(Physician.id))) >= {"dr-smith", "dr-patel"}
        # Every Alembic head (one per area branch) has been applied.
        versions = {r[0] for r in s.execute(text("select version_num from alembic_version"))}
    heads = set(ScriptDirectory.from_config(alembic_config(settings.db_url)).get_heads())
    assert versions == heads


def test_audit_chain_verifies_and_detects_edit_delete(settings: Settings) -> None:
    store = open_store(settings)
    with store.session() as s:
        for i in range(5):
            audit.record(s, actor="tester", action="view", object_type="draft", object_id=str(i))
    with store.session() as s:
        assert audit.verify(s).ok
        assert audit.verify(s).checked == 5
    with store.session() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.object_id == "2")).one()
        event.actor = "someone-else"
    with store.session() as s:
        result = audit.verify(s)
        assert not result.ok and result.first_bad_id == event.id
        event = s.get(AuditEvent, event.id)
        assert event is not None
        event.actor = "tester"
    with store.session() as s:
        assert audit.verify(s).ok
        s.delete(s.scalars(select(AuditEvent).where(AuditEvent.object_id == "4")).one())
    with store.session() as s:
        assert not audit.verify(s).ok


def test_concurrent_audit_writers_never_fork_the_chain(settings: Settings) -> None:
    store = open_store(settings)

    def write(n: int) -> None:
        for i in range(10):
            with store.session() as s:
                audit.record(s, actor=f"w{n}", action="view", object_type="draft", object_id=str(i))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with store.session() as s:
        result = audit.verify(s)
        assert result.ok, result
        assert result.checked == 40


def test_physicians_from_environment_csv_or_json(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Regression: a comma-separated DICTATION_PHYSICIANS used to crash Settings()."""
    monkeypatch.setenv("DICTATION_PHYSICIANS", "dr-a, dr-b")
    assert Settings().physicians == ["dr-a", "dr-b"]
    monkeypatch.setenv("DICTATION_PHYSICIANS", '["dr-c"]')
    assert Settings().physicians == ["dr-c"]


@pytest.mark.slow
def test_processes_starting_together_migrate_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Regression: two service instances migrating one database at once raced on the schema."""
    import subprocess
    import sys

    code = (
        "from pipeline.core.settings import Settings; from pipeline.core.store import open_store; "
        f"open_store(Settings(data_dir={str(tmp_path)!r}, physicians=['dr-x']))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE) for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors


@pytest.mark.slow
def test_processes_writing_one_encrypted_database_at_once(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SQLCipher under concurrency: four processes create, migrate and write one encrypted
    database at once (WAL, busy timeout); every write lands and the audit chain holds."""
    import os
    import subprocess
    import sys

    from pipeline.core.store import is_encrypted_database

    key_file = tmp_path / "config" / "data.key"
    code = (
        "import sys; from pipeline.core import audit; from pipeline.core.settings import "
        "Settings; from pipeline.core.store import open_store\n"
        f"s = Settings(data_dir={str(tmp_path / 'var')!r}, key_file={str(key_file)!r}, "
        "physicians=['dr-x'])\n"
        "store = open_store(s)\n"
        "for i in range(15):\n"
        "    with store.session() as ses:\n"
        "        audit.record(ses, actor='p' + sys.argv[1], action='view', object_type='draft',"
        " object_id=str(i))\n"
    )
    env = dict(os.environ, DICTATION_KEY_FILE=str(key_file))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n)], stderr=subprocess.PIPE,
                              env=env) for n in range(4)]
    errors = [p.communicate(timeout=180)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    settings = Settings(data_dir=tmp_path / "var", key_file=key_file, physicians=["dr-x"])
    assert is_encrypted_database(settings.data_path / "dictation.db")
    with open_store(settings).session() as s:
        result = audit.verify(s)
        assert result.ok, result
        assert result.checked == 60
