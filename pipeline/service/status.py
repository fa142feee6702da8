"""The inbox service's status: counts and recent dictations (ids only), as a table or the
live view ``dictation run`` shows; and ``check``, the health report ``dictation status``
prints: does the service run, what is in progress in truth, how old the oldest waiting work
is, what the inbox holds that it does not take, and whether a person is needed.

Whether the service runs: the supervisor writes ``<data dir>/service.json`` (its pid, host,
the process's start time, the Prefect API and the worker pids) at start and removes it when
it stops cleanly. ``check`` reads it: on the same host the pid must exist *and* have the
recorded start time (a pid reused after a crash does not count); on another host the file is
believed only if the Prefect API answers. A stale file (kill -9, power loss) reads as "not
running". With the service up, the Prefect server's health and the worker pids are checked
too.

"In progress" is counted from truth, not from the rows' status: unfinished dictations whose
flow run is Pending/Running with a live claimant (``pipeline.service.recovery``). The warm
worker holds up to two runs per slot (one transcribing, one ready), so it is at most twice
``settings.workers`` per worker. Unfinished dictations whose run is queued count as
"queued"; the rest (run missing, ended, or its claimant gone) as "interrupted": the service
resubmits those at start and in its recovery sweep.

Everything is read-only (``os.scandir``/``lstat``: links are never followed, nothing is
opened) and reports ids, counts and ages only.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.core.settings import Settings

__all__ = [
    "StatusView",
    "LABELS",
    "status_table",
    "StatusOptions",
    "Health",
    "check",
    "health_text",
    "acknowledge",
    "write_service_file",
    "remove_service_file",
    "read_service_file",
    "service_running",
    "SERVICE_FILE",
    "NEEDS_PERSON",
]

#: written by the supervisor into the data directory while it runs
SERVICE_FILE = "service.json"
#: ``dictation status --ack`` records when a person last looked at the quarantine
_ACK_FILE = "status-ack.json"
#: exit status of ``dictation status`` when something needs a person
NEEDS_PERSON = 2

#: status -> label shown to people
LABELS = {
    "waiting_in_inbox": "waiting in inbox",
    "received": "queued",
    "processing": "in progress",
    "done": "done",
    "quarantined": "quarantined",
    "failed": "failed",
    "duplicate": "duplicates",
}


def status_table(settings: Settings, limit: int, extra: str = "",
                 health: Health | None = None) -> Any:
    """Counts per status and the most recent dictations; with ``health`` (``check``),
    "queued" and "in progress" are counted from truth and "interrupted" is added."""
    from rich.console import Group
    from rich.table import Table

    from pipeline.ingest import inbox

    counts = dict(health.counts) if health is not None else inbox.status_counts(settings)
    labels = dict(LABELS)
    if health is not None:
        counts.update(received=health.queued, processing=health.in_progress,
                      interrupted=health.interrupted)
        labels = {}
        for key, label in LABELS.items():
            labels[key] = label
            if key == "processing":
                labels["interrupted"] = "interrupted"
    summary = Table(title=f"Dictation inbox {extra}".strip(), show_header=True)
    for key in labels:
        summary.add_column(labels[key], justify="right")
    summary.add_row(*(str(counts.get(k, 0)) for k in labels))
    recent = Table(title="Recent", show_header=True)
    for col in ("dictation", "status", "priority", "physician", "seconds", "reason code"):
        recent.add_column(col)
    for r in inbox.recent(settings, limit):
        recent.add_row(r["id"], r["status"], r["priority"], r["physician_id"] or "-",
                       f"{r['duration_s']:.1f}" if r["duration_s"] else "-",
                       r["error_code"] or (f"dup of {r['duplicate_of'][:8]}"
                                           if r["duplicate_of"] else ""))
    return Group(summary, recent)


class StatusView:
    """The live status of a running service (rich Live on a terminal, lines otherwise)."""

    def __init__(self, settings: Settings, service: Any = None) -> None:
        self.settings = settings
        self.service = service

    def line(self) -> str:
        """One line of counts."""
        from pipeline.ingest import inbox

        counts = inbox.status_counts(self.settings)
        return " | ".join(f"{LABELS[k]} {counts.get(k, 0)}" for k in LABELS)

    @contextmanager
    def live(self, enabled: bool = True, out: Any = None) -> Iterator[Callable[[], bool]]:
        """Yield an ``update()`` to call now and then; it redraws only when the counts
        changed and returns whether they did. No refresh thread: an idle service draws
        nothing (rich's auto-refresh would re-render every second)."""
        import sys

        from pipeline.ingest import inbox

        out = out or sys.stdout
        last: list[tuple[tuple[str, int], ...] | None] = [None]

        def changed() -> bool:
            counts = tuple(sorted(inbox.status_counts(self.settings).items()))
            if counts == last[0]:
                return False
            last[0] = counts
            return True

        if enabled and hasattr(out, "isatty") and out.isatty():
            from rich.console import Console
            from rich.live import Live

            with Live(status_table(self.settings, 8), console=Console(file=out),
                      auto_refresh=False, transient=False) as live:
                changed()

                def update_live() -> bool:
                    if not changed():
                        return False
                    live.update(status_table(self.settings, 8, "(Ctrl-C stops)"), refresh=True)
                    return True

                yield update_live
            return

        def update() -> bool:
            if not changed():
                return False
            print(" | ".join(f"{LABELS[k]} {dict(last[0] or ()).get(k, 0)}" for k in LABELS),
                  file=out, flush=True)
            return True

        yield update




# --- service liveness ----------------------------------------------------------------------


def _proc_start(pid: int) -> float | None:
    try:
        import psutil

        return float(psutil.Process(pid).create_time())
    except Exception:
        return None


def write_service_file(settings: Settings, *, api_url: str, worker_pids: list[int],
                       phase: str = "running") -> None:
    """(Supervisor) record this process as the service, atomically; ``phase`` is
    ``starting`` until its server and worker are up, then ``running``."""
    pid = os.getpid()
    info = {"pid": pid, "host": socket.gethostname(), "started": _proc_start(pid),
            "api_url": api_url, "worker_pids": worker_pids, "phase": phase,
            "workers": settings.workers, "written_at": time.time()}
    path = settings.data_path / SERVICE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(info), encoding="utf-8")
    os.replace(tmp, path)


def remove_service_file(settings: Settings) -> None:
    """(Supervisor) the service stopped cleanly."""
    path = settings.data_path / SERVICE_FILE
    with suppress(OSError, ValueError):
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()


def read_service_file(settings: Settings) -> dict[str, Any] | None:
    """The service file's content (None when there is none or it is unreadable)."""
    try:
        data = json.loads((settings.data_path / SERVICE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pid_alive(pid: Any, started: Any) -> bool:
    if not isinstance(pid, int):
        return False
    now_start = _proc_start(pid)
    if now_start is None:
        return False
    return not isinstance(started, (int, float)) or abs(now_start - started) < 1.0


def service_running(settings: Settings, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"running": bool, "pid", "host", "uptime_s", "prefect", "workers_alive", "note"}``
    from the service file (see the module docstring)."""
    from pipeline.service import prefect_env

    info = info if info is not None else read_service_file(settings)
    out: dict[str, Any] = {"running": False, "starting": False, "pid": None, "host": None,
                           "uptime_s": None, "prefect": None, "workers_alive": None,
                           "note": ""}
    if info is None:
        out["note"] = "no service file (never started here, or stopped cleanly)"
        return out
    out["pid"], out["host"] = info.get("pid"), info.get("host")
    api_url = str(info.get("api_url") or prefect_env.api_url_for(settings))
    if info.get("host") == socket.gethostname():
        running = _pid_alive(info.get("pid"), info.get("started"))
        if not running:
            out["note"] = f"its process (pid {info.get('pid')}) is gone: stopped by a crash"
            return out
        pids = [p for p in info.get("worker_pids") or [] if isinstance(p, int)]
        out["workers_alive"] = sum(1 for p in pids if _proc_start(p) is not None)
    else:
        out["note"] = "runs on another host: believed while its Prefect API answers"
    out["prefect"] = prefect_env.is_healthy(api_url, timeout=1.0)
    out["running"] = bool(out["prefect"]) or info.get("host") == socket.gethostname()
    if isinstance(info.get("started"), (int, float)):
        out["uptime_s"] = round(time.time() - float(info["started"]), 1)
    out["starting"] = out["running"] and info.get("phase") == "starting"
    out["api_url"] = api_url
    return out


# --- the health report ---------------------------------------------------------------------


@dataclass
class StatusOptions:
    """When waiting work counts as overdue (seconds)."""

    #: a dictation taken in and waiting for the worker
    queued_max_s: float = 900.0
    #: a dictation being processed (a 15-minute recording takes a few minutes on 2 cores)
    in_progress_max_s: float = 1800.0
    #: a file in the inbox not taken in (a slow upload, a file the inbox cannot take)
    inbox_max_s: float = 300.0
    #: a folder in processing/ with no dictation row (claimed, then the service stopped)
    unregistered_max_s: float = 120.0
    #: a service still starting after this long (its Prefect server or worker hangs)
    start_max_s: float = 300.0
    #: with ``strict``, quarantined/failed dictations since the last ``--ack`` need a person
    strict: bool = False


@dataclass
class Health:
    """``check``'s answer: ids, counts and ages only."""

    service: dict[str, Any]
    counts: dict[str, int]
    queued: int = 0
    in_progress: int = 0
    interrupted: int = 0
    slots: int = 1
    ages: dict[str, float | None] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    overdue: list[dict[str, Any]] = field(default_factory=list)
    interrupted_ids: list[str] = field(default_factory=list)
    quarantined_since_ack: list[str] = field(default_factory=list)
    attention: list[dict[str, str]] = field(default_factory=list)
    exit_code: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def acknowledge(settings: Settings) -> None:
    """Record that a person looked at the quarantine now (``dictation status --ack``)."""
    path = settings.data_path / _ACK_FILE
    path.write_text(json.dumps({"acked_at": datetime.now(UTC).isoformat()}), encoding="utf-8")


def _acked_at(settings: Settings) -> datetime | None:
    try:
        data = json.loads((settings.data_path / _ACK_FILE).read_text(encoding="utf-8"))
        return datetime.fromisoformat(str(data["acked_at"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _age(value: datetime | None, now: datetime) -> float | None:
    value = _utc(value)
    return None if value is None else round((now - value).total_seconds(), 1)


def _scan_inbox(settings: Settings, known_stems: set[str], now: float
                ) -> tuple[dict[str, int], float | None, int]:
    """Read-only walk of the inbox: (held entries by kind, age of the oldest waiting
    audio file, number of audio files waiting)."""
    import stat as st

    from pipeline.ingest import inbox

    held = dict.fromkeys(("links", "special_files", "subfolder_files", "root_files",
                          "unknown_folder_files", "orphan_sidecars", "late_sidecars"), 0)
    oldest: float | None = None
    waiting = 0
    physicians = set(settings.physicians)

    def walk(folder: Path, depth: int, where: str) -> Iterator[tuple[os.DirEntry[str], str]]:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if depth < 4 and not entry.name.startswith("."):
                    if depth == 0:
                        sub = "physician" if entry.name in physicians else "unknown"
                    else:
                        sub = "subfolder"
                    yield from walk(Path(entry.path), depth + 1, sub)
                continue
            yield entry, where

    for entry, where in walk(settings.inbox_dir, 0, "root"):
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        name = entry.name
        if st.S_ISLNK(info.st_mode):
            held["links"] += 1
            continue
        if not st.S_ISREG(info.st_mode):
            held["special_files"] += 1
            continue
        if name.lower().endswith(".json") and where == "physician":
            stem = Path(name).stem
            siblings = {Path(n).stem for n in os.listdir(Path(entry.path).parent)
                        if not n.lower().endswith(".json")}
            if stem not in siblings and now - info.st_mtime > settings.sidecar_grace_seconds:
                held["late_sidecars" if stem in known_stems else "orphan_sidecars"] += 1
            continue
        if inbox.is_ignored(name):
            continue
        if where == "subfolder":
            held["subfolder_files"] += 1
        elif where == "root":
            held["root_files"] += 1
        elif where == "unknown":
            held["unknown_folder_files"] += 1
        waiting += 1
        age = now - info.st_mtime
        oldest = age if oldest is None else max(oldest, age)
    return held, (round(oldest, 1) if oldest is not None else None), waiting


def _classify(settings: Settings, service: dict[str, Any], rows: list[Any]
              ) -> dict[str, str]:
    """dictation id -> ``queued`` / ``in_progress`` / ``interrupted`` (asks Prefect only while
    the service runs and its API answers)."""
    if not rows:
        return {}
    if not service.get("running") or not service.get("prefect"):
        return {r.id: "interrupted" for r in rows}
    from pipeline.service import prefect_env, recovery

    options = recovery.RecoveryOptions.from_settings(settings)
    out: dict[str, str] = {}
    try:
        with prefect_env.client(str(service["api_url"])) as c:
            runs = recovery.read_runs(c, [r.flow_run_id for r in rows if r.flow_run_id])
            cache: dict[str, bool] = {}
            for r in rows:
                run = runs.get(str(r.flow_run_id)) if r.flow_run_id else None
                if run is None:
                    out[r.id] = "queued" if r.flow_run_id is None else "interrupted"
                    continue
                verdict = recovery.run_verdict(c, run, options, cache=cache)
                if verdict == "in_flight":
                    alive = run.state_type.value in ("PENDING", "RUNNING")
                    out[r.id] = "in_progress" if alive else "queued"
                else:
                    out[r.id] = "interrupted"
    except Exception:  # Prefect stopped answering mid-way: cannot tell
        return {r.id: "interrupted" for r in rows}
    return out


def check(settings: Settings, options: StatusOptions | None = None) -> Health:
    """The health report behind ``dictation status`` (see the module docstring)."""
    from sqlalchemy import select

    from pipeline.core.db.core import DictationRow
    from pipeline.core.store import open_store
    from pipeline.ingest import inbox

    options = options or StatusOptions()
    now = datetime.now(UTC)
    info = read_service_file(settings)
    service = service_running(settings, info)
    counts = inbox.status_counts(settings)
    acked = _utc(_acked_at(settings))
    with open_store(settings).session() as s:
        active = list(s.scalars(select(DictationRow).where(
            DictationRow.status.in_(inbox.ACTIVE_STATUSES))))
        bad = s.execute(select(DictationRow.id, DictationRow.updated_at).where(
            DictationRow.status.in_(("quarantined", "failed")))).all()
        stems = {Path(n).stem for (n,) in s.execute(select(DictationRow.original_name))}
        processing_ids = [p.name for p in _dirs(settings.processing_dir)]
        known = set(s.scalars(select(DictationRow.id).where(
            DictationRow.id.in_(processing_ids)))) if processing_ids else set()
    kinds = _classify(settings, service, active)
    workers = int((info or {}).get("workers") or settings.workers)
    health = Health(service=service, counts=counts, slots=workers)
    health.queued = sum(1 for k in kinds.values() if k == "queued")
    health.in_progress = sum(1 for k in kinds.values() if k == "in_progress")
    health.interrupted = sum(1 for k in kinds.values() if k == "interrupted")
    health.interrupted_ids = sorted(i for i, k in kinds.items() if k == "interrupted")
    oldest: dict[str, float | None] = {"queued": None, "in_progress": None, "interrupted": None}
    for r in active:
        kind = kinds.get(r.id, "queued")
        # queued: since taken in; in progress: since the flow took it (its last update)
        age = _age(r.created_at if kind != "in_progress" else r.updated_at, now)
        if age is None:
            continue
        prev = oldest[kind]
        oldest[kind] = age if prev is None else max(prev, age)
        limit = options.in_progress_max_s if kind == "in_progress" else options.queued_max_s
        if age > limit:
            health.overdue.append({"id": r.id, "state": kind, "age_s": age})
    held, inbox_oldest, waiting = _scan_inbox(settings, stems, time.time())
    unregistered = [d for d in processing_ids if d not in known]
    held["processing_without_row"] = len(unregistered)
    stale_unregistered = sum(
        1 for d in unregistered
        if time.time() - _mtime(settings.processing_dir / d) > options.unregistered_max_s)
    health.held = held
    health.ages = {"oldest_queued_s": oldest["queued"],
                   "oldest_in_progress_s": oldest["in_progress"],
                   "oldest_interrupted_s": oldest["interrupted"],
                   "oldest_in_inbox_s": inbox_oldest}
    health.quarantined_since_ack = sorted(
        did for did, when in bad if acked is None or (_utc(when) or now) > acked)
    _attention(health, options, waiting, stale_unregistered)
    return health


def _dirs(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _mtime(path: Path) -> float:
    try:
        return path.lstat().st_mtime
    except OSError:
        return time.time()


def _attention(h: Health, options: StatusOptions, waiting: int, stale_unregistered: int
               ) -> None:
    """Fill ``h.attention`` and ``h.exit_code``."""
    def need(code: str, message: str) -> None:
        h.attention.append({"code": code, "message": message})

    pending = h.queued + h.in_progress + h.interrupted + waiting
    svc = h.service
    if not svc["running"]:
        if pending:
            need("service_down", f"The service is not running and {pending} dictations wait "
                 f"({svc['note']}). Start it with `dictation run`.")
    else:
        # while starting, the server and the worker are not up yet: not a fault
        if svc.get("prefect") is False and not svc.get("starting"):
            need("prefect_down", "The service runs but its Prefect server does not answer.")
        if svc.get("workers_alive") == 0 and not svc.get("starting"):
            need("worker_down", "The service runs but no worker process is alive.")
        if svc.get("starting") and (svc.get("uptime_s") or 0) > options.start_max_s:
            need("start_stuck", f"The service has been starting for {int(svc['uptime_s'])} s.")
        if h.interrupted and (h.ages.get("oldest_interrupted_s") or 0) > options.queued_max_s:
            need("interrupted", f"{h.interrupted} dictations were interrupted and not "
                 f"resubmitted for {int(h.ages['oldest_interrupted_s'] or 0)} s.")
    if h.overdue:
        need("overdue", f"{len(h.overdue)} dictations wait longer than they should "
             f"(oldest {int(max(o['age_s'] for o in h.overdue))} s).")
    oldest_inbox = h.ages.get("oldest_in_inbox_s")
    if oldest_inbox is not None and oldest_inbox > options.inbox_max_s:
        need("inbox_stale", f"A file has waited in the inbox for {int(oldest_inbox)} s "
             f"without being taken in.")
    held = {k: v for k, v in h.held.items() if v and k != "processing_without_row"}
    if held:
        need("held", "The inbox holds entries it does not take: "
             + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in held.items()) + ".")
    if stale_unregistered:
        need("unregistered", f"{stale_unregistered} folders in processing/ have no dictation "
             f"record.")
    if h.quarantined_since_ack and options.strict:
        need("quarantined", f"{len(h.quarantined_since_ack)} dictations were quarantined or "
             f"failed since the last `dictation status --ack`.")
    h.exit_code = NEEDS_PERSON if h.attention else 0


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def health_text(h: Health) -> list[str]:
    """The report as lines (ids, counts and ages only)."""
    svc = h.service
    if svc["running"]:
        bits = [f"pid {svc['pid']}"]
        if svc.get("uptime_s") is not None:
            bits.append(f"up {_dur(svc['uptime_s'])}")
        bits.append("Prefect " + ("up" if svc.get("prefect") else "NOT answering"))
        if svc.get("workers_alive") is not None:
            bits.append(f"{svc['workers_alive']} worker(s) alive")
        state = "starting" if svc.get("starting") else "running"
        lines = [f"Service: {state} ({', '.join(bits)})"]
    else:
        lines = [f"Service: NOT RUNNING ({svc['note']})"]
    a = h.ages
    lines.append(
        f"In progress {h.in_progress} (slots {h.slots}, "
        f"oldest {_dur(a.get('oldest_in_progress_s'))})"
        f" | queued {h.queued} (oldest {_dur(a.get('oldest_queued_s'))})"
        f" | interrupted {h.interrupted} (oldest {_dur(a.get('oldest_interrupted_s'))})"
        f" | oldest in inbox {_dur(a.get('oldest_in_inbox_s'))}")
    held = {k: v for k, v in h.held.items() if v}
    lines.append("Held, not taken: " + (", ".join(f"{k.replace('_', ' ')} {v}"
                                                   for k, v in held.items()) or "none"))
    if h.quarantined_since_ack:
        lines.append(f"Quarantined or failed since the last --ack: "
                     f"{len(h.quarantined_since_ack)}")
    for o in h.overdue[:10]:
        lines.append(f"  overdue: {o['id']} {o['state']} for {_dur(o['age_s'])}")
    if h.attention:
        lines.append("NEEDS ATTENTION:")
        lines += [f"  - [{x['code']}] {x['message']}" for x in h.attention]
    else:
        lines.append("Nothing needs attention.")
    return lines
