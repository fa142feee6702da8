"""Accounts and sessions (issue #17): deactivation, session revocation on a password change or
deactivation, the absolute session lifetime, password strength, throttling of password
guesses stored in the database (per account and per client address, across restarts; the
signing password too), the client address in log-in audit events, and recipients outside
the practice's domains waiting for an administrator's approval."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from pipeline import cli
from pipeline.core.db.core import AuditEvent, DraftRow
from pipeline.core.db.review import AuthFailure, WebSession
from pipeline.core.db.schedule import Recipient
from pipeline.core.errors import ConfigError, ConflictError, PermissionDeniedError
from pipeline.core.settings import get_settings
from pipeline.core.store import open_store
from pipeline.review import signing
from pipeline.review.users import (
    FREE_FAILURES,
    authenticate,
    create_user,
    note_failure,
    throttle_wait,
)
from pipeline.secretary import route
from pipeline.web.app import create_app
from pipeline.web.seed import add_draft

Capsys = pytest.CaptureFixture[str]

PASSWORD = "correct-horse-9"
NEW_PASSWORD = "staple-battery-42"
Env = dict[str, Any]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """Users of each role on a fresh database; the CLI reads the same data directory."""
    monkeypatch.setenv("DICTATION_DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("DICTATION_PHYSICIANS", '["dr-smith", "dr-patel"]')
    monkeypatch.setenv("DICTATION_AUDIT_KEY_FILE", str(tmp_path / "keys" / "audit.key"))
    monkeypatch.setenv("DICTATION_PRACTICE_EMAIL_DOMAINS", "clinic.example")
    get_settings.cache_clear()
    settings = get_settings()
    with open_store(settings).session() as s:
        create_user(s, "admin", PASSWORD, "admin")
        create_user(s, "admin2", PASSWORD, "admin")
        create_user(s, "sec", PASSWORD, "secretary", ["dr-smith"])
        create_user(s, "smith", PASSWORD, "physician", ["dr-smith"])
    yield {"settings": settings, "app": create_app(settings)}
    get_settings.cache_clear()


def _client(env: Env, address: str = "127.0.0.1") -> TestClient:
    return TestClient(env["app"], client=(address, 50000))


def _token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "page has no CSRF token"
    return m.group(1)


def _try_login(c: TestClient, username: str, password: str = PASSWORD) -> Any:
    return c.post("/login", data={"csrf_token": _token(c.get("/login").text),
                                  "username": username, "password": password},
                  follow_redirects=False)


def _login(env: Env, username: str, address: str = "127.0.0.1") -> TestClient:
    c = _client(env, address)
    r = _try_login(c, username)
    assert r.status_code == 303, r.text
    assert c.get("/worklist", follow_redirects=False).status_code == 200
    return c


def _post(c: TestClient, url: str, data: dict[str, str]) -> Any:
    return c.post(url, data={"csrf_token": _token(c.get("/worklist").text), **data},
                  follow_redirects=False)


def _logged_out(c: TestClient) -> bool:
    r = c.get("/worklist", follow_redirects=False)
    return r.status_code == 303 and r.headers["location"].startswith("/login")


# --- passwords ---------------------------------------------------------------------------


@pytest.mark.parametrize(("password", "reason"), [
    ("password", "expected at least 10"),
    ("password1234", "common password"),
    ("qwertyuiopas", "Password refused"),
    ("aaaaaaaaaaaa", "Repeats"),
])
def test_weak_passwords_are_refused_with_a_reason(env: Env, password: str, reason: str) -> None:
    with open_store(env["settings"]).session() as s, pytest.raises(ConfigError, match=reason):
        create_user(s, "ann", password, "secretary", ["dr-smith"])


def test_cli_passwd_refuses_password_in_one_line(env: Env, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: Capsys) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("password\n"))
    assert cli.main(["user", "passwd", "sec", "--password-stdin"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Password has 8 characters") and "Traceback" not in err


# --- session revocation, deactivation, lifetime -----------------------------------------


def test_cli_passwd_ends_the_users_sessions(env: Env, monkeypatch: pytest.MonkeyPatch,
                                            capsys: Capsys) -> None:
    sec, admin = _login(env, "sec"), _login(env, "admin")
    monkeypatch.setattr("sys.stdin", io.StringIO(NEW_PASSWORD + "\n"))
    assert cli.main(["user", "passwd", "sec", "--password-stdin"]) == 0
    assert "1 session(s) ended" in capsys.readouterr().out
    assert _logged_out(sec)
    assert not _logged_out(admin)  # other users keep theirs
    assert _try_login(_client(env), "sec", NEW_PASSWORD).status_code == 303


def test_cli_disable_ends_sessions_and_blocks_login_until_enabled(env: Env, capsys: Capsys) -> None:
    sec = _login(env, "sec")
    assert cli.main(["user", "disable", "sec"]) == 0
    assert "sec deactivated; 1 session(s) ended" in capsys.readouterr().out
    assert _logged_out(sec)
    assert _try_login(_client(env), "sec").status_code == 401
    assert cli.main(["user", "enable", "sec"]) == 0
    assert _try_login(_client(env), "sec").status_code == 303
    with open_store(env["settings"]).session() as s:
        actions = list(s.scalars(select(AuditEvent.action).where(
            AuditEvent.action.in_(("user_disable", "user_enable")))))
    assert actions == ["user_disable", "user_enable"]


def test_admin_page_deactivates_reactivates_and_resets(env: Env) -> None:
    admin, sec = _login(env, "admin"), _login(env, "sec")
    r = _post(admin, "/admin/users/sec/disable", {})
    assert r.status_code == 303 and "deactivated" in admin.get(r.headers["location"]).text
    assert _logged_out(sec)
    r = _post(admin, "/admin/users/sec/enable", {})
    assert r.status_code == 303, r.text[-500:]
    assert "reactivated" in admin.get(r.headers["location"]).text
    sec = _login(env, "sec")
    r = _post(admin, "/admin/users/sec/password", {"password": "password"})
    assert "expected at least 10" in admin.get(r.headers["location"]).text
    assert not _logged_out(sec)  # a refused reset changes nothing
    _post(admin, "/admin/users/sec/password", {"password": NEW_PASSWORD})
    assert _logged_out(sec)
    with open_store(env["settings"]).session() as s:
        assert authenticate(s, "sec", NEW_PASSWORD) is not None
    # a secretary may not use these actions
    sec = _client(env)
    assert _try_login(sec, "sec", NEW_PASSWORD).status_code == 303
    assert _post(sec, "/admin/users/admin/disable", {}).status_code == 403


def test_the_last_active_admin_cannot_be_deactivated(env: Env) -> None:
    assert cli.main(["user", "disable", "admin2"]) == 0
    assert cli.main(["user", "disable", "admin"]) == 1


def test_session_has_an_absolute_lifetime(env: Env) -> None:
    """An active session (seen a second ago) still ends session_max_hours after log-in."""
    c = _login(env, "sec")
    hours = env["settings"].session_max_hours
    with open_store(env["settings"]).session() as s:
        s.execute(update(WebSession).values(
            created_at=datetime.now(UTC) - timedelta(hours=hours, minutes=1),
            last_seen_at=datetime.now(UTC)))
    r = c.get("/worklist", follow_redirects=False)
    assert r.status_code == 303 and "expired=1" in r.headers["location"]
    assert "maximum length" in c.get(r.headers["location"]).text
    assert _logged_out(c)
    with open_store(env["settings"]).session() as s:
        ev = s.scalars(select(AuditEvent).where(AuditEvent.action == "logout")).one()
    assert ev.detail["reason"] == "max_age"


# --- throttling --------------------------------------------------------------------------


def test_delays_grow_and_are_capped(env: Env) -> None:
    settings = env["settings"]
    now = datetime.now(UTC)
    waits = []
    with open_store(settings).session() as s:
        for _ in range(14):
            note_failure(s, "login", "sec", "10.0.0.9", now=now)
            waits.append(throttle_wait(s, settings, "login", "sec", now=now))
    assert waits[:FREE_FAILURES - 1] == [0.0] * (FREE_FAILURES - 1)
    assert waits[2:6] == [4.0, 8.0, 16.0, 32.0]
    assert waits[-1] == settings.login_max_delay_seconds
    with open_store(settings).session() as s:
        later = now + timedelta(seconds=settings.login_max_delay_seconds + 1)
        assert throttle_wait(s, settings, "login", "sec", now=later) == 0.0  # never a lock


def test_throttling_survives_a_restart(env: Env) -> None:
    """Three wrong passwords on one app; a second app on the same database (a restart)
    refuses even the right password until the delay has passed, then lets it in."""
    first = _client(env, "10.0.0.7")
    for _ in range(FREE_FAILURES):
        assert _try_login(first, "sec", "wrong-password-1").status_code == 401
    second = TestClient(create_app(env["settings"]), client=("10.0.0.8", 50000))
    r = _try_login(second, "sec")
    assert r.status_code == 429 and "Too many failed attempts" in r.text
    with open_store(env["settings"]).session() as s:
        assert s.scalar(select(AuthFailure.client).limit(1)) == "10.0.0.7"
        s.execute(update(AuthFailure).values(ts=AuthFailure.ts - timedelta(minutes=1)))
    assert _try_login(second, "sec").status_code == 303


def test_one_password_against_many_names_is_slowed_per_address(env: Env) -> None:
    attacker = _client(env, "10.0.0.66")
    codes = [_try_login(attacker, f"user{i}", "Summer2026!x").status_code for i in range(10)]
    assert codes[:FREE_FAILURES] == [401] * FREE_FAILURES
    assert set(codes[FREE_FAILURES:]) == {429}
    # the real user on another machine is not slowed by it
    assert _try_login(_client(env, "10.0.0.5"), "sec").status_code == 303


def test_login_audit_events_carry_the_client_address(env: Env) -> None:
    c = _client(env, "10.1.2.3")
    assert _try_login(c, "sec", "wrong-password-1").status_code == 401
    assert _try_login(c, "sec").status_code == 303
    with open_store(env["settings"]).session() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "login")
                           .order_by(AuditEvent.id)).all()
    assert [(e.outcome, e.detail.get("client")) for e in events] == [
        ("failed", "10.1.2.3"), ("ok", "10.1.2.3")]


def test_signing_password_is_throttled(env: Env) -> None:
    settings = env["settings"]
    with open_store(settings).session() as s:
        draft_id = add_draft(s, text="Plan: rest.", segments=[], physician_id="dr-smith",
                             patient_name="Test Patient", mrn="MRN-T1")
        s.get(DraftRow, draft_id).status = "awaiting_signature"  # type: ignore[union-attr]
        smith = authenticate(s, "smith", PASSWORD)
    assert smith is not None

    def sign(password: str) -> None:
        with open_store(settings).session() as s:
            draft = s.get(DraftRow, draft_id)
            assert draft is not None
            signing.sign_draft(s, settings, smith, draft, password)

    for _ in range(FREE_FAILURES):
        with pytest.raises(PermissionDeniedError, match="password is wrong"):
            sign("not-my-password")
    with pytest.raises(PermissionDeniedError, match="Too many wrong passwords"):
        sign(PASSWORD)
    with open_store(settings).session() as s:
        assert s.get(DraftRow, draft_id).status == "awaiting_signature"  # type: ignore[union-attr]
        refused = s.scalars(select(AuditEvent).where(AuditEvent.action == "sign",
                                                     AuditEvent.outcome == "refused")).all()
    assert len(refused) == 1


# --- recipients ----------------------------------------------------------------------------


def test_outside_recipient_waits_for_admin_approval(env: Env) -> None:
    sec = _login(env, "sec")
    r = _post(sec, "/schedule/recipients", {"name": "Dr. Outside", "kind": "referring_physician",
                                            "channel": "email", "address": "doc@elsewhere.org"})
    assert "added, waiting for an administrator" in sec.get(r.headers["location"]).text
    r = _post(sec, "/schedule/recipients", {"name": "Front desk", "kind": "department",
                                            "channel": "email", "address": "desk@clinic.example"})
    assert "added, waiting" not in sec.get(r.headers["location"]).text
    settings = env["settings"]
    with open_store(settings).session() as s:
        outside = s.scalars(select(Recipient).where(Recipient.name == "Dr. Outside")).one()
        inside = s.scalars(select(Recipient).where(Recipient.name == "Front desk")).one()
        assert not outside.approved and inside.approved
        draft_id = add_draft(s, text="Plan: rest.", segments=[], physician_id="dr-smith",
                             patient_name="Test Patient", mrn="MRN-T2")
        s.get(DraftRow, draft_id).status = "signed"  # type: ignore[union-attr]
        delivery = route.route_draft(s, draft_id, recipient_id=outside.id)
        outside_id, delivery_id = outside.id, delivery.id
    report = route.deliver_due(settings, draft_id=draft_id)
    assert report.waiting_for_approval == [delivery_id] and not report.failed
    # only an administrator approves; the approval is audited
    assert _post(sec, f"/admin/recipients/{outside_id}/approve", {}).status_code == 403
    admin = _login(env, "admin")
    assert "doc@elsewhere.org" in admin.get("/admin/users").text
    assert _post(admin, f"/admin/recipients/{outside_id}/approve", {}).status_code == 303
    with open_store(settings).session() as s:
        rec = s.get(Recipient, outside_id)
        assert rec is not None and rec.approved and rec.approved_by == "admin"
        ev = s.scalars(select(AuditEvent).where(AuditEvent.action == "recipient_approved")).one()
        assert ev.actor == "admin" and ev.object_id == str(outside_id)


def test_fhir_endpoint_over_plain_http_on_the_network_is_refused(env: Env) -> None:
    with open_store(env["settings"]).session() as s:
        with pytest.raises(ConflictError, match="expected an https URL"):
            route.add_recipient(s, "HIE", "practice", "fhir_http",
                                "http://hie.example.org/fhir/DocumentReference")
        assert route.add_recipient(s, "HIE", "practice", "fhir_http",
                                   "https://hie.example.org/fhir/DocumentReference").approved
