"""Header data of a document: patient, dates, MRN, physicians.

Two sources: the sidecar (``DictationMeta``) and what the physician says at the start of the
dictation ("patient John Smith, date of birth March 4, 1962, MRN 12345"). The sidecar wins; a
dictated value that disagrees is kept in ``HeaderField.conflict`` and the document is flagged
``header_mismatch`` so that a person decides. Nothing is silently resolved.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date

from dateutil import parser as date_parser

from pipeline.core.records import DictationMeta, HeaderField
from pipeline.core.settings import Settings

__all__ = [
    "HEADER_KEYS",
    "stay_dates",
    "HEADER_MISMATCH",
    "DictatedHeader",
    "extract_dictated",
    "merge_header",
    "physician_display_name",
    "parse_date",
    "format_date",
]

HEADER_KEYS = (
    "patient_name",
    "date_of_birth",
    "mrn",
    "date_of_service",
    "physician",
    "referring_physician",
)
HEADER_MISMATCH = "header_mismatch"

_MONTHS = (
    r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\.?"
)
_DATE = (
    rf"(?:{_MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}"  # March 4, 1962
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTHS},?\s+\d{{4}}"  # 4 March 1962
    r"|\d{1,2}[/.-]\d{1,2}[/.-]\d{2,4}"  # 03/04/1962
    r"|\d{4}-\d{2}-\d{2})"  # 1962-03-04
)
_NAME_WORD = r"[A-Z][a-zA-Z'’\-]+"
_NAME = rf"{_NAME_WORD}(?:[ \t]+[A-Z]\.?)?(?:[ \t]+{_NAME_WORD}){{1,2}}"
_DOCTOR = rf"(?:[Dd]r\.?|[Dd]octor)[ \t]+{_NAME_WORD}(?:[ \t]+{_NAME_WORD})?"
_SEP = r"[ \t]*(?:is|:|,|-|colon)?[ \t]*"

_PATTERNS: dict[str, re.Pattern[str]] = {
    "patient_name": re.compile(
        rf"(?i:\b(?:patient(?:'s)?(?:\s+name)?|name\s+of\s+(?:the\s+)?patient|regarding|re:|"
        rf"(?:summary|report|letter|note|consultation|dictation)\s+(?:for|on)(?!\s+patient\b)))"
        rf"{_SEP}(?P<value>{_NAME})"
    ),
    "date_of_birth": re.compile(
        rf"(?i:\b(?:date\s+o[fn]\s+birth|d\.?o\.?b\.?|birth\s*date|born(?:\s+on)?)){_SEP}(?P<value>(?i:{_DATE}))"
    ),
    "mrn": re.compile(
        r"(?i:\b(?:mrn|m\.r\.n\.|medical\s+record(?:\s+number)?|record\s+number|hospital\s+number|"
        r"chart\s+number))(?:\s+number)?\s*(?:is|:|,|#|number|no\.?)?\s*"
        r"(?P<value>[A-Z]{0,3}\d(?:[\s-]?\d){2,14}(?:[A-Z])?)\b"
    ),
    "date_of_service": re.compile(
        r"(?i:\b(?:date\s+o[fn]\s+(?:service|surgery|operation|procedure|visit|exam|examination|"
        r"consultation|admission|encounter|study)|(?:exam|examination|study|visit|service|"
        r"surgery|procedure)\s+date|d\.?o\.?s\.?|seen\s+on|today's\s+date|"
        rf"dictated\s+on|(?m:^[ \t]*date(?=[ \t]*:)))){_SEP}(?P<value>(?i:{_DATE}))"
    ),
    "referring_physician": re.compile(
        rf"(?i:\b(?:referring\s+(?:physician|doctor|provider)|referred\s+by|referral\s+from)){_SEP}"
        rf"(?P<value>{_DOCTOR})"
    ),
    # read so that it leaves the preamble; the sidecar's priority is what counts
    "priority": re.compile(r"(?im)^[ \t]*priority[ \t]*(?::|is|colon)[ \t]*(?P<value>stat|routine|"
                           r"urgent|emergency|normal)\b"),
    "physician": re.compile(
        rf"(?i:\b(?:this\s+is|dictating\s+physician|attending(?:\s+physician)?)){_SEP}"
        rf"(?P<value>{_DOCTOR})"
    ),
}


@dataclass
class DictatedHeader:
    """Header values found in the dictation, with the character spans they occupy."""

    values: dict[str, str]
    spans: list[tuple[int, int]]


def extract_dictated(text: str) -> DictatedHeader:
    """Find header values said in ``text``; the first occurrence of each key counts."""
    values: dict[str, str] = {}
    spans: list[tuple[int, int]] = []
    for key, pattern in _PATTERNS.items():
        match = pattern.search(text)
        if not match:
            continue
        value = match.group("value").strip().rstrip(".,")
        if key == "mrn":
            value = re.sub(r"[\s-]", "", value).upper()
        if key in ("physician", "referring_physician"):
            value = re.sub(r"^(?:[Dd]octor|[Dd]r)\.?\s+", "Dr. ", value)
        values[key] = value
        spans.append(match.span())
    return DictatedHeader(values, spans)


_MONTH_DAY = rf"(?:{_DATE}|{_MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?)"
_STAY = re.compile(
    rf"(?i)\b(?P<kind>admitted|discharged)(?:\s+(?:on|home\s+on))?\s+(?P<value>{_MONTH_DAY})"
    rf"(?:,?\s+(?P<year>\d{{4}})\b)?"
)


def stay_dates(text: str) -> dict[str, str]:
    """ "admitted November 12, discharged November 16, 2026" -> admission and discharge
    dates (a date without its year takes the year said with the other one)."""
    found: dict[str, str] = {}
    years: list[str] = []
    for m in _STAY.finditer(text):
        key = "admission_date" if m.group("kind").lower() == "admitted" else "discharge_date"
        value = m.group("value").strip().rstrip(",")
        in_value = re.search(r"\d{4}", value)
        year = m.group("year") or (in_value.group(0) if in_value else None)
        if year:
            years.append(year)
            if not re.search(r"\d{4}", value):
                value = f"{value}, {year}"
        found.setdefault(key, value)
    if years:
        for key, value in found.items():
            if not re.search(r"\d{4}", value):
                found[key] = f"{value}, {years[-1]}"
    return {k: format_date(parse_date(v)) or v for k, v in found.items()}


def parse_date(value: str | date | None) -> date | None:
    """A date from a ``date`` or a dictated/typed string; None if it cannot be read."""
    if value is None or isinstance(value, date):
        return value
    text = re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", value.strip(), flags=re.I).replace(" of ", " ")
    try:
        return date_parser.parse(text, dayfirst=False, fuzzy=False).date()
    except (ValueError, OverflowError):
        return None


def format_date(value: date | None) -> str:
    """Dates as printed on documents: 4 March 1962 style is ambiguous-free; we use ISO-like
    ``March 4, 1962`` (US practice)."""
    if value is None:
        return ""
    return f"{value.strftime('%B')} {value.day}, {value.year}"


def _norm_name(name: str) -> str:
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    if "," in text:  # "Smith, John" -> "john smith"
        last, _, first = text.partition(",")
        text = f"{first} {last}"
    words = re.findall(r"[a-z']+", text)
    drop = {"dr", "doctor", "mr", "mrs", "ms", "miss", "md"}
    return " ".join(sorted(w for w in words if w not in drop and len(w) > 1))


def _same(key: str, a: str, b: str) -> bool:
    if key in ("date_of_birth", "date_of_service"):
        da, db = parse_date(a), parse_date(b)
        return da is not None and da == db
    if key == "mrn":
        return re.sub(r"[^A-Z0-9]", "", a.upper()) == re.sub(r"[^A-Z0-9]", "", b.upper())
    return _norm_name(a) == _norm_name(b)


def physician_display_name(physician_id: str | None) -> str | None:
    """A printable name from a physician id: ``dr-smith`` -> ``Dr. Smith``."""
    if not physician_id:
        return None
    parts = [p for p in re.split(r"[-_.\s]+", physician_id) if p]
    if parts and parts[0].lower() in ("dr", "doctor"):
        parts = parts[1:]
    if not parts:
        return None
    return "Dr. " + " ".join(p.capitalize() for p in parts)


def _last_name(name: str) -> str:
    words = re.findall(r"[A-Za-z'’\-]+", name)
    return words[-1].lower() if words else ""


def merge_header(
    meta: DictationMeta | None, dictated: DictatedHeader, settings: Settings
) -> tuple[dict[str, HeaderField], list[str]]:
    """Combine sidecar and dictated header values; return the fields and document flags."""
    meta = meta or DictationMeta()
    flags: list[str] = []
    sidecar: dict[str, str | None] = {
        "patient_name": meta.patient_name,
        "date_of_birth": format_date(meta.date_of_birth) or None,
        "mrn": meta.mrn,
        "date_of_service": format_date(meta.date_of_service) or None,
        "referring_physician": meta.referring_physician,
    }
    header: dict[str, HeaderField] = {}
    for key in HEADER_KEYS:
        said = dictated.values.get(key)
        if key in ("date_of_birth", "date_of_service") and said:
            parsed = parse_date(said)
            said = format_date(parsed) if parsed else said
        if key == "physician":
            header[key] = _physician_field(meta, said, settings)
            if header[key].conflict:
                flags.append(HEADER_MISMATCH)
            continue
        given = sidecar.get(key)
        if given:
            conflict = said if (said and not _same(key, given, said)) else None
            if conflict:
                flags.append(HEADER_MISMATCH)
            header[key] = HeaderField(value=given, source="sidecar", conflict=conflict)
        elif said:
            header[key] = HeaderField(value=said, source="dictation")
        else:
            header[key] = HeaderField(value=None, source="none")
    return header, sorted(set(flags))


def _physician_field(meta: DictationMeta, said: str | None, settings: Settings) -> HeaderField:
    pid = meta.physician_id
    if pid is None and len(settings.physicians) == 1 and settings.physicians[0] != "dr-default":
        pid = settings.physicians[0]
    from_id = settings.physician_names.get(pid or "") or physician_display_name(pid)
    if from_id and said:
        if _last_name(from_id) == _last_name(said):
            return HeaderField(value=said, source="settings")  # fuller dictated form, same person
        return HeaderField(value=from_id, source="settings", conflict=said)
    if from_id:
        return HeaderField(value=from_id, source="settings")
    if said:
        return HeaderField(value=said, source="dictation")
    return HeaderField(value=None, source="none")
