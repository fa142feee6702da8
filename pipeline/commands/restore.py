"""``dictation restore SRC --data-dir EMPTY_DIR``: verify a backup completely (decrypt, every
checksum), then restore it into an empty data directory (``pipeline.service.backup``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.transcribe import settings_from_args
from pipeline.core import crypto

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from pipeline.service import backup

    settings = settings_from_args(args)
    if args.verify_only:
        manifest = backup.verify(args.src, crypto.keyring(settings))
        print(f"backup intact: {len(manifest['files'])} files and a "
              f"{manifest['database']['kind']} database from {manifest['created_at']}")
        return 0
    result = backup.restore(settings, args.src)
    print(f"restored into {result.target}: {result.files} files, {result.database} database "
          f"(backup of {result.manifest['created_at']}); {result.repointed} stored paths "
          f"re-pointed to the new folder")
    print("check it: dictation audit verify, with DICTATION_DATA_DIR set to that folder")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``restore`` command."""
    p = subparsers.add_parser(
        "restore", help="verify a backup, then restore it into an empty data directory",
        description="Decrypts the whole archive and checks every SHA-256 against its manifest "
        "before writing anything; refuses a target that is not empty.",
    )
    p.add_argument("src", type=Path, metavar="SRC", help="the backup archive")
    p.add_argument("--data-dir", type=Path, required=False,
                   help="the new, empty data directory (default DICTATION_DATA_DIR)")
    p.add_argument("--verify-only", action="store_true", help="check the archive, write nothing")
    p.set_defaults(func=_run)
