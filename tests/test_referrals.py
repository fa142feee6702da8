"""The referral tracker: full flow with history, documents, per-state due dates, overdue
highlighting, illegal moves."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.core import audit
from pipeline.core.db.core import DictationRow, DraftRow
from pipeline.core.errors import ConflictError
from pipeline.core.store import open_store
from pipeline.secretary import referrals, route

NOW = datetime(2027, 4, 5, 14, 0, tzinfo=UTC)


@pytest.fixture
def store(settings):
    return open_store(settings)


def _draft(s) -> str:
    did = uuid.uuid4().hex
    s.add(DictationRow(id=did, sha256=did * 2, physician_id="dr-smith"))
    draft = DraftRow(id=uuid.uuid4().hex, dictation_id=did, physician_id="dr-smith",
                     document_type="referral_letter", audio_sha256=did * 2)
    s.add(draft)
    s.flush()
    return draft.id


def test_full_flow_with_documents_and_due_dates(store):
    with store.session() as s:
        draft_id = _draft(s)
        rec = route.add_recipient(s, "Endocrine Clinic", "practice", "email",
                                  "endo@clinic.example", specialty="endocrinology")
        ref = referrals.create_referral(s, "endocrinology", draft_id=draft_id,
                                        physician_id="dr-smith", mrn="MRN-9", now=NOW,
                                        actor="alice")
        assert ref.due_at.replace(tzinfo=UTC) == NOW + timedelta(days=2)
        t = NOW + timedelta(days=1)
        referrals.advance(s, ref.id, "sent", actor="alice", recipient_id=rec.id, now=t)
        assert ref.due_at.replace(tzinfo=UTC) == t + timedelta(days=7)
        referrals.advance(s, ref.id, "accepted", actor="alice", now=t)
        appt = datetime(2027, 5, 3, 10, tzinfo=UTC)
        with pytest.raises(ConflictError, match="needs the appointment date"):
            referrals.advance(s, ref.id, "appointment_booked", actor="alice", now=t)
        referrals.advance(s, ref.id, "appointment_booked", actor="alice", appointment_at=appt,
                          now=t)
        assert ref.due_at.replace(tzinfo=UTC) == appt + timedelta(days=14)
        with pytest.raises(ConflictError, match="attach the specialist's report"):
            referrals.advance(s, ref.id, "report_received", actor="bob", now=t)
        referrals.attach_document(s, ref.id, "report", actor="bob", path="/srv/in/report.pdf",
                                  name="Endocrinology report")
        referrals.advance(s, ref.id, "report_received", actor="bob", now=t)
        referrals.advance(s, ref.id, "closed", actor="bob", now=t)
        assert ref.due_at is None and not referrals.is_overdue(ref, t + timedelta(days=365))
        assert [h.to_status for h in referrals.history(s, ref.id)] == [
            "requested", "sent", "accepted", "appointment_booked", "report_received", "closed"]
        (view,) = referrals.referral_board(s, include_closed=True, now=t)
        assert [d.role for d in view.documents] == ["referral_letter", "report"]
        assert view.recipient.name == "Endocrine Clinic"
        assert audit.verify(s).ok


def test_overdue_highlighted_first(store):
    with store.session() as s:
        a = referrals.create_referral(s, "cardiology", physician_id="dr-smith", now=NOW)
        b = referrals.create_referral(s, "dermatology", physician_id="dr-smith",
                                      now=NOW + timedelta(days=3))
        c = referrals.create_referral(s, "neurology", physician_id="dr-patel", now=NOW)
        referrals.advance(s, c.id, "sent", actor="alice", now=NOW)
        at = NOW + timedelta(days=4)
        board = referrals.referral_board(s, now=at)
        assert [(v.referral.id, v.overdue) for v in board] == [(a.id, True), (b.id, False),
                                                                (c.id, False)]
        assert [v.referral.id for v in referrals.referral_board(
            s, physician_ids=["dr-patel"], now=at)] == [c.id]
        assert referrals.is_overdue(c, NOW + timedelta(days=8))


@pytest.mark.parametrize(("path", "bad"), [
    ([], "accepted"),
    (["sent"], "closed"),
    (["cancelled"], "sent"),
    (["sent", "declined"], "accepted"),
])
def test_illegal_moves(store, path, bad):
    with store.session() as s:
        ref = referrals.create_referral(s, "cardiology", now=NOW)
        for st in path:
            referrals.advance(s, ref.id, st, actor="alice", now=NOW)
        with pytest.raises(ConflictError, match="cannot go from"):
            referrals.advance(s, ref.id, bad, actor="alice", now=NOW)


def test_declined_can_be_requested_again(store):
    with store.session() as s:
        ref = referrals.create_referral(s, "cardiology", now=NOW)
        for st in ("sent", "declined", "requested", "sent"):
            referrals.advance(s, ref.id, st, actor="alice", now=NOW)
        assert ref.status == "sent"
