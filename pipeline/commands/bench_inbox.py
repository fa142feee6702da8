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
5. memory (``--files N``): drops ``N`` short dictations (``--clip-seconds`` long, cut from a few
   samples; each file's bytes differ so every SHA-256 is new) in rounds of ``--every`` files,
   records the worker's RSS after each round and prints the series with a verdict: the RSS at
   the last round against the RSS after the warm-up rounds (first ``--warm-files`` files),
   within ``--tolerance-pct`` / ``--tolerance-mb``;
6. idle: CPU of the whole service (all processes, CPU time from ``psutil``, so other load on
   the machine does not count) over ``--idle-seconds`` after ``--idle-settle`` seconds of rest
   (target < 2% of a core), per process.

``--short`` skips parts 1, 3 and 4 (no raw-transcription timing, latency or batch): with
``--files 500`` it is the memory soak plus the idle measurement.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["register", "run", "soak_verdict"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``bench-inbox`` sub-command."""
    p = subparsers.add_parser("bench-inbox", help="measure the inbox service (latency, overhead)")
    p.add_argument("--count", type=int, default=50, help="dictations in the batch (default 50)")
    p.add_argument("--latency-runs", type=int, default=5, help="30 s drops timed (default 5)")
    p.add_argument("--idle-seconds", type=float, default=60.0, help="idle CPU window (60)")
    p.add_argument("--idle-settle", type=float, default=15.0,
                   help="rest before the idle window, after the last file (15)")
    p.add_argument("--files", type=int, default=0,
                   help="memory soak: short dictations processed, RSS recorded (default 0: off)")
    p.add_argument("--every", type=int, default=50, help="soak files per round (default 50)")
    p.add_argument("--clip-seconds", type=float, default=5.0, help="soak clip length (5 s)")
    p.add_argument("--warm-files", type=int, default=100,
                   help="soak files before the reference RSS (default 100)")
    p.add_argument("--tolerance-pct", type=float, default=10.0,
                   help="allowed RSS growth after warm-up, percent (default 10)")
    p.add_argument("--tolerance-mb", type=float, default=50.0,
                   help="allowed RSS growth after warm-up, MB (default 50)")
    p.add_argument("--short", action="store_true",
                   help="skip raw timing, latency and the batch: memory soak and idle only")
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
        from pipeline.core.errors import ConfigError

        raise ConfigError(f"No sample audio in {folder}; expected the synthetic_medical set.")
    return files


def _cut(src: Path, start: float, dur: float, out: Path) -> Path:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-ss", f"{start:.2f}", "-t", f"{dur:.2f}", "-i", str(src),
         "-ac", "1", "-ar", "16000", str(out)],
        check=True,
    )
    return out


def _variant(base: bytes, i: int, out: Path) -> Path:
    """``base`` (a 16-bit PCM WAV whose data chunk ends the file) with its last two samples
    set from ``i``: inaudible, but a new SHA-256 for every ``i`` (the idempotency key)."""
    data = bytearray(base)
    data[-4:] = struct.pack("<hh", i % 97, i // 97)
    out.write_bytes(bytes(data))
    return out


def soak_verdict(series: list[tuple[int, int]], warm_files: int, tolerance_pct: float,
                 tolerance_mb: float) -> tuple[bool, str]:
    """Judge an RSS series ``[(files processed, rss bytes), ...]``: the last value against the
    first one at or after ``warm_files`` files; growth is allowed up to the smaller of
    ``tolerance_pct`` percent and ``tolerance_mb`` MB. Returns (ok, explanation)."""
    if len(series) < 2:
        return False, "not enough rounds to judge"
    ref = next(((n, r) for n, r in series if n >= warm_files), series[0])
    if ref == series[-1]:
        ref = series[0]
    n0, r0 = ref
    n1, r1 = series[-1]
    growth = r1 - r0
    allowed = min(r0 * tolerance_pct / 100, tolerance_mb * 1e6)
    ok = growth <= allowed
    return ok, (f"RSS at file {n1} {r1 / 1e6:.0f} MB vs file {n0} {r0 / 1e6:.0f} MB: "
                f"{growth / 1e6:+.0f} MB ({100 * growth / r0:+.1f}%), allowed "
                f"+{allowed / 1e6:.0f} MB -> {'OK' if ok else 'GROWS'}")


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
    for key, name in (("server", "prefect-server"), ("prefect_env serve", "prefect-server"),
                      ("worker", "worker"), (" run", "supervisor")):
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


def _workers(pid: int) -> list[Any]:
    return [p for p in _tree(pid) if _role(p) == "worker"]


def _rss(procs: list[Any]) -> int:
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except Exception:
            continue
    return total


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the figures side by side."""
    from sqlalchemy import select

    from pipeline.core.db.core import DictationRow
    from pipeline.core.settings import Settings, get_settings
    from pipeline.core.store import open_store
    from pipeline.service import prefect_env
    from pipeline.service.process import load_dictation, transcribe_stage

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
        overrides["adapted_models"] = False  # the model asked for, not an adapted one
    if args.workers:
        overrides["workers"] = args.workers
    settings = Settings(**{**base.model_dump(), **overrides})
    sources = _sources(settings)
    clips = scratch / "clips"
    clips.mkdir(parents=True)
    print(f"model {settings.model}, workers {settings.workers}, pdf {settings.pdf}, "
          f"stable_seconds {settings.stable_seconds}, cores {os.cpu_count()}", flush=True)

    # 1. clips and raw transcription times (warm model, this process)
    latency_runs = 0 if args.short else args.latency_runs
    count = 0 if args.short else args.count
    latency_clips = [_cut(sources[i % len(sources)], 5.0 + 3 * i, 30.0,
                          clips / f"latency{i}.wav") for i in range(latency_runs + 1)]
    batch = []
    for i in range(count):
        dur = 20.0 + (i * 37 % 41)  # 20..60 s, spread
        src = sources[i % len(sources)]
        batch.append(_cut(src, (i // len(sources)) * 4.0, dur, clips / f"batch{i:03d}.wav"))
    soak_bases = [_cut(sources[i % len(sources)], 3.0 + 2 * i, args.clip_seconds,
                       clips / f"soak{i}.wav").read_bytes()
                  for i in range(min(5, len(sources)) if args.files else 0)]
    raw: dict[Path, float] = {}
    raw_cpu = 0.0
    durations: dict[Path, float] = {}
    if not args.short:
        transcribe_stage(load_dictation(latency_clips[0], settings), settings)  # warm-up
        for clip in [*latency_clips[1:], *batch]:
            d = load_dictation(clip, settings)
            c0 = time.process_time()
            t0 = time.perf_counter()
            transcribe_stage(d, settings)
            raw[clip] = time.perf_counter() - t0
            if clip in batch:
                raw_cpu += time.process_time() - c0
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
                # matched here, not in SQL: on PostgreSQL the names are sealed (randomized)
                for name, status in s.execute(
                    select(DictationRow.original_name, DictationRow.status)
                ):
                    if name in names and status in ("done", "failed", "quarantined",
                                                    "duplicate"):
                        done.setdefault(name, time.perf_counter())
            time.sleep(0.05 if len(names) < 10 else 0.5)
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
        warm = clips / "warmup.wav"
        if not latency_clips:
            warm = _cut(sources[0], 5.0, 30.0, warm)
        drop(latency_clips[0] if latency_clips else warm, "warmup.wav")
        wait_done({"warmup.wav"}, 300)
        workers = _workers(proc.pid)
        rss_before = _rss(workers)

        # 3. latency
        lat: list[float] = []
        if latency_clips[1:]:
            lat_raw = []
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
        if batch:
            names = {}
            procs = _tree(proc.pid)
            cpu0 = [_cpu([p]) for p in procs]
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
            cpu1 = [_cpu([p]) for p in procs]
            used: dict[str, float] = {}
            for p, a, b in zip(procs, cpu0, cpu1, strict=True):
                used[_role(p)] = used.get(_role(p), 0.0) + b - a
            results.append(("CPU time during the batch (2 cores: " f"{2 * total:.0f} s)",
                            f"{sum(used.values()):.1f} s",
                            ", ".join(f"{k} {v:.1f} s" for k, v in used.items())
                            + f"; raw transcription in this process {raw_cpu:.1f} s"))
            rss_after = _rss(workers)
            results.append((f"worker memory after warm-up -> after {len(batch) + len(lat)} "
                             f"files", f"{rss_before / 1e6:.0f} MB -> {rss_after / 1e6:.0f} MB",
                             f"growth {(rss_after - rss_before) / 1e6:+.0f} MB"))

        # 5. memory over many short files
        if args.files:
            series, service = _soak(args, proc.pid, soak_bases, clips, drop, wait_done)
            for label, values in (("worker", series), ("whole service", service)):
                _ok, why = soak_verdict(values, args.warm_files, args.tolerance_pct,
                                        args.tolerance_mb)
                results.append((f"{label} RSS over {values[-1][0] if values else 0} files",
                                " ".join(f"{r / 1e6:.0f}" for _, r in values) + " MB", why))

        # 6. idle CPU
        time.sleep(args.idle_settle)
        procs = _tree(proc.pid)
        each0 = [_cpu([p]) for p in procs]
        w0 = time.perf_counter()
        time.sleep(args.idle_seconds)
        each1 = [_cpu([p]) for p in procs]
        wall = time.perf_counter() - w0
        idle = 100 * (sum(each1) - sum(each0)) / wall
        parts = ", ".join(
            f"{_role(p)} {100 * (b - a) / wall:.2f}%" for p, a, b in zip(procs, each0, each1,
                                                                         strict=True))
        results.append((f"idle CPU, whole service ({len(procs)} processes, {wall:.0f} s)",
                        f"{idle:.2f}% of a core",
                        f"target < 2% -> {'OK' if idle < 2 else 'MISSED'} ({parts})"))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    width = max(len(r[0]) for r in results)
    print()
    for what, measured, against in results:
        print(f"{what:<{width}}  {measured:>22}   {against}")
    if args.keep:
        print(f"\nscratch data kept in {scratch}")
    return 0


def _soak(args: argparse.Namespace, pid: int, bases: list[bytes], clips: Path,
          drop: Any, wait_done: Any) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Drop ``args.files`` short dictations in rounds of ``args.every``; after each round,
    wait for all of them and record the worker's RSS and the whole service's. Returns the
    two series ``[(files, rss), ...]`` (worker, all processes)."""
    series: list[tuple[int, int]] = []
    service: list[tuple[int, int]] = []
    first_pids = sorted(p.pid for p in _workers(pid))
    processed = 0
    t_start = time.perf_counter()
    print(f"memory soak: {args.files} files of {args.clip_seconds:.0f} s, RSS every "
          f"{args.every}", flush=True)
    while processed < args.files:
        n = min(args.every, args.files - processed)
        names = set()
        for k in range(processed, processed + n):
            name = f"soak{k:05d}.wav"
            clip = _variant(bases[k % len(bases)], k, clips / name)
            drop(clip, name)
            clip.unlink()
            names.add(name)
        done = wait_done(names, 120 + 30 * n)
        processed += n
        workers = _workers(pid)
        if sorted(p.pid for p in workers) != first_pids:
            print("  the worker was restarted during the soak: the series is not comparable",
                  flush=True)
            first_pids = sorted(p.pid for p in workers)
        rss = _rss(workers)
        procs = _tree(pid)
        series.append((processed, rss))
        service.append((processed, _rss(procs)))
        others = ", ".join(f"{_role(p)} {_rss([p]) / 1e6:.0f}" for p in procs
                           if _role(p) != "worker")
        print(f"  {processed:5d} files ({len(done)}/{n} of this round done) worker RSS "
              f"{rss / 1e6:.0f} MB ({others} MB), {time.perf_counter() - t_start:.0f} s",
              flush=True)
    return series, service
