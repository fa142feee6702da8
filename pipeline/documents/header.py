"""Header data of a document: patient, dates, MRN, physicians.

Two sources: the sidecar (``DictationMeta``) and what the physician says at the start of the
dictation ("patient John Smith, date of birth March 4, 1962, MRN 12345"). The sidecar wins; a
dictated value that disagrees is kept in ``HeaderField.conflict`` and the document is flagged
``header_mismatch`` so that a person decides. Nothing is silently resolved.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from datetime import date

from dateutil import parser as date_parser
from rapidfuzz import fuzz

from pipeline.core.records import DictationMeta, HeaderField
from pipeline.core.settings import Settings
from pipeline.language.vocab import phonetic_key

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
    "HeaderMatchOptions",
    "compare_values",
    "describe_mismatch",
    "mismatches",
    "name_resemblance",
    "HEADER_LABELS",
]

#: How header fields are printed in messages.
HEADER_LABELS = {
    "patient_name": "Patient name",
    "date_of_birth": "Date of birth",
    "mrn": "MRN",
    "date_of_service": "Date of service",
    "physician": "Physician",
    "referring_physician": "Referring physician",
}


@dataclass(frozen=True)
class HeaderMatchOptions:
    """Thresholds for deciding that a dictated header value is the sidecar's.

    A name is the same when its words (in either order, titles and case ignored) are spelled
    at least ``name_same_ratio`` alike (rapidfuzz ``fuzz.ratio``, 0-100) *and* every word has
    the same phonetic key (``pipeline.language.vocab.phonetic_key``). The default, 100,
    accepts only the same spelling: "Okonkow" for "Okonkwo" may be the recogniser's spelling
    or another patient, so a person decides (lower it, e.g. to 90, to let near-spellings
    through). A difference is described as "sounds alike, spelled differently" when every
    word is at least ``name_alike_ratio`` alike or shares a key, else as "a different name"
    with how far spelling and sound agree. MRNs and dates must be equal; the message says
    which digits or date parts differ.
    """

    name_same_ratio: float = 100.0
    name_alike_ratio: float = 70.0


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


# "patient manual Kanko": Whisper wrote the first name as an ordinary word; the surname is
# still capitalised. Only right after "patient" and not before function words or verbs.
_LOWER_NAME = re.compile(
    r"(?i:\bpatient(?:'s)?(?:\s+name)?)[ \t]*(?:is|:|,|-)?[ \t]*"
    r"(?P<value>(?!(?:is|was|a|an|the|has|had|presents|presented|tolerated|denies|reports|"
    r"states|underwent|returns|comes|came|seen|who|with|and|for|to|in|on|at|of|here|today|"
    r"name|number|record|date)\b)[a-z][a-z'’\-]{1,}[ \t]+[A-Z][a-zA-Z'’\-]+)\b"
)
# "Okafor, O K A F O R" / "Okafor, spelled O-K-A-F-O-R" / "Okafor OKAFOR" after the name.
_SPELLED = re.compile(
    r"[ \t]*,?[ \t]*(?:(?:that's|that is|spelled|spelling)[ \t]+)?"
    r"(?P<letters>(?:[A-Za-z](?:[ \t]*[.\-][ \t]*|[ \t]+)){2,}[A-Za-z]\b\.?|[A-Z]{3,}\b)"
)


def _with_spelling(text: str, name: str, end: int) -> tuple[str, int]:
    """Join letters spelled right after a name into it: the spelling replaces the heard
    surname when they differ. Returns the name and the end of what was used."""
    m = _SPELLED.match(text, end)
    if not m:
        return name, end
    letters = re.sub(r"[^A-Za-z]", "", m.group("letters"))
    words = name.split()
    if len(letters) < 3 or not words:
        return name, end
    last = re.sub(r"[^A-Za-z]", "", words[-1])
    if letters.lower() == last.lower():
        return name, m.end()
    if fuzz.ratio(letters.lower(), last.lower()) >= 50 or len(words) == 1:
        words[-1] = letters.capitalize()
        return " ".join(words), m.end()
    return name, end


# "patient manual canco": the recogniser wrote the whole name in lower case. Only a
# candidate: it counts when it resembles the sidecar's name (``merge_header``).
_LOOSE_NAME = re.compile(
    r"(?i:\bpatient(?:'s)?(?:\s+name)?)[ \t]*(?:is|:|,|-)?[ \t]*"
    r"(?P<value>(?!(?:is|was|a|an|the|has|had|presents|presented|tolerated|denies|reports|"
    r"states|underwent|returns|comes|came|seen|who|with|and|for|to|in|on|at|of|here|today|"
    r"name|number|record|date|doing|feels|notes|will|would|should|did|does|continues)\b)"
    r"[a-z][a-z'’\-]{1,}[ \t]+[a-z][a-z'’\-]{2,})\b"
)


@dataclass
class DictatedHeader:
    """Header values found in the dictation, with the character spans they occupy;
    ``loose`` holds a lower-case name candidate ("patient manual canco") that counts only
    when it resembles the sidecar's name."""

    values: dict[str, str]
    spans: list[tuple[int, int]]
    loose: dict[str, str] = field(default_factory=dict)


def extract_dictated(text: str) -> DictatedHeader:
    """Find header values said in ``text``; the first occurrence of each key counts."""
    values: dict[str, str] = {}
    spans: list[tuple[int, int]] = []
    for key, pattern in _PATTERNS.items():
        match = pattern.search(text)
        if key == "patient_name":
            lower = _LOWER_NAME.search(text[:300])
            if lower and (not match or lower.start() < match.start()):
                match = lower
        if not match:
            continue
        value = match.group("value").strip().rstrip(".,")
        if key == "patient_name":
            value, end = _with_spelling(text, value, match.start("value") + len(value))
            values[key] = value
            spans.append((match.start(), max(end, match.end())))
            continue
        if key == "mrn":
            value = re.sub(r"[\s-]", "", value).upper()
        if key in ("physician", "referring_physician"):
            value = re.sub(r"^(?:[Dd]octor|[Dd]r)\.?\s+", "Dr. ", value)
        values[key] = value
        spans.append(match.span())
    loose: dict[str, str] = {}
    if "patient_name" not in values:
        m = _LOOSE_NAME.search(text[:300])
        if m:
            loose["patient_name"] = " ".join(w.capitalize() for w in m.group("value").split())
    return DictatedHeader(values, spans, loose)


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
    return compare_values(key, a, b) is None


def _name_words(name: str) -> list[str]:
    return _norm_name(name).split()


def _sound(word: str) -> str:
    """The phonetic key without its leading vowel ("Okonkwo" and "Kanko" both ``KNK``)."""
    key = phonetic_key(word)
    return key.lstrip("AEIOUH") or key


def _ordered_name(name: str) -> str:
    """The name's words in spoken order ("Smith, John" -> "john smith"), titles dropped."""
    text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    if "," in text:
        last, _, first = text.partition(",")
        text = f"{first} {last}"
    drop = {"dr", "doctor", "mr", "mrs", "ms", "miss", "md"}
    return " ".join(w for w in re.findall(r"[a-z']+", text) if w not in drop and len(w) > 1)


def compare_values(key: str, given: str, said: str,
                   options: HeaderMatchOptions | None = None) -> str | None:
    """None when the dictated value ``said`` is the sidecar's ``given``; otherwise how they
    differ, e.g. "2 digits differ" or "sounds alike, spelled differently".

    >>> compare_values("mrn", "055781", "055718")
    '2 digits differ (positions 5-6, transposed)'
    >>> compare_values("patient_name", "Daniel Okonkwo", "Manual Kanko")
    'a different name (spelling 62% alike, sound partly alike)'
    >>> compare_values("date_of_birth", "March 4, 1962", "March 5, 1962") is not None
    True
    """
    options = options or HeaderMatchOptions()
    if key in ("date_of_birth", "date_of_service"):
        return _compare_dates(given, said)
    if key == "mrn":
        return _compare_digits(given, said)
    return _compare_names(given, said, options)


def _compare_digits(given: str, said: str) -> str | None:
    a = re.sub(r"[^A-Z0-9]", "", given.upper())
    b = re.sub(r"[^A-Z0-9]", "", said.upper())
    if a == b:
        return None
    if len(a) != len(b):
        return f"{len(b)} characters against {len(a)}"
    diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    where = (f"position {diff[0] + 1}" if len(diff) == 1 else
             f"positions {diff[0] + 1}-{diff[-1] + 1}" if diff == list(range(diff[0], diff[-1] + 1))
             else "positions " + ", ".join(str(i + 1) for i in diff))
    swapped = len(diff) == 2 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
    noun = "digit differs" if len(diff) == 1 else "digits differ"
    return f"{len(diff)} {noun} ({where}{', transposed' if swapped else ''})"


def _compare_dates(given: str, said: str) -> str | None:
    da, db = parse_date(given), parse_date(said)
    if da is None or db is None:
        return None if (da is None and db is None and given == said) else "not a readable date"
    if da == db:
        return None
    if (da.year, da.month, da.day) == (db.year, db.day, db.month):
        return "day and month swapped"
    parts = [name for name, x, y in (("year", da.year, db.year), ("month", da.month, db.month),
                                     ("day", da.day, db.day)) if x != y]
    return " and ".join(parts) + (" differs" if len(parts) == 1 else " differ")


def _compare_names(given: str, said: str, options: HeaderMatchOptions) -> str | None:
    a, b = _name_words(given), _name_words(said)
    if a == b:
        return None
    spelling = max(fuzz.ratio(" ".join(a), " ".join(b)),
                   fuzz.ratio(_ordered_name(given), _ordered_name(said)))
    keys_a = sorted(_sound(w) for w in a)
    keys_b = sorted(_sound(w) for w in b)
    if spelling >= options.name_same_ratio and keys_a == keys_b:
        return None  # the same name, spelled a little differently by the recogniser
    # word by word: the best match of each sidecar word among the dictated words
    alike = 0
    for w in a:
        best = max((fuzz.ratio(w, v) for v in b), default=0.0)
        if best >= options.name_alike_ratio or _sound(w) in keys_b:
            alike += 1
    sound = ("alike" if keys_a == keys_b else "partly alike" if alike or
             fuzz.ratio("".join(keys_a), "".join(keys_b)) >= options.name_alike_ratio
             else "different")
    if sound == "alike" or alike == len(a):
        return f"sounds alike, spelled differently (spelling {spelling:.0f}% alike)"
    return f"a different name (spelling {spelling:.0f}% alike, sound {sound})"


def name_resemblance(given: str, said: str,
                     options: HeaderMatchOptions | None = None) -> int:
    """How many words of ``given`` have a word in ``said`` spelled or sounding alike."""
    options = options or HeaderMatchOptions()
    a, b = _name_words(given), _name_words(said)
    keys_b = {_sound(v) for v in b}
    return sum(1 for w in a if _sound(w) in keys_b or
               max((fuzz.ratio(w, v) for v in b), default=0.0) >= options.name_alike_ratio)


def describe_mismatch(key: str, given: str | None, said: str | None) -> str:
    """One line saying which header field disagrees and how, e.g.
    "MRN: dictated 055718, sidecar 055781 (2 digits differ (positions 5-6, transposed))"."""
    label = HEADER_LABELS.get(key, key.replace("_", " ").capitalize())
    how = compare_values(key, given or "", said or "") if key != "physician" else None
    source = "on file" if key == "physician" else "sidecar"
    text = f"{label}: dictated {said}, {source} {given}"
    return f"{text} ({how})" if how else text


def mismatches(header: dict[str, HeaderField]) -> list[tuple[str, str]]:
    """(field key, description) for every header field with a dictated conflict."""
    return [(key, describe_mismatch(key, f.value, f.conflict))
            for key, f in header.items() if f.conflict]


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
        loose = dictated.loose.get(key)
        if given and not said and loose and name_resemblance(given, loose) > 0:
            said = loose  # a lower-case name that sounds partly like the sidecar's
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
