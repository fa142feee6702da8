"""pubsub_poll: the in-memory Redis under the Prefect server's docket reads pub/sub messages
in 1 s slices instead of 0.1 s ones.

Replaces ``burner_redis.pubsub.PubSub._queue_get`` (``burner_redis/pubsub.py``, package
burner-redis, the ``memory://`` Redis that Prefect's docket uses) in the server process by
the same loop with longer slices; a shorter finite read timeout is raised to one slice. A
message is still returned the moment it arrives: only empty polls are fewer.

Why: docket's cancellation listener reads pub/sub messages, and burner-redis serves each
read by handing its thread-safe queue to a worker thread for 0.1 s at a time: ten wake-ups a
second in an idle server (measured with strace/cProfile), for cancellations the Prefect
server never sends (it never cancels docket tasks). Neither Prefect nor
burner-redis has a setting for the slice.

Relies on (``check``): ``PubSub._queue_get(self, timeout)`` with the body it was written
against (the 0.1 s slices over ``self._queue``), called by ``PubSub.get_message``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pipeline.prefect_compat._source import Inspection

__all__ = ["NAME", "TARGET", "WRITTEN_FOR", "FINGERPRINTS", "apply", "check"]

NAME = "pubsub_poll"
MODULE = "burner_redis.pubsub"
TARGET = f"{MODULE}.PubSub._queue_get"
WRITTEN_FOR = {"prefect": "3.9.1", "burner-redis": "0.1.7"}
FINGERPRINTS = {(MODULE, "PubSub._queue_get"): "383ff634de55b70c"}


def check(*, sources: Mapping[str, str] | None = None) -> None:
    """Raise ``PrefectCompatError`` if the installed burner-redis no longer has what this
    patch replaces (``sources``: stand-in module sources, for tests)."""
    c = Inspection(sources)
    c.function(MODULE, "PubSub._queue_get", params=("self", "timeout"))
    c.fingerprints(FINGERPRINTS)
    c.calls(MODULE, "PubSub.get_message", "_queue_get")
    c.done(NAME, TARGET, WRITTEN_FOR)


def apply(slice_seconds: float) -> bool:
    """In the server process: pub/sub reads wait in ``slice_seconds`` slices (0: keep
    burner-redis's 0.1 s). Returns whether it applied."""
    if slice_seconds <= 0:
        return False
    from pipeline.prefect_compat import _applies, _replace

    if not _applies(check):
        return False
    import asyncio
    import queue

    from burner_redis import pubsub

    async def _queue_get(self: Any, timeout: float | None) -> Any:
        # same contract as burner-redis 0.1.7 PubSub._queue_get, with longer slices
        if timeout == 0.0:
            try:
                return self._queue.get_nowait()
            except queue.Empty:
                return None
        if timeout is not None:
            timeout = max(timeout, slice_seconds)
        deadline = None if timeout is None else time.monotonic() + timeout
        poll = slice_seconds if timeout is None else min(timeout, slice_seconds)
        while True:
            try:
                return await asyncio.to_thread(self._queue.get, True, poll)
            except queue.Empty:
                if deadline is None:
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                poll = min(remaining, slice_seconds)

    return _replace(pubsub.PubSub, "_queue_get", lambda _original: _queue_get, TARGET)
