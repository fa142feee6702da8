"""The secretary's day pages and practice administration through the real app (FastAPI
TestClient, real SQLite, real log-in, real encrypted files): patients shown on tasks,
referrals and routing; referral reports uploaded and downloaded; the referrals page head;
routing failures explained; cancel/no-show confirmation; the self-refreshing worklist with
its STAT announcement; roles, assignments, working hours, time off, on-call and resources
set by an administrator."""

from __future__ import annotations

import io
import re
import socket
import uuid
import zipfile
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from pipeline.core import files
from pipeline.core.db.core import AuditEvent, DictationRow, DraftRow
from pipeline.core.db.review import User, UserPhysician
from pipeline.core.db.schedule import (
    Appointment,
    AvailabilityRule,
    CalendarBlock,
    Delivery,
    ReferralDocument,
    Resource,
)
from pipeline.core.errors import ConflictError
from pipeline.core.records import Instruction, to_jsonable
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.review.users import create_user
from pipeline.secretary import referrals, route, schedule, tasks
from pipeline.secretary.schedule.calendars import ScheduleOptions
from pipeline.web.app import create_app
from pipeline.web.seed import add_draft

PASSWORD = "correct-horse-9"
TZ = ZoneInfo("America/New_York")
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<<>>\n%%EOF\n" + b"x" * 2000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One app for the module; a dr-smith draft (patient Carol Taskpatient) with a referral
    instruction, hence a task and a referral, and a delivery of it."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("secpages") / "var", model="tiny.en",
                        device="cpu", compute_type="int8", physicians=["dr-smith", "dr-patel"],
                        pdf="never", timezone="America/New_York")
    app = create_app(settings)
    opts = ScheduleOptions(default_timezone="America/New_York")
    with open_store(settings).session() as s:
        create_user(s, "admin", PASSWORD, "admin")
        create_user(s, "sec", PASSWORD, "secretary", ["dr-smith"])
        create_user(s, "patel", PASSWORD, "physician", ["dr-patel"])
        create_user(s, "temp", PASSWORD, "secretary", ["dr-patel"])
        for wd in range(7):
            schedule.add_availability(s, "dr-smith", wd, "09:00", "17:00")
            schedule.add_availability(s, "dr-patel", wd, "09:00", "17:00")
        did = uuid.uuid4().hex
        s.add(DictationRow(id=did, sha256=did * 2, physician_id="dr-smith"))
        doc = {"instructions": [to_jsonable(Instruction("refer", "Refer to cardiology.",
                                                        {"specialty": "cardiology"}))]}
        draft = DraftRow(id=uuid.uuid4().hex, dictation_id=did, physician_id="dr-smith",
                         document_type="consultation_letter", audio_sha256=did * 2,
                         document=doc, patient_name="Carol Taskpatient", mrn="MRN-7731")
        s.add(draft)
        s.flush()
        (task,) = tasks.tasks_from_draft(s, draft, options=tasks.TaskOptions(schedule=opts))
        rec = route.add_recipient(s, "Records", "department", "print")
        route.route_draft(s, draft.id, recipient_id=rec.id)
    return {"app": app, "settings": settings, "opts": opts, "task": task.id,
            "ref": task.referral_id, "draft": draft.id, "clients": {}}


def _token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "page has no CSRF token"
    return m.group(1)


def _login(env, username: str, *, fresh: bool = False) -> TestClient:
    if username in env["clients"] and not fresh:
        return env["clients"][username]
    c = TestClient(env["app"], client=("127.0.0.1", 50000))
    r = c.post("/login", data={"csrf_token": _token(c.get("/login").text),
                               "username": username, "password": PASSWORD},
               follow_redirects=False)
    assert r.status_code == 303, r.text
    if not fresh:
        env["clients"][username] = c
    return c


def _post(c: TestClient, url: str, data: dict | None = None, **kw):
    token = _token(c.get("/worklist").text)
    return c.post(url, data={"csrf_token": token, **(data or {})}, follow_redirects=False,
                  **kw)


def _audit(env, **where) -> list[AuditEvent]:
    with open_store(env["settings"]).session() as s:
        stmt = select(AuditEvent).where(*[getattr(AuditEvent, k) == v
                                          for k, v in where.items()])
        return list(s.scalars(stmt))


# --- patients on the day pages ----------------------------------------------------------


def test_tasks_referrals_routing_show_the_patient_to_allowed_users(env):
    c = _login(env, "sec")
    for url in ("/schedule/tasks", "/schedule/referrals", "/schedule/routing"):
        html = c.get(url).text
        assert "Carol Taskpatient" in html and "MRN-7731" in html, url
    other = _login(env, "patel")  # dr-patel's physician: not this patient's drafts
    for url in ("/schedule/tasks", "/schedule/referrals", "/schedule/routing"):
        assert "Carol Taskpatient" not in other.get(url).text, url
    events = [e for e in _audit(env, actor="sec", action="view", object_type="task_list")]
    assert events and events[-1].detail.get("patients") == 1


# --- referral documents -----------------------------------------------------------------


def _upload(c, ref_id: int, name: str, data: bytes, ctype: str = "application/pdf"):
    token = _token(c.get("/schedule/referrals").text)
    return c.post(f"/schedule/referrals/{ref_id}/attach",
                  data={"csrf_token": token, "role": "report", "name": ""},
                  files={"file": (name, data, ctype)}, follow_redirects=False)


def test_report_uploaded_encrypted_and_downloaded(env):
    c = _login(env, "sec")
    r = _upload(c, env["ref"], "cardio report.pdf", PDF)
    assert r.status_code == 303 and "notice=" in r.headers["location"], r.headers
    with open_store(env["settings"]).session() as s:
        doc = s.scalars(select(ReferralDocument).where(
            ReferralDocument.referral_id == env["ref"], ReferralDocument.role == "report")
        ).one()
        doc_id, path = doc.id, Path(doc.path)
    assert path.is_relative_to(referrals.attachments_dir(env["settings"]))
    raw = path.read_bytes()
    assert files.is_encrypted(path) and b"%PDF" not in raw
    html = c.get("/schedule/referrals").text
    assert f'href="/schedule/referrals/documents/{doc_id}"' in html
    assert 'name="path"' not in html and 'type="file"' in html
    got = c.get(f"/schedule/referrals/documents/{doc_id}")
    assert got.status_code == 200 and got.content == PDF
    assert got.headers["content-type"] == "application/pdf"
    assert "attachment" in got.headers["content-disposition"]
    assert _audit(env, actor="sec", action="download", object_id=str(doc_id))
    # someone without the physician may not download it
    assert _login(env, "patel").get(f"/schedule/referrals/documents/{doc_id}"
                                     ).status_code == 403


@pytest.mark.parametrize(("name", "data", "message"), [
    ("notes.txt", b"plain text", "expected a PDF, PNG, JPEG, TIFF or Word"),
    ("fake.pdf", b"MZ\x90\x00 not a pdf", "expected a PDF, PNG, JPEG, TIFF or Word"),
    ("empty.pdf", b"", "arrived empty"),
    ("huge.pdf", b"%PDF-" + b"0" * (referrals.MAX_ATTACHMENT_BYTES + 10), "at most 20 MB"),
])
def test_refused_uploads_say_why_and_store_nothing(env, name, data, message):
    c = _login(env, "sec")
    with open_store(env["settings"]).session() as s:
        before = s.query(ReferralDocument).count()
    r = _upload(c, env["ref"], name, data)
    assert r.status_code == 303 and "error=" in r.headers["location"]
    page = c.get(r.headers["location"]).text
    assert message in page.replace("&#39;", "'")
    with open_store(env["settings"]).session() as s:
        assert s.query(ReferralDocument).count() == before


def test_docx_and_png_accepted_and_server_path_field_ignored(env):
    c = _login(env, "sec")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("word/document.xml", "<w:document/>")
    assert _upload(c, env["ref"], "letter.docx", buf.getvalue(),
                   "application/octet-stream").headers["location"].count("notice=") == 1
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    assert "notice=" in _upload(c, env["ref"], "scan.png", png, "image/png"
                                ).headers["location"]
    # the old form's server path is not a way to attach (or read) a server file any more
    r = _post(c, f"/schedule/referrals/{env['ref']}/attach",
              {"role": "report", "name": "x", "path": "/etc/passwd"})
    assert r.status_code == 303 and "error=" in r.headers["location"]
    with open_store(env["settings"]).session() as s:
        assert not s.scalars(select(ReferralDocument).where(
            ReferralDocument.path == "/etc/passwd")).all()
        legacy = referrals.attach_document(s, env["ref"], "other", actor="t",
                                           path="/etc/hostname", name="legacy")
        legacy_id = legacy.id
    assert c.get(f"/schedule/referrals/documents/{legacy_id}").status_code == 404


def test_referrals_page_title_is_plain_and_form_in_body(env):
    html = _login(env, "sec").get("/schedule/referrals").text
    head, body = html.split("</head>", 1)
    assert re.search(r"<title>Referrals · Dictation workbench</title>", head)
    assert "<form" not in head and "csrf_token" not in head
    assert body.count("New referral") == 1


# --- routing failures -------------------------------------------------------------------


def test_routing_failure_explained_not_python_text(env, tmp_path, caplog):
    settings = env["settings"]
    port = _free_port()  # nothing listens there
    with open_store(settings).session() as s:
        did = uuid.uuid4().hex
        doc = tmp_path / "letter.txt"
        doc.write_text("Signed letter.\n")
        s.add(DictationRow(id=did, sha256=did * 2, physician_id="dr-smith"))
        draft = DraftRow(id=uuid.uuid4().hex, dictation_id=did, physician_id="dr-smith",
                         document_type="consultation_letter", status="signed",
                         audio_sha256=did * 2, text="Signed letter.", mrn="MRN-R9",
                         patient_name="Dora Routepatient", outputs={"txt": str(doc)})
        s.add(draft)
        s.flush()
        rec = route.add_recipient(s, "Lab", "department", "email", "lab@clinic.example")
        delivery_id = route.route_draft(s, draft.id, recipient_id=rec.id).id
    opts = route.RouteOptions(smtp_host="localhost", smtp_port=port, smtp_security="starttls",
                              smtp_timeout_s=5)
    with caplog.at_level("WARNING", logger="pipeline.secretary.route"):
        route.deliver_due(settings, opts, draft_id=draft.id)
    with open_store(settings).session() as s:
        last = s.get(Delivery, delivery_id).last_error
    assert last.startswith(f"Connection refused by the mail server at localhost:{port}")
    assert "check that it runs" in last and "Errno" not in last
    html = _login(env, "sec").get("/schedule/routing").text
    assert "check that it runs and the SMTP settings" in html
    assert "ConnectionRefusedError" not in html and "[Errno" not in html
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "ConnectionRefusedError" in logged and "Dora" not in logged


# --- cancel / no-show confirmation ------------------------------------------------------


@pytest.mark.parametrize("status", ["cancelled", "no_show"])
def test_cancel_and_no_show_ask_for_confirmation(env, status):
    today = datetime.now(TZ).date()
    monday = today + timedelta(days=7 - today.weekday())
    hour = 13 if status == "cancelled" else 14
    with open_store(env["settings"]).session() as s:
        appt = schedule.book(s, physician_id="dr-smith",
                             start=datetime(monday.year, monday.month, monday.day, hour,
                                            tzinfo=TZ),
                             patient_name="Eve Confirmpatient", options=env["opts"])
        appt_id = appt.id
    c = _login(env, "sec")
    back = f"/schedule/day?date={monday}&physician=dr-smith"
    r = _post(c, f"/schedule/appointments/{appt_id}/status", {"status": status, "back": back})
    assert r.status_code == 200
    assert "Yes, " in r.text and 'name="confirmed" value="1"' in r.text
    assert "Eve Confirmpatient" in r.text and "No, go back" in r.text
    with open_store(env["settings"]).session() as s:
        assert s.get(Appointment, appt_id).status == "booked"
    r = _post(c, f"/schedule/appointments/{appt_id}/status",
              {"status": status, "back": back, "confirmed": "1"})
    assert r.status_code == 303
    with open_store(env["settings"]).session() as s:
        assert s.get(Appointment, appt_id).status == status


# --- the worklist refreshes itself ------------------------------------------------------


def test_worklist_polls_its_table_and_announces_new_stat(env):
    c = _login(env, "sec")
    page = c.get("/worklist?status=open&q=").text
    assert 'id="stat-announce"' in page and 'aria-live="assertive"' in page
    assert re.search(r'id="worklist-table" hx-get="/worklist\?status=open[^"]*" '
                     r'hx-trigger="every \d+s"', page)
    with open_store(env["settings"]).session() as s:
        stat_id = add_draft(s, text="Chest pain.", segments=[{"text": "Chest pain."}],
                            physician_id="dr-smith", patient_name="Frank Statpatient",
                            mrn="MRN-S1", priority="stat")
    headers = {"HX-Request": "true", "HX-Target": "worklist-table"}
    r = c.get("/worklist?status=open&poll=1&seen_stat=", headers=headers)
    assert r.status_code == 200 and "<html" not in r.text
    assert "Frank Statpatient" in r.text
    assert 'hx-swap-oob="innerHTML"' in r.text and 'role="alert"' in r.text
    assert "New STAT draft" in r.text
    r = c.get(f"/worklist?status=open&poll=1&seen_stat={stat_id}", headers=headers)
    assert "New STAT draft" not in r.text and "Frank Statpatient" in r.text
    # a filter survives the refresh: the polled table keeps asking with it
    r = c.get("/worklist?status=open&priority=routine&poll=1&seen_stat=", headers=headers)
    assert "priority=routine" in r.text and "Frank Statpatient" not in r.text


# --- practice administration ------------------------------------------------------------


def test_admin_changes_role_and_physicians_and_sessions_end(env):
    admin = _login(env, "admin")
    temp = _login(env, "temp", fresh=True)
    assert temp.get("/worklist").status_code == 200
    r = _post(admin, "/admin/users/temp/physicians", {"physician": ["dr-smith", "dr-patel"]})
    assert r.status_code == 303 and "notice=" in r.headers["location"]
    with open_store(env["settings"]).session() as s:
        uid = s.scalar(select(User.id).where(User.username == "temp"))
        assert sorted(s.scalars(select(UserPhysician.physician_id).where(
            UserPhysician.user_id == uid))) == ["dr-patel", "dr-smith"]
    r = _post(admin, "/admin/users/temp/role", {"role": "admin"})
    assert r.status_code == 303 and "notice=" in r.headers["location"]
    with open_store(env["settings"]).session() as s:
        assert s.scalar(select(User.role).where(User.username == "temp")) == "admin"
    after = temp.get("/worklist", follow_redirects=False)
    assert after.status_code == 303 and "/login" in after.headers["location"]
    assert _audit(env, actor="admin", action="user_role", object_id="temp")
    assert _audit(env, actor="admin", action="user_physicians", object_id="temp")
    # the page shows the forms with the current values
    html = admin.get("/admin/users").text
    assert 'action="/admin/users/temp/role"' in html
    assert 'action="/admin/users/temp/physicians"' in html
    # back to a secretary; an unknown role and an unknown physician are refused
    assert "notice=" in _post(admin, "/admin/users/temp/role",
                              {"role": "secretary"}).headers["location"]
    assert "error=" in _post(admin, "/admin/users/temp/role",
                             {"role": "overlord"}).headers["location"]
    assert "error=" in _post(admin, "/admin/users/temp/physicians",
                             {"physician": "dr-nobody"}).headers["location"]
    assert "error=" in _post(admin, "/admin/users/admin/role",
                             {"role": "secretary"}).headers["location"]  # last admin


def test_only_admins_with_csrf_change_users_and_calendars(env):
    sec = _login(env, "sec")
    for url, data in [("/admin/users/temp/role", {"role": "admin"}),
                      ("/admin/users/temp/physicians", {"physician": "dr-smith"}),
                      ("/admin/practice/hours", {"physician": "dr-smith", "weekday": "0",
                                                 "start": "08:00", "end": "12:00"}),
                      ("/admin/practice/time-off", {"physician": "dr-smith",
                                                    "first_day": "2030-01-01"})]:
        assert _post(sec, url, data).status_code == 403, url
    assert sec.get("/admin/practice").status_code == 403
    admin = _login(env, "admin")
    r = admin.post("/admin/practice/time-off", data={"physician": "dr-smith",
                                                     "first_day": "2030-01-01"},
                   follow_redirects=False)
    assert r.status_code == 403


def test_admin_sets_hours_time_off_on_call_and_resources(env):
    admin = _login(env, "admin")
    assert "Working hours of dr-patel" in admin.get("/admin/practice?physician=dr-patel").text
    r = _post(admin, "/admin/practice/hours", {"physician": "dr-patel", "weekday": ["5", "6"],
                                               "start": "08:00", "end": "12:30"})
    assert r.status_code == 303 and "notice=" in r.headers["location"]
    with open_store(env["settings"]).session() as s:
        rules = list(s.scalars(select(AvailabilityRule).where(
            AvailabilityRule.physician_id == "dr-patel",
            AvailabilityRule.start_local == datetime.strptime("08:00", "%H:%M").time())))
        assert sorted(r.weekday for r in rules) == [5, 6]
        assert {str(r.start_local) for r in rules} == {"08:00:00"}
        rule_id = rules[0].id
    html = admin.get("/admin/practice?physician=dr-patel").text
    assert "Sat" in html and "12:30" in html
    assert "notice=" in _post(admin, f"/admin/practice/hours/{rule_id}/delete"
                              ).headers["location"]
    first = datetime.now(TZ).date() + timedelta(days=30)
    r = _post(admin, "/admin/practice/time-off", {"physician": "dr-patel",
                                                  "first_day": str(first),
                                                  "last_day": str(first + timedelta(days=2)),
                                                  "title": "Congress"})
    assert "notice=" in r.headers["location"]
    r = _post(admin, "/admin/practice/on-call", {"physician": "dr-patel",
                                                 "start": f"{first + timedelta(days=5)}T19:00",
                                                 "end": f"{first + timedelta(days=6)}T07:00"})
    assert "notice=" in r.headers["location"]
    with open_store(env["settings"]).session() as s:
        kinds = sorted(b.kind for b in s.scalars(select(CalendarBlock).where(
            CalendarBlock.physician_id == "dr-patel")))
        assert kinds == ["on_call", "time_off"]
        # time off really blocks booking
        with pytest.raises(ConflictError) as refused:
            schedule.book(s, physician_id="dr-patel",
                          start=datetime(first.year, first.month, first.day, 10, tzinfo=TZ),
                          patient_name="X", options=env["opts"])
        assert any(c.kind == "time_off" for c in refused.value.conflicts)
    html = admin.get("/admin/practice?physician=dr-patel").text
    assert "Congress" in html and "on call" in html
    r = _post(admin, "/admin/practice/time-off", {"physician": "dr-patel",
                                                  "first_day": str(first),
                                                  "last_day": str(first - timedelta(days=1))})
    assert "error=" in r.headers["location"]
    r = _post(admin, "/admin/practice/resources", {"name": "OR 7", "kind": "operating room"})
    assert "notice=" in r.headers["location"]
    with open_store(env["settings"]).session() as s:
        res = s.scalars(select(Resource).where(Resource.name == "OR 7")).one()
        assert res.kind == "operating_room" and res.active
        res_id = res.id
    assert "notice=" in _post(admin, f"/admin/practice/resources/{res_id}/active",
                              {"active": "0"}).headers["location"]
    with open_store(env["settings"]).session() as s:
        assert not s.get(Resource, res_id).active
    assert "error=" in _post(admin, "/admin/practice/resources",
                             {"name": "OR 7", "kind": "x"}).headers["location"]
    for action in ("calendar_hours_add", "calendar_hours_remove", "calendar_time_off",
                   "calendar_on_call", "resource_add", "resource_active"):
        assert _audit(env, actor="admin", action=action), action


def test_deactivate_reactivate_and_reset_password_from_the_page(env):
    admin = _login(env, "admin")
    with open_store(env["settings"]).session() as s:
        create_user(s, "leaver", PASSWORD, "secretary", ["dr-smith"])
    leaver = _login(env, "leaver", fresh=True)
    html = admin.get("/admin/users").text
    for action in ("disable", "password"):
        assert f'action="/admin/users/leaver/{action}"' in html
    assert _post(admin, "/admin/users/leaver/disable").status_code == 303
    assert leaver.get("/worklist", follow_redirects=False).status_code == 303
    assert 'action="/admin/users/leaver/enable"' in admin.get("/admin/users").text
    assert _post(admin, "/admin/users/leaver/enable").status_code == 303
    again = _login(env, "leaver", fresh=True)
    r = _post(admin, "/admin/users/leaver/password", {"password": "new-stapler-battery-7"})
    assert "notice=" in r.headers["location"]
    assert again.get("/worklist", follow_redirects=False).status_code == 303
