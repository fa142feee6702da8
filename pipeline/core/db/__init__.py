"""Database tables (SQLAlchemy ORM). One module per area; all share ``Base``.

- ``core``: physicians, dictations, transcripts, drafts, audit events (migration 0001).
- other areas (users and review, scheduling, ...) add their own modules and their own
  Alembic revision branching from ``0001_core``; ``store.migrate`` upgrades to all heads.
"""

from pipeline.core.db.base import Base, utcnow

__all__ = ["Base", "utcnow"]
