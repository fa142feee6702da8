"""The Prefect layer against a real local Prefect server (one per module, ~10 s to start):
the process-dictation flow with the real tiny.en model, only opaque ids in Prefect, bad audio
quarantined by the validate task, an unwritable output folder reported, and the warm worker
taking STAT runs first."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from pipeline.core.db.core import DictationRow, DraftRow
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.ingest import inbox
from pipeline.service import prefect_env

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect server (SQLite, telemetry off) for this module; this process talks to it."""
    home = Settings(data_dir=tmp_path_factory.mktemp("prefect-var"), prefect_port=_free_port())
    proc = prefect_env.start_server(home)
    api = f"http://127.0.0.1:{home.prefect_port}/api"
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        prefect_env.wait_healthy(api, proc=proc)
        with temporary_settings(updates={PREFECT_API_URL: api}):
            yield api
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)  # send buffered run logs before the server stops
    finally:
        prefect_env.stop_process_group(proc)


@pytest.fixture
def flow_settings(settings: Settings, prefect_api: str) -> Iterator[Settings]:
    """Test settings used by flows run in this process."""
    from pipeline.service import flows

    inbox.ensure_layout(settings)
    flows.use_settings(settings)
    yield settings
    flows.use_settings(None)



def _take(settings: Settings, src: Path, name: str, physician: str = "dr-smith") -> str:
    path = Path(shutil.copy(src, settings.inbox_dir / physician / name))
    result = inbox.InboxScanner(settings).take(path)
    assert result.outcome == "received", result
    assert result.dictation_id
    return result.dictation_id


def _row(settings: Settings, did: str) -> DictationRow:
    with open_store(settings).session() as s:
        row = s.get(DictationRow, did)
        assert row is not None
        return row


def test_process_dictation_flow_end_to_end(flow_settings: Settings, speech: Path,
                                           prefect_api: str) -> None:
    """Real audio through the real flow: draft queued, audio archived, Prefect holds ids only."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    from pipeline.service.flows import process_dictation

    pytest.importorskip("pipeline.documents.render", reason="the documents area's render module")
    did = _take(flow_settings, speech, "20261120_MRN4242_consult_note.wav")
    state = process_dictation(did, return_state=True)
    assert state.is_completed(), state
    row = _row(flow_settings, did)
    assert row.status == "done"
    # stored under an opaque name; the recorder's name only in the row
    assert row.audio_path == str(flow_settings.archive_dir / did / f"{did}.wav")
    assert row.original_name == "20261120_MRN4242_consult_note.wav"
    assert Path(row.audio_path).exists()
    assert not (flow_settings.processing_dir / did).exists()
    with open_store(flow_settings).session() as s:
        drafts = list(s.scalars(select(DraftRow).where(DraftRow.dictation_id == did)))
    assert len(drafts) == 1 and drafts[0].status == "queued_for_review"
    assert "chest pain" in drafts[0].raw_text.lower()  # the real model heard the words
    assert drafts[0].mrn == "MRN4242"  # the filename convention, read from the sealed claim
    # Prefect stored only the opaque id: parameters, run name, logs.
    with prefect_env.client(prefect_api) as c:
        (run,) = c.read_flow_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
        assert run.parameters == {"dictation_id": did}
        logs = c.read_logs(log_filter=LogFilter(
            flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    blob = " ".join(log.message for log in logs) + run.name
    for secret in ("MRN4242", "chest", "consult_note.wav"):
        assert secret not in blob


def test_non_audio_is_quarantined_by_validate(flow_settings: Settings, tmp_path: Path) -> None:
    """A text file named .wav: the flow completes, the file is quarantined with the reason."""
    from pipeline.service.flows import process_dictation

    fake = tmp_path / "fake.wav"
    fake.write_bytes(b"this is a text file, not a recording\n" * 50)
    did = _take(flow_settings, fake, "fake.wav")
    assert process_dictation(did) == "quarantined"
    row = _row(flow_settings, did)
    assert row.status == "quarantined" and row.error_code == "audio_decode_error"
    reason = (flow_settings.quarantine_dir / f"{did}.wav.reason.txt").read_text()
    assert "text file" in reason and "expected an audio recording" in reason
    assert (flow_settings.quarantine_dir / f"{did}.wav").exists()


def test_unwritable_output_folder_is_reported_and_file_kept(
    flow_settings: Settings, speech: Path
) -> None:
    """Drafts cannot be written: the run fails with a clear reason, the audio is kept in
    quarantine (retryable), and the next dictation works once the folder is fixed."""
    from pipeline.service.flows import process_dictation

    pytest.importorskip("pipeline.documents.render", reason="the documents area's render module")
    drafts = flow_settings.drafts_dir
    shutil.rmtree(drafts, ignore_errors=True)
    drafts.write_text("not a folder")  # root ignores permission bits: use a file instead
    did = _take(flow_settings, speech, "blocked.wav")
    state = process_dictation(did, return_state=True)
    assert state.is_failed()
    row = _row(flow_settings, did)
    assert row.status == "failed"
    reason = (flow_settings.quarantine_dir / f"{did}.wav.reason.txt").read_text()
    assert "move this file back into the inbox" in reason
    assert (flow_settings.quarantine_dir / f"{did}.wav").exists()
    drafts.unlink()
    # moved back after the fix (under its stored name): processed as a retry, not refused
    # as a duplicate, under the recorder's name again
    again = Path(shutil.move(flow_settings.quarantine_dir / f"{did}.wav",
                             flow_settings.inbox_dir / "dr-smith" / f"{did}.wav"))
    result = inbox.InboxScanner(flow_settings).take(again)
    assert result.outcome == "received" and result.dictation_id
    assert _row(flow_settings, result.dictation_id).original_name == "blocked.wav"
    assert process_dictation(result.dictation_id) == "done"


def test_warm_worker_runs_deployment_stat_first(flow_settings: Settings, speech: Path,
                                                prefect_api: str, tmp_path: Path) -> None:
    """Runs queued before the worker starts: with one slot, the STAT one is transcribed
    first; all complete once through the deployment and the warm worker process."""
    pytest.importorskip("pipeline.documents.render", reason="the documents area's render module")
    ids = prefect_env.ensure_deployments(prefect_api, flow_settings)
    dep = ids[prefect_env.PROCESS_DEPLOYMENT]
    order = []
    for i, prio in enumerate(["routine", "routine", "stat"]):
        # distinct bytes per file (different SHA-256): append i+1 zero samples
        src = tmp_path / f"d{i}.wav"
        src.write_bytes(speech.read_bytes() + b"\x00\x00" * (i + 1))
        did = _take(flow_settings, src, f"d{i}.wav")
        run_id = prefect_env.submit_dictation(prefect_api, dep, did, prio)
        order.append((did, prio, run_id))
    env = prefect_env.child_env(flow_settings, prefect_api)
    worker = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "worker", "--limit", "1",
         "--exit-when-idle", "2"],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-3000:]
    with prefect_env.client(prefect_api) as c:
        ends = {did: c.read_flow_run(run_id).end_time for did, _, run_id in order}
        states = {did: c.read_flow_run(run_id).state_type.value for did, _, run_id in order}
    assert set(states.values()) == {"COMPLETED"}, states
    stat_id = order[2][0]
    # one transcription slot: the STAT one is transcribed, and so finished, first (the worker
    # claims a routine run beside it, which waits for the slot)
    assert min(ends, key=lambda d: ends[d]) == stat_id, ends
    assert [_row(flow_settings, did).status for did, _, _ in order] == ["done"] * 3
    assert "3 runs" in worker.stdout


def test_nightly_evaluation_flow_on_one_sample(flow_settings: Settings, prefect_api: str) -> None:
    """The nightly flow runs pipeline.devtools.evaluate on a sample set and returns figures only."""
    pytest.importorskip("pipeline.devtools.evaluate", reason="the samples area's evaluate module")
    from pipeline.devtools.nightly import nightly_evaluation

    if not (flow_settings.samples_dir / "synthetic_medical" / "manifest.csv").exists():
        pytest.skip("samples/synthetic_medical/manifest.csv not present")
    summary = nightly_evaluation(sets=["synthetic_medical"], limit=1)
    figures = summary["synthetic_medical"]
    assert figures["files"] >= 1 and figures["failed"] == 0
    assert Path(figures["results"]).is_dir()
