"""Tasks from dictations: each instruction on a draft becomes tracked work, linked to it.

- ``schedule`` (``interval_days``) -> a scheduling task with proposed slots (the next free
  follow-up slots of the draft's physician around the target date); booking one of them
  completes the task;
- ``order`` (``test``, ``body_part``) -> an order task that starts with pre-authorization:
  preauth_needed -> preauth_requested -> preauthorized (or preauth_denied) -> ordered -> done;
- ``refer`` (``specialty``) -> a referral in the tracker (``pipeline.secretary.referrals``);
  the task is done when the referral is sent;
- ``copy`` (``recipient``, ``organization``) -> a route for the signed document
  (``pipeline.secretary.route``); the task is done when it is delivered;
- ``other`` -> a plain to-do.

Tasks have an owner (unassigned until someone takes one), a due date, a status and a history.
``tasks_from_draft`` is idempotent: each instruction has a stable key (kind + text), unique per
draft, so calling it again (a retried flow, a re-sign) adds nothing twice.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.core import audit
from pipeline.core.db.core import DraftRow
from pipeline.core.db.schedule import Appointment, Task, TaskHistory
from pipeline.core.errors import ConflictError, NotFoundError
from pipeline.language.instructions import interval_days
from pipeline.language.spoken_numbers import count_pattern
from pipeline.secretary import referrals, route
from pipeline.secretary.schedule.calendars import ScheduleOptions, physician_zone
from pipeline.secretary.schedule.timeutil import as_utc, local_to_utc
from pipeline.secretary.task_states import FINAL, FIRST, FLOWS, set_task_status
from pipeline.secretary.task_states import add_history as _history
from pipeline.secretary.task_states import get_task as _get

__all__ = [
    "FLOWS",
    "FINAL",
    "TaskOptions",
    "tasks_from_draft",
    "set_task_status",
    "assign_task",
    "book_task",
    "refresh_proposals",
    "task_list",
    "task_history",
    "instruction_key",
]

log = logging.getLogger(__name__)



@dataclass
class TaskOptions:
    """Due dates (days from creation) per task kind, and the follow-up appointment type."""

    due_days: dict[str, int] | None = None
    follow_up_type: str = "follow_up"
    schedule: ScheduleOptions | None = None

    def due_for(self, kind: str) -> int:
        days = self.due_days or {"schedule": 2, "order": 3, "refer": 2, "copy": 1, "other": 3}
        return days.get(kind, 3)


def instruction_key(kind: str, text: str) -> str:
    """Stable key of an instruction: its kind and whitespace/case-normalised text."""
    norm = " ".join(text.lower().split())
    return hashlib.sha1(f"{kind}|{norm}".encode()).hexdigest()[:20]


#: A count and a unit said anywhere in the instruction ("... in seventeen days").
_SAID_INTERVAL = re.compile(
    rf"\b(?P<n>{count_pattern()})\s+(?P<unit>day|week|month|year)s?\b", re.I
)


def _interval_days(params: dict[str, Any], text: str) -> int | None:
    value = params.get("interval_days")
    if isinstance(value, (int, float)) and value > 0:
        return int(value)
    m = _SAID_INTERVAL.search(text)
    if not m:
        return None
    return interval_days(m.group("n"), m.group("unit"))[0]


def _title(kind: str, params: dict[str, Any], text: str, interval: int | None) -> str:
    if kind == "schedule":
        if interval:
            count, unit = params.get("count"), params.get("unit")
            span = f"{count} {unit}{'s' if count != 1 else ''}" if count and unit \
                else f"{interval} days"
            return f"Book follow-up in {span}"
        return "Book follow-up"
    if kind == "order":
        test = params.get("test") or "test"
        part = params.get("body_part")
        return f"Order {test}" + (f" of the {part}" if part else "") + " (pre-authorization)"
    if kind == "refer":
        return f"Refer to {params.get('specialty') or params.get('recipient') or 'specialist'}"
    if kind == "copy":
        who = params.get("recipient") or "recipient"
        org = params.get("organization")
        return f"Send signed document to {who}" + (f" ({org})" if org else "")
    return (text[:120] + "...") if len(text) > 120 else (text or "Instruction")


def _proposals(session: Session, draft: DraftRow, interval: int, base: datetime,
               options: TaskOptions) -> list[dict[str, Any]]:
    from pipeline.secretary.schedule import get_type
    from pipeline.secretary.schedule.slots import find_free_slots

    sched = options.schedule or ScheduleOptions()
    if not draft.physician_id:
        return []
    tz = physician_zone(session, draft.physician_id, sched)
    target = base.astimezone(tz).date() + timedelta(days=interval)
    lead = min(sched.proposal_lead_days, max(interval // 7, 0))
    after = local_to_utc(target - timedelta(days=lead), time(0), tz)
    after = max(after, base)
    atype = get_type(session, options.follow_up_type)
    slots = find_free_slots(session, physician_ids=[draft.physician_id],
                            duration_min=atype.duration_min, after=after, limit=sched.proposals,
                            before=after + timedelta(days=60), options=sched)
    return [s.to_dict() | {"type": atype.code} for s in slots]


def _default_options(settings: Any) -> TaskOptions:
    if settings is None:
        try:
            from pipeline.core.settings import get_settings

            settings = get_settings()
        except Exception:  # settings unreadable here: practice zone falls back to UTC
            log.warning("tasks: settings not readable; using UTC for proposals")
            return TaskOptions(schedule=ScheduleOptions())
    return TaskOptions(schedule=ScheduleOptions.from_settings(settings))


def tasks_from_draft(session: Session, draft_row: DraftRow, *, actor: str = "system:tasks",
                     options: TaskOptions | None = None, settings: Any = None,
                     now: datetime | None = None) -> list[Task]:
    """Turn the draft's instructions (``document["instructions"]``) into tasks; return the
    draft's instruction tasks (existing ones included, none duplicated).

    ``settings`` gives the practice time zone for proposed slots (default: the process
    settings); ``options`` overrides everything.
    """
    if options is None:
        options = _default_options(settings)
    now = now or datetime.now(UTC)
    instructions = (draft_row.document or {}).get("instructions") or []
    existing = {t.key: t for t in session.scalars(
        select(Task).where(Task.draft_id == draft_row.id))}
    result: list[Task] = []
    for raw in instructions:
        if isinstance(raw, dict):
            kind = str(raw.get("kind") or "other")
            text = str(raw.get("text") or "")
            params = dict(raw.get("params") or {})
        else:  # an Instruction record
            kind, text, params = raw.kind, raw.text, dict(raw.params)
        if kind not in FLOWS:
            kind = "other"
        key = instruction_key(kind, text)
        if key in existing:
            result.append(existing[key])
            continue
        task = _make_task(session, draft_row, kind, text, params, key, actor, options, now)
        existing[key] = task
        result.append(task)
    return result


def _make_task(session: Session, draft: DraftRow, kind: str, text: str,
               params: dict[str, Any], key: str, actor: str, options: TaskOptions,
               now: datetime) -> Task:
    interval = _interval_days(params, text) if kind == "schedule" else None
    task = Task(draft_id=draft.id, physician_id=draft.physician_id, key=key, kind=kind,
                title=_title(kind, params, text, interval)[:300], instruction_text=text,
                params=params | ({"interval_days": interval} if interval else {}),
                status=FIRST.get(kind, "open"),
                due_date=now.date() + timedelta(days=options.due_for(kind)), proposed_slots=[])
    session.add(task)
    session.flush()
    if kind == "schedule" and interval:
        try:
            task.proposed_slots = _proposals(session, draft, interval, now, options)
        except (ConflictError, NotFoundError) as exc:
            log.warning("task=%s no proposals: %s", task.id, type(exc).__name__)
        target = now.date() + timedelta(days=interval)
        task.due_date = min(task.due_date or target, target)
    elif kind == "refer":

        specialty = str(params.get("specialty") or params.get("recipient") or "unspecified")
        ref = referrals.create_referral(session, specialty, draft_id=draft.id,
                                        physician_id=draft.physician_id, mrn=draft.mrn,
                                        reason=text, actor=actor, now=now)
        task.referral_id = ref.id
    elif kind == "copy":

        name = str(params.get("recipient") or "")
        rec = route.find_recipient(session, name, params.get("organization")) if name else None
        delivery = route.route_draft(
            session, draft.id, recipient_id=rec.id if rec else None,
            requested_name=" / ".join(x for x in (name, params.get("organization") or "") if x),
            actor=actor)
        task.delivery_id = delivery.id
    _history(session, task, None, task.status, actor, "created from dictation")
    audit.record(session, actor=actor, action="task_created", object_type="task",
                 object_id=str(task.id), patient_ref=draft.mrn,
                 detail={"draft_id": draft.id, "kind": kind})
    session.flush()
    log.info("task=%s kind=%s created for draft=%s", task.id, kind, draft.id)
    return task


def assign_task(session: Session, task_id: int, owner: str | None, *, actor: str) -> Task:
    """Give the task an owner (a user name), or unassign it with None."""
    task = _get(session, task_id)
    old = task.owner
    task.owner = owner
    _history(session, task, task.status, task.status, actor,
             f"owner {old or 'unassigned'} -> {owner or 'unassigned'}")
    audit.record(session, actor=actor, action="task_assigned", object_type="task",
                 object_id=str(task.id), detail={"owner": owner})
    session.flush()
    return task


def book_task(session: Session, task_id: int, *, actor: str, slot_index: int | None = 0,
              start: datetime | None = None, patient_phone: str | None = None,
              options: ScheduleOptions | None = None) -> Appointment:
    """Book the follow-up of a scheduling task (a proposed slot, or ``start``); the task is
    then done and linked to the appointment. Conflicts raise ``ConflictError``."""
    from pipeline.secretary.schedule import book

    task = _get(session, task_id)
    if task.kind != "schedule":
        raise ConflictError(f"task {task.id} is a {task.kind} task; only scheduling tasks book")
    if task.status in FINAL:
        raise ConflictError(f"task {task.id} is already {task.status}")
    draft = session.get(DraftRow, task.draft_id) if task.draft_id else None
    physician_id = task.physician_id
    type_code = "follow_up"
    if start is None:
        if slot_index is None or not 0 <= slot_index < len(task.proposed_slots or []):
            raise ConflictError(f"task {task.id} has no proposed slot {slot_index}; refresh the "
                                "proposals or give a time")
        slot = task.proposed_slots[slot_index]
        start = datetime.fromisoformat(slot["start"])
        physician_id = slot["physician_id"]
        type_code = slot.get("type", type_code)
    if not physician_id:
        raise ConflictError(f"task {task.id} has no physician to book with")
    appt = book(session, physician_id=physician_id, start=start, type_code=type_code,
                patient_name=draft.patient_name if draft else None, patient_phone=patient_phone,
                mrn=draft.mrn if draft else None, reason=task.title, draft_id=task.draft_id,
                actor=actor, options=options)
    task.appointment_id = appt.id
    set_task_status(session, task.id, "done", actor=actor, note=f"appointment {appt.id}")
    return appt


def refresh_proposals(session: Session, task_id: int, *, options: TaskOptions | None = None,
                      now: datetime | None = None) -> Task:
    """Recompute a scheduling task's proposed slots (after the calendar changed)."""
    task = _get(session, task_id)
    draft = session.get(DraftRow, task.draft_id) if task.draft_id else None
    interval = (task.params or {}).get("interval_days")
    if task.kind != "schedule" or draft is None or not interval:
        return task
    options = options or TaskOptions()
    base = max(now or datetime.now(UTC), as_utc(task.created_at))
    created = as_utc(task.created_at)
    # keep the target date of the original instruction
    task.proposed_slots = _proposals(session, draft, max(int(interval) - (base - created).days, 0),
                                     base, options)
    session.flush()
    return task


def task_list(session: Session, *, physician_ids: list[str] | None = None,
              include_closed: bool = False, owner: str | None = None,
              kind: str | None = None) -> list[Task]:
    """Tasks (of the physicians' drafts; all when None) by due date then id."""
    stmt = select(Task)
    if physician_ids is not None:
        stmt = stmt.where(Task.physician_id.in_(physician_ids))
    if not include_closed:
        stmt = stmt.where(Task.status.not_in(FINAL))
    if owner is not None:
        stmt = stmt.where(Task.owner == owner)
    if kind is not None:
        stmt = stmt.where(Task.kind == kind)
    return list(session.scalars(stmt.order_by(Task.due_date, Task.id)))


def task_history(session: Session, task_id: int) -> list[TaskHistory]:
    """The task's changes, oldest first."""
    return list(session.scalars(select(TaskHistory).where(TaskHistory.task_id == task_id)
                                .order_by(TaskHistory.id)))


def is_overdue(task: Task, today: date | None = None) -> bool:
    """Whether an open task is past its due date."""
    today = today or datetime.now(UTC).date()
    return task.status not in FINAL and task.due_date is not None and task.due_date < today
