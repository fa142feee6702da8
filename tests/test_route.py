"""Routing signed documents: real SMTP server on loopback (aiosmtpd, STARTTLS + login),
failure and retry with backoff, files for print / PDF folder / HL7 / FHIR, FHIR over HTTP,
only signed drafts leave, draft becomes delivered when all its routes are."""

from __future__ import annotations

import email
import http.server
import json
import socket
import ssl
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from sqlalchemy import select

from pipeline.core import audit
from pipeline.core.db.core import AuditEvent, DictationRow, DraftRow
from pipeline.core.db.schedule import Delivery
from pipeline.core.errors import ConflictError, PermissionDeniedError
from pipeline.core.store import open_store
from pipeline.secretary import route

NOW = datetime(2027, 4, 5, 14, 0, tzinfo=UTC)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Inbox:
    """aiosmtpd handler keeping every received message."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True)
    return cert, key


def start_smtp(port: int, tls_files: tuple[Path, Path]) -> tuple[Controller, Inbox]:
    cert, key = tls_files
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == b"clinic" \
            and auth_data.password == b"s3cret"
        return AuthResult(success=ok)

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, tls_context=ctx,
                            require_starttls=True, authenticator=authenticator,
                            auth_required=True)
    controller.start()
    return controller, inbox


@pytest.fixture
def store(settings):
    return open_store(settings)


def make_draft(session, tmp_path: Path, *, status: str = "signed") -> DraftRow:
    did = uuid.uuid4().hex
    doc = tmp_path / f"{did}.txt"
    doc.write_text("Signed consultation letter.\nSecond line | with ^ HL7 specials.\n")
    session.add(DictationRow(id=did, sha256=did * 2, physician_id="dr-smith"))
    draft = DraftRow(id=uuid.uuid4().hex, dictation_id=did, physician_id="dr-smith",
                     document_type="consultation_letter", status=status, audio_sha256=did * 2,
                     text=doc.read_text(), mrn="MRN-R1", outputs={"txt": str(doc)})
    session.add(draft)
    session.flush()
    return draft


def options(port: int, cert: Path, **kw) -> route.RouteOptions:
    return route.RouteOptions(smtp_host="localhost", smtp_port=port, smtp_security="starttls",
                              smtp_user="clinic", smtp_password="s3cret",
                              smtp_from="letters@clinic.example", smtp_cafile=str(cert),
                              smtp_timeout_s=5, backoff_base_s=60, max_attempts=3, **kw)


def test_email_delivery_over_starttls(settings, store, tmp_path, tls_files):
    port = free_port()
    controller, inbox = start_smtp(port, tls_files)
    try:
        with store.session() as s:
            draft = make_draft(s, tmp_path)
            rec = route.add_recipient(s, "Dr. Anil Patel", "referring_physician", "email",
                                      "patel@riverside.example")
            delivery = route.route_draft(s, draft.id, recipient_id=rec.id)
            did, draft_id = delivery.id, draft.id
        report = route.deliver_due(settings, options(port, tls_files[0]), now=NOW)
    finally:
        controller.stop()
    assert report.delivered == [did]
    (mail_from, rcpts, raw) = inbox.messages[0]
    assert mail_from == "letters@clinic.example" and rcpts == ["patel@riverside.example"]
    msg = email.message_from_bytes(raw)
    assert "MRN-R1" not in msg["Subject"] and draft_id[:8] in msg["Subject"]
    attachments = [p for p in msg.walk() if p.get_filename()]
    assert attachments[0].get_payload(decode=True).startswith(b"Signed consultation letter.")
    with store.session() as s:
        d = s.get(Delivery, did)
        assert d.status == "delivered" and d.target and d.attempts == 1
        assert s.get(DraftRow, draft_id).status == "delivered"
        actions = [e.action for e in s.scalars(select(AuditEvent))]
        assert "document_delivered" in actions and "draft_delivered" in actions
        assert audit.verify(s).ok


def test_email_failure_retry_then_delivered(settings, store, tmp_path, tls_files):
    """Server down: retried with backoff (not before it is due); server up: delivered."""
    port = free_port()
    with store.session() as s:
        draft = make_draft(s, tmp_path)
        rec = route.add_recipient(s, "Lab", "department", "email", "lab@clinic.example")
        did = route.route_draft(s, draft.id, recipient_id=rec.id).id
    opts = options(port, tls_files[0])
    first = route.deliver_due(settings, opts, now=NOW)
    assert first.retrying == [did]
    with store.session() as s:
        d = s.get(Delivery, did)
        assert d.status == "retry" and d.attempts == 1 and "Connection" in d.last_error
        assert d.next_attempt_at.replace(tzinfo=UTC) == NOW + timedelta(seconds=60)
    # not due yet: nothing happens
    early = route.deliver_due(settings, opts, now=NOW + timedelta(seconds=30))
    assert early.retrying == [] and early.delivered == []
    second = route.deliver_due(settings, opts, now=NOW + timedelta(seconds=61))
    assert second.retrying == [did]
    with store.session() as s:
        d = s.get(Delivery, did)
        assert d.attempts == 2
        assert d.next_attempt_at.replace(tzinfo=UTC) == NOW + timedelta(seconds=61 + 120)
    controller, inbox = start_smtp(port, tls_files)
    try:
        third = route.deliver_due(settings, opts, now=NOW + timedelta(seconds=200))
    finally:
        controller.stop()
    assert third.delivered == [did] and len(inbox.messages) == 1
    with store.session() as s:
        log = route.attempts_for(s, did)
        assert [a.outcome for a in log] == ["error", "error", "delivered"]


def test_failed_after_max_attempts_is_kept_and_retryable(settings, store, tmp_path, tls_files):
    port = free_port()
    with store.session() as s:
        draft = make_draft(s, tmp_path)
        rec = route.add_recipient(s, "Lab", "department", "email", "lab@clinic.example")
        did = route.route_draft(s, draft.id, recipient_id=rec.id).id
    opts = options(port, tls_files[0])
    t = NOW
    for _ in range(3):
        route.deliver_due(settings, opts, now=t)
        t += timedelta(hours=2)
    with store.session() as s:
        d = s.get(Delivery, did)
        assert d.status == "failed" and d.attempts == 3
        assert s.get(DraftRow, draft.id).status == "signed"
        assert route.deliveries_for(s, statuses=("failed",))[0].id == did
    assert route.deliver_due(settings, opts, now=t + timedelta(days=1)).failed == []
    with store.session() as s:
        route.retry(s, did, actor="alice")
    controller, _inbox = start_smtp(port, tls_files)
    try:
        assert route.deliver_due(settings, opts, now=t).delivered == [did]
    finally:
        controller.stop()


@pytest.mark.slow
def test_wrong_smtp_password_is_a_failure(settings, store, tmp_path, tls_files):
    port = free_port()
    controller, inbox = start_smtp(port, tls_files)
    try:
        with store.session() as s:
            draft = make_draft(s, tmp_path)
            rec = route.add_recipient(s, "Lab", "department", "email", "lab@clinic.example")
            did = route.route_draft(s, draft.id, recipient_id=rec.id).id
        opts = options(port, tls_files[0])
        opts.smtp_password = "wrong"
        report = route.deliver_due(settings, opts, now=NOW)
    finally:
        controller.stop()
    assert report.retrying == [did] and inbox.messages == []


def test_unsigned_draft_does_not_leave(settings, store, tmp_path):
    with store.session() as s:
        draft = make_draft(s, tmp_path, status="in_review")
        rec = route.add_recipient(s, "Records", "department", "print")
        did = route.route_draft(s, draft.id, recipient_id=rec.id).id
        with pytest.raises(PermissionDeniedError, match="only signed documents"):
            route.check_can_leave(s, draft.id)
    report = route.deliver_due(settings, now=NOW)
    assert report.waiting_for_signature == [did] and report.delivered == []
    assert not (settings.data_path / "route" / "print").exists()
    with store.session() as s:
        s.get(DraftRow, draft.id).status = "signed"
    assert route.deliver_due(settings, now=NOW).delivered == [did]


def test_file_channels(settings, store, tmp_path):
    """print queue, PDF folder, HL7 MDM and FHIR folder; the draft is delivered after all."""
    out = tmp_path / "out"
    with store.session() as s:
        draft = make_draft(s, tmp_path)
        recs = [
            route.add_recipient(s, "Front desk printer", "department", "print"),
            route.add_recipient(s, "Riverside practice", "practice", "pdf_folder",
                                str(out / "riverside")),
            route.add_recipient(s, "Hospital EHR", "department", "hl7", str(out / "hl7")),
            route.add_recipient(s, "Regional HIE", "practice", "fhir_folder", str(out / "fhir")),
        ]
        ids = [route.route_draft(s, draft.id, recipient_id=r.id).id for r in recs]
        # idempotent per recipient
        assert route.route_draft(s, draft.id, recipient_id=recs[0].id).id == ids[0]
        draft_id = draft.id
    report = route.deliver_due(settings, now=NOW)
    assert sorted(report.delivered) == sorted(ids)
    assert len(list((settings.data_path / "route" / "print").iterdir())) == 1
    assert len(list((out / "riverside").iterdir())) == 1
    (hl7_file,) = (out / "hl7").iterdir()
    segs = hl7_file.read_bytes().decode().split("\r")
    assert segs[0].startswith("MSH|^~\\&|") and "MDM^T02" in segs[0]
    assert segs[2] == "PID|1||MRN-R1"
    assert any("\\F\\ with \\S\\ HL7" in seg for seg in segs if seg.startswith("OBX"))
    (fhir_file,) = (out / "fhir").iterdir()
    assert json.loads(fhir_file.read_text())["resourceType"] == "DocumentReference"
    assert not [p for p in out.rglob(".*.tmp")]
    with store.session() as s:
        assert s.get(DraftRow, draft_id).status == "delivered"


def test_fhir_http(settings, store, tmp_path):
    received: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(201)
            self.send_header("Location", "/DocumentReference/1")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with store.session() as s:
            draft = make_draft(s, tmp_path)
            rec = route.add_recipient(s, "HIE", "practice", "fhir_http",
                                      f"http://127.0.0.1:{server.server_port}/fhir/DocumentReference")
            did = route.route_draft(s, draft.id, recipient_id=rec.id).id
        assert route.deliver_due(settings, now=NOW).delivered == [did]
    finally:
        server.shutdown()
    assert json.loads(received[0])["resourceType"] == "DocumentReference"


def test_directory_validation_and_matching(store):
    with store.session() as s:
        with pytest.raises(ConflictError, match="expected name@domain"):
            route.add_recipient(s, "X", "department", "email", "not-an-address")
        with pytest.raises(ConflictError, match="channel 'fax'"):
            route.add_recipient(s, "X", "department", "fax", "123")
        a = route.add_recipient(s, "Dr. Anil Patel", "referring_physician", "email",
                                "a@x.example", organization="Riverside Cardiology")
        route.add_recipient(s, "Dr. Priya Patel", "referring_physician", "email",
                            "p@y.example", organization="Lakeside Clinic")
        assert route.find_recipient(s, "Dr. Patel") is None  # ambiguous
        assert route.find_recipient(s, "Dr. Patel", "Riverside Cardiology").id == a.id
        assert route.find_recipient(s, "doctor anil patel").id == a.id
        assert route.find_recipient(s, "Dr. Lee") is None


def test_plain_smtp_refused_to_remote_server(settings, store, tmp_path):
    """Without TLS, documents go only to a mail server on this machine."""
    with store.session() as s:
        draft = make_draft(s, tmp_path)
        rec = route.add_recipient(s, "Lab", "department", "email", "lab@clinic.example")
        did = route.route_draft(s, draft.id, recipient_id=rec.id).id
    opts = route.RouteOptions(smtp_host="mail.example.org", smtp_security="none")
    assert route.deliver_due(settings, opts, now=NOW).retrying == [did]
    with store.session() as s:
        assert "without TLS" in s.get(Delivery, did).last_error


def test_service_delivers_signed_documents_on_its_own(settings, store, tmp_path):
    """The running service sends due deliveries without anyone pressing "send"."""
    from pipeline.service.supervisor import Service

    settings.route_interval_s = 0.2
    with store.session() as s:
        draft = make_draft(s, tmp_path)
        rec = route.add_recipient(s, "Riverside practice", "practice", "pdf_folder",
                                  str(tmp_path / "riverside"))
        route.route_draft(s, draft.id, recipient_id=rec.id)
        draft_id = draft.id
    service = Service(settings)
    loop = threading.Thread(target=service._deliver_loop, daemon=True)
    loop.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with store.session() as s:
                if s.get(DraftRow, draft_id).status == "delivered":
                    break
            time.sleep(0.2)
    finally:
        service.stop()
        loop.join(30)
    assert not loop.is_alive()  # no delivery round can still be under way: exactly one file
    assert len(list((tmp_path / "riverside").iterdir())) == 1
    with store.session() as s:
        assert s.get(DraftRow, draft_id).status == "delivered"
