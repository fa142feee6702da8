"""Auto-texts ("normals") and transcription keys in the browser.

``/autotexts``: the auto-texts a user may use (the practice's and their physicians'), with
create, edit (each edit a new version, old ones kept) and deactivate for those the user may
manage (physicians their own, administrators the practice's): ``pipeline.review.autotexts``.
``/settings/keys``: the user's transcription keys (a preset for USB foot pedals, or one key
per action).
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from pipeline.core.errors import ConflictError
from pipeline.core.store import open_store
from pipeline.review import autotexts as at
from pipeline.review.users import UserInfo
from pipeline.web.auth import csrf_protect, current_user, get_settings_dep
from pipeline.web.templating import register_nav, render

__all__ = ["router"]

router = APIRouter()

register_nav("Auto-texts", "/autotexts")
register_nav("Keys", "/settings/keys")


def _list_page(request: Request, user: UserInfo, *, notice: str = "", error: str = "",
               status_code: int = 200) -> Response:
    with open_store(get_settings_dep(request)).session() as s:
        texts = at.list_autotexts(s, user)
    return render(request, "autotexts.html", {
        "title": "Auto-texts", "autotexts": texts, "owners": at.owners_for(user),
        "manageable": {t.id for t in texts if at.may_manage(user, t.owner)},
        "notice": notice, "error": error,
    }, status_code=status_code)


@router.get("/autotexts")
def autotexts_page(request: Request, user: UserInfo = Depends(current_user),
                   saved: str = "") -> Response:
    """The auto-texts this user may use, and forms for those they may manage."""
    return _list_page(request, user, notice=f"Auto-text “{saved}” saved." if saved else "")


@router.post("/autotexts", dependencies=[Depends(csrf_protect)])
def create(request: Request, user: UserInfo = Depends(current_user), owner: str = Form(...),
           name: str = Form(...), trigger: str = Form(...), body: str = Form(...)) -> Response:
    """Create an auto-text (version 1)."""
    try:
        with open_store(get_settings_dep(request)).session() as s:
            info = at.create_autotext(s, user, owner=owner, name=name, trigger=trigger,
                                      body=body)
    except ConflictError as exc:
        return _list_page(request, user, error=str(exc), status_code=400)
    return RedirectResponse(f"/autotexts?saved={info.trigger}", status_code=303)


@router.get("/autotexts/{autotext_id}")
def autotext_page(request: Request, autotext_id: int,
                  user: UserInfo = Depends(current_user)) -> Response:
    """One auto-text: the edit form (when the user may manage it) and every version."""
    with open_store(get_settings_dep(request)).session() as s:
        row = at.get_autotext(s, autotext_id)
        if row.owner != at.PRACTICE and not user.may_see_physician(row.owner):
            return _list_page(request, user, error="That auto-text belongs to a physician "
                              "you do not work for.", status_code=403)
        ctx = {"title": f"Auto-text {row.name}", "t": row,
               "versions": at.autotext_versions(s, autotext_id),
               "can_manage": at.may_manage(user, row.owner)}
        return render(request, "autotext.html", ctx)


@router.post("/autotexts/{autotext_id}", dependencies=[Depends(csrf_protect)])
def edit(request: Request, autotext_id: int, user: UserInfo = Depends(current_user),
         name: str = Form(...), trigger: str = Form(...), body: str = Form(...)) -> Response:
    """Edit an auto-text: a new version."""
    try:
        with open_store(get_settings_dep(request)).session() as s:
            info = at.update_autotext(s, user, autotext_id, name=name, trigger=trigger,
                                      body=body)
    except ConflictError as exc:
        return _list_page(request, user, error=str(exc), status_code=400)
    return RedirectResponse(f"/autotexts?saved={info.trigger}", status_code=303)


@router.post("/autotexts/{autotext_id}/active", dependencies=[Depends(csrf_protect)])
def activate(request: Request, autotext_id: int, user: UserInfo = Depends(current_user),
             active: int = Form(...)) -> Response:
    """Deactivate (``active=0``) or reactivate (``active=1``) an auto-text."""
    try:
        with open_store(get_settings_dep(request)).session() as s:
            info = at.set_active(s, user, autotext_id, bool(active))
    except ConflictError as exc:
        return _list_page(request, user, error=str(exc), status_code=400)
    return RedirectResponse(f"/autotexts?saved={info.trigger}", status_code=303)


@router.get("/settings/keys")
def keys_page(request: Request, user: UserInfo = Depends(current_user),
              saved: int = 0) -> Response:
    """The user's transcription keys and the presets."""
    with open_store(get_settings_dep(request)).session() as s:
        keys = at.get_keys(s, user.id)
    return render(request, "keys.html", {
        "title": "Transcription keys", "keys": keys, "actions": at.KEY_ACTIONS,
        "presets": at.KEY_PRESETS, "saved": saved, "error": ""})


@router.post("/settings/keys", dependencies=[Depends(csrf_protect)])
async def save_keys(request: Request, user: UserInfo = Depends(current_user)) -> Response:
    """Store the user's keys (a preset, or ``custom`` with one key per action)."""
    form = await request.form()
    values = {k: str(v) for k, v in form.items() if k != "csrf_token"}
    try:
        with open_store(get_settings_dep(request)).session() as s:
            at.save_keys(s, user, values)
    except ConflictError as exc:
        with open_store(get_settings_dep(request)).session() as s:
            keys = at.get_keys(s, user.id)
        return render(request, "keys.html", {
            "title": "Transcription keys", "keys": keys, "actions": at.KEY_ACTIONS,
            "presets": at.KEY_PRESETS, "saved": 0, "error": str(exc)}, status_code=400)
    return RedirectResponse("/settings/keys?saved=1", status_code=303)
