"""The gate: a candidate model replaces a physician's current one only if it is better.

A candidate is promoted only if, on that physician's held-back signed dictations (never
trained on), both the word error rate and the medical-term error rate fall, and the word
error rate on general English speech (``samples/general_speech``) rises by at most
``GateOptions.max_general_wer_rise`` (0.5 point). The candidate and the current model are
decoded on the same audio in the same run, with the same options, so that the comparison is
fair whatever the machine (``docs/adaptation.md``).

- ``evaluation_set``: the held-back windows (audio and target text, from
  ``pairs.load_window_audio``) and the general-speech files, loaded once for both models.
- ``evaluate_model``: one CTranslate2 folder decoded with faster-whisper on that set ->
  ``Figures`` (rates and counts; never text).
- ``decide``: pure, ``Figures`` of candidate and current -> ``Decision(promote, reasons)``.

Scoring: both sides normalised the same way (``canonical_words``: lower case, punctuation off,
"4-0" and "142/88" kept whole, spoken numbers as digits), then jiwer's alignment summed
over all windows (corpus WER, not a mean of per-window rates). The medical-term error rate
is the share of reference words the language stage's vocabulary calls medical
(``VocabIndex.is_medical``) that the alignment does not match exactly (substituted or
deleted) -- the same definition as ``dictation evaluate``'s.

Decoding: the pipeline's options (``TranscribeOptions.from_settings``: beam size, pinned
language, temperature 0 only, no conditioning on previous text), without prompt terms and
without word timestamps (they do not change the text), with faster-whisper's VAD filter on
(the pipeline decodes only what its VAD calls speech). Windows are decoded one by one, not as
whole dictations: the pairs are what the model trained on and what ``pairs`` can cut again.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jiwer
import numpy as np

from pipeline.core import files
from pipeline.core.errors import ConfigError, ModelNotFoundError
from pipeline.core.settings import Settings
from pipeline.language.spoken_numbers import is_number_word, parse_cardinal
from pipeline.review.learning import normalize_words
from pipeline.speech import models as speech_models
from pipeline.speech.transcribe import TranscribeOptions, vad_options, whisper_kwargs

if TYPE_CHECKING:  # pragma: no cover
    from pipeline.adaptation.pairs import TrainingPair

__all__ = [
    "GateOptions",
    "EvalItem",
    "EvaluationSet",
    "Figures",
    "Decision",
    "general_samples",
    "split_general",
    "evaluation_set",
    "evaluate_model",
    "decide",
    "score",
    "canonical_words",
]

log = logging.getLogger(__name__)

#: progress callback: (phase, done, total)
Progress = Callable[[str, int, int], None]


@dataclass
class GateOptions:
    """What a candidate must achieve, and how it is measured."""

    #: general-speech WER may rise by at most this much (0.005 = 0.5 point)
    max_general_wer_rise: float = 0.005
    #: the held-back WER must fall by more than this (0: any fall)
    min_wer_fall: float = 0.0
    #: the held-back medical-term error rate must fall by more than this (0: any fall)
    min_term_error_fall: float = 0.0
    #: beam size of the gate's decoding (None: the pipeline's ``settings.beam_size``)
    beam_size: int | None = None
    #: general English samples (``<id>.wav|.flac`` + ``<id>.ref.txt``; None:
    #: ``settings.samples_dir / "general_speech"``)
    general_dir: Path | None = None
    #: general samples left out of the gate (those the training mixed in: never judge on
    #: what was trained on)
    exclude_general: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (stored with the candidate)."""
        out = asdict(self)
        out["general_dir"] = str(self.general_dir) if self.general_dir else None
        out["exclude_general"] = list(self.exclude_general)
        return out


@dataclass(frozen=True)
class EvalItem:
    """One piece of audio to decode and its reference text (kept in memory only)."""

    id: str  # "<dictation id>@<start>" or a general sample id: no text
    kind: str  # "held_back" or "general"
    audio: np.ndarray = field(repr=False, compare=False)
    reference: str = field(repr=False)
    dictation_id: str | None = None


@dataclass
class EvaluationSet:
    """The held-back windows and the general samples, audio loaded once."""

    items: list[EvalItem]

    @property
    def held_back(self) -> list[EvalItem]:
        return [i for i in self.items if i.kind == "held_back"]

    @property
    def general(self) -> list[EvalItem]:
        return [i for i in self.items if i.kind == "general"]

    @property
    def dictation_ids(self) -> list[str]:
        """The held-back dictations, in order (ids only)."""
        return list(dict.fromkeys(i.dictation_id for i in self.held_back if i.dictation_id))

    def counts(self) -> dict[str, int | float]:
        """Counts and seconds only."""
        return {
            "held_back_windows": len(self.held_back),
            "held_back_dictations": len(self.dictation_ids),
            "held_back_audio_s": round(sum(i.audio.size for i in self.held_back) / 16000, 1),
            "general_files": len(self.general),
            "general_audio_s": round(sum(i.audio.size for i in self.general) / 16000, 1),
        }


@dataclass
class Figures:
    """One model's figures on an evaluation set: rates (fractions) and counts, no text."""

    wer: float | None
    term_error_rate: float | None
    general_wer: float | None
    ref_words: int = 0
    word_errors: int = 0
    medical_words: int = 0
    medical_errors: int = 0
    general_ref_words: int = 0
    general_errors: int = 0
    windows: int = 0
    dictations: int = 0
    general_files: int = 0
    decode_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (stored in the version's ``metrics``)."""
        out = asdict(self)
        for key in ("wer", "term_error_rate", "general_wer"):
            if out[key] is not None:
                out[key] = round(float(out[key]), 5)
        out["decode_s"] = round(self.decode_s, 2)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Figures:
        """Back from ``to_dict`` (unknown keys ignored)."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Decision:
    """The gate's verdict and every reason for it (figures only, no text)."""

    promote: bool
    reasons: tuple[str, ...]

    @property
    def summary(self) -> str:
        """One line: the reasons joined."""
        return "; ".join(self.reasons)


# --------------------------------------------------------------------------------------------
# scoring


def canonical_words(text: str) -> list[str]:
    """The words WER is counted on: ``normalize_words`` (lower case, punctuation off), "%"
    as "percent", and spoken numbers as digits ("ten" -> "10", "twenty-one" -> "21"), so
    that writing a number one way or the other is not an error on either side.

    >>> canonical_words("Ten of clubs, 55% - twenty-one years.")
    ['10', 'of', 'clubs', '55', 'percent', '21', 'years']
    """
    words = normalize_words(text.replace("%", " percent "))
    out: list[str] = []
    i = 0
    while i < len(words):
        parsed = parse_cardinal(words, i) if is_number_word(words[i]) else None
        if parsed is not None:
            out.append(str(parsed[0]))
            i += max(parsed[1], 1)
            continue
        word = words[i]
        out.append(word.replace(",", "") if word[:1].isdigit() else word)
        i += 1
    return out


def _counts(reference: str, hypothesis: str, is_medical: Callable[[str], bool]
            ) -> tuple[int, int, int, int]:
    """(reference words, word errors, medical reference words, medical words missed)."""
    ref = canonical_words(reference)
    hyp = canonical_words(hypothesis)
    medical = [i for i, w in enumerate(ref) if is_medical(w)]
    if not ref:
        return 0, len(hyp), 0, 0
    if not hyp:
        return len(ref), len(ref), len(medical), len(medical)
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    errors = out.substitutions + out.deletions + out.insertions
    matched: set[int] = set()
    for chunk in out.alignments[0]:
        if chunk.type == "equal":
            matched.update(range(chunk.ref_start_idx, chunk.ref_end_idx))
    return len(ref), errors, len(medical), sum(1 for i in medical if i not in matched)


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def score(
    held_back: Iterable[tuple[str, str]],
    general: Iterable[tuple[str, str]],
    is_medical: Callable[[str], bool],
) -> Figures:
    """``Figures`` of (reference, hypothesis) pairs: held-back windows and general samples.

    WER is corpus-level (all errors over all reference words); the medical-term error rate
    counts medical reference words not matched exactly. Pure: no model, no files.
    """
    words = errors = med = med_err = windows = 0
    for reference, hypothesis in held_back:
        n, e, m, me = _counts(reference, hypothesis, is_medical)
        words, errors, med, med_err, windows = words + n, errors + e, med + m, med_err + me, \
            windows + 1
    g_words = g_errors = g_files = 0
    for reference, hypothesis in general:
        n, e, _, _ = _counts(reference, hypothesis, lambda _w: False)
        g_words, g_errors, g_files = g_words + n, g_errors + e, g_files + 1
    return Figures(
        wer=_rate(errors, words),
        term_error_rate=_rate(med_err, med),
        general_wer=_rate(g_errors, g_words),
        ref_words=words,
        word_errors=errors,
        medical_words=med,
        medical_errors=med_err,
        general_ref_words=g_words,
        general_errors=g_errors,
        windows=windows,
        general_files=g_files,
    )


# --------------------------------------------------------------------------------------------
# the decision (pure)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def decide(candidate: Figures, current: Figures, options: GateOptions | None = None
           ) -> Decision:
    """Promote or refuse ``candidate`` against ``current`` (figures on the same set).

    Promote only if the held-back WER falls (by more than ``min_wer_fall``), the held-back
    medical-term error rate falls (by more than ``min_term_error_fall``), and the general WER
    rises by at most ``max_general_wer_rise``. A figure that could not be measured (no
    held-back words, no medical term in the references, no general sample) refuses: nothing
    unmeasured is promoted. Every reason is returned, passing or failing.
    """
    options = options or GateOptions()
    reasons: list[str] = []
    ok = True

    def falls(name: str, new: float | None, old: float | None, by: float) -> None:
        nonlocal ok
        if new is None or old is None:
            ok = False
            reasons.append(f"{name} could not be measured (candidate {_pct(new)}, "
                           f"current {_pct(old)})")
        elif old - new > by:
            reasons.append(f"{name} falls {_pct(old)} -> {_pct(new)}")
        else:
            ok = False
            reasons.append(f"{name} does not fall: {_pct(old)} -> {_pct(new)}")

    falls("held-back WER", candidate.wer, current.wer, options.min_wer_fall)
    falls("medical-term error rate", candidate.term_error_rate, current.term_error_rate,
          options.min_term_error_fall)
    new_g, old_g = candidate.general_wer, current.general_wer
    if new_g is None or old_g is None:
        ok = False
        reasons.append(f"general-speech WER could not be measured (candidate {_pct(new_g)}, "
                       f"current {_pct(old_g)})")
    elif new_g - old_g > options.max_general_wer_rise + 1e-12:
        ok = False
        reasons.append(f"general-speech WER rises {_pct(old_g)} -> {_pct(new_g)} (more than "
                       f"{100 * options.max_general_wer_rise:.2f} point)")
    else:
        reasons.append(f"general-speech WER {_pct(old_g)} -> {_pct(new_g)} (within "
                       f"{100 * options.max_general_wer_rise:.2f} point)")
    return Decision(ok, tuple(reasons))


# --------------------------------------------------------------------------------------------
# the evaluation set


def general_samples(folder: Path) -> list[tuple[str, Path, Path]]:
    """(id, audio, reference) of each general-speech sample in ``folder``, sorted by id.

    Read from ``manifest.csv`` when there is one (its ``id``, ``audio``, ``reference``
    columns), else every ``<id>.wav``/``.flac`` with an ``<id>.ref.txt`` beside it.
    """
    manifest = folder / "manifest.csv"
    found: list[tuple[str, Path, Path]] = []
    if manifest.is_file():
        with open(manifest, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if row.get("id") and row.get("audio") and row.get("reference"):
                    found.append((row["id"], folder / row["audio"], folder / row["reference"]))
    else:
        for audio in folder.iterdir() if folder.is_dir() else ():
            ref = audio.with_name(audio.stem + ".ref.txt")
            if audio.suffix.lower() in (".wav", ".flac") and ref.is_file():
                found.append((audio.stem, audio, ref))
    return sorted((f for f in found if f[1].is_file() and f[2].is_file()), key=lambda f: f[0])


def split_general(ids: Sequence[str]) -> tuple[list[str], list[str]]:
    """(for training, for the gate): the sorted ids, alternately. When training mixes
    general speech in, it takes only the first list and the gate judges only on the second,
    so general English is never judged on what was trained on."""
    ordered = sorted(ids)
    return ordered[0::2], ordered[1::2]


def _decode(path: Path) -> np.ndarray:
    from faster_whisper import decode_audio

    audio: np.ndarray = decode_audio(str(path), sampling_rate=16000)
    return audio.astype(np.float32, copy=False)


def evaluation_set(
    held_back: Sequence[TrainingPair],
    settings: Settings,
    options: GateOptions | None = None,
    *,
    progress: Progress | None = None,
) -> EvaluationSet:
    """Load the held-back windows' audio and the general samples once, for every model."""
    from pipeline.adaptation.pairs import load_window_audio

    options = options or GateOptions()
    items: list[EvalItem] = []
    total = len(held_back)
    for n, pair in enumerate(held_back, 1):
        items.append(EvalItem(
            id=f"{pair.dictation_id}@{pair.start_s:.2f}", kind="held_back",
            audio=load_window_audio(pair, settings), reference=pair.text,
            dictation_id=pair.dictation_id,
        ))
        if progress:
            progress("load", n, total)
    folder = options.general_dir or settings.samples_dir / "general_speech"
    skip = set(options.exclude_general)
    for sample_id, audio, ref in general_samples(folder):
        if sample_id in skip:
            continue
        items.append(EvalItem(id=sample_id, kind="general", audio=_decode(audio),
                              reference=ref.read_text(encoding="utf-8").strip()))
    return EvaluationSet(items)


# --------------------------------------------------------------------------------------------
# decoding one model


def _is_medical(settings: Settings) -> Callable[[str], bool]:
    from pipeline.language import vocab

    return vocab.get_index(settings).is_medical


def decode_options(settings: Settings, options: GateOptions) -> TranscribeOptions:
    """The pipeline's decoding options as the gate uses them (no prompt, no word times)."""
    base = TranscribeOptions.from_settings(settings)
    return replace(base, beam_size=options.beam_size or base.beam_size,
                   word_timestamps=False, initial_prompt=None, hotwords=None)


def evaluate_model(
    folder: Path | str,
    evaluation: EvaluationSet,
    settings: Settings,
    options: GateOptions | None = None,
    *,
    progress: Progress | None = None,
    phase: str = "evaluate",
) -> Figures:
    """Decode every item of ``evaluation`` with the CTranslate2 model in ``folder`` and
    return its ``Figures``.

    The model is loaded on its own (not into the worker's model cache: a refused candidate
    must not stay in memory) on the pipeline's device and compute type, decrypted into
    memory when sealed at rest, and dropped afterwards. ``folder`` may also be a registry
    name (the stock model).
    """
    from faster_whisper import WhisperModel

    options = options or GateOptions()
    try:
        resolved = speech_models.resolve(str(folder), settings)
    except ModelNotFoundError as exc:
        raise ConfigError(f"The gate cannot load model {folder}: {exc}") from exc
    device, compute_type = speech_models.choose_device(settings)
    path = resolved.path
    memory: dict[str, bytes] | None = None
    if any(files.is_encrypted(path / f) for f in speech_models.REQUIRED_FILES):
        # an adapted model sealed at rest: decrypted into memory, never to disk
        memory = {f.name: files.read_bytes(f, settings) for f in sorted(path.iterdir())
                  if f.is_file() and not f.name.startswith(".")}
    model = WhisperModel(str(path), device=device, compute_type=compute_type,
                         cpu_threads=settings.cpu_threads, local_files_only=True, files=memory)
    memory = None
    decoding = decode_options(settings, options)
    language = decoding.language if model.model.is_multilingual else "en"
    kwargs = whisper_kwargs(decoding, language)
    vad = vad_options(decoding)
    is_medical = _is_medical(settings)
    held: list[tuple[str, str]] = []
    general: list[tuple[str, str]] = []
    t0 = time.perf_counter()
    total = len(evaluation.items)
    for n, item in enumerate(evaluation.items, 1):
        segments, _info = model.transcribe(item.audio, vad_filter=True, vad_parameters=vad,
                                           **kwargs)
        text = " ".join(s.text.strip() for s in segments)  # consume the generator here
        (held if item.kind == "held_back" else general).append((item.reference, text))
        if progress:
            progress(phase, n, total)
    del model
    figures = score(held, general, is_medical)
    figures.dictations = len(evaluation.dictation_ids)
    figures.decode_s = time.perf_counter() - t0
    log.info("gate evaluated model=%s windows=%d general=%d decode_s=%.1f",
             resolved.name, figures.windows, figures.general_files, figures.decode_s)
    return figures
