"""Scheduling, task, referral and routing tables (revision ``0003_schedule``).

Every instant is stored in UTC (``DateTime(timezone=True)``; SQLite keeps it naive, the
helpers in ``pipeline.secretary.schedule.timeutil`` put the UTC zone back). Weekly availability is
stored as *local* wall-clock times plus the physician's time zone, so that "Mon 09:00-17:00"
stays 09:00 local across a daylight-saving change.

Cross-area links are plain foreign keys to ``physicians.id`` and ``drafts.id``. Patient fields
(names, phone numbers, MRNs, reasons, notes, instructions, task titles and parameters,
referral document names) are ``EncryptedText`` / ``EncryptedJSON``: sealed on PostgreSQL
(``pipeline.core.db.encrypted``), plain inside the SQLCipher file on SQLite.
"""

from __future__ import annotations

from datetime import date, datetime, time
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    Time,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column

from pipeline.core.db.base import Base, utcnow
from pipeline.core.db.encrypted import EncryptedJSON, EncryptedText

__all__ = [
    "Location",
    "Resource",
    "AvailabilityRule",
    "AvailabilityException",
    "CalendarBlock",
    "AppointmentType",
    "Appointment",
    "AppointmentHistory",
    "SlotClaim",
    "Task",
    "TaskHistory",
    "Referral",
    "ReferralHistory",
    "ReferralDocument",
    "Recipient",
    "Delivery",
    "DeliveryAttempt",
]


class Location(Base):
    """A place where physicians see patients (a clinic site, a hospital ward)."""

    __tablename__ = "sched_locations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    address: Mapped[str] = mapped_column(String(500), default="")
    timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Resource(Base):
    """A bookable thing: an operating room, an ultrasound machine, an exam room."""

    __tablename__ = "sched_resources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(50), index=True)  # operating_room, ultrasound, ...
    location_id: Mapped[int | None] = mapped_column(
        ForeignKey("sched_locations.id"), nullable=True
    )
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class AvailabilityRule(Base):
    """One weekly window of availability in the physician's local time (weekday 0 = Monday)."""

    __tablename__ = "sched_availability_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    physician_id: Mapped[str] = mapped_column(ForeignKey("physicians.id"), index=True)
    weekday: Mapped[int] = mapped_column(Integer)
    start_local: Mapped[time] = mapped_column(Time)
    end_local: Mapped[time] = mapped_column(Time)
    location_id: Mapped[int | None] = mapped_column(
        ForeignKey("sched_locations.id"), nullable=True
    )
    valid_from: Mapped[date | None] = mapped_column(Date, nullable=True)
    valid_until: Mapped[date | None] = mapped_column(Date, nullable=True)  # inclusive


class AvailabilityException(Base):
    """A dated override of the weekly template, in local time.

    ``kind="closed"``: not available on ``day`` (all day when no times are given, else in
    the window). ``kind="open"``: extra availability on ``day`` in the window.
    """

    __tablename__ = "sched_availability_exceptions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    physician_id: Mapped[str] = mapped_column(ForeignKey("physicians.id"), index=True)
    day: Mapped[date] = mapped_column(Date, index=True)
    kind: Mapped[str] = mapped_column(String(10))  # closed | open
    start_local: Mapped[time | None] = mapped_column(Time, nullable=True)
    end_local: Mapped[time | None] = mapped_column(Time, nullable=True)
    reason: Mapped[str] = mapped_column(String(200), default="")


class CalendarBlock(Base):
    """Busy time that is not an appointment: time off, on-call duty, meetings, maintenance."""

    __tablename__ = "sched_blocks"
    __table_args__ = (
        Index("ix_sched_blocks_physician_start", "physician_id", "start_utc"),
        Index("ix_sched_blocks_resource_start", "resource_id", "start_utc"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(20))  # time_off | on_call | meeting | maintenance
    physician_id: Mapped[str | None] = mapped_column(ForeignKey("physicians.id"), nullable=True)
    resource_id: Mapped[int | None] = mapped_column(
        ForeignKey("sched_resources.id"), nullable=True
    )
    start_utc: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end_utc: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    all_day: Mapped[bool] = mapped_column(Boolean, default=False)
    title: Mapped[str] = mapped_column(String(200), default="")
    created_by: Mapped[str] = mapped_column(String(100), default="system")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AppointmentType(Base):
    """A kind of appointment with its default length and the resource kind it usually needs."""

    __tablename__ = "sched_appointment_types"

    code: Mapped[str] = mapped_column(String(50), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    duration_min: Mapped[int] = mapped_column(Integer)
    resource_kind: Mapped[str | None] = mapped_column(String(50), nullable=True)
    resource_required: Mapped[bool] = mapped_column(Boolean, default=False)


class Appointment(Base):
    """A booked appointment. Patient fields are PHI: never log them."""

    __tablename__ = "sched_appointments"
    __table_args__ = (
        Index("ix_sched_appointments_physician_start", "physician_id", "start_utc"),
        Index("ix_sched_appointments_resource_start", "resource_id", "start_utc"),
        Index("ix_sched_appointments_start", "start_utc"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    physician_id: Mapped[str] = mapped_column(ForeignKey("physicians.id"))
    resource_id: Mapped[int | None] = mapped_column(
        ForeignKey("sched_resources.id"), nullable=True
    )
    location_id: Mapped[int | None] = mapped_column(
        ForeignKey("sched_locations.id"), nullable=True
    )
    type_code: Mapped[str] = mapped_column(ForeignKey("sched_appointment_types.code"))
    start_utc: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    end_utc: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(20), default="booked")
    patient_name: Mapped[str | None] = mapped_column(EncryptedText(), nullable=True)  # PHI
    patient_phone: Mapped[str | None] = mapped_column(EncryptedText(), nullable=True)  # PHI
    mrn: Mapped[str | None] = mapped_column(EncryptedText(deterministic=True), nullable=True,
                                            index=True)  # PHI
    reason: Mapped[str] = mapped_column(EncryptedText(), default="")
    draft_id: Mapped[str | None] = mapped_column(ForeignKey("drafts.id"), nullable=True)
    created_by: Mapped[str] = mapped_column(String(100), default="system")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class AppointmentHistory(Base):
    """One status change of an appointment: who, when, from what to what."""

    __tablename__ = "sched_appointment_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    appointment_id: Mapped[int] = mapped_column(
        ForeignKey("sched_appointments.id"), index=True
    )
    from_status: Mapped[str | None] = mapped_column(String(20), nullable=True)
    to_status: Mapped[str] = mapped_column(String(20))
    actor: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    note: Mapped[str] = mapped_column(EncryptedText(), default="")


class SlotClaim(Base):
    """One grid unit (5 minutes) of a physician's or resource's time held by an appointment.

    The unique constraint is the database-level guarantee against double-booking: two
    concurrent bookings of overlapping times both try to insert at least one identical
    ``(owner, slot_start)`` row and only one transaction can commit it.
    """

    __tablename__ = "sched_slot_claims"
    __table_args__ = (
        UniqueConstraint("owner", "slot_start", name="uq_sched_slot_claims_owner_slot"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(80))  # "physician:<id>" or "resource:<id>"
    slot_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    appointment_id: Mapped[int] = mapped_column(
        ForeignKey("sched_appointments.id", ondelete="CASCADE"), index=True
    )


class Task(Base):
    """A piece of the secretary's work, usually lifted from a dictation instruction."""

    __tablename__ = "sched_tasks"
    __table_args__ = (UniqueConstraint("draft_id", "key", name="uq_sched_tasks_draft_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    draft_id: Mapped[str | None] = mapped_column(ForeignKey("drafts.id"), nullable=True, index=True)
    physician_id: Mapped[str | None] = mapped_column(ForeignKey("physicians.id"), nullable=True)
    key: Mapped[str] = mapped_column(String(40))  # stable per instruction: idempotency
    kind: Mapped[str] = mapped_column(String(20))  # schedule | order | refer | copy | other
    title: Mapped[str] = mapped_column(EncryptedText())  # from the dictated instruction
    instruction_text: Mapped[str] = mapped_column(EncryptedText(), default="")  # PHI: never log
    params: Mapped[dict[str, Any]] = mapped_column(EncryptedJSON, default=dict)
    status: Mapped[str] = mapped_column(String(30), index=True)
    owner: Mapped[str | None] = mapped_column(String(100), nullable=True)
    due_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    proposed_slots: Mapped[list[Any]] = mapped_column(JSON, default=list)
    appointment_id: Mapped[int | None] = mapped_column(
        ForeignKey("sched_appointments.id"), nullable=True
    )
    referral_id: Mapped[int | None] = mapped_column(
        ForeignKey("sched_referrals.id"), nullable=True
    )
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("sched_deliveries.id"), nullable=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class TaskHistory(Base):
    __tablename__ = "sched_task_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("sched_tasks.id"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(30), nullable=True)
    to_status: Mapped[str] = mapped_column(String(30))
    actor: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    note: Mapped[str] = mapped_column(EncryptedText(), default="")


class Referral(Base):
    """A referral to a specialty or recipient, tracked until the report is back and closed."""

    __tablename__ = "sched_referrals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    draft_id: Mapped[str | None] = mapped_column(ForeignKey("drafts.id"), nullable=True, index=True)
    physician_id: Mapped[str | None] = mapped_column(ForeignKey("physicians.id"), nullable=True)
    specialty: Mapped[str] = mapped_column(String(100))
    recipient_id: Mapped[int | None] = mapped_column(
        ForeignKey("sched_recipients.id"), nullable=True
    )
    mrn: Mapped[str | None] = mapped_column(EncryptedText(deterministic=True),
                                            nullable=True)  # PHI
    reason: Mapped[str] = mapped_column(EncryptedText(), default="")  # PHI: never log
    status: Mapped[str] = mapped_column(String(30), default="requested", index=True)
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    appointment_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class ReferralHistory(Base):
    __tablename__ = "sched_referral_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    referral_id: Mapped[int] = mapped_column(ForeignKey("sched_referrals.id"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(30), nullable=True)
    to_status: Mapped[str] = mapped_column(String(30))
    actor: Mapped[str] = mapped_column(String(100))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    note: Mapped[str] = mapped_column(EncryptedText(), default="")


class ReferralDocument(Base):
    """A document attached to a referral: the referral letter (a draft) or the report back."""

    __tablename__ = "sched_referral_documents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    referral_id: Mapped[int] = mapped_column(ForeignKey("sched_referrals.id"), index=True)
    role: Mapped[str] = mapped_column(String(30))  # referral_letter | report | other
    draft_id: Mapped[str | None] = mapped_column(ForeignKey("drafts.id"), nullable=True)
    path: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    name: Mapped[str] = mapped_column(EncryptedText(), default="")  # a file name: PHI
    added_by: Mapped[str] = mapped_column(String(100), default="system")
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Recipient(Base):
    """Someone who receives documents, and how: the routing directory."""

    __tablename__ = "sched_recipients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(30))  # department | referring_physician | practice
    organization: Mapped[str] = mapped_column(String(200), default="")
    specialty: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # print | pdf_folder | email | hl7 | fhir_folder | fhir_http
    channel: Mapped[str] = mapped_column(String(20))
    address: Mapped[str] = mapped_column(String(500), default="")  # e-mail, folder or URL
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # outside the practice's own e-mail domains: no delivery until an administrator approves
    approved: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    approved_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    approved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Delivery(Base):
    """One signed document going to one recipient; retried with backoff, never dropped."""

    __tablename__ = "sched_deliveries"
    __table_args__ = (
        UniqueConstraint("draft_id", "recipient_id", name="uq_sched_deliveries_draft_recipient"),
        Index("ix_sched_deliveries_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    draft_id: Mapped[str] = mapped_column(ForeignKey("drafts.id"), index=True)
    recipient_id: Mapped[int | None] = mapped_column(
        ForeignKey("sched_recipients.id"), nullable=True
    )
    requested_name: Mapped[str] = mapped_column(String(300), default="")  # as dictated
    channel: Mapped[str | None] = mapped_column(String(20), nullable=True)
    status: Mapped[str] = mapped_column(String(20), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    target: Mapped[str | None] = mapped_column(String(1000), nullable=True)  # file/message id
    created_by: Mapped[str] = mapped_column(String(100), default="system")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class DeliveryAttempt(Base):
    """One try of a delivery, with its outcome: the delivery log."""

    __tablename__ = "sched_delivery_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("sched_deliveries.id"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    outcome: Mapped[str] = mapped_column(String(20))  # delivered | error
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
