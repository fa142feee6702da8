"""Users: argon2 hashing, roles, assignments, authentication and ``dictation user add``."""

from __future__ import annotations

import io

import pytest
from sqlalchemy import select

from pipeline import cli
from pipeline.core.db.review import User
from pipeline.core.errors import ConfigError, ConflictError, NotFoundError
from pipeline.core.settings import Settings, get_settings
from pipeline.core.store import open_store
from pipeline.review.users import authenticate, create_user, hash_password, verify_password

PASSWORD = "correct-horse-9"


def test_hash_is_argon2id_and_verifies() -> None:
    h = hash_password(PASSWORD)
    assert h.startswith("$argon2id$") and PASSWORD not in h
    assert verify_password(h, PASSWORD)
    assert not verify_password(h, PASSWORD + "x")
    assert not verify_password("not a hash", PASSWORD)
    assert hash_password(PASSWORD) != h  # salted


@pytest.mark.parametrize(
    ("username", "password", "role", "physicians", "error"),
    [
        ("ann", PASSWORD, "nurse", [], ConfigError),
        ("ann", "short", "secretary", [], ConfigError),
        ("a b", PASSWORD, "secretary", [], ConfigError),
        ("doc", PASSWORD, "physician", [], ConfigError),
        ("ann", PASSWORD, "secretary", ["dr-nobody"], NotFoundError),
    ],
)
def test_create_user_rejects_bad_input(settings: Settings, username: str, password: str,
                                       role: str, physicians: list[str], error: type) -> None:
    with open_store(settings).session() as s, pytest.raises(error):
        create_user(s, username, password, role, physicians)


def test_create_and_authenticate(settings: Settings) -> None:
    with open_store(settings).session() as s:
        user = create_user(s, "ann", PASSWORD, "secretary", ["dr-smith", "dr-patel"])
        assert user.physician_ids == ["dr-patel", "dr-smith"]
        with pytest.raises(ConflictError):
            create_user(s, "ann", PASSWORD, "secretary")
    with open_store(settings).session() as s:
        assert authenticate(s, "ann", PASSWORD).role == "secretary"  # type: ignore[union-attr]
        assert authenticate(s, "ann", "wrong-password") is None
        assert authenticate(s, "nobody", PASSWORD) is None
        s.scalars(select(User)).one().active = False
    with open_store(settings).session() as s:
        assert authenticate(s, "ann", PASSWORD) is None  # deactivated


def test_secretary_sees_only_assigned_physicians(settings: Settings) -> None:
    with open_store(settings).session() as s:
        sec = create_user(s, "ann", PASSWORD, "secretary", ["dr-smith"])
        admin = create_user(s, "boss", PASSWORD, "admin")
    assert sec.may_see_physician("dr-smith")
    assert not sec.may_see_physician("dr-patel")
    assert not sec.may_see_physician(None)
    assert admin.may_see_physician("dr-patel")


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("DICTATION_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("DICTATION_PHYSICIANS", '["dr-smith", "dr-patel"]')
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def test_cli_user_add_with_password_stdin(cli_env: Settings, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    rc = cli.main(["user", "add", "drsmith", "--role", "physician", "--physician", "dr-smith",
                   "--password-stdin"])
    assert rc == 0
    assert "added physician drsmith (dr-smith)" in capsys.readouterr().out
    with open_store(cli_env).session() as s:
        user = authenticate(s, "drsmith", PASSWORD)
    assert user is not None and user.physician_ids == ["dr-smith"]


def test_cli_user_add_errors_are_one_line(cli_env: Settings, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    rc = cli.main(["user", "add", "ann", "--role", "secretary", "--password-stdin"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: Password has 5 characters")
    assert "Traceback" not in err
