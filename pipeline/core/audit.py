"""Append-only, hash-chained audit log, keyed with a secret kept outside the database.

Each event's ``hash`` is an HMAC-SHA256, under the audit key, of the previous event's hash
and the event's own canonical JSON, so changing, deleting or re-ordering any stored event
breaks the chain from that point on, and someone who can write the database but has not got
the key cannot recompute the chain after an edit; ``verify`` finds the first broken link.
Writers are serialised by updating the single ``audit_head`` row inside the writer's
transaction (a write lock on SQLite, a row lock on PostgreSQL), so concurrent writers never
fork the chain.

The key lives outside the database and the data directory: ``settings.audit_key`` (env
``DICTATION_AUDIT_KEY``), else the file ``settings.audit_key_file`` (default
``~/.config/dictation/audit.key``), created with mode 0600 by the first event written.

Signed checkpoints: every ``settings.audit_checkpoint_every`` events, and at each successful
``verify``, a line ``{"id", "hash", "keyed_from", "ts"}<TAB>HMAC`` is appended to
``<data_dir>/audit-checkpoints.log`` once the transaction has committed. ``verify`` checks
each named event against its line, so deleting the newest events (and fixing up
``audit_head``) is found as "the newest events were removed" while a checkpoint names an event
that is gone.

Chains written before keys existed (plain SHA-256, ``_digest``): the first event written by
this version verifies the old chain once, then appends a switch-over event (action
``audit_keyed``, detail ``legacy_events`` and ``legacy_intact``) hashed with the key; from it
on every event is keyed. ``verify`` accepts plain hashes only before that marked event. A new
database is keyed from its first event.

Events carry ids and codes only: never transcript text. ``patient_ref`` holds the MRN so an
administrator can answer "who looked at this patient's documents".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import select, update
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

from pipeline.core.db.core import AuditEvent, AuditHead
from pipeline.core.errors import ConfigError
from pipeline.core.settings import Settings, get_settings

__all__ = [
    "record",
    "verify",
    "configure",
    "config_for",
    "load_key",
    "AuditConfig",
    "VerifyResult",
    "GENESIS",
    "SWITCH_ACTION",
    "DEFAULT_KEY_FILE",
    "CHECKPOINT_FILE",
]

log = logging.getLogger(__name__)

GENESIS = "0" * 64
SWITCH_ACTION = "audit_keyed"
DEFAULT_KEY_FILE = Path("~/.config/dictation/audit.key")
CHECKPOINT_FILE = "audit-checkpoints.log"

_PENDING = "audit_checkpoint_pending"
_LISTENING = "audit_checkpoint_listening"


# --- configuration and key ----------------------------------------------------------------


@dataclass(frozen=True)
class AuditConfig:
    """Where the audit key and the signed checkpoints of one database live."""

    key_file: Path | None  # None when the key came from the environment
    key_value: bytes | None
    checkpoint_file: Path | None
    checkpoint_every: int = 100

    @property
    def key_source(self) -> str:
        """Where the key comes from, for messages (never the key itself)."""
        return str(self.key_file) if self.key_file else "DICTATION_AUDIT_KEY"


_CONFIGS: dict[str, AuditConfig] = {}


def _url_key(url: str) -> str:
    return make_url(url).render_as_string(hide_password=False)


def config_for(settings: Settings) -> AuditConfig:
    """The audit configuration ``settings`` describe; the key must lie outside the data
    directory (a copy of the data directory must not carry what forges the chain)."""
    if settings.audit_key:
        return AuditConfig(None, settings.audit_key.strip().encode(),
                           settings.data_path / CHECKPOINT_FILE,
                           settings.audit_checkpoint_every)
    key_file = (settings.audit_key_file or DEFAULT_KEY_FILE).expanduser().resolve()
    if key_file.is_relative_to(settings.data_path):
        raise ConfigError(
            f"The audit key file {key_file} lies inside the data directory; expected a place "
            "outside it (default ~/.config/dictation/audit.key)."
        )
    return AuditConfig(key_file, None, settings.data_path / CHECKPOINT_FILE,
                       settings.audit_checkpoint_every)


def configure(settings: Settings) -> AuditConfig:
    """Use ``settings``' key and checkpoint file for events of ``settings.db_url``.

    Without it, a database is served by the process settings (``get_settings``), with the
    checkpoint file beside an SQLite database that those settings do not name."""
    cfg = config_for(settings)
    _CONFIGS[_url_key(settings.db_url)] = cfg
    return cfg


def _engine(session: Session) -> Engine:
    bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


def _config(session: Session) -> AuditConfig:
    url = _engine(session).url
    key = url.render_as_string(hide_password=False)
    if key in _CONFIGS:
        return _CONFIGS[key]
    settings = get_settings()
    cfg = config_for(settings)
    if _url_key(settings.db_url) == key:
        return cfg
    checkpoint: Path | None = None
    if url.drivername.startswith("sqlite") and url.database not in (None, "", ":memory:"):
        checkpoint = Path(str(url.database)).resolve().parent / CHECKPOINT_FILE
    return AuditConfig(cfg.key_file, cfg.key_value, checkpoint, cfg.checkpoint_every)


def load_key(cfg: AuditConfig, *, create: bool = False) -> bytes | None:
    """The audit key, or None when its file does not exist (created 0600 with ``create``)."""
    if cfg.key_value is not None:
        return cfg.key_value
    assert cfg.key_file is not None
    try:
        value = cfg.key_file.read_text().strip()
    except FileNotFoundError:
        if not create:
            return None
        cfg.key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        value = secrets.token_hex(32)
        try:
            fd = os.open(cfg.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first
            return cfg.key_file.read_text().strip().encode()
        with os.fdopen(fd, "w") as fh:
            fh.write(value + "\n")
        log.info("generated the audit key (outside the data directory)")
    if not value:
        raise ConfigError(f"The audit key file {cfg.key_file} is empty; expected a key.")
    return value.encode()


# --- digests --------------------------------------------------------------------------------


def _canonical(event: AuditEvent) -> str:
    ts = event.ts
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    payload = {
        "ts": ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor": event.actor,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "patient_ref": event.patient_ref,
        "outcome": event.outcome,
        "detail": event.detail or {},
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)


def _digest(prev_hash: str, event: AuditEvent) -> str:
    """The unkeyed digest of chains written before the switch-over (plain SHA-256)."""
    return hashlib.sha256((prev_hash + "|" + _canonical(event)).encode("utf-8")).hexdigest()


def _keyed_digest(key: bytes, prev_hash: str, event: AuditEvent) -> str:
    """HMAC-SHA256 under the audit key of the previous hash and the event."""
    message = (prev_hash + "|" + _canonical(event)).encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


# --- signed checkpoints ------------------------------------------------------------------


@dataclass(frozen=True)
class _Checkpoint:
    id: int
    hash: str
    keyed_from: int | None


def _checkpoint_mac(key: bytes, body: str) -> str:
    return hmac.new(key, b"checkpoint|" + body.encode(), hashlib.sha256).hexdigest()


def _append_checkpoint(cfg: AuditConfig, key: bytes, cp: _Checkpoint) -> None:
    if cfg.checkpoint_file is None:
        return
    body = json.dumps({"id": cp.id, "hash": cp.hash, "keyed_from": cp.keyed_from,
                       "ts": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")},
                      sort_keys=True, separators=(",", ":"))
    line = f"{body}\t{_checkpoint_mac(key, body)}\n".encode()
    cfg.checkpoint_file.parent.mkdir(parents=True, exist_ok=True)
    # one write() on an O_APPEND file: lines of concurrent writers do not interleave
    fd = os.open(cfg.checkpoint_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _read_checkpoints(cfg: AuditConfig, key: bytes) -> tuple[list[_Checkpoint], int | None]:
    """The checkpoints in the file, and the number of the first line with a bad signature."""
    if cfg.checkpoint_file is None or not cfg.checkpoint_file.exists():
        return [], None
    out: list[_Checkpoint] = []
    with cfg.checkpoint_file.open(encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            body, _, mac = line.rpartition("\t")
            if not body or not hmac.compare_digest(mac, _checkpoint_mac(key, body)):
                return out, number
            try:
                data = json.loads(body)
                out.append(_Checkpoint(int(data["id"]), str(data["hash"]),
                                       data.get("keyed_from")))
            except (ValueError, KeyError, TypeError):
                return out, number
    return out, None


def _after_commit(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if pending is None:
        return
    cfg, key, cp = pending
    try:
        # a savepoint rolled back may have taken the event: write only what was committed
        with _engine(session).connect() as conn:
            stored = conn.execute(select(AuditEvent.hash).where(AuditEvent.id == cp.id))
            if stored.scalar() != cp.hash:
                return
        _append_checkpoint(cfg, key, cp)
    except Exception as exc:  # never fail the caller's (committed) work over a checkpoint
        log.error("audit checkpoint not written: %s", type(exc).__name__)


def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)


def _checkpoint_after_commit(session: Session, cfg: AuditConfig, key: bytes,
                             cp: _Checkpoint) -> None:
    session.info[_PENDING] = (cfg, key, cp)
    if not session.info.get(_LISTENING):
        sa_event.listen(session, "after_commit", _after_commit)
        sa_event.listen(session, "after_rollback", _after_rollback)
        session.info[_LISTENING] = True


# --- writing ----------------------------------------------------------------------------


def _append(session: Session, head: AuditHead, key: bytes, **values: Any) -> AuditEvent:
    event = AuditEvent(ts=datetime.now(UTC), prev_hash=head.last_hash, **values)
    event.hash = _keyed_digest(key, head.last_hash, event)
    head.last_hash = event.hash
    session.add(event)
    session.flush()
    return event


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    object_type: str,
    object_id: str | None = None,
    patient_ref: str | None = None,
    outcome: str = "ok",
    detail: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain in ``session``'s transaction and return it.

    The event becomes durable when the caller commits. ``detail`` must hold ids, codes and
    counts only. Raises ``ConfigError`` when the chain is keyed and its key is missing.
    """
    # Take the write lock first: bump the head row (created on first use).
    bumped = session.execute(
        update(AuditHead).where(AuditHead.id == 1).values(seq=AuditHead.seq + 1)
    ).rowcount  # type: ignore[attr-defined]
    if not bumped:
        session.add(AuditHead(id=1, seq=1, last_hash=GENESIS))
        session.flush()
    head = session.execute(select(AuditHead).where(AuditHead.id == 1)).scalar_one()
    session.refresh(head)
    cfg = _config(session)
    checkpoint = False
    if head.keyed_from is None:
        key = load_key(cfg, create=True)
        assert key is not None
        if head.last_hash != GENESIS:
            # an unkeyed chain from before keys: verify it once, then switch over, marked
            legacy = _walk(session, None, cfg, [])
            if not legacy.ok:
                log.warning("audit: the unkeyed chain was broken at event %s before the "
                            "switch-over to keyed hashes", legacy.first_bad_id)
            marker = _append(session, head, key, actor="system:audit", action=SWITCH_ACTION,
                             object_type="audit", outcome="ok" if legacy.ok else "failed",
                             detail={"legacy_events": legacy.checked,
                                     "legacy_intact": legacy.ok})
            head.seq += 1
            head.keyed_from = marker.id
            checkpoint = True
    else:
        key = load_key(cfg)
        if key is None:
            raise ConfigError(
                f"The audit key ({cfg.key_source}) is missing; the audit chain is keyed since "
                f"event {head.keyed_from}. Expected the key it was written with (restore it "
                "from the backup of the key, never from the data directory)."
            )
    event = _append(session, head, key, actor=actor, action=action, object_type=object_type,
                    object_id=object_id, patient_ref=patient_ref, outcome=outcome,
                    detail=detail or {})
    if head.keyed_from is None:
        head.keyed_from = event.id
        checkpoint = True
    session.flush()
    if cfg.checkpoint_file is not None and (checkpoint
                                            or head.seq % cfg.checkpoint_every == 0):
        _checkpoint_after_commit(session, cfg, key, _Checkpoint(event.id, event.hash,
                                                                head.keyed_from))
    return event


# --- verifying --------------------------------------------------------------------------


@dataclass
class VerifyResult:
    """Outcome of ``verify``: ok, events checked, and the first bad event id if any.

    ``keyed_from``: the first keyed event; ``key_missing``: the key was not found, nothing
    could be verified; ``warnings``: what verify could not check.
    """

    ok: bool
    checked: int
    first_bad_id: int | None = None
    reason: str = ""
    keyed_from: int | None = None
    key_missing: bool = False
    checkpoints: int = 0
    warnings: list[str] = field(default_factory=list)


def _walk(session: Session, key: bytes | None, cfg: AuditConfig,
          checkpoints: list[_Checkpoint]) -> VerifyResult:
    """Walk the chain in id order: the first event whose hash or link does not match, each
    checkpoint against its event, and the head. ``key`` None: the unkeyed check only."""
    named = {cp.id: cp for cp in checkpoints}
    prev = GENESIS
    checked = 0
    keyed_from: int | None = None
    last_id: int | None = None
    for event in session.scalars(select(AuditEvent).order_by(AuditEvent.id)).yield_per(1000):
        if event.prev_hash != prev:
            return VerifyResult(False, checked, event.id,
                                "an event before it was changed or removed", keyed_from)
        if keyed_from is not None:
            good = key is not None and _keyed_digest(key, prev, event) == event.hash
        elif (key is not None and (prev == GENESIS or event.action == SWITCH_ACTION)
              and _keyed_digest(key, prev, event) == event.hash):
            keyed_from, good = event.id, True
        else:
            good = event.action != SWITCH_ACTION and _digest(prev, event) == event.hash
        if not good:
            return VerifyResult(False, checked, event.id, "its content does not match its hash",
                                keyed_from)
        cp = named.get(event.id)
        if cp is not None and cp.hash != event.hash:
            return VerifyResult(False, checked, event.id,
                                "it differs from its signed checkpoint", keyed_from)
        prev = event.hash
        checked += 1
        last_id = event.id
    if checkpoints:
        newest = max(cp.id for cp in checkpoints)
        if last_id is None or newest > last_id:
            return VerifyResult(False, checked, None,
                                f"the newest events were removed (a signed checkpoint names "
                                f"event {newest}, the last event is {last_id or 'none'})",
                                keyed_from)
        marked = {cp.keyed_from for cp in checkpoints if cp.keyed_from is not None}
        if marked and keyed_from not in marked:
            return VerifyResult(False, checked, None,
                                "the chain was rewritten without the key (signed checkpoints "
                                f"say it is keyed from event {min(marked)})", keyed_from)
    head = session.get(AuditHead, 1)
    if head is not None and head.last_hash != prev:
        return VerifyResult(False, checked, None, "the newest events were removed", keyed_from)
    return VerifyResult(True, checked, keyed_from=keyed_from)


def verify(session: Session, settings: Settings | None = None) -> VerifyResult:
    """Walk the chain in id order and report the first event whose hash does not match,
    then check the signed checkpoints; on success append a checkpoint of the head.

    ``settings``: whose key and checkpoint file to use (default: as ``record`` finds them).
    """
    cfg = config_for(settings) if settings is not None else _config(session)
    any_event = session.scalar(select(AuditEvent.id).limit(1))
    key = load_key(cfg)
    if key is None:
        head = session.get(AuditHead, 1)
        if any_event is not None and head is not None and head.keyed_from is None:
            # an old unkeyed chain that no event has switched over yet: no key needed
            result = _walk(session, None, cfg, [])
            if result.ok:
                result.warnings.append("the chain is not keyed yet (written before audit "
                                       "keys): it switches over at the next event")
            return result
        if any_event is None:
            return VerifyResult(True, 0)
        return VerifyResult(
            False, 0, None,
            f"the audit key was not found ({cfg.key_source}); keyed events cannot be "
            "verified without it: point audit_key_file (DICTATION_AUDIT_KEY_FILE) at the key "
            "the events were written with",
            key_missing=True,
        )
    checkpoints, bad_line = _read_checkpoints(cfg, key)
    if bad_line is not None:
        return VerifyResult(False, 0, None,
                            f"line {bad_line} of the signed checkpoint file "
                            f"{cfg.checkpoint_file} has a wrong signature")
    result = _walk(session, key, cfg, checkpoints)
    result.checkpoints = len(checkpoints)
    if not result.ok:
        return result
    if result.keyed_from is None and result.checked:
        result.warnings.append("the chain is not keyed yet (written before audit keys): it "
                               "switches over at the next event")
    elif result.checked and not checkpoints:
        result.warnings.append(f"no signed checkpoints in {cfg.checkpoint_file}: a deleted "
                               "tail could not be checked")
    if result.keyed_from is not None:
        head = session.get(AuditHead, 1)
        last = session.scalar(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1))
        if head is not None and last is not None and last.id not in {c.id for c in checkpoints}:
            _append_checkpoint(cfg, key, _Checkpoint(last.id, last.hash, result.keyed_from))
    return result
