"""HL7 v2.5 ``MDM^T02`` (original document notification and content) for a draft.

Segments: MSH, EVN, PID, PV1, TXA (document type, unique document number, completion status
``IP`` for a draft in progress / ``AU`` once authenticated, availability ``UN`` / ``AV``), and
one ``OBX|n|TX|`` per line of text. Text is escaped (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``).
Segments are separated by carriage returns, as the standard requires.
"""

from __future__ import annotations

import re
from datetime import date, datetime

__all__ = ["escape", "split_name", "build_mdm_t02", "DOCUMENT_TYPE_CODES"]

#: TXA-2 document type per template key (HL7 table 0270 codes where one exists).
DOCUMENT_TYPE_CODES = {
    "operative_report": "OP",
    "consult_letter": "CN",
    "progress_note": "PN",
    "discharge_summary": "DS",
    "radiology_report": "RAD",
    "referral_letter": "RL",
}


def escape(text: str | None) -> str:
    """Escape HL7 delimiters in a field value; line breaks become spaces."""
    if not text:
        return ""
    text = text.replace("\\", "\\E\\")
    text = text.replace("|", "\\F\\").replace("^", "\\S\\").replace("&", "\\T\\")
    text = text.replace("~", "\\R\\")
    return re.sub(r"[\r\n]+", " ", text)


def split_name(name: str | None) -> tuple[str, str, str]:
    """(family, given, middle) from "John A. Smith", "Smith, John" or "Dr. Jane Smith"."""
    if not name:
        return "", "", ""
    text = re.sub(r"^(?:dr|doctor|mr|mrs|ms)\.?\s+", "", name.strip(), flags=re.I)
    if "," in text:
        family, _, rest = text.partition(",")
        parts = rest.split()
        return family.strip(), (parts[0] if parts else ""), " ".join(parts[1:])
    parts = text.split()
    if len(parts) == 1:
        return parts[0], "", ""
    return parts[-1], parts[0], " ".join(parts[1:-1])


def _ts(moment: datetime | date | None) -> str:
    if moment is None:
        return ""
    if isinstance(moment, datetime):
        base = moment.strftime("%Y%m%d%H%M%S")
        offset = moment.strftime("%z")
        return base + offset
    return moment.strftime("%Y%m%d")


def _xcn(identifier: str | None, name: str | None) -> str:
    family, given, middle = split_name(name)
    parts = [escape(identifier), escape(family), escape(given), escape(middle)]
    return "^".join(parts).rstrip("^")


def build_mdm_t02(
    *,
    draft_id: str,
    document_type: str,
    loinc: str,
    loinc_display: str,
    text: str,
    practice_name: str,
    patient_name: str | None,
    mrn: str | None,
    date_of_birth: date | None,
    physician_id: str | None,
    physician_name: str | None,
    referring_physician: str | None,
    date_of_service: date | None,
    encounter_id: str | None,
    created: datetime,
    final: bool,
    file_name: str,
    signed_by: str | None = None,
    signed_at: datetime | None = None,
) -> str:
    """The MDM^T02 message as one string with ``\\r`` between segments."""
    facility = escape(practice_name)[:180]
    control_id = (draft_id.replace("-", "")[:12] + created.strftime("%H%M%S"))[:20]
    family, given, middle = split_name(patient_name)
    segments = [
        "|".join([
            "MSH", "^~\\&", "DICTATION", facility, "EHR", facility, _ts(created), "",
            "MDM^T02^MDM_T02", control_id, "P", "2.5", "", "", "AL", "NE",
        ]),
        "|".join(["EVN", "T02", _ts(created)]),
        "|".join([
            "PID", "1", "", f"{escape(mrn)}^^^{facility}^MR" if mrn else "", "",
            "^".join([escape(family), escape(given), escape(middle)]).rstrip("^"),
            "", _ts(date_of_birth),
        ]),
        "|".join([
            "PV1", "1", "O", "", "", "", "", _xcn(physician_id, physician_name),
            _xcn(None, referring_physician) if referring_physician else "",
            "", "", "", "", "", "", "", "", "", "", escape(encounter_id),
        ]),
    ]
    txa = [""] * 24
    txa[0] = "TXA"
    txa[1] = "1"
    txa[2] = DOCUMENT_TYPE_CODES.get(document_type, escape(document_type.upper()[:30]))
    txa[3] = "TX"
    txa[4] = _ts(date_of_service)
    txa[5] = _xcn(physician_id, physician_name)
    txa[6] = _ts(created)
    txa[7] = _ts(created)
    txa[9] = _xcn(physician_id, physician_name)
    if final and signed_by:
        txa[10] = _xcn(None, signed_by)
    txa[12] = escape(draft_id)
    txa[16] = escape(file_name)
    txa[17] = "AU" if final else "IP"
    txa[19] = "AV" if final else "UN"
    if final and signed_by:
        fam, giv, mid = split_name(signed_by)
        ppn = ["", escape(fam), escape(giv), escape(mid)] + [""] * 10 + [_ts(signed_at or created)]
        txa[22] = "^".join(ppn)  # PPN: person, then time stamp in component 15
    segments.append("|".join(txa).rstrip("|"))
    observation = f"{escape(loinc)}^{escape(loinc_display)}^LN"
    result_status = "F" if final else "P"
    lines = text.split("\n") or [""]
    for i, line in enumerate(lines, start=1):
        segments.append("|".join([
            "OBX", str(i), "TX", observation, "1", escape(line), "", "", "", "", "",
            result_status,
        ]))
    return "\r".join(segments) + "\r"
