"""The editor: draft text beside the audio, saving versions, diff, send for signature."""

from __future__ import annotations

import mimetypes
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy import select

from pipeline.core import audit
from pipeline.core.db.core import DictationRow, DraftRow, TranscriptRow
from pipeline.core.db.review import DraftVersion, Signature
from pipeline.core.errors import NotFoundError
from pipeline.core.store import open_store
from pipeline.review import versions as wf
from pipeline.review.signing import signed_text_with_addenda
from pipeline.review.users import UserInfo
from pipeline.web.auth import csrf_protect, current_user, get_settings_dep
from pipeline.web.templating import STATUS_LABELS, render
from pipeline.web.wordmap import LOW_CONFIDENCE, map_words, word_diff, words_html

__all__ = ["router", "editor_context"]

router = APIRouter()


def _issues(draft: DraftRow) -> dict[str, Any]:
    document = draft.document or {}
    header = document.get("header") or {}
    mismatches = []
    for key, field in header.items():
        if isinstance(field, dict) and field.get("conflict"):
            mismatches.append({"field": key.replace("_", " "), "value": field.get("value"),
                               "source": field.get("source"), "dictated": field.get("conflict")})
    return {
        "missing": [m.replace("_", " ") for m in document.get("missing") or []],
        "mismatches": mismatches,
        "instructions": document.get("instructions") or [],
        "flags": list(draft.flags or []),
    }


def editor_context(session: Any, user: UserInfo, draft: DraftRow, *, claim: bool) -> dict[str, Any]:
    """Everything the editor page shows for ``draft`` (claims it when ``claim``)."""
    editable = wf.may_edit(user, draft)
    state = wf.claim(session, user, draft) if (claim and editable) else \
        wf.claim_state(session, user, draft.id)
    versions = session.execute(
        select(DraftVersion.version, DraftVersion.author, DraftVersion.created_at)
        .where(DraftVersion.draft_id == draft.id).order_by(DraftVersion.version)
    ).all()
    base_text = session.scalar(
        select(DraftVersion.text).where(DraftVersion.draft_id == draft.id,
                                        DraftVersion.version == 1)
    )
    segments = session.scalar(
        select(TranscriptRow.segments).where(TranscriptRow.dictation_id == draft.dictation_id)
        .order_by(TranscriptRow.id.desc()).limit(1)
    ) or []
    dictation = session.get(DictationRow, draft.dictation_id)
    tokens = map_words(draft.text, base_text if base_text is not None else draft.text,
                       segments, list(draft.corrections or []))
    signatures = session.execute(
        select(Signature.username, Signature.signed_at, Signature.version,
               Signature.text_sha256).where(Signature.draft_id == draft.id,
                                            Signature.addendum_id.is_(None))
    ).all()
    return {
        "draft": draft,
        "status_label": STATUS_LABELS.get(draft.status, draft.status),
        "words_html": words_html(tokens),
        "flagged": sum(1 for t in tokens if t.is_word and t.flagged),
        "low_threshold": LOW_CONFIDENCE,
        "versions": versions,
        "current_version": versions[-1].version if versions else 1,
        "claim": state,
        "can_edit": editable and state.mine,
        "claimed_by_other": bool(state.holder and not state.mine),
        "can_submit": user.role == "secretary" and
                      draft.status in ("queued_for_review", "in_review") and state.mine,
        "can_sign": user.role == "physician" and draft.status == "awaiting_signature" and
                    draft.physician_id in user.physician_ids,
        "can_addend": user.role == "physician" and draft.status in ("signed", "delivered") and
                      draft.physician_id in user.physician_ids,
        "signatures": signatures,
        "addenda": signed_text_with_addenda(session, draft),
        "has_audio": bool(dictation and dictation.audio_path and
                          Path(dictation.audio_path).is_file()),
        "duration_s": dictation.duration_s if dictation else None,
        "issues": _issues(draft),
    }


@router.get("/drafts/{draft_id}")
def editor(request: Request, draft_id: str, user: UserInfo = Depends(current_user),
           saved: int = 0, signed: str = "", addendum: int = 0) -> Response:
    """The editor page for one draft (claims it for editing when the role may edit)."""
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        draft = wf.load_draft(s, user, draft_id)
        audit.record(s, actor=user.username, action="view", object_type="draft",
                     object_id=draft.id, patient_ref=draft.mrn)
        ctx = editor_context(s, user, draft, claim=True)
    ctx.update({"title": f"Draft {draft_id[:8]}", "saved": saved, "signed": signed,
                "addendum_added": addendum})
    return render(request, "editor.html", ctx)


@router.post("/drafts/{draft_id}/save", dependencies=[Depends(csrf_protect)])
def save(
    request: Request,
    draft_id: str,
    user: UserInfo = Depends(current_user),
    text: str = Form(...),
    base_version: int | None = Form(None),
    action: str = Form("save"),
) -> Response:
    """Save the text as a new version; with ``action=submit`` also send it for signature."""
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        draft = wf.load_draft(s, user, draft_id, action="edit")
        version = wf.save_text(s, user, draft, text, base_version)
        if action == "submit":
            wf.send_for_signature(s, user, draft)
    if action == "submit":
        return RedirectResponse(f"/worklist?sent={draft_id}", status_code=303)
    return RedirectResponse(f"/drafts/{draft_id}?saved={version}", status_code=303)


@router.post("/drafts/{draft_id}/release", dependencies=[Depends(csrf_protect)])
def release(request: Request, draft_id: str, user: UserInfo = Depends(current_user)) -> Response:
    """Give up the edit lock and go back to the worklist."""
    with open_store(get_settings_dep(request)).session() as s:
        draft = wf.load_draft(s, user, draft_id)
        wf.release(s, user, draft)
    return RedirectResponse("/worklist", status_code=303)


@router.post("/drafts/{draft_id}/claim", dependencies=[Depends(csrf_protect)])
def renew_claim(request: Request, draft_id: str,
                user: UserInfo = Depends(current_user)) -> Response:
    """Keep the edit lock while the editor is in use (the page calls this every few minutes)."""
    with open_store(get_settings_dep(request)).session() as s:
        draft = wf.load_draft(s, user, draft_id, action="claim")
        if not wf.may_edit(user, draft):
            return Response(status_code=409)
        state = wf.claim(s, user, draft)
    if not state.mine:
        return Response(f"claimed by {state.holder}", status_code=409, media_type="text/plain")
    return Response(status_code=204)


@router.get("/drafts/{draft_id}/audio")
def audio(request: Request, draft_id: str, user: UserInfo = Depends(current_user)) -> Response:
    """The dictation's audio (HTTP Range requests supported); access-checked and audited."""
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        draft = wf.load_draft(s, user, draft_id, action="audio_play")
        dictation = s.get(DictationRow, draft.dictation_id)
        path = Path(dictation.audio_path) if dictation and dictation.audio_path else None
        if path is None or not path.is_file():
            raise NotFoundError("The audio of this dictation is no longer on disk.")
        rng = request.headers.get("range", "")
        # A browser fetches the start when the page loads (and ranges while seeking): record
        # each fresh fetch of the file; the player reports real playback (audio_play).
        if not rng or rng.replace(" ", "").startswith("bytes=0-"):
            audit.record(s, actor=user.username, action="audio_fetch", object_type="draft",
                         object_id=draft.id, patient_ref=draft.mrn)
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media, headers={"Cache-Control": "private, no-store"})


@router.post("/drafts/{draft_id}/audio/played", dependencies=[Depends(csrf_protect)])
def audio_played(request: Request, draft_id: str,
                 user: UserInfo = Depends(current_user)) -> Response:
    """The editor's player reports that playback started (audited as ``audio_play``)."""
    with open_store(get_settings_dep(request)).session() as s:
        draft = wf.load_draft(s, user, draft_id, action="audio_play")
        audit.record(s, actor=user.username, action="audio_play", object_type="draft",
                     object_id=draft.id, patient_ref=draft.mrn)
    return Response(status_code=204)


@router.get("/drafts/{draft_id}/diff")
def diff(request: Request, draft_id: str, a: int = 1, b: int = 0,
         user: UserInfo = Depends(current_user)) -> Response:
    """Word diff between two saved versions (default: first and newest)."""
    with open_store(get_settings_dep(request)).session() as s:
        draft = wf.load_draft(s, user, draft_id)
        texts = dict(s.execute(select(DraftVersion.version, DraftVersion.text)
                               .where(DraftVersion.draft_id == draft.id)).all())
        if not texts:
            texts = {1: draft.text}
        newest = max(texts)
        b = b or newest
        if a not in texts or b not in texts:
            raise NotFoundError(f"Version {a if a not in texts else b} does not exist; "
                                f"expected 1 to {newest}.")
        audit.record(s, actor=user.username, action="view_diff", object_type="draft",
                     object_id=draft.id, patient_ref=draft.mrn, detail={"a": a, "b": b})
        ctx = {"title": f"Changes in draft {draft_id[:8]}", "draft": draft, "a": a, "b": b,
               "versions": sorted(texts), "chunks": word_diff(texts[a], texts[b])}
    return render(request, "diff.html", ctx)


_EXPORT_TYPES = {
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "pdf": "application/pdf",
    "txt": "text/plain; charset=utf-8",
    "fhir": "application/fhir+json",
    "hl7": "application/hl7-v2",
}


@router.get("/drafts/{draft_id}/outputs/{kind}")
def export(request: Request, draft_id: str, kind: str,
           user: UserInfo = Depends(current_user)) -> Response:
    """Download one rendered output (docx, pdf, txt, fhir, hl7); access-checked and audited."""
    with open_store(get_settings_dep(request)).session() as s:
        draft = wf.load_draft(s, user, draft_id, action="export")
        raw = (draft.outputs or {}).get(kind)
        path = Path(raw) if raw and kind in _EXPORT_TYPES else None
        if path is None or not path.is_file():
            raise NotFoundError(f"No {kind!r} output exists for this draft.")
        audit.record(s, actor=user.username, action="export", object_type="draft",
                     object_id=draft.id, patient_ref=draft.mrn,
                     detail={"kind": kind, "status": draft.status})
    name = f"{draft_id[:8]}-{'signed' if draft.status in ('signed', 'delivered') else 'draft'}"
    suffix = {"fhir": ".fhir.json", "hl7": ".hl7"}.get(kind, f".{kind}")
    return FileResponse(path, media_type=_EXPORT_TYPES[kind], filename=name + suffix)
