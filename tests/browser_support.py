"""Shared by the browser tests (Debian chromium driven by Playwright): where their screenshots
go, and taking one."""

from __future__ import annotations

from typing import Any

from pipeline.core.settings import PROJECT_ROOT

#: screenshots of the browser tests, looked at by the people who change the pages
ARTIFACTS = PROJECT_ROOT / "test-artifacts"


def shot(page: Any, name: str) -> None:
    """A full-page screenshot ``test-artifacts/<name>.png``."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
