"""Workbench users: roles, physician assignments, argon2 password hashing, deactivation and
throttling of password guesses.

Roles: ``secretary`` (works the drafts of the physicians assigned to them), ``physician``
(reviews and signs their own drafts) and ``admin`` (users, audit log, everything).

Passwords: at least ``MIN_PASSWORD_LENGTH`` characters and not guessable by zxcvbn (score
below ``MIN_PASSWORD_SCORE``: common passwords, keyboard walks, repeats, names plus years).

Changing a password, or deactivating a user, deletes that user's web sessions: every
browser they were logged in with must log in again.

Throttling (``throttle_wait`` / ``note_failure``): each wrong password (log-in or signing) is
a row in ``auth_failures`` (time, SHA-256 of the name typed, client address), so it holds
across restarts and across several web processes on one database. From the
``FREE_FAILURES``-th failure within ``settings.login_failure_window_minutes``, counted per
account and, separately, per client address, the next try must wait 2^(n-1) seconds after
the last failure (n failures), at most ``settings.login_max_delay_seconds``: a growing delay,
never a lock-out anyone could trigger for good. A successful log-in clears its account's
failures.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from pipeline.core.db.core import Physician
from pipeline.core.db.review import ROLES, AuthFailure, User, UserPhysician, WebSession
from pipeline.core.errors import ConfigError, ConflictError, NotFoundError
from pipeline.core.settings import Settings
from pipeline.core.times import as_utc

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
    "set_role",
    "set_user_physicians",
    "set_active",
    "end_user_sessions",
    "check_password_strength",
    "throttle_wait",
    "note_failure",
    "clear_failures",
    "MIN_PASSWORD_LENGTH",
    "MIN_PASSWORD_SCORE",
    "FREE_FAILURES",
]

log = logging.getLogger(__name__)

MIN_PASSWORD_LENGTH = 10
#: zxcvbn score (0-4) a password needs: 0 and 1 are "too guessable" / "very guessable".
MIN_PASSWORD_SCORE = 2
#: failures (per account, per client address) before throttling starts
FREE_FAILURES = 3
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


def check_password_strength(password: str, user_inputs: list[str] | None = None) -> None:
    """Raise ``ConfigError`` saying why when ``password`` is too short or too guessable
    (zxcvbn, with ``user_inputs`` such as the user name counted as known to an attacker)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ConfigError(
            f"Password has {len(password)} characters; expected at least {MIN_PASSWORD_LENGTH}."
        )
    from zxcvbn import zxcvbn

    verdict = zxcvbn(password[:100], user_inputs=[u for u in (user_inputs or []) if u])
    if verdict["score"] < MIN_PASSWORD_SCORE:
        why = verdict["feedback"].get("warning") or "It is easy to guess."
        raise ConfigError(
            f"Password refused: {why.rstrip('.')}. Expected a less guessable password, e.g. "
            "three or four unrelated words."
        )


def _check_password(password: str, username: str = "") -> None:
    check_password_strength(password, [username])


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
    _check_password(password, username)
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


def _user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFoundError(f"User {username!r} does not exist.")
    return user


def end_user_sessions(session: Session, user_id: int) -> int:
    """Delete every web session of ``user_id``; returns how many ended."""
    result = session.execute(delete(WebSession).where(WebSession.user_id == user_id))
    session.flush()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def set_password(session: Session, username: str, password: str) -> int:
    """Replace a user's password and end their sessions; returns how many sessions ended."""
    _check_password(password, username)
    user = _user(session, username)
    user.password_hash = hash_password(password)
    session.flush()
    return end_user_sessions(session, user.id)


def set_active(session: Session, username: str, active: bool) -> int:
    """Deactivate (ending their sessions) or reactivate a user; returns sessions ended.

    The last active administrator cannot be deactivated."""
    user = _user(session, username)
    if not active and user.role == "admin" and user.active:
        admins = session.scalar(select(func.count()).select_from(User).where(
            User.role == "admin", User.active.is_(True)))
        if (admins or 0) <= 1:
            raise ConflictError(
                f"{username!r} is the only active administrator; expected another active "
                "administrator before deactivating this one."
            )
    user.active = active
    session.flush()
    ended = 0 if active else end_user_sessions(session, user.id)
    log.info("user id=%s active=%s sessions_ended=%d", user.id, active, ended)
    return ended


def _only_admin_left(session: Session, user: User) -> bool:
    admins = session.scalar(select(func.count()).select_from(User).where(
        User.role == "admin", User.active.is_(True)))
    return user.role == "admin" and user.active and (admins or 0) <= 1


def set_role(session: Session, username: str, role: str) -> int:
    """Change a user's role; their sessions end when it changes (they log in again with the
    new rights). Returns how many sessions ended. The last active administrator keeps the
    role, and a physician needs a physician assignment."""
    if role not in ROLES:
        raise ConfigError(f"Role {role!r} is unknown; expected one of {', '.join(ROLES)}.")
    user = _user(session, username)
    if user.role == role:
        return 0
    if _only_admin_left(session, user):
        raise ConflictError(f"{username!r} is the only active administrator; expected another "
                            "active administrator before changing this one's role.")
    if role == "physician" and not session.scalar(
            select(func.count()).select_from(UserPhysician).where(
                UserPhysician.user_id == user.id)):
        raise ConflictError(f"{username!r} has no physician assigned; expected the physician "
                            "they sign for to be assigned first.")
    old, user.role = user.role, role
    session.flush()
    ended = end_user_sessions(session, user.id)
    log.info("user id=%s role %s -> %s sessions_ended=%d", user.id, old, role, ended)
    return ended


def set_user_physicians(session: Session, username: str, physician_ids: list[str]) -> list[str]:
    """Replace the physicians a user is assigned to (validated); returns the new list. A
    physician user keeps at least one."""
    user = _user(session, username)
    pids = list(dict.fromkeys(physician_ids))
    known = set(session.scalars(select(Physician.id).where(Physician.id.in_(pids))))
    unknown = [p for p in pids if p not in known]
    if unknown:
        raise NotFoundError(f"Physician id(s) {', '.join(unknown)} arrived; expected physicians "
                            "configured in settings (DICTATION_PHYSICIANS).")
    if user.role == "physician" and not pids:
        raise ConflictError(f"{username!r} is a physician; expected at least the physician "
                            "they sign for.")
    set_physicians(session, user.id, pids)
    log.info("user id=%s physicians=%d", user.id, len(pids))
    return pids


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


# --- throttling of password guesses ------------------------------------------------------


def _name_hash(username: str) -> str:
    return hashlib.sha256(username.strip().lower().encode("utf-8")).hexdigest()


def _delay(failures: int, last: datetime | None, now: datetime, cap: float) -> float:
    if failures < FREE_FAILURES or last is None:
        return 0.0
    wait = min(2.0 ** (failures - 1), cap)
    return max(0.0, wait - (now - as_utc(last)).total_seconds())


def throttle_wait(session: Session, settings: Settings, scope: str, username: str,
                  client: str | None = None, *, now: datetime | None = None) -> float:
    """Seconds to wait before the next password try for ``username`` (and from ``client``,
    when given) in ``scope`` (``login`` or ``sign``); 0 when a try may go ahead."""
    now = now or datetime.now(UTC)
    since = now - timedelta(minutes=settings.login_failure_window_minutes)
    cap = settings.login_max_delay_seconds
    recent = (AuthFailure.scope == scope, AuthFailure.ts >= since)
    n, last = session.execute(
        select(func.count(), func.max(AuthFailure.ts))
        .where(*recent, AuthFailure.username_hash == _name_hash(username))
    ).one()
    wait = _delay(int(n or 0), last, now, cap)
    if client:
        n, last = session.execute(
            select(func.count(), func.max(AuthFailure.ts))
            .where(*recent, AuthFailure.client == client[:100])
        ).one()
        wait = max(wait, _delay(int(n or 0), last, now, cap))
    return wait


def note_failure(session: Session, scope: str, username: str, client: str | None = None,
                 *, now: datetime | None = None) -> None:
    """Record one wrong password for ``username`` (from ``client``) in ``scope``."""
    session.add(AuthFailure(ts=now or datetime.now(UTC), scope=scope,
                            username_hash=_name_hash(username),
                            client=client[:100] if client else None))
    session.flush()


def clear_failures(session: Session, settings: Settings, scope: str, username: str,
                   *, now: datetime | None = None) -> None:
    """Forget ``username``'s failures in ``scope`` (after a success) and, while at it, every
    failure older than the throttling window."""
    now = now or datetime.now(UTC)
    since = now - timedelta(minutes=settings.login_failure_window_minutes)
    session.execute(delete(AuthFailure).where(AuthFailure.scope == scope,
                                              AuthFailure.username_hash == _name_hash(username)))
    session.execute(delete(AuthFailure).where(AuthFailure.ts < since))
    session.flush()
