"""End to end: a dictated text with instructions -> pipeline.documents.sections.structure ->
draft -> signed by the physician (pipeline.review.signing calls tasks_from_draft) -> tasks,
referral and route -> the signed document e-mailed to a real SMTP server on loopback -> draft
delivered."""

from __future__ import annotations

import email
import socket

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select

from pipeline.core.db.core import DraftRow
from pipeline.core.db.schedule import Delivery, Referral, Task
from pipeline.core.records import DictationMeta, Note, to_jsonable
from pipeline.core.store import open_store
from pipeline.documents import sections
from pipeline.review import signing
from pipeline.review.users import create_user
from pipeline.secretary import route, tasks
from pipeline.secretary.schedule import add_availability
from pipeline.web.seed import add_draft

PASSWORD = "correct-horse-9"
# Written for this project (synthetic; no real patient).
DICTATION = (
    "History of present illness: The patient is a 61-year-old woman seen for follow-up of "
    "type 2 diabetes. Her glucose readings have improved. Examination: Blood pressure 128/76. "
    "Feet without ulcers. Assessment: Type 2 diabetes, improving. "
    "Plan: Continue metformin 500 mg twice daily. Please schedule a follow-up in six weeks. "
    "Order a hemoglobin A1c. Refer to ophthalmology for a diabetic eye exam. "
    "Please copy Dr. Patel at Riverside Cardiology."
)


class Inbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope.content)
        return "250 OK"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_dictation_to_tasks_to_delivered(settings):
    store = open_store(settings)
    doc = sections.structure(Note(text=DICTATION), DictationMeta(physician_id="dr-smith",
                                                                 mrn="MRN-E2E"), settings)
    assert sorted(i.kind for i in doc.instructions) == ["copy", "order", "refer", "schedule"]
    with store.session() as s:
        user = create_user(s, "smith", PASSWORD, "physician", ["dr-smith"])
        for wd in range(5):
            add_availability(s, "dr-smith", wd, "08:00", "16:00")
        rec = route.add_recipient(s, "Dr. Anil Patel", "referring_physician", "email",
                                  "patel@riverside.example",
                                  organization="Riverside Cardiology")
        draft_id = add_draft(s, text=DICTATION, segments=[], physician_id="dr-smith",
                             mrn="MRN-E2E", document_type=doc.document_type,
                             document=to_jsonable(doc), status="awaiting_signature")
    with store.session() as s:
        draft = s.get(DraftRow, draft_id)
        result = signing.sign_draft(s, settings, user, draft, PASSWORD)
        assert result.tasks == 4, result.problems
    with store.session() as s:
        made = {t.kind: t for t in s.scalars(select(Task).where(Task.draft_id == draft_id))}
        assert sorted(made) == ["copy", "order", "refer", "schedule"]
        assert made["schedule"].params["interval_days"] == 42
        assert len(made["schedule"].proposed_slots) == 3
        assert made["order"].status == "preauth_needed"
        assert s.get(Referral, made["refer"].referral_id).specialty.startswith("ophthalmology")
        delivery = s.get(Delivery, made["copy"].delivery_id)
        assert delivery.recipient_id == rec.id and delivery.status == "pending"
        outputs = s.get(DraftRow, draft_id).outputs
        ehr = route.add_recipient(s, "Hospital EHR", "department", "hl7",
                                  str(settings.data_path / "hl7-out"))
        hl7_id = route.route_draft(s, draft_id, recipient_id=ehr.id).id
    port = _port()
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        opts = route.RouteOptions.from_settings(settings)
        opts.smtp_host, opts.smtp_port, opts.smtp_security = "127.0.0.1", port, "none"
        report = route.deliver_due(settings, opts)
    finally:
        controller.stop()
    assert sorted(report.delivered) == sorted([delivery.id, hl7_id]), report
    (hl7_file,) = (settings.data_path / "hl7-out").iterdir()
    assert b"MDM^T02" in hl7_file.read_bytes()[:300]
    msg = email.message_from_bytes(inbox.messages[0])
    names = [p.get_filename() for p in msg.walk() if p.get_filename()]
    expected_suffix = ".pdf" if outputs.get("pdf") else ".docx" if outputs.get("docx") else ".txt"
    assert names and names[0].endswith(expected_suffix)
    with store.session() as s:
        assert s.get(DraftRow, draft_id).status == "delivered"
        assert s.get(Task, made["copy"].id).status == "done"


# What each expected-task parameter of samples/*.tasks.json is called in our Instruction params.
_PARAM_NAMES = {"in_days": "interval_days", "what": "test", "site": "body_part",
                "organisation": "organization"}


@pytest.mark.slow
def test_sample_audio_dictation_produces_expected_tasks(settings, samples_dir):
    """samples/synthetic_medical/instructions_short.flac through the real pipeline
    (tiny.en, normalize, structure, render, enqueue) -> tasks matching its .tasks.json."""
    import json

    from pipeline.ingest.sidecar import parse_sidecar
    from pipeline.service.process import process_file

    base = samples_dir / "synthetic_medical" / "instructions_short"
    expected = json.loads(base.with_suffix(".tasks.json").read_text())
    meta = parse_sidecar(base.with_suffix(".json").read_text(), name="instructions_short.json")
    settings = settings.model_copy(update={"physicians": ["dr-lindqvist", "dr-patel"]})
    store = open_store(settings)
    with store.session() as s:
        for wd in range(5):
            add_availability(s, "dr-lindqvist", wd, "08:00", "16:00")
        patel = route.add_recipient(s, "Dr. Anil Patel", "referring_physician", "email",
                                    "patel@riverside.example",
                                    organization="Riverside Cardiology")
    result = process_file(base.with_suffix(".flac"), settings, meta)
    with store.session() as s:
        draft = s.get(DraftRow, result.draft.id)
        made = tasks.tasks_from_draft(s, draft, settings=settings)
        assert [t.kind for t in made] == [e["kind"] for e in expected]
        for task, exp in zip(made, expected, strict=True):
            params = {_PARAM_NAMES.get(k, k): v for k, v in exp["params"].items()}
            if task.kind == "schedule":
                assert task.params["interval_days"] == params["interval_days"]
                assert len(task.proposed_slots) == 3
            elif task.kind == "order":
                assert task.params["test"] == params["test"]
                assert task.params["body_part"] == params["body_part"]
                assert task.status == "preauth_needed"
            elif task.kind == "refer":
                ref = s.get(Referral, task.referral_id)
                assert ref.specialty == params["to"] and ref.status == "requested"
            elif task.kind == "copy":
                delivery = s.get(Delivery, task.delivery_id)
                assert delivery.recipient_id == patel.id  # "Dr. Patel" found in the directory
            else:
                assert task.status == "open" and task.title
