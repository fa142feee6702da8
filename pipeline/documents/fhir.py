"""FHIR R4 ``DocumentReference`` for a draft, and a validator of the resource's rules.

The resource carries the LOINC document type of the template, ``status: current``,
``docStatus`` preliminary (draft) or final (signed), the patient as subject (MRN identifier),
the physician as author, the date, and two attachments: the plain text (base64) and the .docx.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import date, datetime
from typing import Any

__all__ = [
    "MRN_SYSTEM",
    "PHYSICIAN_SYSTEM",
    "DRAFT_SYSTEM",
    "DOCX_MIME",
    "build_document_reference",
    "validate_document_reference",
]

MRN_SYSTEM = "urn:dictation:mrn"
PHYSICIAN_SYSTEM = "urn:dictation:physician"
DRAFT_SYSTEM = "urn:dictation:draft"
ENCOUNTER_SYSTEM = "urn:dictation:encounter"
DOCX_MIME = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


def _instant(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("FHIR instants need a time zone")
    return moment.isoformat(timespec="seconds")


def build_document_reference(
    *,
    draft_id: str,
    loinc: str,
    loinc_display: str,
    title: str,
    text: str,
    docx_bytes: bytes | None,
    docx_name: str,
    patient_name: str | None,
    mrn: str | None,
    physician_id: str | None,
    physician_name: str | None,
    date_of_service: date | None,
    encounter_id: str | None,
    created: datetime,
    final: bool,
    signed_by: str | None = None,
) -> dict[str, Any]:
    """The DocumentReference resource for one draft (a JSON-ready dict)."""
    resource: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": re.sub(r"[^A-Za-z0-9\-.]", "-", draft_id)[:64],
        "identifier": [{"system": DRAFT_SYSTEM, "value": draft_id}],
        "status": "current",
        "docStatus": "final" if final else "preliminary",
        "type": {
            "coding": [{"system": "http://loinc.org", "code": loinc, "display": loinc_display}],
            "text": title,
        },
        "category": [{
            "coding": [{
                "system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                "code": "clinical-note",
                "display": "Clinical Note",
            }]
        }],
        "date": _instant(created),
        "description": title,
    }
    subject: dict[str, Any] = {}
    if mrn:
        subject["identifier"] = {
            "use": "usual",
            "type": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR",
                "display": "Medical record number",
            }]},
            "system": MRN_SYSTEM,
            "value": mrn,
        }
    if patient_name:
        subject["display"] = patient_name
    if subject:
        resource["subject"] = subject
    author: dict[str, Any] = {}
    if physician_id:
        author["identifier"] = {"system": PHYSICIAN_SYSTEM, "value": physician_id}
    if physician_name:
        author["display"] = physician_name
    if author:
        resource["author"] = [author]
    if final and signed_by:
        resource["authenticator"] = {"display": signed_by}
    context: dict[str, Any] = {}
    if encounter_id:
        context["encounter"] = [{"identifier": {"system": ENCOUNTER_SYSTEM, "value": encounter_id}}]
    if date_of_service:
        context["period"] = {"start": date_of_service.isoformat()}
    if context:
        resource["context"] = context
    content = [{
        "attachment": {
            "contentType": "text/plain",
            "language": "en",
            "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
            "title": f"{title} (text)",
            "creation": _instant(created),
        },
        "format": {"system": "urn:oid:1.3.6.1.4.1.19376.1.2.3",
                   "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient",
                   "display": "mimeType Sufficient"},
    }]
    if docx_bytes is not None:
        content.append({
            "attachment": {
                "contentType": DOCX_MIME,
                "data": base64.b64encode(docx_bytes).decode("ascii"),
                "title": docx_name,
                "creation": _instant(created),
            }
        })
    resource["content"] = content
    return resource


# --- validation -------------------------------------------------------------------------------

_CODE = re.compile(r"^[^\s]+( [^\s]+)*$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_URI = re.compile(r"^\S+$")
_INSTANT = re.compile(
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
    r"(\.\d{1,9})?(Z|[+-]((0\d|1[0-3]):[0-5]\d|14:00))$"
)
_DATETIME = re.compile(
    r"^\d{4}(-(0[1-9]|1[0-2])(-(0[1-9]|[12]\d|3[01])(T([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
    r"(\.\d{1,9})?(Z|[+-]((0\d|1[0-3]):[0-5]\d|14:00)))?)?)?$"
)
_MIME = re.compile(r"^[a-z]+/[a-z0-9.+\-]+(\s*;\s*[a-z\-]+=[^\s;]+)*$", re.I)

# element -> (min, max ("*" = list), kind)
_DOCREF: dict[str, tuple[int, str, str]] = {
    "resourceType": (1, "1", "string"),
    "id": (0, "1", "id"),
    "meta": (0, "1", "object"),
    "text": (0, "1", "object"),
    "masterIdentifier": (0, "1", "Identifier"),
    "identifier": (0, "*", "Identifier"),
    "status": (1, "1", "code"),
    "docStatus": (0, "1", "code"),
    "type": (0, "1", "CodeableConcept"),
    "category": (0, "*", "CodeableConcept"),
    "subject": (0, "1", "Reference"),
    "date": (0, "1", "instant"),
    "author": (0, "*", "Reference"),
    "authenticator": (0, "1", "Reference"),
    "custodian": (0, "1", "Reference"),
    "relatesTo": (0, "*", "object"),
    "description": (0, "1", "string"),
    "securityLabel": (0, "*", "CodeableConcept"),
    "content": (1, "*", "Content"),
    "context": (0, "1", "Context"),
}
_STATUS = {"current", "superseded", "entered-in-error"}
_DOC_STATUS = {"preliminary", "final", "amended", "entered-in-error"}


def _no_empty(value: Any, path: str, errors: list[str]) -> None:
    """FHIR ele-1: no empty strings, arrays or objects anywhere."""
    if value is None:
        errors.append(f"{path}: null is not allowed (omit the element)")
    elif isinstance(value, str) and not value.strip():
        errors.append(f"{path}: empty string")
    elif isinstance(value, list):
        if not value:
            errors.append(f"{path}: empty array")
        for i, item in enumerate(value):
            _no_empty(item, f"{path}[{i}]", errors)
    elif isinstance(value, dict):
        if not value:
            errors.append(f"{path}: empty object")
        for k, v in value.items():
            _no_empty(v, f"{path}.{k}", errors)


def _check_identifier(v: Any, path: str, errors: list[str]) -> None:
    if not isinstance(v, dict):
        errors.append(f"{path}: Identifier must be an object")
        return
    if "system" in v and not (isinstance(v["system"], str) and _URI.match(v["system"])):
        errors.append(f"{path}.system: must be a uri")
    if "value" in v and not isinstance(v["value"], str):
        errors.append(f"{path}.value: must be a string")
    if "type" in v:
        _check_codeable(v["type"], f"{path}.type", errors)


def _check_coding(v: Any, path: str, errors: list[str]) -> None:
    if not isinstance(v, dict):
        errors.append(f"{path}: Coding must be an object")
        return
    if "system" in v and not (isinstance(v["system"], str) and _URI.match(v["system"])):
        errors.append(f"{path}.system: must be a uri")
    if "code" in v and not (isinstance(v["code"], str) and _CODE.match(v["code"])):
        errors.append(f"{path}.code: must be a code without surrounding whitespace")
    if "display" in v and not isinstance(v["display"], str):
        errors.append(f"{path}.display: must be a string")


def _check_codeable(v: Any, path: str, errors: list[str]) -> None:
    if not isinstance(v, dict):
        errors.append(f"{path}: CodeableConcept must be an object")
        return
    coding = v.get("coding")
    if coding is not None:
        if not isinstance(coding, list):
            errors.append(f"{path}.coding: must be an array")
        else:
            for i, c in enumerate(coding):
                _check_coding(c, f"{path}.coding[{i}]", errors)
    if not coding and "text" not in v:
        errors.append(f"{path}: needs coding or text")


def _check_reference(v: Any, path: str, errors: list[str]) -> None:
    if not isinstance(v, dict):
        errors.append(f"{path}: Reference must be an object")
        return
    if not any(k in v for k in ("reference", "identifier", "display", "extension")):
        errors.append(f"{path}: ref-1 needs reference, identifier or display")
    if "identifier" in v:
        _check_identifier(v["identifier"], f"{path}.identifier", errors)
    unknown = set(v) - {"reference", "type", "identifier", "display", "extension", "id"}
    if unknown:
        errors.append(f"{path}: unknown elements {sorted(unknown)}")


def _check_attachment(v: Any, path: str, errors: list[str]) -> None:
    if not isinstance(v, dict):
        errors.append(f"{path}: Attachment must be an object")
        return
    if "data" in v and "contentType" not in v:
        errors.append(f"{path}: att-1 data needs contentType")
    if "contentType" in v and not (isinstance(v["contentType"], str)
                                   and _MIME.match(v["contentType"])):
        errors.append(f"{path}.contentType: not a MIME type")
    if "data" in v:
        try:
            base64.b64decode(v["data"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            errors.append(f"{path}.data: not base64")
    if "creation" in v and not (isinstance(v["creation"], str) and _DATETIME.match(v["creation"])):
        errors.append(f"{path}.creation: not a dateTime")
    if "url" in v and not isinstance(v["url"], str):
        errors.append(f"{path}.url: must be a string")
    unknown = set(v) - {"contentType", "language", "data", "url", "size", "hash", "title",
                        "creation", "id", "extension"}
    if unknown:
        errors.append(f"{path}: unknown elements {sorted(unknown)}")


def validate_document_reference(resource: Any) -> list[str]:
    """Errors against the R4 DocumentReference rules (required elements, cardinalities,
    value sets of status/docStatus, data types, ele-1, ref-1, att-1); empty list = valid."""
    errors: list[str] = []
    if not isinstance(resource, dict):
        return ["resource: must be a JSON object"]
    if resource.get("resourceType") != "DocumentReference":
        errors.append("resourceType: must be 'DocumentReference'")
    _no_empty(resource, "DocumentReference", errors)
    for name in set(resource) - set(_DOCREF):
        errors.append(f"{name}: not an element of DocumentReference")
    for name, (minimum, maximum, kind) in _DOCREF.items():
        if name not in resource:
            if minimum:
                errors.append(f"{name}: required (min {minimum})")
            continue
        value = resource[name]
        if maximum == "*":
            if not isinstance(value, list):
                errors.append(f"{name}: must be an array (0..*)")
                continue
            if len(value) < minimum:
                errors.append(f"{name}: needs at least {minimum} item(s)")
            items = value
        else:
            if isinstance(value, list):
                errors.append(f"{name}: must be a single value (max 1)")
                continue
            items = [value]
        for i, item in enumerate(items):
            path = f"{name}[{i}]" if maximum == "*" else name
            if kind in ("string", "code") and not isinstance(item, str):
                errors.append(f"{path}: must be a string")
            elif kind == "id" and not (isinstance(item, str) and _ID.match(item)):
                errors.append(f"{path}: not a FHIR id")
            elif kind == "instant" and not (isinstance(item, str) and _INSTANT.match(item)):
                errors.append(f"{path}: not an instant with time zone")
            elif kind == "Identifier":
                _check_identifier(item, path, errors)
            elif kind == "CodeableConcept":
                _check_codeable(item, path, errors)
            elif kind == "Reference":
                _check_reference(item, path, errors)
            elif kind == "Content":
                if not isinstance(item, dict) or "attachment" not in item:
                    errors.append(f"{path}.attachment: required (1..1)")
                else:
                    _check_attachment(item["attachment"], f"{path}.attachment", errors)
                    if "format" in item:
                        _check_coding(item["format"], f"{path}.format", errors)
            elif kind == "Context" and isinstance(item, dict):
                for j, enc in enumerate(item.get("encounter", [])):
                    _check_reference(enc, f"{path}.encounter[{j}]", errors)
                period = item.get("period", {})
                for k in ("start", "end"):
                    if k in period and not _DATETIME.match(str(period[k])):
                        errors.append(f"{path}.period.{k}: not a dateTime")
    if resource.get("status") not in _STATUS:
        errors.append(f"status: must be one of {sorted(_STATUS)}")
    if "docStatus" in resource and resource["docStatus"] not in _DOC_STATUS:
        errors.append(f"docStatus: must be one of {sorted(_DOC_STATUS)}")
    return errors
