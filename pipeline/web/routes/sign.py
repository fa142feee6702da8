"""Signing and addenda (physicians, with a re-entered password)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from pipeline.core import audit
from pipeline.core.store import open_store
from pipeline.review import signing, signoff
from pipeline.review import versions as wf
from pipeline.review.users import UserInfo
from pipeline.web.auth import csrf_protect, get_settings_dep, require_roles
from pipeline.web.templating import STATUS_LABELS, render

__all__ = ["router"]

router = APIRouter()


def _sign_page(request: Request, user: UserInfo, draft_id: str, *,
               refused: bool = False, acknowledged: bool = False) -> Response:
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        draft = wf.load_draft(s, user, draft_id, action="view")
        blocking = signoff.blockers(s, settings, draft) \
            if draft.status not in ("signed", "delivered") else []
        audit.record(s, actor=user.username, action="view", object_type="draft",
                     object_id=draft.id, patient_ref=draft.mrn, detail={"page": "sign"})
        ctx = {
            "title": f"Sign {draft_id[:8]}", "draft": draft, "blockers": blocking,
            "status_label": STATUS_LABELS.get(draft.status, draft.status),
            "can_sign": draft.status == "awaiting_signature" and
                        draft.physician_id in user.physician_ids,
            "refused": refused, "acknowledged": acknowledged,
        }
    return render(request, "sign.html", ctx, status_code=409 if refused else 200)


@router.get("/drafts/{draft_id}/sign")
def sign_page(request: Request, draft_id: str, ack: int = 0,
              user: UserInfo = Depends(require_roles("physician"))) -> Response:
    """What blocks signing (each a link to its place in the editor), the preview, and the
    password form once nothing blocks."""
    return _sign_page(request, user, draft_id, acknowledged=bool(ack))


@router.post("/drafts/{draft_id}/sign", dependencies=[Depends(csrf_protect)])
def sign(
    request: Request,
    draft_id: str,
    password: str = Form(...),
    user: UserInfo = Depends(require_roles("physician")),
) -> Response:
    """Sign the draft; the signed text is final and the outputs are rendered again. Refused
    (409, the sign page with the list) while anything blocks signing."""
    settings = get_settings_dep(request)
    try:
        with open_store(settings).session() as s:
            draft = wf.load_draft(s, user, draft_id, action="sign")
            result = signing.sign_draft(s, settings, user, draft, password)
    except signoff.SignBlockedError:
        return _sign_page(request, user, draft_id, refused=True)
    flag = "1" if not result.problems else "partial"
    return RedirectResponse(f"/drafts/{draft_id}?signed={flag}", status_code=303)


@router.post("/drafts/{draft_id}/addenda", dependencies=[Depends(csrf_protect)])
def addendum(
    request: Request,
    draft_id: str,
    text: str = Form(...),
    password: str = Form(...),
    user: UserInfo = Depends(require_roles("physician")),
) -> Response:
    """Add a signed addendum to a signed document."""
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        draft = wf.load_draft(s, user, draft_id, action="addendum")
        signing.add_addendum(s, settings, user, draft, text, password)
    return RedirectResponse(f"/drafts/{draft_id}?addendum=1", status_code=303)


@router.post("/drafts/{draft_id}/return", dependencies=[Depends(csrf_protect)])
def return_to_review(
    request: Request,
    draft_id: str,
    user: UserInfo = Depends(require_roles("physician")),
) -> Response:
    """Send a draft awaiting signature back to the secretaries for more work."""
    with open_store(get_settings_dep(request)).session() as s:
        draft = wf.load_draft(s, user, draft_id, action="return_to_review")
        wf.return_to_review(s, user, draft)
    return RedirectResponse("/worklist", status_code=303)
