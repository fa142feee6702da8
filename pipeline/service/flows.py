"""Prefect flows: ``process_dictation`` (one dictation, by id), ``adapt_models`` (the nightly
speech-model adaptation, by physician id), and the warm worker.

Tasks are thin wrappers over the stage functions in ``pipeline.service.process``; the stage logic
stays in plain functions. Only opaque ids go into flow parameters, results and Prefect logs:
records (``Dictation``, ``Transcript``, ...) pass between tasks in memory, with result
persistence and caching off, so no transcript text or patient data reaches the Prefect
database. ``retries=`` only on I/O tasks (reading the audio, writing outputs, the database,
moving files).

``WarmWorker`` executes flow runs of the ``dictation`` work pool *in its own process*, keeping
the Whisper model, spaCy pipeline and vocabularies loaded between dictations (the stock
``prefect worker start`` process worker starts a fresh Python per run, which costs seconds of
imports and model loading each time; it still works with the same deployments). It claims a
run the way Prefect workers do, by proposing ``Pending`` to the server, which accepts that
for exactly one claimant (the state's message names the claimant, ``host:pid``, so a worker
killed before it records its pid still leaves an identifiable claim; see
``pipeline.service.recovery``); STAT runs (queue ``stat``, priority 1) are taken first.

``limit`` (``settings.workers``) is the number of *transcriptions* at once (the CPU-bound
part): each holds one of the worker's slots. The worker keeps one claimed run waiting per
slot, already started and validated, so when a transcription ends the next begins at once
instead of after a round of Prefect calls (claim, start, first task: 0.4-0.5 s measured, 10-15 %
of a 20-60 s dictation's transcription with tiny.en). A STAT run is claimed even when routine
ones wait, and waiting STAT runs get the next free slot first. The pool's concurrency limit,
if an administrator sets one, caps all workers together.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipeline.core import memtrim
from pipeline.core.db.core import DictationRow
from pipeline.core.errors import AudioError, NotFoundError, PipelineError
from pipeline.core.records import Dictation, DictationMeta, Document, Draft, Note, Transcript
from pipeline.core.settings import Settings, get_settings
from pipeline.core.store import open_store
from pipeline.ingest import inbox
from pipeline.prefect_compat import flow_exit

__all__ = [
    "process_dictation",
    "adapt_models",
    "register_flow",
    "slot_hold",
    "current_settings",
    "draft_id_for",
    "use_settings",
    "WarmWorker",
    "FLOWS",
    "worker_identity",
]

log = logging.getLogger(__name__)

flow_exit.apply()  # flow runs end with their last task, not up to 1 s later

_settings_override: Settings | None = None

# No persisted results, no input hashing: nothing about the dictation is stored by Prefect.
_IO = {"persist_result": False, "cache_policy": NO_CACHE, "retries": 2,
       "retry_delay_seconds": 1}
_CPU = {"persist_result": False, "cache_policy": NO_CACHE}


def use_settings(settings: Settings | None) -> None:
    """Run flows in this process with ``settings`` instead of the environment's."""
    global _settings_override
    _settings_override = settings


def current_settings() -> Settings:
    """The settings flows run with: those the worker set (``use_settings``), else the
    environment's."""
    return _settings_override or get_settings()


_settings = current_settings


def draft_id_for(dictation_id: str) -> str:
    """The draft id of a dictation: deterministic, so a re-run after a crash overwrites the
    same draft folder instead of leaving a second, partial one."""
    return hashlib.sha256(f"draft:{dictation_id}".encode()).hexdigest()[:32]


class _Rejected:
    """validate's answer for a bad file (not an exception: bad input is not retried)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message


# --- tasks ---------------------------------------------------------------------------------


@task(name="validate", **_IO)  # type: ignore[call-overload]
def validate(dictation_id: str) -> Dictation | _Rejected:
    """Probe the claimed audio and load its metadata; a bad file is answered, not raised."""
    from pipeline.service.process import load_dictation

    settings = _settings()
    with open_store(settings).session() as s:
        row = s.get(DictationRow, dictation_id)
        if row is None or not row.audio_path:
            raise NotFoundError(f"Dictation {dictation_id} is not in the database.")
        path, meta_raw, physician = row.audio_path, dict(row.meta or {}), row.physician_id
    from pathlib import Path

    audio_path = Path(path)
    try:
        meta = inbox.load_meta(audio_path, physician, settings) if meta_raw else DictationMeta(
            physician_id=physician)
        return load_dictation(audio_path, settings, meta, dictation_id=dictation_id)
    except (AudioError, PipelineError) as exc:
        if isinstance(exc, AudioError) or exc.code == "sidecar_error":
            return _Rejected(exc.code, str(exc))
        raise


class _Slots:
    """A warm worker's transcription slots: ``n`` transcriptions at once in this process.

    Runs waiting for a slot get it in order, STAT ones before routine ones, and a routine run
    does not take a slot while a STAT run the worker has claimed is still on its way to one
    (``expect_stat``/``forget``). ``on_free`` is told the flow run id whenever a
    transcription ends (the worker then claims more work).
    """

    def __init__(self, n: int, on_free: Callable[[str | None], None]) -> None:
        self._free = n
        self._cond = threading.Condition()
        self._waiting: list[tuple[int, int]] = []  # (0 STAT / 1 routine, arrival), sorted
        self._arrivals = 0
        self._stat_expected: set[str] = set()
        self._on_free = on_free

    def expect_stat(self, flow_run_id: str) -> None:
        with self._cond:
            self._stat_expected.add(flow_run_id)

    def forget(self, flow_run_id: str) -> None:
        """The run ended (whether or not it reached a slot)."""
        with self._cond:
            if flow_run_id in self._stat_expected:
                self._stat_expected.discard(flow_run_id)
                self._cond.notify_all()

    @contextmanager
    def hold(self, stat: bool = False) -> Iterator[None]:
        with self._cond:
            run_id = _current_flow_run_id()
            if run_id in self._stat_expected:  # claimed from the STAT queue
                stat = True
                self._stat_expected.discard(run_id)
                self._cond.notify_all()
            self._arrivals += 1
            ticket = (0 if stat else 1, self._arrivals)
            self._waiting.append(ticket)
            self._waiting.sort()
            try:
                while (self._free <= 0 or self._waiting[0] != ticket
                       or (not stat and self._stat_expected)):
                    self._cond.wait()
            finally:
                self._waiting.remove(ticket)
                self._cond.notify_all()
            self._free -= 1
        try:
            yield
        finally:
            with self._cond:
                self._free += 1
                self._cond.notify_all()
            self._on_free(run_id)


#: set by a ``WarmWorker`` in this process; None elsewhere (a stock Prefect worker runs one
#: flow per process, tests call flows directly)
_slots: _Slots | None = None


@task(name="transcribe", **_CPU)  # type: ignore[call-overload]
def transcribe(dictation: Dictation) -> Transcript:
    """Whisper (CPU-bound: no retries; holds one of the warm worker's slots)."""
    from pipeline.service.process import transcribe_stage

    slots = _slots
    if slots is None:
        return transcribe_stage(dictation, _settings())
    with slots.hold(stat=dictation.meta.priority == "stat"):
        return transcribe_stage(dictation, _settings())


@task(name="normalize", **_CPU)  # type: ignore[call-overload]
def normalize(transcript: Transcript, dictation: Dictation) -> Note:
    """Medical-language normalisation."""
    from pipeline.service.process import normalize_stage

    return normalize_stage(transcript, dictation, _settings())


@task(name="structure", **_CPU)  # type: ignore[call-overload]
def structure(note: Note, dictation: Dictation) -> Document:
    """Sections, header and instructions."""
    from pipeline.service.process import structure_stage

    return structure_stage(note, dictation, _settings())


@task(name="render", **_IO)  # type: ignore[call-overload]
def render(document: Document, dictation: Dictation, transcript: Transcript, note: Note
           ) -> Draft:
    """Write the draft's files (deterministic draft id: a re-run overwrites, never adds)."""
    from pipeline.service.process import render_stage

    return render_stage(document, dictation, transcript, note, _settings(),
                        draft_id=draft_id_for(dictation.id))


@task(name="enqueue", **_IO)  # type: ignore[call-overload]
def enqueue(dictation: Dictation, transcript: Transcript, note: Note, document: Document,
            draft: Draft) -> str:
    """Store everything in one transaction; the draft enters the review queue. Returns its id."""
    from pipeline.service.process import enqueue_stage

    return enqueue_stage(dictation, transcript, note, document, draft, _settings()).id


@task(name="pdf", **_IO)  # type: ignore[call-overload]
def pdf(draft: Draft, draft_id: str) -> bool:
    """Make the queued draft's PDF and record it (LibreOffice; retried as I/O). Returns whether
    a PDF was made; a failure raises, and the flow keeps the draft queued without it."""
    from pipeline.service.process import pdf_stage

    draft.id = draft_id
    return "pdf" in pdf_stage(draft, _settings(), raise_errors=True).outputs


@task(name="archive", **_IO)  # type: ignore[call-overload]
def archive(dictation_id: str) -> None:
    """Move the audio from processing/ to archive/ (the workbench plays it from there)."""
    inbox.archive(_settings(), dictation_id)


# --- flows ---------------------------------------------------------------------------------


def _current_flow_run_id() -> str | None:
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id) if flow_run.id else None
    except Exception:  # pragma: no cover - outside a flow run
        return None


@flow(name="process-dictation", persist_result=False, log_prints=False)
def process_dictation(dictation_id: str) -> str:
    """Process one claimed dictation by its opaque id; returns its final status.

    Idempotent: a dictation already finished is not processed again (a resubmitted run
    after a crash just returns), and a re-run replaces its draft rather than adding one.
    """
    settings = _settings()
    with open_store(settings).session() as s:
        row = s.get(DictationRow, dictation_id)
        if row is None:
            raise NotFoundError(f"Dictation {dictation_id} is not in the database.")
        if row.status not in inbox.ACTIVE_STATUSES:
            return str(row.status)
        row.status = "processing"
        row.flow_run_id = _current_flow_run_id() or row.flow_run_id
    t0 = time.perf_counter()
    checked = validate(dictation_id)
    if isinstance(checked, _Rejected):
        inbox.quarantine(settings, dictation_id, checked.message, code=checked.code)
        return "quarantined"
    dictation = checked
    try:
        transcript = transcribe(dictation)
        note = normalize(transcript, dictation)
        document = structure(note, dictation)
        draft = render(document, dictation, transcript, note)
        draft_id = enqueue(dictation, transcript, note, document, draft)
    except Exception as exc:
        code = exc.code if isinstance(exc, PipelineError) else type(exc).__name__
        if isinstance(exc, PipelineError):
            why = str(exc)
        elif isinstance(exc, OSError):
            where = getattr(exc, "filename", None)
            why = (f"Processing stopped with {type(exc).__name__} ({exc.strerror}) "
                   f"at {where}; fix it and move this file back into the inbox to retry.")
        else:
            why = (f"Processing stopped with {type(exc).__name__}; move this file back into "
                   f"the inbox to retry.")
        inbox.quarantine(settings, dictation_id, why, code=code, status="failed")
        log.error("dictation=%s failed code=%s", dictation_id, code)
        raise
    archive(dictation_id)
    # The draft is in the review queue and the audio archived: the PDF comes last, and its
    # failure (after retries) loses nothing; the draft stays queued with its other outputs.
    try:
        pdf(draft, draft_id)
    except Exception as exc:
        code = exc.code if isinstance(exc, PipelineError) else type(exc).__name__
        log.warning("dictation=%s draft=%s pdf failed code=%s; draft queued without pdf",
                    dictation_id, draft_id, code)
    log.info("dictation=%s draft=%s done in %.2fs", dictation_id, draft_id,
             time.perf_counter() - t0)
    return "done"


@task(name="adapt-physician", **_CPU)  # type: ignore[call-overload]
def adapt_physician(physician_id: str) -> dict[str, Any]:
    """One physician's speech-model adaptation (``pipeline.adaptation.adapt``): pairs,
    training, gate. Returns the status, version and counts (no text)."""
    from pipeline.adaptation import adapt

    report = adapt.adapt_physician(_settings(), physician_id)
    return {"status": report.status, "version": report.version, "pairs": report.pairs,
            "dictations": report.dictations, "held_back": report.held_back}


@flow(name="adapt-models", persist_result=False, log_prints=False)
def adapt_models(physician_ids: list[str] | None = None, force: bool = False
                 ) -> dict[str, int]:
    """The nightly adaptation: each physician with enough new signed dictations
    (``AdaptOptions.min_new_dictations`` since their last model version) gets a candidate
    model, promoted or refused by the gate. ``physician_ids`` limits it to those ids;
    ``force`` adapts them whatever the number of new dictations (``dictation adapt``
    queues it so). Parameters, logs and the result carry ids and counts only.

    One physician's failure does not stop the others; the run fails at the end if any did.
    """
    from pipeline.adaptation import adapt

    settings = _settings()
    options = adapt.AdaptOptions()
    with open_store(settings).session() as s:
        if force and physician_ids:
            due = [(pid, adapt.new_signed_dictations(s, pid)) for pid in physician_ids]
        else:
            due = adapt.due_physicians(s, settings, options, only=physician_ids)
    counts = {"due": len(due), "promoted": 0, "refused": 0, "skipped": 0, "unchanged": 0,
              "failed": 0}
    for physician_id, new in due:
        log.info("adapt-models physician=%s new_signed=%d", physician_id, new)
        try:
            status = str(adapt_physician(physician_id)["status"])
        except Exception as exc:  # the next physician still gets their turn
            code = exc.code if isinstance(exc, PipelineError) else type(exc).__name__
            log.error("adapt-models physician=%s failed code=%s", physician_id, code)
            counts["failed"] += 1
            continue
        counts[status] = counts.get(status, 0) + 1
        memtrim.trim()  # the training's tensors are freed: give the pages back
    log.info("adapt-models done %s", " ".join(f"{k}={v}" for k, v in counts.items()))
    if counts["failed"]:
        raise PipelineError(f"Adaptation failed for {counts['failed']} of {len(due)} "
                            "physician(s); see the worker's log for their ids.")
    return counts


#: flow name -> flow, for the warm worker. Flows above the service layer (the nightly
#: evaluation in ``pipeline.devtools.nightly``) add themselves with ``register_flow``.
FLOWS: dict[str, Any] = {
    "process-dictation": process_dictation,
    "adapt-models": adapt_models,
}


def register_flow(name: str, flow_obj: Any) -> None:
    """Let the warm worker run deployments of ``flow_obj`` (a Prefect flow named ``name``)."""
    FLOWS[name] = flow_obj


def slot_hold() -> contextlib.AbstractContextManager[Any]:
    """Hold one of the warm worker's transcription slots (no-op outside the worker)."""
    slots = _slots
    return slots.hold() if slots is not None else contextlib.nullcontext()


# --- warm worker ---------------------------------------------------------------------------


def worker_identity() -> str:
    """``host:pid`` of this process (recorded as the flow run's infrastructure pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class WarmWorker:
    """Runs flow runs from the ``dictation`` work pool in this process (model stays loaded)."""

    def __init__(self, api_url: str, settings: Settings, *, limit: int | None = None,
                 poll_seconds: float = 0.5, name: str | None = None) -> None:
        self.api_url = api_url
        self.settings = settings
        self.limit = limit or settings.workers
        self.poll_seconds = poll_seconds
        self.name = name or f"warm-{worker_identity()}"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._running: dict[str, Future[Any]] = {}
        # runs claimed that have not finished transcribing (they hold or wait for a slot),
        # and which of them are STAT
        self._before_slot_free: set[str] = set()
        self._stat: set[str] = set()
        self._lock = threading.Lock()
        self._flow_names: dict[str, str] = {}
        self._queue_names: dict[str, str] = {}
        self._queues_read = 0.0
        self._last_done = 0.0
        self.completed = 0

    def stop(self) -> None:
        """Stop taking new runs (in-flight runs finish or are crashed by ``shutdown``)."""
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        """Poll now (a run was just submitted)."""
        self._wake.set()

    def _slot_freed(self, flow_run_id: str | None) -> None:
        """A transcription ended: that run only stores its draft now; claim the next one."""
        if flow_run_id is not None:
            with self._lock:
                self._past_slot(flow_run_id)
        self._wake.set()

    def _past_slot(self, flow_run_id: str) -> None:
        """(Under ``_lock``) the run no longer holds or waits for a transcription slot."""
        self._before_slot_free.discard(flow_run_id)
        self._stat.discard(flow_run_id)

    def _flow_name(self, c: Any, flow_id: Any) -> str:
        key = str(flow_id)
        if key not in self._flow_names:
            self._flow_names[key] = c.read_flow(flow_id).name
        return self._flow_names[key]

    def _claim(self, c: Any) -> list[tuple[Any, bool]]:
        from prefect.client.schemas.responses import SetStateStatus
        from prefect.states import Pending

        from pipeline.service.prefect_env import POOL, QUEUES
        from pipeline.service.recovery import claim_message

        identity = worker_identity()
        with self._lock:
            # routine: one transcribing and one waiting per slot; STAT: up to ``limit`` more
            free_routine = 2 * self.limit - len(self._before_slot_free)
            free_stat = self.limit - len(self._stat)  # a subset of _before_slot_free
        if free_routine <= 0 and free_stat <= 0:
            return []
        from datetime import UTC, datetime

        responses = c.get_scheduled_flow_runs_for_work_pool(
            POOL, scheduled_before=datetime.now(UTC)
        )
        # queue id -> name changes only when an administrator recreates a queue: re-read
        # when a run names a queue we do not know, else every 10 minutes
        unknown = any(str(r.work_queue_id) not in self._queue_names for r in responses)
        if unknown or time.monotonic() - self._queues_read > 600:
            self._queue_names = {}
            for name in QUEUES:
                try:
                    queue = c.read_work_queue_by_name(name, work_pool_name=POOL)
                except Exception:  # a queue deleted by an administrator: treat as routine
                    continue
                self._queue_names[str(queue.id)] = name
            self._queues_read = time.monotonic()
        queue_names = self._queue_names
        responses.sort(key=lambda r: (
            QUEUES.get(queue_names.get(str(r.work_queue_id), "routine"), 99),
            r.flow_run.expected_start_time or r.flow_run.created,
        ))
        claimed: list[Any] = []
        for resp in responses:
            run = resp.flow_run
            stat = queue_names.get(str(resp.work_queue_id)) == "stat"
            if (free_stat if stat else free_routine) <= 0:
                continue
            if self._flow_name(c, run.flow_id) not in FLOWS:
                continue
            # The claimant goes into the Pending state itself, in the same call that claims:
            # killed before the pid below is recorded, the run is still known to be ours,
            # and recovery (pipeline.service.recovery) sees that this process is gone.
            result = c.set_flow_run_state(run.id, Pending(message=claim_message(identity)))
            if result.status != SetStateStatus.ACCEPT:
                continue  # another worker took it
            c.update_flow_run(run.id, infrastructure_pid=identity)
            claimed.append((c.read_flow_run(run.id), stat))
            if stat:
                free_stat -= 1
            free_routine -= 1
        return claimed

    def _execute(self, flow_run: Any) -> None:
        from prefect.flow_engine import run_flow

        from pipeline.service.prefect_env import client

        with client(self.api_url) as c:
            name = self._flow_name(c, flow_run.flow_id)
        try:
            run_flow(FLOWS[name], flow_run=flow_run, return_type="state")
        except BaseException:  # the worker must keep running
            log.exception("flow run %s raised", flow_run.id)
        finally:
            slots = _slots
            if slots is not None:
                slots.forget(str(flow_run.id))
            with self._lock:
                self._running.pop(str(flow_run.id), None)
                self._past_slot(str(flow_run.id))
                self.completed += 1
                self._last_done = time.monotonic()
            self._wake.set()
            # the run's arrays and events are freed: give the pages back (glibc keeps them
            # in per-thread arenas, and the worker's RSS crept up with every dictation)
            memtrim.trim()

    def run(self, *, exit_when_idle: float | None = None) -> None:
        """Poll, claim and execute until ``stop()``; with ``exit_when_idle`` (seconds),
        also return after that long with nothing scheduled or running."""
        from pipeline.service.prefect_env import POOL, client

        global _slots
        _slots = slots = _Slots(self.limit, self._slot_freed)
        # transcribing + waiting + STAT + finishing (after their transcription) runs
        executor = ThreadPoolExecutor(5 * self.limit, thread_name_prefix="flow")
        # Heartbeat at least every 30 s, or with each poll when polls are rarer: the server's
        # foreman marks a worker offline after three missed intervals.
        beat_every = max(30.0, self.poll_seconds)
        last_beat = -beat_every
        idle_since = time.monotonic()
        try:
            with client(self.api_url) as c:
                while not self._stop.is_set():
                    now = time.monotonic()
                    try:
                        if now - last_beat >= beat_every - 1.0:
                            c.send_worker_heartbeat(POOL, self.name,
                                                    heartbeat_interval_seconds=int(beat_every))
                            last_beat = now
                        for run, stat in self._claim(c):
                            with self._lock:
                                self._before_slot_free.add(str(run.id))
                                if stat:
                                    self._stat.add(str(run.id))
                                    slots.expect_stat(str(run.id))
                                self._running[str(run.id)] = executor.submit(self._execute, run)
                    except Exception as exc:  # server restarting: try again next round
                        log.warning("worker poll failed: %s", type(exc).__name__)
                    with self._lock:
                        busy = bool(self._running)
                    if busy:
                        idle_since = time.monotonic()
                    elif exit_when_idle is not None and now - idle_since > exit_when_idle:
                        break
                    # Right after a run finished the server may still count it against the
                    # pool's concurrency limit: look again soon instead of a full poll later.
                    recent = time.monotonic() - self._last_done < 5.0
                    self._wake.wait(min(self.poll_seconds, 0.5) if recent else self.poll_seconds)
                    self._wake.clear()
        finally:
            executor.shutdown(wait=not self._stop.is_set(), cancel_futures=True)
            if not self._running:
                _slots = None

    def shutdown(self, grace_seconds: float = 10.0) -> list[str]:
        """Stop, give in-flight runs ``grace_seconds`` to finish, and mark the rest Crashed
        (their dictations are resubmitted when the service starts again). Returns their ids."""
        from prefect.states import Crashed

        from pipeline.service.prefect_env import client

        self.stop()
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline:
            with self._lock:
                if not self._running:
                    return []
            time.sleep(0.2)
        with self._lock:
            left = list(self._running)
        if left:
            with client(self.api_url) as c:
                for run_id in left:
                    try:
                        c.set_flow_run_state(run_id, Crashed(message="Worker stopped."),
                                             force=True)
                    except Exception:
                        log.warning("could not mark run %s crashed", run_id)
        return left
