"""FHIR R4 DocumentReference: built for every draft and checked by a validator of the
resource's required elements, cardinalities and value sets."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, date, datetime
from pathlib import Path

import docx
import pytest

from pipeline.core.records import AudioInfo, Dictation, DictationMeta, Note
from pipeline.documents.fhir import (
    DOCX_MIME,
    MRN_SYSTEM,
    build_document_reference,
    validate_document_reference,
)
from pipeline.documents.render import render_outputs
from pipeline.documents.sections import structure
from pipeline.documents.templates import DOCUMENT_TYPES, get_template

CREATED = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def _resource(**overrides):
    args = dict(
        draft_id="abc123", loinc="11504-8", loinc_display="Surgical operation note",
        title="Operative Report", text="PROCEDURE: Repair.\n", docx_bytes=b"PK\x03\x04docx",
        docx_name="document.docx", patient_name="John Smith", mrn="12345",
        physician_id="dr-smith", physician_name="Dr. Smith", date_of_service=date(2026, 11, 20),
        encounter_id="enc-1", created=CREATED, final=False,
    )
    args.update(overrides)
    return build_document_reference(**args)


def test_built_resource_is_valid() -> None:
    resource = _resource()
    assert validate_document_reference(resource) == []
    assert resource["status"] == "current" and resource["docStatus"] == "preliminary"
    assert resource["type"]["coding"][0] == {
        "system": "http://loinc.org", "code": "11504-8", "display": "Surgical operation note"}
    assert resource["subject"]["identifier"]["system"] == MRN_SYSTEM
    assert resource["subject"]["identifier"]["value"] == "12345"
    assert resource["author"][0]["display"] == "Dr. Smith"
    assert resource["date"] == "2026-11-26T10:00:00+00:00"
    text_att, docx_att = (c["attachment"] for c in resource["content"])
    assert text_att["contentType"] == "text/plain"
    assert base64.b64decode(text_att["data"]).decode() == "PROCEDURE: Repair.\n"
    assert docx_att["contentType"] == DOCX_MIME
    assert base64.b64decode(docx_att["data"]) == b"PK\x03\x04docx"


def test_minimal_resource_without_patient_data_is_valid() -> None:
    resource = _resource(patient_name=None, mrn=None, physician_id=None, physician_name=None,
                         date_of_service=None, encounter_id=None, docx_bytes=None, final=True)
    assert validate_document_reference(resource) == []
    assert "subject" not in resource and "author" not in resource
    assert resource["docStatus"] == "final"


def _broken(change) -> list[str]:
    resource = copy.deepcopy(_resource())
    change(resource)
    return validate_document_reference(resource)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda r: r.pop("status"), "status: required"),
        (lambda r: r.update(status="draft"), "status: must be one of"),
        (lambda r: r.update(docStatus="signed"), "docStatus: must be one of"),
        (lambda r: r.pop("content"), "content: required"),
        (lambda r: r.update(content=[]), "content"),
        (lambda r: r["content"][0].pop("attachment"), "attachment: required"),
        (lambda r: r["content"][0]["attachment"].update(data="not base64!"), "not base64"),
        (lambda r: r["content"][0]["attachment"].pop("contentType"), "att-1"),
        (lambda r: r.update(date="2026-11-26"), "date: not an instant"),
        (lambda r: r.update(date="2026-11-26T10:00:00"), "date: not an instant"),
        (lambda r: r.update(subject=[r["subject"]]), "subject: must be a single value"),
        (lambda r: r.update(author=r["author"][0]), "author: must be an array"),
        (lambda r: r.update(description=""), "empty string"),
        (lambda r: r.update(category=[]), "empty array"),
        (lambda r: r.update(subject={"type": "Patient"}), "ref-1"),
        (lambda r: r.update(resourceType="Patient"), "resourceType"),
        (lambda r: r.update(colour="blue"), "colour: not an element"),
        (lambda r: r["type"]["coding"][0].update(code=" 11504-8"), "code"),
        (lambda r: r.update(id="has spaces"), "id: not a FHIR id"),
    ],
)
def test_validator_catches_violations(change, fragment: str) -> None:
    errors = _broken(change)
    assert errors, fragment
    assert any(fragment in e for e in errors), errors


@pytest.mark.parametrize("doc_type", DOCUMENT_TYPES)
def test_every_draft_gets_a_valid_document_reference(doc_type: str, settings, tmp_path) -> None:
    spec = get_template(doc_type, settings)
    meta = DictationMeta(physician_id="dr-smith", mrn="998877", patient_name="Ann Lee",
                         date_of_service=date(2026, 11, 3))
    dictation = Dictation(
        id="d", audio=AudioInfo(path=Path("a.wav"), sha256="0" * 64, size_bytes=1,
                                format="wav", codec="pcm", sample_rate=16000, channels=1,
                                duration_s=1.0),
        meta=meta,
    )
    document = structure(Note(text="IMPRESSION: Stable & well <ok>."),
                         DictationMeta(**{**meta.__dict__, "document_type": doc_type}), settings)
    out = render_outputs(document, dictation, "draft-x", tmp_path / doc_type, settings)
    resource = json.loads(out["fhir"].read_text(encoding="utf-8"))
    assert validate_document_reference(resource) == []
    assert resource["type"]["coding"][0]["code"] == spec.loinc
    assert resource["subject"]["identifier"]["value"] == "998877"
    assert resource["context"]["period"]["start"] == "2026-11-03"
    text = base64.b64decode(resource["content"][0]["attachment"]["data"]).decode("utf-8")
    assert text == out["txt"].read_text(encoding="utf-8")
    docx_bytes = base64.b64decode(resource["content"][1]["attachment"]["data"])
    assert docx_bytes == out["docx"].read_bytes()
    assert docx.Document(str(out["docx"]))  # the embedded file is the real document
