"""Signing: re-entered password, only the draft's physician, immutable signed text (in code
and in the database), addenda with their own signature, outputs rendered from signed text."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DatabaseError

from pipeline.core import files
from pipeline.core.db.core import AuditEvent, DraftRow
from pipeline.core.db.review import Addendum, DraftAccuracy, Signature
from pipeline.core.errors import ConflictError, PermissionDeniedError
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.review import signing
from pipeline.review import versions as wf
from pipeline.review.users import create_user
from pipeline.web.seed import add_draft

PASSWORD = "correct-horse-9"
TEXT = (
    "Subjective: the patient reports cough for three days.\n\n"
    "Assessment: acute bronchitis.\n\n"
    "Plan: rest and fluids. Follow up in two weeks.\n"
)


@pytest.fixture
def world(settings: Settings):  # type: ignore[no-untyped-def]
    store = open_store(settings)
    with store.session() as s:
        sec = create_user(s, "sec", PASSWORD, "secretary", ["dr-smith"])
        smith = create_user(s, "smith", PASSWORD, "physician", ["dr-smith"])
        patel = create_user(s, "patel", PASSWORD, "physician", ["dr-patel"])
        draft_id = add_draft(s, text=TEXT, segments=[], physician_id="dr-smith",
                             patient_name="Test Patient", mrn="MRN-SIGN",
                             document_type="progress_note")
        draft = s.get(DraftRow, draft_id)
        wf.claim(s, sec, draft)
        wf.save_text(s, sec, draft, TEXT.replace("three days", "3 days"), 1)
        wf.send_for_signature(s, sec, draft)
    return {"settings": settings, "store": store, "sec": sec, "smith": smith, "patel": patel,
            "draft": draft_id}


def _sign(world, user, password: str = PASSWORD):  # type: ignore[no-untyped-def]
    with world["store"].session() as s:
        draft = s.get(DraftRow, world["draft"])
        return signing.sign_draft(s, world["settings"], user, draft, password)


def test_wrong_password_does_not_sign_and_is_audited(world) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PermissionDeniedError, match="password is wrong"):
        _sign(world, world["smith"], "not-my-password")
    with world["store"].session() as s:
        assert s.get(DraftRow, world["draft"]).status == "awaiting_signature"
        ev = s.scalars(select(AuditEvent).where(AuditEvent.action == "sign")).one()
        assert ev.outcome == "failed" and ev.actor == "smith"


@pytest.mark.parametrize("who", ["sec", "patel"])
def test_only_the_drafts_physician_signs(world, who: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PermissionDeniedError):
        _sign(world, world[who])
    with world["store"].session() as s:
        assert s.get(DraftRow, world["draft"]).status == "awaiting_signature"


def test_sign_stores_signature_accuracy_and_outputs(world) -> None:  # type: ignore[no-untyped-def]
    result = _sign(world, world["smith"])
    with world["store"].session() as s:
        draft = s.get(DraftRow, world["draft"])
        assert draft.status == "signed"
        sig = s.scalars(select(Signature).where(Signature.draft_id == draft.id)).one()
        assert sig.username == "smith" and sig.version == 2
        assert sig.text_sha256 == signing.text_sha256(draft.text)
        acc = s.get(DraftAccuracy, draft.id)
        # "three" -> "3": one substitution against the signed text.
        assert acc.substitutions == 1 and acc.wer == pytest.approx(1 / acc.reference_words)
    if importlib.util.find_spec("pipeline.documents.render") is not None:
        assert result.problems == [], result.problems
        assert Path(result.outputs["docx"]).is_file()
        signed_txt = files.read_bytes(Path(result.outputs["txt"]), world["settings"]).decode()
        assert "3 days" in signed_txt and "three days" not in signed_txt
    else:
        assert any("render" in p for p in result.problems)


def test_signed_text_is_immutable(world) -> None:  # type: ignore[no-untyped-def]
    _sign(world, world["smith"])
    with world["store"].session() as s:
        draft = s.get(DraftRow, world["draft"])
        with pytest.raises(ConflictError, match="signed"):
            wf.save_text(s, world["sec"], draft, "changed\n", None)
        with pytest.raises(ConflictError):
            _sign(world, world["smith"])
    # The database refuses too, whoever writes (a trigger from migration 0002_review).
    with pytest.raises(DatabaseError, match="immutable"), world["store"].session() as s:
        s.execute(update(DraftRow).where(DraftRow.id == world["draft"]).values(text="forged"))
    with pytest.raises(DatabaseError, match="append-only"), world["store"].session() as s:
        s.execute(delete(Signature))
    with pytest.raises(DatabaseError, match="append-only"), world["store"].session() as s:
        s.execute(text("UPDATE signatures SET username = 'mallory'"))
    with world["store"].session() as s:
        assert "forged" not in s.get(DraftRow, world["draft"]).text
        # Status changes (delivery) are still allowed.
        s.execute(update(DraftRow).where(DraftRow.id == world["draft"])
                  .values(status="delivered"))


def test_addendum_has_its_own_signature(world) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConflictError, match="signed documents"), world["store"].session() as s:
        signing.add_addendum(s, world["settings"], world["smith"],
                             s.get(DraftRow, world["draft"]), "Too early.", PASSWORD)
    _sign(world, world["smith"])
    with world["store"].session() as s:
        draft = s.get(DraftRow, world["draft"])
        with pytest.raises(PermissionDeniedError):
            signing.add_addendum(s, world["settings"], world["smith"], draft,
                                 "Late result: chest X-ray clear.", "wrong-password")
    with world["store"].session() as s:
        draft = s.get(DraftRow, world["draft"])
        before = draft.text
        result = signing.add_addendum(s, world["settings"], world["smith"], draft,
                                      "Late result: chest X-ray clear.", PASSWORD)
    with world["store"].session() as s:
        add = s.scalars(select(Addendum)).one()
        sigs = s.scalars(select(Signature).order_by(Signature.id)).all()
        assert [x.addendum_id for x in sigs] == [None, add.id]
        assert sigs[1].text_sha256 == signing.text_sha256("Late result: chest X-ray clear.")
        assert s.get(DraftRow, world["draft"]).text == before
    if result.outputs:
        assert "chest X-ray clear" in files.read_bytes(Path(result.outputs["txt"]),
                                                  world["settings"]).decode()
