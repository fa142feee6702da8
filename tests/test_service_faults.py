"""The service under kills (issue #18, items 1, 6, 9, 10), with a real ``dictation run``, a
real Prefect server and the real warm worker: a kill -9 between the two steps of a claim is
recovered at the next start, a flow run left RUNNING after its dictation was done is ended
by the recovery sweep, ``dictation status`` with the service dead exits non-zero and says
so, and SIGINT stops a ``dictation run`` started in the background (SIGINT ignored)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import func, select

from pipeline.core.db.core import DictationRow, DraftRow
from pipeline.core.settings import PROJECT_ROOT, Settings
from pipeline.core.store import open_store
from pipeline.ingest import inbox
from pipeline.service import prefect_env

pytestmark = pytest.mark.slow

FINAL = ("done", "quarantined", "failed", "duplicate")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(pred: Callable[[], Any], timeout: float, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    return None


def _settings(data: Path, **extra: Any) -> Settings:
    return Settings(
        data_dir=data, model="tiny.en", device="cpu", compute_type="int8",
        physicians=["dr-smith"], pdf="never", stable_seconds=0.3,
        sidecar_grace_seconds=0.3, poll_interval_seconds=0.2, workers=1,
        prefect_port=_free_port(), web_port=_free_port(), **extra,
    )


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


class Service:
    """A ``dictation run --no-web --no-live`` process tree on one data directory."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings = settings
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, sigint_ignored: bool = False) -> None:
        env = prefect_env.child_env(self.settings)
        env.pop("PREFECT_API_URL", None)  # the service starts its own server

        def preexec() -> None:  # what a shell does to `dictation run &` in a script
            if sigint_ignored:
                signal.signal(signal.SIGINT, signal.SIG_IGN)

        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "run", "--no-web", "--no-live"],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                start_new_session=True, preexec_fn=preexec,
            )
        mark = self.output().count("Service running")
        proc = self.proc
        ok = _wait(lambda: self.output().count("Service running") > mark
                   or proc.poll() is not None, 120)
        assert ok and proc.poll() is None, self.output()[-4000:]

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tree(self) -> list[psutil.Process]:
        assert self.proc is not None
        return psutil.Process(self.proc.pid).children(recursive=True)

    def worker(self) -> psutil.Process:
        (worker,) = [p for p in self.tree() if "worker" in " ".join(p.cmdline())]
        return worker

    def kill_tree(self) -> None:
        """kill -9 of every process of the service (children first: no graceful exit)."""
        assert self.proc is not None
        procs = self.tree()
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.kill()
        self.proc.wait(10)
        psutil.wait_procs(procs, timeout=10)

    def drop(self, src: Path, name: str) -> None:
        folder = self.settings.inbox_dir / "dr-smith"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, folder / f"{name}.part")
        os.replace(folder / f"{name}.part", folder / name)

    def rows(self, name: str) -> list[DictationRow]:
        with open_store(self.settings).session() as s:
            return list(s.scalars(select(DictationRow).where(DictationRow.original_name == name)))

    def final(self, name: str, timeout: float = 150) -> DictationRow:
        found = _wait(lambda: [r for r in self.rows(name) if r.status in FINAL], timeout)
        left = [(r.status, r.flow_run_id) for r in self.rows(name)]
        assert found, f"{name} not finished: {left}\n{self.output()[-3000:]}"
        return found[0]

    def status(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "status", *args],
            env=prefect_env.child_env(self.settings), capture_output=True, text=True,
            timeout=120,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill_tree()


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "Follow up in two weeks."], check=True)
    return path


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service for the kill tests; sweeps every 2 s, grace 3 s."""
    data = tmp_path_factory.mktemp("faults") / "var"
    svc = Service(_settings(data, recovery_sweep_seconds=2.0, recovery_grace_seconds=3.0),
                  data.parent / "service.log")
    try:
        svc.start()
        yield svc
    finally:
        svc.stop()


def _unique(src: Path, tmp: Path, name: str, n: int) -> Path:
    out = tmp / name
    out.write_bytes(src.read_bytes() + b"\x00\x00" * n)  # a distinct SHA-256
    return out


def _one_draft(settings: Settings, did: str) -> None:
    with open_store(settings).session() as s:
        assert s.scalar(select(func.count()).select_from(DraftRow)
                        .where(DraftRow.dictation_id == did)) == 1


def test_kill_between_the_two_claim_steps_is_recovered(
    service: Service, speech: Path, tmp_path: Path
) -> None:
    """The worker stopped, its run set Pending as the first claim step does (no pid
    recorded yet), kill -9 of the whole tree, restart: the dictation is processed once
    (before the fix it stayed `received` for ever), and the real claim now names its
    claimant in the Pending state."""
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.responses import SetStateStatus
    from prefect.states import Pending

    worker = service.worker()
    worker.suspend()  # SIGSTOP: it claims nothing until killed
    service.drop(_unique(speech, tmp_path, "stopped.wav", 11), "stopped.wav")
    row = _wait(lambda: [r for r in service.rows("stopped.wav") if r.flow_run_id], 60)
    assert row, service.output()[-3000:]
    did, run_id = row[0].id, row[0].flow_run_id
    api = prefect_env.api_url_for(service.settings)
    with prefect_env.client(api) as c:
        assert c.set_flow_run_state(run_id, Pending()).status == SetStateStatus.ACCEPT
    service.kill_tree()
    service.start()
    done = service.final("stopped.wav")
    assert done.id == did and done.status == "done", (done.error_code, done.error_message)
    _one_draft(service.settings, did)
    assert done.flow_run_id != run_id
    with prefect_env.client(api) as c:
        assert c.read_flow_run(run_id).state_type == StateType.CRASHED  # the abandoned claim
        states = c.read_flow_run_states(done.flow_run_id)
    claims = [s.message for s in states if s.type == StateType.PENDING]
    pid = service.worker().pid
    assert claims == [f"claimed by {socket.gethostname()}:{pid}"], claims


def test_running_run_of_a_done_dictation_is_ended_by_the_sweep(
    service: Service, speech: Path, tmp_path: Path
) -> None:
    """A flow run left RUNNING by a killed worker although its dictation is done (the
    worker died after storing the draft): the periodic sweep ends it as Completed, with
    ids only in the message, and processes nothing again."""
    from prefect.client.schemas.objects import StateType
    from prefect.states import Running

    service.drop(_unique(speech, tmp_path, "ran.wav", 12), "ran.wav")
    done = service.final("ran.wav")
    assert done.status == "done"
    api = prefect_env.api_url_for(service.settings)
    with prefect_env.client(api) as c:
        c.set_flow_run_state(done.flow_run_id, Running(), force=True)
        c.update_flow_run(done.flow_run_id,
                          infrastructure_pid=f"{socket.gethostname()}:{_dead_pid()}")

        def ended() -> Any:
            run = c.read_flow_run(done.flow_run_id)
            return run if run.state_type != StateType.RUNNING else None

        run = _wait(ended, 30, every=0.5)
    assert run is not None, "the run stayed RUNNING"
    assert run.state_type == StateType.COMPLETED
    assert done.id in (run.state.message or "") and "ran.wav" not in (run.state.message or "")
    _one_draft(service.settings, done.id)
    (again,) = service.rows("ran.wav")
    assert again.flow_run_id == done.flow_run_id  # not submitted again
    # the service is up and nothing waits: status says so and exits 0
    result = service.status("--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0, report["attention"]
    assert report["service"]["running"] is True and report["service"]["prefect"] is True
    assert report["in_progress"] == 0 and report["interrupted"] == 0


def test_status_with_the_service_dead_exits_non_zero(settings: Settings, speech: Path,
                                                      tmp_path: Path) -> None:
    """A service killed with -9 (its service file left behind, its process gone), one
    dictation taken in and one file waiting: `dictation status` says the service is not
    running, shows the ages, and exits 2; `--json` carries the same. Ids only."""
    inbox.ensure_layout(settings)
    folder = settings.inbox_dir / settings.physicians[0]
    name = "20261120_A12345_operative_report.wav"
    shutil.copyfile(_unique(speech, tmp_path, "a.wav", 1), folder / name)
    assert inbox.InboxScanner(settings).take(folder / name).outcome == "received"
    shutil.copyfile(_unique(speech, tmp_path, "b.wav", 2), folder / "20261120_B777_letter.wav")
    (folder / "sub").mkdir()
    shutil.copyfile(_unique(speech, tmp_path, "c.wav", 3), folder / "sub" / "c.wav")
    (settings.data_path / "service.json").write_text(json.dumps({
        "pid": _dead_pid(), "host": socket.gethostname(), "started": time.time() - 60,
        "api_url": f"http://127.0.0.1:{_free_port()}/api", "worker_pids": [], "workers": 1}))
    env = prefect_env.child_env(settings)
    text = subprocess.run([sys.executable, "-m", "pipeline.cli", "status"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert text.returncode == 2, text.stdout + text.stderr
    assert "NOT RUNNING" in text.stdout and "service_down" in text.stdout
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "status", "--json"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    report = json.loads(out.stdout)
    assert report["service"]["running"] is False
    assert {a["code"] for a in report["attention"]} >= {"service_down", "held"}
    assert report["interrupted"] == 1 and report["in_progress"] == 0
    assert report["ages"]["oldest_in_inbox_s"] is not None
    assert report["held"]["subfolder_files"] == 1
    for leak in ("A12345", "B777", "operative"):
        assert leak not in text.stdout and leak not in out.stdout


def test_sigint_stops_a_background_run(tmp_path: Path) -> None:
    """`dictation run &` from a script starts with SIGINT ignored: `kill -INT` still stops
    it, every child with it, within the normal shutdown time."""
    data = tmp_path / "var"
    svc = Service(_settings(data), tmp_path / "bg.log")
    svc.start(sigint_ignored=True)
    assert svc.proc is not None
    try:
        children = svc.tree()
        assert len(children) >= 2
        had_service_file = (data / "service.json").exists()
        svc.proc.send_signal(signal.SIGINT)
        try:
            code = svc.proc.wait(90)
        except subprocess.TimeoutExpired:
            pytest.fail("SIGINT did not stop the background `dictation run` within 90 s")
        assert code == 130, svc.output()[-3000:]
        _gone, alive = psutil.wait_procs(children, timeout=10)
        assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert "Stopped." in svc.output()
        # the service file named the running service; a clean stop removes it
        assert had_service_file and not (data / "service.json").exists()
    finally:
        svc.stop()
