"""Backup and restore (pipeline.service.backup): a backup taken while dictations are being
processed (real tiny.en, real SQLite) restores into a fresh data directory with every draft,
version, signature, user and task, its files and a passing ``dictation audit verify``;
verification happens before anything is written (tampered archive, wrong key, non-empty
target); nightly backups keep the newest N; PostgreSQL through pg_dump/pg_restore."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, select, text

from pipeline.core import crypto
from pipeline.core.db.core import DraftRow
from pipeline.core.records import DictationMeta
from pipeline.core.settings import Settings
from pipeline.core.store import create_db_engine, open_store
from pipeline.review import signing
from pipeline.review import versions as wf
from pipeline.review.users import create_user
from pipeline.service import backup
from pipeline.web.seed import add_draft

PASSWORD = "violet-harbor-quantum-97"
TEXT = "Assessment: acute bronchitis.\n\nPlan: rest and fluids. Follow up in two weeks.\n"
INSTRUCTIONS = [{"kind": "schedule", "text": "Follow up in two weeks.",
                 "params": {"interval_days": 14}}]
#: tables whose rows must all come back (compared row by row)
TABLES = ("users", "user_physicians", "drafts", "draft_versions", "signatures", "sched_tasks",
          "dictations", "audit_events")


@pytest.fixture
def keyed(settings: Settings, tmp_path: Path) -> Settings:
    settings.key_file = tmp_path / "config" / "data.key"
    return settings


def _signed_world(settings: Settings, audio: Path) -> dict[str, Any]:
    """Two users, a draft with its audio under archive/, edited (versions), signed
    (signature, tasks)."""
    store = open_store(settings)
    archived = settings.archive_dir / "a1" / "dictation.wav"
    archived.parent.mkdir(parents=True)
    shutil.copy(audio, archived)
    with store.session() as s:
        sec = create_user(s, "sec", PASSWORD, "secretary", ["dr-smith"])
        smith = create_user(s, "smith", PASSWORD, "physician", ["dr-smith"])
        draft_id = add_draft(s, text=TEXT, segments=[], physician_id="dr-smith",
                             patient_name="Backup Patient", mrn="MRN-BK", audio_path=archived,
                             document={"instructions": INSTRUCTIONS})
        draft = s.get(DraftRow, draft_id)
        wf.claim(s, sec, draft)
        wf.save_text(s, sec, draft, TEXT.replace("fluids", "fluids and rest"), 1)
        wf.send_for_signature(s, sec, draft)
    with store.session() as s:
        draft = s.get(DraftRow, draft_id)
        result = signing.sign_draft(s, settings, smith, draft, PASSWORD)
        assert result.tasks >= 1
    return {"draft": draft_id}


def _rows(settings: Settings) -> dict[str, list[tuple[Any, ...]]]:
    engine = create_db_engine(settings.db_url, settings)  # SQLCipher-aware
    try:
        names = set(inspect(engine).get_table_names())
        out: dict[str, list[tuple[Any, ...]]] = {}
        with engine.connect() as conn:
            for table in TABLES:
                if table in names:
                    rows = conn.execute(text(f"SELECT * FROM {table}")).all()
                    out[table] = sorted(tuple(str(v) for v in r) for r in rows)
        return out
    finally:
        engine.dispose()


def _audit_verify(settings: Settings) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DICTATION_DATA_DIR=str(settings.data_path),
               DICTATION_KEY_FILE=str(settings.key_file))
    if settings.database_url:
        env["DICTATION_DATABASE_URL"] = settings.database_url
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "audit", "verify"], env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_backup_while_dictations_are_processed_restores_everything(
        keyed: Settings, speech: Path, tmp_path: Path) -> None:
    from pipeline.service.process import process_file

    world = _signed_world(keyed, speech)
    meta = DictationMeta(physician_id="dr-smith", document_type="consult_note")
    first = process_file(speech, keyed, meta).draft.id  # processed before the backup
    stop = threading.Event()
    processed: list[str] = []
    errors: list[BaseException] = []

    def busy() -> None:
        try:
            while not stop.is_set():
                processed.append(process_file(speech, keyed, meta).draft.id)
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    worker = threading.Thread(target=busy, daemon=True)
    worker.start()
    n_before = len(processed)

    def let_work_go_on() -> None:  # between the database snapshot and the file walk
        deadline = 60.0
        while len(processed) < n_before + 1 and deadline > 0 and not errors:
            stop.wait(0.1)
            deadline -= 0.1

    result = backup.backup(keyed, tmp_path / "backups", after_database=let_work_go_on)
    stop.set()
    worker.join(120)
    assert not errors, errors
    assert len(processed) > n_before, "no dictation was processed during the backup"
    archive = result.path
    assert archive.name.endswith(".dxbak") and crypto.is_encrypted(archive)
    assert stat_mode(archive) == 0o600
    assert b"Backup Patient" not in archive.read_bytes()
    manifest = backup.verify(archive, crypto.keyring(keyed))

    restored = keyed.model_copy(update={"data_dir": tmp_path / "restored"})
    out = backup.restore(restored, archive)
    assert out.files == len(manifest["files"]) and out.database == "sqlite"
    assert out.repointed >= 1
    # permissions of the restored tree (checked before this process opens the database:
    # pytest's umask is not the CLI's 0o077)
    for folder, _dirs, files in os.walk(restored.data_path):
        assert stat_mode(Path(folder)) == 0o700
        for name in files:
            assert stat_mode(Path(folder) / name) == 0o600

    # the restored database is the snapshot: a subset of the source's rows now (the source
    # went on working), holding the whole signed world, the processed drafts and their files
    before, after = _rows(keyed), _rows(restored)
    for table in ("users", "user_physicians", "signatures", "sched_tasks", "draft_versions",
                  "audit_events"):
        assert after[table], f"{table} is empty"
        assert set(after[table]) <= set(before[table]), table
    for table in ("users", "user_physicians", "signatures", "sched_tasks"):
        assert after[table] == before[table], table  # nothing of these changed since
    with open_store(restored).session() as s:
        restored_drafts = list(s.scalars(select(DraftRow)))
        ids = {d.id for d in restored_drafts}
        assert {world["draft"], first} <= ids
        for d in restored_drafts:  # every draft's files are there, under the new folder
            for path in {d.docx_path, *d.outputs.values()} - {None}:
                assert Path(path).is_file(), "a restored draft's file is missing"
                assert restored.data_path in Path(path).parents
        signed = s.get(DraftRow, world["draft"])
        assert signed is not None and signed.status == "signed"
    # audio restored with identical content, under the new folder
    restored_audio = restored.archive_dir / "a1" / "dictation.wav"
    assert hashlib.sha256(restored_audio.read_bytes()).digest() == hashlib.sha256(
        speech.read_bytes()).digest()
    verified = _audit_verify(restored)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "intact" in verified.stdout


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def _small_backup(keyed: Settings, tmp_path: Path) -> Path:
    open_store(keyed)
    note = keyed.drafts_dir / "d1" / "note.txt"
    note.parent.mkdir(parents=True)
    note.write_text("hello")
    return backup.backup(keyed, tmp_path / "b.dxbak").path


def test_tampered_backup_is_refused_and_nothing_is_written(keyed: Settings,
                                                           tmp_path: Path) -> None:
    archive = _small_backup(keyed, tmp_path)
    blob = bytearray(archive.read_bytes())
    blob[len(blob) // 2] ^= 1
    bad = tmp_path / "bad.dxbak"
    bad.write_bytes(bytes(blob))
    target = keyed.model_copy(update={"data_dir": tmp_path / "new"})
    with pytest.raises(crypto.DecryptionError, match="changed or cut"):
        backup.restore(target, bad)
    assert not (tmp_path / "new").exists()
    cut = tmp_path / "cut.dxbak"
    cut.write_bytes(archive.read_bytes()[:-100])
    with pytest.raises(crypto.DecryptionError):
        backup.restore(target, cut)
    assert not (tmp_path / "new").exists()


def test_wrong_key_is_refused_clearly(keyed: Settings, tmp_path: Path) -> None:
    archive = _small_backup(keyed, tmp_path)
    target = keyed.model_copy(update={"data_dir": tmp_path / "new",
                                      "key_file": tmp_path / "other" / "data.key"})
    with pytest.raises(crypto.DecryptionError, match="not in the key ring"):
        backup.restore(target, archive)
    assert not (tmp_path / "new").exists()


def test_restore_refuses_a_non_empty_target(keyed: Settings, tmp_path: Path) -> None:
    archive = _small_backup(keyed, tmp_path)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something").write_text("x")
    target = keyed.model_copy(update={"data_dir": tmp_path / "busy"})
    with pytest.raises(backup.BackupError, match="not an empty folder"):
        backup.restore(target, archive)
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["something"]
    empty = keyed.model_copy(update={"data_dir": tmp_path / "empty"})
    (tmp_path / "empty").mkdir()
    out = backup.restore(empty, archive)
    assert (tmp_path / "empty" / "drafts" / "d1" / "note.txt").read_text() == "hello"
    assert out.files == 1


def test_nightly_keeps_the_newest_n(keyed: Settings, tmp_path: Path) -> None:
    open_store(keyed)
    keyed.backup_dir = tmp_path / "nightly"
    keyed.backup_keep = 2
    made = [backup.nightly(keyed).path for _ in range(4)]
    left = sorted(p.name for p in (tmp_path / "nightly").iterdir())
    assert left == sorted(p.name for p in made[-2:])
    # backups inside the data directory's default folder are not archived in later backups
    keyed.backup_dir = None
    first = backup.nightly(keyed)
    second = backup.nightly(keyed)
    manifest = backup.verify(second.path, crypto.keyring(keyed))
    assert not [e for e in manifest["files"] if e["path"].endswith(backup.BACKUP_SUFFIX)]
    assert first.path.parent == keyed.data_path / "backups"


@pytest.mark.slow
def test_backup_and_restore_commands(keyed: Settings, tmp_path: Path) -> None:
    """``dictation backup`` / ``restore --verify-only`` / ``restore`` in real processes."""
    open_store(keyed)
    env = dict(os.environ, DICTATION_DATA_DIR=str(keyed.data_path),
               DICTATION_KEY_FILE=str(keyed.key_file))
    env.pop("DICTATION_DATABASE_URL", None)
    cli = [sys.executable, "-m", "pipeline.cli"]
    made = subprocess.run([*cli, "backup", str(tmp_path / "cli.dxbak")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    ok = subprocess.run([*cli, "restore", str(tmp_path / "cli.dxbak"), "--verify-only"],
                        env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "backup intact" in ok.stdout, ok.stderr
    busy = subprocess.run([*cli, "restore", str(tmp_path / "cli.dxbak"), "--data-dir",
                           str(keyed.data_path)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert busy.returncode == 1 and "not an empty folder" in busy.stderr
    assert "Traceback" not in busy.stderr
    fresh = subprocess.run([*cli, "restore", str(tmp_path / "cli.dxbak"), "--data-dir",
                            str(tmp_path / "fresh")], env=env, capture_output=True, text=True,
                           timeout=120)
    assert fresh.returncode == 0, fresh.stderr
    assert (tmp_path / "fresh" / "dictation.db").is_file()


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_postgres_backup_restores_into_an_empty_database(keyed: Settings, speech: Path,
                                                         tmp_path: Path) -> None:
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.skip("pg_dump / pg_restore not installed")
    from pgserver import postgres_server

    with postgres_server(["source", "target"]) as hostport:
        keyed.database_url = f"postgresql+psycopg2://postgres@{hostport}/source"
        world = _signed_world(keyed, speech)
        result = backup.backup(keyed, tmp_path / "pg.dxbak")
        assert result.database == "postgresql"
        target = keyed.model_copy(update={
            "data_dir": tmp_path / "restored",
            "database_url": f"postgresql+psycopg2://postgres@{hostport}/target"})
        out = backup.restore(target, result.path)
        assert out.database == "postgresql" and out.repointed >= 1
        before, after = _rows(keyed), _rows(target)
        for table in ("users", "signatures", "sched_tasks", "draft_versions"):
            assert after[table] == before[table] and after[table], table
        # the source has one more audit event: the backup itself, recorded after the dump
        assert set(after["audit_events"]) < set(before["audit_events"])
        assert len(after["audit_events"]) == len(before["audit_events"]) - 1
        with open_store(target).session() as s:
            row = s.get(DraftRow, world["draft"])
            assert row is not None and row.status == "signed"
        verified = _audit_verify(target)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        # a second restore into the now non-empty database is refused before writing
        again = keyed.model_copy(update={
            "data_dir": tmp_path / "again",
            "database_url": f"postgresql+psycopg2://postgres@{hostport}/target"})
        with pytest.raises(backup.BackupError, match="not empty"):
            backup.restore(again, result.path)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_nightly_backup_deployment_and_flow(keyed: Settings, tmp_path: Path) -> None:
    """``ensure_deployments`` creates ``nightly-backup`` with the configured cron; its
    entrypoint resolves to a Prefect flow the warm worker can run, which backs up and prunes."""
    from pgserver import free_port

    from pipeline.service import flows, prefect_env

    home = Settings(data_dir=tmp_path / "prefect-var", prefect_port=free_port())
    proc = prefect_env.start_server(home)
    api = f"http://127.0.0.1:{home.prefect_port}/api"
    try:
        prefect_env.wait_healthy(api, proc=proc)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        keyed.backup_cron = "15 3 * * *"
        ids = prefect_env.ensure_deployments(api, keyed)
        with prefect_env.client(api) as c:
            dep = c.read_deployment(ids[prefect_env.BACKUP_DEPLOYMENT])
        assert dep.entrypoint == "pipeline.service.backup:nightly_backup"
        assert [s.schedule.cron for s in dep.schedules] == ["15 3 * * *"]  # type: ignore[union-attr]
        nightly_flow = backup.nightly_backup  # the entrypoint (module __getattr__)
        assert flows.FLOWS["nightly-backup"] is nightly_flow
        open_store(keyed)
        keyed.backup_dir = tmp_path / "nightly"
        keyed.backup_keep = 1
        flows.use_settings(keyed)
        try:
            with temporary_settings(updates={PREFECT_API_URL: api}):
                first = nightly_flow()
                second = nightly_flow()
                from prefect.logging.handlers import APILogWorker

                APILogWorker.drain_all(timeout=10)  # before the server stops
        finally:
            flows.use_settings(None)
        assert first["files"] >= 0 and second["pruned"] == 1
        assert [p.name for p in (tmp_path / "nightly").iterdir()] == [second["file"]]
    finally:
        prefect_env.stop_process_group(proc)
