"""Task states: the flow of each task kind and the one function that moves a task along it.

Both the task list (``tasks``) and the modules that finish tasks when their work is done
(``referrals``: a referral sent; ``route``: a copy delivered) import this small module, so
none of them imports another.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from pipeline.core import audit
from pipeline.core.db.schedule import Task, TaskHistory
from pipeline.core.errors import ConflictError, NotFoundError

__all__ = ["FLOWS", "FIRST", "FINAL", "set_task_status", "get_task", "add_history"]

_GENERIC = {"open": ("in_progress", "done", "cancelled"),
            "in_progress": ("open", "done", "cancelled"), "done": (), "cancelled": ()}
FLOWS: dict[str, dict[str, tuple[str, ...]]] = {
    "schedule": _GENERIC,
    "refer": _GENERIC,
    "copy": _GENERIC,
    "other": _GENERIC,
    "order": {
        "preauth_needed": ("preauth_requested", "ordered", "cancelled"),  # ordered: none needed
        "preauth_requested": ("preauthorized", "preauth_denied", "cancelled"),
        "preauthorized": ("ordered", "cancelled"),
        "preauth_denied": ("preauth_requested", "cancelled"),
        "ordered": ("done", "cancelled"),
        "done": (),
        "cancelled": (),
    },
}
FIRST = {"order": "preauth_needed"}
FINAL = ("done", "cancelled")


def add_history(session: Session, task: Task, from_status: str | None, to_status: str,
                actor: str, note: str = "") -> None:
    """One line of the task's history (who moved it, from what to what, why)."""
    session.add(TaskHistory(task_id=task.id, from_status=from_status, to_status=to_status,
                            actor=actor, note=note[:500]))


def get_task(session: Session, task_id: int) -> Task:
    """The task with this id; ``NotFoundError`` if there is none."""
    task = session.get(Task, task_id)
    if task is None:
        raise NotFoundError(f"task {task_id} arrived; expected a known task")
    return task


def set_task_status(session: Session, task_id: int, to_status: str, *, actor: str,
                    note: str = "") -> Task:
    """Move a task along its kind's flow; ``ConflictError`` for a move the flow forbids."""
    task = get_task(session, task_id)
    allowed = FLOWS[task.kind].get(task.status, ())
    if to_status not in allowed:
        raise ConflictError(f"task {task.id} ({task.kind}) cannot go from {task.status} to "
                            f"{to_status}; allowed: {', '.join(allowed) or 'nothing'}")
    from_status = task.status
    task.status = to_status
    add_history(session, task, from_status, to_status, actor, note)
    audit.record(session, actor=actor, action="task_status", object_type="task",
                 object_id=str(task.id), detail={"from": from_status, "to": to_status})
    session.flush()
    return task
