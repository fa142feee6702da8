"""``dictation keys status|rotate|generate``: the data key (``pipeline.core.crypto``).

``status`` says where the key comes from, its id, and how many encrypted files under the data
directory (and the backup folder) use each key id. ``rotate`` re-encrypts all of them with a
new key (resumable: run it again after a crash). ``generate`` prints a new base64 key for
``DICTATION_DATA_KEY`` (a secret: provision it like a password, never in the shared folder).
Figures and key ids only: never key material (except ``generate``) and never file names.
"""

from __future__ import annotations

import argparse
import base64
import stat
from collections import Counter
from pathlib import Path

from pipeline.commands.transcribe import settings_from_args
from pipeline.core import crypto
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
    return 0 if all(bytes.fromhex(k) in ring.ids for k in counts) else 1


def _rotate(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if not args.force:
        from pipeline.service.status import service_running

        if service_running(settings)["running"]:
            raise ConfigError(
                "The service is running: stop it (and the workers on other machines) before "
                "rotating, or a process holding the old key could write files with it; "
                "--force skips this check."
            )
    result = crypto.rotate(settings, roots(settings), keep_old=args.keep_old,
                           skip=[settings.prefect_home])
    print(f"current key id {result.current_id}" + (" (new)" if result.new_key else ""))
    print(f"re-encrypted {result.rotated}, already current {result.already_current}, "
          f"remaining {result.remaining}, unknown key {result.unreadable}")
    if result.retired:
        print(f"retired key ids: {', '.join(result.retired)}")
    if result.unreadable:
        print("some files use a key that is not in the key ring: they were left as they are")
        return 1
    if crypto.load_keyring(settings).source == "environment":
        print("environment key: remove the older keys from DICTATION_DATA_KEY on every machine")
    return 0


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
    g = sub.add_parser("generate", help="print a new base64 key for DICTATION_DATA_KEY")
    g.set_defaults(func=_generate)
