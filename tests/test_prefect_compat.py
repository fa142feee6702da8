"""The Prefect patches in ``pipeline.prefect_compat``: each check passes on the installed
Prefect stack and fails, with a message naming the patch, its target and what changed, on a
stand-in source where the target is gone or changed; ``dictation run`` / ``dictation worker``
stop with one line; and each patch still does its job against the real Prefect, docket,
burner-redis, uvicorn and SQLite (in fresh interpreters: the patches change classes
process-wide)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline import prefect_compat
from pipeline.core.errors import PipelineError, PrefectCompatError
from pipeline.core.settings import PROJECT_ROOT
from pipeline.prefect_compat import (
    _source,
    docket_poll,
    flow_exit,
    pubsub_poll,
    server_tick,
    sqlite_cache,
    sqlite_writes,
)


def _python(code: str) -> str:
    """Run ``code`` in a fresh interpreter (the patches change classes process-wide)."""
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout


def _prefect_sqlite(db: object, patch: str | None, body: str) -> str:
    """Run ``body`` (the inside of ``async def main()``, with ``cfg``, Prefect's server SQLite
    configuration on ``db``, and its ``engine``) in a fresh interpreter, after
    ``prefect_compat.<patch>.apply()`` when ``patch`` is given (its result printed first)."""
    indented = textwrap.indent(textwrap.dedent(body), " " * 4)
    return _python(
        "import asyncio, sqlite3\n"
        "import sqlalchemy as sa\n"
        "from pipeline import prefect_compat\n"
        + (f"print(prefect_compat.{patch}.apply())\n" if patch else "")
        + "from prefect.server.database.configurations import AioSqliteConfiguration\n"
        "async def main():\n"
        f"    cfg = AioSqliteConfiguration(connection_url='sqlite+aiosqlite:///{db}')\n"
        "    engine = await cfg.engine()\n"
        + indented
        + "    await engine.dispose()\n"
        "asyncio.run(main())\n")


def _installed_text(module: str) -> str:
    src = _source.installed_source(module)
    assert src is not None, module
    return Path(src.origin).read_text(encoding="utf-8")


def _edited(module: str, old: str, new: str) -> dict[str, str]:
    """A stand-in for ``module``: its installed source with ``old`` (which must occur)
    replaced by ``new``."""
    text = _installed_text(module)
    assert old in text, f"{old!r} not in {module}: the test's stand-in needs updating"
    return {module: text.replace(old, new)}


# --- the checks on the installed stack --------------------------------------------------------


def test_check_all_passes_on_the_installed_prefect_without_importing_it() -> None:
    """Every patch matches the pinned Prefect stack; the check reads the installed files and
    imports none of them (Prefect must see the service's environment at its first import)."""
    out = _python("""
        import sys
        from pipeline.prefect_compat import PATCHES, check_all
        check_all()
        print(len(PATCHES), [m for m in ("prefect", "docket", "burner_redis", "uvicorn")
                             if m in sys.modules])
    """)
    assert out.split() == ["6", "[]"]


def test_every_patch_records_what_it_replaces_and_the_versions_it_was_written_for() -> None:
    """Each registry entry names its target, its versions and has check/apply."""
    assert set(prefect_compat.PATCHES) == {"flow_exit", "sqlite_writes", "sqlite_cache",
                                           "docket_poll", "pubsub_poll", "server_tick"}
    for name, patch in prefect_compat.PATCHES.items():
        assert name == patch.NAME
        assert patch.TARGET and patch.__doc__ and "Why" in patch.__doc__
        assert patch.WRITTEN_FOR and all(patch.WRITTEN_FOR.values())
        assert callable(patch.check) and callable(patch.apply)
        patch.check()


@pytest.mark.slow
def test_fingerprinted_source_is_the_code_prefect_runs() -> None:
    """The definitions the checks find in the installed files are the objects Prefect,
    docket, burner-redis and uvicorn actually use (same file, same first line)."""
    out = _python("""
        import importlib, inspect
        from pipeline.prefect_compat import PATCHES, _source
        for patch in PATCHES.values():
            for module, qualname in patch.FINGERPRINTS:
                obj = importlib.import_module(module)
                for part in qualname.split("."):
                    obj = getattr(obj, part)
                code = inspect.unwrap(obj).__code__
                src = _source.installed_source(module)
                node = src.find(qualname)
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                print(qualname, code.co_filename == src.origin and code.co_firstlineno == first)
    """)
    lines = out.splitlines()
    assert len(lines) == 6
    assert all(line.endswith(" True") for line in lines), out


# --- each check fails loudly on a changed target ----------------------------------------------

_FE = "prefect.flow_engine"
_CFG = "prefect.server.database.configurations"
CHANGED: list[tuple[Callable[..., None], dict[str, str], str]] = [
    (flow_exit.check, _edited(_FE, "def _send_heartbeats(", "def _send_heartbeats_v2("),
     "prefect.flow_engine._send_heartbeats is gone"),
    (flow_exit.check, _edited(_FE, "    join_on_exit: bool = True,\n", ""),
     "_send_heartbeats has no parameter join_on_exit"),
    (flow_exit.check, _edited(_FE, "thread.join(timeout=2)", "thread.join(timeout=5)"),
     "prefect.flow_engine._send_heartbeats changed (source fingerprint"),
    (flow_exit.check, _edited(_FE, "with _send_heartbeats(self):",
                              "with _send_heartbeats(self, join_on_exit=True):"),
     "FlowRunEngine now passes join_on_exit to _send_heartbeats() itself"),
    (sqlite_writes.check, _edited(_CFG, "class AioSqliteConfiguration(",
                                  "class SqliteConfiguration("),
     "AioSqliteConfiguration.begin_transaction is gone"),
    (sqlite_writes.check, _edited(_CFG, '"IMMEDIATE" if with_for_update else "DEFERRED"',
                                  '"IMMEDIATE" if with_for_update else "EXCLUSIVE"'),
     "AioSqliteConfiguration.begin_transaction changed"),
    (sqlite_writes.check, _edited(_CFG, 'conn.exec_driver_sql(f"BEGIN {mode}")',
                                  'conn.exec_driver_sql(f"BEGIN {mode} TRANSACTION")'),
     "AioSqliteConfiguration.begin_sqlite_stmt changed"),
    (sqlite_cache.check, _edited(_CFG, "PRAGMA cache_size = 20000;",
                                 "PRAGMA cache_size = 50000;"),
     "AioSqliteConfiguration.setup_sqlite changed"),
    (sqlite_cache.check, _edited(_CFG, '"connect", self.setup_sqlite',
                                 '"connect", self.on_connect'),
     "AioSqliteConfiguration.engine no longer registers setup_sqlite"),
    (docket_poll.check, _edited("docket.worker",
                                "minimum_check_interval: timedelta = timedelta(milliseconds=250)",
                                "minimum_check_interval: timedelta = timedelta(milliseconds=50)"),
     "Worker.__init__ defaults minimum_check_interval to timedelta(milliseconds=50), "
     "expected timedelta(milliseconds=250)"),
    (docket_poll.check, _edited("docket.docket",
                                "heartbeat_interval: timedelta = timedelta(seconds=2),\n", ""),
     "Docket.__init__ has no parameter heartbeat_interval"),
    (docket_poll.check, _edited("prefect.server.api.background_workers", "Worker(docket)",
                                "Worker(docket, scheduling_resolution=timedelta(seconds=1))"),
     "background_worker now passes scheduling_resolution to Worker() itself"),
    (pubsub_poll.check, _edited("burner_redis.pubsub", "min(timeout, 0.1)", "min(timeout, 0.05)"),
     "burner_redis.pubsub.PubSub._queue_get changed"),
    (pubsub_poll.check, _edited("burner_redis.pubsub", "async def _queue_get(self, timeout):",
                                "async def _queue_get(self, timeout, block=True):"),
     "PubSub._queue_get takes (self, timeout, block), expected (self, timeout)"),
    (server_tick.check, _edited("uvicorn.server", "await asyncio.sleep(0.1)",
                                "await asyncio.sleep(0.05)"),
     "uvicorn.server.Server.main_loop changed"),
    (server_tick.check, _edited("uvicorn.server", "if counter % 10 == 0:",
                                "if counter % 20 == 0:"),
     "Server.on_tick no longer does its once-a-second work"),
]


@pytest.mark.parametrize(("check", "sources", "expected"), CHANGED,
                         ids=[f"{c.__module__.rsplit('.', 1)[1]}-{i}"
                              for i, (c, _s, _e) in enumerate(CHANGED)])
def test_check_fails_with_a_clear_message_when_its_target_changed(
        check: Callable[..., None], sources: dict[str, str], expected: str) -> None:
    """A stand-in source with the target gone, its signature or a constant it relies on
    changed: the check raises one line naming the patch, the target, what changed and the
    versions it was written for."""
    check()  # the installed source itself passes
    with pytest.raises(PrefectCompatError) as info:
        check(sources=sources)
    message = str(info.value)
    patch = sys.modules[check.__module__]
    assert isinstance(info.value, PipelineError)
    assert expected in message
    assert message.startswith(f"{patch.NAME} (replaces {patch.TARGET}): ")
    assert "[written for " in message and "; installed " in message
    assert "\n" not in message


def test_a_library_that_is_not_installed_is_named() -> None:
    """A patch whose library is missing fails its check (it is not silently skipped)."""
    c = _source.Inspection()
    c.function("no_such_library.module", "thing", has=("x",))
    with pytest.raises(PrefectCompatError, match=r"no_such_library\.module is not installed"
                       r".*\[written for no-such-library 1\.0; installed no-such-library "
                       r"not installed\]"):
        c.done("demo", "no_such_library.module.thing", {"no-such-library": "1.0"})


def test_fingerprint_ignores_comments_docstrings_and_layout() -> None:
    """Reformatting, comments and docstrings do not trip a check; a changed constant does."""

    def fingerprint(text: str) -> str:
        src = _source.Source.parse("m", text)
        node = src.find("f")
        assert node is not None
        return src.fingerprint(node)

    base = fingerprint("def f(x):\n    return x + 1\n")
    assert fingerprint('def f(x):\n    """Doc."""\n    return x + 1  # one\n') == base
    assert fingerprint("def f( x ):\n    # why\n\n    return x+1\n") == base
    assert fingerprint("def f(x):\n    return x + 2\n") != base


@pytest.mark.slow
def test_check_all_lists_every_patch_that_no_longer_applies(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two targets changed in the installed files: one error naming both, on one line."""
    stand_ins = {**_edited(_FE, "def _send_heartbeats(", "def _heartbeats("),
                 **_edited("uvicorn.server", "await asyncio.sleep(0.1)",
                           "await asyncio.sleep(0.05)")}
    real = _source.installed_source

    def installed(module: str) -> _source.Source | None:
        if module in stand_ins:
            return _source.Source.parse(module, stand_ins[module])
        return real(module)

    monkeypatch.setattr(_source, "installed_source", installed)
    with pytest.raises(PrefectCompatError) as info:
        prefect_compat.check_all()
    message = str(info.value)
    assert message.startswith("2 of 6 Prefect patches (pipeline/prefect_compat) no longer "
                              "match the installed libraries")
    assert "flow_exit (replaces prefect.flow_engine._send_heartbeats)" in message
    assert "server_tick (replaces uvicorn.server.Server.main_loop)" in message
    assert "sqlite_writes" not in message
    assert "\n" not in message
    # a patch whose check fails is not applied
    assert flow_exit.apply() is False


@pytest.mark.slow
@pytest.mark.parametrize("command", ["worker", "run"])
def test_cli_stops_with_one_line_when_a_patch_no_longer_applies(
        command: str, tmp_path: Path) -> None:
    """``dictation worker`` / ``dictation run`` on a Prefect whose ``_send_heartbeats`` is
    gone: exit 1 and one ``error:`` line, no traceback, before any Prefect server starts."""
    code = f"""
        import sys
        from pathlib import Path
        from pipeline.prefect_compat import _source
        real = _source.installed_source
        def installed(module):
            src = real(module)
            if module != "prefect.flow_engine":
                return src
            text = Path(src.origin).read_text().replace("def _send_heartbeats(", "def _hb(")
            return _source.Source.parse(module, text)
        _source.installed_source = installed
        from pipeline.cli import main
        sys.exit(main([{command!r}, "--data-dir", {str(tmp_path / "var")!r}]
                      + (["--no-web", "--no-live"] if {command!r} == "run" else [])))
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    errors = out.stderr.strip().splitlines()
    assert len(errors) == 1, out.stderr
    assert errors[0].startswith("error: 1 of 6 Prefect patches")
    assert "prefect.flow_engine._send_heartbeats is gone" in errors[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "var" / "prefect" / "server.pid").exists()


# --- each patch still does its job ------------------------------------------------------------


@pytest.mark.slow
def test_flow_exit_does_not_wait_for_the_heartbeat_thread() -> None:
    """``flow_exit`` (applied when ``pipeline.service.flows`` is imported): leaving a flow
    run's heartbeat context does not join its thread, which then ends on its own, with no further
    heartbeat. Without it the exit waits for the thread's one-second sleep."""
    out = _python("""
        import threading, time
        import pipeline.service.flows  # applies the patch
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
            # the first heartbeat is sent: the thread now sleeps in its 1 s steps (waited
            # for, not a sleep guessed long enough for the thread to have started)
            deadline = time.monotonic() + 30
            while engine.beats == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
        (beat,) = set(threading.enumerate()) - before
        print(beat.is_alive())
        beat.join(3)
        print(beat.is_alive(), engine.beats)
    """)
    assert out.split() == ["True", "False", "1"]


def test_docket_poll_sets_worker_and_heartbeat_defaults() -> None:
    """Workers built the way Prefect builds them (``Worker(docket)``) check every 2 s."""
    out = _python("""
        from pipeline.prefect_compat import docket_poll
        changed = docket_poll.apply(2.0, 10.0)
        from docket import Docket, Worker
        d = Docket(name="t", url="memory://")
        w = Worker(d)
        print(changed, w.minimum_check_interval.total_seconds(),
              w.scheduling_resolution.total_seconds(), d.heartbeat_interval.total_seconds())
        # explicit arguments still win; applying twice does not stack wrappers
        docket_poll.apply(2.0, 10.0)
        from datetime import timedelta
        print(Worker(d, minimum_check_interval=timedelta(seconds=0.5))
              .minimum_check_interval.total_seconds())
    """)
    assert out.split() == ["True", "2.0", "2.0", "10.0", "0.5"]


def test_docket_poll_zero_keeps_docket_defaults() -> None:
    """0 means docket's own defaults (0.25 s poll, 2 s heartbeat)."""
    out = _python("""
        from pipeline.prefect_compat import docket_poll
        print(docket_poll.apply(0, 0))
        from docket import Docket, Worker
        d = Docket(name="t", url="memory://")
        w = Worker(d)
        print(w.minimum_check_interval.total_seconds(), d.heartbeat_interval.total_seconds())
    """)
    assert out.split() == ["False", "0.25", "2.0"]


@pytest.mark.slow
def test_pubsub_poll_still_delivers_a_message_at_once() -> None:
    """Slower empty polls, but a published message is returned as soon as it arrives: with
    the poll slice set to 60 s, a message published now still arrives within the 10 s the
    reader waits, which a reader woken only by the poll could not do."""
    out = _python("""
        import asyncio, time
        from pipeline.prefect_compat import pubsub_poll
        print(pubsub_poll.apply(60.0))
        from burner_redis import BurnerRedis

        async def main():
            r = BurnerRedis()
            ps = r.pubsub()
            await ps.psubscribe("cancel:*")
            first = await ps.get_message(ignore_subscribe_messages=False, timeout=0.1)
            print(first["type"])
            print(await ps.get_message(timeout=0.1))
            await r.publish("cancel:x", "hi")
            msg = await ps.get_message(timeout=10)
            print(msg["type"], msg["data"].decode())

        asyncio.run(main())
    """)
    assert out.split() == ["True", "psubscribe", "None", "pmessage", "hi"]


def test_server_tick_serves_and_stops() -> None:
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
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    assert server_tick.apply(server, 0.5) is True
    assert server_tick.apply(uvicorn.Server(server.config), 0) is False
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
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


@pytest.mark.slow
@pytest.mark.parametrize("patched", [True, False])
def test_sqlite_transactions_take_the_write_lock_up_front(patched: bool, tmp_path: Path) -> None:
    """With ``sqlite_writes``, a Prefect server transaction holds SQLite's write lock from its
    start (BEGIN IMMEDIATE), so a second writer waits instead of failing later with
    "database is locked"; without it, a transaction that has only read holds no lock."""
    db = tmp_path / "prefect.db"
    out = _prefect_sqlite(db, "sqlite_writes" if patched else None, f"""
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


@pytest.mark.slow
@pytest.mark.parametrize("patched", [True, False])
def test_sqlite_page_cache_is_bounded_per_connection(patched: bool, tmp_path: Path) -> None:
    """With ``sqlite_cache``, each of the server's SQLite connections caches at most
    ``CACHE_KIB`` (Prefect's own setting, 20,000 pages, is up to 80 MB a connection and grew
    the server's memory with every flow run); Prefect's other pragmas stay."""
    db = tmp_path / "prefect.db"
    out = _prefect_sqlite(db, "sqlite_cache" if patched else None, """
        async with engine.connect() as conn:
            for pragma in ("cache_size", "journal_mode", "busy_timeout"):
                value = (await conn.execute(sa.text(f"PRAGMA {pragma}"))).scalar()
                print(pragma, value)
    """)
    lines = out.splitlines()
    if patched:
        assert lines[0] == "True"
        assert f"cache_size -{sqlite_cache.CACHE_KIB}" in lines
    else:
        assert "cache_size 20000" in lines
    assert "journal_mode wal" in lines and "busy_timeout 60000" in lines
