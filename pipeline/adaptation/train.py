"""Fine-tuning a Whisper model on one physician's (audio window, signed text) pairs.

What is trained, and why (measurements in ``docs/adaptation.md``):

- The decoder only, by default; the encoder stays frozen. A physician's voice is one
  speaker; what the shipped models get wrong in medical dictation is mostly the words
  (cholecystectomy, Vicryl, Calot's triangle), which the decoder chooses. A frozen encoder
  also guards general English: the acoustic features every other voice relies on do not
  move. And it makes CPU training cheap: the encoder's output for each 30-second window is
  computed ONCE (``encode``) and cached, so a training step runs the decoder alone.
  ``train_encoder_layers=K`` unfreezes the top K encoder layers; then the output of the
  frozen lower layers is what is cached, and the top K run in every step.
- The decoder's embeddings stay frozen by default: the token embedding (tied to the output
  projection: Whisper scores its 51,864 tokens with the same matrix) is a third of base's
  weights, the one table every word of every language goes through, and the optimiser would
  otherwise hold two more copies of it; the learned position embedding serves every length
  of transcript, and a few hundred short windows would bend it towards theirs.
- Targets are Whisper's own token sequences, with the prompt the pipeline decodes with:
  ``<|startoftranscript|>`` (+ ``<|en|><|transcribe|>`` on a multilingual model), then
  either ``<|notimestamps|>`` and the text, or ``<|0.00|>`` text ``<|end|>`` (the pipeline
  decodes with timestamps; ``timestamp_share`` of the examples carry them, as in Whisper's
  own training), then ``<|endoftext|>``. The loss covers the text and the tokens after the
  prompt, never the prompt itself.
- Features are faster-whisper's log-mel (``FeatureExtractor``: exactly what the CTranslate2
  model sees), cut and padded to 30 s the way faster-whisper does.
- AdamW, linear warm-up then linear decay, gradient clipping; a validation split of the
  pairs (whole dictations, never windows of a training dictation) measured every
  ``eval_every`` steps, early stopping after ``patience`` evaluations without a better
  validation loss, and the best weights restored at the end (the starting weights if
  nothing beat them).
- Optionally a share of general English speech mixed in (``general_mix_share``, from
  ``samples/general_speech``, only the half the gate does not judge on).

Deterministic with a seed: the shuffles come from ``random.Random(seed)``, torch is seeded,
and deterministic algorithms are asked for (CPU kernels are deterministic here; CUDA ones
where cheap). CPU by default, CUDA when ``device="auto"`` finds one.

Needs the ``[train]`` extra (torch, transformers); imported only when training runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from pipeline.adaptation.pairs import TrainingPair

__all__ = [
    "TrainOptions",
    "Sample",
    "TrainResult",
    "train",
    "samples_from_pairs",
    "general_training_samples",
    "features",
    "target_tokens",
    "resolve_device",
    "WhisperTokens",
]

log = logging.getLogger(__name__)

#: progress callback: (phase, done, total); phases "encode", "train", "validate"
Progress = Callable[[str, int, int], None]

SAMPLE_RATE = 16000
#: frames of one 30-second window (what the encoder takes)
N_FRAMES = 3000
#: Whisper's decoder holds 448 positions
MAX_DECODER_POSITIONS = 448
#: seconds per timestamp token
TIME_PRECISION = 0.02


@dataclass
class TrainOptions:
    """How a model is fine-tuned (defaults measured on this machine: docs/adaptation.md)."""

    #: top encoder layers trained too (0: decoder only; the encoder output is cached)
    train_encoder_layers: int = 0
    #: train the decoder's token embedding (tied to the output projection) and position
    #: embedding too (frozen by default)
    train_embeddings: bool = False
    learning_rate: float = 3e-5
    epochs: int = 4
    #: stop after this many optimiser steps (None: ``epochs`` decide)
    max_steps: int | None = None
    batch_size: int = 8
    weight_decay: float = 0.0
    #: share of the steps spent warming the learning rate up from 0
    warmup_share: float = 0.1
    grad_clip: float = 1.0
    #: share of the training dictations held out for the validation loss (early stopping)
    validation_share: float = 0.15
    #: below this many training dictations there is no validation split (fixed epochs)
    min_dictations_for_validation: int = 3
    #: steps between validation losses (None: once per epoch)
    eval_every: int | None = None
    #: evaluations without a better validation loss before training stops
    patience: int = 2
    #: share of the training examples drawn from general English speech (0: none)
    general_mix_share: float = 0.0
    #: general speech samples (None: ``settings.samples_dir / "general_speech"``)
    general_dir: Path | None = None
    #: share of examples trained with timestamp tokens (the pipeline decodes with them)
    timestamp_share: float = 0.5
    seed: int = 0
    #: "auto": CUDA when torch sees one, else CPU
    device: str = "auto"
    #: torch threads on the CPU (0: ``settings.cpu_threads``, else every core)
    threads: int = 0
    #: stop training (keeping the best weights so far) after this long (None: no limit)
    max_minutes: float | None = None

    def __post_init__(self) -> None:
        if self.train_encoder_layers < 0:
            raise ConfigError(f"train_encoder_layers is {self.train_encoder_layers}; "
                              "expected 0 or more.")
        if self.batch_size < 1 or self.epochs < 1:
            raise ConfigError(f"batch_size {self.batch_size} and epochs {self.epochs} must "
                              "be 1 or more.")
        if not 0.0 <= self.general_mix_share < 1.0:
            raise ConfigError(f"general_mix_share is {self.general_mix_share}; expected "
                              "0 <= share < 1.")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"Training device {self.device!r}; expected auto, cpu or cuda.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (stored with the version)."""
        out = asdict(self)
        out["general_dir"] = str(self.general_dir) if self.general_dir else None
        return out


@dataclass
class Sample:
    """One training example: audio (or how to load it) and the text said in it.

    ``group`` is what the validation split keeps together (the dictation id);
    ``id`` names it in logs (an id, never text).
    """

    id: str
    group: str
    text: str = field(repr=False)
    audio: np.ndarray | Callable[[], np.ndarray] = field(repr=False)
    duration_s: float = 0.0
    general: bool = False

    def load(self) -> np.ndarray:
        """The 16 kHz mono float32 samples."""
        audio = self.audio() if callable(self.audio) else self.audio
        return np.asarray(audio, dtype=np.float32)


@dataclass
class TrainResult:
    """What a training run produced: the model (PyTorch, float32) and its figures."""

    model: Any = field(repr=False)
    steps: int
    seconds: float
    encode_seconds: float
    device: str
    train_loss: list[float]
    val_loss: list[float]
    best_step: int
    stopped: str  # "epochs", "max_steps", "early_stop", "time_limit"
    examples: int
    validation_examples: int
    general_examples: int
    trainable_parameters: int
    peak_rss_mb: float | None = None

    @property
    def changed(self) -> bool:
        """False when no step beat the starting weights (the model is the one given)."""
        return self.best_step > 0

    def to_dict(self) -> dict[str, Any]:
        """Figures only (no model, no text)."""
        out = {k: v for k, v in asdict(self).items() if k != "model"}
        out["seconds"] = round(self.seconds, 1)
        out["encode_seconds"] = round(self.encode_seconds, 1)
        out["train_loss"] = [round(v, 4) for v in self.train_loss]
        out["val_loss"] = [round(v, 4) for v in self.val_loss]
        return out


# --------------------------------------------------------------------------------------------
# inputs


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; "cuda" without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("Training on 'cuda' was requested but torch sees no CUDA GPU.")
    return device


_extractors: dict[int, Any] = {}


def features(audio: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """faster-whisper's log-mel of ``audio`` (16 kHz), cut and zero-padded to 30 s the way
    its ``transcribe`` prepares each window: (n_mels, 3000) float32."""
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.feature_extractor import FeatureExtractor

    if n_mels not in _extractors:
        _extractors[n_mels] = FeatureExtractor(feature_size=n_mels)
    mel = _extractors[n_mels](np.asarray(audio, dtype=np.float32))
    content = max(mel.shape[-1] - 1, 0)  # faster-whisper drops the padding frame
    out: np.ndarray = pad_or_trim(mel[:, : min(N_FRAMES, content)], N_FRAMES)
    return out.astype(np.float32, copy=False)


class WhisperTokens:
    """Whisper's special tokens and text encoding for one model folder."""

    def __init__(self, folder: Path, multilingual: bool, language: str = "en") -> None:
        import tokenizers
        from faster_whisper.tokenizer import Tokenizer

        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise ConfigError(f"Model folder {folder} has no tokenizer.json; expected a "
                              "CTranslate2 Whisper folder.")
        self.tokenizer = Tokenizer(tokenizers.Tokenizer.from_file(str(path)), multilingual,
                                   task="transcribe", language=language if multilingual else None)
        self.multilingual = multilingual

    @property
    def prefix(self) -> list[int]:
        """``<|startoftranscript|>`` (+ ``<|en|><|transcribe|>``)."""
        return list(self.tokenizer.sot_sequence)

    @property
    def eot(self) -> int:
        return int(self.tokenizer.eot)

    def timestamp(self, seconds: float) -> int:
        """The timestamp token of ``seconds`` (0.02 s steps, at most 30 s)."""
        steps = round(min(max(seconds, 0.0), 30.0) / TIME_PRECISION)
        return int(self.tokenizer.timestamp_begin) + steps

    def encode(self, text: str) -> list[int]:
        """Text tokens, with the leading space Whisper's transcripts start with."""
        return list(self.tokenizer.encode(" " + " ".join(text.split())))


def target_tokens(tokens: WhisperTokens, text: str, *, timestamps: bool, duration_s: float
                  ) -> tuple[list[int], int]:
    """(full token sequence, length of the prompt) for one example.

    Without timestamps: prefix, ``<|notimestamps|>``, text, ``<|endoftext|>``. With:
    prefix, ``<|0.00|>``, text, ``<|duration|>``, ``<|endoftext|>`` (one segment per
    window). The prompt (prefix, and ``<|notimestamps|>``) is given, never learned.
    """
    body = tokens.encode(text)
    prompt = tokens.prefix
    if timestamps:
        seq = [*prompt, tokens.timestamp(0.0), *body, tokens.timestamp(duration_s), tokens.eot]
    else:
        prompt = [*prompt, int(tokens.tokenizer.no_timestamps)]
        seq = [*prompt, *body, tokens.eot]
    return seq, len(prompt)


def samples_from_pairs(pairs: Sequence[TrainingPair], settings: Settings) -> list[Sample]:
    """Training pairs as ``Sample``s whose audio is cut from the dictation when needed."""
    from pipeline.adaptation.pairs import load_window_audio

    def loader(pair: TrainingPair) -> Callable[[], np.ndarray]:
        return lambda: load_window_audio(pair, settings)

    return [
        Sample(id=f"{p.dictation_id}@{p.start_s:.2f}", group=p.dictation_id, text=p.text,
               audio=loader(p), duration_s=float(p.end_s - p.start_s))
        for p in pairs
    ]


def general_training_samples(folder: Path, *, only: Sequence[str] | None = None
                             ) -> list[Sample]:
    """The general-speech samples training may mix in (``only``: these ids; default the
    half ``gate.split_general`` gives training)."""
    from pipeline.adaptation.gate import _decode, general_samples, split_general

    found = general_samples(folder)
    keep = set(only) if only is not None else set(split_general([f[0] for f in found])[0])
    out: list[Sample] = []
    for sample_id, audio_path, ref in found:
        if sample_id not in keep:
            continue
        audio = _decode(audio_path)
        out.append(Sample(id=sample_id, group=f"general:{sample_id}",
                          text=ref.read_text(encoding="utf-8").strip(), audio=audio,
                          duration_s=audio.size / SAMPLE_RATE, general=True))
    return out


# --------------------------------------------------------------------------------------------
# model pieces


def _freeze(model: Any, options: TrainOptions) -> list[Any]:
    """Set ``requires_grad``; return the trainable parameters (decoder, top encoder layers)."""
    for p in model.parameters():
        p.requires_grad_(False)
    decoder = model.model.decoder
    encoder = model.model.encoder
    for p in decoder.parameters():
        p.requires_grad_(True)
    k = options.train_encoder_layers
    if k > len(encoder.layers):
        raise ConfigError(f"train_encoder_layers is {k}; this model's encoder has "
                          f"{len(encoder.layers)} layers.")
    if k:
        for layer in encoder.layers[len(encoder.layers) - k:]:
            for p in layer.parameters():
                p.requires_grad_(True)
        for p in encoder.layer_norm.parameters():
            p.requires_grad_(True)
    if not options.train_embeddings:
        decoder.embed_tokens.weight.requires_grad_(False)
        model.proj_out.weight.requires_grad_(False)  # tied to embed_tokens
        decoder.embed_positions.weight.requires_grad_(False)
    seen: set[int] = set()
    trainable = []
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            trainable.append(p)
    return trainable


def _encoder_lower(model: Any, feats: torch.Tensor, keep_top: int) -> torch.Tensor:
    """The encoder up to (not including) its top ``keep_top`` layers; with 0, the whole
    encoder with its final layer norm (HF ``WhisperEncoder.forward``, without dropout)."""
    import torch.nn.functional as F

    enc = model.model.encoder
    x = F.gelu(enc.conv1(feats))
    x = F.gelu(enc.conv2(x))
    x = x.permute(0, 2, 1)
    x = x + enc.embed_positions.weight[: x.shape[1]]
    for layer in enc.layers[: len(enc.layers) - keep_top]:
        x = _layer(layer, x)
    if keep_top == 0:
        x = enc.layer_norm(x)
    return x


def _encoder_upper(model: Any, hidden: torch.Tensor, top: int) -> torch.Tensor:
    """The top ``top`` encoder layers and the final layer norm (identity when 0)."""
    if top == 0:
        return hidden
    enc = model.model.encoder
    x = hidden
    for layer in enc.layers[len(enc.layers) - top:]:
        x = _layer(layer, x)
    out: torch.Tensor = enc.layer_norm(x)
    return out


def _layer(layer: Any, x: torch.Tensor) -> torch.Tensor:
    out = layer(x, None)
    return out[0] if isinstance(out, tuple) else out


@dataclass
class _Example:
    id: str
    group: str
    hidden: Any  # cached encoder (lower) output, (1500, d), float16 on the CPU
    tokens: list[int]
    prompt_len: int
    general: bool


def _peak_rss_mb() -> float | None:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    except (ImportError, OSError):  # pragma: no cover - not Linux
        return None


def _stable_fraction(seed: int, key: str) -> float:
    """A number in [0, 1) fixed by (seed, key): a deterministic coin per example."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _split_validation(samples: Sequence[Sample], options: TrainOptions
                      ) -> tuple[list[Sample], list[Sample]]:
    """(training, validation): whole dictations to validation, chosen by a seeded hash."""
    groups = sorted({s.group for s in samples if not s.general})
    if len(groups) < options.min_dictations_for_validation or options.validation_share <= 0:
        return list(samples), []
    n_val = max(1, round(options.validation_share * len(groups)))
    n_val = min(n_val, len(groups) - 1)
    ranked = sorted(groups, key=lambda g: _stable_fraction(options.seed, g))
    val_groups = set(ranked[:n_val])
    return ([s for s in samples if s.group not in val_groups],
            [s for s in samples if s.group in val_groups])


@contextlib.contextmanager
def _torch_settings(threads: int, seed: int) -> Iterator[None]:
    """Threads, seed and deterministic algorithms for one run, restored afterwards."""
    import torch

    before_threads = torch.get_num_threads()
    before_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(before_threads)
        torch.use_deterministic_algorithms(before_det)


def _encode_all(model: Any, samples: Sequence[Sample], tokens: WhisperTokens,
                options: TrainOptions, device: str, progress: Progress | None,
                total: int, done: int) -> tuple[list[_Example], int, int]:
    """Features -> frozen encoder part, once per sample; (examples, skipped, done)."""
    import torch

    n_mels = int(model.config.num_mel_bins)
    out: list[_Example] = []
    skipped = 0
    batch = max(1, min(options.batch_size, 4))
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        feats, kept = [], []
        for s in chunk:
            audio = s.load()
            duration = s.duration_s or audio.size / SAMPLE_RATE
            timestamps = _stable_fraction(options.seed, "ts:" + s.id) < options.timestamp_share
            seq, prompt_len = target_tokens(tokens, s.text, timestamps=timestamps,
                                            duration_s=min(duration, 30.0))
            # a window longer than 30 s would lose its end (the encoder sees 30 s) but keep
            # all its words: a wrong target, so it is left out like an empty one
            if (audio.size == 0 or duration > 30.5 or len(seq) > MAX_DECODER_POSITIONS
                    or not s.text.strip()):
                skipped += 1
                continue
            feats.append(features(audio, n_mels))
            kept.append((s, seq, prompt_len))
        if feats:
            x = torch.from_numpy(np.stack(feats)).to(device)
            with torch.inference_mode():
                hidden = _encoder_lower(model, x, options.train_encoder_layers)
            hidden = hidden.to("cpu", torch.float16)
            for (s, seq, prompt_len), h in zip(kept, hidden, strict=True):
                out.append(_Example(s.id, s.group, h.clone(), seq, prompt_len, s.general))
        done += len(chunk)
        if progress:
            progress("encode", done, total)
    return out, skipped, done


def _batch_loss(model: Any, batch: Sequence[_Example], options: TrainOptions, device: str
                ) -> torch.Tensor:
    """Mean token cross-entropy of one batch (text and end tokens; prompt not counted)."""
    import torch
    import torch.nn.functional as F

    hidden = torch.stack([e.hidden for e in batch]).to(device, torch.float32)
    hidden = _encoder_upper(model, hidden, options.train_encoder_layers)
    length = max(len(e.tokens) for e in batch) - 1
    eot = batch[0].tokens[-1]
    inputs = torch.full((len(batch), length), eot, dtype=torch.long)
    labels = torch.full((len(batch), length), -100, dtype=torch.long)
    for i, e in enumerate(batch):
        seq = torch.tensor(e.tokens, dtype=torch.long)
        n = len(e.tokens) - 1
        inputs[i, :n] = seq[:-1]
        labels[i, :n] = seq[1:]
        labels[i, : e.prompt_len - 1] = -100  # the prompt is given, not predicted
    inputs, labels = inputs.to(device), labels.to(device)
    out = model.model.decoder(input_ids=inputs, encoder_hidden_states=hidden, use_cache=False)
    states = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    mask = labels != -100
    # score only the positions that have a label: the vocabulary projection is the costly part
    logits = model.proj_out(states[mask])
    loss: torch.Tensor = F.cross_entropy(logits.float(), labels[mask])
    return loss


def _mean_loss(model: Any, examples: Sequence[_Example], options: TrainOptions, device: str
               ) -> float:
    import torch

    if not examples:
        return float("nan")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(examples), options.batch_size):
            batch = examples[start:start + options.batch_size]
            n = sum(len(e.tokens) - e.prompt_len for e in batch)
            total += float(_batch_loss(model, batch, options, device)) * n
            count += n
    if was_training:
        model.train()
    return total / max(count, 1)


def _snapshot(params: Sequence[Any]) -> list[Any]:
    return [p.detach().clone() for p in params]


def _restore(params: Sequence[Any], saved: Sequence[Any]) -> None:
    import torch

    with torch.no_grad():
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)


def train(
    pairs: Sequence[TrainingPair | Sample],
    base_folder: Path | str,
    options: TrainOptions | None = None,
    *,
    settings: Settings | None = None,
    progress: Progress | None = None,
    model: Any = None,
) -> TrainResult:
    """Fine-tune the CTranslate2 Whisper model in ``base_folder`` on ``pairs``.

    ``pairs`` are ``pairs.TrainingPair``s (their audio is cut with ``settings``) or
    ``Sample``s. ``model``: an already converted PyTorch model of ``base_folder`` (default:
    ``convert.to_torch(base_folder)``). Returns the trained model (the best validation
    state) and the run's figures. ``progress(phase, done, total)`` is called for "encode"
    (per sample), "train" (per step) and "validate" (per evaluation).
    """
    import torch

    options = options or TrainOptions()
    folder = Path(base_folder)
    t_start = time.perf_counter()
    samples: list[Sample] = []
    pending = [p for p in pairs if not isinstance(p, Sample)]
    if pending:
        if settings is None:
            raise ConfigError("Training on TrainingPairs needs the settings to cut their audio.")
        samples.extend(samples_from_pairs(pending, settings))  # type: ignore[arg-type]
    samples.extend(p for p in pairs if isinstance(p, Sample))
    if not samples:
        raise ConfigError("Training needs at least one pair; got none.")
    device = resolve_device(options.device)
    threads = options.threads or (settings.cpu_threads if settings else 0) or os.cpu_count() or 1

    if model is None:
        from pipeline.adaptation.convert import to_torch

        model = to_torch(folder)
    model.to(device)
    multilingual = int(model.config.vocab_size) >= 51865
    tokens = WhisperTokens(folder, multilingual)

    train_samples, val_samples = _split_validation(samples, options)
    general: list[Sample] = []
    if options.general_mix_share > 0:
        gdir = options.general_dir or (settings.samples_dir if settings else
                                       Path("samples")) / "general_speech"
        general = general_training_samples(gdir)
    with _torch_settings(threads, options.seed):
        trainable = _freeze(model, options)
        n_trainable = sum(p.numel() for p in trainable)
        model.eval()
        t_enc = time.perf_counter()
        total_enc = len(train_samples) + len(val_samples) + len(general)
        train_ex, skipped, done = _encode_all(model, train_samples, tokens, options, device,
                                              progress, total_enc, 0)
        val_ex, skipped_v, done = _encode_all(model, val_samples, tokens, options, device,
                                              progress, total_enc, done)
        gen_ex, _, _ = _encode_all(model, general, tokens, options, device, progress,
                                   total_enc, done)
        encode_s = time.perf_counter() - t_enc
        if not train_ex:
            raise ConfigError("No training pair was usable (empty audio or text, or a text "
                              "too long for one 30-second window).")
        rng = random.Random(options.seed)
        n_general = 0
        if gen_ex:
            share = options.general_mix_share
            n_general = round(share * len(train_ex) / (1.0 - share))
        per_epoch = len(train_ex) + n_general
        steps_per_epoch = math.ceil(per_epoch / options.batch_size)
        total_steps = options.epochs * steps_per_epoch
        if options.max_steps is not None:
            total_steps = min(total_steps, options.max_steps)
        eval_every = options.eval_every or steps_per_epoch
        warmup = max(1, round(options.warmup_share * total_steps)) if options.warmup_share else 0

        optimizer = torch.optim.AdamW(trainable, lr=options.learning_rate,
                                      weight_decay=options.weight_decay)

        def lr_factor(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            remaining = max(total_steps - warmup, 1)
            return max(0.0, 1.0 - (step - warmup) / remaining)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        val_losses: list[float] = []
        train_losses: list[float] = []
        best_loss = _mean_loss(model, val_ex, options, device) if val_ex else math.inf
        if val_ex:
            val_losses.append(best_loss)
        best_state = _snapshot(trainable) if val_ex else None
        best_step, bad_evals, step = 0, 0, 0
        stopped = "epochs"
        deadline = (t_start + 60.0 * options.max_minutes) if options.max_minutes else None
        running: list[float] = []
        model.train()
        done_training = False
        for _epoch in range(options.epochs):
            order = list(train_ex)
            if gen_ex and n_general:
                order += [rng.choice(gen_ex) for _ in range(n_general)]
            rng.shuffle(order)
            for start in range(0, len(order), options.batch_size):
                batch = order[start:start + options.batch_size]
                loss = _batch_loss(model, batch, options, device)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if options.grad_clip:
                    torch.nn.utils.clip_grad_norm_(trainable, options.grad_clip)
                optimizer.step()
                scheduler.step()
                step += 1
                running.append(float(loss.detach()))
                if progress:
                    progress("train", step, total_steps)
                if step % eval_every == 0 or step == total_steps:
                    train_losses.append(float(np.mean(running)))
                    running = []
                    if val_ex:
                        current = _mean_loss(model, val_ex, options, device)
                        val_losses.append(current)
                        if progress:
                            progress("validate", len(val_losses) - 1,
                                     math.ceil(total_steps / eval_every))
                        if current < best_loss - 1e-6:
                            best_loss, best_step, bad_evals = current, step, 0
                            best_state = _snapshot(trainable)
                        else:
                            bad_evals += 1
                            if bad_evals >= options.patience:
                                stopped, done_training = "early_stop", True
                    else:
                        best_step = step
                if step >= total_steps:
                    if step < options.epochs * steps_per_epoch and stopped == "epochs":
                        stopped = "max_steps"
                    done_training = True
                if deadline is not None and time.perf_counter() > deadline and not done_training:
                    stopped, done_training = "time_limit", True
                    if not val_ex:
                        best_step = step
                if done_training:
                    break
            if done_training:
                break
        if running:
            train_losses.append(float(np.mean(running)))
        if best_state is not None:
            _restore(trainable, best_state)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    seconds = time.perf_counter() - t_start
    result = TrainResult(
        model=model, steps=step, seconds=seconds, encode_seconds=encode_s, device=device,
        train_loss=train_losses, val_loss=val_losses, best_step=best_step, stopped=stopped,
        examples=len(train_ex), validation_examples=len(val_ex),
        general_examples=n_general if gen_ex else 0, trainable_parameters=n_trainable,
        peak_rss_mb=_peak_rss_mb(),
    )
    log.info("trained steps=%d best_step=%d stopped=%s examples=%d val=%d general=%d "
             "skipped=%d device=%s threads=%d encode_s=%.1f seconds=%.1f",
             step, best_step, stopped, len(train_ex), len(val_ex), result.general_examples,
             skipped + skipped_v, device, threads, encode_s, seconds)
    return result
