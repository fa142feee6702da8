"""docket_poll: the Prefect server's docket worker checks for due tasks every 2 s, and
docket heartbeats every 10 s.

Replaces ``docket.Worker.__init__`` (``docket/worker.py``) and ``docket.Docket.__init__``
(``docket/docket.py``, package pydocket) in the server process by wrappers that default
``minimum_check_interval`` and ``scheduling_resolution`` (docket: 0.25 s) and
``heartbeat_interval`` (docket: 2 s) to our values; arguments a caller passes still win.

Why: the docket worker runs Prefect's background tasks and perpetual services; an idle
``prefect server start`` (3.9.1) woke every 0.25 s to check its in-memory Redis and every 2 s
to heartbeat (measured with strace/cProfile; with uvicorn's tick and burner-redis's polls,
the stock server at rest took 1.9 % of a core on 2 cores). Prefect builds both objects
itself (``Docket(...)`` in ``prefect/server/api/server.py``, ``Worker(docket)`` in
``prefect/server/api/background_workers.py``) and has no setting for these intervals.
Docket tasks then start up to 2 s later: Prefect's housekeeping, never on a dictation's path.

Relies on (``check``): those parameters with docket's defaults, and Prefect's two call sites
not passing them.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from pipeline.prefect_compat._source import Inspection

__all__ = ["NAME", "TARGET", "WRITTEN_FOR", "FINGERPRINTS", "apply", "check"]

NAME = "docket_poll"
TARGET = "docket.Worker.__init__ and docket.Docket.__init__ (their interval defaults)"
WRITTEN_FOR = {"prefect": "3.9.1", "pydocket": "0.27.2"}
#: only the parameters' defaults and Prefect's calls matter here (``check``)
FINGERPRINTS: dict[tuple[str, str], str] = {}

_WORKER_DEFAULTS = {"minimum_check_interval": "timedelta(milliseconds=250)",
                    "scheduling_resolution": "timedelta(milliseconds=250)"}
_DOCKET_DEFAULTS = {"heartbeat_interval": "timedelta(seconds=2)"}


def check(*, sources: Mapping[str, str] | None = None) -> None:
    """Raise ``PrefectCompatError`` if the installed Prefect / docket no longer has what this
    patch replaces (``sources``: stand-in module sources, for tests)."""
    c = Inspection(sources)
    c.function("docket.worker", "Worker.__init__", has=tuple(_WORKER_DEFAULTS),
               defaults=_WORKER_DEFAULTS)
    c.function("docket.docket", "Docket.__init__", has=tuple(_DOCKET_DEFAULTS),
               defaults=_DOCKET_DEFAULTS)
    c.calls("prefect.server.api.background_workers", "background_worker", "Worker",
            without=tuple(_WORKER_DEFAULTS))
    c.calls("prefect.server.api.server", "create_app", "Docket",
            without=tuple(_DOCKET_DEFAULTS))
    c.done(NAME, TARGET, WRITTEN_FOR)


def apply(poll_seconds: float, heartbeat_seconds: float) -> bool:
    """In the server process, before its app starts: docket workers check for tasks every
    ``poll_seconds`` and docket heartbeats every ``heartbeat_seconds`` (0 keeps docket's
    default). Returns whether anything changed."""
    import functools

    from pipeline.prefect_compat import _applies, _replace

    wanted_worker = {k: poll_seconds for k in _WORKER_DEFAULTS if poll_seconds > 0}
    wanted_docket = {k: heartbeat_seconds for k in _DOCKET_DEFAULTS if heartbeat_seconds > 0}
    if not (wanted_worker or wanted_docket) or not _applies(check):
        return False
    from docket import Docket, Worker

    def defaults(seconds: dict[str, float]) -> Any:
        wanted = {k: timedelta(seconds=v) for k, v in seconds.items()}

        def wrap(original: Any) -> Any:
            @functools.wraps(original)
            def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
                for key, value in wanted.items():
                    kwargs.setdefault(key, value)
                original(self, *args, **kwargs)

            return __init__

        return wrap

    changed = False
    if wanted_worker:
        changed |= _replace(Worker, "__init__", defaults(wanted_worker), "docket.Worker")
    if wanted_docket:
        changed |= _replace(Docket, "__init__", defaults(wanted_docket), "docket.Docket")
    return changed
