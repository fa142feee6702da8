"""File permissions under the data directory: a real ``dictation transcribe`` leaves every
file 0600 and every folder 0700 (the CLI's umask); ``harden_permissions`` (run by
``dictation run`` at start) tightens looser modes left behind and reports counts, keeping the
group bits of setgid inbox folders meant for a recorder's sync account."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core import crypto


def _modes(root: Path) -> tuple[dict[str, int], dict[str, int]]:
    dirs, files = {}, {}
    for folder, _dirs, names in os.walk(root):
        dirs[folder] = stat.S_IMODE(os.lstat(folder).st_mode)
        for name in names:
            path = os.path.join(folder, name)
            files[path] = stat.S_IMODE(os.lstat(path).st_mode)
    return dirs, files


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_transcribe_leaves_only_private_files_and_folders(speech: Path, tmp_path: Path) -> None:
    data = tmp_path / "var"
    env = dict(os.environ, DICTATION_DATA_DIR=str(data), DICTATION_MODEL="tiny.en",
               DICTATION_DEVICE="cpu", DICTATION_COMPUTE_TYPE="int8", DICTATION_PDF="never",
               DICTATION_PHYSICIANS="dr-smith", DICTATION_KEY_FILE=str(tmp_path / "k" / "d.key"))
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "transcribe", "--json",
                          str(speech)], env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    dirs, files = _modes(data)
    assert len(files) >= 3, "the run wrote no draft files"  # database, draft outputs
    assert {p: m for p, m in dirs.items() if m != 0o700} == {}
    assert {p: m for p, m in files.items() if m != 0o600} == {}


def test_harden_permissions_fixes_looser_modes_and_counts(tmp_path: Path) -> None:
    data = tmp_path / "var"
    (data / "drafts" / "d1").mkdir(parents=True)
    (data / "archive").mkdir()
    (data / "drafts" / "d1" / "note.docx").write_bytes(b"x")
    (data / "dictation.db").write_bytes(b"x")
    (data / "archive" / "ok.wav").write_bytes(b"x")
    os.chmod(data, 0o755)
    os.chmod(data / "drafts", 0o755)
    os.chmod(data / "drafts" / "d1", 0o777)
    os.chmod(data / "archive", 0o700)
    os.chmod(data / "drafts" / "d1" / "note.docx", 0o644)
    os.chmod(data / "dictation.db", 0o666)
    os.chmod(data / "archive" / "ok.wav", 0o600)
    os.symlink("/etc/hostname", data / "archive" / "link")  # not followed, not changed
    before = stat.S_IMODE(os.stat("/etc/hostname").st_mode)
    counts = crypto.harden_permissions(data)
    assert (counts.dirs_fixed, counts.files_fixed) == (3, 2)
    assert (counts.dirs, counts.files) == (4, 3)
    dirs, files = _modes(data)
    assert set(dirs.values()) == {0o700}
    assert {m for p, m in files.items() if not p.endswith("link")} == {0o600}
    assert stat.S_IMODE(os.stat("/etc/hostname").st_mode) == before
    assert crypto.harden_permissions(data).dirs_fixed == 0  # idempotent


def test_setgid_inbox_folders_keep_their_group_access(tmp_path: Path) -> None:
    """docs/operations.md: inbox/<physician>/ as 2770 for a recorder sync group; a file the
    sync account dropped stays group-readable (0660) until the service claims it; "other"
    access is removed everywhere."""
    data = tmp_path / "var"
    shared = data / "inbox" / "dr-smith"
    shared.mkdir(parents=True)
    os.chmod(data, 0o755)
    os.chmod(data / "inbox", 0o2775)
    os.chmod(shared, 0o2777)
    dropped = shared / "rec.wav"
    dropped.write_bytes(b"x")
    os.chmod(dropped, 0o664)
    private = data / "drafts"
    private.mkdir()
    os.chmod(private, 0o2770)  # setgid outside inbox/: no exception
    crypto.harden_permissions(data)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o2770
    assert stat.S_IMODE((data / "inbox").stat().st_mode) == 0o2770
    assert stat.S_IMODE(dropped.stat().st_mode) == 0o660
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert stat.S_IMODE(data.stat().st_mode) == 0o711  # pass through, no listing
    os.chmod(data / "inbox", 0o700)  # no shared inbox: the data directory is closed too
    os.chmod(data, 0o711)
    crypto.harden_permissions(data)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700


def test_private_mkdir_creates_parents_0700(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        made = crypto.private_mkdir(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(old)
    for p in (tmp_path / "a", tmp_path / "a" / "b", made):
        assert stat.S_IMODE(p.stat().st_mode) == 0o700
