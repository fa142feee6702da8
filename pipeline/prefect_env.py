"""Prefect plumbing for the inbox service: environment, local server, work pool, deployments.

Nothing here imports Prefect at module import time: Prefect reads its settings from the
environment when it is first imported, so callers build the environment (``prefect_env``)
first and import Prefect (or start children with that environment) afterwards.

Names (also in ``prefect.yaml``):

- work pool ``dictation`` (type ``process``), queues ``stat`` (priority 1) and ``routine``
  (priority 2): STAT dictations are always handed out first;
- deployment ``process-dictation/process-dictation`` (entrypoint
  ``pipeline.flows:process_dictation``) and ``nightly-evaluation/nightly-evaluation``
  (cron ``0 2 * * *``).
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

from pipeline.errors import ConfigError
from pipeline.settings import PROJECT_ROOT, Settings

__all__ = [
    "POOL",
    "QUEUES",
    "PROCESS_DEPLOYMENT",
    "NIGHTLY_DEPLOYMENT",
    "NIGHTLY_CRON",
    "api_url_for",
    "prefect_env",
    "settings_env",
    "child_env",
    "start_server",
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
    # automations are not used by the pipeline; set to true to use Prefect automations
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
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


def _prefect_exe() -> list[str]:
    exe = Path(sys.executable).with_name("prefect")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "prefect"]


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
        [*_prefect_exe(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
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
    """Create (or update) the work pool, its queues and both deployments; return their ids.

    The pool's concurrency limit is ``pool_limit`` (default ``settings.workers``) when the pool
    is created; an existing pool's limit is left as an administrator set it.
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
                                   concurrency_limit=pool_limit or settings.workers,
                                   description="Medical dictations (pipeline.flows).")
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
            entrypoint="pipeline.flows:process_dictation",
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
            entrypoint="pipeline.flows:nightly_evaluation",
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
