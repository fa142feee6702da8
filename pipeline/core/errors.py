"""Errors raised by the pipeline stages.

Every message says what arrived and what was expected, in one sentence, and never
contains transcript text or patient identifiers. The CLI prints ``str(error)`` as one
line and exits non-zero.
"""

from __future__ import annotations

__all__ = [
    "PipelineError",
    "ConfigError",
    "ModelNotFoundError",
    "AudioError",
    "AudioDecodeError",
    "UnsupportedFormatError",
    "EmptyAudioError",
    "TruncatedAudioError",
    "AudioTooLongError",
    "SidecarError",
    "TemplateFieldError",
    "TemplateNotFoundError",
    "DuplicateDictationError",
    "StoreError",
    "PermissionDeniedError",
    "ConflictError",
    "NotFoundError",
    "DeliveryError",
    "PdfConversionError",
    "PrefectCompatError",
    "ModelIntegrityError",
]


class PipelineError(Exception):
    """Base class: a failure the user can act on, described in one sentence."""

    #: short machine-readable code used in JSON output, quarantine reasons and the audit log
    code: str = "pipeline_error"

    def __init__(self, message: str) -> None:
        if not message or not message.strip():
            raise ValueError("PipelineError needs a non-empty message")
        super().__init__(message.strip())

    @property
    def message(self) -> str:
        return str(self)


class ConfigError(PipelineError):
    code = "config_error"


class ModelNotFoundError(PipelineError):
    code = "model_not_found"


class AudioError(PipelineError):
    code = "audio_error"


class AudioDecodeError(AudioError):
    code = "audio_decode_error"


class UnsupportedFormatError(AudioError):
    code = "unsupported_format"


class EmptyAudioError(AudioError):
    code = "empty_audio"


class TruncatedAudioError(AudioError):
    code = "truncated_audio"


class AudioTooLongError(AudioError):
    code = "audio_too_long"


class SidecarError(PipelineError):
    code = "sidecar_error"


class TemplateFieldError(PipelineError):
    code = "template_field_error"


class TemplateNotFoundError(PipelineError):
    code = "template_not_found"


class DuplicateDictationError(PipelineError):
    code = "duplicate"


class StoreError(PipelineError):
    code = "store_error"


class PermissionDeniedError(PipelineError):
    code = "permission_denied"


class ConflictError(PipelineError):
    code = "conflict"


class NotFoundError(PipelineError):
    code = "not_found"


class DeliveryError(PipelineError):
    code = "delivery_error"


class PdfConversionError(PipelineError):
    """LibreOffice is missing or failed to convert a document."""

    code = "pdf_error"


class PrefectCompatError(PipelineError):
    """The installed Prefect (or a library its server runs on) no longer has what one of
    ``pipeline.prefect_compat``'s patches replaces."""

    code = "prefect_compat"


class ModelIntegrityError(ModelNotFoundError):
    """A shipped speech model's file does not match the SHA-256 in ``models/registry.toml``."""

    code = "model_integrity"
