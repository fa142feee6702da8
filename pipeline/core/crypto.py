"""Encryption at rest: the data key, AES-256-GCM files and streams, key rotation, file modes.

The key lives OUTSIDE the data directory: in a key file (``settings.key_file``, default
``~/.config/dictation/data.key``, created at first use with mode 0600 in a 0700 folder) or in
the environment (``DICTATION_DATA_KEY``: base64 of 32 bytes; several comma separated, the
first encrypts and the others only decrypt, which is how an environment key is rotated).
A key file holds a small JSON key ring: the current key and, during a rotation only, the keys
it replaces.

Encrypted files and streams have one format, written and read in chunks so a large audio
file never has to fit in memory (the STREAM construction of Hoang, Reyhanitabar, Rogaway and
Vizár, "Online Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", 2015)::

    header  = MAGIC (7 bytes, "DICTENC") | version (1) | key id (8) | chunk size (4, BE)
              | nonce prefix (8, random per file)
    chunk i = AES-256-GCM(key, nonce = prefix | i (4, BE), aad = header | final flag)

Every chunk but the last holds exactly ``chunk size`` bytes of plain text; the last one
(possibly empty) is sealed with the final flag, so a file cut at a chunk boundary, chunks
swapped, or a header edited all fail to decrypt (``DecryptionError``). The key id (the first
8 bytes of SHA-256 over a label and the key) says which key of the ring opens a file, so a
rotation can proceed file by file and a crash leaves every file either old or new.

``harden_permissions`` and ``private_mkdir`` keep modes at 0700 (folders) / 0600 (files)
under the data directory; ``inbox/`` folders an administrator made setgid for a recorder's
sync group keep their group bits (see docs/operations.md, "Permissions, keys and
encryption").
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.settings import Settings

__all__ = [
    "MAGIC",
    "VERSION",
    "CHUNK_SIZE",
    "KEY_BYTES",
    "DecryptionError",
    "KeyRing",
    "key_id",
    "generate_key",
    "derive_subkey",
    "database_keys",
    "keyring",
    "load_keyring",
    "save_key_file",
    "encrypt_bytes",
    "decrypt_bytes",
    "EncryptingWriter",
    "DecryptingReader",
    "write_encrypted",
    "encrypt_file",
    "read_decrypted",
    "open_decrypted",
    "is_encrypted",
    "file_key_id",
    "atomic_output",
    "encrypted_files",
    "RotationResult",
    "rotate",
    "private_mkdir",
    "harden_permissions",
    "PermissionCounts",
]

log = logging.getLogger(__name__)

MAGIC = b"DICTENC"
VERSION = 1
KEY_BYTES = 32  # AES-256
CHUNK_SIZE = 1024 * 1024
_TAG = 16
_HEADER = struct.Struct(">7sB8sI8s")  # magic, version, key id, chunk size, nonce prefix
HEADER_SIZE = _HEADER.size  # 28
_KEYFILE_FORMAT = "dictation-data-key"
#: suffix of the temporary files ``atomic_output`` writes (skipped by walks, removed on error)
TMP_SUFFIX = ".dxtmp"


class DecryptionError(PipelineError):
    """An encrypted file or stream that cannot be opened: unknown key, changed or cut."""

    code = "decryption_failed"


# --- keys --------------------------------------------------------------------------------------


def key_id(key: bytes) -> bytes:
    """The 8-byte id of ``key`` written in every header (not secret: it names the key)."""
    return hashlib.sha256(b"dictation-data-key-id|" + key).digest()[:8]


def generate_key() -> bytes:
    """A new random 256-bit key."""
    return secrets.token_bytes(KEY_BYTES)


#: HKDF ``info`` of the SQLCipher database key (a subkey: the raw file key never leaves here)
DATABASE_KEY_INFO = b"dictation-sqlcipher-database-key-v1"


def derive_subkey(key: bytes, info: bytes, length: int = KEY_BYTES) -> bytes:
    """A subkey of the data key ``key`` for one purpose (``info``): HKDF-SHA256 (RFC 5869),
    so one secret is provisioned and each use (files, the database) has its own key."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(key)


def database_keys(ring: KeyRing) -> list[bytes]:
    """The SQLCipher keys derived from every key of ``ring``, current first (an older one
    opens a database not yet re-keyed after a rotation)."""
    return [derive_subkey(k, DATABASE_KEY_INFO) for k in [ring.current, *ring.older]]


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"The data key in {where} is not valid base64.") from None
    if len(key) != KEY_BYTES:
        raise ConfigError(
            f"The data key in {where} has {len(key)} bytes; a {KEY_BYTES}-byte (256-bit) key "
            f"is expected (generate one with `dictation keys generate`)."
        )
    return key


@dataclass
class KeyRing:
    """The current key (which encrypts) and older keys that still decrypt (by key id)."""

    current: bytes
    older: list[bytes] = field(default_factory=list)
    source: str = "file"  # "file" or "environment"
    path: Path | None = None

    def __post_init__(self) -> None:
        self._by_id = {key_id(k): k for k in [self.current, *self.older]}

    def __repr__(self) -> str:  # never print key material
        ids = ", ".join(k.hex() for k in self.ids)
        return f"KeyRing(source={self.source!r}, ids=[{ids}])"

    @property
    def current_id(self) -> bytes:
        return key_id(self.current)

    @property
    def ids(self) -> list[bytes]:
        """Key ids, current first."""
        return [key_id(k) for k in [self.current, *self.older]]

    def get(self, kid: bytes) -> bytes | None:
        """The key with id ``kid``, or None."""
        return self._by_id.get(kid)


def _key_path(settings: Settings) -> Path:
    path = settings.key_file.expanduser().absolute()
    data = settings.data_path
    if path == data or data in path.parents:
        raise ConfigError(
            f"The key file {path} is inside the data directory {data}; it must live outside it "
            f"(set DICTATION_KEY_FILE), or a copy of the data folder would carry its own key."
        )
    return path


def save_key_file(path: Path, ring: KeyRing) -> None:
    """Write ``ring`` to ``path`` atomically (0600, in a 0700 folder)."""
    private_mkdir(path.parent)
    doc = {
        "format": _KEYFILE_FORMAT,
        "version": 1,
        "current": ring.current_id.hex(),
        "keys": {key_id(k).hex(): base64.b64encode(k).decode() for k in [ring.current,
                                                                           *ring.older]},
    }
    with atomic_output(path) as fh:
        fh.write((json.dumps(doc, indent=1) + "\n").encode())


def _read_key_file(path: Path) -> KeyRing:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        current = doc["current"]
        keys = {kid: _decode_key(text, str(path)) for kid, text in doc["keys"].items()}
        if doc.get("format") != _KEYFILE_FORMAT or current not in keys:
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(
            f"The key file {path} is not a readable dictation key ring; restore it from "
            f"where you keep its copy."
        ) from None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("key file mode %o is looser than 0600: fixing", mode)
        path.chmod(0o600)
    older = [k for kid, k in keys.items() if kid != current]
    return KeyRing(keys[current], older, source="file", path=path)


def load_keyring(settings: Settings, *, create: bool = True) -> KeyRing:
    """The key ring for ``settings``: from ``settings.data_key`` (the environment) if set,
    else the key file, created with a new key when missing and ``create`` is true.

    Raises ``ConfigError`` when there is no key (and ``create`` is false), the key is
    malformed, or the key file sits inside the data directory.
    """
    if settings.data_key:
        parts = [p for p in settings.data_key.split(",") if p.strip()]
        keys = [_decode_key(p, "DICTATION_DATA_KEY") for p in parts]
        return KeyRing(keys[0], keys[1:], source="environment")
    path = _key_path(settings)
    if not path.exists():
        if not create:
            raise ConfigError(
                f"No data key: {path} does not exist and DICTATION_DATA_KEY is not set."
            )
        ring = KeyRing(generate_key(), source="file", path=path)
        tmp = path.with_name(f".{path.name}.new-{secrets.token_hex(4)}")
        save_key_file(tmp, ring)
        try:  # link() never replaces: of two processes starting at once, one key wins
            os.link(tmp, path)
        except FileExistsError:
            return _read_key_file(path)
        finally:
            tmp.unlink()
        _fsync_dir(path.parent)
        log.info("created data key file id=%s", ring.current_id.hex())
        return ring
    return _read_key_file(path)


_rings: dict[tuple[object, ...], KeyRing] = {}


def keyring(settings: Settings) -> KeyRing:
    """``load_keyring(settings)``, cached until the key file or the environment key changes."""
    if settings.data_key:
        cache_key: tuple[object, ...] = ("env", settings.data_key)
    else:
        path = _key_path(settings)
        try:
            st = path.stat()
            cache_key = ("file", str(path), st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            cache_key = ()
    ring = _rings.get(cache_key) if cache_key else None
    if ring is None:
        ring = load_keyring(settings)
        if cache_key:
            _rings.clear()
            _rings[cache_key] = ring
    return ring


# --- streams -----------------------------------------------------------------------------------


def _nonce(prefix: bytes, index: int) -> bytes:
    if index >= 2**32:
        raise ValueError("stream too long for one nonce prefix")
    return prefix + struct.pack(">I", index)


class EncryptingWriter(io.RawIOBase):
    """A write-only file object that encrypts into ``dst`` with the ring's current key.

    ``close()`` seals the last chunk (and closes ``dst`` when ``close_dst``); a stream that
    is not closed is not decryptable, by design (it would be indistinguishable from a cut).
    Leaving a ``with`` block by an exception does not seal it: a half-written stream never
    authenticates as complete.
    """

    def __init__(self, dst: IO[bytes], keys: KeyRing, *, chunk_size: int = CHUNK_SIZE,
                 close_dst: bool = False) -> None:
        super().__init__()
        self._dst = dst
        self._close_dst = close_dst
        self._aead = AESGCM(keys.current)
        self._chunk = chunk_size
        self._prefix = secrets.token_bytes(8)
        self._header = _HEADER.pack(MAGIC, VERSION, keys.current_id, chunk_size, self._prefix)
        self._index = 0
        self._buf = bytearray()
        self.plain_bytes = 0
        dst.write(self._header)

    def writable(self) -> bool:
        return True

    def _seal(self, data: bytes | bytearray | memoryview, final: bool) -> None:
        aad = self._header + (b"\x01" if final else b"\x00")
        self._dst.write(self._aead.encrypt(_nonce(self._prefix, self._index), bytes(data), aad))
        self._index += 1

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("write to a closed EncryptingWriter")
        n = len(data)
        self._buf += data
        self.plain_bytes += n
        if len(self._buf) > self._chunk:  # keep at least one byte back: the last chunk is final
            view = memoryview(self._buf)
            start = 0
            while len(self._buf) - start > self._chunk:
                self._seal(view[start:start + self._chunk], final=False)
                start += self._chunk
            view.release()
            del self._buf[:start]
        return n

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def abort(self) -> None:
        """Close without sealing the last chunk (the stream will not decrypt)."""
        self._buf.clear()
        if self._close_dst:
            self._dst.close()
        super().close()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._seal(self._buf, final=True)
            self._buf.clear()
            self._dst.flush()
            if self._close_dst:
                self._dst.close()
        finally:
            super().close()


class DecryptingReader(io.RawIOBase):
    """A read-only, forward-only file object decrypting ``src`` chunk by chunk.

    Raises ``DecryptionError`` (naming ``name``, never content) for a file that is not
    encrypted, whose key is not in the ring, or that was changed or cut.
    """

    def __init__(self, src: IO[bytes], keys: KeyRing, *, name: str = "stream",
                 close_src: bool = False) -> None:
        super().__init__()
        self._src = src
        self._name = name
        self._close_src = close_src
        header = src.read(HEADER_SIZE)
        if len(header) < HEADER_SIZE or not header.startswith(MAGIC):
            raise DecryptionError(f"{name} is not an encrypted dictation file (no header).")
        _magic, version, kid, chunk, prefix = _HEADER.unpack(header)
        if version != VERSION:
            raise DecryptionError(f"{name} has format version {version}; expected {VERSION}.")
        key = keys.get(kid)
        if key is None:
            known = ", ".join(k.hex() for k in keys.ids)
            raise DecryptionError(
                f"{name} was encrypted with key id {kid.hex()}, which is not in the key ring "
                f"({keys.source}: {known}): wrong or missing key."
            )
        if not 0 < chunk <= 64 * 1024 * 1024:
            raise DecryptionError(f"{name} has an invalid chunk size {chunk}.")
        self.key_id = kid
        self._aead = AESGCM(key)
        self._header = header
        self._prefix = prefix
        self._chunk = chunk
        self._index = 0
        self._plain = b""
        self._pos = 0
        self._done = False
        self._ahead = b""

    def readable(self) -> bool:
        return True

    def _read_exact(self, n: int) -> bytes:
        parts = [self._ahead] if self._ahead else []
        have = len(self._ahead)
        self._ahead = b""
        while have < n:
            part = self._src.read(n - have)
            if not part:
                break
            parts.append(part)
            have += len(part)
        return b"".join(parts)

    def _next(self) -> None:
        want = self._chunk + _TAG
        sealed = self._read_exact(want)
        final = len(sealed) < want
        if not final:
            self._ahead = self._read_exact(1)
            final = not self._ahead
        if len(sealed) < _TAG:
            raise DecryptionError(f"{self._name} is cut short (truncated encrypted data).")
        aad = self._header + (b"\x01" if final else b"\x00")
        try:
            self._plain = self._aead.decrypt(_nonce(self._prefix, self._index), sealed, aad)
        except InvalidTag:
            raise DecryptionError(
                f"{self._name} failed authentication at chunk {self._index}: it was changed "
                f"or cut short after encryption."
            ) from None
        self._pos = 0
        self._index += 1
        self._done = final

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while self._pos >= len(self._plain):
            if self._done:
                return 0
            self._next()
        n = min(len(buffer), len(self._plain) - self._pos)
        buffer[:n] = self._plain[self._pos:self._pos + n]
        self._pos += n
        return n

    def readall(self) -> bytes:
        parts = [self._plain[self._pos:]]
        self._pos = len(self._plain)
        while not self._done:
            self._next()
            parts.append(self._plain)
            self._pos = len(self._plain)
        return b"".join(parts)

    def close(self) -> None:
        if not self.closed and self._close_src:
            self._src.close()
        super().close()


def encrypt_bytes(data: bytes, keys: KeyRing) -> bytes:
    """``data`` encrypted with the ring's current key (header included)."""
    out = io.BytesIO()
    with EncryptingWriter(out, keys) as writer:
        writer.write(data)
    return out.getvalue()


def decrypt_bytes(blob: bytes, keys: KeyRing, *, name: str = "data") -> bytes:
    """The plain text of ``blob``; ``DecryptionError`` if it cannot be authenticated."""
    with DecryptingReader(io.BytesIO(blob), keys, name=name) as reader:
        return reader.readall()


# --- files -------------------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[BinaryIO]:
    """Write ``path`` atomically: a 0600 temp file in the same folder, fsync, rename, fsync
    of the folder. On an error the temp file is removed and ``path`` is unchanged."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def write_encrypted(path: Path, data: bytes | IO[bytes], keys: KeyRing) -> None:
    """Encrypt ``data`` (bytes, or a readable binary file streamed in chunks) into ``path``
    atomically, mode 0600."""
    with atomic_output(path) as fh, EncryptingWriter(fh, keys) as writer:
        if isinstance(data, (bytes, bytearray, memoryview)):
            writer.write(data)
        else:
            while block := data.read(CHUNK_SIZE):
                writer.write(block)


def encrypt_file(src: Path, dst: Path, keys: KeyRing) -> None:
    """Stream the plain file ``src`` into the encrypted file ``dst`` (atomic, 0600)."""
    with src.open("rb") as fh:
        write_encrypted(dst, fh, keys)


def read_decrypted(path: Path, keys: KeyRing) -> bytes:
    """The whole plain text of the encrypted file ``path``."""
    with path.open("rb") as fh, DecryptingReader(fh, keys, name=_label(path)) as reader:
        return reader.readall()


def open_decrypted(path: Path, keys: KeyRing) -> io.BufferedReader:
    """A buffered, forward-only reader of the plain text of ``path`` (streams large audio;
    nothing decrypted touches the disk). Close it (``with``) to close the file."""
    fh = path.open("rb")
    try:
        return io.BufferedReader(DecryptingReader(fh, keys, name=_label(path), close_src=True),
                                 buffer_size=CHUNK_SIZE)
    except BaseException:
        fh.close()
        raise


def _label(path: Path) -> str:
    # file names may hold an MRN: errors name the file by a stable opaque tag
    return "file-" + hashlib.sha256(str(path).encode("utf-8", "surrogateescape")).hexdigest()[:12]


def file_key_id(path: Path) -> bytes | None:
    """The key id in ``path``'s header, or None when it is not an encrypted file."""
    try:
        with path.open("rb") as fh:
            header = fh.read(HEADER_SIZE)
    except OSError:
        return None
    if len(header) < HEADER_SIZE or not header.startswith(MAGIC):
        return None
    return bytes(_HEADER.unpack(header)[2])


def is_encrypted(path: Path) -> bool:
    """True when ``path`` starts with the encrypted-file header."""
    return file_key_id(path) is not None


# --- rotation ----------------------------------------------------------------------------------


def encrypted_files(roots: list[Path], skip: list[Path] | None = None) -> Iterator[Path]:
    """Every encrypted regular file under ``roots`` (symlinks, temp files and ``skip``
    folders excluded), in a stable order."""
    skipped = {p.resolve() for p in skip or []}
    for root in roots:
        if not root.is_dir():
            continue
        for folder, dirs, files in os.walk(root):
            here = Path(folder)
            dirs[:] = sorted(d for d in dirs if (here / d).resolve() not in skipped
                             and not (here / d).is_symlink())
            for name in sorted(files):
                path = here / name
                if name.endswith(TMP_SUFFIX) or path.is_symlink():
                    continue
                if is_encrypted(path):
                    yield path


@dataclass
class RotationResult:
    """What ``rotate`` did: files re-encrypted now, already on the current key, left to do,
    the current key id and the ids dropped from the key file."""

    rotated: int = 0
    already_current: int = 0
    remaining: int = 0
    current_id: str = ""
    new_key: bool = False
    retired: list[str] = field(default_factory=list)
    unreadable: int = 0

    @property
    def complete(self) -> bool:
        return self.remaining == 0 and self.unreadable == 0


def _reencrypt(path: Path, keys: KeyRing) -> None:
    with path.open("rb") as src, DecryptingReader(src, keys, name=_label(path)) as reader, \
            atomic_output(path) as dst, EncryptingWriter(dst, keys) as writer:
        while block := reader.read(CHUNK_SIZE):
            writer.write(block)


def rotate(settings: Settings, roots: list[Path] | None = None, *, stop_after: int | None = None,
           keep_old: bool = False, skip: list[Path] | None = None) -> RotationResult:
    """Re-encrypt every encrypted file under ``roots`` (default: the data directory) with a
    new key.

    Key file: unless a rotation is already in progress (the ring still holds older keys), a
    new key is generated and written as current, the old ones kept, BEFORE any file changes.
    Each file is then replaced atomically, so a crash leaves every file readable with the
    ring; running ``rotate`` again resumes with the same new key. When no file is left on
    an older key, the older keys are dropped from the key file (unless ``keep_old``).
    Environment key: files are re-encrypted to the first key of ``DICTATION_DATA_KEY``; the
    administrator removes the older ones from the environment afterwards.

    ``stop_after`` re-encrypts at most that many files (a partial run; used by the tests to
    simulate a crash half-way).
    """
    ring = load_keyring(settings)
    result = RotationResult()
    if ring.source == "file" and not ring.older:
        ring = KeyRing(generate_key(), [ring.current], source="file", path=ring.path)
        assert ring.path is not None
        save_key_file(ring.path, ring)
        result.new_key = True
        log.info("key rotation: new key id=%s", ring.current_id.hex())
    result.current_id = ring.current_id.hex()
    roots = roots if roots is not None else [settings.data_path]
    for path in encrypted_files(roots, skip):
        kid = file_key_id(path)
        if kid == ring.current_id:
            result.already_current += 1
            continue
        if ring.get(kid or b"") is None:
            result.unreadable += 1
            log.warning("key rotation: %s has unknown key id %s", _label(path),
                        (kid or b"").hex())
            continue
        if stop_after is not None and result.rotated >= stop_after:
            result.remaining += 1
            continue
        _reencrypt(path, ring)
        result.rotated += 1
    if result.complete and ring.older:
        from pipeline.core import store  # lazy: the store builds on this module

        if not store.rekey_database(settings, ring):  # the database key is a subkey too
            result.unreadable += 1
    if result.complete and ring.older and ring.source == "file" and not keep_old:
        assert ring.path is not None
        result.retired = [key_id(k).hex() for k in ring.older]
        save_key_file(ring.path, KeyRing(ring.current, [], source="file", path=ring.path))
    log.info("key rotation: rotated=%d current=%d remaining=%d unreadable=%d",
             result.rotated, result.already_current, result.remaining, result.unreadable)
    return result


# --- file modes --------------------------------------------------------------------------------


def private_mkdir(path: Path) -> Path:
    """Create ``path`` (and missing parents) with mode 0700; tighten ``path`` if it already
    exists looser (a setgid folder keeps its group bits: a recorder sync group's inbox)."""
    missing = []
    here = path
    while not here.exists() and here != here.parent:
        missing.append(here)
        here = here.parent
    for folder in reversed(missing):  # parents too: Path.mkdir gives them the umask's mode
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
            folder.chmod(0o700)
    mode = stat.S_IMODE(path.stat().st_mode)
    wanted = mode & 0o2770 if mode & stat.S_ISGID else 0o700
    if mode != wanted:
        path.chmod(wanted)
    return path


@dataclass
class PermissionCounts:
    """How many folders and files ``harden_permissions`` tightened (and checked)."""

    dirs_fixed: int = 0
    files_fixed: int = 0
    dirs: int = 0
    files: int = 0


def harden_permissions(data_dir: Path) -> PermissionCounts:
    """Tighten every folder under ``data_dir`` (itself included) to 0700 and every file to
    0600; returns the counts (the caller logs counts only, never names).

    Exception, for the recorders' sync accounts (docs/operations.md): under ``inbox/``, a
    folder an administrator made setgid keeps its group bits (at most 2770) and files in it
    keep group read/write (at most 0660), and the data directory keeps its search bits
    (at most 0711) so the sync accounts can reach the inbox; any other "other" bits are
    removed. Symlinks are not followed.
    """
    counts = PermissionCounts()
    root = data_dir.expanduser().resolve()
    if not root.is_dir():
        return counts
    inbox = root / "inbox"
    # a shared (setgid) inbox needs the sync accounts to pass through the data directory:
    # its search bits (--x, no listing) are then kept on the data directory itself
    inbox_shared = inbox.is_dir() and bool(inbox.stat().st_mode & stat.S_ISGID)

    def fix(path: Path, st: os.stat_result, shared: bool) -> bool:
        mode = stat.S_IMODE(st.st_mode)
        if path == root:
            wanted = 0o700 | (mode & 0o011 if inbox_shared else 0)
        elif stat.S_ISDIR(st.st_mode):
            wanted = (mode & 0o2770) | 0o700 if shared else 0o700
        else:
            wanted = mode & 0o660 if shared else mode & 0o600
        if mode == wanted:
            return False
        try:
            os.chmod(path, wanted, follow_symlinks=False)
        except (OSError, NotImplementedError):
            return False
        return True

    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        st = os.lstat(here)
        shared_dir = (here == inbox or inbox in here.parents) and bool(st.st_mode & stat.S_ISGID)
        counts.dirs += 1
        counts.dirs_fixed += fix(here, st, shared_dir)
        dirs[:] = [d for d in dirs if not (here / d).is_symlink()]
        for name in files:
            path = here / name
            try:
                fst = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(fst.st_mode):
                continue
            counts.files += 1
            counts.files_fixed += fix(path, fst, shared_dir)
    return counts
