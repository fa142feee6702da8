"""Kill soak for the inbox service (issue #18): ``dictation run --no-web --no-live`` on a temp
data directory with tiny.en, dictations dropped at random moments while the whole service
tree is killed with SIGKILL N times (and started again each time), then a last start that
runs until idle, and a report:

    dropped in / drafted exactly once / quarantined / stuck / duplicated / lost
    (+ flow runs left Pending/Running, kills before and after "Service running")

Usage (from the repository root, with the project's virtualenv)::

    .venv/bin/python scripts/soak_kill.py --kills 10
    .venv/bin/python scripts/soak_kill.py --kills 50 --max-minutes 40 --json soak.json

It stops by itself: the kill phase ends after ``--kills`` kills or ``--max-minutes`` (then the
remaining drops are made at once), and the drain waits at most ``--drain-seconds``. Exit
status 0 when nothing is stuck, duplicated or lost, 1 otherwise. The audio is synthetic
(espeak-ng); the report holds counts and ids only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FINAL = ("done", "quarantined", "failed", "duplicate")
PHRASES = (
    "Follow up in two weeks.",
    "Blood pressure is one hundred and twenty over eighty. Continue the current medication.",
    "The wound is clean and dry. Sutures out in ten days.",
    "Chest clear. Heart sounds normal. No edema of the legs.",
    "Plan: lipid panel, stress test, and review in clinic next month.",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _make_clips(folder: Path) -> list[bytes]:
    clips = []
    for i, text in enumerate(PHRASES):
        path = folder / f"clip{i}.wav"
        subprocess.run(["espeak-ng", "-s", "160", "-w", str(path), text], check=True)
        clips.append(path.read_bytes())
    return clips


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        from pipeline.core.settings import Settings

        self.args = args
        self.rng = random.Random(args.seed)
        self.base = Path(args.data_dir or tempfile.mkdtemp(prefix="soak-kill-"))
        self.settings = Settings(
            data_dir=self.base / "var", model="tiny.en", device="cpu", compute_type="int8",
            physicians=["dr-smith", "dr-patel"], pdf="never", stable_seconds=0.3,
            sidecar_grace_seconds=0.3, poll_interval_seconds=0.2, workers=args.workers,
            prefect_port=_free_port(), web_port=_free_port(),
            recovery_sweep_seconds=args.sweep_seconds, recovery_grace_seconds=args.grace_seconds,
        )
        self.log = self.base / "service.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.dropped: list[str] = []
        self.kills_before_ready = 0
        self.kills_after_ready = 0
        self._stop_drops = threading.Event()

    # -- the service ----------------------------------------------------------------------
    def start(self) -> None:
        from pipeline.service import prefect_env

        env = prefect_env.child_env(self.settings)
        env.pop("PREFECT_API_URL", None)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "run", "--no-web", "--no-live"],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                start_new_session=True,
            )
        self._ready_mark = self._ready_count()

    def _ready_count(self) -> int:
        try:
            return self.log.read_text(errors="replace").count("Service running")
        except OSError:
            return 0

    def ready(self) -> bool:
        return self._ready_count() > self._ready_mark

    def kill_tree(self) -> None:
        """SIGKILL every process of the service, children first (no graceful path)."""
        import psutil

        assert self.proc is not None
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(30)
        psutil.wait_procs(procs, timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.kill_tree()

    # -- dictations -----------------------------------------------------------------------
    def drop(self, clips: list[bytes]) -> None:
        i = len(self.dropped)
        name = f"soak-{i:04d}.wav"
        physician = self.settings.physicians[i % 2]
        folder = self.settings.inbox_dir / physician
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.part"
        # distinct bytes for each drop (trailing silence): no two are the same recording
        tmp.write_bytes(clips[i % len(clips)] + b"\x00\x00" * (i + 1))
        os.replace(tmp, folder / name)
        self.dropped.append(name)

    def dropper(self, clips: list[bytes], total: int, mean_gap: float) -> None:
        while len(self.dropped) < total and not self._stop_drops.is_set():
            self.drop(clips)
            self._stop_drops.wait(self.rng.uniform(0.2, 2 * mean_gap))

    # -- the run --------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        a = self.args
        t0 = time.monotonic()
        deadline = t0 + a.max_minutes * 60
        clips = _make_clips(self.base)
        total = a.kills * a.per_kill
        os.environ.update(_prefect_env(self.settings))
        # drops spread over the expected kill phase
        mean_cycle = 8.0 + (a.min_up + a.max_up) / 2
        t = threading.Thread(target=self.dropper,
                             args=(clips, total, max(0.3, mean_cycle / a.per_kill)),
                             daemon=True)
        t.start()
        kills = 0
        try:
            while kills < a.kills and time.monotonic() < deadline:
                self.start()
                # a random moment: some during start-up, most while it works
                up = self.rng.uniform(a.min_up, a.max_up)
                end = time.monotonic() + up
                while time.monotonic() < end and self.proc is not None \
                        and self.proc.poll() is None:
                    time.sleep(0.05)
                if self.ready():
                    self.kills_after_ready += 1
                else:
                    self.kills_before_ready += 1
                self.kill_tree()
                kills += 1
                print(f"kill {kills}/{a.kills} after {up:.1f}s "
                      f"(dropped {len(self.dropped)}/{total})", flush=True)
            self._stop_drops.set()
            t.join(5)
            while len(self.dropped) < total:  # what the time limit left undropped
                self.drop(clips)
            self.start()
            idle = self.wait_idle(a.drain_seconds)
            report = self.report(kills, idle, time.monotonic() - t0)
        finally:
            self._stop_drops.set()
            self.stop()
        return report

    def _rows(self) -> list[Any]:
        from sqlalchemy import select

        from pipeline.core.db.core import DictationRow
        from pipeline.core.store import open_store

        with open_store(self.settings).session() as s:
            return list(s.scalars(select(DictationRow)))

    def _files_left(self) -> int:
        n = 0
        for folder in (self.settings.inbox_dir, self.settings.processing_dir):
            for _root, _dirs, files in os.walk(folder):
                n += sum(1 for f in files if f.startswith("soak-") and f.endswith(".wav"))
        return n

    def wait_idle(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            rows = self._rows()
            names = {r.original_name for r in rows}
            if all(n in names for n in self.dropped) and \
                    all(r.status in FINAL for r in rows) and self._files_left() == 0:
                return True
            time.sleep(2)
        return False

    def _runs_left_running(self) -> int:
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        from pipeline.service import prefect_env

        with prefect_env.client(prefect_env.api_url_for(self.settings)) as c:
            return len(c.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING]))),
                limit=200))

    def report(self, kills: int, idle: bool, elapsed: float) -> dict[str, Any]:
        from sqlalchemy import func, select

        from pipeline.core.db.core import DraftRow
        from pipeline.core.store import open_store
        from pipeline.service.flows import draft_id_for

        rows = self._rows()
        by_name: dict[str, list[Any]] = {}
        for r in rows:
            by_name.setdefault(r.original_name, []).append(r)
        with open_store(self.settings).session() as s:
            drafts = dict(s.execute(select(DraftRow.dictation_id, func.count())
                                    .group_by(DraftRow.dictation_id)).all())
        once = quarantined = stuck = duplicated = lost = 0
        codes: dict[str, int] = {}
        problems: list[dict[str, Any]] = []
        quarantine_names = {p.name for p in self.settings.quarantine_dir.iterdir()}
        for name in self.dropped:
            rs = by_name.get(name, [])
            processed = [r for r in rs if r.status != "duplicate"]
            if not rs:
                on_disk = any(True for _ in self.settings.inbox_dir.rglob(name)) or \
                    name in quarantine_names
                if on_disk:
                    stuck += 1
                    problems.append({"name": name, "problem": "never taken in"})
                else:
                    lost += 1
                    problems.append({"name": name, "problem": "lost"})
                continue
            if len(rs) > 1 or any(drafts.get(r.id, 0) > 1 for r in rs):
                duplicated += 1
                problems.append({"name": name, "problem": "duplicated",
                                 "ids": [r.id for r in rs]})
                continue
            (r,) = processed or rs
            if r.status in ("received", "processing"):
                stuck += 1
                problems.append({"name": name, "problem": "stuck", "id": r.id,
                                 "status": r.status, "flow_run": r.flow_run_id})
            elif r.status == "done":
                if drafts.get(r.id, 0) == 1 and (self.settings.drafts_dir
                                                 / draft_id_for(r.id)).is_dir():
                    once += 1
                else:
                    lost += 1
                    problems.append({"name": name, "problem": "done without its draft",
                                     "id": r.id})
            elif r.status in ("quarantined", "failed"):
                quarantined += 1
                codes[str(r.error_code)] = codes.get(str(r.error_code), 0) + 1
            else:  # a "duplicate" of another drop: each drop is distinct, so a double intake
                duplicated += 1
                problems.append({"name": name, "problem": "duplicate row", "id": r.id})
        left_running = self._runs_left_running()
        return {
            "kills": kills,
            "kills_before_service_running": self.kills_before_ready,
            "kills_while_running": self.kills_after_ready,
            "dropped_in": len(self.dropped),
            "drafted_exactly_once": once,
            "quarantined": quarantined,
            "quarantine_codes": codes,
            "stuck": stuck,
            "duplicated": duplicated,
            "lost": lost,
            "flow_runs_left_pending_or_running": left_running,
            "idle_reached": idle,
            "elapsed_s": round(elapsed, 1),
            "workers": self.args.workers,
            "seed": self.args.seed,
            "data_dir": str(self.base),
            "problems": problems[:20],
        }


def _prefect_env(settings: Any) -> dict[str, str]:
    from pipeline.service import prefect_env

    return prefect_env.prefect_env(settings, f"http://127.0.0.1:{settings.prefect_port}/api")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kills", type=int, default=10, help="SIGKILLs of the service tree")
    p.add_argument("--per-kill", type=int, default=2, help="dictations dropped per kill")
    p.add_argument("--min-up", type=float, default=2.0,
                   help="shortest time between a start and its kill (s)")
    p.add_argument("--max-up", type=float, default=25.0,
                   help="longest time between a start and its kill (s)")
    p.add_argument("--workers", type=int, default=1, help="transcription slots")
    p.add_argument("--sweep-seconds", type=float, default=5.0,
                   help="the service's recovery sweep interval")
    p.add_argument("--grace-seconds", type=float, default=20.0,
                   help="the service's recovery grace period")
    p.add_argument("--seed", type=int, default=18)
    p.add_argument("--max-minutes", type=float, default=30.0,
                   help="the kill phase stops after this long")
    p.add_argument("--drain-seconds", type=float, default=600.0,
                   help="the last start waits at most this long for all to finish")
    p.add_argument("--data-dir", type=Path, help="work here (default: a new temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the temp folder")
    p.add_argument("--json", type=Path, help="also write the report here")
    args = p.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is needed for the synthetic dictations", file=sys.stderr)
        return 2
    soak = Soak(args)
    report = soak.run()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    if not args.keep and args.data_dir is None:
        shutil.rmtree(soak.base, ignore_errors=True)
    bad = report["stuck"] or report["duplicated"] or report["lost"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
