"""The Prefect environment and the local server's idle tuning: housekeeping services slowed or
off (each by a setting), the server launched through ``serve``. The patches ``serve`` applies
inside Prefect, docket, burner-redis and uvicorn are tested in ``test_prefect_compat.py``."""

from __future__ import annotations

import sys

import pytest

from pipeline.core.settings import Settings
from pipeline.service import prefect_env


def test_env_keeps_prefect_local_offline_and_slows_housekeeping(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Telemetry off, SQLite under the data dir, unused services off, loops slowed."""
    for key in [*prefect_env._SERVER_LOOPS, "PREFECT_API_DATABASE_CONNECTION_URL"]:
        monkeypatch.delenv(key, raising=False)
    env = prefect_env.prefect_env(settings, "http://127.0.0.1:1/api")
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["DO_NOT_TRACK"] == "1"
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:1/api"
    assert str(settings.prefect_home) in env["PREFECT_API_DATABASE_CONNECTION_URL"]
    # automations and pause expirations are not used by the pipeline: off
    assert env["PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"] == "false"
    assert env["PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED"] == "false"
    # the scheduler must stay on (nightly evaluation cron), only slower
    assert "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED" not in env
    assert float(env["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"]) >= 60
    assert float(env["PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS"]) >= 60


def test_env_lets_an_administrator_override_a_loop(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A value already in the environment wins over our default."""
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS", "7")
    env = prefect_env.prefect_env(settings)
    assert env["PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS"] == "7"


def test_server_command_runs_serve_with_or_without_tuning() -> None:
    """The local server is ``python -m pipeline.service.prefect_env serve``; untuned: zeros."""
    cmd = prefect_env.server_command("127.0.0.1", 4321)
    assert cmd[:4] == [sys.executable, "-m", "pipeline.service.prefect_env", "serve"]
    assert cmd[cmd.index("--port") + 1] == "4321"
    plain = prefect_env.server_command("127.0.0.1", 4321, tuned=False)
    assert plain[plain.index("--tick") + 1] == "0"
    assert plain[plain.index("--docket-poll") + 1] == "0"
