"""``dictation user add USERNAME --role ROLE [--physician ID ...]``, ``user passwd``,
``user disable`` and ``user enable``: manage workbench users. A password change or a
deactivation ends the user's web sessions."""

from __future__ import annotations

import argparse
import getpass
import sys

from pipeline.core import audit
from pipeline.core.errors import ConfigError
from pipeline.core.settings import get_settings
from pipeline.core.store import open_store
from pipeline.review.users import ROLES, create_user, set_active, set_password

__all__ = ["register"]


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Password: ")
    second = getpass.getpass("Password again: ")
    if first != second:
        raise ConfigError("The two passwords differ; expected the same password twice.")
    return first


def _add(args: argparse.Namespace) -> int:
    password = _read_password(args)
    settings = get_settings()
    with open_store(settings).session() as s:
        user = create_user(s, args.username, password, args.role, args.physician or [],
                           display_name=args.name or "")
        audit.record(s, actor="system:cli", action="user_add", object_type="user",
                     object_id=str(user.id),
                     detail={"role": user.role, "physicians": len(user.physician_ids)})
    print(f"added {user.role} {user.username}"
          + (f" ({', '.join(user.physician_ids)})" if user.physician_ids else ""))
    return 0


def _passwd(args: argparse.Namespace) -> int:
    password = _read_password(args)
    with open_store(get_settings()).session() as s:
        ended = set_password(s, args.username, password)
        audit.record(s, actor="system:cli", action="password_change", object_type="user",
                     object_id=args.username, detail={"sessions_ended": ended})
    print(f"password changed for {args.username}; {ended} session(s) ended")
    return 0


def _set_active(args: argparse.Namespace) -> int:
    active = args.user_command == "enable"
    with open_store(get_settings()).session() as s:
        ended = set_active(s, args.username, active)
        audit.record(s, actor="system:cli", action="user_enable" if active else "user_disable",
                     object_type="user", object_id=args.username,
                     detail={"sessions_ended": ended})
    if active:
        print(f"{args.username} can log in again")
    else:
        print(f"{args.username} deactivated; {ended} session(s) ended")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``user`` command."""
    parser = subparsers.add_parser("user", help="manage workbench users")
    sub = parser.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="add a user")
    add.add_argument("username")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--physician", action="append", metavar="ID",
                     help="physician id the user works for / signs as (repeatable)")
    add.add_argument("--name",
                     help='full name shown in pages and signatures, e.g. "Dr. Jane Smith"')
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")
    add.set_defaults(func=_add)
    pw = sub.add_parser("passwd", help="set a user's password")
    pw.add_argument("username")
    pw.add_argument("--password-stdin", action="store_true")
    pw.set_defaults(func=_passwd)
    off = sub.add_parser("disable", help="deactivate a user (ends their sessions)")
    off.add_argument("username")
    off.set_defaults(func=_set_active)
    on = sub.add_parser("enable", help="reactivate a deactivated user")
    on.add_argument("username")
    on.set_defaults(func=_set_active)
