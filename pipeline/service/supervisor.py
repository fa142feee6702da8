"""The supervisor behind ``dictation run``: everything one machine needs, started and stopped
together.

Children (each in its own process group, each told to exit if the supervisor dies, even by
``kill -9``, through ``PR_SET_PDEATHSIG``):

- a Prefect server on 127.0.0.1:``settings.prefect_port`` with SQLite under
  ``settings.prefect_home`` (skipped when ``PREFECT_API_URL`` points at an existing server);
- one warm worker (``dictation worker``) running ``settings.workers`` dictations at a time.

In the supervisor itself: the inbox watcher (watchdog observer + scanner thread), the web
workbench (uvicorn thread, when ``pipeline.web.app`` exists) and the live status.
On start, work a crash left behind is resumed, and a recovery sweep
(``pipeline.service.recovery``) runs at start and every ``settings.recovery_sweep_seconds``:
every dictation neither done, nor quarantined, nor truly in flight is submitted again once,
and flow runs whose claimant died are ended. If the worker dies it is restarted and its runs
resubmitted. While it runs, ``<data dir>/service.json`` names the supervisor's and the
worker's pids (``dictation status`` checks them; removed at a clean stop). Ctrl-C, SIGINT
(also when started in the background, where the shell ignores it), SIGTERM and SIGHUP stop
every child (SIGTERM to the group, SIGKILL after a timeout) and then check that no
descendant process is left.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core import crypto, memtrim
from pipeline.core.settings import Settings
from pipeline.ingest import inbox
from pipeline.prefect_compat import check_all as check_prefect_patches
from pipeline.service import prefect_env, recovery
from pipeline.service.status import remove_service_file, write_service_file

__all__ = ["Service", "ServiceOptions", "demo_sample", "should_resubmit"]

log = logging.getLogger(__name__)

#: The local worker is woken by SIGUSR1 on every submission, so its own poll is only a safety
#: net (scheduled nightly runs start up to this late). Each poll costs the idle server CPU:
#: measured 0.80% -> 0.47% of a core for the server going from a 10 s to a 60 s poll.
LOCAL_WORKER_POLL_S = 60.0
_AUDIO_EXT = (".wav", ".mp3", ".m4a", ".flac", ".ogg", ".webm", ".aac", ".opus", ".wma", ".mp4")


@dataclass
class ServiceOptions:
    """How ``dictation run`` behaves."""

    web: bool = True
    demo: bool = False
    exit_when_idle: bool = False
    idle_seconds: float = 3.0
    live: bool = True
    worker_processes: int = 1
    #: status refresh while idle (seconds); every second while files come and go
    status_every: float = 10.0
    #: how long after the last change the status counts as "busy"
    busy_seconds: float = 30.0


def _worker_preexec() -> None:
    """In the worker child: exit with the supervisor, and ignore SIGUSR1 (the wake-up
    signal) until the worker installs its handler, so an early one cannot kill it."""
    prefect_env.set_pdeathsig()
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def demo_sample(settings: Settings) -> Path | None:
    """The first audio file in ``samples/synthetic_medical`` (None if there is none)."""
    folder = settings.samples_dir / "synthetic_medical"
    if not folder.is_dir():
        return None
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix.lower() in _AUDIO_EXT:
            return path
    return None


def _drop(src: Path, folder: Path, name: str | None = None) -> Path:
    """Copy ``src`` into ``folder`` the way a careful sync tool does: .part, then rename."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (name or src.name)
    tmp = target.with_name(target.name + ".part")
    shutil.copyfile(src, tmp)
    os.rename(tmp, target)
    return target


def should_resubmit(api_url: str, run_id: str | None,
                    options: recovery.RecoveryOptions | None = None) -> bool:
    """Whether an unfinished dictation whose flow run is ``run_id`` must be submitted again
    (``recovery.should_resubmit``: queued and alive runs no; missing, finished and abandoned
    runs yes, an abandoned one being marked Crashed)."""
    return recovery.should_resubmit(api_url, run_id, options)


class Service:
    """Start, watch and stop the inbox service's parts."""

    def __init__(self, settings: Settings, options: ServiceOptions | None = None,
                 out: Any = None) -> None:
        self.settings = settings
        self.options = options or ServiceOptions()
        self.external = bool(os.environ.get("PREFECT_API_URL"))
        self.api_url = prefect_env.api_url_for(settings)
        self.out = out or sys.stdout
        self.server: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.scanner: inbox.InboxScanner | None = None
        self.observer: Any = None
        self.web_server: Any = None
        self.web_url: str | None = None
        self.deployment_id: Any = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started_at = time.monotonic()
        self.worker_restarts = 0
        self.recovery = recovery.RecoveryOptions.from_settings(settings)
        self._last_sweep = time.monotonic()

    # -- helpers --------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed terminal must not stop us
            print(text, file=self.out, flush=True)

    def submit(self, dictation_id: str, priority: str, *,
               idempotency_key: str | None = None) -> str | None:
        """Create a ``process-dictation`` flow run for a dictation (the scanner's callback)
        and wake the local worker(s) so they do not wait for their next poll."""
        run_id = prefect_env.submit_dictation(self.api_url, self.deployment_id, dictation_id,
                                              priority, idempotency_key=idempotency_key)
        for proc in self.workers:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGUSR1)
        return run_id

    def _kill_stale_server(self) -> None:
        pid_file = self.settings.prefect_home / "server.pid"
        if not pid_file.exists():
            return
        try:
            import psutil

            pid = int(pid_file.read_text().strip())
            proc = psutil.Process(pid)
            if "prefect" in " ".join(proc.cmdline()):
                os.killpg(pid, signal.SIGTERM)
                proc.wait(10)
        except Exception:  # gone already, or not ours
            pass
        pid_file.unlink(missing_ok=True)

    def _start_worker(self) -> subprocess.Popen[bytes]:
        log_path = self.settings.prefect_home / "worker.log"
        out = open(log_path, "ab")  # noqa: SIM115  (handed to the child)
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "worker", "--limit",
             str(self.settings.workers), "--poll", str(LOCAL_WORKER_POLL_S)],
            env=prefect_env.child_env(self.settings, self.api_url),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_worker_preexec,
        )
        out.close()
        log.info("worker pid=%s", proc.pid)
        return proc

    def _start_web(self) -> None:
        try:
            import uvicorn

            from pipeline.web.app import create_app
            from pipeline.web.tls import server_options, web_url

            options = server_options(self.settings, self.settings.web_host)
            app = create_app(self.settings)
            config = uvicorn.Config(app, host=self.settings.web_host, port=self.settings.web_port,
                                    log_level="warning", access_log=False, **options)
            # uvicorn's main loop wakes every 0.1 s when idle; once a second is enough here
            server = prefect_env.low_tick_server(config)
            server.install_signal_handlers = lambda: None  # type: ignore[attr-defined,method-assign]
            t = threading.Thread(target=server.run, name="web", daemon=True)
            t.start()
            self.web_server = server
            self.web_url = web_url(self.settings, self.settings.web_host,
                                   self.settings.web_port)
        except Exception as exc:  # the inbox keeps working without the workbench
            log.error("web workbench did not start: %s", type(exc).__name__)
            self._say(f"warning: the web workbench did not start ({type(exc).__name__}: {exc})")

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start every part; returns once the service is accepting files."""
        s = self.settings
        # a Prefect that our patches no longer match stops here, before anything starts
        check_prefect_patches()
        fixed = crypto.harden_permissions(s.data_path)  # looser modes left by older versions
        log.info("permissions: %d folders and %d files tightened (of %d and %d)",
                 fixed.dirs_fixed, fixed.files_fixed, fixed.dirs, fixed.files)
        inbox.ensure_layout(s)
        self._write_service_file("starting")
        os.environ.update(prefect_env.prefect_env(s, self.api_url))  # before importing prefect
        if not self.external:
            self._kill_stale_server()
            self._say(f"Starting Prefect server on {self.api_url} (data in {s.prefect_home})")
            self.server = prefect_env.start_server(s)
            prefect_env.wait_healthy(self.api_url, proc=self.server)
        else:
            prefect_env.wait_healthy(self.api_url, timeout=30)
        ids = prefect_env.ensure_deployments(self.api_url, s)
        self.deployment_id = ids[prefect_env.PROCESS_DEPLOYMENT]
        counts = inbox.resume(s, self.submit, self._should_resubmit)
        if any(counts.values()):
            self._say(f"Resumed after a stop: {counts}")
        try:
            self._sweep()
        except Exception as exc:  # the periodic sweep tries again; intake must start
            log.error("recovery sweep failed: %s", type(exc).__name__)
        for _ in range(self.options.worker_processes):
            self.workers.append(self._start_worker())
        self._write_service_file()
        from pipeline.review.versions import rerender_by_id

        # a late sidecar changes a queued draft's header: its files are rendered again
        self.scanner = inbox.InboxScanner(
            s, self.submit, on_late_sidecar=lambda draft_id: rerender_by_id(s, draft_id))
        self.observer = inbox.start_observer(s, self.scanner)
        t = threading.Thread(target=self.scanner.run, name="inbox", daemon=True)
        t.start()
        self._threads.append(t)
        t = threading.Thread(target=self._deliver_loop, name="deliveries", daemon=True)
        t.start()
        self._threads.append(t)
        trimmer = memtrim.start_trimmer(prefect_env.TRIM_SECONDS, self._stop)
        if trimmer is not None:
            self._threads.append(trimmer)
        if self.options.web:
            self._start_web()
        self._say(f"Watching {s.inbox_dir}/<physician>/ for: {', '.join(s.physicians)}")
        if self.web_url:
            self._say(f"Review workbench: {self.web_url}")
        if self.options.demo:
            sample = demo_sample(s)
            if sample is None:
                self._say("demo: no sample found in samples/synthetic_medical")
            else:
                target = _drop(sample, s.inbox_dir / s.physicians[0])
                sidecar = sample.with_suffix(".json")
                if sidecar.exists():
                    _drop(sidecar, target.parent, target.with_suffix(".json").name)
                self._say(f"demo: dropped {sample.name} into inbox/{s.physicians[0]}/")

    def _should_resubmit(self, run_id: str | None) -> bool:
        return recovery.should_resubmit(self.api_url, run_id, self.recovery)

    def _sweep(self) -> None:
        """One recovery sweep (see ``pipeline.service.recovery``); reported when it acted."""
        self._last_sweep = time.monotonic()
        report = recovery.sweep(self.settings, self.api_url, self.submit, self.recovery)
        if report.any():
            self._say(f"Recovery: resubmitted {len(report.resubmitted)}, ended "
                      f"{len(report.ended_runs)} abandoned runs, gave up "
                      f"{len(report.given_up)}")

    def _write_service_file(self, phase: str = "running") -> None:
        with contextlib.suppress(OSError):
            write_service_file(self.settings, api_url=self.api_url,
                               worker_pids=[p.pid for p in self.workers], phase=phase)

    def _deliver_loop(self) -> None:
        """Send signed documents that are due (new, or whose retry back-off has passed)."""
        from pipeline.secretary import route

        while not self._stop.wait(self.settings.route_interval_s):
            try:
                report = route.deliver_due(self.settings)
                if report.delivered or report.retrying or report.failed:
                    log.info(
                        "deliveries: delivered=%d retrying=%d failed=%d",
                        len(report.delivered), len(report.retrying), len(report.failed),
                    )
            except Exception as exc:  # a mail server outage must not stop the service
                log.error("delivery round failed: %s", type(exc).__name__)

    def stop(self) -> None:
        """Ask ``serve_forever`` to return (signal-safe)."""
        self._stop.set()

    def _monitor(self) -> None:
        for i, proc in enumerate(self.workers):
            if proc.poll() is None or self._stop.is_set():
                continue
            self.worker_restarts += 1
            self._say(f"worker exited with status {proc.returncode}; restarting it")
            prefect_env.stop_process_group(proc, timeout=1)
            inbox.resume(self.settings, self.submit, self._should_resubmit)
            time.sleep(min(5.0, 0.5 * self.worker_restarts))
            self.workers[i] = self._start_worker()
            self._write_service_file()
        if self.server is not None and self.server.poll() is not None and not self._stop.is_set():
            self._say(f"Prefect server exited with status {self.server.returncode}; restarting")
            self.server = prefect_env.start_server(self.settings)
            prefect_env.wait_healthy(self.api_url, proc=self.server)
        if time.monotonic() - self._last_sweep >= self.settings.recovery_sweep_seconds \
                and not self._stop.is_set():
            self._sweep()

    def is_idle(self) -> bool:
        """Nothing in the inbox and no dictation received/processing."""
        if self.scanner is None or not self.scanner.idle():
            return False
        return not inbox.pending_resubmits(self.settings)

    def serve_forever(self) -> int:
        """Show status and supervise until stopped (or idle with ``exit_when_idle``)."""
        from pipeline.service.status import StatusView

        view = StatusView(self.settings, self)
        idle_since: float | None = None
        min_wait = self.settings.stable_seconds + self.settings.sidecar_grace_seconds + 1.0
        last_refresh = last_change = time.monotonic()
        last_intake = -1
        try:
            with view.live(enabled=self.options.live, out=self.out) as update:
                while not self._stop.is_set():
                    try:
                        self._monitor()
                    except Exception as exc:  # keep supervising; try again next second
                        log.error("supervision round failed: %s", type(exc).__name__)
                    # Idle efficiency: the counts (a database query) are read every second
                    # only while dictations come and go, else every ``status_every`` s.
                    now = time.monotonic()
                    intake = self._intake_count()
                    busy = intake != last_intake or now - last_change < self.options.busy_seconds
                    if now - last_refresh >= (1.0 if busy else self.options.status_every):
                        last_refresh, last_intake = now, intake
                        with contextlib.suppress(OSError, ValueError):
                            if update():
                                last_change = now
                    if self.options.exit_when_idle and \
                            time.monotonic() - self.started_at > min_wait:
                        if self.is_idle():
                            idle_since = idle_since or time.monotonic()
                            if time.monotonic() - idle_since >= self.options.idle_seconds:
                                break
                        else:
                            idle_since = None
                    self._stop.wait(1.0)
        except KeyboardInterrupt:
            pass
        return 0

    def _intake_count(self) -> int:
        """Files the scanner has taken in so far (any outcome)."""
        st = self.scanner.stats if self.scanner is not None else None
        if st is None:
            return 0
        return st.received + st.duplicates + st.quarantined + st.vanished + st.errors

    def shutdown(self) -> None:
        """Stop everything: watcher, web, worker(s), server; then no descendant is left."""
        self._stop.set()
        if self.scanner is not None:
            self.scanner.stop()
        if self.observer is not None:
            # watchdog's inotify emitter may run once more after stop() and logs an ERROR
            # ("queue_events() called when the thread is inactive", watchdog PR #963): a
            # harmless race at our own shutdown, not a fault to show the user
            logging.getLogger("watchdog.observers.inotify").addFilter(
                lambda record: "thread is inactive" not in record.getMessage())
            try:
                self.observer.stop()
                self.observer.join(5)
            except Exception:
                pass
        if self.web_server is not None:
            self.web_server.should_exit = True
        for proc in self.workers:
            prefect_env.stop_process_group(proc, timeout=30)
        if self.server is not None:
            prefect_env.stop_process_group(self.server, timeout=20)
            (self.settings.prefect_home / "server.pid").unlink(missing_ok=True)
        for t in self._threads:
            t.join(5)
        _reap_descendants()
        remove_service_file(self.settings)


def _reap_descendants() -> None:
    """Kill any process this one started that is still alive (none, normally)."""
    try:
        import psutil

        children = psutil.Process().children(recursive=True)
    except Exception:
        return
    for child in children:
        with contextlib.suppress(Exception):
            child.kill()
    if children:
        log.warning("killed %d leftover child processes", len(children))
        psutil.wait_procs(children, timeout=5)
