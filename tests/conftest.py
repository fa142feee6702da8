"""Shared fixtures. Area-specific fixtures live in the area's own test modules.

- ``settings``: a ``Settings`` with a fresh data directory under tmp, tiny.en (the model the
  tests run for real), two physicians.
- ``samples_dir``: the project's ``samples/`` folder (data shipped in this repository).
- ``speech``: a real ~4 s dictation rendered with espeak-ng (once per session).
- ``fake_soffice``: makes a misbehaving ``soffice`` executable (a broken LibreOffice install).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pipeline  # noqa: F401  (offline env first)
from pipeline.core.settings import PROJECT_ROOT, Settings


@pytest.fixture(scope="session", autouse=True)
def _keys_outside_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The audit HMAC key and the data key ring live in a session folder (outside every data
    directory), not in the user's ``~/.config/dictation``: a test run leaves no key behind.
    Set in the environment, so the service and CLI processes the tests start use them too."""
    keys = tmp_path_factory.mktemp("keys")
    saved = {k: os.environ.get(k) for k in ("DICTATION_AUDIT_KEY_FILE", "DICTATION_KEY_FILE")}
    os.environ.setdefault("DICTATION_AUDIT_KEY_FILE", str(keys / "audit.key"))
    os.environ.setdefault("DICTATION_KEY_FILE", str(keys / "data.key"))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


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


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ~4 s dictation rendered with espeak-ng."""
    path = tmp_path_factory.mktemp("audio") / "dictation.wav"
    subprocess.run(
        ["espeak-ng", "-s", "150", "-w", str(path),
         "History of present illness. The patient reports chest pain for two days. "
         "Plan. Follow up in two weeks."],
        check=True,
    )
    return path


def _fake_soffice(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "soffice"
    exe.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    exe.chmod(0o755)
    return folder


@pytest.fixture(scope="session")
def fake_soffice() -> Callable[[Path, str], Path]:
    """``fake_soffice(folder, body)``: a real executable named soffice running the shell
    ``body`` (a broken LibreOffice install); returns the folder to put on PATH."""
    return _fake_soffice
