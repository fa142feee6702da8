"""server_tick: a uvicorn server's main loop wakes once a second instead of ten times.

Replaces ``uvicorn.Server.main_loop`` (``uvicorn/server.py``) on one server instance (the
Prefect server's, in ``pipeline.service.prefect_env.serve``, and the review workbench's) by
the same loop with a longer sleep; ``on_tick`` is then called with the counter advanced by 10
each tick, so its once-a-second work (the Date header, ``callback_notify``) runs every tick.
Requests are served as they arrive either way: the loop only checks for shutdown.

Why: uvicorn's loop sleeps 0.1 s between ticks and has no setting for it; in an idle Prefect
server that was one of the pollers behind 1.9 % of a core on 2 cores (measured with
strace/cProfile). A stop (``should_exit``) is then noticed within one tick.

Relies on (``check``): ``Server.main_loop(self)`` with the body it was written against,
``Server._serve`` calling it, and ``Server.on_tick(self, counter)`` doing its once-a-second
work when ``counter % 10 == 0`` and returning True once ``should_exit`` is set.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.prefect_compat._source import Inspection

__all__ = ["NAME", "TARGET", "WRITTEN_FOR", "FINGERPRINTS", "apply", "check"]

NAME = "server_tick"
MODULE = "uvicorn.server"
TARGET = f"{MODULE}.Server.main_loop"
WRITTEN_FOR = {"uvicorn": "0.55.0"}
FINGERPRINTS = {(MODULE, "Server.main_loop"): "c45ab237408660e1"}


def check(*, sources: Mapping[str, str] | None = None) -> None:
    """Raise ``PrefectCompatError`` if the installed uvicorn no longer has what this patch
    replaces (``sources``: stand-in module sources, for tests)."""
    c = Inspection(sources)
    c.function(MODULE, "Server.main_loop", params=("self",))
    c.fingerprints(FINGERPRINTS)
    c.calls(MODULE, "Server._serve", "main_loop")
    c.function(MODULE, "Server.on_tick", params=("self", "counter"))
    c.contains(MODULE, "Server.on_tick", "if counter % 10 == 0:",
               "does its once-a-second work when counter % 10 == 0")
    c.contains(MODULE, "Server.on_tick", "if self.should_exit: return True",
               "returns True once should_exit is set")
    c.done(NAME, TARGET, WRITTEN_FOR)


def apply(server: Any, tick_seconds: float) -> bool:
    """Make ``server`` (a ``uvicorn.Server`` not yet running) tick every ``tick_seconds``
    (0: keep uvicorn's 0.1 s). Returns whether it applied."""
    if tick_seconds <= 0:
        return False
    from pipeline.prefect_compat import _applies

    if not _applies(check):
        return False
    import asyncio
    import types

    async def main_loop(self: Any) -> None:
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            await asyncio.sleep(tick_seconds)
            counter = (counter + 10) % 864000  # on_tick's "once per second" work each tick
            should_exit = await self.on_tick(counter)

    server.main_loop = types.MethodType(main_loop, server)
    return True
