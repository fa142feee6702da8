"""The shipped CTranslate2 models rebuilt in PyTorch and written back
(``pipeline.adaptation.convert``).

- The reader is the exact inverse of CTranslate2's own writer: every dtype, scalars and
  aliases that ``ModelSpec.save`` writes come back equal; damaged files are refused.
- tiny.en: stock -> PyTorch -> CTranslate2 gives back every stock variable bit for bit, and
  faster-whisper transcribes the samples with the same words from both folders.
- The PyTorch model itself decodes: Hugging Face's greedy ``generate`` says what
  faster-whisper's greedy decode of the stock model says.
- base (multilingual, shipped in two parts): the same round trip, once.

torch is imported at the top on purpose: the dev install carries the train extra, and a
missing torch must fail this module, not skip it.
"""

from __future__ import annotations

import copy
import shutil
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import pytest
import torch
from ctranslate2.specs import model_spec
from faster_whisper import WhisperModel
from faster_whisper.audio import decode_audio, pad_or_trim
from faster_whisper.feature_extractor import FeatureExtractor

from pipeline.adaptation import convert
from pipeline.adaptation.convert import ConversionError, Ct2Model, read_ct2, to_torch, write_ct2
from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings
from pipeline.speech.models import model_files

# Three general-speech samples for the transcription comparisons (11 s, 7 s, 3.5 s).
ROUND_TRIP_SAMPLES = (
    "jfk.flac",
    "librivox_sense_and_sensibility_01_austen_64kb-0870.wav",
    "cards_005.wav",
)


# --- helpers ---------------------------------------------------------------------------


class _RawSpec(model_spec.ModelSpec):
    """CTranslate2's own writer (``ModelSpec._serialize``) over a given set of variables and
    aliases: the way to write a model.bin that differs from a stock one in a known way."""

    def __init__(self, name: str, revision: int, variables: dict[str, np.ndarray],
                 aliases: dict[str, str]) -> None:
        super().__init__()
        self._spec_name = name
        self._spec_revision = revision
        self._raw_variables = variables
        self._raw_aliases = aliases

    @property
    def name(self) -> str:
        return self._spec_name

    @property
    def revision(self) -> int:
        return self._spec_revision

    def variables(self, prefix: str = "", ordered: bool = False) -> Any:
        items: list[tuple[str, Any]] = [
            (k, model_spec.NumpyVariable(v)) for k, v in self._raw_variables.items()]
        items += list(self._raw_aliases.items())
        return sorted(items, key=lambda item: item[0])


def _rewrite(stock: Ct2Model, like: Path, out: Path,
             change: Callable[[dict[str, np.ndarray], dict[str, str]], None]) -> Path:
    """A copy of a stock folder whose model.bin has ``change`` applied to its variables."""
    variables, aliases = dict(stock.variables), dict(stock.aliases)
    change(variables, aliases)
    out.mkdir(parents=True)
    _RawSpec(stock.spec, stock.revision, variables, aliases).save(str(out))
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(like / name, out / name)
    return out


def _assert_same_variables(stock: Ct2Model, written: Ct2Model) -> None:
    """Every stock variable is in the written model with the same dtype, shape and bits;
    the aliases are the same. float16 -> float32 -> float16 is exact (every float16 value is
    a float32 value, and rounding a float32 that is a float16 gives it back), so equality is
    exact, not approximate."""
    assert (written.spec, written.revision) == (stock.spec, stock.revision)
    assert written.aliases == stock.aliases
    missing = sorted(set(stock.variables) - set(written.variables))
    assert not missing
    differ = [name for name, value in stock.variables.items()
              if written.variables[name].dtype != value.dtype
              or not np.array_equal(written.variables[name], value)]
    assert differ == []
    # The locked CTranslate2 writes two decoder flags that the shipped files (written by an
    # older converter) lack; the runtime reads a missing flag as off, and both are off.
    extra = {name: written.variables[name]
             for name in set(written.variables) - set(stock.variables)}
    assert all(value.ndim == 0 and int(value) == 0 for value in extra.values()), extra


def _words(text: str) -> str:
    return jiwer.RemoveMultipleSpaces()(jiwer.RemovePunctuation()(text.lower())).strip()


def _transcribe(folder: Path, audio: np.ndarray, *, beam_size: int) -> str:
    model = WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=2)
    segments, _ = model.transcribe(audio, language="en", beam_size=beam_size, temperature=0.0,
                                   condition_on_previous_text=False, vad_filter=False,
                                   without_timestamps=True)
    return " ".join(s.text.strip() for s in segments)


# --- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings on a data directory shared by this module (base is joined into it once)."""
    return Settings(data_dir=tmp_path_factory.mktemp("convert") / "var", model="tiny.en",
                    device="cpu", compute_type="int8")


@pytest.fixture(scope="module")
def tiny_stock(model_settings: Settings) -> Path:
    return model_files("tiny.en", model_settings)


@pytest.fixture(scope="module")
def tiny_torch(tiny_stock: Path) -> Any:
    return to_torch(tiny_stock)


@pytest.fixture(scope="module")
def tiny_round_trip(tiny_torch: Any, tiny_stock: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ct2(tiny_torch, tmp_path_factory.mktemp("tiny") / "round-trip",
                     like=tiny_stock)


# --- the reader ------------------------------------------------------------------------


class _Layer(model_spec.LayerSpec):
    """A layer of a test spec with the given attributes."""

    def __init__(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            setattr(self, key, value)


def test_read_ct2_is_the_inverse_of_ctranslate2s_writer(tmp_path: Path) -> None:
    """Each dtype CTranslate2 stores, scalars, and an alias come back as written."""
    rng = np.random.default_rng(7)
    arrays: dict[str, np.ndarray] = {
        "a/float32": rng.standard_normal((3, 5)).astype(np.float32),
        "a/float16": rng.standard_normal((4, 2, 3)).astype(np.float16),
        "b/int8": rng.integers(-128, 127, (6,), dtype=np.int8),
        "b/int16": rng.integers(-3000, 3000, (2, 2), dtype=np.int16),
        "b/int32": np.array([1, -2, 2**30], dtype=np.int32),
        "c/flag": np.array(True),
        "c/heads": np.array(6, dtype=np.int16),
    }
    bf16 = torch.tensor([1.5, -2.25, 3.0e-3, 1.0e30], dtype=torch.bfloat16)

    class Spec(model_spec.ModelSpec):
        def __init__(self) -> None:
            super().__init__()
            self.a = _Layer({"float32": arrays["a/float32"], "float16": arrays["a/float16"]})
            self.b = _Layer({"int8": arrays["b/int8"], "int16": arrays["b/int16"],
                             "int32": arrays["b/int32"], "bfloat16": bf16})
            # duplicate: the same values as a/float32, so CTranslate2 stores an alias
            self.c = _Layer({"flag": True, "heads": arrays["c/heads"],
                             "duplicate": arrays["a/float32"].copy()})

        @property
        def name(self) -> str:
            return "TestSpec"

        @property
        def revision(self) -> int:
            return 9

    spec = Spec()
    spec.validate()
    spec.optimize(quantization=None)  # aliases c/duplicate, converts nothing
    spec.save(str(tmp_path))

    model = read_ct2(tmp_path)
    assert (model.spec, model.revision, model.binary_version) == ("TestSpec", 9, 6)
    assert model.aliases == {"c/duplicate": "a/float32"}
    for name in ("a/float32", "a/float16", "b/int8", "b/int16", "b/int32"):
        assert model.variables[name].dtype == arrays[name].dtype
        assert np.array_equal(model.variables[name], arrays[name])
    assert model.variables["c/flag"].shape == () and int(model.variables["c/flag"]) == 1
    assert model.variables["c/heads"].dtype == np.int16 and int(model.variables["c/heads"]) == 6
    # bfloat16 (which numpy lacks) comes back widened to float32, exactly
    assert model.variables["b/bfloat16"].dtype == np.float32
    assert np.array_equal(model.variables["b/bfloat16"], bf16.float().numpy())
    assert np.array_equal(model.get("c/duplicate"), arrays["a/float32"])
    assert model.config == {} and model.vocabulary == []


def test_read_ct2_reads_the_shipped_tiny_model(tiny_stock: Path) -> None:
    """tiny.en as measured in STACK-NOTES: binary version 6, 148 float16/scalar variables,
    the output projection an alias of the embeddings, float16 kept as float16."""
    model = read_ct2(tiny_stock)
    assert (model.spec, model.revision) == ("WhisperSpec", 3)
    assert len(model.variables) == 148
    assert model.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    weights = [v for v in model.variables.values() if v.ndim > 0]
    assert weights and all(v.dtype == np.float16 for v in weights)
    assert model.get("decoder/embeddings/weight").shape == (len(model.vocabulary), 384)
    assert model.vocabulary[50256:50258] == ["<|endoftext|>", "<|startoftranscript|>"]
    assert model.config["alignment_heads"] and model.config["suppress_ids"]


@pytest.mark.parametrize(("damage", "message"), [
    (lambda data: struct.pack("<I", 99) + data[4:], "binary version 99"),
    (lambda data: data[: len(data) // 2], "ends at byte"),
    (lambda data: data + b"\0\0", "2 bytes after its last alias"),
    (lambda data: data[:4] + struct.pack("<H", 5) + b"abcde" + data[4 + 2 + 5:],
     "not NUL-terminated"),
], ids=["unknown-version", "truncated", "trailing-bytes", "bad-string"])
def test_read_ct2_refuses_a_damaged_model_bin(tmp_path: Path, damage: Callable[[bytes], bytes],
                                              message: str) -> None:
    intact = tmp_path / "intact"
    intact.mkdir()
    _RawSpec("WhisperSpec", 3, {"a/weight": np.ones((4, 3), np.float16),
                                "a/heads": np.array(6, dtype=np.int16)},
             {"b/weight": "a/weight"}).save(str(intact))
    assert read_ct2(intact).aliases == {"b/weight": "a/weight"}
    (tmp_path / "model.bin").write_bytes(damage((intact / "model.bin").read_bytes()))
    with pytest.raises(ConversionError, match=message):
        read_ct2(tmp_path)


# --- to_torch's accounting of every variable -------------------------------------------


@pytest.mark.slow
def test_to_torch_refuses_a_variable_it_does_not_know(tiny_stock: Path, tmp_path: Path) -> None:
    """A variable the mapping does not load is an error, never silently dropped."""
    def add(variables: dict[str, np.ndarray], aliases: dict[str, str]) -> None:
        variables["decoder/layer_0/ffn/extra/weight"] = np.ones((2, 2), np.float16)

    folder = _rewrite(read_ct2(tiny_stock), tiny_stock, tmp_path / "m", add)
    with pytest.raises(ConversionError, match="decoder/layer_0/ffn/extra/weight"):
        to_torch(folder)


@pytest.mark.slow
def test_to_torch_refuses_a_missing_variable(tiny_stock: Path, tmp_path: Path) -> None:
    def drop(variables: dict[str, np.ndarray], aliases: dict[str, str]) -> None:
        del variables["decoder/layer_1/attention/linear_1/bias"]

    folder = _rewrite(read_ct2(tiny_stock), tiny_stock, tmp_path / "m", drop)
    with pytest.raises(ConversionError, match="no variable decoder/layer_1/attention/linear_1"):
        to_torch(folder)


@pytest.mark.slow
def test_to_torch_refuses_a_decoder_flag_whisper_does_not_have(tiny_stock: Path,
                                                               tmp_path: Path) -> None:
    def relu(variables: dict[str, np.ndarray], aliases: dict[str, str]) -> None:
        variables["decoder/activation"] = np.array(0, dtype=np.int8)

    folder = _rewrite(read_ct2(tiny_stock), tiny_stock, tmp_path / "m", relu)
    with pytest.raises(ConversionError, match="decoder/activation is 0"):
        to_torch(folder)


def test_missing_torch_names_the_train_extra(monkeypatch: pytest.MonkeyPatch,
                                             tiny_stock: Path) -> None:
    """Without torch the error says what to install (a None entry makes the import fail)."""
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ConfigError, match=r"pip install -e \.\[train\]"):
        to_torch(tiny_stock)
    # the reader needs no torch
    assert read_ct2(tiny_stock).spec == "WhisperSpec"


# --- tiny.en round trip ----------------------------------------------------------------


@pytest.mark.slow
def test_tiny_round_trip_gives_back_the_stock_weights(tiny_stock: Path,
                                                      tiny_round_trip: Path) -> None:
    """stock -> PyTorch (float32) -> CTranslate2 (float16): every variable bit for bit, and
    the stock folder's config, tokenizer and vocabulary copied byte for byte, 0600."""
    _assert_same_variables(read_ct2(tiny_stock), read_ct2(tiny_round_trip))
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        assert (tiny_round_trip / name).read_bytes() == (tiny_stock / name).read_bytes()
    assert sorted(p.name for p in tiny_round_trip.iterdir()) == [
        "config.json", "model.bin", "tokenizer.json", "vocabulary.txt"]
    assert {p.stat().st_mode & 0o777 for p in tiny_round_trip.iterdir()} == {0o600}


@pytest.mark.slow
def test_torch_model_is_the_stock_network(tiny_torch: Any, tiny_stock: Path) -> None:
    """The PyTorch model is float32, ties its output projection to the embeddings, and
    holds the stock float16 values."""
    stock = read_ct2(tiny_stock)
    params = dict(tiny_torch.named_parameters())
    assert {p.dtype for p in params.values()} == {torch.float32}
    assert tiny_torch.proj_out.weight is tiny_torch.model.decoder.embed_tokens.weight
    q, k, v = np.split(stock.get("encoder/layer_2/self_attention/linear_0/weight"), 3)
    attn = tiny_torch.model.encoder.layers[2].self_attn
    for proj, part in ((attn.q_proj, q), (attn.k_proj, k), (attn.v_proj, v)):
        assert np.array_equal(proj.weight.detach().numpy(), part.astype(np.float32))
    assert attn.k_proj.bias is None
    cross_k, _ = np.split(stock.get("decoder/layer_1/attention/linear_1/weight"), 2)
    assert np.array_equal(
        tiny_torch.model.decoder.layers[1].encoder_attn.k_proj.weight.detach().numpy(),
        cross_k.astype(np.float32))


@pytest.mark.slow
def test_hf_generate_says_what_faster_whisper_says(tiny_torch: Any, tiny_stock: Path,
                                                   samples_dir: Path) -> None:
    """Greedy decoding of one sample by Hugging Face's ``generate`` on the PyTorch model and
    by faster-whisper on the stock folder. Both compute in float32 on the same float16
    values, but with different GEMM kernels (PyTorch's vs CTranslate2's oneDNN/MKL), so the
    logits differ in the last bits and a near-tie could flip one greedy choice. Allowed: 1 word
    in 10 (2 of jfk's 22 words); measured: identical on all 12 general-speech samples."""
    from faster_whisper.tokenizer import Tokenizer
    from tokenizers import Tokenizer as HfTokenizer

    audio = decode_audio(str(samples_dir / "general_speech" / "jfk.flac"))
    features = pad_or_trim(FeatureExtractor(feature_size=tiny_torch.config.num_mel_bins)(audio))
    with torch.inference_mode():
        generated = tiny_torch.generate(torch.from_numpy(features)[None],
                                        return_timestamps=False, num_beams=1, do_sample=False)
    tokenizer = Tokenizer(HfTokenizer.from_file(str(tiny_stock / "tokenizer.json")),
                          multilingual=False)
    hf_text = tokenizer.decode([t for t in generated[0].tolist() if t < tokenizer.eot])

    model = WhisperModel(str(tiny_stock), device="cpu", compute_type="float32", cpu_threads=2)
    segments, _ = model.transcribe(audio, beam_size=1, temperature=0.0, vad_filter=False,
                                   condition_on_previous_text=False, without_timestamps=True)
    ct2_text = " ".join(s.text.strip() for s in segments)

    assert len(_words(ct2_text).split()) >= 15  # the sample was understood at all
    assert jiwer.wer(_words(ct2_text), _words(hf_text)) <= 0.1


@pytest.mark.slow
def test_round_trip_transcribes_like_the_stock_model(tiny_stock: Path, tiny_round_trip: Path,
                                                     samples_dir: Path) -> None:
    """Identical weights and settings: faster-whisper says exactly the same words."""
    for sample in ROUND_TRIP_SAMPLES:
        audio = decode_audio(str(samples_dir / "general_speech" / sample))
        stock_text = _transcribe(tiny_stock, audio, beam_size=5)
        assert stock_text.strip(), sample
        assert _transcribe(tiny_round_trip, audio, beam_size=5) == stock_text, sample


# --- write_ct2 -------------------------------------------------------------------------


@pytest.mark.slow
def test_write_ct2_never_overwrites_a_model_folder(tiny_torch: Any, tiny_stock: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "v1"
    out.mkdir()
    (out / "model.bin").write_bytes(b"an earlier version")
    with pytest.raises(ConversionError, match="already exists"):
        write_ct2(tiny_torch, out, like=tiny_stock)
    assert (out / "model.bin").read_bytes() == b"an earlier version"
    with pytest.raises(ConversionError, match="Quantization 'int3'"):
        write_ct2(tiny_torch, tmp_path / "v2", like=tiny_stock, quantization="int3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]  # no temporary folder left


@pytest.mark.slow
def test_int8_model_converts_back_within_its_quantisation_step(tiny_torch: Any,
                                                               tiny_stock: Path,
                                                               tmp_path: Path) -> None:
    """An int8 folder (weights and a scale per row) reads back as float32 weights within
    half a quantisation step of the originals. Writing leaves the PyTorch model as it was
    (CTranslate2's converter quantizes in place on what it is given)."""
    before = {n: p.detach().clone() for n, p in tiny_torch.named_parameters()}
    folder = write_ct2(tiny_torch, tmp_path / "int8", like=tiny_stock, quantization="int8")
    assert all(torch.equal(p, before[n]) for n, p in tiny_torch.named_parameters())
    assert read_ct2(folder).variables["decoder/layer_0/ffn/linear_0/weight"].dtype == np.int8
    back = to_torch(folder)
    for name in ("model.decoder.layers.0.fc1.weight", "model.encoder.conv2.weight",
                 "model.decoder.embed_tokens.weight"):
        original = dict(tiny_torch.named_parameters())[name].detach().numpy()
        restored = dict(back.named_parameters())[name].detach().numpy()
        rows = original.reshape(original.shape[0], -1)
        step = np.abs(rows).max(axis=1) / 127  # per output row, as CTranslate2 scales
        error = np.abs(restored.reshape(rows.shape) - rows)
        assert np.all(error <= step[:, None] * 0.5 + 1e-6), name


@pytest.mark.slow
def test_write_ct2_takes_a_bfloat16_model(tiny_torch: Any, tiny_stock: Path,
                                          tmp_path: Path) -> None:
    """A model trained in bfloat16 (which numpy lacks) is written with its own values
    rounded to float16."""
    model = copy.deepcopy(tiny_torch).to(torch.bfloat16)
    folder = write_ct2(model, tmp_path / "bf16", like=tiny_stock)
    written = read_ct2(folder).variables["decoder/layer_0/ffn/linear_0/weight"]
    expected = model.model.decoder.layers[0].fc1.weight.detach().to(torch.float16).numpy()
    assert written.dtype == np.float16 and np.array_equal(written, expected)


# --- base ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_base_round_trip(model_settings: Settings, samples_dir: Path, tmp_path: Path) -> None:
    """base (multilingual, joined from its two parts): the same exact round trip, and the
    same words on one sample."""
    stock = model_files("base", model_settings)
    written = write_ct2(to_torch(stock), tmp_path / "base", like=stock)
    _assert_same_variables(read_ct2(stock), read_ct2(written))
    audio = decode_audio(str(samples_dir / "general_speech" / ROUND_TRIP_SAMPLES[0]))
    assert _transcribe(written, audio, beam_size=1) == _transcribe(stock, audio, beam_size=1)


def test_module_exports_what_the_trainer_calls() -> None:
    """pipeline/adaptation/train.py calls these by name."""
    assert {"to_torch", "write_ct2", "read_ct2"} <= set(convert.__all__)
