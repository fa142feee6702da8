"""The warm worker's transcription slots (``pipeline.service.flows._Slots``): never more
transcriptions than slots, STAT before routine, routine in arrival order, and a routine run
does not take a slot while a claimed STAT run is still on its way to one."""

from __future__ import annotations

import threading
import time

from pipeline.service.flows import _Slots


def _wait_until(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def _blocked(slots: _Slots, n: int) -> bool:
    """``n`` runs are waiting inside ``hold``. Seen while holding the slots' lock, a waiting
    ticket means its run checked for a slot and went to sleep on the condition (``wait`` is
    the only place it lets go of the lock with its ticket queued): certain, not a guess."""
    with slots._cond:
        return len(slots._waiting) == n


def _waiter(slots: _Slots, name: str, stat: bool, order: list[str],
            inside: threading.Event | None = None) -> threading.Thread:
    def run() -> None:
        with slots.hold(stat=stat):
            order.append(name)
            if inside is not None:
                inside.wait(10)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_stat_first_then_routine_in_arrival_order() -> None:
    freed: list[str | None] = []
    slots = _Slots(1, freed.append)
    order: list[str] = []
    release = threading.Event()
    first = _waiter(slots, "busy", False, order, release)
    _wait_until(lambda: order == ["busy"])
    threads = []
    for name, stat in (("routine-a", False), ("routine-b", False), ("stat", True)):
        threads.append(_waiter(slots, name, stat, order))
        _wait_until(lambda n=len(threads): _blocked(slots, n))
    assert order == ["busy"]  # one slot: everyone else waits
    release.set()
    for t in [first, *threads]:
        t.join(10)
    assert order == ["busy", "stat", "routine-a", "routine-b"]
    assert len(freed) == 4  # the worker is told each time a transcription ends


def test_slots_bound_concurrent_transcriptions() -> None:
    """Two slots: two runs are inside at once (they meet at a barrier there, so the overlap
    is certain rather than left to thread timing), never more."""
    slots = _Slots(2, lambda _run: None)
    now = 0
    peak = 0
    lock = threading.Lock()
    both_inside = threading.Barrier(2, timeout=10)

    def work() -> None:
        nonlocal now, peak
        with slots.hold():
            with lock:
                now += 1
                peak = max(peak, now)
            both_inside.wait()
            with lock:
                now -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak == 2


def test_routine_waits_for_a_claimed_stat_run_until_it_arrives_or_ends() -> None:
    slots = _Slots(1, lambda _run: None)
    order: list[str] = []
    slots.expect_stat("run-stat")
    routine = _waiter(slots, "routine", False, order)
    _wait_until(lambda: _blocked(slots, 1))
    assert order == []  # a slot is free, but a claimed STAT run comes first
    slots.forget("run-stat")  # the STAT run ended before transcribing (e.g. quarantined)
    routine.join(10)
    assert order == ["routine"]


def test_a_run_from_the_stat_queue_goes_first_even_if_its_sidecar_says_routine(
        monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Priority follows the queue the run was claimed from; the routine run that was waiting
    for it is woken when it arrives (no deadlock)."""
    from pipeline.service import flows

    ids = threading.local()
    monkeypatch.setattr(flows, "_current_flow_run_id", lambda: getattr(ids, "run", None))
    slots = _Slots(1, lambda _run: None)
    order: list[str] = []

    def run(run_id: str) -> None:
        ids.run = run_id
        with slots.hold(stat=False):
            order.append(run_id)

    slots.expect_stat("run-stat")
    routine = threading.Thread(target=run, args=("run-routine",), daemon=True)
    routine.start()
    _wait_until(lambda: _blocked(slots, 1))
    stat = threading.Thread(target=run, args=("run-stat",), daemon=True)
    stat.start()
    routine.join(10)
    stat.join(10)
    assert order == ["run-stat", "run-routine"]
