"""Sidecar JSON: the optional ``<name>.json`` beside a dictation's audio.

    {"patient_name": "Jane Doe", "date_of_birth": "1961-04-02", "mrn": "A12345",
     "encounter_id": "E-778", "date_of_service": "2026-11-20",
     "document_type": "operative_report", "priority": "stat",
     "referring_physician": "Dr. Anna Patel", "note": "left knee",
     "physician_id": "dr-smith"}

Every key is optional; unknown keys are an error (a typo must not silently drop data).
A sidecar is read only if it is a regular file (a link is never followed, a FIFO never
blocks the reader) and at most ``MAX_SIDECAR_BYTES`` (+1, to tell that it is larger) are read.
Once claimed, a sidecar is stored encrypted (``pipeline.core.files.seal``); reading it
decrypts it (the header tells), still bounded.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.core import crypto, files
from pipeline.core.errors import SidecarError
from pipeline.core.records import DictationMeta
from pipeline.core.settings import Settings

__all__ = ["SidecarModel", "parse_sidecar", "read_sidecar", "read_sidecar_bytes", "sidecar_path",
           "MAX_SIDECAR_BYTES"]

MAX_SIDECAR_BYTES = 64 * 1024


class SidecarModel(BaseModel):
    """Validated sidecar content."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    patient_name: str | None = Field(None, max_length=200)
    date_of_birth: date | None = None
    mrn: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9\-_.]+$")
    encounter_id: str | None = Field(None, max_length=64)
    date_of_service: date | None = None
    document_type: str | None = Field(None, max_length=64, pattern=r"^[a-z0-9_]+$")
    priority: Literal["stat", "routine"] = "routine"
    referring_physician: str | None = Field(None, max_length=200)
    note: str | None = Field(None, max_length=2000)
    physician_id: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9\-_.]+$")

    @field_validator("priority", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower().strip() if isinstance(value, str) else value

    @field_validator("document_type", mode="before")
    @classmethod
    def _doc_type(cls, value: object) -> object:
        if isinstance(value, str):
            return value.strip().lower().replace(" ", "_").replace("-", "_")
        return value


def sidecar_path(audio_path: Path) -> Path:
    """Where the sidecar of ``audio_path`` would be: same folder, same stem, ``.json``."""
    return audio_path.with_suffix(".json")


def parse_sidecar(raw: bytes | str, *, name: str = "sidecar") -> DictationMeta:
    """Validate sidecar JSON and return it as ``DictationMeta``; ``SidecarError`` if malformed.

    The message names the file and the offending field, never a field's value (it may be PHI).
    """
    if isinstance(raw, bytes):
        if len(raw) > MAX_SIDECAR_BYTES:
            raise SidecarError(
                f"Sidecar {name} is {len(raw)} bytes; at most {MAX_SIDECAR_BYTES} are accepted."
            )
        try:
            raw = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise SidecarError(f"Sidecar {name} is not UTF-8 text.") from exc
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SidecarError(
            f"Sidecar {name} is not valid JSON (line {exc.lineno}, column {exc.colno})."
        ) from exc
    if not isinstance(data, dict):
        raise SidecarError(f"Sidecar {name} must be a JSON object, got {type(data).__name__}.")
    try:
        model = SidecarModel.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        kind = "is not a known field" if err["type"] == "extra_forbidden" else err["msg"].lower()
        raise SidecarError(f"Sidecar {name}: field '{field}' {kind}.") from exc
    return DictationMeta(source="sidecar", **model.model_dump())


#: an encrypted sidecar of MAX_SIDECAR_BYTES + 1 plain bytes: header + one chunk's tag
_SEALED_OVERHEAD = crypto.HEADER_SIZE + 16


def read_sidecar_bytes(path: Path, settings: Settings | None = None) -> bytes:
    """The plain bytes of the sidecar file ``path``, bounded (at most ``MAX_SIDECAR_BYTES``
    + 1), decrypted with ``settings``' key ring when it is stored encrypted.

    Raises ``SidecarError`` for a link, a special file or a file that cannot be read (or
    decrypted).
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SidecarError(
                f"Sidecar {path.name} is a symbolic link; only regular files are read."
            ) from exc
        raise SidecarError(
            f"Sidecar {path.name} could not be read ({exc.strerror or type(exc).__name__})."
        ) from exc
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise SidecarError(f"Sidecar {path.name} is not a regular file (a pipe or device).")
        raw = fh.read(MAX_SIDECAR_BYTES + 1 + _SEALED_OVERHEAD)
    if not raw.startswith(crypto.MAGIC):
        return raw[: MAX_SIDECAR_BYTES + 1]
    try:
        return crypto.decrypt_bytes(raw, files.keys_for(settings),
                                    name=f"sidecar {path.name}")[: MAX_SIDECAR_BYTES + 1]
    except crypto.DecryptionError as exc:
        raise SidecarError(f"Sidecar {path.name} is encrypted and could not be decrypted: "
                           f"{exc}") from exc


def read_sidecar(audio_path: Path, settings: Settings | None = None) -> DictationMeta | None:
    """Read the sidecar beside ``audio_path``; ``None`` if there is none."""
    path = sidecar_path(audio_path)
    if not os.path.lexists(path):
        return None
    return parse_sidecar(read_sidecar_bytes(path, settings), name=path.name)
