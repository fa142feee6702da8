"""Prefect plumbing for the inbox service: environment, local server, work pool, deployments.

Nothing here imports Prefect at module import time: Prefect reads its settings from the
environment when it is first imported, so callers build the environment (``prefect_env``)
first and import Prefect (or start children with that environment) afterwards.

The local server runs as ``python -m pipeline.service.prefect_env serve``
(``server_command``): Prefect's own server app (the same as ``prefect server start``) with
idle tuning, because at rest the stock server polls several times a second (measured 1.9% of
a core on 2 cores; see ``serve``). What that tuning has to change inside Prefect, docket,
burner-redis and uvicorn lives in ``pipeline.prefect_compat``, one module per patch.

Names (also in ``prefect.yaml``):

- work pool ``dictation`` (type ``process``), queues ``stat`` (priority 1) and ``routine``
  (priority 2): STAT dictations are always handed out first;
- deployment ``process-dictation/process-dictation`` (entrypoint
  ``pipeline.service.flows:process_dictation``), ``nightly-evaluation/nightly-evaluation``
  (cron ``0 2 * * *``), ``nightly-backup/nightly-backup`` (``settings.backup_cron``,
  default ``30 1 * * *``; ``pipeline.service.backup``) and ``adapt-models/adapt-models``
  (cron ``0 3 * * *``; ``pipeline.service.flows:adapt_models``, speech-model adaptation).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from uuid import UUID

from pipeline import prefect_compat as compat
from pipeline.core.errors import ConfigError
from pipeline.core.settings import PROJECT_ROOT, Settings

__all__ = [
    "POOL",
    "QUEUES",
    "PROCESS_DEPLOYMENT",
    "NIGHTLY_DEPLOYMENT",
    "NIGHTLY_CRON",
    "BACKUP_DEPLOYMENT",
    "ADAPT_DEPLOYMENT",
    "ADAPT_CRON",
    "api_url_for",
    "prefect_env",
    "settings_env",
    "child_env",
    "start_server",
    "server_command",
    "serve",
    "low_tick_server",
    "DOCKET_POLL_SECONDS",
    "DOCKET_HEARTBEAT_SECONDS",
    "PUBSUB_POLL_SECONDS",
    "UVICORN_TICK_SECONDS",
    "TRIM_SECONDS",
    "wait_healthy",
    "is_healthy",
    "ensure_deployments",
    "submit_dictation",
    "client",
    "set_pdeathsig",
    "stop_process_group",
]

log = logging.getLogger(__name__)

POOL = "dictation"
#: queue name -> priority (1 is served first)
QUEUES: dict[str, int] = {"stat": 1, "routine": 2}
PROCESS_FLOW = "process-dictation"
PROCESS_DEPLOYMENT = f"{PROCESS_FLOW}/process-dictation"
NIGHTLY_FLOW = "nightly-evaluation"
NIGHTLY_DEPLOYMENT = f"{NIGHTLY_FLOW}/nightly-evaluation"
NIGHTLY_CRON = "0 2 * * *"
BACKUP_FLOW = "nightly-backup"
BACKUP_DEPLOYMENT = f"{BACKUP_FLOW}/nightly-backup"  # cron: settings.backup_cron
ADAPT_FLOW = "adapt-models"
ADAPT_DEPLOYMENT = f"{ADAPT_FLOW}/adapt-models"
#: after the backup (01:30) and the nightly evaluation (02:00): training is the longest job
ADAPT_CRON = "0 3 * * *"


# --- idle tuning of the local server process (``serve``) --------------------------------------
# What an idle ``prefect server start`` (3.9.1) wakes up for, measured with strace/cProfile: its
# docket worker (background tasks and the perpetual services) checks its in-memory Redis every
# 0.25 s and heartbeats every 2 s; docket's cancellation listener polls a thread-safe queue
# through a worker thread every 0.1 s; uvicorn's main loop ticks every 0.1 s. None of these is
# configurable through Prefect settings, so ``serve`` sets them when it starts the same app,
# through the patches in ``pipeline.prefect_compat`` (docket_poll, pubsub_poll, server_tick).
# Docket tasks then start up to DOCKET_POLL_SECONDS later: they are Prefect's housekeeping
# (marking queues/deployments ready, late runs, the scheduler's ticks), never on a dictation's
# path (workers read scheduled runs straight from the database).

#: docket worker: seconds between checks for due/new background tasks (docket default 0.25)
DOCKET_POLL_SECONDS = 2.0
#: docket worker heartbeat into its in-memory Redis (docket default 2; only for its own
#: liveness listing, redelivery uses a separate 5-minute timeout)
DOCKET_HEARTBEAT_SECONDS = 10.0
#: in-memory Redis pub/sub read slice (burner-redis default 0.1): how often docket's
#: cancellation listener wakes; the Prefect server never cancels docket tasks
PUBSUB_POLL_SECONDS = 1.0
#: uvicorn main-loop tick (uvicorn default 0.1): only shutdown checks and the Date header
UVICORN_TICK_SECONDS = 1.0

_SERVER_LOOPS = {
    "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_LOOP_SECONDS": "120",
    "PREFECT_SERVER_SERVICES_FOREMAN_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_CLEANUP_RECONCILER_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "120",
    "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "60",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "5",  # nightly runs created ahead
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL": "10",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "10",
    # Busy service: task-run state events are written in batches (Prefect's default batch of
    # 1 writes each of a flow's ~24 events in its own transaction: ~1 s of server CPU per
    # dictation, measured, taken from the transcription on 2 cores). A batch is written when
    # full or at the flush interval, so the Prefect UI may show task runs up to 10 s late;
    # flow-run states are not affected.
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "200",
    "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE": "200",
    # automations are not used by the pipeline; set to true to use Prefect automations
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
    # flows of this pipeline never pause (no pause_flow_run/suspend): nothing to expire
    "PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED": "false",
}


def api_url_for(settings: Settings) -> str:
    """The Prefect API to use: ``PREFECT_API_URL`` if set, else our local server's."""
    return os.environ.get("PREFECT_API_URL") or f"http://127.0.0.1:{settings.prefect_port}/api"


def prefect_env(settings: Settings, api_url: str | None = None) -> dict[str, str]:
    """Environment variables that keep Prefect local, offline and quiet for ``settings``."""
    home = settings.prefect_home
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api_url or api_url_for(settings),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_UI_ENABLED": os.environ.get("PREFECT_UI_ENABLED", "false"),
        "PREFECT_WORKER_QUERY_SECONDS": os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "1"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
        "PREFECT_LOGGING_TO_API_ENABLED": os.environ.get("PREFECT_LOGGING_TO_API_ENABLED", "true"),
        "PREFECT_CLI_COLORS": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": os.environ.get("PREFECT_SERVER_LOGGING_LEVEL", "WARNING"),
    }
    # Idle efficiency: the server's housekeeping loops wake every 5-20 s by default; a
    # dictation practice needs none of them that often (measured: 2.6% of a core idle).
    for key, value in _SERVER_LOOPS.items():
        env[key] = os.environ.get(key, value)
    if "PREFECT_API_DATABASE_CONNECTION_URL" not in os.environ:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{home / 'prefect.db'}"
    return env


def settings_env(settings: Settings) -> dict[str, str]:
    """``DICTATION_*`` variables that recreate ``settings`` in a child process."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, (list, dict)):
            text = json.dumps(value)
        elif isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = str(value)
        env[f"DICTATION_{name.upper()}"] = text
    env["DICTATION_DATA_DIR"] = str(settings.data_path)
    return env


def child_env(settings: Settings, api_url: str | None = None) -> dict[str, str]:
    """The full environment for a child process (server, worker) of the service."""
    env = dict(os.environ)
    env.update(settings_env(settings))
    env.update(prefect_env(settings, api_url))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def set_pdeathsig() -> None:
    """In a child (``preexec_fn``): get SIGTERM when the parent dies, even by ``kill -9``."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the supervisor's shutdown still stops the group
        pass


def server_command(host: str, port: int, *, tuned: bool = True) -> list[str]:
    """The command line of the local Prefect server: ``serve`` with the idle tuning
    (``tuned=False``: Prefect's stock pollers, as ``prefect server start`` runs them)."""
    cmd = [sys.executable, "-m", "pipeline.service.prefect_env", "serve", "--host", host,
           "--port", str(port)]
    if not tuned:
        cmd += ["--docket-poll", "0", "--docket-heartbeat", "0", "--pubsub-poll", "0",
                "--tick", "0"]
    return cmd


#: how often the server returns freed heap pages to the system (``memtrim``)
TRIM_SECONDS = 60.0


def low_tick_server(config: Any, tick_seconds: float = UVICORN_TICK_SECONDS) -> Any:
    """A ``uvicorn.Server`` for ``config`` whose main loop wakes every ``tick_seconds``
    (uvicorn: 0.1 s) to check for shutdown and refresh the Date header; requests are served
    as they arrive either way. ``tick_seconds <= 0``, or a uvicorn that ``server_tick`` no
    longer matches: a plain ``uvicorn.Server``."""
    import uvicorn

    server = uvicorn.Server(config)
    compat.server_tick.apply(server, tick_seconds)
    return server


def serve(host: str, port: int, *, docket_poll: float = DOCKET_POLL_SECONDS,
          docket_heartbeat: float = DOCKET_HEARTBEAT_SECONDS,
          pubsub_poll: float = PUBSUB_POLL_SECONDS,
          tick: float = UVICORN_TICK_SECONDS) -> None:
    """Run Prefect's server app (API, background services, UI if enabled) on ``host:port``
    in this process until SIGINT/SIGTERM, with the idle tuning above (0 keeps a default).

    Prefect settings come from the environment (``prefect_env``), as for ``prefect server
    start``; this is what that command runs in the foreground, minus its banner and checks.
    """
    import uvicorn

    changed: list[str] = []
    if compat.docket_poll.apply(docket_poll, docket_heartbeat):
        changed.append(f"docket poll={docket_poll:g}s heartbeat={docket_heartbeat:g}s")
    if compat.pubsub_poll.apply(pubsub_poll):
        changed.append(f"pubsub poll={pubsub_poll:g}s")
    if compat.sqlite_writes.apply():
        changed.append("sqlite BEGIN IMMEDIATE")
    if compat.sqlite_cache.apply():
        changed.append(f"sqlite cache {compat.sqlite_cache.CACHE_KIB // 1024} MiB per connection")
    from pipeline.core import memtrim

    if memtrim.start_trimmer(TRIM_SECONDS) is not None:
        changed.append(f"malloc_trim every {TRIM_SECONDS:g}s")
    from prefect.server.api.server import create_app
    from prefect.settings import get_current_settings

    current = get_current_settings().server
    config = uvicorn.Config(
        create_app(final=True),
        host=host,
        port=port,
        timeout_keep_alive=current.api.keepalive_timeout,
        log_level=str(current.logging_level).lower(),
    )
    server = uvicorn.Server(config)
    if compat.server_tick.apply(server, tick):
        changed.append(f"uvicorn tick={tick:g}s")
    log.info("prefect server idle tuning: %s", ", ".join(changed) or "none")
    server.run()


def is_healthy(api_url: str, timeout: float = 2.0) -> bool:
    """True if a Prefect API answers ``/health`` at ``api_url``."""
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def wait_healthy(api_url: str, timeout: float = 90.0, proc: subprocess.Popen[bytes] | None = None
                 ) -> None:
    """Wait until the API answers; ``ConfigError`` if it does not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_healthy(api_url):
            return
        if proc is not None and proc.poll() is not None:
            raise ConfigError(
                f"The Prefect server exited with status {proc.returncode} before answering at "
                f"{api_url}; see {Path(os.environ.get('PREFECT_HOME', '.'))} logs."
            )
        time.sleep(0.3)
    raise ConfigError(f"No Prefect API answered at {api_url} within {timeout:.0f} s.")


def start_server(settings: Settings, port: int | None = None, log_path: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``prefect server start`` on 127.0.0.1 in its own process group (SQLite under
    ``settings.prefect_home`` unless ``PREFECT_API_DATABASE_CONNECTION_URL`` is set)."""
    port = port or settings.prefect_port
    api = f"http://127.0.0.1:{port}/api"
    if is_healthy(api, timeout=0.5):
        raise ConfigError(
            f"Port {port} already has a Prefect server; stop it, set DICTATION_PREFECT_PORT, or "
            f"point PREFECT_API_URL at it."
        )
    env = child_env(settings, api)
    env.update(extra_env or {})
    log_path = log_path or settings.prefect_home / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab")  # noqa: SIM115  (handed to the child)
    proc = subprocess.Popen(
        server_command("127.0.0.1", port),
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=set_pdeathsig,
        cwd=str(settings.prefect_home),
    )
    out.close()
    (settings.prefect_home / "server.pid").write_text(str(proc.pid), encoding="utf-8")
    log.info("prefect server pid=%s port=%s", proc.pid, port)
    return proc


def stop_process_group(proc: subprocess.Popen[Any], timeout: float = 15.0,
                       first: int = signal.SIGTERM) -> int | None:
    """Stop ``proc`` and everything in its process group: ``first`` signal, then SIGKILL.

    Returns the exit status (None if it could not be reaped).
    """
    if proc.poll() is not None:
        _kill_group(proc.pid, signal.SIGKILL)  # grandchildren left in the group
        return proc.returncode
    _kill_group(proc.pid, first)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid, signal.SIGKILL)
        try:
            return proc.wait(5)
        except subprocess.TimeoutExpired:
            return None
    finally:
        _kill_group(proc.pid, signal.SIGKILL)


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def client(api_url: str) -> Any:
    """A synchronous Prefect client for ``api_url`` (use as a context manager)."""
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(api_url)


def ensure_deployments(api_url: str, settings: Settings, *, pool_limit: int | None = None
                       ) -> dict[str, UUID]:
    """Create (or update) the work pool, its queues and the deployments; return their ids.

    The pool is created with no concurrency limit unless ``pool_limit`` is given: each warm
    worker bounds its own machine's CPU work (``settings.workers`` transcriptions at once; see
    ``pipeline.service.flows``). An administrator may cap the pool as a whole (``prefect work-pool
    set-concurrency-limit dictation N``); an existing pool's limit is left as it is.
    """
    from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with client(api_url) as c:
        try:
            c.read_work_pool(POOL)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                c.create_work_pool(
                    WorkPoolCreate(name=POOL, type="process",
                                   concurrency_limit=pool_limit,
                                   description="Medical dictations (pipeline.service.flows).")
                )
        for name, priority in QUEUES.items():
            try:
                c.read_work_queue_by_name(name, work_pool_name=POOL)
            except ObjectNotFound:
                with contextlib.suppress(ObjectAlreadyExists):
                    c.create_work_queue(name=name, work_pool_name=POOL, priority=priority)
        ids: dict[str, UUID] = {}
        flow_id = c.create_flow_from_name(PROCESS_FLOW)
        ids[PROCESS_DEPLOYMENT] = c.create_deployment(
            flow_id=flow_id,
            name="process-dictation",
            work_pool_name=POOL,
            work_queue_name="routine",
            entrypoint="pipeline.service.flows:process_dictation",
            path=str(PROJECT_ROOT),
            description="Transcribe, normalize, structure, render and queue one dictation.",
            parameter_openapi_schema={
                "title": "Parameters",
                "type": "object",
                "properties": {"dictation_id": {"title": "dictation_id", "type": "string"}},
                "required": ["dictation_id"],
            },
            tags=["dictation"],
        )
        nightly_id = c.create_flow_from_name(NIGHTLY_FLOW)
        ids[NIGHTLY_DEPLOYMENT] = c.create_deployment(
            flow_id=nightly_id,
            name="nightly-evaluation",
            work_pool_name=POOL,
            work_queue_name="routine",
            entrypoint="pipeline.devtools.nightly:nightly_evaluation",
            path=str(PROJECT_ROOT),
            description="Word error rate on the sample sets.",
            parameter_openapi_schema={
                "title": "Parameters",
                "type": "object",
                "properties": {
                    "sets": {"title": "sets", "anyOf": [
                        {"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                        "default": None},
                    "limit": {"title": "limit", "anyOf": [{"type": "integer"}, {"type": "null"}],
                              "default": None},
                },
            },
            schedules=[DeploymentScheduleCreate(
                schedule=CronSchedule(cron=NIGHTLY_CRON, timezone=settings.timezone),
                active=True,
            )],
            tags=["evaluation"],
        )
        backup_id = c.create_flow_from_name(BACKUP_FLOW)
        ids[BACKUP_DEPLOYMENT] = c.create_deployment(
            flow_id=backup_id,
            name="nightly-backup",
            work_pool_name=POOL,
            work_queue_name="routine",
            entrypoint="pipeline.service.backup:nightly_backup",
            path=str(PROJECT_ROOT),
            description="Encrypted backup into the backup folder; keeps the newest N.",
            parameter_openapi_schema={"title": "Parameters", "type": "object",
                                      "properties": {}},
            schedules=[DeploymentScheduleCreate(
                schedule=CronSchedule(cron=settings.backup_cron, timezone=settings.timezone),
                active=True,
            )],
            tags=["backup"],
        )
        adapt_id = c.create_flow_from_name(ADAPT_FLOW)
        ids[ADAPT_DEPLOYMENT] = c.create_deployment(
            flow_id=adapt_id,
            name="adapt-models",
            work_pool_name=POOL,
            work_queue_name="routine",
            entrypoint="pipeline.service.flows:adapt_models",
            path=str(PROJECT_ROOT),
            description="Speech-model adaptation for physicians with new signed dictations.",
            parameter_openapi_schema={
                "title": "Parameters",
                "type": "object",
                "properties": {
                    "physician_ids": {"title": "physician_ids", "anyOf": [
                        {"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                        "default": None},
                    "force": {"title": "force", "type": "boolean", "default": False},
                },
            },
            schedules=[DeploymentScheduleCreate(
                schedule=CronSchedule(cron=ADAPT_CRON, timezone=settings.timezone),
                active=True,
            )],
            tags=["adaptation"],
        )
    return ids


def submit_dictation(api_url: str, deployment_id: UUID, dictation_id: str, priority: str,
                     *, idempotency_key: str | None = None) -> str:
    """Create a flow run of ``process-dictation`` for one dictation id on the queue for its
    priority; returns the flow run id. Only the opaque id goes into Prefect."""
    queue = "stat" if priority == "stat" else "routine"
    with client(api_url) as c:
        run = c.create_flow_run_from_deployment(
            deployment_id,
            parameters={"dictation_id": dictation_id},
            work_queue_name=queue,
            tags=[queue],
            idempotency_key=idempotency_key,
            name=f"dictation-{dictation_id[:12]}",
        )
    return str(run.id)


def _main(argv: list[str]) -> int:
    """``python -m pipeline.service.prefect_env serve --host H --port P [...]`` (see ``serve``)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m pipeline.service.prefect_env")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the Prefect server with idle tuning")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=4200)
    s.add_argument("--docket-poll", type=float, default=DOCKET_POLL_SECONDS,
                   help=f"seconds (default {DOCKET_POLL_SECONDS:g}; 0: docket's 0.25)")
    s.add_argument("--docket-heartbeat", type=float, default=DOCKET_HEARTBEAT_SECONDS,
                   help=f"seconds (default {DOCKET_HEARTBEAT_SECONDS:g}; 0: docket's 2)")
    s.add_argument("--pubsub-poll", type=float, default=PUBSUB_POLL_SECONDS,
                   help=f"seconds (default {PUBSUB_POLL_SECONDS:g}; 0: burner-redis's 0.1)")
    s.add_argument("--tick", type=float, default=UVICORN_TICK_SECONDS,
                   help=f"seconds (default {UVICORN_TICK_SECONDS:g}; 0: uvicorn's 0.1)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)  # the tuning line in server.log
    serve(args.host, args.port, docket_poll=args.docket_poll,
          docket_heartbeat=args.docket_heartbeat, pubsub_poll=args.pubsub_poll, tick=args.tick)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
