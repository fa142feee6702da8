"""Tasks from dictations, end to end: dictated text -> pipeline.documents.sections.structure ->
draft row -> tasks_from_draft -> scheduling task with bookable proposals, order task with a
pre-authorization step, referral in the tracker, route for the signed document."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import func, select

from pipeline.core import audit
from pipeline.core.db.core import DictationRow, DraftRow
from pipeline.core.db.schedule import Delivery, Referral, ReferralDocument, Task
from pipeline.core.errors import ConflictError
from pipeline.core.records import DictationMeta, Note, to_jsonable
from pipeline.core.store import open_store
from pipeline.documents import sections
from pipeline.secretary import referrals, route, tasks
from pipeline.secretary.schedule import add_availability, add_time_off
from pipeline.secretary.schedule.calendars import ScheduleOptions

# Written for this project (synthetic; no real patient).
DICTATION = (
    "History of present illness: The patient is a 54-year-old man with left knee pain for "
    "three months after a fall. Examination: Effusion of the left knee, stable ligaments. "
    "Assessment: Suspected meniscal tear. Also elevated fasting glucose. "
    "Plan: Continue ibuprofen 400 mg as needed. Please schedule a follow-up in two weeks. "
    "Order an MRI of the left knee. Refer to endocrinology. "
    "Please copy Dr. Patel at Riverside Cardiology."
)
NOW = datetime(2027, 4, 5, 14, 0, tzinfo=UTC)  # Monday
OPTS = tasks.TaskOptions(schedule=ScheduleOptions(default_timezone="UTC"))


def make_draft(session, text: str, settings, *, physician: str = "dr-smith",
               status: str = "queued_for_review") -> DraftRow:
    """A stored draft whose document comes from the real structuring stage."""
    doc = sections.structure(Note(text=text), DictationMeta(physician_id=physician,
                                                            mrn="MRN-T1"), settings)
    did = uuid.uuid4().hex
    session.add(DictationRow(id=did, sha256=did * 2, physician_id=physician))
    draft = DraftRow(id=uuid.uuid4().hex, dictation_id=did, physician_id=physician,
                     document_type=doc.document_type, status=status, audio_sha256=did * 2,
                     text=text, mrn="MRN-T1", document=to_jsonable(doc))
    session.add(draft)
    session.flush()
    return draft


@pytest.fixture
def store(settings):
    store = open_store(settings)
    with store.session() as s:
        for wd in range(5):
            add_availability(s, "dr-smith", wd, "09:00", "12:00")
        route.add_recipient(s, "Dr. Anil Patel", "referring_physician", "email",
                            "patel@riverside.example", organization="Riverside Cardiology")
    return store


def test_dictation_instructions_become_tasks(store, settings):
    with store.session() as s:
        draft = make_draft(s, DICTATION, settings)
        made = tasks.tasks_from_draft(s, draft, options=OPTS, now=NOW)
        by_kind = {t.kind: t for t in made}
        assert sorted(by_kind) == ["copy", "order", "refer", "schedule"]

        sched = by_kind["schedule"]
        assert sched.title == "Book follow-up in 2 weeks" and sched.status == "open"
        assert sched.params["interval_days"] == 14
        starts = [datetime.fromisoformat(p["start"]) for p in sched.proposed_slots]
        assert len(starts) == 3
        # target 2027-04-19 (a Monday), search from two days before: first free is 04-19 09:00
        assert starts[0] == datetime(2027, 4, 19, 9, 0, tzinfo=UTC)
        assert starts == sorted(starts) and all(9 <= x.hour < 12 for x in starts)
        assert sched.due_date == date(2027, 4, 7)

        order = by_kind["order"]
        assert order.status == "preauth_needed"
        assert order.title == "Order MRI of the left knee (pre-authorization)"

        ref = s.get(Referral, by_kind["refer"].referral_id)
        assert ref.specialty == "endocrinology" and ref.status == "requested"
        assert ref.draft_id == draft.id and ref.mrn == "MRN-T1"
        docs = s.scalars(select(ReferralDocument).where(ReferralDocument.referral_id == ref.id))
        assert [d.role for d in docs] == ["referral_letter"]

        delivery = s.get(Delivery, by_kind["copy"].delivery_id)
        assert delivery.status == "pending" and delivery.channel == "email"
        assert delivery.requested_name == "Dr. Patel / Riverside Cardiology"
        assert all(t.draft_id == draft.id for t in made)
        assert all(tasks.task_history(s, t.id)[0].to_status == t.status for t in made)
        assert audit.verify(s).ok


def test_tasks_from_draft_is_idempotent(store, settings):
    with store.session() as s:
        draft = make_draft(s, DICTATION, settings)
        first = tasks.tasks_from_draft(s, draft, options=OPTS, now=NOW)
        second = tasks.tasks_from_draft(s, draft, options=OPTS, now=NOW + timedelta(hours=1))
        assert [t.id for t in first] == [t.id for t in second]
        for table in (Task, Referral, Delivery):
            assert s.scalar(select(func.count()).select_from(table)) == 4 if table is Task \
                else s.scalar(select(func.count()).select_from(table)) == 1


def test_book_proposed_slot_completes_task(store, settings):
    with store.session() as s:
        draft = make_draft(s, DICTATION, settings)
        sched = next(t for t in tasks.tasks_from_draft(s, draft, options=OPTS, now=NOW)
                     if t.kind == "schedule")
        appt = tasks.book_task(s, sched.id, actor="alice", slot_index=1)
        assert appt.draft_id == draft.id and appt.mrn == "MRN-T1"
        assert sched.status == "done" and sched.appointment_id == appt.id
        with pytest.raises(ConflictError, match="already done"):
            tasks.book_task(s, sched.id, actor="alice")


def test_proposals_skip_time_off(store, settings):
    with store.session() as s:
        add_time_off(s, "dr-smith", date(2027, 4, 17), date(2027, 4, 20),
                     options=OPTS.schedule)
        draft = make_draft(s, "Plan: Follow up in 2 weeks.", settings)
        (sched,) = tasks.tasks_from_draft(s, draft, options=OPTS, now=NOW)
        first = datetime.fromisoformat(sched.proposed_slots[0]["start"])
        assert first == datetime(2027, 4, 21, 9, 0, tzinfo=UTC)


def test_order_preauthorization_flow(store, settings):
    with store.session() as s:
        draft = make_draft(s, "Plan: Order an MRI of the left knee.", settings)
        (order,) = tasks.tasks_from_draft(s, draft, options=OPTS, now=NOW)
        with pytest.raises(ConflictError, match="cannot go from preauth_needed to done"):
            tasks.set_task_status(s, order.id, "done", actor="alice")
        for st in ("preauth_requested", "preauth_denied", "preauth_requested", "preauthorized",
                   "ordered", "done"):
            tasks.set_task_status(s, order.id, st, actor="alice")
        hist = [h.to_status for h in tasks.task_history(s, order.id)]
        assert hist == ["preauth_needed", "preauth_requested", "preauth_denied",
                        "preauth_requested", "preauthorized", "ordered", "done"]


def test_unknown_copy_recipient_waits_for_assignment(store, settings):
    with store.session() as s:
        draft = make_draft(s, "Plan: Please copy Dr. Nobody Known.", settings)
        (copy,) = tasks.tasks_from_draft(s, draft, options=OPTS, now=NOW)
        delivery = s.get(Delivery, copy.delivery_id)
        assert delivery.status == "needs_recipient" and delivery.recipient_id is None
        rec = route.add_recipient(s, "Records Dept", "department", "print")
        route.assign_recipient(s, delivery.id, rec.id, actor="alice")
        assert delivery.status == "pending" and delivery.channel == "print"


def test_referral_sent_closes_refer_task(store, settings):
    with store.session() as s:
        draft = make_draft(s, "Plan: Refer to cardiology.", settings)
        (task,) = tasks.tasks_from_draft(s, draft, options=OPTS, now=NOW)
        referrals.advance(s, task.referral_id, "sent", actor="alice", now=NOW)
        assert task.status == "done"


def test_owner_and_task_list(store, settings):
    with store.session() as s:
        draft = make_draft(s, DICTATION, settings)
        made = tasks.tasks_from_draft(s, draft, options=OPTS, now=NOW)
        tasks.assign_task(s, made[0].id, "alice", actor="alice")
        assert [t.id for t in tasks.task_list(s, owner="alice")] == [made[0].id]
        assert len(tasks.task_list(s, physician_ids=["dr-smith"])) == 4
        assert tasks.task_list(s, physician_ids=["dr-patel"]) == []
        assert tasks.is_overdue(made[0], today=date(2027, 5, 1))
