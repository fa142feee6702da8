"""The shipped CTranslate2 Whisper models as PyTorch models, and back (issue #15, step 1).

The speech models ship only as CTranslate2 folders (``model.bin`` + ``config.json`` +
``tokenizer.json`` + ``vocabulary.txt``): an inference format. Fine-tuning needs the same
network in PyTorch, and the trained network has to go back into a folder faster-whisper
loads. Three functions:

- ``read_ct2(folder)``: the folder as plain data (``Ct2Model``). ``model.bin`` is read as the
  exact inverse of ``ctranslate2.specs.model_spec.ModelSpec._serialize`` (binary version 6,
  little endian)::

      u32 binary_version | str spec_name | u32 revision | u32 n_variables
      n_variables x ( str name | u8 rank | rank x u32 dim | u8 type_id | u32 n_bytes | bytes )
      u32 n_aliases | n_aliases x ( str alias | str target )
      str = u16 length (bytes incl. the trailing NUL) | bytes | NUL

  type ids as ``model_spec._dtype_to_type_id``: 0 float32, 1 int8, 2 int16, 3 int32,
  4 float16, 5 bfloat16. Values keep their stored dtype (float16 stays float16); bfloat16,
  which numpy lacks, is widened to float32, which is exact.
- ``to_torch(folder)``: a float32 ``transformers.WhisperForConditionalGeneration`` built
  from the weights' shapes. The names are those of CTranslate2's Transformers converter
  (``ctranslate2.converters.transformers.WhisperLoader``) run backwards: the fused ``q|k|v``
  of a self-attention and the fused ``k|v`` of a cross-attention are split again (Hugging
  Face's ``k_proj`` has no bias: the converter wrote zeros there, and a key bias cannot change
  attention anyway, since it adds the same amount to every key's score); int8/int16 weights
  are multiplied back by their scales. Every variable and alias in ``model.bin`` is either
  loaded or checked against the value this mapping assumes; a left-over or a missing one is
  a ``ConversionError``, never silently dropped.
- ``write_ct2(model, out, like=stock_folder)``: CTranslate2's own converter builds the spec
  from the PyTorch model (``WhisperLoader.get_model_spec``); the vocabulary, ``config.json``
  (suppressed tokens, alignment heads, language ids), ``tokenizer.json`` and any
  preprocessor config are copied from the stock folder the model came from, so an adapted
  model decodes with exactly the stock settings. Written to a temporary folder beside
  ``out`` and renamed into place: a reader sees a complete model or none. Files 0600.

float16 -> float32 -> float16 is exact (every float16 is a float32), so stock -> PyTorch ->
CTranslate2 gives back the stock weights bit for bit (tests/test_adaptation_convert.py).

torch and transformers are imported inside the functions that need them: the runtime and
``read_ct2`` never need them (``pip install -e .[train]`` adds them).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.errors import ConfigError, ModelNotFoundError, PipelineError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import WhisperForConditionalGeneration

__all__ = [
    "Ct2Model",
    "ConversionError",
    "read_ct2",
    "to_torch",
    "write_ct2",
    "train_modules",
    "BINARY_VERSION",
    "COPIED_FILES",
    "TRAIN_EXTRA_HINT",
]

log = logging.getLogger(__name__)

#: the one ``model.bin`` layout this reader knows (``model_spec.CURRENT_BINARY_VERSION`` of
#: the locked CTranslate2 4.x, and the version of both shipped models)
BINARY_VERSION = 6
#: files besides ``model.bin`` that ``write_ct2`` copies from the stock folder when present
COPIED_FILES = ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json",
                "preprocessor_config.json")
TRAIN_EXTRA_HINT = "install the train extra: pip install -e .[train]"

# model_spec._dtype_to_type_id; None: bfloat16, read as raw uint16 and widened to float32
_TYPE_IDS: dict[int, Any] = {
    0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"),
    4: np.dtype("<f2"), 5: None,
}
_SPEC_NAME = "WhisperSpec"
# Whisper's attention heads are 64 wide: the head count when model.bin does not say it
_HEAD_DIM = 64
# Flags of CTranslate2's decoder spec with the value a Whisper decoder has; WhisperLoader
# writes exactly these, so any other value is a model this mapping does not describe.
# (activation 3 = common_spec.Activation.GELU; alignment_* are the spec's defaults, the
# alignment heads faster-whisper uses come from config.json.)
_DECODER_FLAGS = {
    "decoder/activation": 3,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/alibi": 0,
    "decoder/alibi_use_positive_positions": 0,
    "decoder/scale_alibi": 0,
    "decoder/start_from_zero_embedding": 0,
    "decoder/alignment_layer": -1,
    "decoder/alignment_heads": 1,
}
# flags newer CTranslate2 specs write that older model.bin files lack (read as off)
_OPTIONAL_FLAGS = frozenset({
    "decoder/alibi", "decoder/alibi_use_positive_positions", "decoder/scale_alibi",
    "decoder/start_from_zero_embedding",
})


class ConversionError(PipelineError):
    """A model folder that cannot be read or converted as a CTranslate2 Whisper model."""

    code = "model_conversion"


@dataclass
class Ct2Model:
    """A CTranslate2 model folder as plain data.

    ``variables`` maps each stored name to its array in the stored dtype (scalars are 0-d
    arrays); ``aliases`` maps an alias name to the variable it stands for (CTranslate2 stores
    a duplicated weight once, e.g. Whisper's output projection tied to its embeddings).
    """

    spec: str
    revision: int
    binary_version: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    vocabulary: list[str] = field(default_factory=list)

    def get(self, name: str) -> np.ndarray:
        """The array stored under ``name``, following an alias; ``KeyError`` if neither."""
        return self.variables[self.aliases.get(name, name)]

    def __contains__(self, name: object) -> bool:
        return name in self.variables or name in self.aliases


# ---------------------------------------------------------------------------------------
# read_ct2: model.bin, config.json, vocabulary


class _Reader:
    """Sequential little-endian reads over the bytes of a ``model.bin``."""

    def __init__(self, data: bytearray, path: Path) -> None:
        self.data = data
        self.path = path
        self.offset = 0

    def _need(self, size: int, what: str) -> None:
        if self.offset + size > len(self.data):
            raise ConversionError(
                f"{self.path} ends at byte {len(self.data)} while reading {what} "
                f"({size} bytes at {self.offset}); expected a complete CTranslate2 model.bin."
            )

    def unpack(self, fmt: str, what: str) -> int:
        size = struct.calcsize(fmt)
        self._need(size, what)
        (value,) = struct.unpack_from(fmt, self.data, self.offset)
        self.offset += size
        return int(value)

    def string(self, what: str) -> str:
        length = self.unpack("<H", what)
        self._need(length, what)
        raw = bytes(self.data[self.offset:self.offset + length])
        self.offset += length
        if not raw or raw[-1] != 0:
            raise ConversionError(
                f"{self.path}: {what} at byte {self.offset - length} is not NUL-terminated; "
                "expected a CTranslate2 model.bin."
            )
        return raw[:-1].decode("utf-8")

    def array(self, dtype: Any, n_bytes: int, shape: tuple[int, ...], what: str) -> np.ndarray:
        self._need(n_bytes, what)
        item = 2 if dtype is None else dtype.itemsize
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * item != n_bytes:
            raise ConversionError(
                f"{self.path}: {what} has shape {list(shape)} ({count * item} bytes) but "
                f"stores {n_bytes} bytes."
            )
        # a view into the bytearray: writable, no copy
        raw = np.frombuffer(self.data, dtype="<u2" if dtype is None else dtype,
                            count=count, offset=self.offset)
        self.offset += n_bytes
        if dtype is None:  # bfloat16: the high half of a float32, so widening is exact
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.reshape(shape)


def _read_model_bin(path: Path) -> tuple[str, int, dict[str, np.ndarray], dict[str, str]]:
    try:
        size = path.stat().st_size
        data = bytearray(size)
        with path.open("rb") as fh:
            if fh.readinto(data) != size:
                raise ConversionError(f"{path} changed size while it was read.")
    except FileNotFoundError as exc:
        raise ModelNotFoundError(f"{path} does not exist; expected a CTranslate2 model.bin.") \
            from exc
    reader = _Reader(data, path)
    version = reader.unpack("<I", "the binary version")
    if version != BINARY_VERSION:
        raise ConversionError(
            f"{path} is CTranslate2 binary version {version}; this reader knows version "
            f"{BINARY_VERSION} only (the format of CTranslate2 4.x)."
        )
    spec = reader.string("the spec name")
    revision = reader.unpack("<I", "the spec revision")
    variables: dict[str, np.ndarray] = {}
    for index in range(reader.unpack("<I", "the variable count")):
        name = reader.string(f"variable {index}'s name")
        rank = reader.unpack("<B", f"{name}'s rank")
        shape = tuple(reader.unpack("<I", f"{name}'s shape") for _ in range(rank))
        type_id = reader.unpack("<B", f"{name}'s type")
        if type_id not in _TYPE_IDS:
            raise ConversionError(
                f"{path}: variable {name} has type id {type_id}; expected one of "
                f"{sorted(_TYPE_IDS)} (float32, int8, int16, int32, float16, bfloat16)."
            )
        n_bytes = reader.unpack("<I", f"{name}'s size")
        variables[name] = reader.array(_TYPE_IDS[type_id], n_bytes, shape, name)
    aliases: dict[str, str] = {}
    for index in range(reader.unpack("<I", "the alias count")):
        alias = reader.string(f"alias {index}")
        aliases[alias] = reader.string(f"the target of alias {alias}")
        if aliases[alias] not in variables:
            raise ConversionError(
                f"{path}: alias {alias} points to {aliases[alias]}, which is not stored."
            )
    if reader.offset != len(data):
        raise ConversionError(
            f"{path} has {len(data) - reader.offset} bytes after its last alias; expected "
            "the file to end there."
        )
    return spec, revision, variables, aliases


def _read_vocabulary(folder: Path) -> list[str]:
    """``vocabulary.json`` (a JSON list) or ``vocabulary.txt`` (one token a line), as
    CTranslate2 reads them; [] when the folder has neither."""
    as_json = folder / "vocabulary.json"
    if as_json.is_file():
        tokens = json.loads(as_json.read_text(encoding="utf-8"))
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ConversionError(f"{as_json} is not a JSON list of tokens.")
        return tokens
    as_text = folder / "vocabulary.txt"
    if as_text.is_file():
        # CTranslate2 reads it with getline: "\n" only (a token may hold other line breaks)
        lines = as_text.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return lines
    return []


def read_ct2(folder: Path | str) -> Ct2Model:
    """Read a CTranslate2 model folder: ``model.bin`` (see the module docstring for the
    layout), ``config.json`` and the vocabulary. ``ConversionError`` on a file that is not a
    CTranslate2 model of the known binary version; ``ModelNotFoundError`` when model.bin is
    missing."""
    folder = Path(folder)
    started = time.perf_counter()
    spec, revision, variables, aliases = _read_model_bin(folder / "model.bin")
    config: dict[str, Any] = {}
    config_path = folder / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConversionError(f"{config_path} is not valid JSON ({exc.msg}).") from exc
    model = Ct2Model(spec=spec, revision=revision, binary_version=BINARY_VERSION,
                     variables=variables, aliases=aliases, config=config,
                     vocabulary=_read_vocabulary(folder))
    log.info("read CTranslate2 model %s: %s rev %d, %d variables, %d aliases in %.2f s",
             folder.name, spec, revision, len(variables), len(aliases),
             time.perf_counter() - started)
    return model


# ---------------------------------------------------------------------------------------
# to_torch: the converter's name mapping, backwards


def train_modules() -> tuple[Any, Any]:
    """``(torch, transformers)``, or a ``ConfigError`` saying how to install them."""
    try:
        import torch
        import transformers
    except ImportError as exc:
        raise ConfigError(
            "Speech-model adaptation needs torch and transformers "
            f"({exc.name or 'one of them'} is missing): "
            f"{TRAIN_EXTRA_HINT}"
        ) from exc
    return torch, transformers


class _Taker:
    """Hands out the CT2 variables as float32 arrays and remembers which were used, so that
    a variable this mapping does not know cannot be dropped without an error."""

    def __init__(self, ct2: Ct2Model, where: str) -> None:
        self.ct2 = ct2
        self.where = where
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.ct2

    def raw(self, name: str) -> np.ndarray:
        if name not in self.ct2:
            raise ConversionError(
                f"{self.where}: model.bin has no variable {name}; expected a CTranslate2 "
                "Whisper model as written by its Transformers converter."
            )
        self.used.add(name)
        return self.ct2.get(name)

    def scalar(self, name: str) -> int:
        value = self.raw(name)
        if value.ndim != 0:
            raise ConversionError(
                f"{self.where}: {name} has shape {list(value.shape)}; expected a scalar."
            )
        return int(value)

    def float32(self, name: str) -> np.ndarray:
        """The weight as float32; int8/int16 weights multiplied back by their scale."""
        value = self.raw(name)
        if value.dtype.kind == "f":
            return value.astype(np.float32)
        scale_name = name + "_scale"
        if value.dtype in (np.int8, np.int16) and self.has(scale_name):
            # model_spec._quantize: int8 stores rint(w * 127 / amax(row)) with a scale per
            # row (conv weights flattened to 2-D first); int16 one scale for the tensor
            scale = self.raw(scale_name).astype(np.float32)
            flat = value.reshape(value.shape[0], -1).astype(np.float32)
            flat = flat / (scale[:, None] if scale.ndim == 1 else scale)
            return flat.reshape(value.shape)
        raise ConversionError(
            f"{self.where}: {name} is stored as {value.dtype} without a scale; expected a "
            "float weight or a quantized one with its scale."
        )

    def left_over(self) -> list[str]:
        names = set(self.ct2.variables) | set(self.ct2.aliases)
        # a variable read only through an alias is used too
        used = self.used | {self.ct2.aliases[n] for n in self.used if n in self.ct2.aliases}
        return sorted(names - used)


def _count_layers(ct2: Ct2Model, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"/layer_(\d+)/")
    found = {int(m.group(1)) for name in ct2.variables if (m := pattern.match(name))}
    if found != set(range(len(found))):
        raise ConversionError(
            f"{prefix} layers {sorted(found)} are not numbered 0..n-1; expected a complete "
            "CTranslate2 Whisper model."
        )
    return len(found)


def _token_id(vocabulary: list[str], token: str, where: str) -> int:
    try:
        return vocabulary.index(token)
    except ValueError:
        raise ConversionError(f"{where}: the vocabulary has no {token}; expected Whisper's.") \
            from None


@dataclass(frozen=True)
class _Shape:
    """The dimensions of a Whisper model, read from its CTranslate2 weights."""

    d_model: int
    num_mel_bins: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn: int
    decoder_ffn: int
    vocab_size: int
    max_source_positions: int
    max_target_positions: int


def _shape(ct2: Ct2Model, take: _Taker) -> _Shape:
    conv1 = take.raw("encoder/conv1/weight")
    d_model = int(conv1.shape[0])
    heads = {}
    for side in ("encoder", "decoder"):
        name = f"{side}/num_heads"
        heads[side] = take.scalar(name) if take.has(name) else d_model // _HEAD_DIM
    return _Shape(
        d_model=d_model,
        num_mel_bins=int(conv1.shape[1]),
        encoder_layers=_count_layers(ct2, "encoder"),
        decoder_layers=_count_layers(ct2, "decoder"),
        encoder_heads=heads["encoder"],
        decoder_heads=heads["decoder"],
        encoder_ffn=int(ct2.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn=int(ct2.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        vocab_size=int(ct2.get("decoder/embeddings/weight").shape[0]),
        max_source_positions=int(ct2.get("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(ct2.get("decoder/position_encodings/encodings").shape[0]),
    )


def _split(take: _Taker, name: str, parts: int,
           d_model: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """A fused linear (``utils.fuse_linear``: weights and biases concatenated on rows) cut
    back into ``parts`` (weight, bias) pairs. Whisper's projections all have a bias (but
    ``k_proj``, for which the converter fused zeros)."""
    weight = take.float32(f"{name}/weight")
    if weight.shape != (parts * d_model, d_model):
        raise ConversionError(
            f"{take.where}: {name}/weight has shape {list(weight.shape)}; expected "
            f"{[parts * d_model, d_model]}."
        )
    bias = take.float32(f"{name}/bias")
    return [(weight[i * d_model:(i + 1) * d_model], bias[i * d_model:(i + 1) * d_model])
            for i in range(parts)]


def _attention(take: _Taker, state: dict[str, np.ndarray], ct2_scope: str, hf_scope: str,
               fused: str, d_model: int) -> None:
    """One attention block. ``fused`` is "qkv" (self-attention: linear_0 = q|k|v,
    linear_1 = out) or "q,kv" (cross-attention: linear_0 = q, linear_1 = k|v,
    linear_2 = out)."""
    if fused == "qkv":
        pieces = dict(zip("qkv", _split(take, f"{ct2_scope}/linear_0", 3, d_model), strict=True))
        out = f"{ct2_scope}/linear_1"
    else:
        pieces = {"q": _split(take, f"{ct2_scope}/linear_0", 1, d_model)[0]}
        pieces.update(zip("kv", _split(take, f"{ct2_scope}/linear_1", 2, d_model), strict=True))
        out = f"{ct2_scope}/linear_2"
    for letter, (weight, bias) in pieces.items():
        state[f"{hf_scope}.{letter}_proj.weight"] = weight
        if letter == "k":
            # Hugging Face's k_proj has no bias; the converter fused zeros in its place.
            if np.any(bias):
                # Softmax ignores a bias added to every key alike, so dropping it changes no
                # output, but the round trip would no longer give back the same file.
                log.warning("%s: dropping a non-zero key bias (max |b| %.3g): it does not "
                            "change attention", ct2_scope, float(np.abs(bias).max()))
            continue
        state[f"{hf_scope}.{letter}_proj.bias"] = bias
    state[f"{hf_scope}.out_proj.weight"] = take.float32(f"{out}/weight")
    state[f"{hf_scope}.out_proj.bias"] = take.float32(f"{out}/bias")


def _layer_norm(take: _Taker, state: dict[str, np.ndarray], ct2_scope: str,
                hf_name: str) -> None:
    state[f"{hf_name}.weight"] = take.float32(f"{ct2_scope}/gamma")
    state[f"{hf_name}.bias"] = take.float32(f"{ct2_scope}/beta")


def _linear(take: _Taker, state: dict[str, np.ndarray], ct2_scope: str, hf_name: str) -> None:
    state[f"{hf_name}.weight"] = take.float32(f"{ct2_scope}/weight")
    state[f"{hf_name}.bias"] = take.float32(f"{ct2_scope}/bias")


def _state_dict(ct2: Ct2Model, take: _Taker, shape: _Shape) -> tuple[dict[str, np.ndarray],
                                                                      bool]:
    """The Hugging Face state dict (float32 numpy) and whether the output projection is the
    embedding matrix (tied)."""
    d = shape.d_model
    state: dict[str, np.ndarray] = {}
    for flag, expected in _DECODER_FLAGS.items():
        if flag in _OPTIONAL_FLAGS and not take.has(flag):
            continue
        value = take.scalar(flag)
        if value != expected:
            raise ConversionError(
                f"{take.where}: {flag} is {value}; a Whisper decoder has {expected}."
            )

    enc = "model.encoder"
    for conv in ("conv1", "conv2"):
        _linear(take, state, f"encoder/{conv}", f"{enc}.{conv}")
    # sinusoids in Whisper, a frozen table in Hugging Face: loaded as stored (float16 values)
    state[f"{enc}.embed_positions.weight"] = take.float32("encoder/position_encodings/encodings")
    _layer_norm(take, state, "encoder/layer_norm", f"{enc}.layer_norm")
    for i in range(shape.encoder_layers):
        src, dst = f"encoder/layer_{i}", f"{enc}.layers.{i}"
        _attention(take, state, f"{src}/self_attention", f"{dst}.self_attn", "qkv", d)
        _layer_norm(take, state, f"{src}/self_attention/layer_norm",
                    f"{dst}.self_attn_layer_norm")
        _linear(take, state, f"{src}/ffn/linear_0", f"{dst}.fc1")
        _linear(take, state, f"{src}/ffn/linear_1", f"{dst}.fc2")
        _layer_norm(take, state, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")

    dec = "model.decoder"
    state[f"{dec}.embed_tokens.weight"] = take.float32("decoder/embeddings/weight")
    state[f"{dec}.embed_positions.weight"] = take.float32("decoder/position_encodings/encodings")
    _layer_norm(take, state, "decoder/layer_norm", f"{dec}.layer_norm")
    for i in range(shape.decoder_layers):
        src, dst = f"decoder/layer_{i}", f"{dec}.layers.{i}"
        _attention(take, state, f"{src}/self_attention", f"{dst}.self_attn", "qkv", d)
        _layer_norm(take, state, f"{src}/self_attention/layer_norm",
                    f"{dst}.self_attn_layer_norm")
        _attention(take, state, f"{src}/attention", f"{dst}.encoder_attn", "q,kv", d)
        _layer_norm(take, state, f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
        _linear(take, state, f"{src}/ffn/linear_0", f"{dst}.fc1")
        _linear(take, state, f"{src}/ffn/linear_1", f"{dst}.fc2")
        _layer_norm(take, state, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")

    # Whisper ties the output projection to the embeddings; CTranslate2 stores it as an alias
    projection = "decoder/projection/weight"
    stored = take.raw(projection)
    tied = (ct2.aliases.get(projection) == "decoder/embeddings/weight"
            or np.array_equal(stored, ct2.get("decoder/embeddings/weight")))
    state["proj_out.weight"] = (state[f"{dec}.embed_tokens.weight"] if tied
                                else take.float32(projection))
    if take.has("decoder/projection/bias"):
        bias = take.float32("decoder/projection/bias")
        if np.any(bias):
            raise ConversionError(
                f"{take.where}: decoder/projection/bias is not zero; Whisper's output "
                "projection has no bias."
            )
    return state, tied


def _special_ids(vocabulary: list[str], where: str) -> dict[str, int]:
    return {
        "eot": _token_id(vocabulary, "<|endoftext|>", where),
        "sot": _token_id(vocabulary, "<|startoftranscript|>", where),
        "no_timestamps": _token_id(vocabulary, "<|notimestamps|>", where),
        "transcribe": _token_id(vocabulary, "<|transcribe|>", where),
        "translate": _token_id(vocabulary, "<|translate|>", where),
        "prev": _token_id(vocabulary, "<|startofprev|>", where),
    }


def _generation_config(transformers: Any, ct2: Ct2Model, shape: _Shape,
                       ids: dict[str, int]) -> Any:
    """What Hugging Face's Whisper ``generate`` needs, from CTranslate2's ``config.json``
    and the vocabulary (the fields ``WhisperLoader.set_config`` reads back)."""
    # faster-whisper's rule: the multilingual vocabularies have 51865 or more tokens
    multilingual = shape.vocab_size >= 51865
    config = ct2.config
    gen = transformers.GenerationConfig(
        decoder_start_token_id=ids["sot"],
        bos_token_id=ids["eot"],
        eos_token_id=ids["eot"],
        pad_token_id=ids["eot"],
        max_length=shape.max_target_positions,
        suppress_tokens=list(config.get("suppress_ids") or []),
        begin_suppress_tokens=list(config.get("suppress_ids_begin") or []),
        no_timestamps_token_id=ids["no_timestamps"],
        prev_sot_token_id=ids["prev"],
        max_initial_timestamp_index=50,
        is_multilingual=multilingual,
        return_timestamps=False,
    )
    if config.get("alignment_heads"):
        gen.alignment_heads = [list(pair) for pair in config["alignment_heads"]]
    if multilingual:
        gen.lang_to_id = {ct2.vocabulary[i]: int(i) for i in config.get("lang_ids") or []}
        gen.task_to_id = {"transcribe": ids["transcribe"], "translate": ids["translate"]}
    return gen


def to_torch(folder: Path | str) -> WhisperForConditionalGeneration:
    """The CTranslate2 Whisper model in ``folder`` as a float32 Hugging Face
    ``WhisperForConditionalGeneration`` (eval mode, on the CPU), with a generation config
    taken from the folder's ``config.json`` and vocabulary.

    Raises ``ConversionError`` when the folder is not a Whisper model this mapping covers
    (a variable left over, one missing, a flag with another value), ``ConfigError`` when
    torch/transformers are not installed."""
    torch, transformers = train_modules()
    folder = Path(folder)
    started = time.perf_counter()
    ct2 = read_ct2(folder)
    where = f"CTranslate2 model {folder}"
    if ct2.spec != _SPEC_NAME:
        raise ConversionError(f"{where} is a {ct2.spec}; expected a {_SPEC_NAME}.")
    take = _Taker(ct2, where)
    shape = _shape(ct2, take)
    if len(ct2.vocabulary) != shape.vocab_size:
        raise ConversionError(
            f"{where}: the vocabulary has {len(ct2.vocabulary)} tokens and the embeddings "
            f"{shape.vocab_size} rows; expected the same."
        )
    state, tied = _state_dict(ct2, take, shape)
    left = take.left_over()
    if left:
        raise ConversionError(
            f"{where}: {len(left)} variable(s) this conversion does not know, e.g. "
            f"{', '.join(left[:5])}; expected only a Whisper model's."
        )
    ids = _special_ids(ct2.vocabulary, where)
    config = transformers.WhisperConfig(
        vocab_size=shape.vocab_size,
        num_mel_bins=shape.num_mel_bins,
        d_model=shape.d_model,
        encoder_layers=shape.encoder_layers,
        decoder_layers=shape.decoder_layers,
        encoder_attention_heads=shape.encoder_heads,
        decoder_attention_heads=shape.decoder_heads,
        encoder_ffn_dim=shape.encoder_ffn,
        decoder_ffn_dim=shape.decoder_ffn,
        max_source_positions=shape.max_source_positions,
        max_target_positions=shape.max_target_positions,
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=tied,
        pad_token_id=ids["eot"],
        bos_token_id=ids["eot"],
        eos_token_id=ids["eot"],
        decoder_start_token_id=ids["sot"],
        suppress_tokens=list(ct2.config.get("suppress_ids") or []),
        begin_suppress_tokens=list(ct2.config.get("suppress_ids_begin") or []),
    )
    # built on the meta device (no random initialisation: 2.6 s for tiny.en), then the
    # tensors are assigned as they are
    with torch.device("meta"):
        model = transformers.WhisperForConditionalGeneration(config)
    expected = set(model.state_dict())
    if expected != set(state):
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ConversionError(
            f"{where}: the mapping does not fit this transformers' Whisper (missing "
            f"{missing[:5]}, unexpected {extra[:5]}); expected transformers as pinned in the "
            "train extra."
        )
    with torch.no_grad():
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True,
                              assign=True)
    if tied:
        model.tie_weights()  # assign=True put two tensors where one parameter was shared
        if model.proj_out.weight is not model.model.decoder.embed_tokens.weight:
            raise ConversionError(f"{where}: transformers did not tie the output projection.")
    on_meta = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if on_meta:
        raise ConversionError(f"{where}: {', '.join(on_meta[:5])} got no value.")
    model.generation_config = _generation_config(transformers, ct2, shape, ids)
    model.eval()
    log.info("built PyTorch Whisper from %s: d_model %d, %d+%d layers, %d parameters in %.2f s",
             folder.name, shape.d_model, shape.encoder_layers, shape.decoder_layers,
             sum(p.numel() for p in model.parameters()), time.perf_counter() - started)
    return model


# ---------------------------------------------------------------------------------------
# write_ct2: CTranslate2's own converter, the stock folder's settings


def _detached_copy(model: Any, torch: Any, transformers: Any) -> Any:
    """A CPU copy of the model for the converter to consume. Never the model itself: the
    converter quantizes in place on numpy views of the tensors it is given (int8 would
    rewrite the caller's weights), and it reads tensor memory through raw pointers, which
    must be host memory (a model trained on CUDA)."""
    if not isinstance(model, transformers.WhisperForConditionalGeneration):
        raise ConversionError(
            f"write_ct2 got a {type(model).__name__}; expected a "
            "transformers.WhisperForConditionalGeneration (merge any adapters first)."
        )
    with torch.device("meta"):
        copy = transformers.WhisperForConditionalGeneration(model.config)
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    copy.load_state_dict(state, strict=True, assign=True)
    if getattr(model.config, "tie_word_embeddings", False):
        copy.tie_weights()
    return copy


def _as_numpy(spec: Any, torch: Any) -> None:
    """Replace the spec's tensors by numpy views of them (the copy's memory, nothing is
    copied). Same bytes out; but ``optimize`` compares every pair of weights to find
    duplicates, and numpy's comparison stops at the first element where torch.equal reads
    both tensors whole: 3.3 of the 8 s a tiny.en write took. bfloat16 (a model trained in
    it), which numpy lacks, is widened to float32 first: exact."""
    from ctranslate2.specs.model_spec import visit_spec

    def numpy_view(layer: Any, name: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            if value.dtype == torch.bfloat16:
                value = value.float()
            setattr(layer, name.rsplit("/", 1)[-1], value.detach().numpy())

    visit_spec(spec, numpy_view)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_ct2(model: WhisperForConditionalGeneration, out_folder: Path | str, *, like: Path,
              quantization: str = "float16") -> Path:
    """Write ``model`` as a CTranslate2 Whisper folder at ``out_folder`` and return it.

    ``like`` is the stock folder the model was converted from: its vocabulary, config.json,
    tokenizer.json and preprocessor config are copied, so the new folder decodes with the
    stock settings. ``quantization`` is CTranslate2's weight type (float16, as shipped;
    int8, float32, ... as ``ctranslate2.specs.model_spec.ACCEPTED_MODEL_TYPES``).

    The folder is written beside ``out_folder`` and renamed into place (``out_folder`` must
    not exist or be empty: a model version is never overwritten); its files are 0600.
    ``ConversionError`` when the model does not fit ``like``'s vocabulary or the converter
    refuses it."""
    torch, transformers = train_modules()
    from ctranslate2.converters.transformers import WhisperLoader
    from ctranslate2.specs.model_spec import ACCEPTED_MODEL_TYPES

    like, out = Path(like), Path(out_folder)
    started = time.perf_counter()
    if quantization not in ACCEPTED_MODEL_TYPES:
        raise ConversionError(
            f"Quantization {quantization!r} is not one of CTranslate2's "
            f"({', '.join(ACCEPTED_MODEL_TYPES)})."
        )
    if not (like / "model.bin").is_file():
        raise ModelNotFoundError(f"Stock model folder {like} has no model.bin.")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out} already exists; expected a new (or empty) folder.")
    vocabulary = _read_vocabulary(like)
    if not vocabulary:
        raise ConversionError(f"Stock model folder {like} has no vocabulary file.")

    with torch.no_grad():
        spec = WhisperLoader().get_model_spec(_detached_copy(model, torch, transformers))
        _as_numpy(spec, torch)
        spec.register_vocabulary(vocabulary)
        try:
            spec.validate()
        except ValueError as exc:
            raise ConversionError(
                f"The PyTorch model does not fit the stock model {like.name} ({exc})."
            ) from exc
        spec.optimize(quantization=quantization)

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            spec.save(str(tmp))
            # the stock folder's settings and tokenizer, byte for byte
            for name in ("config.json", "vocabulary.json", "vocabulary.txt"):
                (tmp / name).unlink(missing_ok=True)
            for name in _present(like, COPIED_FILES):
                shutil.copyfile(like / name, tmp / name)
            for path in tmp.iterdir():
                path.chmod(0o600)
                _fsync(path)
            _fsync(tmp)
            os.replace(tmp, out)  # rename(2): replaces an empty folder, never a full one
            _fsync(out.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("wrote CTranslate2 model %s (%s) in %.2f s", out.name, quantization,
             time.perf_counter() - started)
    return out


def _present(folder: Path, names: Iterable[str]) -> list[str]:
    return [name for name in names if (folder / name).is_file()]
