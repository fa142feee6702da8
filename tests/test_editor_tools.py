"""The editor a secretary works in all day (issue #16): autosave and the return after an idle
log-out, auto-texts ("normals") managed in the browser and inserted by "insert <trigger>",
and per-user transcription keys with a foot-pedal preset. Through the real app (TestClient),
real SQLite, the real language stage; the browser side is in ``test_editor_browser.py``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from pipeline.core.db.core import AuditEvent, DraftRow
from pipeline.core.db.review import (
    AutoText,
    AutoTextVersion,
    DraftAutosave,
    DraftVersion,
    WebSession,
)
from pipeline.core.records import Dictation, DictationMeta, Segment, Transcript
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.language.normalize import normalize_text
from pipeline.review.users import create_user
from pipeline.service.process import normalize_stage
from pipeline.web.app import create_app
from pipeline.web.seed import add_draft, synthetic_transcript

PASSWORD = "correct-horse-9"
EXAM = "Lungs clear to auscultation bilaterally. Heart regular rate and rhythm, no murmurs."
PRACTICE_EXAM = "Normal examination (practice text)."


@pytest.fixture
def env(settings: Settings) -> dict:  # type: ignore[type-arg]
    app = create_app(settings)
    text, segments = synthetic_transcript(10.0, seed=3)
    with open_store(settings).session() as s:
        create_user(s, "admin", PASSWORD, "admin")
        create_user(s, "sec", PASSWORD, "secretary", ["dr-smith"])
        create_user(s, "smith", PASSWORD, "physician", ["dr-smith"])
        create_user(s, "patel", PASSWORD, "physician", ["dr-patel"])
        draft = add_draft(s, text=text, segments=segments, physician_id="dr-smith",
                          patient_name="Alice Autosave", mrn="MRN-A1")
    return {"app": app, "settings": settings, "draft": draft, "text": text}


def _token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "page has no CSRF token"
    return m.group(1)


def _login(env: dict, username: str, next_url: str | None = None):  # type: ignore[no-untyped-def,type-arg]
    c = TestClient(env["app"], client=("127.0.0.1", 50000))
    page = c.get("/login" + (f"?next={quote(next_url, safe='')}" if next_url else ""))
    data = {"csrf_token": _token(page.text), "username": username, "password": PASSWORD}
    m = re.search(r'name="next" value="([^"]*)"', page.text)
    if m:
        data["next"] = m.group(1).replace("&amp;", "&")
    r = c.post("/login", data=data, follow_redirects=False)
    assert r.status_code == 303, r.text
    return c, r.headers["location"]


def _post(c: TestClient, url: str, data: dict[str, str]):  # type: ignore[no-untyped-def]
    return c.post(url, data={"csrf_token": _token(c.get("/worklist").text), **data},
                  follow_redirects=False)


# --- autosave ---------------------------------------------------------------------------

def test_autosave_is_kept_apart_from_versions_and_restored_in_the_editor(env: dict) -> None:  # type: ignore[type-arg]
    c, _ = _login(env, "sec")
    draft = env["draft"]
    c.get(f"/drafts/{draft}")  # claims it
    typed = env["text"].strip() + " Typed but never saved."
    r = _post(c, f"/drafts/{draft}/autosave", {"text": typed, "base_version": "1"})
    assert r.status_code == 204, r.text
    with open_store(env["settings"]).session() as s:
        row = s.scalar(select(DraftAutosave).where(DraftAutosave.draft_id == draft))
        assert row is not None and row.kind == "autosave" and "never saved" in row.text
        # not a saved version, and the draft's text is unchanged
        assert s.scalar(select(DraftVersion.id).where(DraftVersion.draft_id == draft,
                                                      DraftVersion.version > 1)) is None
        assert "never saved" not in s.get(DraftRow, draft).text
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "edit",
                                                    AuditEvent.object_id == draft)).all()
        assert any((e.detail or {}).get("kind") == "autosave" for e in events)
    page = c.get(f"/drafts/{draft}").text
    assert 'id="autosave-restored"' in page
    assert "never saved" in page and 'data-restored="1"' in page
    # a real save takes it over; the autosave is gone and not restored again
    r = _post(c, f"/drafts/{draft}/save", {"text": typed, "base_version": "1"})
    assert r.status_code == 303
    page = c.get(f"/drafts/{draft}").text
    assert 'id="autosave-restored"' not in page and "never saved" in page
    with open_store(env["settings"]).session() as s:
        assert s.scalar(select(DraftAutosave).where(DraftAutosave.draft_id == draft)) is None


def test_autosave_older_than_a_saved_version_is_not_restored(env: dict) -> None:  # type: ignore[type-arg]
    c, _ = _login(env, "sec")
    draft = env["draft"]
    c.get(f"/drafts/{draft}")
    assert _post(c, f"/drafts/{draft}/autosave",
                 {"text": "old autosave text", "base_version": "1"}).status_code == 204
    with open_store(env["settings"]).session() as s:
        s.execute(update(DraftAutosave).values(saved_at=datetime.now(UTC) - timedelta(hours=1)))
        s.add(DraftVersion(draft_id=draft, version=1, text=env["text"], author="system:pipeline",
                           created_at=datetime.now(UTC)))
    assert "old autosave text" not in c.get(f"/drafts/{draft}").text


def test_autosave_refused_to_a_role_that_may_not_edit(env: dict) -> None:  # type: ignore[type-arg]
    c, _ = _login(env, "admin")
    r = _post(c, f"/drafts/{env['draft']}/autosave", {"text": "x", "base_version": "1"})
    assert r.status_code == 403
    anon = TestClient(env["app"])
    r = anon.post(f"/drafts/{env['draft']}/autosave", data={"text": "x"},
                  follow_redirects=False)
    assert r.status_code in (303, 403)


# --- log-in returns to the page --------------------------------------------------------

def test_idle_logout_then_login_returns_to_the_editor_with_the_text(env: dict) -> None:  # type: ignore[type-arg]
    c, _ = _login(env, "sec")
    draft = env["draft"]
    c.get(f"/drafts/{draft}")
    assert _post(c, f"/drafts/{draft}/autosave",
                 {"text": "Kept across the idle log-out.", "base_version": "1"}
                 ).status_code == 204
    token = _token(c.get("/worklist").text)
    with open_store(env["settings"]).session() as s:  # an hour without requests
        s.execute(update(WebSession).values(last_seen_at=datetime.now(UTC) - timedelta(hours=1)))
    # the idle log-out catches a save (a POST): the log-in page must not send back to it
    r = c.post(f"/drafts/{draft}/save", data={"csrf_token": token, "text": "x"},
               follow_redirects=False)
    assert r.status_code == 303 and "/login?next=" in r.headers["location"]
    login_url = r.headers["location"]
    page = c.get(login_url)
    assert "inactivity" in page.text
    assert f'name="next" value="/drafts/{draft}"' in page.text
    r = c.post("/login", data={"csrf_token": _token(page.text), "username": "sec",
                               "password": PASSWORD, "next": f"/drafts/{draft}/save"},
               follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/drafts/{draft}"
    page = c.get(r.headers["location"])
    assert page.status_code == 200, page.status_code  # not 405 Method Not Allowed
    assert "Kept across the idle log-out." in page.text


@pytest.mark.parametrize("target", [
    "https://evil.example/", "//evil.example/x", "/\\evil.example", "/\t/evil.example",
    "javascript:alert(1)", "http:/evil.example", "/login", "",
])
def test_login_next_refuses_outside_urls(env: dict, target: str) -> None:  # type: ignore[type-arg]
    c = TestClient(env["app"], client=("127.0.0.1", 50000))
    page = c.get("/login")
    r = c.post("/login", data={"csrf_token": _token(page.text), "username": "sec",
                               "password": PASSWORD, "next": target}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/worklist"


def test_login_next_keeps_a_local_page_with_its_query(env: dict) -> None:  # type: ignore[type-arg]
    _, location = _login(env, "sec", next_url=f"/drafts/{env['draft']}?saved=2")
    assert location == f"/drafts/{env['draft']}?saved=2"


# --- auto-texts ---------------------------------------------------------------------------

def test_autotexts_crud_versions_audit_and_rights(env: dict) -> None:  # type: ignore[type-arg]
    smith, _ = _login(env, "smith")
    r = _post(smith, "/autotexts", {"owner": "dr-smith", "name": "Normal physical exam",
                                    "trigger": "Normal Exam.", "body": "First version."})
    assert r.status_code == 303, r.text
    with open_store(env["settings"]).session() as s:
        at = s.scalar(select(AutoText))
        assert at is not None and at.trigger == "normal exam" and at.version == 1
        at_id = at.id
    r = _post(smith, f"/autotexts/{at_id}", {"name": "Normal physical exam",
                                             "trigger": "normal exam", "body": EXAM})
    assert r.status_code == 303
    assert _post(smith, f"/autotexts/{at_id}/active", {"active": "0"}).status_code == 303
    with open_store(env["settings"]).session() as s:
        versions = s.scalars(select(AutoTextVersion).where(AutoTextVersion.autotext_id == at_id)
                             .order_by(AutoTextVersion.version)).all()
        assert [(v.version, v.body, v.active) for v in versions] == [
            (1, "First version.", True), (2, EXAM, True), (3, EXAM, False)]
        actions = [e.action for e in s.scalars(select(AuditEvent).where(
            AuditEvent.object_type == "autotext").order_by(AuditEvent.id))]
        assert actions == ["autotext_add", "autotext_edit", "autotext_deactivate"]
        assert all("Lungs" not in str(e.detail) for e in s.scalars(select(AuditEvent)))
    page = smith.get(f"/autotexts/{at_id}").text
    assert "v3" in page and "First version." in page  # old versions kept and shown
    # another physician may not change it, a secretary may not create one; the practice's
    # are the administrator's
    patel, _ = _login(env, "patel")
    assert _post(patel, f"/autotexts/{at_id}", {"name": "x", "trigger": "x",
                                                "body": "x"}).status_code == 403
    sec, _ = _login(env, "sec")
    assert _post(sec, "/autotexts", {"owner": "practice", "name": "x", "trigger": "x",
                                     "body": "x"}).status_code == 403
    assert _post(smith, "/autotexts", {"owner": "practice", "name": "x", "trigger": "x",
                                       "body": "x"}).status_code == 403
    admin, _ = _login(env, "admin")
    assert _post(admin, "/autotexts", {"owner": "practice", "name": "Practice exam",
                                       "trigger": "normal exam",
                                       "body": PRACTICE_EXAM}).status_code == 303
    assert "Practice exam" in sec.get("/autotexts").text  # the secretary sees them
    with open_store(env["settings"]).session() as s:
        denied = s.scalars(select(AuditEvent).where(AuditEvent.object_type == "autotext",
                                                    AuditEvent.outcome == "denied")).all()
        assert len(denied) == 3


def test_hostile_autotext_body_is_escaped(env: dict) -> None:  # type: ignore[type-arg]
    smith, _ = _login(env, "smith")
    _post(smith, "/autotexts", {"owner": "dr-smith", "name": "<b>x</b>", "trigger": "xss",
                                "body": "</script><script>alert(1)</script> & more"})
    page = smith.get("/autotexts").text
    assert "<script>alert(1)" not in page
    editor = smith.get(f"/drafts/{env['draft']}").text
    assert "</script><script>alert(1)" not in editor


TABLE = [
    ("physical exam colon insert normal exam period plan colon follow up",
     f"PHYSICAL EXAM: {EXAM}"),
    ("insert the normal exam", EXAM),
    ("insert normal exam female", "Female exam text."),
    ("we will insert a chest tube", "We will insert a chest tube"),
]


@pytest.mark.parametrize(("spoken", "expected"), TABLE)
def test_insert_command_in_normalize_text(settings: Settings, spoken: str, expected: str) -> None:
    texts = {"normal exam": EXAM, "normal exam female": "Female exam text."}
    note = normalize_text(spoken, settings, autotexts=texts)
    assert note.text.startswith(expected), note.text
    if expected != TABLE[-1][1]:
        kinds = [c.kind for c in note.corrections]
        assert "autotext" in kinds
    # without auto-texts the words stay words
    assert "insert" in normalize_text(spoken, settings).text.lower()


def test_insert_command_end_to_end_through_the_process_stage(env: dict) -> None:  # type: ignore[type-arg]
    settings = env["settings"]
    smith, _ = _login(env, "smith")
    admin, _ = _login(env, "admin")
    _post(admin, "/autotexts", {"owner": "practice", "name": "Practice exam",
                                "trigger": "normal exam", "body": PRACTICE_EXAM})
    _post(admin, "/autotexts", {"owner": "practice", "name": "Post-op",
                                "trigger": "post-op instructions",
                                "body": "Keep the wound dry for 48 hours."})
    spoken = ("Examination colon insert normal exam. Insert post-op instructions. "
              "Follow up in two weeks.")
    transcript = Transcript(dictation_id="d1", model="tiny.en", language="en", duration_s=8.0,
                            segments=[Segment(id=0, start=0.0, end=8.0, text=spoken)])

    def run(physician: str) -> str:
        dictation = Dictation(id="d1", audio=None,  # type: ignore[arg-type]
                              meta=DictationMeta(physician_id=physician))
        return normalize_stage(transcript, dictation, settings).text

    assert PRACTICE_EXAM in run("dr-patel")  # only the practice's
    assert "Keep the wound dry for 48 hours." in run("dr-patel")
    _post(smith, "/autotexts", {"owner": "dr-smith", "name": "Mine", "trigger": "normal exam",
                                "body": EXAM})
    text = run("dr-smith")
    assert EXAM in text and PRACTICE_EXAM not in text  # the physician's own wins
    assert PRACTICE_EXAM in run("dr-patel")


# --- transcription keys -------------------------------------------------------------------

def test_key_bindings_saved_per_user_and_shown_in_the_editor(env: dict) -> None:  # type: ignore[type-arg]
    sec, _ = _login(env, "sec")
    draft = env["draft"]
    page = sec.get(f"/drafts/{draft}").text
    assert re.search(r'data-action="play_pause">F9<', page)  # the keyboard preset
    assert _post(sec, "/settings/keys", {"preset": "pedal"}).status_code == 303
    page = sec.get(f"/drafts/{draft}").text
    assert "USB foot pedal" in page
    assert re.search(r'data-action="play_pause">F10<', page)
    assert re.search(r'data-action="rewind">F9<', page)
    assert re.search(r'data-action="forward">F11<', page)
    r = _post(sec, "/settings/keys", {"preset": "custom", "play_pause": "Alt+Space",
                                      "rewind": "F4", "forward": "F6", "slower": "F3",
                                      "faster": "F5", "next_flag": "F2", "rewind_s": "5"})
    assert r.status_code == 303
    page = sec.get(f"/drafts/{draft}").text
    assert re.search(r'data-action="rewind">F4<', page) and "5 s" in page
    # a duplicate or nonsense key is refused with a message
    r = _post(sec, "/settings/keys", {"preset": "custom", "play_pause": "F4", "rewind": "F4",
                                      "forward": "F6", "slower": "F3", "faster": "F5",
                                      "next_flag": "F2"})
    assert r.status_code == 400 and "same key" in r.text
    r = _post(sec, "/settings/keys", {"preset": "custom", "play_pause": "<script>"})
    assert r.status_code == 400 and "<script>" not in r.text
    # another user still has the default
    smith, _ = _login(env, "smith")
    assert "Preset: keyboard" in smith.get("/settings/keys").text or \
        'value="keyboard" checked' in smith.get("/settings/keys").text


def test_migration_leaves_one_head() -> None:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from pipeline.core import migrations

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__path__[0])))
    assert len(ScriptDirectory.from_config(cfg).get_heads()) == 1  # one chain of revisions
