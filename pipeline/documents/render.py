"""Render a structured ``Document`` into the draft's files.

``render_outputs(document, dictation, draft_id, out_dir, settings, *, final=False, ...)``
writes, for one draft:

- ``docx``: the template filled with docxtpl (``autoescape=True``: ``&`` and ``<`` survive;
  Jinja ``StrictUndefined``: a template asking for a variable we do not provide is a
  ``TemplateFieldError``); a required section that was not dictated shows as a highlighted
  ``[MISSING: ...]`` marker;
- ``txt``: the same document as plain text;
- ``fhir``: a FHIR R4 DocumentReference (JSON);
- ``hl7``: an HL7 v2.5 MDM^T02 message;
- ``pdf``: through LibreOffice headless when ``settings.pdf`` is ``always`` (error when
  LibreOffice is missing) or ``auto`` (skipped with a log line when it is missing).

All files are written into a temporary folder next to ``out_dir`` that is renamed into place at
the end, so a crash never leaves a half-written draft. Every file goes through
``pipeline.core.files``: encrypted when ``out_dir`` lies under the data directory and
``settings.encrypt_files`` (``files.seals``); plain outside it (``dictation render --out DIR``,
an export the user asked for). The PDF is converted from the .docx's bytes in a private
folder that is removed at once (``pdf.convert_bytes``), so no clear copy stays on disk.

Re-rendering after signing: call again with ``final=True, signed_by="Dr. ...",
signed_at=datetime`` (same ``out_dir``): the footer, signature line, FHIR ``docStatus``
(final) and HL7 TXA-17 (``AU``) change accordingly. Files in ``out_dir`` that this module did
not write are kept.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from docxtpl import DocxTemplate

from pipeline.core import files
from pipeline.core.errors import TemplateFieldError
from pipeline.core.records import Dictation, Document, Section
from pipeline.core.settings import Settings
from pipeline.documents import fhir as fhir_mod
from pipeline.documents import hl7 as hl7_mod
from pipeline.documents import pdf as pdf_mod
from pipeline.documents.header import HEADER_KEYS, parse_date
from pipeline.documents.sections import clean_text
from pipeline.documents.templates import FieldSpec, TemplateSpec, get_template

__all__ = ["render_outputs", "render_pdf", "build_context", "render_docx", "render_text",
           "OUTPUT_NAMES", "status_text"]

log = logging.getLogger(__name__)

#: File names inside a draft folder, per output kind.
OUTPUT_NAMES = {
    "docx": "document.docx",
    "txt": "document.txt",
    "fhir": "document.fhir.json",
    "hl7": "document.hl7",
    "pdf": "document.pdf",
}
_INLINE_MAX = 160
#: Seconds LibreOffice may take for one document before the conversion is abandoned.
_HEADER_LABELS = {
    "patient_name": "Patient",
    "date_of_birth": "Date of birth",
    "mrn": "MRN",
    "date_of_service": "Date of service",
    "physician": "Physician",
    "referring_physician": "Referring physician",
}


@dataclass
class _Item:
    """One section as the template sees it."""

    key: str
    label: str
    text: str
    paragraphs: list[str]
    missing: bool
    inline: bool


def _now(settings: Settings) -> datetime:
    try:
        zone = ZoneInfo(settings.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        zone = ZoneInfo("UTC")
    return datetime.now(zone).replace(microsecond=0)


def _paragraphs(text: str) -> list[str]:
    return [line.strip() for line in text.split("\n") if line.strip()]


def _items(document: Document, spec: TemplateSpec) -> list[_Item]:
    by_key = {s.key: s for s in document.sections}
    missing = set(document.missing)
    items: list[_Item] = []

    def add(section: Section, label: str, inline: bool) -> None:
        text = clean_text(section.text).strip()
        paras = _paragraphs(text)
        items.append(_Item(
            key=section.key, label=label, text=" ".join(paras), paragraphs=paras, missing=False,
            inline=inline and len(paras) == 1 and len(text) <= _INLINE_MAX,
        ))

    fields = {f.key: f for f in spec.sections}

    def add_dictated(sec: Section) -> None:
        if not sec.text.strip():
            return
        field = fields.get(sec.key)
        if field is not None:
            add(sec, field.label, field.inline)
        elif sec.key == "body":
            add(sec, "", False)
        else:
            add(sec, clean_text(sec.heading) or sec.key.replace("_", " ").capitalize(), False)

    def add_missing(field: FieldSpec) -> None:
        items.append(_Item(key=field.key, label=field.label, text="", paragraphs=[],
                           missing=True, inline=field.inline))

    if spec.letter:  # the physician's order, missing required fields at the end
        for sec in document.sections:
            add_dictated(sec)
        for f in spec.sections:
            if f.label in missing and f.key not in by_key:
                add_missing(f)
        return items
    for sec in document.sections:
        if sec.key == "body" and "body" not in fields:
            add_dictated(sec)
    for f in spec.sections:
        found = by_key.get(f.key)
        if found is not None and found.text.strip():
            add_dictated(found)
        elif f.label in missing:
            add_missing(f)
    for sec in document.sections:
        if sec.key not in fields and sec.key != "body":
            add_dictated(sec)
    return items


def status_text(final: bool, signed_by: str | None, signed_at: datetime | None) -> str:
    """The footer's status line."""
    if final:
        when = f" on {signed_at:%B %d, %Y}" if signed_at else ""
        return f"FINAL — signed by {signed_by or 'physician'}{when}"
    return "DRAFT — not signed"


def build_context(
    document: Document,
    dictation: Dictation,
    settings: Settings,
    spec: TemplateSpec,
    *,
    final: bool = False,
    signed_by: str | None = None,
    signed_at: datetime | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Every variable a template may use (see templates/build_templates.py)."""
    now = now or _now(settings)
    h: dict[str, str] = {}
    for k in HEADER_KEYS:
        field = document.header.get(k)
        h[k] = clean_text(field.value or "") if field is not None else ""
    items = _items(document, spec)
    copies = [i for i in document.instructions if i.kind == "copy"]
    cc_names: list[str] = []
    for ins in copies:
        for entry in ins.params.get("recipients") or [ins.params]:
            name = str(entry.get("recipient") or "").strip()
            org = str(entry.get("organization") or "").strip()
            if name:
                cc_names.append(f"{name}, {org}" if org else name)
    refer = next((i for i in document.instructions if i.kind == "refer"), None)
    if spec.key == "referral_letter" and refer is not None:
        recipient_name = str(refer.params.get("recipient") or "")
        specialty = str(refer.params.get("specialty") or "")
        recipient = "\n".join(x for x in (recipient_name, specialty.title()) if x)
        salutation = recipient_name or "Colleague"
    else:
        recipient = h["referring_physician"]
        salutation = h["referring_physician"] or "Colleague"
    dictated_to = document.header.get("recipient")
    if dictated_to is not None and dictated_to.value:
        salutation = clean_text(dictated_to.value)
        if not recipient:
            recipient = salutation
    signature = (
        f"Electronically signed by {signed_by or h['physician'] or 'the physician'}"
        f"{f' on {signed_at:%B %d, %Y at %H:%M}' if signed_at else ''}."
        if final else
        f"Dictated by {h['physician'] or 'the physician'}; transcribed {now:%B %d, %Y}. "
        "DRAFT — not signed: for review before signature."
    )
    context: dict[str, Any] = {
        "practice_name": clean_text(settings.practice_name),
        "practice_subtitle": clean_text(
            " · ".join(x for x in (settings.practice_address, settings.practice_phone) if x)
        ),
        "title": spec.title,
        "document_type": spec.key,
        "status_text": status_text(final, signed_by, signed_at),
        "is_final": final,
        "signature_text": signature,
        "rendered_date": f"{now:%B} {now.day}, {now.year}",
        "h": h,
        "sections": items,
        "salutation": salutation,
        "recipient": recipient,
        "patient_ref": h["patient_name"] or "the patient",
        "visit_date": h["date_of_service"] or f"{now:%B} {now.day}, {now.year}",
        "cc": "; ".join(cc_names),
        "footer_patient": (
            f"{h['patient_name'] or 'Patient not named'}"
            f"{' · MRN ' + h['mrn'] if h['mrn'] else ''}"
        ),
        "missing": list(document.missing),
        "has_body": any(i.key == "body" for i in items),
    }
    for f in spec.sections:
        sec = next((s for s in document.sections if s.key == f.key), None)
        context[f"s_{f.key}"] = clean_text(sec.text) if sec else ""
    return context


@lru_cache(maxsize=32)
def _template_bytes(path: str, mtime: float) -> bytes:
    return Path(path).read_bytes()


class _CachingEnvironment(jinja2.Environment):
    """StrictUndefined + autoescape, and compiled templates cached by their source.

    docxtpl hands the environment the same preprocessed XML on every render of a template;
    compiling it is most of the render time, so a compiled copy is kept (bounded)."""

    def __init__(self) -> None:
        super().__init__(undefined=jinja2.StrictUndefined, autoescape=True)
        self._compiled: dict[str, jinja2.Template] = {}

    def from_string(self, source, globals=None, template_class=None):  # type: ignore[no-untyped-def,override]
        if globals or template_class or not isinstance(source, str):
            return super().from_string(source, globals, template_class)
        cached = self._compiled.get(source)
        if cached is None:
            if len(self._compiled) > 256:
                self._compiled.clear()
            cached = super().from_string(source)
            self._compiled[source] = cached
        return cached


_ENV = _CachingEnvironment()


def render_docx(spec: TemplateSpec, context: dict[str, Any]) -> bytes:
    """Fill the template's .docx; raise ``TemplateFieldError`` for unknown or broken tags."""
    data = _template_bytes(str(spec.docx_path), spec.docx_path.stat().st_mtime)
    template = DocxTemplate(io.BytesIO(data))
    try:
        template.render(context, _ENV, autoescape=True)
    except jinja2.UndefinedError as exc:
        raise TemplateFieldError(
            f"Template {spec.docx_path.name} uses a field the document does not provide "
            f"({exc.message}); expected only the documented template variables."
        ) from exc
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateFieldError(
            f"Template {spec.docx_path.name} has a broken tag ({exc.message}, line "
            f"{exc.lineno}); expected valid docxtpl/Jinja tags."
        ) from exc
    out = io.BytesIO()
    template.save(out)
    return out.getvalue()


def render_text(spec: TemplateSpec, context: dict[str, Any]) -> str:
    """The document as plain text (for the .txt file, FHIR and HL7)."""
    lines = [context["practice_name"], "", spec.title.upper(), ""]
    h = context["h"]
    for key in HEADER_KEYS:
        if h[key]:
            lines.append(f"{_HEADER_LABELS[key]}: {h[key]}")
    lines.append("")
    if spec.letter:
        lines += [f"Dear {context['salutation']},", ""]
    for item in context["sections"]:
        body = f"[MISSING: {item.label}]" if item.missing else "\n".join(item.paragraphs)
        if not item.label:
            lines += [body, ""]
        elif item.inline:
            lines += [f"{item.label.upper()}: {body}", ""]
        else:
            lines += [f"{item.label.upper()}:", body, ""]
    if spec.letter:
        lines += ["Sincerely,", ""]
    if h["physician"]:
        lines.append(h["physician"])
    lines.append(context["signature_text"])
    if context["cc"]:
        lines.append(f"cc: {context['cc']}")
    return "\n".join(lines).strip() + "\n"


def _swap_into_place(tmp: Path, out_dir: Path, written: set[str]) -> None:
    """Rename the finished temp folder to ``out_dir``, keeping files others put there."""
    if out_dir.exists():
        for child in out_dir.iterdir():
            if child.name not in written and not (tmp / child.name).exists():
                shutil.move(str(child), str(tmp / child.name))
        old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)


def render_outputs(
    document: Document,
    dictation: Dictation,
    draft_id: str,
    out_dir: Path,
    settings: Settings,
    *,
    final: bool = False,
    signed_by: str | None = None,
    signed_at: datetime | None = None,
    pdf: str | None = None,
) -> dict[str, Path]:
    """Write the draft's files into ``out_dir`` atomically; return ``{kind: path}`` with kinds
    docx, txt, fhir, hl7 and pdf (when made). ``pdf`` overrides ``settings.pdf``."""
    t0 = time.perf_counter()
    spec = get_template(document.document_type, settings)
    now = _now(settings)
    context = build_context(document, dictation, settings, spec, final=final,
                            signed_by=signed_by, signed_at=signed_at, now=now)
    docx_bytes = render_docx(spec, context)
    text = render_text(spec, context)
    meta = dictation.meta
    header = document.header
    value = lambda key: (header[key].value if key in header else None)  # noqa: E731
    dos = parse_date(value("date_of_service")) or meta.date_of_service
    dob = parse_date(value("date_of_birth")) or meta.date_of_birth
    resource = fhir_mod.build_document_reference(
        draft_id=draft_id, loinc=spec.loinc, loinc_display=spec.loinc_display, title=spec.title,
        text=text, docx_bytes=docx_bytes, docx_name=OUTPUT_NAMES["docx"],
        patient_name=value("patient_name"), mrn=value("mrn"), physician_id=meta.physician_id,
        physician_name=value("physician"), date_of_service=dos,
        encounter_id=meta.encounter_id, created=now, final=final, signed_by=signed_by,
    )
    message = hl7_mod.build_mdm_t02(
        draft_id=draft_id, document_type=spec.key, loinc=spec.loinc,
        loinc_display=spec.loinc_display, text=text, practice_name=settings.practice_name,
        patient_name=value("patient_name"), mrn=value("mrn"), date_of_birth=dob,
        physician_id=meta.physician_id, physician_name=value("physician"),
        referring_physician=value("referring_physician"), date_of_service=dos,
        encounter_id=meta.encounter_id, created=now, final=final,
        file_name=OUTPUT_NAMES["docx"], signed_by=signed_by, signed_at=signed_at,
    )
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    seal = files.seals(out_dir, settings)
    try:
        blobs = {
            "docx": docx_bytes,
            "txt": text.encode("utf-8"),
            "fhir": json.dumps(resource, indent=2, ensure_ascii=False).encode("utf-8"),
            "hl7": message.encode("utf-8"),
        }
        for kind, data in blobs.items():
            files.write_bytes(tmp / OUTPUT_NAMES[kind], data, settings, encrypt=seal)
        kinds = ["docx", "txt", "fhir", "hl7"]
        mode = pdf or settings.pdf
        try:
            made = _pdf_bytes(docx_bytes, settings, mode, draft_id)
            if made is not None:
                files.write_bytes(tmp / OUTPUT_NAMES["pdf"], made, settings, encrypt=seal)
                kinds.append("pdf")
        except pdf_mod.PdfConversionError:
            if mode == "always":
                raise
            # auto: the draft is complete without its PDF; the reviewer can re-render
            log.warning("pdf skipped draft=%s reason=conversion_failed", draft_id)
        _swap_into_place(tmp, out_dir, {OUTPUT_NAMES[k] for k in OUTPUT_NAMES})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("rendered draft=%s type=%s final=%s outputs=%s seconds=%.3f", draft_id, spec.key,
             final, kinds, time.perf_counter() - t0)
    return {kind: out_dir / OUTPUT_NAMES[kind] for kind in kinds}


def _pdf_bytes(docx: bytes, settings: Settings, mode: str, draft_id: str) -> bytes | None:
    """The PDF of the .docx bytes ``docx`` per ``mode``; None when no PDF is wanted or
    possible (``never``, or ``auto`` without LibreOffice). Raises ``PdfConversionError`` when a
    wanted conversion fails (``always`` without LibreOffice included)."""
    if mode == "never":
        return None
    if mode == "auto" and not pdf_mod.find_soffice():
        log.info("pdf skipped draft=%s reason=soffice_missing", draft_id)
        return None
    return pdf_mod.convert_bytes(docx, profile_root=settings.cache_dir / "soffice",
                                 work_root=settings.cache_dir / "tmp",
                                 timeout=settings.pdf_timeout_seconds)


def _fingerprint(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def render_pdf(
    draft_id: str,
    out_dir: Path,
    settings: Settings,
    *,
    pdf: str | None = None,
    still_current: Callable[[], bool] | None = None,
) -> Path | None:
    """Make the PDF of a draft already rendered into ``out_dir`` (from its .docx); return its
    path, or None when no PDF is wanted (``never``) or possible (``auto`` without LibreOffice).

    The PDF is converted from the .docx's plain bytes (``pdf.convert_bytes``: a private
    folder, removed at once) and written atomically (encrypted as the other outputs), so a
    reader never sees a half-written file; if the .docx changed while LibreOffice ran (the
    draft was re-rendered, e.g. signed) or ``still_current()`` says False, the PDF is
    discarded and None returned. Raises ``PdfConversionError`` when LibreOffice fails (for
    ``auto`` and ``always``) or is missing (``always``): the draft's other files are never
    touched. ``pdf`` overrides ``settings.pdf``.
    """
    mode = pdf or settings.pdf
    out_dir = Path(out_dir)
    docx = out_dir / OUTPUT_NAMES["docx"]
    if mode == "never":
        return None
    before = _fingerprint(docx)
    if before is None:
        raise pdf_mod.PdfConversionError(
            f"Draft {draft_id} has no {OUTPUT_NAMES['docx']} to convert; expected the rendered "
            "draft before its PDF."
        )
    t0 = time.perf_counter()
    made = _pdf_bytes(files.read_bytes(docx, settings), settings, mode, draft_id)
    if made is None:
        return None
    if _fingerprint(docx) != before or (still_current is not None and not still_current()):
        log.info("pdf discarded draft=%s reason=draft_rerendered", draft_id)
        return None
    target = out_dir / OUTPUT_NAMES["pdf"]
    files.write_bytes(target, made, settings, encrypt=files.seals(out_dir, settings))
    log.info("pdf made draft=%s seconds=%.2f", draft_id, time.perf_counter() - t0)
    return target
