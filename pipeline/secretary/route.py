"""Routing signed documents to their recipients.

The directory (``sched_recipients``) says how each recipient receives documents:

- ``print``: a copy into the print-queue folder (``RouteOptions.print_dir``);
- ``pdf_folder``: a copy into the recipient's folder (``address``);
- ``email``: secure e-mail through the configured SMTP server (STARTTLS or SSL), the
  document attached; subject and body carry no patient data;
- ``hl7``: an HL7 v2 MDM^T02 message into an interface folder (``address`` or
  ``RouteOptions.hl7_dir``), written atomically (temporary name, then rename): the one the
  renderer made for the signed draft, else a minimal one built here;
- ``fhir_folder``: a FHIR R4 DocumentReference JSON into a folder;
- ``fhir_http``: the same JSON POSTed to an HTTP endpoint (``address``).

Only drafts with status ``signed`` or ``delivered`` leave. Every attempt is logged
(``sched_delivery_attempts``) and audited; a failure is retried with exponential backoff
and, after ``max_attempts``, shown as ``failed`` (never dropped; ``retry`` re-queues it).
When every route of a draft is delivered the draft becomes ``delivered``.

Network I/O happens outside database transactions: a delivery is claimed (status
``sending``) in one short transaction, sent, and its outcome written in another.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import smtplib
import socket
import ssl
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pipeline.core import audit, files
from pipeline.core.db.core import DraftRow
from pipeline.core.db.schedule import Delivery, DeliveryAttempt, Recipient, Task
from pipeline.core.errors import ConflictError, DeliveryError, NotFoundError, PermissionDeniedError
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.secretary import task_states
from pipeline.secretary.schedule.timeutil import as_utc

__all__ = [
    "CHANNELS",
    "RECIPIENT_KINDS",
    "LEAVING_STATUSES",
    "RouteOptions",
    "add_recipient",
    "approve_recipient",
    "outside_practice",
    "find_recipient",
    "route_draft",
    "assign_recipient",
    "deliver_due",
    "DeliveryReport",
    "retry",
    "deliveries_for",
    "attempts_for",
    "check_can_leave",
    "explain_failure",
]

log = logging.getLogger(__name__)

CHANNELS = ("print", "pdf_folder", "email", "hl7", "fhir_folder", "fhir_http")
RECIPIENT_KINDS = ("department", "referring_physician", "practice")
#: draft statuses that may leave the practice
LEAVING_STATUSES = ("signed", "delivered")


@dataclass
class RouteOptions:
    """Delivery configuration. ``from_settings`` reads the ``route_*`` / ``smtp_*`` settings
    fields when the settings class has them (requested from the lead), else these defaults."""

    print_dir: Path | None = None  # default <data_dir>/route/print
    hl7_dir: Path | None = None  # default <data_dir>/route/hl7
    fhir_dir: Path | None = None  # default <data_dir>/route/fhir
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_security: str = "starttls"  # starttls | ssl | none
    smtp_user: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "documents@localhost"
    smtp_timeout_s: float = 20.0
    smtp_verify_tls: bool = True
    smtp_cafile: str | None = None  # extra CA bundle for a practice's own mail server
    http_timeout_s: float = 20.0
    max_attempts: int = 5
    backoff_base_s: float = 60.0
    backoff_max_s: float = 3600.0
    stale_sending_s: float = 900.0  # a "sending" row older than this was interrupted
    practice_name: str = "General Practice"
    sending_facility: str = "DICTATION"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> RouteOptions:
        """Options from settings fields with the same names (``route_print_dir`` etc.)."""
        opts = cls(practice_name=getattr(settings, "practice_name", cls.practice_name))
        for name in ("smtp_host", "smtp_port", "smtp_security", "smtp_user", "smtp_password",
                     "smtp_from", "smtp_timeout_s", "smtp_verify_tls", "smtp_cafile"):
            value = getattr(settings, name, None)
            if value is not None:
                setattr(opts, name, value)
        for name in ("print_dir", "hl7_dir", "fhir_dir", "max_attempts", "backoff_base_s",
                     "backoff_max_s"):
            value = getattr(settings, f"route_{name}", None)
            if value is not None:
                setattr(opts, name, value)
        data = settings.data_path / "route"
        opts.print_dir = Path(opts.print_dir) if opts.print_dir else data / "print"
        opts.hl7_dir = Path(opts.hl7_dir) if opts.hl7_dir else data / "hl7"
        opts.fhir_dir = Path(opts.fhir_dir) if opts.fhir_dir else data / "fhir"
        return opts


# --- directory --------------------------------------------------------------------------

_LOOPBACK = ("localhost", "127.0.0.1", "::1")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def outside_practice(address: str, practice_domains: Sequence[str]) -> bool:
    """Whether the e-mail ``address`` is outside the practice's own domains (sub-domains
    count as inside)."""
    domain = address.rpartition("@")[2].strip().lower()
    return not any(domain == d or domain.endswith("." + d)
                   for d in (p.strip().lower().lstrip("@") for p in practice_domains) if d)


def add_recipient(session: Session, name: str, kind: str, channel: str, address: str = "", *,
                  organization: str = "", specialty: str | None = None,
                  actor: str = "system", practice_domains: Sequence[str] | None = None,
                  approver: str | None = None) -> Recipient:
    """Add a recipient to the directory (validating channel and address).

    With ``practice_domains`` (settings.practice_email_domains), an e-mail address outside
    them waits for an administrator's approval (``approve_recipient``) before anything is
    delivered to it, unless ``approver`` (an administrator adding it) approves it now.
    """
    if kind not in RECIPIENT_KINDS:
        raise ConflictError(f"recipient kind {kind!r} arrived; expected one of "
                            f"{', '.join(RECIPIENT_KINDS)}")
    if channel not in CHANNELS:
        raise ConflictError(f"channel {channel!r} arrived; expected one of {', '.join(CHANNELS)}")
    if channel == "email" and not _EMAIL.match(address):
        raise ConflictError(f"e-mail address {address!r} arrived; expected name@domain")
    if channel == "fhir_http" and not address.startswith(("http://", "https://")):
        raise ConflictError(f"FHIR endpoint {address!r} arrived; expected an http(s) URL")
    if channel == "fhir_http" and address.startswith("http://") \
            and urlsplit(address).hostname not in _LOOPBACK:
        # like SMTP without TLS: patient documents must not cross the network in clear text
        raise ConflictError(f"FHIR endpoint {address!r} arrived; expected an https URL "
                            "(plain http only to this machine)")
    if channel == "pdf_folder" and not address:
        raise ConflictError("a pdf_folder recipient arrived without a folder")
    needs_approval = (channel == "email" and practice_domains is not None
                      and outside_practice(address, practice_domains))
    approved = not needs_approval or approver is not None
    rec = Recipient(name=name.strip(), kind=kind, channel=channel, address=address.strip(),
                    organization=organization.strip(), specialty=specialty, approved=approved)
    if needs_approval and approver is not None:
        rec.approved_by, rec.approved_at = approver, datetime.now(UTC)
    session.add(rec)
    session.flush()
    audit.record(session, actor=actor, action="recipient_added", object_type="recipient",
                 object_id=str(rec.id), detail={"channel": channel, "kind": kind,
                                                "outside_practice": needs_approval,
                                                "approved": approved})
    return rec


def approve_recipient(session: Session, recipient_id: int, *, actor: str) -> Recipient:
    """An administrator approves a recipient outside the practice (audited)."""
    rec = session.get(Recipient, recipient_id)
    if rec is None:
        raise NotFoundError(f"recipient {recipient_id} arrived; expected a known recipient")
    if not rec.approved:
        rec.approved, rec.approved_by, rec.approved_at = True, actor, datetime.now(UTC)
        audit.record(session, actor=actor, action="recipient_approved", object_type="recipient",
                     object_id=str(rec.id), detail={"channel": rec.channel})
        session.flush()
    return rec


def _norm_name(value: str) -> str:
    value = re.sub(r"\b(?:dr|doctor|prof|mr|mrs|ms)\b\.?", " ", value.lower())
    return " ".join(re.sub(r"[^\w\s]", " ", value).split())


def find_recipient(session: Session, name: str, organization: str | None = None
                   ) -> Recipient | None:
    """The active recipient matching ``name`` (fuzzy, titles ignored; "Dr. Patel" matches
    "Dr. Anil Patel"); ``organization`` breaks ties. None when nothing matches well
    (score < 85) or two recipients match equally well (the secretary picks)."""
    from rapidfuzz import fuzz

    target = _norm_name(name)
    if not target:
        return None
    scored: list[tuple[float, int, Recipient]] = []
    for rec in session.scalars(select(Recipient).where(Recipient.active)):
        score = float(fuzz.token_set_ratio(target, _norm_name(rec.name)))
        if organization and rec.organization and fuzz.token_set_ratio(
                organization.lower(), rec.organization.lower()) >= 80:
            score += 5
        scored.append((score, rec.id, rec))
    scored.sort(key=lambda x: (-x[0], x[1]))
    if not scored or scored[0][0] < 85:
        return None
    if len(scored) > 1 and scored[1][0] == scored[0][0]:
        return None
    return scored[0][2]


# --- routes -----------------------------------------------------------------------------


def route_draft(session: Session, draft_id: str, *, recipient_id: int | None = None,
                requested_name: str = "", actor: str = "system") -> Delivery:
    """Add a route for the draft (idempotent per draft and recipient). Without a recipient
    the route waits in ``needs_recipient`` until one is assigned."""
    if session.get(DraftRow, draft_id) is None:
        raise NotFoundError(f"draft {draft_id} arrived; expected a known draft")
    rec = None
    if recipient_id is not None:
        rec = session.get(Recipient, recipient_id)
        if rec is None:
            raise NotFoundError(f"recipient {recipient_id} arrived; expected a known recipient")
        existing = session.scalars(select(Delivery).where(
            Delivery.draft_id == draft_id, Delivery.recipient_id == recipient_id)).first()
        if existing is not None:
            return existing
    delivery = Delivery(draft_id=draft_id, recipient_id=recipient_id,
                        requested_name=(requested_name or (rec.name if rec else ""))[:300],
                        channel=rec.channel if rec else None,
                        status="pending" if rec else "needs_recipient", created_by=actor)
    session.add(delivery)
    session.flush()
    audit.record(session, actor=actor, action="route_added", object_type="draft",
                 object_id=draft_id,
                 detail={"delivery_id": delivery.id, "recipient_id": recipient_id})
    return delivery


def assign_recipient(session: Session, delivery_id: int, recipient_id: int, *,
                     actor: str) -> Delivery:
    """Give a waiting route its recipient; it becomes pending."""
    delivery = _get(session, delivery_id)
    rec = session.get(Recipient, recipient_id)
    if rec is None:
        raise NotFoundError(f"recipient {recipient_id} arrived; expected a known recipient")
    if delivery.status == "delivered":
        raise ConflictError(f"delivery {delivery.id} was already delivered")
    delivery.recipient_id, delivery.channel = rec.id, rec.channel
    delivery.status, delivery.next_attempt_at = "pending", None
    audit.record(session, actor=actor, action="route_assigned", object_type="draft",
                 object_id=delivery.draft_id,
                 detail={"delivery_id": delivery.id, "recipient_id": rec.id})
    session.flush()
    return delivery


def _get(session: Session, delivery_id: int) -> Delivery:
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        raise NotFoundError(f"delivery {delivery_id} arrived; expected a known delivery")
    return delivery


def retry(session: Session, delivery_id: int, *, actor: str) -> Delivery:
    """Re-queue a failed delivery now (attempt counter reset)."""
    delivery = _get(session, delivery_id)
    if delivery.status not in ("failed", "retry"):
        raise ConflictError(f"delivery {delivery.id} is {delivery.status}; only failed or "
                            "waiting deliveries can be retried")
    delivery.status, delivery.attempts, delivery.next_attempt_at = "pending", 0, None
    audit.record(session, actor=actor, action="delivery_retry", object_type="draft",
                 object_id=delivery.draft_id, detail={"delivery_id": delivery.id})
    session.flush()
    return delivery


def deliveries_for(session: Session, draft_id: str | None = None, *,
                   statuses: tuple[str, ...] | None = None) -> list[Delivery]:
    """Deliveries (of one draft, or all), newest first."""
    stmt = select(Delivery).order_by(Delivery.id.desc())
    if draft_id is not None:
        stmt = stmt.where(Delivery.draft_id == draft_id)
    if statuses:
        stmt = stmt.where(Delivery.status.in_(statuses))
    return list(session.scalars(stmt))


def attempts_for(session: Session, delivery_id: int) -> list[DeliveryAttempt]:
    """The delivery log of one delivery, oldest first."""
    return list(session.scalars(select(DeliveryAttempt).where(
        DeliveryAttempt.delivery_id == delivery_id).order_by(DeliveryAttempt.id)))


# --- sending ----------------------------------------------------------------------------


@dataclass
class _Job:
    delivery_id: int
    draft_id: str
    channel: str
    address: str
    recipient_name: str
    attempt: int
    document: Path | None
    outputs: dict[str, str]
    mrn: str | None
    document_type: str
    text: str
    #: opens the draft's files (encrypted at rest): set by ``deliver_due``
    settings: Settings | None = None

    def read(self, path: Path) -> bytes:
        """The plain bytes of one of the draft's stored files (through ``core.files``)."""
        return files.read_bytes(path, self.settings)


@dataclass
class DeliveryReport:
    """What one ``deliver_due`` run did (delivery ids)."""

    delivered: list[int] = field(default_factory=list)
    retrying: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    waiting_for_signature: list[int] = field(default_factory=list)
    waiting_for_approval: list[int] = field(default_factory=list)


def _document_path(draft: DraftRow) -> Path | None:
    outputs = draft.outputs or {}
    for key in ("pdf", "docx"):
        value = outputs.get(key) or (draft.docx_path if key == "docx" else None)
        if value and Path(value).is_file():
            return Path(value)
    txt = outputs.get("txt")
    return Path(txt) if txt and Path(txt).is_file() else None


def _atomic_write(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / name
    tmp = folder / f".{name}.{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(data)
    tmp.replace(final)
    return final


def _hl7_escape(value: str) -> str:
    return (value.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
            .replace("&", "\\T\\").replace("~", "\\R\\"))


def _mdm(job: _Job, options: RouteOptions) -> bytes:
    """A minimal HL7 v2.5 MDM^T02 with the signed text as OBX TX lines."""
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    control = f"D{job.delivery_id}A{job.attempt}"
    segs = [
        f"MSH|^~\\&|{options.sending_facility}|{_hl7_escape(options.practice_name)}|"
        f"{_hl7_escape(job.recipient_name)}||{now}||MDM^T02^MDM_T02|{control}|P|2.5",
        f"EVN|T02|{now}",
        f"PID|1||{_hl7_escape(job.mrn or '')}",
        "PV1|1|O",
        f"TXA|1|{_hl7_escape(job.document_type)}|TX|{now}||||||||{job.draft_id}||||||AU",
    ]
    for i, line in enumerate(job.text.splitlines() or [""], start=1):
        segs.append(f"OBX|{i}|TX|{_hl7_escape(job.document_type)}||{_hl7_escape(line)}")
    return ("\r".join(segs) + "\r").encode("utf-8")


def _fhir_document(job: _Job) -> bytes:
    if job.outputs.get("fhir") and Path(job.outputs["fhir"]).is_file():
        return job.read(Path(job.outputs["fhir"]))
    doc: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "id": job.draft_id,
        "status": "current",
        "docStatus": "final",
        "type": {"text": job.document_type},
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "content": [{"attachment": {
            "contentType": "text/plain; charset=utf-8",
            "data": base64.b64encode(job.text.encode("utf-8")).decode("ascii")}}],
    }
    if job.mrn:
        doc["subject"] = {"identifier": {"value": job.mrn}}
    return json.dumps(doc, indent=2).encode("utf-8")


def _send_email(job: _Job, options: RouteOptions) -> str:
    msg = EmailMessage()
    msg["From"] = options.smtp_from
    msg["To"] = job.address
    msg["Subject"] = f"{options.practice_name}: signed document {job.draft_id[:8]}"
    msg_id = make_msgid(domain=options.smtp_from.rpartition("@")[2] or "localhost")
    msg["Message-ID"] = msg_id
    msg.set_content(
        f"Please find attached a signed {job.document_type.replace('_', ' ')} from "
        f"{options.practice_name} (reference {job.draft_id}).\n\nThis message contains "
        "confidential medical information intended only for the addressee.\n")
    if job.document is None:
        raise DeliveryError(f"draft {job.draft_id} has no rendered document to attach")
    data = job.read(job.document)
    maintype, subtype = {
        ".pdf": ("application", "pdf"),
        ".docx": ("application",
                  "vnd.openxmlformats-officedocument.wordprocessingml.document"),
        ".txt": ("text", "plain"),
    }.get(job.document.suffix.lower(), ("application", "octet-stream"))
    filename = f"document-{job.draft_id[:8]}{job.document.suffix.lower()}"
    if maintype == "text":
        msg.add_attachment(data.decode("utf-8", "replace"), subtype=subtype, filename=filename)
    else:
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    if options.smtp_security not in ("starttls", "ssl", "none"):
        raise DeliveryError(f"smtp_security {options.smtp_security!r} arrived; expected "
                            "starttls, ssl or none")
    if options.smtp_security == "none" and options.smtp_host not in _LOOPBACK:
        raise DeliveryError(f"refusing to send a medical document to {options.smtp_host} "
                            "without TLS; set smtp_security to starttls or ssl")
    context = ssl.create_default_context(cafile=options.smtp_cafile)
    if not options.smtp_verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    smtp: smtplib.SMTP
    if options.smtp_security == "ssl":
        smtp = smtplib.SMTP_SSL(options.smtp_host, options.smtp_port,
                                timeout=options.smtp_timeout_s, context=context)
    else:
        smtp = smtplib.SMTP(options.smtp_host, options.smtp_port, timeout=options.smtp_timeout_s)
    with smtp:
        smtp.ehlo()
        if options.smtp_security == "starttls":
            smtp.starttls(context=context)
            smtp.ehlo()
        if options.smtp_user:
            smtp.login(options.smtp_user, options.smtp_password or "")
        smtp.send_message(msg)
    return msg_id


def _send(job: _Job, options: RouteOptions) -> str:
    """Deliver one job; return where it went (file path, message id, URL)."""
    if job.channel in ("print", "pdf_folder"):
        if job.document is None:
            raise DeliveryError(f"draft {job.draft_id} has no rendered document to deliver")
        folder = Path(job.address) if job.channel == "pdf_folder" else Path(options.print_dir
                                                                          or ".")
        name = f"{job.draft_id}-{job.delivery_id}{job.document.suffix.lower()}"
        return str(_atomic_write(folder, name, job.read(job.document)))
    if job.channel == "email":
        return _send_email(job, options)
    if job.channel == "hl7":
        folder = Path(job.address) if job.address else Path(options.hl7_dir or ".")
        rendered = Path(job.outputs["hl7"]) if job.outputs.get("hl7") else None
        data = job.read(rendered) if rendered and rendered.is_file() else b""
        if b"MDM^T02" not in data[:300]:  # the renderer's full MDM when present
            data = _mdm(job, options)
        return str(_atomic_write(folder, f"{job.draft_id}-{job.delivery_id}.hl7", data))
    if job.channel == "fhir_folder":
        folder = Path(job.address) if job.address else Path(options.fhir_dir or ".")
        return str(_atomic_write(folder, f"{job.draft_id}-{job.delivery_id}.json",
                                 _fhir_document(job)))
    if job.channel == "fhir_http":
        import httpx

        resp = httpx.post(job.address, content=_fhir_document(job),
                          headers={"Content-Type": "application/fhir+json"},
                          timeout=options.http_timeout_s)
        if resp.status_code >= 300:
            raise DeliveryError(f"the FHIR endpoint answered HTTP {resp.status_code}; "
                                "expected 2xx")
        return resp.headers.get("Location", job.address)
    raise DeliveryError(f"channel {job.channel!r} arrived; expected one of {', '.join(CHANNELS)}")


def explain_failure(exc: BaseException, channel: str, address: str,
                    options: RouteOptions) -> str:
    """What failed and what to do, in one or two sentences for the routing page (the
    exception text itself goes to the log and the attempt history)."""
    if isinstance(exc, DeliveryError):
        return str(exc)[:1000]
    if channel == "email":
        where = f"{options.smtp_host}:{options.smtp_port}"
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            return (f"The mail server at {where} refused the log-in: check smtp_user and "
                    "smtp_password.")
        if isinstance(exc, smtplib.SMTPRecipientsRefused):
            return (f"The mail server at {where} refused the address {address!r}: check the "
                    "recipient's e-mail address in the directory.")
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return (f"The mail server at {where} does not offer STARTTLS: set smtp_security "
                    "to ssl, or ask its administrator to enable TLS.")
        if isinstance(exc, ssl.SSLError):
            return (f"The secure connection to the mail server at {where} failed (TLS "
                    "certificate or protocol): check smtp_security, smtp_cafile and the "
                    "server's certificate.")
        if isinstance(exc, ConnectionRefusedError):
            return (f"Connection refused by the mail server at {where}: check that it runs "
                    "and the SMTP settings (smtp_host, smtp_port).")
        if isinstance(exc, TimeoutError):
            return (f"The mail server at {where} did not answer in time: check the network "
                    "and the SMTP settings; the delivery is retried.")
        if isinstance(exc, socket.gaierror):
            return (f"The mail server name {options.smtp_host!r} could not be found: check "
                    "smtp_host.")
        if isinstance(exc, smtplib.SMTPException | OSError):
            return (f"Sending through the mail server at {where} failed: check that it runs "
                    "and the SMTP settings; the delivery is retried.")
    if channel == "fhir_http" and (isinstance(exc, OSError) or type(exc).__module__.startswith(
            ("httpx", "httpcore"))):
        return (f"The FHIR server at {address} could not be reached: check that it runs "
                "and the recipient's URL.")
    if isinstance(exc, PermissionError):
        return (f"The {channel.replace('_', ' ')} folder cannot be written to: check that it "
                "exists and that the service may write there.")
    if isinstance(exc, FileNotFoundError | NotADirectoryError):
        return (f"The {channel.replace('_', ' ')} folder does not exist: create it or fix "
                "the recipient's address.")
    if isinstance(exc, OSError):
        return (f"Writing the document for the {channel.replace('_', ' ')} channel failed "
                f"({exc.strerror or 'system error'}): check the folder and the disk space.")
    return ("The delivery failed unexpectedly: the details are in the service log; retry, "
            "and tell the administrator if it fails again.")


def _backoff(attempt: int, options: RouteOptions) -> timedelta:
    return timedelta(seconds=min(options.backoff_base_s * 2 ** max(attempt - 1, 0),
                                 options.backoff_max_s))


def _claim(session: Session, delivery: Delivery, now: datetime) -> _Job | None:
    """Mark one due delivery as sending (compare-and-set) and gather what sending needs."""
    draft = session.get(DraftRow, delivery.draft_id)
    rec = session.get(Recipient, delivery.recipient_id) if delivery.recipient_id else None
    if draft is None or rec is None:
        return None
    attempt = delivery.attempts + 1
    claimed = session.execute(
        update(Delivery).where(Delivery.id == delivery.id,
                               Delivery.status == delivery.status,
                               Delivery.attempts == attempt - 1)
        .values(status="sending", attempts=Delivery.attempts + 1, updated_at=now,
                channel=rec.channel)
    ).rowcount  # type: ignore[attr-defined]
    if not claimed:
        return None
    return _Job(delivery.id, draft.id, rec.channel, rec.address, rec.name,
                attempt, _document_path(draft),
                {k: str(v) for k, v in (draft.outputs or {}).items()}, draft.mrn,
                draft.document_type, draft.text or "")


def _finish_draft(session: Session, draft_id: str, actor: str) -> None:
    draft = session.get(DraftRow, draft_id)
    if draft is None or draft.status != "signed":
        return
    statuses = {d.status for d in session.scalars(
        select(Delivery).where(Delivery.draft_id == draft_id))}
    if statuses == {"delivered"}:
        draft.status = "delivered"
        audit.record(session, actor=actor, action="draft_delivered", object_type="draft",
                     object_id=draft_id, patient_ref=draft.mrn)


def deliver_due(settings: Settings, options: RouteOptions | None = None, *,
                now: datetime | None = None, draft_id: str | None = None,
                actor: str = "system:route") -> DeliveryReport:
    """Send every due delivery of signed drafts (all drafts, or one); return what happened.

    Due: ``pending``, or ``retry`` whose backoff has passed. Deliveries of drafts not yet
    signed stay pending (listed as waiting for signature).
    """
    options = options or RouteOptions.from_settings(settings)
    now = now or datetime.now(UTC)
    store = open_store(settings)
    report = DeliveryReport()
    jobs: list[_Job] = []
    with store.session() as s:
        stale = now - timedelta(seconds=options.stale_sending_s)
        s.execute(update(Delivery).where(Delivery.status == "sending",
                                         Delivery.updated_at < stale)
                  .values(status="retry", next_attempt_at=now,
                          last_error="interrupted while sending"))
        stmt = select(Delivery).where(Delivery.status.in_(("pending", "retry")))
        if draft_id is not None:
            stmt = stmt.where(Delivery.draft_id == draft_id)
        for delivery in s.scalars(stmt.order_by(Delivery.id)).all():
            if delivery.status == "retry" and delivery.next_attempt_at is not None \
                    and as_utc(delivery.next_attempt_at) > now:
                continue
            draft = s.get(DraftRow, delivery.draft_id)
            if draft is None or draft.status not in LEAVING_STATUSES:
                report.waiting_for_signature.append(delivery.id)
                continue
            rec = s.get(Recipient, delivery.recipient_id) if delivery.recipient_id else None
            if rec is not None and not rec.approved:
                report.waiting_for_approval.append(delivery.id)
                continue
            job = _claim(s, delivery, now)
            if job is not None:
                job.settings = settings
                jobs.append(job)
    for job in jobs:
        t0 = time.perf_counter()
        error: str | None = None
        target: str | None = None
        tech = ""
        try:
            target = _send(job, options)
        except (OSError, smtplib.SMTPException, DeliveryError) as exc:
            error = explain_failure(exc, job.channel, job.address, options)
            tech = f"{type(exc).__name__}: {exc}"[:1000]
        except Exception as exc:  # an unexpected failure must not drop the delivery
            log.exception("delivery=%s unexpected error", job.delivery_id)
            error = explain_failure(exc, job.channel, job.address, options)
            tech = f"{type(exc).__name__}: {exc}"[:1000]
        ms = int((time.perf_counter() - t0) * 1000)
        with store.session() as s:
            row = s.get(Delivery, job.delivery_id)
            assert row is not None
            delivery = row
            s.add(DeliveryAttempt(delivery_id=delivery.id, at=now,
                                  outcome="delivered" if error is None else "error",
                                  error=tech or error, duration_ms=ms))
            detail = {"delivery_id": delivery.id, "recipient_id": delivery.recipient_id,
                      "channel": job.channel, "attempt": job.attempt}
            if error is None:
                delivery.status, delivery.delivered_at = "delivered", now
                delivery.target, delivery.last_error = target, None
                report.delivered.append(delivery.id)
                audit.record(s, actor=actor, action="document_delivered", object_type="draft",
                             object_id=job.draft_id, patient_ref=job.mrn, detail=detail)
                for task in s.scalars(select(Task).where(Task.delivery_id == delivery.id)):

                    if task.status not in task_states.FINAL:
                        task_states.set_task_status(s, task.id, "done", actor=actor,
                                              note=f"delivery {delivery.id}")
                s.flush()
                _finish_draft(s, job.draft_id, actor)
                log.info("delivery=%s draft=%s channel=%s delivered in %d ms", delivery.id,
                         job.draft_id, job.channel, ms)
            else:
                delivery.last_error = error
                if job.attempt >= options.max_attempts:
                    delivery.status, delivery.next_attempt_at = "failed", None
                    report.failed.append(delivery.id)
                else:
                    delivery.status = "retry"
                    delivery.next_attempt_at = now + _backoff(job.attempt, options)
                    report.retrying.append(delivery.id)
                audit.record(s, actor=actor, action="document_delivery_failed",
                             object_type="draft", object_id=job.draft_id, patient_ref=job.mrn,
                             outcome="error", detail={**detail, "status": delivery.status})
                # the technical detail (exception text: hosts, ports, paths; no patient data)
                log.warning("delivery=%s draft=%s channel=%s attempt %d failed (%s)",
                            delivery.id, job.draft_id, job.channel, job.attempt, tech)
    return report


def check_can_leave(session: Session, draft_id: str) -> DraftRow:
    """The draft if it may leave the practice; ``PermissionDeniedError`` otherwise."""
    draft = session.get(DraftRow, draft_id)
    if draft is None:
        raise NotFoundError(f"draft {draft_id} arrived; expected a known draft")
    if draft.status not in LEAVING_STATUSES:
        raise PermissionDeniedError(f"draft {draft_id} is {draft.status}; only signed documents "
                                    "leave the practice")
    return draft
