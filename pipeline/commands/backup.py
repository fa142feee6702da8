"""``dictation backup DEST``: one encrypted archive of the database and the data directory
(``pipeline.service.backup``), taken while the service runs. ``--nightly`` writes into the
backup folder and keeps the newest ``backup_keep``, as the ``nightly-backup`` deployment does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.transcribe import settings_from_args

__all__ = ["register"]


def _run(args: argparse.Namespace) -> int:
    from pipeline.service import backup

    settings = settings_from_args(args)
    if args.nightly:
        result = backup.nightly(settings)
    elif args.dest is None:
        print("error: give DEST (a file or folder) or --nightly")
        return 2
    else:
        result = backup.backup(settings, args.dest)
    print(f"backup written: {result.path} ({result.files} files, "
          f"{result.bytes / 1e6:.1f} MB, {result.database} database, {result.seconds:.1f} s)")
    if result.pruned:
        print(f"older backups removed: {len(result.pruned)}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``backup`` command."""
    p = subparsers.add_parser(
        "backup", help="write an encrypted backup of the database and data files",
        description="Take a consistent online snapshot (SQLite backup API or pg_dump) plus "
        "the files under the data directory, as one encrypted archive with a manifest of "
        "SHA-256 checksums. Keep the key (dictation keys status) apart from the backups.",
    )
    p.add_argument("dest", nargs="?", type=Path, metavar="DEST",
                   help="archive file (*.dxbak), or a folder to put a time-stamped archive in")
    p.add_argument("--nightly", action="store_true",
                   help="into the backup folder (backup_dir), keeping the newest backup_keep")
    p.add_argument("--data-dir", type=Path, help="data directory (default DICTATION_DATA_DIR)")
    p.set_defaults(func=_run)
