"""Benchmark: raw faster-whisper vs the full pipeline on the same audio, side by side.

Each measurement runs in its own freshly spawned process so that peak memory (``ru_maxrss``)
belongs to that measurement alone. Both sides load the same model with the same device,
compute type and decoding options, run a short warm-up (the first seconds of the same audio,
so that lazy initialisation is not billed to either side) and then process the whole file
once:

- raw: ``WhisperModel.transcribe(path, vad_filter=True, ...)`` with the generator consumed;
- pipeline: ``process.process_file`` (probe, transcribe with guards, normalize, structure,
  render, store) into a temporary data directory, timed to the moment the draft is in the
  review queue (what the user waits for). The PDF (LibreOffice, made after the draft is
  queued) is timed on its own, and the end-to-end time with it is kept too (``pdf_s``,
  ``with_pdf_s``), so nothing is hidden.

``long_minutes`` additionally builds a long file (the audio looped, streamed to a WAV in a
temporary folder) and measures the pipeline's peak memory on it.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import resource
import tempfile
import time
import wave
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.settings import Settings

__all__ = ["RunFigures", "BenchResult", "run_bench", "make_long_audio", "measure"]


@dataclass
class RunFigures:
    """What one measured run did."""

    label: str
    audio_s: float
    wall_s: float
    load_s: float
    warmup_s: float
    peak_rss_mb: float
    words: int
    stages: dict[str, float] = field(default_factory=dict)
    #: pipeline only: seconds of the PDF conversion after the draft was queued (None: no PDF)
    pdf_s: float | None = None
    #: pipeline only: wall time including the PDF (``wall_s`` stops when the draft is queued)
    with_pdf_s: float | None = None
    #: pipeline only: what the transcription guards decoded again (loops repaired, words of
    #: skipped speech recovered, whole file again without the prompt): work raw does not do
    repairs: dict[str, int] = field(default_factory=dict)

    @property
    def speed(self) -> float:
        """Real-time factor as "x faster than real time" (audio seconds / wall seconds)."""
        return self.audio_s / self.wall_s if self.wall_s > 0 else float("inf")

    @property
    def speed_with_pdf(self) -> float | None:
        """Real-time factor including the PDF conversion (pipeline only)."""
        if self.with_pdf_s is None or self.with_pdf_s <= 0:
            return None
        return self.audio_s / self.with_pdf_s


@dataclass
class BenchResult:
    """Raw and pipeline figures for one audio file and model, plus the optional long run."""

    audio: str
    model: str
    device: str
    compute_type: str
    beam_size: int
    raw: RunFigures
    pipeline: RunFigures
    long: RunFigures | None = None
    long_raw: RunFigures | None = None

    @property
    def ratio(self) -> float:
        """Pipeline wall time (to the review queue) / raw faster-whisper wall time
        (target <= 1.15)."""
        return self.pipeline.wall_s / self.raw.wall_s

    @property
    def ratio_with_pdf(self) -> float | None:
        """Pipeline wall time including the PDF / raw faster-whisper wall time."""
        if self.pipeline.with_pdf_s is None:
            return None
        return self.pipeline.with_pdf_s / self.raw.wall_s

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly figures (with speeds and the ratios)."""
        out = asdict(self)
        for key in ("raw", "pipeline", "long", "long_raw"):
            figures = getattr(self, key)
            if figures is not None:
                out[key]["speed_x_realtime"] = round(figures.speed, 2)
                if figures.speed_with_pdf is not None:
                    out[key]["speed_with_pdf_x_realtime"] = round(figures.speed_with_pdf, 2)
        out["ratio"] = round(self.ratio, 3)
        if self.ratio_with_pdf is not None:
            out["ratio_with_pdf"] = round(self.ratio_with_pdf, 3)
        return out


def _median(runs: list[RunFigures]) -> RunFigures:
    """The run with the median wall time, carrying the highest peak memory of all runs."""
    ordered = sorted(runs, key=lambda r: r.wall_s)
    mid = ordered[(len(ordered) - 1) // 2]
    mid.peak_rss_mb = max(r.peak_rss_mb for r in runs)
    mid.stages = {**mid.stages, "runs": float(len(runs))} if len(runs) > 1 else mid.stages
    return mid


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _child(kind: str, settings_data: dict[str, Any], audio: str, warm: str | None,
           document_type: str | None = None) -> dict:
    """Runs in a spawned process: load, warm up, time one run; return figures as a dict."""
    import pipeline  # noqa: F401  (offline environment first)
    from pipeline.speech import models as speech_models
    from pipeline.speech.transcribe import TranscribeOptions, vad_options, whisper_kwargs

    settings = Settings(**settings_data)
    t0 = time.perf_counter()
    model = speech_models.load(settings)
    load_s = time.perf_counter() - t0

    if kind == "raw":
        options = TranscribeOptions.from_settings(settings)
        language = options.language if model.model.is_multilingual else "en"
        kwargs = whisper_kwargs(options, language)
        if document_type and settings.biased_decoding:
            # "Same settings": raw faster-whisper gets the term prompt the pipeline chooses
            # for this document type, so the ratio measures the pipeline's own cost.
            from pipeline.language import normalize

            terms = normalize.prompt_terms(settings, document_type=document_type)
            kwargs["hotwords"] = terms.hotwords
            kwargs["initial_prompt"] = terms.initial_prompt
        if not options.vad:
            kwargs["vad_filter"] = False
        else:
            kwargs["vad_filter"] = True
            kwargs["vad_parameters"] = vad_options(options)

        def once(path: str) -> dict[str, Any]:
            t0 = time.perf_counter()
            segments, info = model.transcribe(path, **kwargs)
            words = sum(len(s.words or []) for s in segments)  # consumes the generator
            return {"audio_s": float(info.duration), "words": words, "stages": {},
                    "wall_s": time.perf_counter() - t0}

    else:
        from pipeline.core.records import DictationMeta
        from pipeline.service.process import process_file

        meta = DictationMeta(document_type=document_type, source="bench")

        def once(path: str) -> dict[str, Any]:
            t0 = time.perf_counter()
            result = process_file(Path(path), settings, meta, store=True)
            total = time.perf_counter() - t0
            made = "pdf" in result.draft.outputs
            diag = result.transcript.options.get("diagnostics", {})
            repairs = {key: int(diag.get(key) or 0)
                       for key in ("repaired_loops", "recovered_words", "prompt_fallback")}
            return {"audio_s": result.dictation.audio.duration_s,
                    "repairs": {k: v for k, v in repairs.items() if v},
                    "words": len(result.transcript.words),
                    "stages": {k: round(v, 3) for k, v in result.timings.items()},
                    # what the user waits for: the draft in the review queue
                    "wall_s": result.queued_s,
                    "pdf_s": round(result.timings.get("pdf", 0.0), 3) if made else None,
                    "with_pdf_s": round(total, 3)}

    warm_s = 0.0
    if warm:
        t0 = time.perf_counter()
        once(warm)
        warm_s = time.perf_counter() - t0
    figures = once(audio)
    return {
        **figures,
        "label": kind,
        "audio_s": round(figures["audio_s"], 2),
        "wall_s": round(figures["wall_s"], 3),
        "load_s": round(load_s, 3),
        "warmup_s": round(warm_s, 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def measure(kind: str, settings: Settings, audio: Path, warm: Path | None,
            document_type: str | None = None) -> RunFigures:
    """Run one measurement (``raw`` or ``pipeline``) in a fresh spawned process."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        data = pool.submit(
            _child, kind, settings.model_dump(), str(audio), str(warm) if warm else None,
            document_type,
        ).result()
    return RunFigures(**data)


def _write_wav(path: Path, rate: int = 16000) -> wave.Wave_write:
    w = wave.open(str(path), "wb")  # noqa: SIM115 - returned to a with-block by the caller
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(rate)
    return w


def make_long_audio(source: Path, minutes: float, out: Path) -> Path:
    """Loop ``source`` (with 1 s pauses) into a 16 kHz WAV lasting ``minutes``, streamed."""
    from pipeline.ingest.audio import decode

    pcm = (np.clip(decode(source), -1, 1) * 32767).astype("<i2").tobytes()
    pause = bytes(2 * 16000)
    target = int(minutes * 60 * 16000) * 2
    written = 0
    with _write_wav(out) as w:
        while written < target:
            for block in (pcm, pause):
                block = block[: target - written]
                w.writeframes(block)
                written += len(block)
    return out


def _warm_clip(source: Path, out: Path, seconds: float = 5.0) -> Path:
    from pipeline.ingest.audio import iter_audio

    first = next(iter_audio(source, chunk_seconds=seconds))
    with _write_wav(out) as w:
        w.writeframes((np.clip(first, -1, 1) * 32767).astype("<i2").tobytes())
    return out


def run_bench(
    audio: Path,
    settings: Settings,
    *,
    long_minutes: float | None = None,
    long_raw: bool = False,
    repeat: int = 1,
    document_type: str | None = None,
) -> BenchResult:
    """Measure raw faster-whisper and the pipeline on ``audio`` (and optionally a long file).

    With ``repeat`` > 1 the two alternate that many times and the median run of each is kept
    (its peak memory is the highest seen), which steadies the ratio on a busy machine.
    ``document_type`` is given to the pipeline as if from a sidecar (it selects the
    medical-language term prompt); raw faster-whisper then gets the same prompt, so both
    sides decode with the same model and settings.
    """
    from pipeline.ingest import audio as audio_mod
    from pipeline.speech import models as speech_models

    audio_mod.probe(audio, settings)  # a clear error before spawning anything
    resolved = speech_models.resolve(settings.model, settings)  # joins base once, here
    device, compute = speech_models.choose_device(settings)
    with tempfile.TemporaryDirectory(prefix="dictation-bench-") as tmp:
        tmpdir = Path(tmp)
        warm = _warm_clip(audio, tmpdir / "warmup.wav")
        base = settings.model_dump()
        raw_settings = Settings(**{**base, "data_dir": tmpdir / "raw"})
        pipe_settings = Settings(**{**base, "data_dir": tmpdir / "pipeline"})
        # the joined base model is in the user's cache: point both at the same folder
        if resolved.source.startswith("joined"):
            raw_settings.model = pipe_settings.model = str(resolved.path)
        raws: list[RunFigures] = []
        pipes: list[RunFigures] = []
        for _ in range(max(repeat, 1)):  # alternate, so that machine load hits both sides
            raws.append(measure("raw", raw_settings, audio, warm, document_type))
            pipes.append(measure("pipeline", pipe_settings, audio, warm, document_type))
        raw, pipe = _median(raws), _median(pipes)
        raw.label, pipe.label = "raw faster-whisper", "pipeline"
        long_fig = long_raw_fig = None
        if long_minutes:
            long_audio = make_long_audio(audio, long_minutes, tmpdir / "long.wav")
            long_settings = Settings(**{**pipe_settings.model_dump(),
                                        "data_dir": tmpdir / "long"})
            long_fig = measure("pipeline", long_settings, long_audio, warm, document_type)
            long_fig.label = f"pipeline, {long_minutes:g} min"
            if long_raw:
                long_raw_fig = measure("raw", raw_settings, long_audio, warm)
                long_raw_fig.label = f"raw faster-whisper, {long_minutes:g} min"
    return BenchResult(
        audio=str(audio),
        model=resolved.name,
        device=device,
        compute_type=compute,
        beam_size=settings.beam_size,
        raw=raw,
        pipeline=pipe,
        long=long_fig,
        long_raw=long_raw_fig,
    )
