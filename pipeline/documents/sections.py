"""Structure a normalized dictation: document type, sections, header data, instructions.

``structure(note, meta, settings) -> Document`` is the stage function. The pieces:

- ``detect_headings(text, lexicon)`` finds the section headings a physician said, in the
  normalizer's written form ("PREOPERATIVE DIAGNOSIS: ...") and in raw spoken forms
  ("preoperative diagnosis colon ...", "preoperative diagnosis is ...", "Findings, ...",
  a heading alone on its line, or run-on text without punctuation). Heading variants come from
  each template's field map (``templates/<key>.toml``), learnt from real reports.
- ``detect_document_type(text, templates)`` picks the template when the sidecar gives none.
- header values (``pipeline.documents.header``) and secretary instructions
  (``pipeline.language.instructions``) are lifted out of the body.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from pipeline.core.records import DictationMeta, Document, HeaderField, Instruction, Note, Section
from pipeline.core.settings import Settings
from pipeline.documents import header as header_mod
from pipeline.documents.templates import FieldSpec, TemplateSpec, get_template, list_templates
from pipeline.language import instructions as instr_mod

__all__ = [
    "HeadingMatch",
    "Lexicon",
    "structure",
    "detect_headings",
    "detect_document_type",
    "lexicon_for",
    "missing_fields",
    "clean_text",
    "DOCUMENT_TYPE_ALIASES",
]

log = logging.getLogger(__name__)

#: What a sidecar may say instead of the exact template key.
DOCUMENT_TYPE_ALIASES = {
    "operative": "operative_report", "op_report": "operative_report", "op_note": "operative_report",
    "operative_note": "operative_report", "operation": "operative_report",
    "consult": "consult_letter", "consultation": "consult_letter",
    "consultation_letter": "consult_letter", "consult_note": "consult_letter",
    "progress": "progress_note", "soap": "progress_note", "clinic_note": "progress_note",
    "office_note": "progress_note", "soap_note": "progress_note",
    "discharge": "discharge_summary", "radiology": "radiology_report",
    "imaging": "radiology_report", "referral": "referral_letter",
}

# Words before a heading-looking phrase that show it is prose ("a past medical history of").
_PROSE_BEFORE = frozenset(
    [
        "a", "an", "the", "his", "her", "their", "its", "our", "no", "any", "with", "of", "for",
        "and", "or", "in", "on", "to", "from", "this", "that", "some", "without", "significant",
        "prior", "previous", "further", "my", "your", "at", "by", "was", "were", "is", "are",
        "be", "been",
        # words that make a heading word ordinary prose ("under monitored anesthesia care",
        # "no operative complications"); not the usual last words of a short value
        # ("general", "same", "stable"), which run-on speech puts before the next heading
        "monitored", "operative", "intraoperative", "surgical", "these", "those", "such",
        "medical", "physical", "neurologic", "neurological", "initial", "recent", "brief",
    ]
)
# Words after it that show prose ("History of diabetes", "Procedure was", "Plan to").
_PROSE_AFTER = frozenset(
    [
        "of", "was", "were", "is", "are", "to", "for", "and", "with", "that", "which", "has",
        "had", "have", "will", "would", "can", "could", "should", "included", "includes",
        "showed", "shows", "revealed", "reveals", "demonstrated", "demonstrates", "consisted",
        "noted", "went", "began", "started", "include", "including", "given", "used",
        "administered", "obtained", "placed", "remain", "remains", "remained", "appear",
        "appears", "appeared", "seem", "seems", "consist", "consists", "may", "might", "must",
        "on", "in", "at", "as", "by", "from", "into", "through", "be", "been", "being", "also",
    ]
)
_TINY = 2  # headings this short (S, O, CC, PE) need an explicit colon
_ABBREV = 3  # three-letter abbreviations (EBL, HPI, ROS) need a delimiter
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")
_FILLER = re.compile(
    r"^(?:(?:this\s+is\s+)?(?:[Dd]r\.?|[Dd]octor)\s+[A-Z][\w'’-]+(?:\s+[A-Z][\w'’-]+)?\s*"
    r"(?:dictating|here|speaking)?|dictating|dictation|(?:an?\s+)?(?:operative\s+report|"
    r"op\s+note|consultation(?:\s+letter)?|consult(?:\s+letter|\s+note)?|progress\s+note|"
    r"clinic\s+note|office\s+note|discharge\s+summary|radiology\s+report|referral\s+letter|"
    r"soap\s+note)|on|for|regarding|re|the|patient|a|an|of|and|is|please|thank\s+you|"
    r"end\s+of\s+(?:dictation|report)|new\s+paragraph|okay|ok|um|uh|[\s.,;:–—-]+)+$",
    re.I,
)


@dataclass(frozen=True)
class HeadingMatch:
    """A heading found in the text: where it is, where its content starts, which field."""

    start: int
    end: int  # content starts here (after the delimiter)
    key: str
    heading: str  # as written in the text
    native: bool  # from the chosen template (False: another template's field)


@dataclass(frozen=True)
class Lexicon:
    """Heading variants mapped to field keys, compiled into one regular expression."""

    variants: tuple[tuple[str, str, bool], ...]  # (variant, key, native)
    pattern: re.Pattern[str]
    table: dict[str, tuple[str, bool]]

    def lookup(self, heading: str) -> tuple[str, bool] | None:
        """The (key, native) for a heading as written, or None."""
        return self.table.get(_norm_heading(heading))


def _norm_heading(text: str) -> str:
    return re.sub(r"[\s\-]+", " ", text.lower()).strip()


def _variant_regex(variant: str) -> str:
    tokens = [t for t in re.split(r"[\s\-]+", variant) if t]
    return r"(?:[ \t]+|[ \t]*-[ \t]*)?".join(re.escape(t) for t in tokens) if len(tokens) > 1 \
        else re.escape(tokens[0])


@lru_cache(maxsize=64)
def _compile(variants: tuple[tuple[str, str, bool], ...]) -> Lexicon:
    ordered = sorted({v for v, _, _ in variants}, key=len, reverse=True)
    alternation = "|".join(_variant_regex(v) for v in ordered)
    pattern = re.compile(rf"(?<![\w/&])(?P<h>{alternation})(?![\w/&])", re.I)
    table = {_norm_heading(v): (k, n) for v, k, n in variants}
    return Lexicon(variants, pattern, table)


def lexicon_for(spec: TemplateSpec, templates: Iterable[TemplateSpec] = ()) -> Lexicon:
    """The chosen template's headings, plus other templates' headings for extra sections."""
    entries: dict[str, tuple[str, bool]] = {}
    for f in spec.sections:
        for h in f.headings:
            entries.setdefault(_norm_heading(h), (f.key, True))
    for other in templates:
        if other.key == spec.key:
            continue
        for f in other.sections:
            for h in f.headings:
                entries.setdefault(_norm_heading(h), (f.key, False))
    variants = tuple(sorted((v, k, n) for v, (k, n) in entries.items()))
    return _compile(variants)


def clean_text(text: str) -> str:
    """Text safe for XML and HL7: control characters removed, line breaks normalized."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


def _is_runon(text: str) -> bool:
    """Speech without punctuation or line breaks (fewer than one stop per 25 words)."""
    text = text.strip()
    words = len(text.split())
    stops = len(re.findall(r"[.!?:\n]", text))
    return words >= 12 and stops * 25 < words


def _prev_context(text: str, start: int) -> tuple[str, str]:
    """(boundary kind, previous word): kind is 'line', 'sentence' or 'inline'."""
    i = start - 1
    while i >= 0 and text[i] in " \t":
        i -= 1
    if i < 0 or text[i] == "\n":
        return "line", ""
    if text[i] in ".!?;":
        return "sentence", ""
    spoken = re.search(r"(?:\b(period|full stop|new paragraph|new line|next line))$",
                       text[max(0, i - 20): i + 1], re.I)
    if spoken:
        return ("sentence" if spoken.group(1).lower() in ("period", "full stop") else "line"), ""
    if text[i] in "•*–—-" and (i == 0 or text[i - 1] in "\n \t"):
        return "line", ""
    m = re.search(r"([A-Za-z']+)\W*$", text[max(0, i - 30): i + 1])
    return "inline", (m.group(1).lower() if m else "")


_AFTER = re.compile(
    r"(?P<colon>[ \t]*(?::+|[ \t]colon\b[ \t]*:?)[ \t]*,?)"
    r"|(?P<dash>[ \t]*(?:,|[-–—](?!\w)|\.(?=[ \t]*\n))[ \t]*)"
    r"|(?P<is>[ \t]+(?:is|are)\b[ \t]*:?)"
    r"|(?P<eol>[ \t]*(?:\n|$))",
    re.I,
)


def detect_headings(text: str, lexicon: Lexicon, *, strict: bool = False) -> list[HeadingMatch]:
    """Headings in ``text`` in order; each one's content runs to the next heading.

    ``strict`` (letters, whose paragraphs open with words like "On examination"): a heading
    needs a delimiter (colon, comma, dash, "is", its own line) or upper case."""
    runon = _is_runon(text)
    found: list[HeadingMatch] = []
    pos = 0
    while True:
        match = lexicon.pattern.search(text, pos)
        if not match:
            break
        pos = match.start() + 1
        written = match.group("h")
        looked = lexicon.lookup(written)
        if looked is None:
            continue
        key, native = looked
        accepted = _accept(text, match, written, native, runon, strict)
        if accepted is None:
            continue
        found.append(HeadingMatch(match.start(), accepted, key, written, native))
        pos = accepted
    return found


def _accept(text: str, match: re.Match[str], written: str, native: bool,
            runon: bool, strict: bool = False) -> int | None:
    """Where the content starts if this match is a heading, else None."""
    boundary, prev_word = _prev_context(text, match.start())
    after = _AFTER.match(text, match.end())
    kind = after.lastgroup if after else "none"
    content = after.end() if after else match.end()
    letters = len(re.sub(r"[^a-z]", "", written.lower()))
    short = letters <= _TINY
    abbrev = letters == _ABBREV and " " not in written.strip()
    upper = written.isupper() and len(written) > 1
    next_word_m = re.match(r"[^\w]*(\w+)", text[content:content + 40])
    next_word = next_word_m.group(1).lower() if next_word_m else ""
    prose_before = prev_word in _PROSE_BEFORE
    if kind == "colon":
        if boundary != "inline":
            return content
        if short or prose_before or not native or _label_words_before(text, match.start()) <= 4:
            return None  # "BIRTH HISTORY:" is another label, not our "history"
        return content
    if short and not (upper and boundary == "line" and kind in ("eol", "dash")):
        return None
    if not native and not (kind == "eol" or (kind == "dash" and boundary != "inline")):
        return None  # another template's heading: only on its own line, or "Heading, text"
    if kind == "eol":
        return content if boundary == "line" else None
    if kind == "dash":
        if boundary == "inline" and not runon:
            return None
        if prose_before or (boundary == "inline" and next_word in _PROSE_AFTER):
            return None
        return content
    if kind == "is":
        if boundary == "inline" or next_word in ("a", "an", "the", "not", "to", "being"):
            return None
        return content
    # no delimiter at all: an upper-case heading at a line start; a multi-word heading at
    # the start of a line or sentence; a one-word heading opening a short sentence; run-on
    # speech without punctuation
    if boundary == "line" and upper:
        if re.match(r"[ \t]+[A-Z][A-Z /&'-]*:", text[match.end():match.end() + 40]):
            return None  # "EXAM DATE:" is a longer label, not our "exam"
        return content
    if prose_before or next_word in _PROSE_AFTER or not next_word or strict or abbrev:
        return None
    multiword = " " in written.strip()
    if runon:
        return content
    if boundary in ("line", "sentence") and multiword:
        return content
    if boundary in ("line", "sentence") and native:
        return content
    return None


def _label_words_before(text: str, start: int) -> int:
    """Words between the start of the line or sentence and ``start``."""
    m = re.search(r"[^.!?;\n]*$", text[max(0, start - 200): start])
    return len(m.group(0).split()) if m else 0


def _sentence_words(text: str, start: int) -> int:
    """Words from ``start`` to the end of the sentence or line."""
    m = re.match(r"[^.!?\n]*", text[start:start + 400])
    return len(m.group(0).split()) if m else 0


def detect_document_type(text: str, templates: dict[str, TemplateSpec]) -> tuple[str, float]:
    """The best-matching template key for a dictation and its score (0 when nothing matched)."""
    head = text[:400].lower()
    scores: dict[str, float] = {}
    key_owners: dict[str, int] = {}
    for spec in templates.values():
        for f in spec.sections:
            key_owners[f.key] = key_owners.get(f.key, 0) + 1
    for key, spec in templates.items():
        lex = lexicon_for(spec)
        score = 0.0
        seen: set[str] = set()
        for m in detect_headings(text, lex):
            if m.key in seen:
                continue
            seen.add(m.key)
            score += 1.0 / key_owners.get(m.key, 1)
        for phrase in spec.detect_phrases:
            if phrase in head:
                score += 3.0
                break
        scores[key] = score
    if not scores:
        return "progress_note", 0.0
    best = max(scores, key=lambda k: (scores[k], k == "progress_note"))
    return best, scores[best]


def _resolve_type(meta: DictationMeta | None, text: str,
                  templates: dict[str, TemplateSpec]) -> tuple[str, list[str]]:
    flags: list[str] = []
    wanted = (meta.document_type or "").strip() if meta else ""
    if wanted:
        key = wanted.lower().replace("-", "_").replace(" ", "_")
        key = key if key in templates else DOCUMENT_TYPE_ALIASES.get(key, key)
        if key in templates:
            return key, flags
        log.warning("unknown document type from sidecar; detecting from content")
        flags.append("unknown_document_type")
    key, score = detect_document_type(text, templates)
    if score == 0:
        flags.append("document_type_guessed")
    if key not in templates:
        key = next(iter(templates))
    return key, flags


def _tidy(text: str) -> str:
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    text = re.sub(r"^[\s,;:.\-–—]+", "", text)
    text = text.strip()
    if text and text[0].islower():
        text = text[0].upper() + text[1:]
    return text


def _remove_spans(text: str, spans: list[tuple[int, int]]) -> str:
    for start, end in sorted(set(spans), reverse=True):
        text = text[:start] + " " + text[end:]
    return text


def _lift_instructions(
    text: str, only_section_sentence_keep: bool
) -> tuple[str, list[Instruction]]:
    found = instr_mod.find_instructions(text)
    removable = [f for f in found if f.remove]
    spans = [(f.start, f.end) for f in removable]
    remaining = _remove_spans(text, spans)
    if only_section_sentence_keep and removable and not _tidy(remaining):
        # the instruction is the whole section (e.g. "Follow-up: in two weeks"): keep the text
        for f in removable:
            f.instruction.params["in_body"] = True
        remaining = text
    return remaining, [i for f in found for i in instr_mod.expand(f.instruction)]


_SALUTATION = re.compile(r"(?im)^[ \t]*dear[ \t]+(?P<who>[^,\n:]{2,80}?)[ \t]*[,:]?[ \t]*$")
_CLOSING = re.compile(
    r"(?is)(?:^|\n|(?<=[.!?])[ \t])[ \t]*(?:yours[ \t]+(?:sincerely|truly|faithfully)|"
    r"sincerely(?:[ \t]+yours)?|(?:kind|best|warm|with[ \t]+best)[ \t]+(?:regards|wishes)|"
    r"regards|respectfully(?:[ \t]+yours)?)\b"
    r"[^\n]{0,300}(?:\n[^\n]*){0,3}\s*\Z"
)


def _strip_letter_frame(text: str) -> tuple[str, str | None]:
    """Remove a dictated "Dear Dr. X," line and the closing ("Sincerely, Dr. Y"): the letter
    template prints its own; return the text and the salutation's addressee."""
    who = None
    m = _SALUTATION.search(text)
    if m:
        who = re.sub(r"^(?:[Dd]octor)\b\.?", "Dr.", m.group("who").strip())
        text = text[: m.start()] + text[m.end():]
    closing = _CLOSING.search(text)
    if closing:
        text = text[: closing.start()]
    return text, who


def _closing_instructions(text: str) -> list[Instruction]:
    """Requests said after "Sincerely" are still requests."""
    closing = _CLOSING.search(text)
    if not closing:
        return []
    return [i for f in instr_mod.find_instructions(text[closing.start():])
            for i in instr_mod.expand(f.instruction)]


def _remove_header_sentences(preamble: str, spans: list[tuple[int, int]]) -> str:
    """Drop the preamble's sentences that carry header data ("Consultation letter for patient
    X, date of birth ..., MRN ..."): they are dictation metadata, not document text."""
    inside = [s for s in spans if s[1] <= len(preamble)]
    drop = [
        (a, b) for a, b in instr_mod.split_sentences(preamble)
        if any(start < b and end > a for start, end in inside)
    ]
    return _remove_spans(preamble, drop)


def _lift_office_passages(text: str) -> tuple[str, list[Instruction]]:
    """"Instructions for the office: ..." passages: every sentence is an instruction."""
    found: list[Instruction] = []
    spans: list[tuple[int, int]] = []
    for m in instr_mod.OFFICE_PASSAGE.finditer(text):
        body = m.group("body")
        for start, end in instr_mod.split_sentences(body):
            ins = instr_mod.parse_office_sentence(body[start:end])
            if ins:
                found.extend(instr_mod.expand(ins))
        spans.append(m.span())
    return (_remove_spans(text, spans) if spans else text), found


def missing_fields(spec: TemplateSpec, present: set[str]) -> list[FieldSpec]:
    """The template's required fields that have no text (alternatives count as present)."""
    return [
        f for f in spec.sections
        if f.required and f.key not in present and not any(a in present for a in f.alternatives)
    ]


def structure(note: Note, meta: DictationMeta | None, settings: Settings) -> Document:
    """Split a note into a ``Document``: type, header, sections in template order, missing
    required fields, and instructions lifted out of the body."""
    text = clean_text(note.text or "")
    templates = list_templates(settings)
    instructions: list[Instruction] = []
    text, office = _lift_office_passages(text)
    instructions.extend(office)
    doc_type, flags = _resolve_type(meta, text, templates)
    spec = get_template(doc_type, settings)
    salutation: str | None = None
    if spec.letter:
        instructions.extend(_closing_instructions(text))
        text, salutation = _strip_letter_frame(text)
    lexicon = lexicon_for(spec, templates.values())
    headings = detect_headings(text, lexicon, strict=spec.letter)

    preamble_end = headings[0].start if headings else len(text)
    preamble = text[:preamble_end]
    dictated = header_mod.extract_dictated(preamble if headings else text[:600])
    header, header_flags = header_mod.merge_header(meta, dictated, settings)
    flags.extend(header_flags)
    if salutation:
        header["recipient"] = HeaderField(value=salutation, source="dictation")
    stay = header_mod.stay_dates(preamble) if spec.field("admission_date") else {}
    if dictated.spans:
        preamble = _remove_header_sentences(preamble, dictated.spans)

    preamble, found = _lift_instructions(preamble, False)
    instructions.extend(found)

    by_key: dict[str, Section] = {}
    extras: list[Section] = []
    dictated_order: list[Section] = []  # letters keep the physician's order
    for i, h in enumerate(headings):
        end = headings[i + 1].start if i + 1 < len(headings) else len(text)
        body, found = _lift_instructions(text[h.end:end], True)
        instructions.extend(found)
        body = _tidy(body)
        field = spec.field(h.key) if h.native else None
        prose = ""
        if spec.letter and field is not None and field.paragraphs:
            paras = re.split(r"\n\s*\n", body)
            body = "\n\n".join(paras[: field.paragraphs])
            prose = _tidy("\n\n".join(paras[field.paragraphs:]))
        if field is None:
            label = _title(h.heading)
            extra = Section(key=h.key, heading=label, text=body)
            extras.append(extra)
            dictated_order.append(extra)
        else:
            target = field.key
            if target in by_key and by_key[target].text and field.overflow:
                overflow = spec.field(field.overflow)
                if overflow and overflow.key not in by_key:
                    target = overflow.key
            if target in by_key:
                existing = by_key[target]
                existing.text = "\n\n".join(t for t in (existing.text, body) if t)
            else:
                by_key[target] = Section(key=target, heading=h.heading, text=body)
                dictated_order.append(by_key[target])
        if prose:
            dictated_order.append(Section(key="body", heading="", text=prose))

    for key, value in stay.items():  # dates said in the opening sentence
        if key not in by_key and spec.field(key):
            by_key[key] = Section(key=key, heading="", text=value)
    intro = _tidy(preamble)
    sections: list[Section] = []
    if intro and not _FILLER.match(intro):
        sections.append(Section(key="body", heading="", text=intro))
    if spec.letter:
        sections.extend(s for s in dictated_order if s.text)
    else:
        for f in spec.sections:
            sec = by_key.get(f.key)
            if sec and sec.text:
                sections.append(sec)
        sections.extend(s for s in extras if s.text)
    present = {s.key for s in sections}
    missing = [f.label for f in missing_fields(spec, present)]
    if not headings:
        flags.append("no_sections")
    log.info(
        "structured type=%s sections=%d missing=%d instructions=%d flags=%s",
        doc_type, len(sections), len(missing), len(instructions), flags,
    )
    return Document(
        document_type=doc_type,
        title=spec.title,
        sections=sections,
        header=header,
        instructions=instructions,
        missing=missing,
        flags=sorted(set(flags)),
    )


def _title(heading: str) -> str:
    words = re.sub(r"\s+", " ", heading.strip()).lower()
    return words[:1].upper() + words[1:]
