"""Every place the pipeline reaches into Prefect's internals, or into those of the libraries
Prefect's server runs on (docket, burner-redis, uvicorn): one module per patch.

Each module says what it replaces (the exact attribute and file), why (the missing setting
and what was measured), the versions it was written for (``WRITTEN_FOR``) and the source
fingerprints of what it relies on (``FINGERPRINTS``), and has ``apply(...) -> bool`` (False,
with a warning, when it does not apply) and ``check()``, which raises ``PrefectCompatError``
when the installed library no longer has what the patch replaces.

=================  ==================================================================  =========
patch              replaces                                                            process
=================  ==================================================================  =========
``flow_exit``      ``prefect.flow_engine._send_heartbeats`` (no join on exit)          worker
``sqlite_writes``  ``AioSqliteConfiguration.begin_transaction`` (BEGIN IMMEDIATE)      server
``sqlite_cache``   ``AioSqliteConfiguration.setup_sqlite`` (bounded page cache)        server
``docket_poll``    ``docket.Worker`` / ``docket.Docket`` ``__init__`` defaults         server
``pubsub_poll``    ``burner_redis.pubsub.PubSub._queue_get`` (longer read slices)      server
``server_tick``    ``uvicorn.Server.main_loop`` of one server (1 s tick)               server, web
=================  ==================================================================  =========

``dictation run`` and ``dictation worker`` call ``check_all()`` before they start Prefect: a
Prefect (or docket, burner-redis, uvicorn) that no longer matches stops them with one line
naming every patch that no longer applies, instead of a service that silently runs
untuned. The checks read the installed source files and import nothing (``_source``).

Upgrading Prefect: install the new versions, run ``python -m pipeline.prefect_compat`` (each
patch's status and the installed fingerprints), re-read each changed target, adapt the patch
or drop it if upstream fixed the cause, then record the new ``WRITTEN_FOR`` and
``FINGERPRINTS``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

from pipeline.core.errors import PrefectCompatError
from pipeline.prefect_compat import (
    docket_poll,
    flow_exit,
    pubsub_poll,
    server_tick,
    sqlite_cache,
    sqlite_writes,
)
from pipeline.prefect_compat._source import version_drift

__all__ = [
    "PATCHES",
    "check_all",
    "PrefectCompatError",
    "flow_exit",
    "sqlite_writes",
    "sqlite_cache",
    "docket_poll",
    "pubsub_poll",
    "server_tick",
]

log = logging.getLogger(__name__)

#: patch name -> its module (``NAME``, ``TARGET``, ``WRITTEN_FOR``, ``FINGERPRINTS``,
#: ``check()``, ``apply(...)``)
PATCHES: dict[str, ModuleType] = {
    module.NAME: module
    for module in (flow_exit, sqlite_writes, sqlite_cache, docket_poll, pubsub_poll,
                   server_tick)
}


def check_all() -> None:
    """Run every patch's check; raise one ``PrefectCompatError`` listing all that no longer
    apply. Versions other than those the patches were written for, with every target
    unchanged, are only logged."""
    failures: list[str] = []
    drift: set[str] = set()
    for patch in PATCHES.values():
        try:
            patch.check()
        except PrefectCompatError as exc:
            failures.append(str(exc))
        drift.update(version_drift(patch.WRITTEN_FOR))
    if failures:
        raise PrefectCompatError(
            f"{len(failures)} of {len(PATCHES)} Prefect patches (pipeline/prefect_compat) no "
            f"longer match the installed libraries; install the versions they were written "
            f"for (requirements.lock) or adapt them: " + " | ".join(failures)
        )
    if drift:
        log.warning("Prefect patches: targets unchanged, but written for other versions (%s)",
                    ", ".join(sorted(drift)))


def _applies(check: Callable[[], None]) -> bool:
    """Run a patch's ``check``: True if it passes; False, with the reason logged, if not."""
    try:
        check()
    except PrefectCompatError as exc:
        log.warning("%s: left as it is", exc)
        return False
    return True


def _replace(owner: Any, attr: str, wrap: Callable[[Any], Any | None], what: str) -> bool:
    """Replace ``owner.attr`` by ``wrap(original)``, once: the replacement is marked, and a
    second call finds the mark and keeps it. False, with a warning naming ``what``, when the
    attribute is missing or ``wrap`` returns None (the library changed under us); False
    without a word when ``owner`` is None (that part of the library is not installed)."""
    if owner is None:
        return False
    original = getattr(owner, attr, None)
    if original is not None and getattr(original, "_dictation_tuned", False):
        return True
    new = wrap(original) if original is not None else None
    if new is None:
        log.warning("%s changed: left as it is", what)
        return False
    new._dictation_tuned = True
    setattr(owner, attr, new)
    return True
