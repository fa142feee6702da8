"""The review workbench: a FastAPI app with server-rendered pages (``create_app``)."""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str) -> object:
    if name == "create_app":
        from pipeline.web.app import create_app

        return create_app
    raise AttributeError(name)
