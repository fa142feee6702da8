"""Auto-texts ("normals") and per-user transcription keys.

An auto-text is a standard text block ("normal physical exam", "standard post-op
instructions") owned by the practice (``owner="practice"``) or by one physician (``owner`` is
the physician id). The dictation inserts it with a spoken command ("insert normal exam":
``pipeline.language.normalize.autotexts``) and the editor with a shortcut (``;normal exam``
then Tab). Physicians manage their own, administrators the practice's; every edit adds a
version (old ones are kept) and is audited (ids and trigger phrases only, never bodies).

Transcription keys: what each editor action (play/pause, rewind, forward, slower, faster,
next flag) is bound to, per user, with a preset for the common USB foot pedals (they send
ordinary keys, F9/F10/F11 out of the box).

Every function takes an open session; the caller commits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.core import audit
from pipeline.core.db.review import AutoText, AutoTextVersion, UserPreference
from pipeline.core.errors import ConflictError, NotFoundError, PermissionDeniedError
from pipeline.review.users import UserInfo

__all__ = [
    "PRACTICE",
    "AutoTextInfo",
    "normalize_trigger",
    "may_manage",
    "owners_for",
    "list_autotexts",
    "get_autotext",
    "create_autotext",
    "update_autotext",
    "set_active",
    "autotext_versions",
    "active_autotexts",
    "KEY_ACTIONS",
    "KEY_PRESETS",
    "DEFAULT_KEYS",
    "get_keys",
    "save_keys",
]

#: The owner of the practice's shared auto-texts.
PRACTICE = "practice"
_MAX_BODY = 20_000
_TRIGGER_OK = re.compile(r"^[a-z0-9][a-z0-9' -]{0,98}[a-z0-9]$|^[a-z0-9]$")


@dataclass
class AutoTextInfo:
    """One auto-text as the pages and the editor show it."""

    id: int
    owner: str
    name: str
    trigger: str
    body: str
    version: int
    active: bool


def _info(row: AutoText) -> AutoTextInfo:
    return AutoTextInfo(row.id, row.owner, row.name, row.trigger, row.body, row.version,
                        bool(row.active))


def normalize_trigger(phrase: str) -> str:
    """The trigger phrase as it is matched: lower case, single spaces, no punctuation at the
    ends ("Normal  Exam." -> "normal exam"). Raises ``ConflictError`` when nothing is left
    or it holds characters a spoken phrase cannot have."""
    value = " ".join(phrase.lower().replace("-", " ").split()).strip(" .,;:!?\"'")
    if not value or not _TRIGGER_OK.match(value):
        raise ConflictError("A trigger phrase is one to a few spoken words (letters, digits, "
                            "spaces), e.g. 'normal exam'.")
    return value


def may_manage(user: UserInfo, owner: str) -> bool:
    """Physicians manage their own auto-texts, administrators the practice's."""
    if owner == PRACTICE:
        return user.role == "admin"
    return user.role == "physician" and owner in user.physician_ids


def owners_for(user: UserInfo) -> list[str]:
    """The owners whose auto-texts ``user`` may manage."""
    if user.role == "admin":
        return [PRACTICE]
    if user.role == "physician":
        return sorted(user.physician_ids)
    return []


def list_autotexts(session: Session, user: UserInfo) -> list[AutoTextInfo]:
    """Every auto-text ``user`` may use or manage: the practice's and those of the physicians
    the user works for (inactive ones included, marked)."""
    rows = session.scalars(select(AutoText).order_by(AutoText.owner, AutoText.trigger)).all()
    return [_info(r) for r in rows
            if r.owner == PRACTICE or user.may_see_physician(r.owner)]


def get_autotext(session: Session, autotext_id: int) -> AutoText:
    """The auto-text row; raises ``NotFoundError``."""
    row = session.get(AutoText, autotext_id)
    if row is None:
        raise NotFoundError(f"Auto-text {autotext_id} does not exist.")
    return row


def _check(user: UserInfo, owner: str, session: Session, action: str) -> None:
    if not may_manage(user, owner):
        audit.record(session, actor=user.username, action=action, object_type="autotext",
                     outcome="denied", detail={"owner": owner})
        session.commit()  # keep the record of the refused attempt
        raise PermissionDeniedError("Physicians manage their own auto-texts and "
                                    "administrators the practice's.")


def _clean_fields(name: str, body: str) -> tuple[str, str]:
    name = " ".join(name.split())[:200]
    body = body.replace("\r\n", "\n").replace("\r", "\n").strip()
    if not name or not body:
        raise ConflictError("An auto-text needs a name and a body.")
    if len(body) > _MAX_BODY:
        raise ConflictError(f"The body is {len(body)} characters; at most {_MAX_BODY}.")
    return name, body


def _trigger_taken(session: Session, owner: str, trigger: str, but: int | None = None) -> None:
    clash = session.scalar(select(AutoText.id).where(
        AutoText.owner == owner, AutoText.trigger == trigger, AutoText.active.is_(True)))
    if clash is not None and clash != but:
        raise ConflictError(f"Another active auto-text of {owner} already has the trigger "
                            f"'{trigger}'.")


def _add_version(session: Session, row: AutoText, author: str) -> None:
    session.add(AutoTextVersion(autotext_id=row.id, version=row.version, name=row.name,
                                trigger=row.trigger, body=row.body, active=row.active,
                                author=author, created_at=datetime.now(UTC)))


def create_autotext(session: Session, user: UserInfo, *, owner: str, name: str, trigger: str,
                    body: str) -> AutoTextInfo:
    """Create an auto-text (version 1) for ``owner``; audited."""
    _check(user, owner, session, "autotext_add")
    name, body = _clean_fields(name, body)
    trig = normalize_trigger(trigger)
    _trigger_taken(session, owner, trig)
    now = datetime.now(UTC)
    row = AutoText(owner=owner, name=name, trigger=trig, body=body, version=1, active=True,
                   created_at=now, updated_at=now)
    session.add(row)
    session.flush()
    _add_version(session, row, user.username)
    audit.record(session, actor=user.username, action="autotext_add", object_type="autotext",
                 object_id=str(row.id), detail={"owner": owner, "trigger": trig, "version": 1})
    session.flush()
    return _info(row)


def update_autotext(session: Session, user: UserInfo, autotext_id: int, *, name: str,
                    trigger: str, body: str) -> AutoTextInfo:
    """Edit an auto-text: a new version (the old one is kept); audited. No change, no
    version."""
    row = get_autotext(session, autotext_id)
    _check(user, row.owner, session, "autotext_edit")
    name, body = _clean_fields(name, body)
    trig = normalize_trigger(trigger)
    if (name, trig, body) == (row.name, row.trigger, row.body):
        return _info(row)
    if row.active:
        _trigger_taken(session, row.owner, trig, but=row.id)
    row.name, row.trigger, row.body = name, trig, body
    row.version += 1
    row.updated_at = datetime.now(UTC)
    _add_version(session, row, user.username)
    audit.record(session, actor=user.username, action="autotext_edit", object_type="autotext",
                 object_id=str(row.id),
                 detail={"owner": row.owner, "trigger": trig, "version": row.version})
    session.flush()
    return _info(row)


def set_active(session: Session, user: UserInfo, autotext_id: int, active: bool) -> AutoTextInfo:
    """Deactivate (or reactivate) an auto-text: a new version; audited."""
    row = get_autotext(session, autotext_id)
    _check(user, row.owner, session, "autotext_edit")
    if bool(row.active) == active:
        return _info(row)
    if active:
        _trigger_taken(session, row.owner, row.trigger, but=row.id)
    row.active = active
    row.version += 1
    row.updated_at = datetime.now(UTC)
    _add_version(session, row, user.username)
    audit.record(session, actor=user.username,
                 action="autotext_activate" if active else "autotext_deactivate",
                 object_type="autotext", object_id=str(row.id),
                 detail={"owner": row.owner, "trigger": row.trigger, "version": row.version})
    session.flush()
    return _info(row)


def autotext_versions(session: Session, autotext_id: int) -> list[AutoTextVersion]:
    """Every stored version of an auto-text, oldest first."""
    return list(session.scalars(select(AutoTextVersion)
                                .where(AutoTextVersion.autotext_id == autotext_id)
                                .order_by(AutoTextVersion.version)))


def active_autotexts(session: Session, physician_id: str | None) -> dict[str, str]:
    """Trigger phrase -> body of the active auto-texts a dictation of ``physician_id`` may
    insert: the physician's own, else the practice's with the same trigger."""
    owners = [PRACTICE] + ([physician_id] if physician_id else [])
    rows = session.execute(select(AutoText.owner, AutoText.trigger, AutoText.body)
                           .where(AutoText.active.is_(True), AutoText.owner.in_(owners))).all()
    texts = {t: b for o, t, b in rows if o == PRACTICE}
    texts.update({t: b for o, t, b in rows if o != PRACTICE})  # the physician's win
    return texts


# --- transcription keys -----------------------------------------------------------------

#: Editor actions a key can be bound to, with what the pages call them.
KEY_ACTIONS: dict[str, str] = {
    "play_pause": "Play / pause",
    "rewind": "Rewind",
    "forward": "Forward",
    "slower": "Slower",
    "faster": "Faster",
    "next_flag": "Next flagged word",
}
#: Presets: ``keyboard`` is the editor's historical layout; ``pedal`` matches common USB foot
#: pedals (left / middle / right pedal send F9 / F10 / F11 by default: rewind, play/pause,
#: forward). ``rewind_s`` is how far rewind and forward jump.
KEY_PRESETS: dict[str, dict[str, Any]] = {
    "keyboard": {"play_pause": "F9", "rewind": "F7", "forward": "F8", "slower": "Alt+ArrowDown",
                 "faster": "Alt+ArrowUp", "next_flag": "F2", "rewind_s": 3},
    "pedal": {"play_pause": "F10", "rewind": "F9", "forward": "F11", "slower": "Alt+ArrowDown",
              "faster": "Alt+ArrowUp", "next_flag": "F2", "rewind_s": 3},
}
DEFAULT_KEYS = {"preset": "keyboard", **KEY_PRESETS["keyboard"]}
_KEY_OK = re.compile(r"^(?:(?:Ctrl|Alt|Shift|Meta)\+){0,3}[A-Za-z0-9]{1,12}$|^ $")


def get_keys(session: Session, user_id: int) -> dict[str, Any]:
    """``user_id``'s key bindings (action -> key, ``rewind_s``, ``preset``); the keyboard
    preset when none are stored."""
    row = session.get(UserPreference, user_id)
    keys = dict(DEFAULT_KEYS)
    if row is not None and isinstance(row.keys, dict):
        keys.update({k: v for k, v in row.keys.items() if k in keys})
    return keys


def save_keys(session: Session, user: UserInfo, values: dict[str, str]) -> dict[str, Any]:
    """Store ``user``'s key bindings: ``values["preset"]`` picks a preset, the action keys
    (``F9``, ``Alt+P``, ``Ctrl+ArrowLeft``) override it; audited. Returns what is stored."""
    preset = values.get("preset") or "keyboard"
    if preset not in KEY_PRESETS and preset != "custom":
        raise ConflictError(f"Unknown preset {preset!r}; expected one of "
                            f"{', '.join(KEY_PRESETS)} or custom.")
    keys: dict[str, Any] = {"preset": preset,
                            **KEY_PRESETS.get(preset, KEY_PRESETS["keyboard"])}
    if preset == "custom":
        for action in KEY_ACTIONS:
            key = (values.get(action) or "").strip()
            if key and not _KEY_OK.match(key):
                raise ConflictError(f"{KEY_ACTIONS[action]}: {key!r} is not a key name; "
                                    "expected e.g. F9, Alt+P or Ctrl+ArrowLeft.")
            if key:
                keys[action] = key
        try:
            step = int(values.get("rewind_s") or keys["rewind_s"])
        except ValueError as exc:
            raise ConflictError("The rewind step is a whole number of seconds.") from exc
        keys["rewind_s"] = min(max(step, 1), 30)
    bound = [keys[a] for a in KEY_ACTIONS]
    if len(set(bound)) != len(bound):
        raise ConflictError("Two actions have the same key; give each its own.")
    row = session.get(UserPreference, user.id)
    if row is None:
        session.add(UserPreference(user_id=user.id, keys=keys, updated_at=datetime.now(UTC)))
    else:
        row.keys = dict(keys)
        row.updated_at = datetime.now(UTC)
    audit.record(session, actor=user.username, action="keys_edit", object_type="user",
                 object_id=str(user.id), detail={"preset": preset})
    session.flush()
    return keys
