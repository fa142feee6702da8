"""Scale-out on Prefect: PostgreSQL (Prefect's database and ours) on loopback, one Prefect
server, and two service instances (each a watcher + a warm worker) sharing one data
directory. A batch of dictations is processed exactly once: each file claimed by one
instance, one dictation row, one flow run, one draft.

Encryption at rest is on (the default): both instances get the data key through their
environment (``DICTATION_KEY_FILE``, a secret file outside the shared folder, set by the tests'
conftest and passed on by ``prefect_env.child_env``), and the archived audio, the sidecars and
every file of the drafts are asserted to be encrypted.

Needs PostgreSQL 15 server binaries (Debian: ``apt-get install -y postgresql``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pgserver import free_port, postgres_server
from sqlalchemy import func, select

from pipeline.core import crypto, files
from pipeline.core.db.core import DictationRow, DraftRow
from pipeline.core.settings import PROJECT_ROOT, Settings
from pipeline.core.store import open_store
from pipeline.service import prefect_env

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL on 127.0.0.1 with databases ``prefect`` and ``dictation``."""
    with postgres_server(["prefect", "dictation"]) as address:
        yield address


def _wait(pred, timeout: float, every: float = 1.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return False


def test_two_instances_share_one_prefect_server_exactly_once(
    postgres: str, tmp_path: Path
) -> None:
    """One Prefect server on PostgreSQL, two `dictation run` instances (watcher + warm worker
    each) on one data directory and one PostgreSQL database: every file exactly once."""
    n = int(os.environ.get("DICTATION_TEST_SCALEOUT", "8"))
    settings = Settings(
        data_dir=tmp_path / "shared", model="tiny.en", device="cpu", compute_type="int8",
        physicians=["dr-smith", "dr-patel"], pdf="never", stable_seconds=0.3,
        sidecar_grace_seconds=0.3, poll_interval_seconds=0.2, workers=1,
        prefect_port=free_port(),
        database_url=f"postgresql+psycopg2://postgres@{postgres}/dictation",
    )
    assert settings.encrypt_files and not settings.data_key
    key_file = settings.key_file.expanduser().resolve()
    assert settings.data_path not in key_file.parents  # a secret file, not the shared folder
    crypto.load_keyring(settings)  # provisioned before the instances start (no race)
    pg_prefect = f"postgresql+asyncpg://postgres@{postgres}/prefect"
    server = prefect_env.start_server(
        settings, extra_env={"PREFECT_API_DATABASE_CONNECTION_URL": pg_prefect})
    api = f"http://127.0.0.1:{settings.prefect_port}/api"
    instances: list[subprocess.Popen[bytes]] = []
    try:
        prefect_env.wait_healthy(api, proc=server)
        # no pool-wide cap: each worker transcribes one at a time and keeps one claimed next
        prefect_env.ensure_deployments(api, settings)
        speech = tmp_path / "speech.wav"
        subprocess.run(["espeak-ng", "-w", str(speech), "Follow up in two weeks."], check=True)
        names = []
        for i in range(n):
            folder = settings.inbox_dir / ("dr-smith" if i % 2 else "dr-patel")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"batch{i:02d}.wav").write_bytes(
                speech.read_bytes() + b"\x00\x00" * (i + 1))
            names.append(f"batch{i:02d}.wav")
        env = prefect_env.child_env(settings, api)
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = pg_prefect
        assert Path(env["DICTATION_KEY_FILE"]).resolve() == key_file
        for k in range(2):
            log = open(tmp_path / f"instance{k}.log", "wb")  # noqa: SIM115
            instances.append(subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli", "run", "--no-web", "--no-live", "--once",
                 "--idle-seconds", "5"],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT,
                start_new_session=True,
            ))
            log.close()
        for proc in instances:
            proc.wait(timeout=300)
        logs = "\n".join((tmp_path / f"instance{k}.log").read_text() for k in range(2))
        assert [p.returncode for p in instances] == [0, 0], logs[-4000:]

        with open_store(settings).session() as s:
            rows = list(s.scalars(select(DictationRow)))
            drafts = s.scalar(select(func.count()).select_from(DraftRow))
            outputs = [Path(p) for d in s.scalars(select(DraftRow))
                       for p in (d.outputs or {}).values()]
        assert sorted(r.original_name for r in rows) == sorted(names), logs[-3000:]
        assert {r.status for r in rows} == {"done"}, [(r.status, r.error_code) for r in rows]
        assert drafts == n
        # sealed at rest by both instances, and readable with the one provisioned key
        audio = [Path(r.audio_path or "") for r in rows]
        assert all(settings.archive_dir in a.parents and files.is_encrypted(a) for a in audio)
        assert all(files.is_encrypted(a.with_suffix(".json")) for a in audio
                   if a.with_suffix(".json").exists())
        assert len(outputs) >= 4 * n and all(files.is_encrypted(p) for p in outputs)
        assert files.read_bytes(audio[0], settings)[:4] == b"RIFF"
        assert b"Dictated by Dr." in files.read_bytes(
            next(p for p in outputs if p.suffix == ".txt"), settings)
        # one flow run per dictation, all completed; both workers took part
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

        with prefect_env.client(api) as c:
            runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=["routine"])), limit=200)
        by_dictation: dict[str, list[str]] = {}
        for run in runs:
            by_dictation.setdefault(run.parameters["dictation_id"], []).append(
                run.state_type.value)
        assert sorted(by_dictation) == sorted(r.id for r in rows)
        assert all(states == ["COMPLETED"] for states in by_dictation.values()), by_dictation
        claimers = {run.infrastructure_pid for run in runs}
        assert len(claimers) == 2, claimers  # the work was shared by the two workers
        left = [f for p in ("dr-smith", "dr-patel") for f in (settings.inbox_dir / p).iterdir()]
        assert left == []
    finally:
        for proc in instances:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        prefect_env.stop_process_group(server)
