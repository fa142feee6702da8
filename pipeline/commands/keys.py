"""``dictation keys status|rotate|encrypt-columns|generate``: the data key
(``pipeline.core.crypto``).

``status`` says where the key comes from, its id, and how many encrypted files under the data
directory (and the backup folder) use each key id; on PostgreSQL also how many patient column
values are sealed per key id and how many are still plain. ``rotate`` re-encrypts all of them
with a new key (resumable: run it again after a crash), the database included (SQLite:
re-keyed; PostgreSQL: every sealed column value sealed again, in one transaction).
``encrypt-columns`` seals the plain column values a PostgreSQL database still holds (an
upgrade from a version without column encryption, or ``DICTATION_ENCRYPT_COLUMNS`` turned on
later). ``generate`` prints a new base64 key for ``DICTATION_DATA_KEY`` (a secret: provision
it like a password, never in the shared folder). Figures and key ids only: never key material
(except ``generate``), never file names or column values.
"""

from __future__ import annotations

import argparse
import base64
import stat
from collections import Counter
from pathlib import Path

from pipeline.commands.transcribe import settings_from_args
from pipeline.core import crypto, store
from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings

__all__ = ["register", "roots"]


def roots(settings: Settings) -> list[Path]:
    """Where encrypted files live: the data directory, and the backup folder if outside."""
    found = [settings.data_path]
    backups = settings.backup_path
    if settings.data_path not in backups.parents and backups != settings.data_path:
        found.append(backups)
    return found


def _status(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    ring = crypto.load_keyring(settings, create=False)
    if ring.source == "file" and ring.path is not None:
        mode = stat.S_IMODE(ring.path.stat().st_mode)
        print(f"key source: key file {ring.path} (mode {mode:04o})")
    else:
        print("key source: environment (DICTATION_DATA_KEY)")
    print(f"current key id: {ring.current_id.hex()}")
    for kid in ring.ids[1:]:
        print(f"older key id:   {kid.hex()} (decrypt only: a rotation is not finished)")
    counts: Counter[str] = Counter()
    for path in crypto.encrypted_files(roots(settings), [settings.prefect_home]):
        counts[(crypto.file_key_id(path) or b"").hex()] += 1
    total = sum(counts.values())
    print(f"{total} encrypted files")
    for kid_hex, n in counts.most_common():
        known = "current" if kid_hex == ring.current_id.hex() else (
            "older" if bytes.fromhex(kid_hex) in ring.ids else "UNKNOWN KEY")
        print(f"  key {kid_hex}: {n} ({known})")
    columns_ok = _print_columns(settings, ring)
    return 0 if columns_ok and all(bytes.fromhex(k) in ring.ids for k in counts) else 1


def _print_columns(settings: Settings, ring: crypto.KeyRing) -> bool:
    """PostgreSQL: the patient column values per key id (True when every key is known)."""
    found = store.column_status(settings)
    if found is None:
        return True
    state = "on" if settings.encrypt_columns else "OFF (DICTATION_ENCRYPT_COLUMNS)"
    print(f"database columns (PostgreSQL, {found.columns} patient columns, sealing {state}): "
          f"{found.sealed} sealed values, {found.plain} plain")
    for kid_hex, n in sorted(found.by_key.items(), key=lambda kv: -kv[1]):
        known = "current" if kid_hex == ring.current_id.hex() else (
            "older" if bytes.fromhex(kid_hex) in ring.ids else "UNKNOWN KEY")
        print(f"  key {kid_hex}: {n} ({known})")
    if found.plain and settings.encrypt_columns:
        print("  plain values are left from before: `dictation keys encrypt-columns` seals them")
    return all(bytes.fromhex(k) in ring.ids for k in found.by_key)


def _service_stopped(settings: Settings, force: bool, what: str) -> None:
    if force:
        return
    from pipeline.service.status import service_running

    if service_running(settings)["running"]:
        raise ConfigError(
            f"The service is running: stop it (and the workers on other machines) before "
            f"{what}, or a process holding the old key could write with it; --force skips "
            f"this check."
        )


def _rotate(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    _service_stopped(settings, args.force, "rotating")
    result = crypto.rotate(settings, roots(settings), keep_old=args.keep_old,
                           skip=[settings.prefect_home])
    print(f"current key id {result.current_id}" + (" (new)" if result.new_key else ""))
    print(f"re-encrypted {result.rotated}, already current {result.already_current}, "
          f"remaining {result.remaining}, unknown key {result.unreadable}")
    if result.retired:
        print(f"retired key ids: {', '.join(result.retired)}")
    if result.unreadable:
        print("some files (or database values) use a key that is not in the key ring: they "
              "were left as they are")
        return 1
    _print_columns(settings, crypto.load_keyring(settings))
    if crypto.load_keyring(settings).source == "environment":
        print("environment key: remove the older keys from DICTATION_DATA_KEY on every machine")
    return 0


def _encrypt_columns(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    _service_stopped(settings, args.force, "sealing the database columns")
    done = store.encrypt_columns(settings)
    print(f"sealed {done.sealed} plain values in {done.columns} patient columns "
          f"({done.current} already sealed with the current key) in {done.seconds} s")
    return 0 if _print_columns(settings, crypto.load_keyring(settings)) else 1


def _generate(args: argparse.Namespace) -> int:
    print(base64.b64encode(crypto.generate_key()).decode())
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``keys`` command."""
    parser = subparsers.add_parser("keys", help="the data encryption key: status, rotation")
    sub = parser.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    s = sub.add_parser("status", help="key source, key ids, encrypted files per key id")
    s.add_argument("--data-dir", type=Path, help="data directory (default DICTATION_DATA_DIR)")
    s.set_defaults(func=_status)
    r = sub.add_parser("rotate", help="re-encrypt every encrypted file with a new key "
                       "(run again to resume after a crash)")
    r.add_argument("--data-dir", type=Path, help="data directory (default DICTATION_DATA_DIR)")
    r.add_argument("--keep-old", action="store_true",
                   help="keep the replaced key in the key file (to open older off-site backups)")
    r.add_argument("--force", action="store_true",
                   help="rotate even though the service looks like it is running")
    r.set_defaults(func=_rotate)
    e = sub.add_parser("encrypt-columns", help="PostgreSQL: seal the patient column values "
                       "still stored plain (after an upgrade, or turning the setting on)")
    e.add_argument("--data-dir", type=Path, help="data directory (default DICTATION_DATA_DIR)")
    e.add_argument("--force", action="store_true",
                   help="run even though the service looks like it is running")
    e.set_defaults(func=_encrypt_columns)
    g = sub.add_parser("generate", help="print a new base64 key for DICTATION_DATA_KEY")
    g.set_defaults(func=_generate)
