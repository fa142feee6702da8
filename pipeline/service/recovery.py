"""Recovery after a crash: which flow runs are still alive, and the sweep that finds every
dictation neither done, nor quarantined, nor truly in flight, and submits it again once.

Why: the service can be killed (``kill -9``, power loss) at any moment, including between
the steps of one operation. The warm worker claims a run by proposing ``Pending`` (the
server accepts that for exactly one claimant) and then records its pid; a kill between the
two left a ``Pending`` run without a pid that nobody would ever take again (issue #18, 1).
The claim now names its claimant in the ``Pending`` state's message (``claim_message``), so
the claimant is known from the first step on, and a run whose claimant cannot be found is
treated as abandoned once it is older than ``RecoveryOptions.grace_seconds``.

A run in ``Pending`` or ``Running`` is *alive* when its claimant (``host:pid``, from the
run's ``infrastructure_pid`` or the claim message) is:

- on this host: a process with that pid exists and was started before the run entered its
  state (a pid reused by a later process does not count);
- on another host: alive unless that worker's heartbeat to the work pool stopped more than
  three heartbeat intervals (plus the grace period) ago; a worker the pool does not know is
  taken as alive (a stock Prefect worker; it has its own crash handling).

A run with no claimant at all is alive for ``grace_seconds`` after it entered its state.

The sweep (``sweep``; ``dictation run`` calls it at start and every
``settings.recovery_sweep_seconds``):

1. every ``Pending``/``Running`` run whose claimant is gone is ended: ``Completed`` if its
   dictation is done (issue #18, 9: a run left ``RUNNING`` by a kill although its work was
   finished), else ``Crashed``. Messages carry ids only.
2. every unfinished dictation (``received``/``processing``) whose flow run is missing,
   finished, crashed or abandoned, or that was never submitted and is older than the grace
   period, is submitted again, exactly once: the new run replaces the row's
   ``flow_run_id`` only if nobody changed it meanwhile, and the submission carries an
   idempotency key (dictation id + the run it replaces), so two sweepers sharing one
   Prefect server create one run between them. The flow is idempotent per dictation id.
3. a dictation whose runs crashed or failed ``max_attempts`` times (it may be what kills
   the worker, or what makes the flow raise before it can quarantine it) is not submitted
   again: it is marked ``failed`` and its files are quarantined with a
   reason, so a person looks at it instead of the service crashing in a loop.

Nothing here logs more than ids, states and counts.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from pipeline.core.db.core import DictationRow
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.ingest import inbox
from pipeline.service import prefect_env

__all__ = [
    "RecoveryOptions",
    "SweepReport",
    "claim_message",
    "claimant",
    "run_is_alive",
    "run_verdict",
    "read_runs",
    "should_resubmit",
    "sweep",
    "CLAIM_PREFIX",
    "REPEATED_CRASH",
]

log = logging.getLogger(__name__)

#: the ``Pending`` state message of a claim: ``claimed by <host>:<pid>``
CLAIM_PREFIX = "claimed by "
#: error code of a dictation given up after ``max_attempts`` crashed runs
REPEATED_CRASH = "repeated_crash"
#: a process must have started at most this long after the run entered its state to count
#: as its claimant (clock granularity; a pid reused later fails this check)
_START_SLACK_S = 5.0
#: flow runs per API call (Prefect's PREFECT_API_DEFAULT_LIMIT, 200, is the most it answers)
_PAGE = 200

#: submit(dictation_id, priority, idempotency_key=...) -> flow run id
Submit = Callable[..., "str | None"]


@dataclass
class RecoveryOptions:
    """How patient recovery is (defaults: ``settings.recovery_*``)."""

    #: a run with no known claimant, or a dictation never submitted, counts as abandoned
    #: after this long (a stock Prefect worker records its pid a few seconds after claiming)
    grace_seconds: float = 120.0
    #: crashed or failed runs of one dictation before it is given up (quarantined as
    #: ``failed``)
    max_attempts: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> RecoveryOptions:
        return cls(grace_seconds=settings.recovery_grace_seconds,
                   max_attempts=settings.recovery_max_attempts)


@dataclass
class SweepReport:
    """What one sweep did (ids only)."""

    resubmitted: list[str] = field(default_factory=list)  # dictation ids
    ended_runs: list[str] = field(default_factory=list)  # flow run ids set terminal
    given_up: list[str] = field(default_factory=list)  # dictation ids quarantined
    in_flight: int = 0  # unfinished dictations whose run is queued or alive

    def any(self) -> bool:
        return bool(self.resubmitted or self.ended_runs or self.given_up)


def claim_message(identity: str) -> str:
    """The ``Pending`` state message a claim by ``identity`` (``host:pid``) carries."""
    return f"{CLAIM_PREFIX}{identity}"


def claimant(run: Any) -> tuple[str, int] | None:
    """``(host, pid)`` of the process that claimed ``run``: its infrastructure pid, else the
    claim message of its ``Pending`` state; None if unknown."""
    for text in (run.infrastructure_pid or "",
                 _claim_in_message(getattr(run.state, "message", None) or "")):
        host, _, pid = str(text).rpartition(":")
        if host and pid.isdigit():
            return host, int(pid)
    return None


def _claim_in_message(message: str) -> str:
    return message[len(CLAIM_PREFIX):].strip() if message.startswith(CLAIM_PREFIX) else ""


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _state_age(run: Any, now: datetime) -> float:
    since = _aware(getattr(run.state, "timestamp", None)) or _aware(run.created)
    return (now - since).total_seconds() if since else 0.0


def _local_alive(pid: int, since: datetime | None) -> bool:
    import psutil

    if pid == os.getpid():
        return True
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = proc.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True  # exists; not ours to inspect
    return since is None or started <= since.timestamp() + _START_SLACK_S


def _remote_alive(c: Any, host: str, pid: int, now: datetime, grace: float) -> bool:
    """Another host's warm worker: alive unless its pool heartbeat stopped long ago."""
    try:
        workers = c.read_workers_for_work_pool(prefect_env.POOL)
    except Exception:  # cannot tell: do not take over another machine's run
        return True
    name = f"warm-{host}:{pid}"
    for worker in workers:
        if worker.name != name:
            continue
        beat = _aware(worker.last_heartbeat_time)
        every = float(worker.heartbeat_interval_seconds or 30)
        return beat is None or (now - beat).total_seconds() < 3 * every + grace
    return True


def run_is_alive(c: Any, run: Any, options: RecoveryOptions, *,
                 now: datetime | None = None, workers_cache: dict[str, bool] | None = None
                 ) -> bool:
    """Whether a ``Pending``/``Running`` run is still being worked on (see the module
    docstring); other states answer False."""
    from prefect.client.schemas.objects import StateType

    if run.state_type not in (StateType.PENDING, StateType.RUNNING):
        return False
    now = now or datetime.now(UTC)
    who = claimant(run)
    if who is None:
        return _state_age(run, now) < options.grace_seconds
    host, pid = who
    if host == socket.gethostname():
        return _local_alive(pid, _aware(getattr(run.state, "timestamp", None)))
    key = f"{host}:{pid}"
    cache = workers_cache if workers_cache is not None else {}
    if key not in cache:
        cache[key] = _remote_alive(c, host, pid, now, options.grace_seconds)
    return cache[key]


def _end_run(c: Any, run: Any, done: bool, why: str) -> None:
    from prefect.states import Completed, Crashed

    dictation_id = (run.parameters or {}).get("dictation_id")
    ids = f"flow_run={run.id}" + (f" dictation={dictation_id}" if dictation_id else "")
    state: Any = (Completed(message=f"Dictation already done; {why} ({ids}).") if done
                  else Crashed(message=f"{why} ({ids})."))
    c.set_flow_run_state(run.id, state, force=True)


def should_resubmit(api_url: str, run_id: str | None,
                    options: RecoveryOptions | None = None) -> bool:
    """Whether an unfinished dictation whose flow run is ``run_id`` must be submitted again
    (``inbox.resume``'s question): no run, a missing or finished run, or a ``Pending``/
    ``Running`` one whose claimant is gone (that run is then marked ``Crashed``). Queued
    (``Scheduled``, ``Paused``, ``Cancelling``) and alive runs: no."""
    from prefect.exceptions import ObjectNotFound

    options = options or RecoveryOptions()
    if not run_id:
        return True
    with prefect_env.client(api_url) as c:
        try:
            run = c.read_flow_run(run_id)
        except ObjectNotFound:
            return True
        verdict = run_verdict(c, run, options)
        if verdict == "abandoned":
            _end_run(c, run, False, "Claimant process is gone; resubmitted")
        return verdict != "in_flight"


def run_verdict(c: Any, run: Any, options: RecoveryOptions, now: datetime | None = None,
                cache: dict[str, bool] | None = None) -> str:
    """``in_flight`` (queued or alive), ``abandoned`` (Pending/Running, claimant gone) or
    ``ended`` (a terminal state)."""
    from prefect.client.schemas.objects import StateType

    state = run.state_type
    if state in (StateType.SCHEDULED, StateType.PAUSED, StateType.CANCELLING):
        return "in_flight"
    if state in (StateType.PENDING, StateType.RUNNING):
        alive = run_is_alive(c, run, options, now=now, workers_cache=cache)
        return "in_flight" if alive else "abandoned"
    return "ended"


def read_runs(c: Any, run_ids: list[str]) -> dict[str, Any]:
    """Flow runs by id (missing ones are absent), a page of ids per API call."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    found: dict[str, Any] = {}
    for i in range(0, len(run_ids), _PAGE):
        chunk = run_ids[i:i + _PAGE]
        for run in c.read_flow_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=chunk)), limit=len(chunk)):
            found[str(run.id)] = run
    return found


def _failed_attempts(c: Any, dictation_id: str) -> int:
    """Runs of this dictation that crashed or failed (a failed run of an unfinished
    dictation raised before the flow could quarantine it)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.objects import StateType

    runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(
        name=FlowRunFilterName(any_=[f"dictation-{dictation_id[:12]}"])), limit=_PAGE)
    return sum(1 for r in runs if (r.parameters or {}).get("dictation_id") == dictation_id
               and r.state_type in (StateType.CRASHED, StateType.FAILED))


_Row = tuple[str, str, tuple[str | None, datetime | None]]


def _rows(settings: Settings, ids: list[str] | None = None) -> dict[str, _Row]:
    """id -> (status, priority, (flow_run_id, updated_at)) of unfinished rows (or of
    ``ids``)."""
    with open_store(settings).session() as s:
        query = select(DictationRow.id, DictationRow.status, DictationRow.priority,
                       DictationRow.flow_run_id, DictationRow.updated_at)
        if ids is None:
            query = query.where(DictationRow.status.in_(inbox.ACTIVE_STATUSES))
        else:
            query = query.where(DictationRow.id.in_(ids))
        return {r[0]: (r[1], r[2], (r[3], r[4])) for r in s.execute(query)}


def _in_flight_runs(c: Any) -> list[Any]:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    flt = FlowRunFilter(state=FlowRunFilterState(
        type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])))
    runs: list[Any] = []
    while True:  # the API answers at most _PAGE runs per call
        page = c.read_flow_runs(flow_run_filter=flt, limit=_PAGE, offset=len(runs))
        runs.extend(page)
        if len(page) < _PAGE:
            return runs


def sweep(settings: Settings, api_url: str, submit: Submit,
          options: RecoveryOptions | None = None) -> SweepReport:
    """Find and fix what a crash left behind (see the module docstring); returns what it did.

    ``submit(dictation_id, priority, idempotency_key=...)`` creates the new flow run
    (``Service.submit``: it also wakes the local worker)."""
    options = options or RecoveryOptions.from_settings(settings)
    report = SweepReport()
    now = datetime.now(UTC)
    cache: dict[str, bool] = {}
    ended: set[str] = set()
    with prefect_env.client(api_url) as c:
        # 1. Pending/Running runs whose claimant is gone: end them
        abandoned = [r for r in _in_flight_runs(c)
                     if run_verdict(c, r, options, now, cache) == "abandoned"]
        dictation_ids = [str((r.parameters or {}).get("dictation_id")) for r in abandoned
                         if (r.parameters or {}).get("dictation_id")]
        statuses = {did: v[0] for did, v in _rows(settings, dictation_ids).items()}
        for run in abandoned:
            did = (run.parameters or {}).get("dictation_id")
            done = statuses.get(str(did)) in ("done", "duplicate")
            try:
                _end_run(c, run, done, "claimant process is gone; ended by the recovery sweep")
            except Exception as exc:
                log.warning("sweep could not end run %s: %s", run.id, type(exc).__name__)
                continue
            ended.add(str(run.id))
            report.ended_runs.append(str(run.id))
        # 2. unfinished dictations not truly in flight: submit again, once
        rows = _rows(settings)
        runs = read_runs(c, sorted({str(v[2][0]) for v in rows.values() if v[2][0]}))
        for did, (_status, priority, (run_id, updated)) in rows.items():
            run = runs.get(str(run_id)) if run_id else None
            if run_id is None:
                age = (now - (_aware(updated) or now)).total_seconds()
                folder = settings.processing_dir / did
                if age < options.grace_seconds and folder.is_dir() \
                        and not inbox.claim_is_stale(folder):
                    report.in_flight += 1  # being registered and submitted right now
                    continue
            elif run is not None and str(run.id) not in ended and \
                    run_verdict(c, run, options, now, cache) == "in_flight":
                report.in_flight += 1
                continue
            if options.max_attempts and _failed_attempts(c, did) >= options.max_attempts:
                _give_up(settings, did, options.max_attempts)
                report.given_up.append(did)
                continue
            was = run.state_type.value if run is not None else ("missing" if run_id else "none")
            if _resubmit(settings, did, priority, run_id, submit, was):
                report.resubmitted.append(did)
    if report.any():
        log.info("recovery sweep: resubmitted=%d ended_runs=%d given_up=%d in_flight=%d",
                 len(report.resubmitted), len(report.ended_runs), len(report.given_up),
                 report.in_flight)
    return report


def _resubmit(settings: Settings, did: str, priority: str, old_run: str | None,
              submit: Submit, was: str) -> bool:
    """Submit ``did`` again and record the new run, unless another sweeper already did (the
    row's run id changed, or the dictation finished meanwhile)."""
    with open_store(settings).session() as s:
        row = s.get(DictationRow, did)
        if row is None or row.status not in inbox.ACTIVE_STATUSES or row.flow_run_id != old_run:
            return False
    new_run = submit(did, priority, idempotency_key=f"resubmit:{did}:{old_run or 'none'}")
    if not new_run:
        return False
    with open_store(settings).session() as s:
        s.execute(update(DictationRow)
                  .where(DictationRow.id == did, DictationRow.flow_run_id.is_(old_run)
                         if old_run is None else DictationRow.flow_run_id == old_run)
                  .values(flow_run_id=str(new_run)))
    log.info("resubmitted dictation=%s run=%s (was run=%s state=%s)", did, new_run, old_run,
             was)
    return True


def _give_up(settings: Settings, did: str, attempts: int) -> None:
    inbox.quarantine(
        settings, did,
        f"Processing was interrupted {attempts} times (the worker process died or the flow "
        f"stopped with an error each time); this recording may be what stops it. Check it "
        f"and the worker log, then move it back into the inbox to retry.",
        code=REPEATED_CRASH, status="failed",
    )
