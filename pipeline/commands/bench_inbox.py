"""``dictation bench-inbox``: the inbox service measured against the raw speech model.

In one run, on this machine:

1. cuts dictations from ``samples/synthetic_medical`` with ffmpeg (a 30 s one for latency;
   ``--count`` of 20-60 s for throughput), and times the raw transcription stage of each in
   this process (model warm);
2. starts ``dictation run`` (its own Prefect server, warm worker, watcher) on a scratch data
   directory and warms it up with one file;
3. latency: drops the 30 s dictation ``--latency-runs`` times, one after another, and times
   drop -> draft in the review queue; p50 against raw transcription time + 3 s;
4. throughput: drops all ``--count`` files at once; time until the last draft against the sum of
   their raw transcription times (target <= 1.2x);
5. idle: CPU of the whole service (all processes) over ``--idle-seconds`` (target < 2% of a
   core) and the worker's memory before and after the batch.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``bench-inbox`` sub-command."""
    p = subparsers.add_parser("bench-inbox", help="measure the inbox service (latency, overhead)")
    p.add_argument("--count", type=int, default=50, help="dictations in the batch (default 50)")
    p.add_argument("--latency-runs", type=int, default=5, help="30 s drops timed (default 5)")
    p.add_argument("--idle-seconds", type=float, default=30.0, help="idle CPU window (30)")
    p.add_argument("--model", help="speech model (default: settings)")
    p.add_argument("--workers", type=int, default=None, help="settings.workers for the service")
    p.add_argument("--pdf", action="store_true", help="also render PDFs (LibreOffice)")
    p.add_argument("--keep", action="store_true", help="keep the scratch data directory")
    p.set_defaults(func=run)


def _sources(settings: Any) -> list[Path]:
    folder = settings.samples_dir / "synthetic_medical"
    files = [p for p in sorted(folder.glob("*")) if p.suffix.lower() in (".ogg", ".flac", ".wav",
                                                                        ".mp3", ".m4a")]
    if not files:
        from pipeline.errors import ConfigError

        raise ConfigError(f"No sample audio in {folder}; expected the synthetic_medical set.")
    return files


def _cut(src: Path, start: float, dur: float, out: Path) -> Path:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-ss", f"{start:.2f}", "-t", f"{dur:.2f}", "-i", str(src),
         "-ac", "1", "-ar", "16000", str(out)],
        check=True,
    )
    return out


def _tree(pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _role(proc: Any) -> str:
    try:
        cmd = " ".join(proc.cmdline())
    except Exception:
        return "?"
    for key, name in (("server", "prefect-server"), ("worker", "worker"), (" run", "supervisor")):
        if key in cmd:
            return name
    return "other"


def _cpu(procs: list[Any]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except Exception:
            continue
    return total


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the figures side by side."""
    import psutil
    from sqlalchemy import select

    from pipeline import prefect_env
    from pipeline.db.core import DictationRow
    from pipeline.process import load_dictation, transcribe_stage
    from pipeline.settings import Settings, get_settings
    from pipeline.store import open_store

    base = get_settings()
    scratch = Path(tempfile.mkdtemp(prefix="bench-inbox-"))
    overrides: dict[str, Any] = {
        "data_dir": scratch / "var",
        "physicians": ["dr-bench"],
        "pdf": "auto" if args.pdf else "never",
        "stable_seconds": min(base.stable_seconds, 1.0),
        "sidecar_grace_seconds": min(base.sidecar_grace_seconds, 1.0),
        "prefect_port": base.prefect_port + 7,
        "web_port": base.web_port + 7,
    }
    if args.model:
        overrides["model"] = args.model
    if args.workers:
        overrides["workers"] = args.workers
    settings = Settings(**{**base.model_dump(), **overrides})
    sources = _sources(settings)
    clips = scratch / "clips"
    clips.mkdir(parents=True)
    print(f"model {settings.model}, workers {settings.workers}, pdf {settings.pdf}, "
          f"stable_seconds {settings.stable_seconds}, cores {os.cpu_count()}", flush=True)

    # 1. clips and raw transcription times (warm model, this process)
    latency_clips = [_cut(sources[i % len(sources)], 5.0 + 3 * i, 30.0,
                          clips / f"latency{i}.wav") for i in range(args.latency_runs + 1)]
    batch = []
    for i in range(args.count):
        dur = 20.0 + (i * 37 % 41)  # 20..60 s, spread
        src = sources[i % len(sources)]
        batch.append(_cut(src, (i // len(sources)) * 4.0, dur, clips / f"batch{i:03d}.wav"))
    raw: dict[Path, float] = {}
    durations: dict[Path, float] = {}
    transcribe_stage(load_dictation(latency_clips[0], settings), settings)  # warm-up
    for clip in [*latency_clips[1:], *batch]:
        d = load_dictation(clip, settings)
        t0 = time.perf_counter()
        transcribe_stage(d, settings)
        raw[clip] = time.perf_counter() - t0
        durations[clip] = d.audio.duration_s
    print(f"raw transcription measured for {len(raw)} clips", flush=True)

    # 2. the service
    env = prefect_env.child_env(settings)
    env.pop("PREFECT_API_URL", None)
    log_path = scratch / "service.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "-v", "run", "--no-web", "--no-live"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    inbox_dir = settings.inbox_dir / "dr-bench"
    store = open_store(settings)

    def wait_done(names: set[str], timeout: float) -> dict[str, float]:
        done: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(done) < len(names):
            with store.session() as s:
                for name, status in s.execute(
                    select(DictationRow.original_name, DictationRow.status)
                    .where(DictationRow.original_name.in_(names))
                ):
                    if status in ("done", "failed", "quarantined", "duplicate"):
                        done.setdefault(name, time.perf_counter())
            time.sleep(0.05)
        return done

    def drop(clip: Path, name: str) -> float:
        tmp = inbox_dir / f"{name}.part"
        shutil.copyfile(clip, tmp)
        t = time.perf_counter()
        os.replace(tmp, inbox_dir / name)
        return t

    results: list[tuple[str, str, str]] = []
    try:
        deadline = time.monotonic() + 180
        while "Service running" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                print(log_path.read_text(errors="replace")[-3000:])
                return 1
            time.sleep(0.2)
        t = drop(latency_clips[0], "warmup.wav")
        wait_done({"warmup.wav"}, 300)
        workers = [p for p in _tree(proc.pid) if "worker" in " ".join(p.cmdline())]
        rss_before = workers[0].memory_info().rss if workers else 0

        # 3. latency
        lat, lat_raw = [], []
        for i, clip in enumerate(latency_clips[1:]):
            name = f"lat{i}.wav"
            t = drop(clip, name)
            end = wait_done({name}, 300).get(name)
            if end is None:
                raise RuntimeError("a latency dictation did not finish within 300 s")
            lat.append(end - t)
            lat_raw.append(raw[clip])
        p50, raw50 = statistics.median(lat), statistics.median(lat_raw)
        results.append(("drop-to-draft p50, 30 s dictation", f"{p50:.2f} s",
                        f"transcription {raw50:.2f} s + 3 s = {raw50 + 3:.2f} s"
                        f" -> {'OK' if p50 <= raw50 + 3 else 'MISSED'}"))

        # 4. throughput
        names = {}
        t0 = time.perf_counter()
        for i, clip in enumerate(batch):
            names[f"b{i:03d}.wav"] = clip
            drop(clip, f"b{i:03d}.wav")
        done = wait_done(set(names), 120 + 20 * len(batch))
        total = max(done.values()) - t0 if done else float("nan")
        raw_sum = sum(raw[c] for c in batch)
        audio_sum = sum(durations[c] for c in batch)
        ratio = total / raw_sum if raw_sum else float("nan")
        results.append((f"{len(batch)} dictations ({audio_sum:.0f} s audio), all at once",
                        f"{total:.1f} s ({len(done)} done)",
                        f"sum of raw transcription {raw_sum:.1f} s -> {ratio:.2f}x "
                        f"({'OK' if ratio <= 1.2 else 'MISSED'} <= 1.2x)"))

        # 5. idle CPU and memory
        time.sleep(3)
        procs = _tree(proc.pid)
        each0 = [_cpu([p]) for p in procs]
        w0 = time.perf_counter()
        time.sleep(args.idle_seconds)
        each1 = [_cpu([p]) for p in procs]
        wall = time.perf_counter() - w0
        idle = 100 * (sum(each1) - sum(each0)) / wall
        parts = ", ".join(
            f"{_role(p)} {100 * (b - a) / wall:.1f}%" for p, a, b in zip(procs, each0, each1,
                                                                        strict=True))
        results.append((f"idle CPU, whole service ({len(procs)} processes)",
                        f"{idle:.2f}% of a core",
                        f"target < 2% -> {'OK' if idle < 2 else 'MISSED'} ({parts})"))
        rss_after = workers[0].memory_info().rss if workers else 0
        results.append((f"worker memory after warm-up -> after {len(batch) + len(lat)} files",
                        f"{rss_before / 1e6:.0f} MB -> {rss_after / 1e6:.0f} MB",
                        f"growth {(rss_after - rss_before) / 1e6:+.0f} MB"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    del psutil
    width = max(len(r[0]) for r in results)
    print()
    for what, measured, against in results:
        print(f"{what:<{width}}  {measured:>22}   {against}")
    if args.keep:
        print(f"\nscratch data kept in {scratch}")
    return 0
