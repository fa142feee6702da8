"""The whole path from one audio file to a draft in the review queue, as plain functions.

Each stage is a function over records so that the CLI, the Prefect flow
(``pipeline.service.flows``) and the tests call the same code:

    load_dictation -> transcribe_stage -> normalize_stage -> structure_stage
                   -> render_stage -> enqueue_stage -> pdf_stage

``process_file`` chains them for one file. The draft enters the review queue with its .docx,
text, FHIR and HL7 files; its PDF (LibreOffice, about a second per draft) is made afterwards by
``pdf_stage`` and added to the draft's outputs, so the reviewer never waits for it and a PDF
failure never loses or un-queues a draft.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pipeline.core.records import (
    Dictation,
    DictationMeta,
    Document,
    Draft,
    Note,
    Transcript,
)
from pipeline.core.settings import Settings
from pipeline.ingest import audio as audio_mod

if TYPE_CHECKING:
    from pipeline.language.normalize import LearnedPair

__all__ = [
    "new_id",
    "load_dictation",
    "choose_model",
    "transcribe_stage",
    "normalize_stage",
    "load_autotexts",
    "load_learned",
    "structure_stage",
    "render_stage",
    "enqueue_stage",
    "pdf_stage",
    "process_file",
    "ProcessResult",
]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[float, float], None]  # (seconds done, total seconds)
T = TypeVar("T")


def new_id() -> str:
    """A new opaque id (32 hex characters) for a dictation or draft."""
    return uuid.uuid4().hex


@dataclass
class ProcessResult:
    """Everything one run of the pipeline produced for one file."""

    dictation: Dictation
    transcript: Transcript
    note: Note
    document: Document
    draft: Draft
    timings: dict[str, float] = field(default_factory=dict)
    #: seconds from the start until the draft was in the review queue (rendered, when not
    #: stored): what the user waits for; the PDF comes after it
    queued_s: float = 0.0


def load_dictation(
    path: Path,
    settings: Settings,
    meta: DictationMeta | None = None,
    dictation_id: str | None = None,
) -> Dictation:
    """Probe and validate the audio file; raise an ``AudioError`` subclass if it is unusable."""
    info = audio_mod.probe(Path(path), settings)
    return Dictation(id=dictation_id or new_id(), audio=info, meta=meta or DictationMeta())


def choose_model(physician_id: str | None, settings: Settings) -> tuple[str, str | None]:
    """The model that decodes a dictation of ``physician_id``: ``(name or folder, label)``.

    The physician's current adapted model (``dictation models``; label
    ``adapted:<physician>/v<N>``) when ``settings.adapted_models`` and one is current, else
    ``(settings.model, None)``. The adapted model is loaded here (into the speech model
    cache) so that a missing or damaged folder falls back to the stock model with a warning
    (ids only) instead of failing the dictation. No database yet: no adapted models.
    """
    stock: tuple[str, str | None] = (settings.model, None)
    if not settings.adapted_models:
        return stock
    from sqlalchemy.exc import SQLAlchemyError

    from pipeline.adaptation import versions
    from pipeline.core.errors import PipelineError
    from pipeline.core.store import open_store, sqlite_path
    from pipeline.speech import models as speech_models

    db_file = sqlite_path(settings.db_url)
    if db_file is not None and not db_file.exists():
        return stock  # never create a database only to find it empty
    try:
        with open_store(settings).session() as s:
            choice = versions.current_model(s, physician_id)
    except SQLAlchemyError as exc:
        log.warning("adapted model lookup failed (%s); stock model %s used",
                    type(exc).__name__, settings.model)
        return stock
    if choice is None:
        return stock
    folder = choice.located(settings)  # a restored data directory: its own copy
    try:
        speech_models.load(settings, str(folder), label=choice.label)
    except (PipelineError, RuntimeError, OSError, ValueError) as exc:
        # RuntimeError: CTranslate2 refusing a damaged model.bin; ValueError: bad config.json
        log.warning("adapted model version_id=%d (%s) unusable (%s); stock model %s used",
                    choice.version_id, choice.label, type(exc).__name__, settings.model)
        return stock
    return str(folder), choice.label


def transcribe_stage(
    dictation: Dictation, settings: Settings, progress: ProgressCallback | None = None
) -> Transcript:
    """Run Whisper on the dictation, with prompt terms chosen for its type and physician,
    and the physician's current adapted model when there is one (``choose_model``); the
    transcript records which model decoded it."""
    from pipeline.language import normalize
    from pipeline.speech import transcribe

    options = transcribe.TranscribeOptions.from_settings(settings)
    if settings.biased_decoding:
        terms = normalize.prompt_terms(
            settings,
            document_type=dictation.meta.document_type,
            physician_id=dictation.meta.physician_id,
        )
        options.initial_prompt = terms.initial_prompt
        options.hotwords = terms.hotwords
    model, label = choose_model(dictation.meta.physician_id, settings)
    return transcribe.transcribe(dictation, settings, options, progress=progress,
                                 model=model, model_label=label)


def load_autotexts(physician_id: str | None, settings: Settings) -> dict[str, str]:
    """The active auto-texts a dictation of ``physician_id`` may insert ("insert normal
    exam"): trigger phrase -> body, the physician's own over the practice's."""
    from sqlalchemy.exc import SQLAlchemyError

    from pipeline.core.store import open_store
    from pipeline.review.autotexts import active_autotexts

    try:
        with open_store(settings).session() as s:
            return active_autotexts(s, physician_id)
    except SQLAlchemyError as exc:  # the dictation is still written out without them
        log.warning("auto-texts could not be loaded (%s); none inserted", type(exc).__name__)
        return {}


def load_learned(physician_id: str | None, settings: Settings) -> list[LearnedPair]:
    """The physician's learned corrections (a misheard phrase reviewers replaced at least
    ``LearnedOptions.min_count`` times, issue #15 section 5) for the language stage, which
    decides which of them are safe to apply."""
    from sqlalchemy.exc import SQLAlchemyError

    from pipeline.core.store import open_store, sqlite_path
    from pipeline.language.normalize import LanguageOptions, LearnedPair
    from pipeline.review.learned import learned_pairs

    if not physician_id:
        return []
    db_file = sqlite_path(settings.db_url)
    if db_file is not None and not db_file.exists():
        return []  # never create a database only to find it empty
    opts = LanguageOptions().learned
    try:
        with open_store(settings).session() as s:
            rows = learned_pairs(s, physician_id, opts.min_count, opts.max_pairs)
    except SQLAlchemyError as exc:  # the dictation is still written out without them
        log.warning("learned corrections could not be loaded (%s); none applied",
                    type(exc).__name__)
        return []
    return [LearnedPair(o, r, n) for o, r, n in rows]


def normalize_stage(transcript: Transcript, dictation: Dictation, settings: Settings) -> Note:
    """Turn Whisper's words into what a medical transcriptionist would type (with the
    physician's auto-texts for "insert <trigger>" and learned corrections)."""
    from pipeline.language import normalize

    # only a dictation that says "insert ..." needs them (and the database for them)
    wants = "insert" in transcript.raw_text.lower()
    autotexts = load_autotexts(dictation.meta.physician_id, settings) if wants else {}
    return normalize.normalize(
        transcript,
        settings,
        document_type=dictation.meta.document_type,
        physician_id=dictation.meta.physician_id,
        autotexts=autotexts,
        learned=load_learned(dictation.meta.physician_id, settings),
    )


def structure_stage(note: Note, dictation: Dictation, settings: Settings) -> Document:
    """Split the note into sections, fill the header and lift out instructions."""
    from pipeline.documents import sections

    return sections.structure(note, dictation.meta, settings)


def render_stage(
    document: Document,
    dictation: Dictation,
    transcript: Transcript,
    note: Note,
    settings: Settings,
    draft_id: str | None = None,
) -> Draft:
    """Render the document's outputs (.docx, text, FHIR, HL7); ``pdf_stage`` adds the PDF
    after the draft is queued."""
    from pipeline.documents import render

    draft_id = draft_id or new_id()
    out_dir = settings.drafts_dir / draft_id
    outputs = render.render_outputs(document, dictation, draft_id, out_dir, settings,
                                    pdf="never")
    return Draft(
        id=draft_id,
        dictation_id=dictation.id,
        document_type=document.document_type,
        docx_path=outputs.get("docx"),
        outputs=outputs,
        missing=list(document.missing),
    )


def enqueue_stage(
    dictation: Dictation,
    transcript: Transcript,
    note: Note,
    document: Document,
    draft: Draft,
    settings: Settings,
) -> Draft:
    """Store the dictation, transcript and draft; the draft enters the review queue."""
    from pipeline.review import queue as review

    return review.enqueue(settings, dictation, transcript, note, document, draft)


def pdf_stage(draft: Draft, settings: Settings, *, store: bool = True,
              raise_errors: bool | None = None) -> Draft:
    """Make the draft's PDF (per ``settings.pdf``) and record it in its outputs (and, with
    ``store``, in the stored draft, while it is still queued for review); return the draft.

    ``never``, or ``auto`` without LibreOffice: nothing happens. A failed conversion leaves the
    draft queued with its other outputs; it is logged (ids only) and, when ``raise_errors``
    (default: ``settings.pdf == "always"``), raised as ``PdfConversionError``.
    """
    from pipeline.core.errors import PdfConversionError
    from pipeline.documents import render

    if raise_errors is None:
        raise_errors = settings.pdf == "always"
    docx = draft.outputs.get("docx") or draft.docx_path
    if settings.pdf == "never" or docx is None:
        return draft
    out_dir = Path(docx).parent
    current = (lambda: _still_queued(draft.id, settings)) if store else None
    if current is not None and not current():
        log.info("pdf skipped draft=%s reason=draft_moved_on", draft.id)
        return draft
    try:
        made = render.render_pdf(draft.id, out_dir, settings, still_current=current)
    except PdfConversionError as exc:
        level = logging.ERROR if settings.pdf == "always" else logging.WARNING
        log.log(level, "pdf failed draft=%s code=%s; draft stays queued without pdf",
                draft.id, exc.code)
        if raise_errors:
            where = "is queued for review" if store else "was written"
            raise PdfConversionError(
                f"{exc} The draft {draft.id} {where} without its PDF."
            ) from exc
        return draft
    if made is None:
        return draft
    draft.outputs = {**draft.outputs, "pdf": made}
    if store:
        _record_pdf(draft.id, made, settings)
    return draft


def _still_queued(draft_id: str, settings: Settings) -> bool:
    from pipeline.core.db.core import DraftRow
    from pipeline.core.store import open_store
    from pipeline.review import queue as review

    with open_store(settings).session() as s:
        row = s.get(DraftRow, draft_id)
        return row is not None and row.status == review.QUEUED


def _record_pdf(draft_id: str, pdf: Path, settings: Settings) -> None:
    """Add the PDF to the stored draft's outputs, unless a reviewer has moved it on (signing
    renders its own outputs)."""
    from pipeline.core.db.core import DraftRow
    from pipeline.core.store import open_store
    from pipeline.review import queue as review

    with open_store(settings).session() as s:
        row = s.get(DraftRow, draft_id, with_for_update=True)
        if row is None or row.status != review.QUEUED:
            log.info("pdf not recorded draft=%s reason=draft_moved_on", draft_id)
            return
        row.outputs = {**(row.outputs or {}), "pdf": str(pdf)}


def process_file(
    path: Path,
    settings: Settings,
    meta: DictationMeta | None = None,
    *,
    progress: ProgressCallback | None = None,
    store: bool = True,
) -> ProcessResult:
    """Run every stage on one file and return what each produced (with per-stage timings).

    The draft is queued (``store``) before its PDF is made: ``ProcessResult.queued_s`` is the
    time until then, ``timings["pdf"]`` the PDF's own time. With ``settings.pdf == "always"`` a
    failed PDF raises ``PdfConversionError`` after the draft is queued."""
    timings: dict[str, float] = {}
    start = time.perf_counter()

    def timed(name: str, fn: Callable[[], T]) -> T:
        t0 = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - t0
        return value

    dictation = timed("load", lambda: load_dictation(path, settings, meta))
    transcript = timed("transcribe", lambda: transcribe_stage(dictation, settings, progress))
    note = timed("normalize", lambda: normalize_stage(transcript, dictation, settings))
    document = timed("structure", lambda: structure_stage(note, dictation, settings))
    draft = timed("render", lambda: render_stage(document, dictation, transcript, note, settings))
    if store:
        rendered = draft
        draft = timed(
            "enqueue",
            lambda: enqueue_stage(dictation, transcript, note, document, rendered, settings),
        )
    queued_s = time.perf_counter() - start
    queued = draft
    try:
        draft = timed("pdf", lambda: pdf_stage(queued, settings, store=store))
    finally:
        log.info(
            "processed dictation=%s draft=%s duration_s=%.1f queued_s=%.2f timings=%s",
            dictation.id,
            draft.id,
            dictation.audio.duration_s,
            queued_s,
            {k: round(v, 3) for k, v in timings.items()},
        )
    return ProcessResult(dictation, transcript, note, document, draft, timings, queued_s)
