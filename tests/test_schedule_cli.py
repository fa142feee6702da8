"""``dictation schedule`` through the real CLI entry point on a temporary data directory."""

from __future__ import annotations

import pytest

from pipeline.cli import main
from pipeline.core.settings import get_settings


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DICTATION_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("DICTATION_PHYSICIANS", '["dr-smith", "dr-patel"]')
    monkeypatch.setenv("DICTATION_TIMEZONE", "Europe/Paris")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_book_conflict_and_list(cli_env, capsys):
    assert main(["schedule", "physician", "dr-smith", "--name", "Dr. Smith",
                 "--timezone", "America/New_York"]) == 0
    assert main(["schedule", "availability", "dr-smith", "mon,tue", "09:00", "17:00"]) == 0
    assert main(["schedule", "book", "dr-smith", "2027-03-15", "09:00"]) == 0
    capsys.readouterr()
    assert main(["schedule", "book", "dr-smith", "2027-03-15", "09:10"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot book: Dr. Smith is already booked Mon 2027-03-15 "
                          "09:00-09:20 EDT")
    assert main(["schedule", "time-off", "dr-smith", "2027-03-16"]) == 0
    assert main(["schedule", "free", "--physician", "dr-smith", "--after", "2027-03-15",
                 "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "Mon 2027-03-15 09:20 EDT dr-smith" in out
    assert main(["schedule", "list", "--physician", "dr-smith", "--date", "2027-03-15",
                 "--days", "2"]) == 0
    out = capsys.readouterr().out
    assert "Mon 2027-03-15 09:00-09:20 dr-smith     appointment 1 Follow-up [booked]" in out
    assert "Tue 2027-03-16 all day" in out
    assert main(["schedule", "status", "1", "completed"]) == 1
    assert "cannot go from booked to completed" in capsys.readouterr().err
