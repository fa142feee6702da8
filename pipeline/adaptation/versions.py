"""Each physician's adapted speech-model versions: recorded, promoted or refused, rolled back.

Plain functions over a SQLAlchemy ``Session`` (table ``speech_model_versions``,
``pipeline.core.db.model_versions``); the caller commits. No torch here: the worker imports
this module to find which model decodes a physician's dictation (``current_model``).

A version's life::

    record_candidate ─▶ candidate ─┬─▶ promote ─▶ promoted, current ─▶ (newer promote) retired
                                   └─▶ refuse  ─▶ refused (figures kept)
    rollback: current ─▶ rolled_back; the most recently promoted of the retired versions
              becomes current again; past the first adapted version: the stock model.

Every candidate's figures are stored, promoted or not (``metrics``; see ``METRICS_KEYS``),
with the ids of the signed dictations it was judged on (``held_back_ids``): later training
leaves them out (``held_back_ids``), so a version is never judged on what it learned from.

Promotion, refusal and rollback each write an audit event (``pipeline.core.audit``) with ids
only: the version's id, number and physician id, and the version it replaced.

Model folders live at ``<data_dir>/adaptation/<physician>/models/v<N>/`` (``model_dir``);
practice-wide versions (``physician_id`` None) under ``adaptation/_practice/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.core import audit
from pipeline.core.db.base import utcnow
from pipeline.core.db.model_versions import MODEL_STATUSES, ModelVersion
from pipeline.core.errors import ConfigError, ConflictError, ModelNotFoundError, NotFoundError
from pipeline.core.settings import Settings
from pipeline.speech.models import REQUIRED_FILES

__all__ = [
    "ModelChoice",
    "label",
    "model_dir",
    "next_version",
    "record_candidate",
    "promote",
    "refuse",
    "current_model",
    "current_version",
    "rollback",
    "list_versions",
    "get_version",
    "held_back_ids",
    "describe",
    "ModelVersion",
    "MODEL_STATUSES",
    "METRICS_KEYS",
    "PRACTICE",
    "ACTOR",
]

#: the folder name (and label) of practice-wide versions
PRACTICE = "_practice"
#: the audit actor of automatic decisions (the gate)
ACTOR = "system:adaptation"
#: audit object type of every event written here
_OBJECT = "speech_model_version"

#: What ``metrics`` holds (numbers and counts only, never text). ``candidate`` and
#: ``baseline`` (the model it was compared with, named by ``baseline_model``) each hold
#: ``wer``, ``term_error_rate`` and ``general_wer`` as fractions (0.12 = 12 %); the counts
#: are ``pairs`` (training windows), ``dictations`` (trained on) and ``held_back`` (judged on).
#: Other keys may be added; ``describe`` and ``dictation models`` show these.
METRICS_KEYS = ("candidate", "baseline", "baseline_model", "pairs", "dictations", "held_back")

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ModelChoice:
    """The adapted model that decodes a physician's dictations: its folder and version."""

    path: Path
    version_id: int
    version: int
    physician_id: str | None

    @property
    def label(self) -> str:
        """What a transcript records as its model, e.g. ``adapted:dr-smith/v3`` (ids only)."""
        return label(self.physician_id, self.version)

    def located(self, settings: Settings) -> Path:
        """The folder to load: the stored path, or, when the data directory was moved or
        restored elsewhere (the stored path is absolute), the same version's folder under
        this data directory (``model_dir``) if that one exists."""
        if self.path.is_dir():
            return self.path
        here = model_dir(settings, self.physician_id, self.version)
        return here if here.is_dir() else self.path


def label(physician_id: str | None, version: int) -> str:
    """The non-PHI name of an adapted version, e.g. ``adapted:dr-smith/v3``."""
    return f"adapted:{physician_id or PRACTICE}/v{version}"


def _folder_name(physician_id: str | None) -> str:
    if physician_id is None:
        return PRACTICE
    if not _SAFE_ID.match(physician_id) or physician_id == PRACTICE:
        raise ConfigError(
            f"Physician id {physician_id!r} cannot name a model folder; expected letters, "
            "digits, '.', '_' or '-' (at most 64), as in DICTATION_PHYSICIANS."
        )
    return physician_id


def model_dir(settings: Settings, physician_id: str | None, version: int) -> Path:
    """The folder of a physician's (None: the practice's) adapted model version ``version``:
    ``<data_dir>/adaptation/<physician>/models/v<version>/`` (not created here)."""
    if version < 1:
        raise ConfigError(f"Model version {version} is not a version number; expected 1 or more.")
    return settings.data_path / "adaptation" / _folder_name(physician_id) / "models" / f"v{version}"


def _of(physician_id: str | None) -> Any:
    """The WHERE clause selecting one physician's (None: the practice's) versions."""
    if physician_id is None:
        return ModelVersion.physician_id.is_(None)
    return ModelVersion.physician_id == physician_id


def next_version(session: Session, physician_id: str | None) -> int:
    """The number the physician's next version gets (1 for the first)."""
    top = session.scalar(select(func.max(ModelVersion.version)).where(_of(physician_id)))
    return int(top or 0) + 1


def get_version(session: Session, version_id: int) -> ModelVersion:
    """The version with id ``version_id``; ``NotFoundError`` if there is none."""
    row = session.get(ModelVersion, version_id)
    if row is None:
        raise NotFoundError(f"Model version id {version_id} does not exist.")
    return row


def current_version(session: Session, physician_id: str | None) -> ModelVersion | None:
    """The physician's own current version (None: the practice's), or None: stock model."""
    return session.scalars(
        select(ModelVersion).where(_of(physician_id), ModelVersion.is_current.is_(True))
        .order_by(ModelVersion.id.desc())
    ).first()


def record_candidate(
    session: Session,
    *,
    physician_id: str | None,
    base_model: str,
    path: Path | str,
    metrics: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    held_back_ids: Iterable[str] = (),
    version: int | None = None,
    parent_version_id: int | None = None,
    actor: str = ACTOR,
) -> ModelVersion:
    """Store a trained model as a candidate (not yet used) and return its row.

    ``version`` defaults to ``next_version``; ``parent_version_id`` is the adapted version it
    was trained from (None: trained from the stock ``base_model``). ``metrics`` and
    ``training`` hold numbers, options and counts only (``METRICS_KEYS``);
    ``held_back_ids`` the dictation ids it is judged on. Audited as ``model_candidate``.
    """
    number = version if version is not None else next_version(session, physician_id)
    if parent_version_id is not None:
        get_version(session, parent_version_id)
    row = ModelVersion(
        physician_id=physician_id,
        version=number,
        base_model=base_model,
        parent_version_id=parent_version_id,
        path=str(path),
        status="candidate",
        is_current=False,
        metrics=dict(metrics or {}),
        training=dict(training or {}),
        held_back_ids=sorted({str(i) for i in held_back_ids}),
    )
    session.add(row)
    session.flush()
    _audit(session, row, actor, "model_candidate")
    return row


def _check_folder(row: ModelVersion) -> None:
    folder = Path(row.path)
    missing = [f for f in REQUIRED_FILES if not (folder / f).is_file()]
    if missing:
        raise ModelNotFoundError(
            f"Model version id {row.id} (v{row.version}) cannot be promoted: its folder "
            f"{folder} lacks {', '.join(missing)}."
        )


def _merge_metrics(row: ModelVersion, metrics: Mapping[str, Any] | None) -> None:
    if metrics:
        row.metrics = {**(row.metrics or {}), **metrics}  # a new dict: JSON change tracked


def promote(
    session: Session, version_id: int, actor: str,
    *, metrics: Mapping[str, Any] | None = None,
) -> ModelVersion:
    """Make the candidate ``version_id`` its physician's current model and return it.

    The version that was current becomes ``retired`` (a rollback may return to it).
    ``metrics`` (the gate's figures) are merged into the row. Raises ``ConflictError`` when
    the version is not a candidate, ``ModelNotFoundError`` when its folder is incomplete.
    Audited as ``model_promote``.
    """
    row = _locked(session, version_id)
    if row.status != "candidate":
        raise ConflictError(
            f"Model version id {row.id} (v{row.version}) is {row.status}; only a candidate "
            "can be promoted."
        )
    _check_folder(row)
    previous = _current_locked(session, row.physician_id)
    for old in previous:
        old.is_current = False
        old.status = "retired"
    session.flush()  # at most one current at any time, also inside the transaction
    row.status = "promoted"
    row.is_current = True
    row.promoted_at = utcnow()
    row.reason = None
    _merge_metrics(row, metrics)
    session.flush()
    _audit(session, row, actor, "model_promote",
           previous_version_id=previous[0].id if previous else None)
    return row


def refuse(
    session: Session, version_id: int, reason: str,
    *, actor: str = ACTOR, metrics: Mapping[str, Any] | None = None,
) -> ModelVersion:
    """Mark the candidate ``version_id`` refused with ``reason`` (stored on the row, not in the
    audit event) and return it; its figures stay. ``ConflictError`` unless a candidate.
    Audited as ``model_refuse``."""
    if not reason.strip():
        raise ConfigError("A refused model version needs a reason; got an empty one.")
    row = _locked(session, version_id)
    if row.status != "candidate":
        raise ConflictError(
            f"Model version id {row.id} (v{row.version}) is {row.status}; only a candidate "
            "can be refused."
        )
    row.status = "refused"
    row.reason = reason.strip()
    _merge_metrics(row, metrics)
    session.flush()
    _audit(session, row, actor, "model_refuse")
    return row


def current_model(
    session: Session, physician_id: str | None, *, practice_fallback: bool = True
) -> ModelChoice | None:
    """The adapted model that decodes ``physician_id``'s dictations, or None (stock model).

    The physician's own current version; without one (or for a dictation without a
    physician), the practice-wide current version when ``practice_fallback``.
    """
    row = current_version(session, physician_id)
    if row is None and physician_id is not None and practice_fallback:
        row = current_version(session, None)
    if row is None:
        return None
    return ModelChoice(Path(row.path), row.id, row.version, row.physician_id)


def rollback(session: Session, physician_id: str | None, actor: str,
             *, reason: str | None = None) -> ModelVersion:
    """Take the physician's current version out of use and return it (now ``rolled_back``).

    The most recently promoted of the physician's ``retired`` versions becomes current
    again; when there is none (the first adapted version was current), the physician goes
    back to the stock model (or the practice-wide one). ``ConflictError`` when no adapted
    version of the physician is current. Audited as ``model_rollback`` (ids only; ``reason``
    is stored on the row).
    """
    current = _current_locked(session, physician_id)
    if not current:
        who = physician_id or "the practice"
        raise ConflictError(
            f"No adapted model is current for {who}: it already uses the stock model, "
            "so there is nothing to roll back."
        )
    row = current[0]
    for old in current:
        old.is_current = False
        old.status = "rolled_back"
    if reason and reason.strip():
        row.reason = reason.strip()
    session.flush()
    back = session.scalars(
        select(ModelVersion)
        .where(_of(physician_id), ModelVersion.status == "retired",
               ModelVersion.promoted_at.is_not(None))
        .order_by(ModelVersion.promoted_at.desc(), ModelVersion.id.desc())
        .with_for_update()
    ).first()
    if back is not None:
        back.status = "promoted"
        back.is_current = True
        session.flush()
    _audit(session, row, actor, "model_rollback",
           restored_version_id=back.id if back is not None else None,
           restored=f"v{back.version}" if back is not None else "stock")
    return row


def list_versions(session: Session, physician_id: str | None = None) -> list[ModelVersion]:
    """Every version (practice-wide first, then by physician), or one physician's, oldest
    first within each."""
    query = select(ModelVersion)
    if physician_id is not None:
        query = query.where(ModelVersion.physician_id == physician_id)
    query = query.order_by(ModelVersion.physician_id.is_not(None), ModelVersion.physician_id,
                           ModelVersion.version)
    return list(session.scalars(query))


def held_back_ids(session: Session, physician_id: str | None = None) -> set[str]:
    """The dictation ids that any version of ``physician_id`` or of the practice was judged
    on (None: of every version): training must leave them out."""
    query = select(ModelVersion.held_back_ids)
    if physician_id is not None:
        query = query.where((ModelVersion.physician_id == physician_id)
                            | ModelVersion.physician_id.is_(None))
    return {str(i) for ids in session.scalars(query) for i in (ids or [])}


def describe(row: ModelVersion) -> dict[str, Any]:
    """A version as plain JSON-ready data (figures, counts, ids; no held-back ids list,
    only its count)."""
    return {
        "id": row.id,
        "physician_id": row.physician_id,
        "version": row.version,
        "label": label(row.physician_id, row.version),
        "status": row.status,
        "current": row.is_current,
        "base_model": row.base_model,
        "parent_version_id": row.parent_version_id,
        "path": row.path,
        "metrics": dict(row.metrics or {}),
        "training": dict(row.training or {}),
        "held_back": len(row.held_back_ids or []),
        "reason": row.reason,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "promoted_at": row.promoted_at.isoformat() if row.promoted_at else None,
    }


def _locked(session: Session, version_id: int) -> ModelVersion:
    row = session.get(ModelVersion, version_id, with_for_update=True)
    if row is None:
        raise NotFoundError(f"Model version id {version_id} does not exist.")
    return row


def _current_locked(session: Session, physician_id: str | None) -> list[ModelVersion]:
    """The physician's current version(s), newest first, locked (PostgreSQL; SQLite
    serialises writers anyway). Normally one; more only after a crash-free race."""
    return list(session.scalars(
        select(ModelVersion).where(_of(physician_id), ModelVersion.is_current.is_(True))
        .order_by(ModelVersion.id.desc()).with_for_update()
    ))


def _audit(session: Session, row: ModelVersion, actor: str, action: str,
           **extra: Any) -> None:
    audit.record(
        session,
        actor=actor,
        action=action,
        object_type=_OBJECT,
        object_id=str(row.id),
        detail={"physician_id": row.physician_id, "version": row.version,
                "status": row.status, **extra},
    )
