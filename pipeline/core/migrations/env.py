"""Alembic environment: runs against the connection given by ``pipeline.core.store.migrate``."""

from __future__ import annotations

import importlib
import pkgutil

from alembic import context
from sqlalchemy import create_engine

import pipeline.core.db
from pipeline.core.db.base import Base

# Register every table module in pipeline/core/db/ (core, review, schedule, ...).
for _mod in pkgutil.iter_modules(pipeline.core.db.__path__):
    importlib.import_module(f"pipeline.core.db.{_mod.name}")

config = context.config
target_metadata = Base.metadata


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.begin() as conn:
            context.configure(
                connection=conn, target_metadata=target_metadata, render_as_batch=True
            )
            context.run_migrations()
        return
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    context.run_migrations()


run()
