"""Per-physician accuracy trend: WER of drafts against the signed text (inline SVG chart)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from sqlalchemy import select

from pipeline.core import audit
from pipeline.core.db.core import Physician
from pipeline.core.store import open_store
from pipeline.review import learning
from pipeline.review.users import UserInfo
from pipeline.web.auth import current_user, get_settings_dep
from pipeline.web.templating import render

__all__ = ["router", "chart"]

router = APIRouter()

_W, _H, _PAD = 640, 220, 36


def chart(points: list[learning.TrendPoint]) -> dict[str, Any]:
    """Coordinates for an SVG line chart of WER over signed drafts (oldest left)."""
    if not points:
        return {"width": _W, "height": _H, "line": "", "dots": [], "ticks": [], "empty": True}
    top = max(0.5, max(p.wer for p in points))
    n = len(points)
    dots = []
    for i, p in enumerate(points):
        x = _PAD + (i * (_W - 2 * _PAD) / (n - 1) if n > 1 else (_W - 2 * _PAD) / 2)
        y = _H - _PAD - (p.wer / top) * (_H - 2 * _PAD)
        dots.append({"x": round(x, 1), "y": round(y, 1), "wer": p.wer,
                     "label": f"{p.signed_at:%Y-%m-%d}: WER {p.wer:.1%}"})
    ticks = []
    for k in range(5):
        v = top * k / 4
        ticks.append({"y": round(_H - _PAD - (v / top) * (_H - 2 * _PAD), 1),
                      "label": f"{v:.0%}"})
    # A moving average over the last five drafts shows the trend under the noise.
    avg = []
    for i in range(n):
        window = points[max(0, i - 4): i + 1]
        v = sum(p.wer for p in window) / len(window)
        avg.append(f"{dots[i]['x']},{round(_H - _PAD - (v / top) * (_H - 2 * _PAD), 1)}")
    return {"width": _W, "height": _H, "pad": _PAD, "empty": False, "dots": dots,
            "line": " ".join(f"{d['x']},{d['y']}" for d in dots), "avg": " ".join(avg),
            "ticks": ticks}


@router.get("/accuracy")
def accuracy(request: Request, physician: str = "",
             user: UserInfo = Depends(current_user)) -> Response:
    """The accuracy trend of one physician (default: the first the user may see)."""
    with open_store(get_settings_dep(request)).session() as s:
        stmt = select(Physician.id).order_by(Physician.id)
        if user.role != "admin":
            stmt = stmt.where(Physician.id.in_(user.physician_ids or ["\x00"]))
        physicians = list(s.scalars(stmt))
        if physician and physician not in physicians:
            audit.record(s, actor=user.username, action="accuracy_view",
                         object_type="physician", object_id=physician[:64], outcome="denied")
            s.commit()
            from pipeline.core.errors import PermissionDeniedError

            raise PermissionDeniedError("You are not assigned to this physician.")
        physician = physician or (physicians[0] if physicians else "")
        points = learning.trend(s, physician) if physician else []
        repeated = learning.repeated_corrections(s, physician) if physician else []
        audit.record(s, actor=user.username, action="accuracy_view", object_type="physician",
                     object_id=physician or None)
    mean = sum(p.wer for p in points) / len(points) if points else None
    return render(request, "accuracy.html", {
        "title": "Accuracy", "physicians": physicians, "physician": physician,
        "points": points, "chart": chart(points), "mean": mean, "repeated": repeated,
        "threshold": learning.REPEAT_THRESHOLD,
    })
