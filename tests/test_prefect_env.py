"""The Prefect environment and the local server's idle tuning: housekeeping services slowed or
off (each by a setting), the server launched through ``serve``, docket / burner-redis / uvicorn
pollers slowed in the server process and still delivering at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import pytest

from pipeline.core.settings import PROJECT_ROOT, Settings
from pipeline.service import prefect_env


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (the tuning patches classes process-wide)."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


def _prefect_sqlite(db: object, patch: str | None, body: str) -> str:
    """Run ``body`` (the inside of ``async def main()``, with ``cfg``, Prefect's server SQLite
    configuration on ``db``, and its ``engine``) in a fresh interpreter, after
    ``prefect_env.<patch>()`` when ``patch`` is given (its result printed first)."""
    indented = textwrap.indent(textwrap.dedent(body), " " * 4)
    return _python(
        "import asyncio, sqlite3\n"
        "import sqlalchemy as sa\n"
        "from pipeline.service import prefect_env\n"
        + (f"print(prefect_env.{patch}())\n" if patch else "")
        + "from prefect.server.database.configurations import AioSqliteConfiguration\n"
        "async def main():\n"
        f"    cfg = AioSqliteConfiguration(connection_url='sqlite+aiosqlite:///{db}')\n"
        "    engine = await cfg.engine()\n"
        + indented
        + "    await engine.dispose()\n"
        "asyncio.run(main())\n")


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


def test_tune_docket_sets_worker_and_heartbeat_defaults() -> None:
    """Workers built the way Prefect builds them (``Worker(docket)``) check every 2 s."""
    out = _python("""
        from pipeline.service import prefect_env
        changed = prefect_env.tune_docket(2.0, 10.0)
        from docket import Docket, Worker
        d = Docket(name="t", url="memory://")
        w = Worker(d)
        print(len(changed), w.minimum_check_interval.total_seconds(),
              w.scheduling_resolution.total_seconds(), d.heartbeat_interval.total_seconds())
        # explicit arguments still win; tuning twice does not stack wrappers
        prefect_env.tune_docket(2.0, 10.0)
        from datetime import timedelta
        print(Worker(d, minimum_check_interval=timedelta(seconds=0.5))
              .minimum_check_interval.total_seconds())
    """)
    assert out.split() == ["3", "2.0", "2.0", "10.0", "0.5"]


def test_tune_docket_zero_keeps_docket_defaults() -> None:
    """0 means docket's own defaults (0.25 s poll, 2 s heartbeat)."""
    out = _python("""
        from pipeline.service import prefect_env
        print(len(prefect_env.tune_docket(0, 0)))
        from docket import Docket, Worker
        d = Docket(name="t", url="memory://")
        w = Worker(d)
        print(w.minimum_check_interval.total_seconds(), d.heartbeat_interval.total_seconds())
    """)
    assert out.split() == ["0", "0.25", "2.0"]


def test_tuned_pubsub_still_delivers_a_message_at_once() -> None:
    """Slower empty polls, but a published message is returned as soon as it arrives."""
    out = _python("""
        import asyncio, time
        from pipeline.service import prefect_env
        print(prefect_env.tune_pubsub(1.0))
        from burner_redis import BurnerRedis

        async def main():
            r = BurnerRedis()
            ps = r.pubsub()
            await ps.psubscribe("cancel:*")
            first = await ps.get_message(ignore_subscribe_messages=False, timeout=0.1)
            print(first["type"])
            print(await ps.get_message(timeout=0.1))
            await r.publish("cancel:x", "hi")
            t = time.monotonic()
            msg = await ps.get_message(timeout=5)
            print(msg["type"], msg["data"].decode(), time.monotonic() - t < 0.9)

        asyncio.run(main())
    """)
    assert out.split() == ["True", "psubscribe", "None", "pmessage", "hi", "True"]


def test_low_tick_server_serves_and_stops() -> None:
    """The slow-ticking uvicorn server answers requests (with a Date header) and exits when
    asked."""
    import socket

    import uvicorn

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = prefect_env.low_tick_server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"), 0.5)
    server.install_signal_handlers = lambda: None
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            assert resp.read() == b"ok"
            assert resp.headers["date"]
    finally:
        server.should_exit = True
        thread.join(20)
    assert not thread.is_alive()


@pytest.mark.parametrize("patched", [True, False])
def test_sqlite_transactions_take_the_write_lock_up_front(patched: bool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With the tuning, a Prefect server transaction holds SQLite's write lock from its
    start (BEGIN IMMEDIATE), so a second writer waits instead of failing later with
    "database is locked"; without it, a transaction that has only read holds no lock."""
    db = tmp_path / "prefect.db"
    out = _prefect_sqlite(db, "immediate_sqlite_writes" if patched else None, f"""
        async with engine.begin() as conn:
            await conn.execute(sa.text("create table t (x int)"))
        session = await cfg.session(engine)
        async with cfg.begin_transaction(session):
            await session.execute(sa.text("select count(*) from t"))
            other = sqlite3.connect("{db}", timeout=0)
            try:
                other.execute("BEGIN IMMEDIATE")
                print("second writer got the lock")
                other.execute("ROLLBACK")
            except sqlite3.OperationalError as exc:
                print("second writer:", exc)
            other.close()
    """)
    if patched:
        assert out.splitlines() == ["True", "second writer: database is locked"]
    else:
        assert out.splitlines() == ["second writer got the lock"]


def test_flow_exit_does_not_wait_for_the_heartbeat_thread() -> None:
    """``quick_flow_exit`` (applied when ``pipeline.service.flows`` is imported): leaving a flow
    run's heartbeat context does not join its thread, which then ends on its own, with no further
    heartbeat. Without it the exit waits for the thread's one-second sleep."""
    out = _python("""
        import threading, time
        import pipeline.service.flows  # applies the tuning
        from prefect import flow_engine

        class Engine:
            heartbeat_seconds = 30
            flow_run = None
            beats = 0
            def _build_heartbeat_event_template(self):
                return {}, []
            def _emit_flow_run_heartbeat(self, resource, related):
                self.beats += 1
            logger = __import__("logging").getLogger("test")

        engine = Engine()
        before = set(threading.enumerate())
        with flow_engine._send_heartbeats(engine):
            time.sleep(0.05)
        (beat,) = set(threading.enumerate()) - before
        print(beat.is_alive())
        beat.join(3)
        print(beat.is_alive(), engine.beats)
    """)
    assert out.split() == ["True", "False", "1"]


@pytest.mark.parametrize("patched", [True, False])
def test_sqlite_page_cache_is_bounded_per_connection(patched: bool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With the tuning, each of the server's SQLite connections caches at most
    ``SQLITE_CACHE_KIB`` (Prefect's own setting, 20,000 pages, is up to 80 MB a connection
    and grew the server's memory with every flow run); Prefect's other pragmas stay."""
    db = tmp_path / "prefect.db"
    out = _prefect_sqlite(db, "bounded_sqlite_cache" if patched else None, """
        async with engine.connect() as conn:
            for pragma in ("cache_size", "journal_mode", "busy_timeout"):
                value = (await conn.execute(sa.text(f"PRAGMA {pragma}"))).scalar()
                print(pragma, value)
    """)
    lines = out.splitlines()
    if patched:
        assert lines[0] == "True"
        assert f"cache_size -{prefect_env.SQLITE_CACHE_KIB}" in lines
    else:
        assert "cache_size 20000" in lines
    assert "journal_mode wal" in lines and "busy_timeout 60000" in lines
