"""Sentences addressed to the secretary, lifted out of the dictation as structured instructions.

Kinds and their parameters:

- ``copy``: "please copy Dr. Patel at Riverside Cardiology", "cc Dr. Lee" ->
  ``{"recipient": "Dr. Patel", "organization": "Riverside Cardiology"}``
- ``schedule``: "schedule follow-up in two weeks", "follow up in 6 weeks" ->
  ``{"interval_days": 14, "count": 2, "unit": "week"}`` (+ ``"with"`` when a doctor is named)
- ``order``: "order an MRI of the left knee" -> ``{"test": "MRI", "body_part": "left knee"}``
- ``refer``: "refer to endocrinology" -> ``{"specialty": "endocrinology"}`` (+ ``"recipient"``)
- ``other``: "please send the pathology report to the patient" -> ``{}``

Requests (imperatives, "please ...", "cc ...") are removed from the document body. A statement
with a subject ("we will see her back in three months", "I will refer him to cardiology") is
part of the clinical plan: it becomes an instruction too but stays in the text
(``params["in_body"] = True``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.core.records import Instruction
from pipeline.language.spoken_numbers import count_pattern, parse_count

__all__ = ["Found", "find_instructions", "split_sentences", "parse_sentence", "interval_days",
           "parse_office_sentence", "OFFICE_PASSAGE", "expand"]

#: An "instructions for the office:" passage: every sentence up to the paragraph end is one.
OFFICE_PASSAGE = re.compile(
    r"(?im)(?:^|(?<=[.!?])[ \t]+)[ \t]*(?:instructions?|notes?|message)\s+(?:for|to)\s+"
    r"(?:the\s+)?(?:office|secretary|secretaries|transcriptionist|staff|front\s+desk)"
    r"[ \t]*(?::|colon|,|-)?(?P<body>.*?)(?=\n[ \t]*\n|\Z)", re.S)

#: A count before a unit: "6", "seventeen", "twenty-one", "two and a half", "a couple of",
#: or a range of two numbers ("4 to 6", "two to three": the upper end is booked).
_COUNT = count_pattern(vague=False)
_NUM = rf"(?P<n>{_COUNT}(?:\s*(?:-|to)\s*{_COUNT})?|{count_pattern()})"
_RANGE = re.compile(rf"^{_COUNT}\s*(?:-|to)\s*(?P<upper>{_COUNT})$", re.I)
_UNIT_DAYS = {"day": 1, "week": 7, "month": 30, "year": 365}
_UNIT = r"(?P<unit>days?|weeks?|months?|years?|wks?|mos?)"
_DOCTOR = r"(?:[Dd]r\.?|[Dd]octor)\s+[A-Z][\w'’\-]+(?:\s+[A-Z][\w'’\-]+)?"

_TESTS = (
    r"mri|mra|ct(?:\s+scan)?|cat\s+scan|pet(?:[\s-]ct)?(?:\s+scan)?|x-?rays?|chest\s+x-?ray|"
    r"ultrasound|sonogram|doppler(?:\s+study)?|echocardiogram|echo|ekg|ecg|"
    r"electrocardiogram|stress\s+test|holter(?:\s+monitor)?|event\s+monitor|cbc|bmp|cmp|"
    r"labs?|lab\s+work|blood\s+work|bloodwork|lipid\s+panel|(?:hemoglobin\s+)?a1c|tsh|psa|"
    r"urinalysis|urine\s+culture|mammogram|colonoscopy|endoscopy|egd|dexa(?:\s+scan)?|"
    r"bone\s+density(?:\s+scan)?|eeg|emg|nerve\s+conduction\s+stud(?:y|ies)|biopsy|pfts?|"
    r"pulmonary\s+function\s+tests?|sleep\s+study|bone\s+scan|cultures?|inr|pt/inr|"
    r"basic\s+metabolic\s+panel|comprehensive\s+metabolic\s+panel|complete\s+blood\s+count|"
    r"thyroid\s+(?:panel|function\s+tests?)|liver\s+function\s+tests?|lfts?|d-dimer|troponin"
)

_LEAD = re.compile(
    r"^(?:(?:(?:instructions?|notes?|message)\s+(?:for|to)\s+(?:the\s+)?(?:office|secretary|"
    r"secretaries|transcriptionist|staff|front\s+desk)|to\s+the\s+secretary)\s*(?::|colon|,|-)?\s*)?"
    r"(?:(?:and|also|then|okay|ok|now)[, ]\s*)*"
    r"(?:(?:please|kindly|could\s+you|can\s+you|would\s+you|i\s+would\s+like\s+you\s+to|"
    r"i'd\s+like\s+you\s+to)[, ]\s*(?:also\s+)?)?",
    re.I,
)
_SUBJECT = re.compile(
    r"^(?:we|i|he|she|they|the\s+patient|patient|mr\.?\s+\w+|mrs\.?\s+\w+|ms\.?\s+\w+)\s+"
    r"(?:will|shall|would|should|is\s+to|are\s+to|am\s+going\s+to|are\s+going\s+to|"
    r"is\s+going\s+to|plan\s+to|'ll)\s+",
    re.I,
)
_OFFICE = re.compile(
    r"^(?:instructions?|notes?|message)\s+(?:for|to)\s+(?:the\s+)?(?:office|secretary|"
    r"secretaries|transcriptionist|staff|front\s+desk)\b", re.I)
_PLEASE = re.compile(r"^(?:note\s+to|to\s+the\s+secretary|please|kindly|could\s+you|can\s+you)",
                     re.I)

_COPY = re.compile(
    r"^(?:send\s+(?:a\s+)?cop(?:y|ies)(?:\s+of\s+(?:this|the)\s+(?:letter|report|note|"
    r"dictation|consult(?:ation)?))?(?:\s+to)?|c\.?\s?c\.?(?:\s+to)?|copy(?:\s+(?:of\s+)?"
    r"(?:this|the)\s+(?:letter|report|note|dictation|consult(?:ation)?))?(?:\s+to)?|"
    r"carbon\s+copy(?:\s+to)?|copies\s+to)\s*:?\s+(?P<rest>.+)$",
    re.I,
)
_RECIPIENT = re.compile(
    rf"^(?P<name>{_DOCTOR}|(?:the\s+)?(?:patient|referring\s+(?:physician|doctor)|"
    r"primary\s+care\s+(?:physician|provider|doctor)|pcp|family\s+(?:physician|doctor)))"
    r"(?:\s*,?\s+(?:at|of|from|with|in)\s+(?:the\s+)?(?P<org>[^,;]+?))?\s*$",
)
_SCHEDULE_VERB = re.compile(
    r"^(?:schedule|book|arrange|make|set\s+up|organi[sz]e)\s+(?:(?:him|her|them|the\s+patient)"
    r"\s+(?:for\s+)?)?(?:a\s+|an\s+|the\s+)?(?P<what>.+?)$",
    re.I,
)
_INTERVAL = re.compile(
    rf"\b(?:in|within|after|for)\s+(?:about\s+|approximately\s+)?{_NUM}\s+{_UNIT}\b", re.I
)
_FOLLOW = re.compile(
    r"^(?:follow[\s-]?up|f/u|return(?:\s+to\s+(?:the\s+)?(?:clinic|office))?(?:\s+visit)?|"
    r"recheck|re-?evaluate|come\s+back|see\s+(?:him|her|them|the\s+patient)\s+(?:back|again)|"
    r"(?:see|follow\s+up\s+with)\s+(?:him|her|them|the\s+patient)|rtc|"
    r"(?:she|he|they|the\s+patient)\s+(?:should|will|is\s+to|needs\s+to)\s+(?:follow[\s-]?up|"
    r"return|come\s+back|be\s+seen))\b",
    re.I,
)
_ORDER = re.compile(
    rf"^(?P<verb>order|obtain|get|schedule|book|arrange|request|send\s+for)\s+"
    rf"(?:(?:him|her|them|the\s+patient)\s+(?:for\s+)?)?(?:a\s+|an\s+|the\s+|some\s+|repeat\s+|"
    rf"a\s+repeat\s+|for\s+(?:a|an)\s+)?(?P<test>(?i:{_TESTS})(?:\s+(?:scan|study|"
    rf"with(?:out)?\s+(?:and\s+without\s+)?contrast))*|[^.;]+?)"
    rf"(?:\s+(?:of|on|for)\s+(?:the\s+|his\s+|her\s+)?(?P<part>[^.;,]+?))?"
    rf"(?:\s+(?:in|within|before|prior\s+to)\s+[^.;]+)?\s*$",
    re.I,
)
_TEST_ONLY = re.compile(rf"^(?:{_TESTS})\b", re.I)
_REFER = re.compile(
    r"^(?:refer|make\s+a\s+referral|place\s+a\s+referral|send\s+a\s+referral|referral)\s+"
    r"(?:(?:him|her|them|the\s+patient|patient)\s+)?(?:back\s+)?(?:to|for)\s+(?P<target>.+?)\s*$",
    re.I,
)
_OTHER_VERBS = re.compile(
    r"^(?:send|fax|mail|email|e-mail|forward|call|phone|notify|inform|let|pull|attach|file|"
    r"print|make\s+sure|remind|give|check\s+with|contact)\b",
    re.I,
)
_NOT_SECRETARY = re.compile(r"hesitate|feel\s+free|let\s+me\s+know|contact\s+me|call\s+me", re.I)
_ABBREV = re.compile(r"(?:\b(?:Dr|Mr|Mrs|Ms|St|vs|Prof|No|approx|e\.g|i\.e|etc)|\b[A-Z])\.$")


@dataclass
class Found:
    """An instruction and the character span of its sentence in the text."""

    instruction: Instruction
    start: int
    end: int
    remove: bool


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text`` (a line break also ends a sentence)."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in re.finditer(r"[.!?]+(?=\s|$)|\n", text):
        end = match.end()
        piece = text[start:end]
        if match.group() != "\n" and _ABBREV.search(piece.rstrip()):
            continue
        if re.search(r"\d\.$", piece) and re.fullmatch(r"\s*\d+\.", piece):
            continue  # "1." list number
        if piece.strip():
            spans.append((start, end))
        start = end
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def interval_days(count: str, unit: str) -> tuple[int, int | float, str]:
    """(days, count, unit) from a spoken count and unit; a range takes its upper end, half a
    day rounds up.

    >>> interval_days("seventeen", "days")
    (17, 17, 'day')
    >>> interval_days("4 to 6", "weeks")
    (42, 6, 'week')
    >>> interval_days("two and a half", "weeks")
    (18, 2.5, 'week')
    """
    count = re.sub(r"\s+", " ", count.lower().strip())
    n = parse_count(count)
    if n is None:
        said_range = _RANGE.match(count)
        n = parse_count(said_range.group("upper")) if said_range else None
    n = 1 if n is None else n
    unit = unit.lower().rstrip("s")
    unit = {"wk": "week", "mo": "month"}.get(unit, unit)
    return int(n * _UNIT_DAYS[unit] + 0.5), n, unit


def _clean_target(text: str) -> str:
    text = re.sub(r"^(?:the|a|an)\s+", "", text.strip().rstrip(".,;"), flags=re.I)
    text = re.sub(r"\s+(?:for|regarding|re)\s+.*$", "", text, flags=re.I)
    return text.strip()


def _doctor(text: str) -> str:
    return re.sub(r"^(?:[Dd]octor|[Dd]r)\.?\s+", "Dr. ", text.strip())


def parse_sentence(sentence: str) -> tuple[Instruction, bool] | None:
    """Parse one sentence; return (instruction, remove from body) or None if it is not one."""
    original = sentence.strip()
    core = original.rstrip(".!?").strip()
    if not core or _NOT_SECRETARY.search(core):
        return None
    polite = bool(_PLEASE.match(core))
    stripped = _LEAD.sub("", core, count=1).strip()
    subject = _SUBJECT.match(stripped)
    in_body = bool(subject) and not polite
    body = stripped[subject.end():] if subject else stripped

    def make(kind: str, params: dict[str, object]) -> tuple[Instruction, bool]:
        if in_body:
            params["in_body"] = True
        return Instruction(kind=kind, text=original, params=params), not in_body

    copy = _COPY.match(body)
    if copy and not subject:
        rest = copy.group("rest").strip()
        splitter = r"\s*(?:,\s*and\s+|\s+and\s+|;\s*|,\s*(?=(?:[Dd]r|[Dd]octor)\b))"
        parts = [p for p in re.split(splitter, rest) if p]
        recipients = []
        for part in parts:
            m = _RECIPIENT.match(part.strip())
            if m:
                entry: dict[str, object] = {"recipient": _doctor(m.group("name"))}
                if m.group("org"):
                    entry["organization"] = m.group("org").strip()
                recipients.append(entry)
        if recipients:
            params = dict(recipients[0])
            if len(recipients) > 1:
                params["recipients"] = recipients
            return make("copy", params)
        return make("copy", {"recipient": _clean_target(rest)})

    refer = _REFER.match(body)
    if refer:
        target = _clean_target(refer.group("target"))
        params = {}
        doc = re.match(rf"^(?P<doc>{_DOCTOR})(?:\s+(?:in|at|of|from)\s+(?P<rest>.+))?$", target)
        if doc:
            params["recipient"] = _doctor(doc.group("doc"))
            if doc.group("rest"):
                params["specialty"] = _clean_target(doc.group("rest")).lower()
        else:
            params["specialty"] = target.lower()
        return make("refer", params)

    order = _ORDER.match(body)
    if order:
        test = order.group("test").strip()
        verb = order.group("verb").lower()
        is_test = bool(_TEST_ONLY.match(test))
        if verb == "get" and not polite:
            is_test = False  # "Get a CBC" in a plan is advice; "please get a CBC" is a request
        if verb in ("schedule", "book", "arrange", "request") and not subject \
                and not _INTERVAL.search(body):
            is_test = True  # "book the fine needle aspiration": a procedure to arrange
        if (is_test or verb == "order") and not re.match(
            r"^(?:follow|appointment|visit|return)", test, re.I
        ):
            params = {"test": _canonical_test(test)}
            if order.group("part"):
                params["body_part"] = _clean_target(order.group("part"))
            interval = _INTERVAL.search(body)
            if interval:
                params["interval_days"] = interval_days(interval.group("n"),
                                                        interval.group("unit"))[0]
            return make("order", params)

    interval = _INTERVAL.search(body)
    schedule = _SCHEDULE_VERB.match(body)
    follow = _FOLLOW.match(body) or (subject and _FOLLOW.match(stripped))
    if interval and (schedule or follow or re.search(r"\bfollow[\s-]?up\b|\bappointment\b",
                                                     body, re.I)):
        days, count, unit = interval_days(interval.group("n"), interval.group("unit"))
        params = {"interval_days": days, "count": count, "unit": unit}
        with_doc = re.search(rf"\bwith\s+(?P<doc>{_DOCTOR})", body)
        if with_doc:
            params["with"] = _doctor(with_doc.group("doc"))
        return make("schedule", params)

    if ((polite or _OFFICE.match(core)) and _OTHER_VERBS.match(body)) or \
            (not subject and re.match(r"^(?:send|fax|mail|forward)\b", body, re.I)):
        params = {}
        doc = re.search(_DOCTOR, body)
        if doc:
            params["recipient"] = _doctor(doc.group(0))
        return make("other", params)
    return None


def parse_office_sentence(sentence: str) -> Instruction | None:
    """A sentence from an "instructions for the office" passage: always an instruction."""
    parsed = parse_sentence(sentence)
    if parsed:
        parsed[0].params.pop("in_body", None)
        return parsed[0]
    text = sentence.strip()
    if not re.search(r"\w", text):
        return None
    params: dict[str, object] = {}
    doc = re.search(_DOCTOR, text)
    if doc:
        params["recipient"] = _doctor(doc.group(0))
    return Instruction(kind="other", text=text, params=params)


def _canonical_test(test: str) -> str:
    text = re.sub(r"\s+", " ", test.strip())
    upper = {"mri", "mra", "ct", "ekg", "ecg", "cbc", "bmp", "cmp", "tsh", "psa", "egd", "eeg",
             "emg", "pft", "pfts", "inr", "lft", "lfts", "pet", "dexa"}
    words = text.split(" ")
    return " ".join(w.upper() if w.lower() in upper else w for w in words)


def expand(instruction: Instruction) -> list[Instruction]:
    """One instruction per recipient: "copy Dr. Lee and Dr. Brown" becomes two copy tasks."""
    recipients = instruction.params.get("recipients")
    if instruction.kind != "copy" or not isinstance(recipients, list) or len(recipients) < 2:
        return [instruction]
    extra = {k: v for k, v in instruction.params.items()
             if k not in ("recipients", "recipient", "organization")}
    return [Instruction(kind="copy", text=instruction.text, params={**entry, **extra})
            for entry in recipients]


_CLAUSE = re.compile(
    r",?\s+and\s+(?:then\s+|also\s+)?(?=(?:please\s+)?(?:copy|cc|send|order|schedule|book|"
    r"arrange|refer|fax|call)\b)",
    re.I,
)


def _parse_clauses(sentence: str) -> list[tuple[Instruction, bool]]:
    """ "Please book the biopsy and copy the letter to the patient": one instruction per
    clause when every clause is one; else the sentence as a whole."""
    clauses = [c for c in _CLAUSE.split(sentence.strip()) if c.strip()]
    if len(clauses) > 1:
        polite = bool(_PLEASE.match(sentence.strip()))
        parsed = []
        for i, clause in enumerate(clauses):
            text = clause if i == 0 or not polite else f"please {clause}"
            one = parse_sentence(text)
            if one is None:
                break
            parsed.append((Instruction(one[0].kind, sentence.strip(), one[0].params), one[1]))
        else:
            return parsed
    whole = parse_sentence(sentence)
    return [whole] if whole else []


def find_instructions(text: str) -> list[Found]:
    """Every instruction sentence in ``text`` with its span and whether to remove it."""
    found: list[Found] = []
    for start, end in split_sentences(text):
        for instruction, remove in _parse_clauses(text[start:end]):
            found.append(Found(instruction, start, end, remove))
    return found
