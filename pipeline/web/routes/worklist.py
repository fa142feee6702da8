"""The worklist: the queue of drafts a user may see, with search, filters and paging.

One indexed query for the page (only the columns shown, LIMIT/OFFSET) and one count; the
draft's JSON columns are never loaded here, so the page stays fast with 10,000 drafts.

Search: MRN by equality (on PostgreSQL the MRN column is sealed deterministically, so the
database compares sealed values), draft id by prefix, patient name by part. Where the
database holds sealed names (PostgreSQL, ``pipeline.core.db.encrypted``) a LIKE cannot see
them: the names of the drafts the other filters allow are read, opened and matched here,
and their ids go into the query instead (measured: docs/measurements.md).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy import func, select, union

from pipeline.core import audit
from pipeline.core.db.core import DictationRow, DraftRow, Physician
from pipeline.core.db.encrypted import sql_can_search
from pipeline.core.db.review import DraftClaim
from pipeline.core.store import open_store
from pipeline.core.times import as_utc
from pipeline.review.users import UserInfo
from pipeline.web.auth import current_user, get_settings_dep
from pipeline.web.templating import STATUS_LABELS, render

__all__ = ["router", "worklist_rows", "TURNAROUND", "PER_PAGE", "POLL_SECONDS"]

router = APIRouter()

PER_PAGE = 50
#: The worklist table refreshes itself this often (htmx polling of the table partial).
POLL_SECONDS = 10
#: Turnaround targets: a draft older than this is shown overdue.
TURNAROUND = {"stat": timedelta(hours=1), "routine": timedelta(hours=24)}
_OPEN = ("queued_for_review", "in_review", "awaiting_signature")
_STATUS_FILTERS = {
    "open": _OPEN,
    "new": ("queued_for_review",),
    "in_review": ("in_review",),
    "awaiting_signature": ("awaiting_signature",),
    "signed": ("signed",),
    "delivered": ("delivered",),
    "all": (),
}


def _default_status(user: UserInfo) -> str:
    return "awaiting_signature" if user.role == "physician" else "open"


_HEX = re.compile(r"^[0-9a-f]{4,32}$")


def _search_ids(q: str, name_ids: list[str] | None = None) -> Any:
    """Draft ids matching ``q`` as MRN (exact), draft id (prefix) or patient name (part),
    each through an index, never a scan of the drafts table. ``name_ids``: the name matches
    found in Python (sealed names, ``_name_matches``) instead of the LIKE."""
    parts = [select(DraftRow.id).where(DraftRow.mrn == q)]
    low = q.lower()
    if _HEX.match(low):
        parts.append(select(DraftRow.id).where(DraftRow.id >= low,
                                               DraftRow.id < low + "\uffff"))
    if name_ids is not None:
        parts.append(select(DraftRow.id).where(DraftRow.id.in_(name_ids)))
        return union(*parts)
    like = "%" + low.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    parts.append(select(DraftRow.id).where(func.lower(DraftRow.patient_name).like(like,
                                                                                  escape="\\")))
    return union(*parts)


def _name_matches(session: Any, user: UserInfo, status: str, physician: str, doctype: str,
                  priority: str, q: str) -> list[str] | None:
    """Ids of the drafts (within the other filters) whose patient name holds ``q``, matched
    in Python over the opened names; None when the database can search them itself."""
    q = q.strip()
    if not q or sql_can_search(session):
        return None
    low = q.lower()
    stmt = _filtered(select(DraftRow.id, DraftRow.patient_name)
                     .where(DraftRow.patient_name.is_not(None)),
                     user, status, physician, doctype, priority, "")
    return [i for i, name in session.execute(stmt) if name and low in name.lower()]


def _filtered(stmt: Any, user: UserInfo, status: str, physician: str, doctype: str,
              priority: str, q: str, *, ordered: bool = False,
              name_ids: list[str] | None = None) -> Any:
    # For the ordered page query the filter columns are wrapped (``col || ''``) so that
    # SQLite cannot pick a filter index (or the primary key, for search matches) and then
    # read whole rows to sort them: it walks the covering index ix_drafts_queue_order in
    # page order, never touching the table, and stops after one page.
    def c(col: Any) -> Any:
        return col.op("||")("") if ordered else col

    if user.role != "admin":
        stmt = stmt.where(c(DraftRow.physician_id).in_(user.physician_ids or ["\x00"]))
    statuses = _STATUS_FILTERS.get(status, _OPEN)
    if statuses:
        stmt = stmt.where(c(DraftRow.status).in_(statuses))
    if physician:
        stmt = stmt.where(c(DraftRow.physician_id) == physician)
    if doctype:
        stmt = stmt.where(c(DraftRow.document_type) == doctype)
    if priority in ("stat", "routine"):
        stmt = stmt.where(c(DraftRow.priority) == priority)
    q = q.strip()
    if q:
        stmt = stmt.where(c(DraftRow.id).in_(_search_ids(q, name_ids)))
    return stmt


def worklist_rows(
    session: Any, user: UserInfo, *, status: str = "open", physician: str = "",
    doctype: str = "", priority: str = "", q: str = "", page: int = 1,
    per_page: int = PER_PAGE,
) -> tuple[list[dict[str, Any]], int]:
    """One page of the worklist (rows as dicts) and the total number of matching drafts."""
    now = datetime.now(UTC)
    name_ids = _name_matches(session, user, status, physician, doctype, priority, q)
    # A page of ids first, STAT first ('stat' > 'routine') then oldest: the order of index
    # ix_drafts_queue_order, which also holds the filter columns, so SQLite reads the page
    # from the index alone instead of sorting every open draft; then the page's rows.
    id_stmt = _filtered(select(DraftRow.id), user, status, physician, doctype, priority, q,
                        ordered=True, name_ids=name_ids)
    id_stmt = id_stmt.order_by(
        DraftRow.priority.desc(), DraftRow.created_at, DraftRow.id
    ).limit(per_page).offset((max(page, 1) - 1) * per_page)
    page_ids = list(session.scalars(id_stmt))
    found = {
        r.id: r
        for r in session.execute(
            select(DraftRow.id, DraftRow.status, DraftRow.priority, DraftRow.physician_id,
                   DraftRow.document_type, DraftRow.patient_name, DraftRow.mrn,
                   DraftRow.created_at, DraftRow.updated_at)
            .where(DraftRow.id.in_(page_ids))
        )
    } if page_ids else {}
    base = [found[i] for i in page_ids if i in found]
    # Counting: the status/physician indexes cover the plain filters; with a search the
    # matching ids drive the count (wrapped filters), never a walk through whole rows.
    total = session.scalar(
        _filtered(select(func.count()).select_from(DraftRow), user, status, physician,
                  doctype, priority, q, ordered=bool(q.strip()), name_ids=name_ids)
    )
    ids = [r.id for r in base]
    claims: dict[str, str] = {}
    durations: dict[str, float | None] = {}
    if ids:
        for draft_id, username, expires in session.execute(
            select(DraftClaim.draft_id, DraftClaim.username, DraftClaim.expires_at)
            .where(DraftClaim.draft_id.in_(ids))
        ):
            if as_utc(expires) > now:
                claims[draft_id] = username
        for draft_id, duration in session.execute(
            select(DraftRow.id, DictationRow.duration_s)
            .join(DictationRow, DictationRow.id == DraftRow.dictation_id)
            .where(DraftRow.id.in_(ids))
        ):
            durations[draft_id] = duration
    rows = []
    for r in base:
        created = as_utc(r.created_at)
        limit = TURNAROUND.get(r.priority, TURNAROUND["routine"])
        open_ = r.status in _OPEN
        rows.append({
            "id": r.id,
            "status": r.status,
            "status_label": STATUS_LABELS.get(r.status, r.status),
            "priority": r.priority,
            "physician_id": r.physician_id,
            "document_type": r.document_type,
            "patient_name": r.patient_name,
            "mrn": r.mrn,
            "created_at": created,
            "due_at": created + limit,
            "overdue": open_ and now - created > limit,
            "claimed_by": claims.get(r.id),
            "duration_s": durations.get(r.id),
        })
    return rows, int(total or 0)


@router.get("/worklist")
def worklist(
    request: Request,
    user: UserInfo = Depends(current_user),
    status: str = "",
    physician: str = "",
    doctype: str = "",
    priority: str = "",
    q: str = "",
    page: int = 1,
    sent: str = "",
    poll: int = 0,
    seen_stat: str = "",
) -> Response:
    """The worklist page (or only its table for an htmx request). The table polls itself
    every ``POLL_SECONDS`` with its filters (``poll=1``) and the STAT drafts it showed
    (``seen_stat``): a STAT draft not seen before is announced in the page's live region."""
    status = status if status in _STATUS_FILTERS else _default_status(user)
    page = max(1, min(page, 100000))
    settings = get_settings_dep(request)
    with open_store(settings).session() as s:
        rows, total = worklist_rows(s, user, status=status, physician=physician,
                                    doctype=doctype, priority=priority, q=q[:100], page=page)
        pstmt = select(Physician.id).order_by(Physician.id)
        if user.role != "admin":
            pstmt = pstmt.where(Physician.id.in_(user.physician_ids or ["\x00"]))
        physicians = list(s.scalars(pstmt))
        doctypes = sorted(set(s.scalars(select(DraftRow.document_type).distinct())))
        audit.record(s, actor=user.username, action="worklist_view", object_type="worklist",
                     detail={"rows": len(rows), "page": page, "status": status,
                             "search": bool(q), "poll": bool(poll)})
    pages = max(1, (total + PER_PAGE - 1) // PER_PAGE)
    ctx = {
        "title": "Worklist",
        "rows": rows,
        "total": total,
        "page": page,
        "pages": pages,
        "filters": {"status": status, "physician": physician, "doctype": doctype,
                    "priority": priority, "q": q},
        "status_filters": list(_STATUS_FILTERS),
        "physicians": physicians,
        "doctypes": doctypes,
        "now": datetime.now(UTC),
        "sent": sent[:32],
        "poll_seconds": POLL_SECONDS,
        "stat_ids": ",".join(r["id"] for r in rows if r["priority"] == "stat"),
        "new_stat": [],
    }
    if poll:
        seen = set(seen_stat.split(","))
        ctx["new_stat"] = [r for r in rows if r["priority"] == "stat" and r["id"] not in seen
                           and r["status"] in _OPEN]
    if request.headers.get("hx-request") and request.headers.get("hx-target") == "worklist-table":
        return render(request, "_worklist_table.html", ctx)
    return render(request, "worklist.html", ctx)
