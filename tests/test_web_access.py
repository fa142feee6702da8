"""Workbench access control, CSRF, escaping, claims and audio, through the real app.

Access control is a table: each role x each page/action, including a secretary opening
another physician's draft by URL (403), unauthenticated requests (redirect to log-in) and
forged forms without a CSRF token (rejected).
"""

from __future__ import annotations

import re
import shutil
import wave
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from pipeline.core.db.core import AuditEvent, DraftRow
from pipeline.core.db.review import DraftVersion, WebSession
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.review.users import create_user
from pipeline.web.app import create_app
from pipeline.web.seed import add_draft, synthetic_transcript

PASSWORD = "correct-horse-9"
HOSTILE_TEXT = "Patient <script>alert('x')</script> & Co said \"fine\".\n"
HOSTILE_NAME = "<img src=x onerror=alert(1)> O'Brien & Sons"


def _silence_wav(path: Path, seconds: float = 3.0) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x00" * int(16000 * seconds))
    return path


def _make_env(settings: Settings, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    """An app with one user per role and a draft for each physician."""
    app = create_app(settings)
    text, segments = synthetic_transcript(20.0, seed=1)
    with open_store(settings).session() as s:
        create_user(s, "admin", PASSWORD, "admin")
        create_user(s, "sec", PASSWORD, "secretary", ["dr-smith"])
        create_user(s, "sec2", PASSWORD, "secretary", ["dr-smith"])
        create_user(s, "secp", PASSWORD, "secretary", ["dr-patel"])
        create_user(s, "smith", PASSWORD, "physician", ["dr-smith"])
        create_user(s, "patel", PASSWORD, "physician", ["dr-patel"])
        smith = add_draft(s, text=text, segments=segments, physician_id="dr-smith",
                          patient_name="Alice Smithpatient", mrn="MRN-S1",
                          audio_path=_silence_wav(tmp_path / "a.wav"), duration_s=3.0)
        patel = add_draft(s, text=text, segments=segments, physician_id="dr-patel",
                          patient_name="Bob Patelpatient", mrn="MRN-P1", priority="stat")
        hostile = add_draft(s, text=HOSTILE_TEXT, segments=[], physician_id="dr-smith",
                            patient_name=HOSTILE_NAME, mrn="MRN-H1",
                            document={"missing": ["physical_exam", "plan"], "header": {
                                "mrn": {"value": "MRN-H1", "source": "sidecar",
                                        "conflict": "MRN-H9 <i>"}},
                                "instructions": [{"kind": "copy",
                                                  "text": "copy to Dr. Patel", "params": {}}]})
    return {"app": app, "settings": settings, "smith": smith, "patel": patel,
            "hostile": hostile}


def _settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, model="tiny.en", device="cpu", compute_type="int8",
                    physicians=["dr-smith", "dr-patel"], pdf="never")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    """Users and drafts made once (argon2 hashing and migrations are slow on a busy CPU);
    each test gets its own copy of this database."""
    tmp = tmp_path_factory.mktemp("web-template")
    e = _make_env(_settings(tmp / "var"), tmp)
    with open_store(e["settings"]).engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return e


def _copy_env(template: dict, data_dir: Path) -> dict:  # type: ignore[type-arg]
    settings = _settings(data_dir)
    settings.data_path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template["settings"].data_path / "dictation.db",
                    settings.data_path / "dictation.db")
    return {**template, "settings": settings, "app": create_app(settings)}


@pytest.fixture
def env(template: dict, tmp_path: Path) -> dict:  # type: ignore[type-arg]
    """A fresh copy of the template for tests that change drafts."""
    return _copy_env(template, tmp_path / "var")


@pytest.fixture(scope="module")
def shared_env(template: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    """One copy (and one logged-in client per role) for the whole access table."""
    e = _copy_env(template, tmp_path_factory.mktemp("web-access") / "var")
    e["clients"] = {}
    return e


def _client(env) -> TestClient:  # type: ignore[no-untyped-def]
    return TestClient(env["app"], client=("127.0.0.1", 50000))


def _token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "page has no CSRF token"
    return m.group(1)


def _login(env, username: str) -> TestClient:  # type: ignore[no-untyped-def]
    c = _client(env)
    if username == "anon":
        return c
    r = c.post("/login", data={"csrf_token": _token(c.get("/login").text),
                               "username": username, "password": PASSWORD},
               follow_redirects=False)
    assert r.status_code == 303, r.text
    return c


def _post(c: TestClient, url: str, data: dict[str, str]):  # type: ignore[no-untyped-def]
    token = _token(c.get("/worklist").text) if "dictation_session" in c.cookies else \
        _token(c.get("/login").text)
    return c.post(url, data={"csrf_token": token, **data}, follow_redirects=False)


# (role, method, path template, expected status). {smith}/{patel}: draft ids.
ACCESS = [
    ("anon", "GET", "/worklist", 303),
    ("anon", "GET", "/drafts/{smith}", 303),
    ("anon", "GET", "/drafts/{smith}/audio", 303),
    ("anon", "GET", "/drafts/{smith}/diff", 303),
    ("anon", "GET", "/accuracy", 303),
    ("anon", "GET", "/admin/audit", 303),
    ("anon", "GET", "/admin/users", 303),
    ("sec", "GET", "/worklist", 200),
    ("sec", "GET", "/drafts/{smith}", 200),
    ("sec", "GET", "/drafts/{smith}/audio", 200),
    ("sec", "GET", "/drafts/{smith}/diff", 200),
    ("sec", "GET", "/drafts/{patel}", 403),
    ("sec", "GET", "/drafts/{patel}/audio", 403),
    ("sec", "GET", "/drafts/{patel}/diff", 403),
    ("sec", "POST", "/drafts/{patel}/save", 403),
    ("sec", "POST", "/drafts/{smith}/sign", 403),
    ("sec", "GET", "/accuracy", 200),
    ("sec", "GET", "/accuracy?physician=dr-patel", 403),
    ("sec", "GET", "/admin/audit", 403),
    ("sec", "GET", "/admin/users", 403),
    ("sec", "POST", "/admin/users", 403),
    ("smith", "GET", "/worklist", 200),
    ("smith", "GET", "/drafts/{smith}", 200),
    ("smith", "GET", "/drafts/{patel}", 403),
    ("smith", "POST", "/drafts/{patel}/sign", 403),
    ("smith", "GET", "/admin/audit", 403),
    ("patel", "GET", "/drafts/{patel}", 200),
    ("patel", "GET", "/drafts/{smith}/audio", 403),
    ("patel", "POST", "/drafts/{smith}/sign", 403),
    ("admin", "GET", "/worklist", 200),
    ("admin", "GET", "/drafts/{smith}", 200),
    ("admin", "GET", "/drafts/{patel}", 200),
    ("admin", "GET", "/admin/audit", 200),
    ("admin", "GET", "/admin/users", 200),
    ("admin", "POST", "/drafts/{smith}/sign", 403),
    ("admin", "GET", "/drafts/does-not-exist", 404),
    ("admin", "POST", "/drafts/{smith}/save", 403),  # administrators read, never edit
    ("smith", "POST", "/drafts/{smith}/save", 403),  # physicians edit only what awaits them
    ("sec", "POST", "/drafts/{smith}/claim", 204),
    ("sec", "POST", "/drafts/{smith}/return", 403),
    ("patel", "POST", "/drafts/{smith}/return", 403),
    ("smith", "POST", "/drafts/{smith}/return", 409),  # not awaiting signature
    ("sec", "POST", "/drafts/{patel}/claim", 403),
]


@pytest.mark.parametrize(("role", "method", "path", "expected"), ACCESS,
                         ids=[f"{r}-{m}-{p}" for r, m, p, _ in ACCESS])
def test_access_table(shared_env, role: str, method: str, path: str, expected: int) -> None:  # type: ignore[no-untyped-def]
    """Each role gets exactly the pages and actions it should; strangers go to log-in."""
    env = shared_env
    if role not in env["clients"]:
        env["clients"][role] = _login(env, role)
    c = env["clients"][role]
    url = path.format(smith=env["smith"], patel=env["patel"])
    if method == "GET":
        r = c.get(url, follow_redirects=False)
    else:
        r = _post(c, url, {"text": "changed", "password": PASSWORD, "username": "x",
                           "role": "admin"})
    assert r.status_code == expected, (role, url, r.status_code)
    if expected == 303:
        assert r.headers["location"].startswith("/login?next=")


def test_refused_draft_access_is_audited(env) -> None:  # type: ignore[no-untyped-def]
    """A secretary opening another physician's draft by URL is refused and it is logged."""
    c = _login(env, "sec")
    assert c.get(f"/drafts/{env['patel']}").status_code == 403
    with open_store(env["settings"]).session() as s:
        ev = s.scalars(select(AuditEvent).where(AuditEvent.object_id == env["patel"],
                                                AuditEvent.outcome == "denied")).one()
    assert ev.actor == "sec" and ev.patient_ref == "MRN-P1"


def test_secretary_worklist_shows_only_assigned_physicians(env) -> None:  # type: ignore[no-untyped-def]
    html = _login(env, "sec").get("/worklist").text
    assert "Alice Smithpatient" in html
    assert "Bob Patelpatient" not in html
    admin_html = _login(env, "admin").get("/worklist").text
    # STAT first for everyone who sees it.
    assert admin_html.index("Bob Patelpatient") < admin_html.index("Alice Smithpatient")


def test_worklist_search_and_filters(env) -> None:  # type: ignore[no-untyped-def]
    c = _login(env, "admin")
    assert "Alice" in c.get("/worklist?q=smithpatient").text
    assert "Alice" not in c.get("/worklist?q=MRN-P1").text
    assert "Bob" in c.get("/worklist?q=MRN-P1").text
    assert "Bob" in c.get(f"/worklist?q={env['patel'][:8]}").text
    assert "Alice" not in c.get("/worklist?priority=stat").text
    assert "Alice" not in c.get("/worklist?physician=dr-patel").text


@pytest.mark.parametrize("forged", ["missing", "wrong", "other_session"])
def test_forged_form_without_csrf_token_is_rejected(env, forged: str) -> None:  # type: ignore[no-untyped-def]
    c = _login(env, "sec")
    c.get(f"/drafts/{env['smith']}")
    data = {"text": "forged text\n", "action": "save"}
    if forged == "wrong":
        data["csrf_token"] = "0" * 64
    elif forged == "other_session":
        data["csrf_token"] = _token(_login(env, "sec2").get("/worklist").text)
    r = c.post(f"/drafts/{env['smith']}/save", data=data, follow_redirects=False)
    assert r.status_code == 403
    with open_store(env["settings"]).session() as s:
        assert "forged" not in s.get(DraftRow, env["smith"]).text


def test_login_form_needs_csrf_and_wrong_password_fails(env) -> None:  # type: ignore[no-untyped-def]
    c = _client(env)
    r = c.post("/login", data={"username": "sec", "password": PASSWORD},
               follow_redirects=False)
    assert r.status_code == 403
    r = c.post("/login", data={"csrf_token": _token(c.get("/login").text), "username": "sec",
                               "password": "wrong-password"}, follow_redirects=False)
    assert r.status_code == 401 and "Wrong user name or password" in r.text
    with open_store(env["settings"]).session() as s:
        failed = s.scalars(select(AuditEvent).where(AuditEvent.action == "login",
                                                    AuditEvent.outcome == "failed")).all()
    assert [e.actor for e in failed] == ["sec"]


def test_session_cookie_flags(env) -> None:  # type: ignore[no-untyped-def]
    c = _client(env)
    r = c.post("/login", data={"csrf_token": _token(c.get("/login").text), "username": "sec",
                               "password": PASSWORD}, follow_redirects=False)
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert "secure" not in cookie  # plain http on loopback; https sets Secure


def test_idle_session_logs_out(env) -> None:  # type: ignore[no-untyped-def]
    c = _login(env, "sec")
    assert c.get("/worklist", follow_redirects=False).status_code == 200
    old = datetime.now(UTC) - timedelta(minutes=env["settings"].session_idle_minutes + 1)
    with open_store(env["settings"]).session() as s:
        s.execute(update(WebSession).values(last_seen_at=old))
    r = c.get("/worklist", follow_redirects=False)
    assert r.status_code == 303 and "idle=1" in r.headers["location"]
    assert c.get("/worklist", follow_redirects=False).status_code == 303  # session is gone


def test_logout_ends_session(env) -> None:  # type: ignore[no-untyped-def]
    c = _login(env, "sec")
    cookie = c.cookies.get("dictation_session")
    _post(c, "/logout", {})
    c2 = _client(env)
    c2.cookies.set("dictation_session", cookie)
    assert c2.get("/worklist", follow_redirects=False).status_code == 303


def test_hostile_text_is_escaped(env) -> None:  # type: ignore[no-untyped-def]
    """Transcript text with <script> and & renders escaped in the editor and the worklist."""
    c = _login(env, "sec")
    html = c.get(f"/drafts/{env['hostile']}").text
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    assert "&amp; Co" in html
    assert "<img src=x" not in html
    wl = c.get("/worklist").text
    assert "<img src=x" not in wl and "&lt;img src=x onerror=alert(1)&gt;" in wl
    # The raw text survives a save unchanged (escaping is only on output).
    token = _token(html)
    r = c.post(f"/drafts/{env['hostile']}/save",
               data={"csrf_token": token, "text": HOSTILE_TEXT + "Added.\n", "action": "save"},
               follow_redirects=False)
    assert r.status_code == 303
    with open_store(env["settings"]).session() as s:
        assert s.get(DraftRow, env["hostile"]).text == HOSTILE_TEXT + "Added.\n"


def test_second_secretary_is_told_the_draft_is_claimed(env) -> None:  # type: ignore[no-untyped-def]
    first = _login(env, "sec")
    second = _login(env, "sec2")
    assert 'contenteditable="true"' in first.get(f"/drafts/{env['smith']}").text
    html = second.get(f"/drafts/{env['smith']}").text
    assert "claimed by <strong>sec</strong>" in html
    assert 'contenteditable="true"' not in html and "/save" not in html
    r = second.post(f"/drafts/{env['smith']}/save",
                    data={"csrf_token": _token(html), "text": "mine now\n"},
                    follow_redirects=False)
    assert r.status_code == 409
    # The worklist shows who holds it; after release the second one gets it.
    assert "claimed by sec" in second.get("/worklist").text
    _post(first, f"/drafts/{env['smith']}/release", {})
    assert 'contenteditable="true"' in second.get(f"/drafts/{env['smith']}").text


def test_save_versions_diff_and_lost_update(env) -> None:  # type: ignore[no-untyped-def]
    c = _login(env, "sec")
    html = c.get(f"/drafts/{env['smith']}").text
    token = _token(html)
    url = f"/drafts/{env['smith']}/save"
    r = c.post(url, data={"csrf_token": token, "text": "First edit.\n", "base_version": "1"},
               follow_redirects=False)
    assert r.headers["location"].endswith("saved=2")
    r = c.post(url, data={"csrf_token": token, "text": "Second edit.\n", "base_version": "2"},
               follow_redirects=False)
    assert r.headers["location"].endswith("saved=3")
    stale = c.post(url, data={"csrf_token": token, "text": "Stale.\n", "base_version": "2"},
                   follow_redirects=False)
    assert stale.status_code == 409
    with open_store(env["settings"]).session() as s:
        versions = s.scalars(select(DraftVersion.version)
                             .where(DraftVersion.draft_id == env["smith"])).all()
    assert sorted(versions) == [1, 2, 3]
    diff = c.get(f"/drafts/{env['smith']}/diff?a=2&b=3").text
    assert "<del>First</del>" in diff and "<ins>Second</ins>" in diff


def test_audio_supports_range_and_is_audited(env) -> None:  # type: ignore[no-untyped-def]
    c = _login(env, "sec")
    full = c.get(f"/drafts/{env['smith']}/audio")
    assert full.status_code == 200 and full.content[:4] == b"RIFF"
    part = c.get(f"/drafts/{env['smith']}/audio", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.headers["content-range"].startswith("bytes 100-199/")
    assert part.content == full.content[100:200]
    assert _post(c, f"/drafts/{env['smith']}/audio/played", {}).status_code == 204
    assert _post(c, f"/drafts/{env['patel']}/audio/played", {}).status_code == 403
    with open_store(env["settings"]).session() as s:
        fetches = s.scalars(select(AuditEvent).where(AuditEvent.action == "audio_fetch")).all()
        plays = s.scalars(select(AuditEvent).where(AuditEvent.action == "audio_play")).all()
    assert len(fetches) == 1 and fetches[0].patient_ref == "MRN-S1" and fetches[0].actor == "sec"
    assert [(p.outcome, p.patient_ref) for p in plays] == [("ok", "MRN-S1"), ("denied", "MRN-P1")]


def test_setup_page_only_first_run_and_local(settings: Settings) -> None:
    app = create_app(settings)
    remote = TestClient(app, client=("203.0.113.9", 40000))
    assert remote.get("/setup").status_code == 403
    local = TestClient(app, client=("127.0.0.1", 40000))
    assert local.get("/", follow_redirects=False).headers["location"] == "/setup"
    token = _token(local.get("/setup").text)
    r = local.post("/setup", data={"csrf_token": token, "username": "boss",
                                   "password": PASSWORD, "password2": PASSWORD},
                   follow_redirects=False)
    assert r.status_code == 303
    assert local.get("/admin/users").status_code == 200  # logged in as the new admin
    assert TestClient(app, client=("127.0.0.1", 1)).get("/setup").status_code == 404


def test_admin_adds_user_and_searches_audit(env) -> None:  # type: ignore[no-untyped-def]
    c = _login(env, "admin")
    r = _post(c, "/admin/users", {"username": "newsec", "role": "secretary",
                                  "password": PASSWORD, "physician": "dr-patel"})
    assert r.status_code == 303
    nc = _login(env, "newsec")
    assert nc.get(f"/drafts/{env['patel']}").status_code == 200
    html = c.get("/admin/audit?patient=MRN-P1&action=view").text
    assert "newsec" in html
    assert "Alice" not in html


def test_editor_lists_missing_sections_and_header_mismatches(env) -> None:  # type: ignore[no-untyped-def]
    html = _login(env, "sec").get(f"/drafts/{env['hostile']}").text
    missing = html[html.index('id="missing"'):]
    assert "<li>physical exam</li>" in missing and "<li>plan</li>" in missing
    mismatch = html[html.index('id="mismatches"'):]
    assert "MRN-H1" in mismatch and "MRN-H9 &lt;i&gt;" in mismatch
    assert "copy to Dr. Patel" in html


def test_keyboard_shortcuts_are_documented_on_the_editor(env) -> None:  # type: ignore[no-untyped-def]
    html = _login(env, "sec").get(f"/drafts/{env['smith']}").text
    keys = html[html.index('id="shortcuts"'):]
    for label in ("play / pause", "back 3 s", "forward 3 s", "slower / faster",
                  "next flagged word", "save"):
        assert label in keys


def test_export_of_outputs_is_access_checked_and_audited(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "document.txt"
    out.write_text("rendered")
    with open_store(env["settings"]).session() as s:
        s.get(DraftRow, env["smith"]).outputs = {"txt": str(out)}
        s.get(DraftRow, env["patel"]).outputs = {"txt": str(out)}
    c = _login(env, "sec")
    r = c.get(f"/drafts/{env['smith']}/outputs/txt")
    assert r.status_code == 200 and r.text == "rendered"
    assert c.get(f"/drafts/{env['patel']}/outputs/txt").status_code == 403
    assert c.get(f"/drafts/{env['smith']}/outputs/pdf").status_code == 404
    with open_store(env["settings"]).session() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "export")).all()
    assert [(e.outcome, e.patient_ref) for e in events] == [("ok", "MRN-S1"),
                                                           ("denied", "MRN-P1")]


def test_accuracy_page_draws_the_trend(env) -> None:  # type: ignore[no-untyped-def]
    from pipeline.review import learning

    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    with open_store(env["settings"]).session() as s:
        for k, (first, final) in enumerate([("a b c d", "a b c x"), ("a b c d", "a b c d"),
                                            ("sealer cyst", "cholecystitis"),
                                            ("sealer cyst", "cholecystitis")]):
            did = add_draft(s, text=final, segments=[], physician_id="dr-smith")
            learning.record_signed(s, env["settings"], draft_id=did, physician_id="dr-smith",
                                   first_text=first, signed_text=final,
                                   signed_at=t0 + timedelta(days=k))
    html = _login(env, "sec").get("/accuracy?physician=dr-smith").text
    svg = html[html.index('<svg class="chart"'):html.index("</svg>")]
    assert svg.count("<circle") == 4 and "<polyline" in svg
    assert "2026-11-01: WER 25.0%" in svg
    assert "<td>sealer cyst</td><td>cholecystitis</td><td>2</td>" in html
    assert "Mean over 4 drafts" in html


def test_physician_sends_a_draft_back(env) -> None:  # type: ignore[no-untyped-def]
    sec = _login(env, "sec")
    html = sec.get(f"/drafts/{env['smith']}").text
    r = sec.post(f"/drafts/{env['smith']}/save", data={"csrf_token": _token(html),
                                                       "text": "Ready.\n", "action": "submit"},
                 follow_redirects=False)
    assert r.status_code == 303
    doc = _login(env, "smith")
    page = doc.get(f"/drafts/{env['smith']}").text
    assert 'id="sign-form"' in page and 'id="return-btn"' in page
    assert _post(doc, f"/drafts/{env['smith']}/return", {}).status_code == 303
    with open_store(env["settings"]).session() as s:
        assert s.get(DraftRow, env["smith"]).status == "in_review"
    assert 'contenteditable="true"' in sec.get(f"/drafts/{env['smith']}").text


def test_worklist_pages_keep_stat_first_then_oldest(env) -> None:  # type: ignore[no-untyped-def]
    from pipeline.review.users import UserInfo
    from pipeline.web.routes.worklist import worklist_rows
    from pipeline.web.seed import bulk_drafts

    with open_store(env["settings"]).session() as s:
        bulk_drafts(s, 130, ["dr-smith", "dr-patel"], seed=3)
    sec = UserInfo(1, "x", "secretary", ["dr-smith"])
    with open_store(env["settings"]).session() as s:
        pages = [worklist_rows(s, sec, status="all", page=p, per_page=25) for p in (1, 2, 3)]
        everything, total = worklist_rows(s, sec, status="all", per_page=1000)
    assert all(t == total for _, t in pages) and total == len(everything) == 65 + 2
    assert {r["physician_id"] for r in everything} == {"dr-smith"}
    keys = [(r["priority"] != "stat", r["created_at"]) for r in everything]
    assert keys == sorted(keys)  # STAT first, then oldest
    assert [r["id"] for rows, _ in pages for r in rows] == \
        [r["id"] for r in everything[:75]]
