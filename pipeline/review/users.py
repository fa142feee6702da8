"""Workbench users: roles, physician assignments and argon2 password hashing.

Roles: ``secretary`` (works the drafts of the physicians assigned to them), ``physician``
(reviews and signs their own drafts) and ``admin`` (users, audit log, everything).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from pipeline.core.db.core import Physician
from pipeline.core.db.review import ROLES, User, UserPhysician
from pipeline.core.errors import ConfigError, ConflictError, NotFoundError

__all__ = [
    "ROLES",
    "UserInfo",
    "hash_password",
    "verify_password",
    "create_user",
    "authenticate",
    "load_user",
    "user_count",
    "set_password",
    "set_physicians",
    "MIN_PASSWORD_LENGTH",
]

log = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 8
_USERNAME = re.compile(r"^[A-Za-z0-9._@-]{2,100}$")
# A hash to verify against when the user does not exist, so timing does not reveal names.
_DUMMY_HASH: str | None = None


@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    return PasswordHasher()


def hash_password(password: str) -> str:
    """Return the argon2id hash of ``password``."""
    return _hasher().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """True when ``password`` matches ``password_hash``."""
    try:
        return _hasher().verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class UserInfo:
    """The logged-in user as the web layer sees it."""

    id: int
    username: str
    role: str
    physician_ids: list[str] = field(default_factory=list)
    display_name: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_see_physician(self, physician_id: str | None) -> bool:
        """Whether this user may see drafts of ``physician_id``."""
        if self.role == "admin":
            return True
        return physician_id is not None and physician_id in self.physician_ids


def _info(session: Session, user: User) -> UserInfo:
    pids = list(
        session.scalars(
            select(UserPhysician.physician_id)
            .where(UserPhysician.user_id == user.id)
            .order_by(UserPhysician.physician_id)
        )
    )
    return UserInfo(user.id, user.username, user.role, pids, user.display_name or user.username)


def user_count(session: Session) -> int:
    """Number of users (0 means the first-run set-up is open)."""
    return int(session.scalar(select(func.count()).select_from(User)) or 0)


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ConfigError(
            f"Password has {len(password)} characters; expected at least {MIN_PASSWORD_LENGTH}."
        )


def create_user(
    session: Session,
    username: str,
    password: str,
    role: str,
    physician_ids: list[str] | None = None,
    display_name: str = "",
) -> UserInfo:
    """Create a user with ``role`` assigned to ``physician_ids`` and return it.

    Physicians must exist (they come from settings.physicians); a physician user needs
    exactly the physician id(s) they sign for.
    """
    if role not in ROLES:
        raise ConfigError(f"Role {role!r} is unknown; expected one of {', '.join(ROLES)}.")
    if not _USERNAME.match(username):
        raise ConfigError(
            "User name must be 2-100 characters of letters, digits, '.', '_', '@' or '-'."
        )
    _check_password(password)
    pids = list(dict.fromkeys(physician_ids or []))
    if role == "physician" and not pids:
        raise ConfigError("A physician user needs --physician ID (the physician they sign for).")
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise ConflictError(f"User {username!r} already exists; expected a new user name.")
    known = set(session.scalars(select(Physician.id).where(Physician.id.in_(pids))))
    unknown = [p for p in pids if p not in known]
    if unknown:
        raise NotFoundError(
            f"Physician id(s) {', '.join(unknown)} not configured; expected one of the "
            "physicians in settings (DICTATION_PHYSICIANS)."
        )
    user = User(
        username=username,
        password_hash=hash_password(password),
        role=role,
        display_name=display_name or username,
        active=True,
    )
    session.add(user)
    session.flush()
    for pid in pids:
        session.add(UserPhysician(user_id=user.id, physician_id=pid))
    session.flush()
    log.info("user created id=%s role=%s physicians=%d", user.id, role, len(pids))
    return _info(session, user)


def set_password(session: Session, username: str, password: str) -> None:
    """Replace a user's password."""
    _check_password(password)
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFoundError(f"User {username!r} does not exist.")
    user.password_hash = hash_password(password)
    session.flush()


def set_physicians(session: Session, user_id: int, physician_ids: list[str]) -> None:
    """Replace a user's physician assignments."""
    session.execute(delete(UserPhysician).where(UserPhysician.user_id == user_id))
    for pid in dict.fromkeys(physician_ids):
        session.add(UserPhysician(user_id=user_id, physician_id=pid))
    session.flush()


def authenticate(session: Session, username: str, password: str) -> UserInfo | None:
    """Return the user when the name and password match an active user, else None."""
    global _DUMMY_HASH
    user = session.scalar(select(User).where(User.username == username))
    if user is None or not user.active:
        if _DUMMY_HASH is None:
            _DUMMY_HASH = hash_password("not-a-real-password")
        verify_password(_DUMMY_HASH, password)  # same cost as a real check
        return None
    if not verify_password(user.password_hash, password):
        return None
    if _hasher().check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return _info(session, user)


def load_user(session: Session, user_id: int) -> UserInfo | None:
    """The active user with ``user_id``, or None."""
    user = session.get(User, user_id)
    if user is None or not user.active:
        return None
    return _info(session, user)
