"""Plain records passed between the stages.

audio file -> ``AudioInfo`` + ``DictationMeta`` = ``Dictation`` -> ``Transcript``
(``Segment`` / ``Word``) -> ``Note`` (normalized text + ``Correction`` list) ->
``Document`` (``Section`` list, header, ``Instruction`` list) -> ``Draft`` (rendered files).

Records are dataclasses with JSON-friendly fields; ``to_dict()`` gives a dict for JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "Word",
    "Segment",
    "AudioInfo",
    "DictationMeta",
    "Dictation",
    "Transcript",
    "Correction",
    "Note",
    "Section",
    "HeaderField",
    "Instruction",
    "Document",
    "Draft",
    "Flag",
    "to_jsonable",
]

Priority = Literal["stat", "routine"]

#: Flags a stage may attach to a transcript or note (strings, so that later stages can add more).
Flag = str
NO_SPEECH: Flag = "no_speech"
REPETITION: Flag = "repetition"
TRUNCATED: Flag = "truncated"
DROPPED_AUDIO: Flag = "dropped_audio"
LOW_CONFIDENCE: Flag = "low_confidence"


def to_jsonable(value: Any) -> Any:
    """Convert dataclasses, paths and dates recursively into JSON-compatible values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


class _Record:
    def to_dict(self) -> dict[str, Any]:
        result = to_jsonable(self)
        assert isinstance(result, dict)
        return result


@dataclass
class Word(_Record):
    """One recognised word with its timing (seconds) and probability (0..1)."""

    word: str
    start: float
    end: float
    probability: float


@dataclass
class Segment(_Record):
    """A stretch of recognised speech, as faster-whisper returns it (times clamped)."""

    id: int
    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    compression_ratio: float = 0.0
    temperature: float = 0.0


@dataclass
class AudioInfo(_Record):
    """What we know about an audio file before transcribing it."""

    path: Path
    sha256: str
    size_bytes: int
    format: str  # container as PyAV names it, e.g. "wav", "mp3", "mov,mp4,m4a,3gp,3g2,mj2"
    codec: str
    sample_rate: int
    channels: int
    duration_s: float
    truncated: bool = False  # header promises more data than the file holds


@dataclass
class DictationMeta(_Record):
    """Metadata for a dictation: from the sidecar JSON, the inbox folder, or the filename."""

    physician_id: str | None = None
    patient_name: str | None = None
    date_of_birth: date | None = None
    mrn: str | None = None
    encounter_id: str | None = None
    date_of_service: date | None = None
    document_type: str | None = None  # template key, e.g. "operative_report"
    priority: Priority = "routine"
    referring_physician: str | None = None
    note: str | None = None
    source: str = "none"  # "sidecar", "filename", "none"


@dataclass
class Dictation(_Record):
    """One dictation to process: an opaque id, the audio, and its metadata."""

    id: str
    audio: AudioInfo
    meta: DictationMeta = field(default_factory=DictationMeta)


@dataclass
class Transcript(_Record):
    """Whisper's output for one dictation, before any of our text processing."""

    dictation_id: str
    model: str
    language: str
    duration_s: float
    segments: list[Segment] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    transcribe_s: float = 0.0  # wall time spent in the speech model
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def raw_text(self) -> str:
        """Whisper's text as decoded: segment texts joined by single spaces."""
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())

    @property
    def words(self) -> list[Word]:
        return [w for s in self.segments for w in s.words]


@dataclass
class Correction(_Record):
    """One change our text processing made, so a reviewer can see and undo it.

    ``start``/``end`` are character offsets of ``replacement`` in the final ``Note.text``.
    """

    original: str
    replacement: str
    start: int
    end: int
    score: float = 1.0
    kind: str = "term"  # term, command, number, abbreviation, ...
    source_start_s: float | None = None  # audio time of the original words, when known
    source_end_s: float | None = None


@dataclass
class Note(_Record):
    """The dictation text after medical-language normalisation."""

    text: str
    corrections: list[Correction] = field(default_factory=list)
    flags: list[Flag] = field(default_factory=list)
    review_items: list[dict[str, Any]] = field(default_factory=list)  # uncertain changes


@dataclass
class Section(_Record):
    """A section of the document: a template field key, the heading as said, and its text."""

    key: str
    heading: str
    text: str


@dataclass
class HeaderField(_Record):
    """One header value with where it came from; ``conflict`` holds a dictated mismatch."""

    value: str | None
    source: str = "none"  # sidecar, dictation, settings, none
    conflict: str | None = None


@dataclass
class Instruction(_Record):
    """A sentence addressed to the secretary, lifted out of the document body."""

    kind: str  # copy, schedule, order, refer, other
    text: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Document(_Record):
    """A structured document ready for a template."""

    document_type: str
    title: str
    sections: list[Section] = field(default_factory=list)
    header: dict[str, HeaderField] = field(default_factory=dict)
    instructions: list[Instruction] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # template fields with no dictated text
    flags: list[Flag] = field(default_factory=list)


@dataclass
class Draft(_Record):
    """A rendered draft: where its files are and its review status."""

    id: str
    dictation_id: str
    document_type: str
    status: str = "queued_for_review"
    docx_path: Path | None = None
    outputs: dict[str, Path] = field(default_factory=dict)  # kind -> path (pdf, txt, fhir, hl7)
    missing: list[str] = field(default_factory=list)
