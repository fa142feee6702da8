"""``dictation transcribe`` end to end: the JSON contract, bad files, exit status, offline.

Runs the real console script in a subprocess (real tiny.en, real SQLite, real drafts).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.core import files as stored
from pipeline.core.settings import PROJECT_ROOT, Settings

sys.path.insert(0, str(Path(__file__).parent / "data" / "speech"))
import speechgen as gen

DICTATION = shutil.which("dictation", path=str(Path(sys.executable).parent)) or "dictation"
CONTRACT_KEYS = {"id", "audio", "duration_s", "model", "raw_text", "text", "segments", "flags",
                 "draft_path"}


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("DICTATION_") or k.endswith("KEY_FILE")}  # keys: conftest
    env.update(
        DICTATION_DATA_DIR=str(data_dir),
        DICTATION_MODEL="tiny.en",
        DICTATION_DEVICE="cpu",
        DICTATION_COMPUTE_TYPE="int8",
        DICTATION_PDF="never",
        DICTATION_PHYSICIANS='["dr-smith", "dr-patel"]',
    )
    env.update(extra)
    return env


def _run(args: list[str], data_dir: Path, cwd: Path, timeout: int = 240,
         prefix: list[str] | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), DICTATION, *args], cwd=cwd, env=_env(data_dir, **env),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inbox") / "Dr. Müller inbox"
    d.mkdir()
    good = gen.speak(d / "op note 01 – Zoë.wav")
    empty = d / "empty.wav"
    empty.write_bytes(b"")
    text = d / "typed.wav"
    text.write_text("This is a typed note, not audio.\n")
    return {
        "good": good,
        "empty": empty,
        "text": text,
        "silence": gen.silence(d / "silence.wav", 20),
        "truncated": gen.truncate_wav(good, d / "cut.wav", 0.6),
    }


def _lines(stdout: str) -> list[dict]:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    return [json.loads(ln) for ln in lines]


@pytest.mark.slow
def test_json_contract_one_object_per_file_and_errors(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """Good, empty, text, silent and truncated files in one call: one JSON object each,
    errors as {id, audio, error}, exit 1, and every input byte-for-byte unchanged."""
    order = ["good", "empty", "text", "silence", "truncated"]
    before = {k: gen.sha256(files[k]) for k in order}
    proc = _run(["transcribe", "--json", *[str(files[k]) for k in order]], tmp_path / "var",
                cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    objs = _lines(proc.stdout)  # nothing but JSON on stdout
    assert len(objs) == len(order), proc.stdout
    by = dict(zip(order, objs, strict=True))
    for k in order:
        assert by[k]["audio"] == str(files[k])
        assert re.fullmatch(r"[0-9a-f]{32}", by[k]["id"])

    good = by["good"]
    assert set(good) >= CONTRACT_KEYS, set(good)
    assert good["model"] == "tiny.en"
    assert "anesthesia" in good["raw_text"].lower()
    assert good["text"]
    assert good["flags"] == [] or "no_speech" not in good["flags"]
    assert good["duration_s"] > 5
    seg = good["segments"][0]
    assert {"start", "end", "text", "words"} <= set(seg)
    assert {"word", "start", "end", "probability"} <= set(seg["words"][0])
    assert Path(good["draft_path"]).is_file()
    assert good["pdf_path"] is None  # DICTATION_PDF=never
    assert good["queued_s"] >= good["timings"]["transcribe"]

    for k, needle in (("empty", "0 bytes"), ("text", "looks like a text file")):
        assert set(by[k]) >= {"id", "audio", "error"}
        assert "raw_text" not in by[k]
        assert needle in by[k]["error"]

    assert by["silence"]["raw_text"] == "" and "no_speech" in by["silence"]["flags"]
    assert "truncated" in by["truncated"]["flags"]

    after = {k: gen.sha256(files[k]) for k in order}
    assert after == before
    assert all(files[k].exists() for k in order)


@pytest.mark.slow
def test_summary_lines_and_malformed_sidecar(files: dict[str, Path], tmp_path: Path) -> None:
    """Without --json: one summary line per good file; a bad sidecar fails only its file."""
    d = tmp_path / "in"
    d.mkdir()
    a = shutil.copy(files["good"], d / "a.wav")
    b = shutil.copy(files["good"], d / "b.wav")
    (d / "b.json").write_text('{"patient_name": "X", "unknown_field": 1}')
    proc = _run(["transcribe", "--no-store", str(a), str(b)], tmp_path / "var", cwd=tmp_path)
    assert proc.returncode == 1
    assert "a.wav" in proc.stdout and "draft" in proc.stdout
    assert "b.wav" in proc.stderr and "unknown_field" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("soffice") is None, reason="LibreOffice is not installed")
def test_pdf_is_made_after_the_draft_and_reported(files: dict[str, Path], tmp_path: Path) -> None:
    """DICTATION_PDF=auto with LibreOffice: the draft is queued, then its PDF is made and
    reported beside the draft (``pdf_path``; its own time in ``timings``), sealed like every
    file under the data directory (read back through the storage layer)."""
    proc = _run(["transcribe", "--json", str(files["good"])], tmp_path / "var", cwd=tmp_path,
                DICTATION_PDF="auto")
    assert proc.returncode == 0, proc.stderr
    (obj,) = _lines(proc.stdout)
    pdf = Path(obj["pdf_path"])
    assert stored.is_encrypted(pdf)
    plain = stored.read_bytes(pdf, Settings(data_dir=tmp_path / "var"))
    assert plain[:5] == b"%PDF-" and pdf.parent == Path(obj["draft_path"]).parent
    assert list(obj["timings"])[-2:] == ["enqueue", "pdf"]


@pytest.mark.slow
def test_missing_model_path_is_one_line_error(files: dict[str, Path], tmp_path: Path) -> None:
    proc = _run(["transcribe", "--json", "--model", str(tmp_path / "nope"), str(files["good"])],
                tmp_path / "var", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    objs = _lines(proc.stdout)
    assert len(objs) == 1, proc.stderr
    obj = objs[0]
    assert str(tmp_path / "nope") in obj["error"] and "does not exist" in obj["error"]


_GUARD = textwrap.dedent("""
    import os, socket
    _LOG = os.environ["NET_GUARD_LOG"]
    def _deny(what):
        with open(_LOG, "a") as fh:
            fh.write(repr(what) + "\\n")
        raise OSError("network use blocked by the test")
    _connect = socket.socket.connect
    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            _deny(("connect", address))
        return _connect(self, address)
    socket.socket.connect = connect
    socket.socket.connect_ex = connect
    socket.getaddrinfo = lambda *a, **k: _deny(("getaddrinfo", a[:2]))
""")


@pytest.mark.slow
def test_transcribes_with_networking_unavailable(files: dict[str, Path], tmp_path: Path) -> None:
    """No network namespace (unshare -n) where permitted, a socket guard in every case, and
    strace where available: transcription succeeds, and nothing tries to connect, including
    onnxruntime's telemetry ~9 s after import (the process stays alive 12 s to catch it)."""
    guard_dir = tmp_path / "guard"
    guard_dir.mkdir()
    (guard_dir / "sitecustomize.py").write_text(_GUARD)
    log = tmp_path / "net.log"
    prefix: list[str] = []
    if shutil.which("unshare") and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True
    ).returncode == 0:
        prefix += ["unshare", "-n"]
    trace = tmp_path / "strace.log"
    strace = ["strace", "--seccomp-bpf", "-f", "-qq", "-e", "trace=connect,sendto"]
    if shutil.which("strace") and subprocess.run(
        [*strace, "-o", os.devnull, "true"], capture_output=True
    ).returncode == 0:
        prefix += [*strace, "-o", str(trace)]
    script = (
        "import sys, time; from pipeline.cli import main; "
        f"rc = main(['transcribe', '--json', {str(files['good'])!r}]); "
        "time.sleep(12); sys.exit(rc)"
    )
    env = _env(tmp_path / "var", NET_GUARD_LOG=str(log),
               PYTHONPATH=os.pathsep.join([str(guard_dir), str(PROJECT_ROOT)]))
    proc = subprocess.run([*prefix, sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (obj,) = _lines(proc.stdout)
    assert "anesthesia" in obj["raw_text"].lower()
    assert not log.exists(), log.read_text()
    if trace.exists():
        inet = [ln for ln in trace.read_text().splitlines() if "AF_INET" in ln]
        assert inet == [], inet
