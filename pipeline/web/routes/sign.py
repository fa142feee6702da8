"""Signing and addenda (physicians, with a re-entered password)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from pipeline.core.store import open_store
from pipeline.review import signing
from pipeline.review import versions as wf
from pipeline.review.users import UserInfo
from pipeline.web.auth import csrf_protect, get_settings_dep, require_roles

__all__ = ["router"]

router = APIRouter()


@router.post("/drafts/{draft_id}/sign", dependencies=[Depends(csrf_protect)])
def sign(
    request: Request,
    draft_id: str,
    password: str = Form(...),
    user: UserInfo = Depends(require_roles("physician")),
) -> Response:
    """Sign the draft; the signed text is final and the outputs are rendered again."""
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        draft = wf.load_draft(s, user, draft_id, action="sign")
        result = signing.sign_draft(s, settings, user, draft, password)
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
