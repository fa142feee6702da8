"""``dictation audit verify`` detects tampering and names the first bad event;
``dictation audit search`` filters events."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, select, update

from pipeline import cli
from pipeline.core import audit
from pipeline.core.db.core import AuditEvent
from pipeline.core.settings import Settings, get_settings
from pipeline.core.store import open_store


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("DICTATION_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("DICTATION_PHYSICIANS", '["dr-smith", "dr-patel"]')
    get_settings.cache_clear()
    s = get_settings()
    with open_store(s).session() as session:
        for i in range(5):
            audit.record(session, actor="sec" if i % 2 else "admin", action="view",
                         object_type="draft", object_id=f"d{i}", patient_ref=f"MRN{i}")
    yield s
    get_settings.cache_clear()


def _ids(settings: Settings) -> list[int]:
    with open_store(settings).session() as s:
        return list(s.scalars(select(AuditEvent.id).order_by(AuditEvent.id)))


def test_verify_intact(cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["audit", "verify"]) == 0
    assert "intact: 5 events" in capsys.readouterr().out


def test_verify_detects_changed_event(cli_env: Settings,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    third = _ids(cli_env)[2]
    with open_store(cli_env).session() as s:
        s.execute(update(AuditEvent).where(AuditEvent.id == third).values(actor="mallory"))
    assert cli.main(["audit", "verify"]) != 0
    out = capsys.readouterr().out
    assert f"TAMPERED at event {third}" in out and "does not match its hash" in out


def test_verify_detects_deleted_event(cli_env: Settings,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    ids = _ids(cli_env)
    with open_store(cli_env).session() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.id == ids[1]))
    assert cli.main(["audit", "verify"]) != 0
    assert f"TAMPERED at event {ids[2]}" in capsys.readouterr().out


def test_verify_detects_truncated_tail(cli_env: Settings,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with open_store(cli_env).session() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.id == _ids(cli_env)[-1]))
    assert cli.main(["audit", "verify"]) != 0
    assert "newest events were removed" in capsys.readouterr().out


def test_search_filters(cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["audit", "search", "--user", "sec"]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 matching events" in out and "admin" not in out
    assert cli.main(["audit", "search", "--patient", "MRN3", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and '"object_id": "d3"' in lines[0]
