"""Audit integrity (issue #17): the chain is keyed (HMAC with a key outside the database and
the data directory) and signed checkpoints of its head are kept outside the database, so
``dictation audit verify`` finds a rewritten chain, whether recomputed with the plain digest
or with a wrong key, and a deleted tail; old unkeyed chains switch over at a marked event."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from pipeline import cli
from pipeline.core import audit
from pipeline.core.db.core import AuditEvent, AuditHead
from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings, get_settings
from pipeline.core.store import open_store

Capsys = pytest.CaptureFixture[str]


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings read by the CLI: a fresh data directory and a key file outside it."""
    monkeypatch.setenv("DICTATION_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("DICTATION_PHYSICIANS", '["dr-smith"]')
    monkeypatch.setenv("DICTATION_AUDIT_KEY_FILE", str(tmp_path / "keys" / "audit.key"))
    get_settings.cache_clear()
    settings = get_settings()
    audit.configure(settings)
    yield settings
    get_settings.cache_clear()


def _write(settings: Settings, n: int = 6) -> list[int]:
    with open_store(settings).session() as s:
        for i in range(n):
            audit.record(s, actor="sec", action="view", object_type="draft",
                         object_id=f"d{i}", patient_ref=f"MRN{i}")
    with open_store(settings).session() as s:
        return list(s.scalars(select(AuditEvent.id).order_by(AuditEvent.id)))


def _verify(capsys: Capsys) -> tuple[int, str]:
    code = cli.main(["audit", "verify"])
    return code, capsys.readouterr().out


def _rewrite(s: Session, from_id: int, digest: Callable[[str, AuditEvent], str]) -> None:
    """What an attacker with the database (not the key) does: edit an event, then recompute
    every hash from it on and fix up the head."""
    events = list(s.scalars(select(AuditEvent).order_by(AuditEvent.id)))
    prev = audit.GENESIS
    for event in events:
        if event.id >= from_id:
            if event.id == from_id:
                event.actor = "mallory"
            event.prev_hash = prev
            event.hash = digest(prev, event)
        prev = event.hash
    s.execute(update(AuditHead).where(AuditHead.id == 1).values(last_hash=prev))


def test_intact_chain_passes_keyed_from_its_first_event(cli_env: Settings, capsys: Capsys) -> None:
    ids = _write(cli_env)
    code, out = _verify(capsys)
    assert code == 0, out
    assert f"intact: 6 events verified, keyed from event {ids[0]}" in out
    key_file = Path(str(cli_env.audit_key_file))
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not key_file.is_relative_to(cli_env.data_path)
    # the key is not in the database
    key = key_file.read_text().strip()
    assert key.encode() not in (cli_env.data_path / "dictation.db").read_bytes()


@pytest.mark.parametrize("how", ["plain_digest", "wrong_key"])
def test_rewrite_attack_fails_verify(cli_env: Settings, capsys: Capsys, how: str) -> None:
    """Regression: an event edited on a copy of the database with the hashes recomputed by
    the project's own digest function verified as "intact"."""
    ids = _write(cli_env)
    digests: dict[str, Callable[[str, AuditEvent], str]] = {
        "plain_digest": audit._digest,
        "wrong_key": lambda prev, e: audit._keyed_digest(b"0" * 64, prev, e),
    }
    with open_store(cli_env).session() as s:
        _rewrite(s, ids[2], digests[how])
    code, out = _verify(capsys)
    assert code == 2
    assert f"TAMPERED at event {ids[2]}: its content does not match its hash" in out


def test_rewrite_of_the_whole_chain_without_the_key_fails(cli_env: Settings,
                                                          capsys: Capsys) -> None:
    """Recomputing from the first event with the plain digest makes the chain look like an
    old unkeyed one; the signed checkpoints say it was keyed."""
    ids = _write(cli_env)
    with open_store(cli_env).session() as s:
        _rewrite(s, ids[0], audit._digest)
    code, out = _verify(capsys)
    assert code == 2 and "TAMPERED at event 1: it differs from its signed checkpoint" in out


def test_rewrite_with_the_real_key_is_what_the_key_protects(cli_env: Settings,
                                                            capsys: Capsys) -> None:
    """With the key (and no checkpoint after the edit) a rewrite passes: the attack above
    fails for want of the key, not for a quirk of the test's rewrite."""
    ids = _write(cli_env)
    key = audit.load_key(audit.config_for(cli_env))
    assert key is not None
    with open_store(cli_env).session() as s:
        _rewrite(s, ids[2], lambda prev, e: audit._keyed_digest(key, prev, e))
    assert _verify(capsys)[0] == 0


def test_deleted_tail_fails_verify(cli_env: Settings, capsys: Capsys) -> None:
    ids = _write(cli_env)
    assert _verify(capsys)[0] == 0  # writes a signed checkpoint of the head
    with open_store(cli_env).session() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.id >= ids[-2]))
        last = s.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1)).one()
        s.execute(update(AuditHead).values(last_hash=last.hash))  # the head fixed up too
    code, out = _verify(capsys)
    assert code == 2 and "newest events were removed" in out
    assert f"names event {ids[-1]}" in out


def test_checkpoints_are_written_every_n_events(cli_env: Settings) -> None:
    settings = cli_env.model_copy(update={"audit_checkpoint_every": 3})
    audit.configure(settings)
    for _ in range(7):  # one transaction each (a transaction writes at most one checkpoint)
        _write(settings, 1)
    lines = (settings.data_path / audit.CHECKPOINT_FILE).read_text().splitlines()
    named = [json.loads(line.split("\t")[0])["id"] for line in lines]
    assert named == [1, 3, 6]
    # a forged line (no key) is found
    with (settings.data_path / audit.CHECKPOINT_FILE).open("a") as fh:
        fh.write('{"hash":"' + "0" * 64 + '","id":99,"keyed_from":1,"ts":"x"}\t' + "0" * 64
                 + "\n")
    with open_store(settings).session() as s:
        result = audit.verify(s, settings)
    assert not result.ok and "line 4 of the signed checkpoint file" in result.reason


def test_missing_key_is_said_clearly(cli_env: Settings, capsys: Capsys) -> None:
    _write(cli_env)
    Path(str(cli_env.audit_key_file)).unlink()
    code, out = _verify(capsys)
    assert code == 3
    assert "NOT VERIFIED: the audit key was not found" in out
    assert str(cli_env.audit_key_file) in out
    # writing refuses too, rather than starting a chain nobody could verify
    with open_store(cli_env).session() as s, pytest.raises(ConfigError, match="is missing"):
        audit.record(s, actor="sec", action="view", object_type="draft")


def test_key_file_inside_the_data_directory_is_refused(settings: Settings) -> None:
    inside = settings.model_copy(update={"audit_key_file": settings.data_path / "audit.key"})
    with pytest.raises(ConfigError, match="inside the data directory"):
        audit.config_for(inside)


def test_old_unkeyed_chain_switches_over_at_a_marked_event(cli_env: Settings,
                                                           capsys: Capsys) -> None:
    """A chain written before keys: verified once, then continued keyed from an
    ``audit_keyed`` event; an edit of the old part still fails verify."""
    store = open_store(cli_env)
    with store.session() as s:  # the chain as the previous version wrote it
        prev = audit.GENESIS
        for i in range(3):
            e = AuditEvent(ts=datetime.now(UTC), actor="old", action="view",
                           object_type="draft", object_id=f"o{i}", outcome="ok", detail={},
                           prev_hash=prev)
            e.hash = audit._digest(prev, e)
            s.add(e)
            prev = e.hash
        s.add(AuditHead(id=1, seq=3, last_hash=prev))
    code, out = _verify(capsys)
    assert code == 0 and "intact: 3 events" in out and "not keyed yet" in out
    _write(cli_env, 2)
    with store.session() as s:
        marker = s.scalars(select(AuditEvent).where(
            AuditEvent.action == audit.SWITCH_ACTION)).one()
        assert marker.id == 4 and marker.detail == {"legacy_events": 3, "legacy_intact": True}
        assert s.get(AuditHead, 1).keyed_from == 4  # type: ignore[union-attr]
    code, out = _verify(capsys)
    assert code == 0 and "intact: 6 events verified, keyed from event 4" in out
    with store.session() as s:  # rewrite the old, unkeyed part: the marker's link breaks
        _rewrite(s, 2, audit._digest)
    code, out = _verify(capsys)
    assert code == 2 and "TAMPERED at event 4" in out
