"""Shared fixtures. Area-specific fixtures live in the area's own test modules.

- ``settings``: a ``Settings`` with a fresh data directory under tmp, tiny.en (the model the
  tests run for real), two physicians.
- ``samples_dir``: the project's ``samples/`` folder (data shipped in this repository).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import pipeline  # noqa: F401  (offline env first)
from pipeline.settings import PROJECT_ROOT, Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings on an empty data directory, using tiny.en on CPU."""
    return Settings(
        data_dir=tmp_path / "var",
        model="tiny.en",
        device="cpu",
        compute_type="int8",
        physicians=["dr-smith", "dr-patel"],
        pdf="never",
        stable_seconds=0.3,
        sidecar_grace_seconds=0.5,
        poll_interval_seconds=0.2,
    )


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return PROJECT_ROOT / "samples"


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT
