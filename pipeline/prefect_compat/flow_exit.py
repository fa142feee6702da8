"""flow_exit: a finished flow run does not wait for its heartbeat thread.

Replaces ``prefect.flow_engine._send_heartbeats`` (``prefect/flow_engine.py``), the context
manager that keeps a flow run's heartbeats going in a daemon thread, by the same function
with ``join_on_exit=False``, in the process that runs flows (the warm worker; applied when
``pipeline.service.flows`` is imported).

Why: the sync engine (``FlowRunEngine``) enters ``_send_heartbeats(self)``, whose default
``join_on_exit=True`` joins the heartbeat thread when the flow run ends, and that thread
sleeps in 1 s steps: every flow run ended 0-1 s (0.55 s on average, measured) after its last
task, 4-8 % of a 50-dictation batch. No Prefect setting chooses the join (the join came with
PrefectHQ/prefect#19641, which moved heartbeats into the flow engine; we know of no upstream
issue about its cost). The async engine already passes ``join_on_exit=False``. Left alone,
the thread sees the stop flag within a second and ends without another heartbeat.

Relies on (``check``): ``_send_heartbeats(engine, join_on_exit=True)`` with the body it was
written against, and ``FlowRunEngine`` calling it by its module-global name without
``join_on_exit=`` (a caller that passes it overrides ours).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.prefect_compat._source import Inspection

__all__ = ["NAME", "TARGET", "WRITTEN_FOR", "FINGERPRINTS", "apply", "check"]

NAME = "flow_exit"
MODULE = "prefect.flow_engine"
TARGET = f"{MODULE}._send_heartbeats"
WRITTEN_FOR = {"prefect": "3.9.1"}
FINGERPRINTS = {(MODULE, "_send_heartbeats"): "9184d54ae09f05bf"}


def check(*, sources: Mapping[str, str] | None = None) -> None:
    """Raise ``PrefectCompatError`` if the installed Prefect no longer has what this patch
    replaces (``sources``: stand-in module sources, for tests)."""
    c = Inspection(sources)
    c.function(MODULE, "_send_heartbeats", has=("engine", "join_on_exit"),
               defaults={"join_on_exit": "True"})
    c.fingerprints(FINGERPRINTS)
    c.calls(MODULE, "FlowRunEngine", "_send_heartbeats", without=("join_on_exit",))
    c.done(NAME, TARGET, WRITTEN_FOR)


def apply() -> bool:
    """In a process that runs flows: flow runs no longer join their heartbeat thread on exit.
    Returns whether it applied (False, with a warning, for a Prefect it does not match)."""
    import functools
    import inspect

    from pipeline.prefect_compat import _applies, _replace

    if not _applies(check):
        return False
    from prefect import flow_engine

    def wrap(original: Any) -> Any | None:
        if "join_on_exit" not in inspect.signature(original).parameters:
            return None
        return functools.partial(original, join_on_exit=False)

    return _replace(flow_engine, "_send_heartbeats", wrap, TARGET)
