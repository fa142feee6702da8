"""The key layer (pipeline.core.crypto): round trips (bytes, files, streams across chunk
boundaries), a wrong key and tampered or cut data refused with a clear error, the key file
(0600 in a 0700 folder, outside the data directory), a key from the environment, and key
rotation including a crash half-way and its resumption."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core import crypto
from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings


@pytest.fixture
def keyed(settings: Settings, tmp_path: Path) -> Settings:
    """``settings`` with a key file under tmp (never the real home)."""
    settings.key_file = tmp_path / "config" / "dictation" / "data.key"
    return settings


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 1000, 4096, 4097, 3 * 4096, 3 * 4096 + 7])
def test_round_trip_across_chunk_boundaries(keyed: Settings, size: int) -> None:
    """Any length (empty, exactly a chunk, a chunk plus one) decrypts to the same bytes."""
    keys = crypto.load_keyring(keyed)
    data = os.urandom(size)
    out = io.BytesIO()
    with crypto.EncryptingWriter(out, keys, chunk_size=4096) as writer:
        for i in range(0, size, 1000):  # uneven writes
            writer.write(data[i:i + 1000])
    blob = out.getvalue()
    assert blob.startswith(crypto.MAGIC)
    assert size < 16 or data[:16] not in blob
    assert crypto.decrypt_bytes(blob, keys) == data
    with crypto.DecryptingReader(io.BytesIO(blob), keys) as reader:
        got = b"".join(iter(lambda: reader.read(777), b""))
    assert got == data


def test_file_round_trip_is_atomic_and_private(keyed: Settings, tmp_path: Path) -> None:
    keys = crypto.load_keyring(keyed)
    path = tmp_path / "var" / "note.txt.enc"
    path.parent.mkdir(parents=True)
    crypto.write_encrypted(path, b"Patient Jane Roe, MRN 123", keys)
    assert _mode(path) == 0o600
    assert crypto.is_encrypted(path)
    assert b"Jane Roe" not in path.read_bytes()
    assert crypto.read_decrypted(path, keys) == b"Patient Jane Roe, MRN 123"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(crypto.TMP_SUFFIX)]
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    assert not crypto.is_encrypted(plain)


def test_streaming_a_large_file(keyed: Settings, tmp_path: Path) -> None:
    """A 5 MB file (several chunks) streams through ``encrypt_file`` / ``open_decrypted``."""
    keys = crypto.load_keyring(keyed)
    src = tmp_path / "audio.wav"
    data = os.urandom(5 * 1024 * 1024 + 123)
    src.write_bytes(data)
    dst = tmp_path / "audio.wav.enc"
    crypto.encrypt_file(src, dst, keys)
    with crypto.open_decrypted(dst, keys) as fh:
        head = fh.read(10)
        rest = fh.read()
    assert head + rest == data


def test_wrong_key_is_refused_with_a_clear_error(keyed: Settings, tmp_path: Path) -> None:
    blob = crypto.encrypt_bytes(b"secret", crypto.load_keyring(keyed))
    other = crypto.KeyRing(crypto.generate_key())
    with pytest.raises(crypto.DecryptionError, match=r"not in the key ring.*wrong or missing"):
        crypto.decrypt_bytes(blob, other)


@pytest.mark.parametrize("where", ["header", "body", "tag", "truncate_chunk", "truncate_tail",
                                   "drop_last_chunk", "swap_chunks"])
def test_tampered_or_cut_ciphertext_is_refused(keyed: Settings, where: str) -> None:
    keys = crypto.load_keyring(keyed)
    out = io.BytesIO()
    with crypto.EncryptingWriter(out, keys, chunk_size=1024) as writer:
        writer.write(os.urandom(3000))  # chunks of 1024, 1024, 952 (+16 tag each)
    blob = bytearray(out.getvalue())
    h, c = crypto.HEADER_SIZE, 1024 + 16
    if where == "header":
        blob[h - 1] ^= 1  # a nonce-prefix bit: authenticated as associated data
    elif where == "body":
        blob[h + 10] ^= 1
    elif where == "tag":
        blob[-1] ^= 1
    elif where == "truncate_chunk":
        blob = blob[:h + c + 100]
    elif where == "truncate_tail":
        blob = blob[:-1]
    elif where == "drop_last_chunk":
        blob = blob[:h + 2 * c]  # cut exactly at a chunk boundary
    elif where == "swap_chunks":
        blob = blob[:h] + blob[h + c:h + 2 * c] + blob[h:h + c] + blob[h + 2 * c:]
    with pytest.raises(crypto.DecryptionError, match=r"changed or cut|cut short"):
        crypto.decrypt_bytes(bytes(blob), keys)


def test_a_stream_left_by_an_exception_is_not_sealed(keyed: Settings) -> None:
    """A writer interrupted half-way never produces a stream that decrypts as complete."""
    keys = crypto.load_keyring(keyed)
    out = io.BytesIO()
    with pytest.raises(RuntimeError), crypto.EncryptingWriter(out, keys, chunk_size=1024) as w:
        w.write(os.urandom(5000))
        raise RuntimeError("disk full")
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt_bytes(out.getvalue(), keys)


def test_not_encrypted_data_is_refused(keyed: Settings) -> None:
    with pytest.raises(crypto.DecryptionError, match="not an encrypted"):
        crypto.decrypt_bytes(b"RIFF....WAVEfmt ", crypto.load_keyring(keyed))


def test_key_file_is_created_0600_in_a_0700_folder(keyed: Settings) -> None:
    ring = crypto.load_keyring(keyed)
    path = keyed.key_file
    assert path.exists() and _mode(path) == 0o600 and _mode(path.parent) == 0o700
    doc = json.loads(path.read_text())
    assert doc["current"] == ring.current_id.hex() and list(doc["keys"]) == [doc["current"]]
    assert crypto.load_keyring(keyed).current == ring.current  # read back, not re-created
    assert doc["keys"][doc["current"]] not in repr(ring)  # no key material in a repr


def test_key_file_with_loose_mode_is_tightened(keyed: Settings) -> None:
    crypto.load_keyring(keyed)
    keyed.key_file.chmod(0o644)
    crypto.load_keyring(keyed)
    assert _mode(keyed.key_file) == 0o600


def test_key_file_inside_the_data_directory_is_refused(keyed: Settings) -> None:
    keyed.key_file = keyed.data_path / "data.key"
    with pytest.raises(ConfigError, match="inside the data directory"):
        crypto.load_keyring(keyed)


def test_no_key_and_no_create_is_a_clear_error(keyed: Settings) -> None:
    with pytest.raises(ConfigError, match="No data key"):
        crypto.load_keyring(keyed, create=False)


def test_key_from_the_environment(tmp_path: Path) -> None:
    """DICTATION_DATA_KEY (base64) is used and no key file is created; a malformed one is a
    clear error; a blob sealed with it opens with the same key in another settings object."""
    key = crypto.generate_key()
    env = {"DICTATION_DATA_KEY": base64.b64encode(key).decode(),
           "DICTATION_DATA_DIR": str(tmp_path / "var"),
           "DICTATION_KEY_FILE": str(tmp_path / "nokey" / "data.key")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        settings = Settings()
        ring = crypto.load_keyring(settings)
        assert ring.source == "environment" and ring.current == key
        assert not (tmp_path / "nokey").exists()
        assert key.hex() not in repr(settings) and env["DICTATION_DATA_KEY"] not in repr(settings)
        blob = crypto.encrypt_bytes(b"abc", ring)
        assert crypto.decrypt_bytes(blob, crypto.KeyRing(key)) == b"abc"
        os.environ["DICTATION_DATA_KEY"] = "bm90IGEga2V5"  # "not a key"
        with pytest.raises(ConfigError, match="32-byte"):
            crypto.load_keyring(Settings())
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _populate(settings: Settings, n: int) -> dict[Path, bytes]:
    keys = crypto.load_keyring(settings)
    files: dict[Path, bytes] = {}
    for i in range(n):
        path = settings.data_path / ("archive" if i % 2 else "drafts") / f"d{i}" / "f.enc"
        path.parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(100 + i * 5000)
        crypto.write_encrypted(path, data, keys)
        files[path] = data
    plain = settings.data_path / "drafts" / "plain.txt"
    plain.write_bytes(b"not encrypted")
    return files


def test_rotation_re_encrypts_every_file_and_retires_the_old_key(keyed: Settings) -> None:
    files = _populate(keyed, 6)
    old = crypto.load_keyring(keyed).current_id
    result = crypto.rotate(keyed)
    assert result.new_key and result.rotated == 6 and result.complete
    ring = crypto.load_keyring(keyed)
    assert ring.current_id != old and ring.older == [] and result.retired == [old.hex()]
    for path, data in files.items():
        assert crypto.file_key_id(path) == ring.current_id
        assert crypto.read_decrypted(path, ring) == data
        assert _mode(path) == 0o600
    assert (keyed.data_path / "drafts" / "plain.txt").read_bytes() == b"not encrypted"
    assert _mode(keyed.key_file) == 0o600


def test_rotation_crash_half_way_then_resume(keyed: Settings) -> None:
    """Stopped after 2 of 5 files: every file still opens (old key kept in the key file);
    the next run resumes with the SAME new key and then retires the old one."""
    files = _populate(keyed, 5)
    old = crypto.load_keyring(keyed).current_id
    first = crypto.rotate(keyed, stop_after=2)
    assert first.rotated == 2 and first.remaining == 3 and not first.complete
    ring = crypto.load_keyring(keyed)
    assert ring.current_id.hex() == first.current_id and ring.ids[1:] == [old]
    kids = sorted(crypto.file_key_id(p) or b"" for p in files)
    assert kids.count(old) == 3 and kids.count(ring.current_id) == 2
    for path, data in files.items():  # a file is either old or new, never broken
        assert crypto.read_decrypted(path, ring) == data
    second = crypto.rotate(keyed)
    assert not second.new_key and second.current_id == first.current_id
    assert second.rotated == 3 and second.already_current == 2 and second.complete
    ring = crypto.load_keyring(keyed)
    assert ring.older == []
    for path, data in files.items():
        assert crypto.read_decrypted(path, ring) == data


def test_rotation_with_an_environment_key_list(keyed: Settings) -> None:
    """Environment: the first key encrypts; rotation re-encrypts everything to it."""
    old, new = crypto.generate_key(), crypto.generate_key()
    keyed.data_key = base64.b64encode(old).decode()
    files = _populate(keyed, 3)
    keyed.data_key = ",".join(base64.b64encode(k).decode() for k in (new, old))
    result = crypto.rotate(keyed)
    assert result.rotated == 3 and result.complete and not result.new_key
    for path, data in files.items():
        assert crypto.file_key_id(path) == crypto.key_id(new)
        assert crypto.read_decrypted(path, crypto.KeyRing(new)) == data


@pytest.mark.slow
def test_keys_cli_status_and_rotate(keyed: Settings, tmp_path: Path) -> None:
    """``dictation keys status`` / ``keys rotate`` in a real process, figures only."""
    files = _populate(keyed, 2)
    env = dict(os.environ, DICTATION_DATA_DIR=str(keyed.data_path),
               DICTATION_KEY_FILE=str(keyed.key_file))
    env.pop("DICTATION_DATA_KEY", None)
    run = [sys.executable, "-m", "pipeline.cli", "keys"]
    status = subprocess.run([*run, "status"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert status.returncode == 0, status.stderr
    assert "2 encrypted files" in status.stdout
    rotated = subprocess.run([*run, "rotate"], env=env, capture_output=True, text=True,
                             timeout=120)
    assert rotated.returncode == 0, rotated.stderr
    assert "re-encrypted 2" in rotated.stdout
    ring = crypto.load_keyring(keyed)
    assert all(crypto.read_decrypted(p, ring) == d for p, d in files.items())
