"""The editor: draft text beside the audio, saving versions, diff, send for signature."""

from __future__ import annotations

import mimetypes
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from markupsafe import Markup
from sqlalchemy import select

from pipeline.core import audit, files
from pipeline.core.db.core import DictationRow, DraftRow, Physician, TranscriptRow
from pipeline.core.db.review import DraftVersion, Signature
from pipeline.core.errors import NotFoundError
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.documents.header import HEADER_LABELS, describe_mismatch
from pipeline.documents.templates import list_templates
from pipeline.language.normalize.review_flags import review_corrections, unknown_word
from pipeline.language.vocab import get_index
from pipeline.review import autotexts as at
from pipeline.review import learned as learned_mod
from pipeline.review import signoff
from pipeline.review import versions as wf
from pipeline.review.signing import signed_text_with_addenda
from pipeline.review.users import UserInfo
from pipeline.web.auth import csrf_protect, current_user, get_settings_dep
from pipeline.web.templating import STATUS_LABELS, render
from pipeline.web.wordmap import LOW_CONFIDENCE, Token, map_words, word_diff, words_html

__all__ = ["router", "editor_context", "header_form"]

router = APIRouter()

_SPAN = re.compile(r'<span class="(w[^"]*)"([^>]*)>')


def _words_with_ids(tokens: list[Token], unknown: list[bool]) -> Markup:
    """The editor's words with an id per word (``w0``, ``w1``, ...): the sign page's
    blocker links and the word index of ``pipeline.review.signoff`` point at them. Words
    that are neither vocabulary nor English (``unknown``, one per word token) get the
    ``unk`` mark (F2 stops on them)."""
    counter = iter(range(len(unknown)))
    html = str(words_html(tokens))  # every piece of text was escaped there

    def _open(m: re.Match[str]) -> str:
        n = next(counter)
        if unknown[n]:
            return (f'<span class="{m.group(1)} unk"{m.group(2)} id="w{n}" '
                    'title="Not a known word: check it">')
        return f'<span class="{m.group(1)}"{m.group(2)} id="w{n}">'

    return Markup(_SPAN.sub(_open, html))


def _issues(draft: DraftRow) -> dict[str, Any]:
    document = draft.document or {}
    header = document.get("header") or {}
    mismatches = []
    for key, field in header.items():
        if isinstance(field, dict) and field.get("conflict"):
            mismatches.append({"key": key, "field": key.replace("_", " "),
                               "value": field.get("value"),
                               "source": field.get("source"), "dictated": field.get("conflict"),
                               "how": describe_mismatch(key, field.get("value"),
                                                        field.get("conflict"))})
    return {
        "missing": [m.replace("_", " ") for m in document.get("missing") or []],
        "mismatches": mismatches,
        "instructions": document.get("instructions") or [],
        "flags": list(draft.flags or []),
    }


def header_form(session: Any, settings: Settings, draft: DraftRow) -> dict[str, Any]:
    """The header as the correction form shows it: current values, document types and the
    physicians a draft may be reassigned to."""
    dictation = session.get(DictationRow, draft.dictation_id)
    meta = dict(dictation.meta or {}) if dictation else {}
    physicians = sorted(set(settings.physicians) |
                        set(session.scalars(select(Physician.id).where(Physician.active))))
    return {
        "values": {
            "patient_name": meta.get("patient_name") or draft.patient_name or "",
            "date_of_birth": meta.get("date_of_birth") or "",
            "mrn": meta.get("mrn") or draft.mrn or "",
            "date_of_service": meta.get("date_of_service") or "",
            "document_type": draft.document_type,
            "physician_id": draft.physician_id or "",
        },
        "labels": {**HEADER_LABELS, "physician_id": "Physician (reassign)",
                   "document_type": "Document type"},
        "document_types": sorted(list_templates(settings)),
        "physicians": [p for p in physicians if p != "dr-default"] or physicians,
    }


def editor_context(session: Any, user: UserInfo, draft: DraftRow, *, claim: bool,
                   settings: Settings | None = None) -> dict[str, Any]:
    """Everything the editor page shows for ``draft`` (claims it when ``claim``); with
    ``settings`` also what blocks signing and the header correction form."""
    editable = wf.may_edit(user, draft)
    state = wf.claim(session, user, draft) if (claim and editable) else \
        wf.claim_state(session, user, draft.id)
    # the user's autosaved text (typed, not saved: e.g. before an idle log-out) comes back
    pending = wf.pending_autosave(session, user, draft) if (editable and state.mine) else None
    text = pending.text if pending is not None else draft.text
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
    # command conversions ("period" -> ".") are shown quietly: not marked, F2 skips them
    tokens = map_words(text, base_text if base_text is not None else draft.text,
                       segments, review_corrections(list(draft.corrections or [])))
    signatures = session.execute(
        select(Signature.username, Signature.signed_at, Signature.version,
               Signature.text_sha256).where(Signature.draft_id == draft.id,
                                            Signature.addendum_id.is_(None))
    ).all()
    index = get_index(settings) if settings is not None else None
    unknown = [bool(index is not None and not t.flagged and unknown_word(t.text, index))
               for t in tokens if t.is_word]
    blocking = signoff.blockers(session, settings, draft) if (
        settings is not None and draft.status not in ("signed", "delivered")) else []
    return {
        "draft": draft,
        "status_label": STATUS_LABELS.get(draft.status, draft.status),
        "words_html": _words_with_ids(tokens, unknown),
        "blockers": blocking,
        "header_form": header_form(session, settings, draft) if settings is not None else None,
        "flagged": sum(1 for t in tokens if t.is_word and t.flagged) + sum(unknown),
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
        "text": text,
        "autosave": pending,
        "keys": at.get_keys(session, user.id),
        "autotexts": at.active_autotexts(session, draft.physician_id),
        "learned": learned_mod.learned_changes(
            list(draft.corrections or []),
            base_text if base_text is not None else draft.text, text),
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
        ctx = editor_context(s, user, draft, claim=True, settings=settings)
    ctx.update({"title": f"Draft {draft_id[:8]}", "saved": saved, "signed": signed,
                "idle_seconds": settings.session_idle_minutes * 60,
                "addendum_added": addendum,
                "header_saved": request.query_params.get("header", ""),
                "acknowledged": request.query_params.get("ack", ""),
                "learned_outcome": request.query_params.get("learned", "")})
    return render(request, "editor.html", ctx)


@router.post("/drafts/{draft_id}/header", dependencies=[Depends(csrf_protect)])
async def correct_header(request: Request, draft_id: str,
                         user: UserInfo = Depends(current_user)) -> Response:
    """Correct the header (patient, dates, MRN, document type) and reassign the physician:
    audited, and the draft is rendered again."""
    settings = get_settings_dep(request)
    form = await request.form()
    changes = {k: str(form[k]) for k in wf.HEADER_FIELDS if k in form}
    with open_store(settings).session() as s:
        draft = wf.load_draft(s, user, draft_id, action="header_correct")
        changed = wf.correct_header(s, settings, user, draft, changes)
        visible = user.may_see_physician(draft.physician_id)
    if not visible:  # reassigned to a physician this user does not work for
        return RedirectResponse(f"/worklist?reassigned={draft_id}", status_code=303)
    return RedirectResponse(f"/drafts/{draft_id}?header={len(changed)}#header-card",
                            status_code=303)


@router.post("/drafts/{draft_id}/acknowledge", dependencies=[Depends(csrf_protect)])
def acknowledge(request: Request, draft_id: str, key: str = Form(...),
                back: str = Form("editor"), user: UserInfo = Depends(current_user)) -> Response:
    """Acknowledge a header mismatch or mark a flagged dose/side/drug change reviewed."""
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        draft = wf.load_draft(s, user, draft_id, action="acknowledge")
        signoff.acknowledge(s, settings, user, draft, key)
    target = "sign" if back == "sign" else ""
    return RedirectResponse(f"/drafts/{draft_id}{'/' + target if target else ''}?ack=1",
                            status_code=303)


@router.get("/drafts/{draft_id}/preview")
def preview(request: Request, draft_id: str, user: UserInfo = Depends(current_user)) -> Response:
    """The document as it will print (same structure and wording as the .docx), before it
    is sent for signature or signed."""
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        draft = wf.load_draft(s, user, draft_id, action="preview")
        context = signoff.preview(s, settings, draft)
        audit.record(s, actor=user.username, action="preview", object_type="draft",
                     object_id=draft.id, patient_ref=draft.mrn)
        ctx = {"title": f"Preview {draft_id[:8]}", "draft": draft, "doc": context,
               "blockers": signoff.blockers(s, settings, draft)
               if draft.status not in ("signed", "delivered") else []}
    return render(request, "preview.html", ctx)


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


@router.post("/drafts/{draft_id}/learned/{index}/undo", dependencies=[Depends(csrf_protect)])
def undo_learned(
    request: Request,
    draft_id: str,
    index: int,
    user: UserInfo = Depends(current_user),
    text: str = Form(...),
    base_version: int | None = Form(None),
) -> Response:
    """Put a learned change back to what was heard, in the editor's text (the button submits
    the editor form, so typed text comes along), saved as a new version. When the change is
    no longer in the text, the text is kept as the user's autosave and nothing else changes."""
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        draft = wf.load_draft(s, user, draft_id, action="edit")
        version = learned_mod.undo_learned(s, settings, user, draft, index, text, base_version)
    if version is None:
        return RedirectResponse(f"/drafts/{draft_id}?learned=missing#learned-card",
                                status_code=303)
    return RedirectResponse(f"/drafts/{draft_id}?saved={version}&learned=undone#learned-card",
                            status_code=303)


@router.post("/drafts/{draft_id}/autosave", dependencies=[Depends(csrf_protect)])
def autosave(
    request: Request,
    draft_id: str,
    user: UserInfo = Depends(current_user),
    text: str = Form(...),
    base_version: int | None = Form(None),
) -> Response:
    """Keep the editor's unsaved text (every few seconds of inactivity and before a
    log-out; ``navigator.sendBeacon`` posts here when the page goes away). 204 when kept,
    409 when another user holds the draft."""
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        draft = wf.load_draft(s, user, draft_id, action="edit")
        wf.autosave_text(s, user, draft, text, base_version)
    return Response(status_code=204)


@router.post("/drafts/{draft_id}/autosave/discard", dependencies=[Depends(csrf_protect)])
def discard_autosave(request: Request, draft_id: str,
                     user: UserInfo = Depends(current_user)) -> Response:
    """Throw away the restored autosave and show the last saved version again."""
    with open_store(get_settings_dep(request)).session() as s:
        draft = wf.load_draft(s, user, draft_id)
        wf.discard_autosave(s, user, draft)
        audit.record(s, actor=user.username, action="edit", object_type="draft",
                     object_id=draft.id, patient_ref=draft.mrn,
                     detail={"kind": "autosave_discarded"})
    return RedirectResponse(f"/drafts/{draft_id}", status_code=303)


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
    if files.is_encrypted(path):  # encrypted at rest: served from memory, never from disk
        return _ranged(files.read_bytes(path, settings), rng, media)
    return FileResponse(path, media_type=media, headers={"Cache-Control": "private, no-store"})


def _ranged(data: bytes, rng: str, media: str) -> Response:
    """``data`` as a full (200) or single-range (206) response, as FileResponse serves a
    plain file (the audio player seeks with ranges)."""
    headers = {"Cache-Control": "private, no-store", "Accept-Ranges": "bytes"}
    size = len(data)
    spec = rng.replace(" ", "").removeprefix("bytes=") if rng.startswith("bytes=") else ""
    if not spec or "," in spec:
        return Response(data, media_type=media, headers=headers)
    first, _, last = spec.partition("-")
    try:
        if first:
            start, end = int(first), min(int(last) if last else size - 1, size - 1)
        else:  # a suffix: the last N bytes
            start, end = max(size - int(last), 0), size - 1
    except ValueError:
        return Response(data, media_type=media, headers=headers)
    if start >= size or start > end:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(data[start:end + 1], status_code=206, media_type=media, headers=headers)


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
    # encrypted at rest: decrypted into memory and served from there, never a clear copy
    data = files.read_bytes(path, get_settings_dep(request))
    return Response(data, media_type=_EXPORT_TYPES[kind], headers={
        "Content-Disposition": f'attachment; filename="{name}{suffix}"',
        "Cache-Control": "private, no-store"})
