"""Scheduling pages through the real app (FastAPI TestClient, real SQLite, real log-in):
role table, booking with conflict feedback, status changes, tasks, referrals, routing,
CSRF, audit."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from pipeline.core.db.core import AuditEvent, DictationRow, DraftRow, Physician
from pipeline.core.db.schedule import Appointment
from pipeline.core.records import Instruction, to_jsonable
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.review.users import create_user
from pipeline.secretary import referrals, route, schedule, tasks
from pipeline.secretary.schedule.calendars import ScheduleOptions
from pipeline.web.app import create_app

PASSWORD = "correct-horse-9"
TZ = ZoneInfo("America/New_York")


def _next_monday() -> datetime:
    today = datetime.now(TZ).date()
    monday = today + timedelta(days=7 - today.weekday())
    return datetime.combine(monday, datetime.min.time(), tzinfo=TZ)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One app for the module (argon2 hashing and log-ins are slow): tests that change
    state use their own appointments."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("schedweb") / "var", model="tiny.en",
                        device="cpu", compute_type="int8", physicians=["dr-smith", "dr-patel"],
                        pdf="never", timezone="America/New_York")
    app = create_app(settings)
    monday = _next_monday()
    opts = ScheduleOptions(default_timezone="America/New_York")
    with open_store(settings).session() as s:
        create_user(s, "admin", PASSWORD, "admin")
        create_user(s, "sec", PASSWORD, "secretary", ["dr-smith"])
        create_user(s, "smith", PASSWORD, "physician", ["dr-smith"])
        create_user(s, "patel", PASSWORD, "physician", ["dr-patel"])
        for pid in ("dr-smith", "dr-patel"):
            for wd in range(5):
                schedule.add_availability(s, pid, wd, "09:00", "17:00")
        smith_appt = schedule.book(s, physician_id="dr-smith", start=monday.replace(hour=9),
                                   patient_name="Ann Smithpatient", mrn="M-1",
                                   patient_phone="555-0100", options=opts)
        patel_appt = schedule.book(s, physician_id="dr-patel", start=monday.replace(hour=10),
                                   patient_name="Bob Patelpatient", options=opts)
        did = uuid.uuid4().hex
        s.add(DictationRow(id=did, sha256=did * 2, physician_id="dr-patel"))
        doc = {"instructions": [to_jsonable(Instruction("refer", "Refer to cardiology.",
                                                        {"specialty": "cardiology"}))]}
        draft = DraftRow(id=uuid.uuid4().hex, dictation_id=did, physician_id="dr-patel",
                         document_type="consultation_letter", audio_sha256=did * 2,
                         document=doc)
        s.add(draft)
        s.flush()
        (patel_task,) = tasks.tasks_from_draft(s, draft, options=tasks.TaskOptions(
            schedule=opts))
        rec = route.add_recipient(s, "Records", "department", "print")
        delivery = route.route_draft(s, draft.id, recipient_id=rec.id)
    return {"app": app, "settings": settings, "monday": monday, "smith_appt": smith_appt.id,
            "patel_appt": patel_appt.id, "patel_task": patel_task.id,
            "patel_ref": patel_task.referral_id, "patel_delivery": delivery.id,
            "opts": opts, "clients": {}}


def _token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "page has no CSRF token"
    return m.group(1)


def _login(env, username: str) -> TestClient:
    if username in env["clients"]:
        return env["clients"][username]
    c = TestClient(env["app"], client=("127.0.0.1", 50000))
    env["clients"][username] = c
    if username == "anon":
        return c
    r = c.post("/login", data={"csrf_token": _token(c.get("/login").text),
                               "username": username, "password": PASSWORD},
               follow_redirects=False)
    assert r.status_code == 303, r.text
    return c


def _post(c: TestClient, url: str, data: dict[str, str]):
    token = _token(c.get("/schedule/routing").text)
    return c.post(url, data={"csrf_token": token, **data}, follow_redirects=False)


ACCESS = [
    ("anon", "GET", "/schedule/week", None, 303),
    ("anon", "GET", "/schedule/tasks", None, 303),
    ("sec", "GET", "/schedule/week", None, 200),
    ("sec", "GET", "/schedule/day?physician=dr-smith", None, 200),
    ("sec", "GET", "/schedule/day?physician=dr-patel", None, 403),
    ("sec", "GET", "/schedule/week?physician=dr-patel", None, 403),
    ("sec", "GET", "/schedule/appointments/{smith_appt}", None, 200),
    ("sec", "GET", "/schedule/appointments/{patel_appt}", None, 403),
    ("sec", "POST", "/schedule/appointments/{patel_appt}/status", {"status": "confirmed"}, 403),
    ("sec", "POST", "/schedule/tasks/{patel_task}/status", {"status": "done"}, 403),
    ("sec", "POST", "/schedule/referrals/{patel_ref}/advance", {"status": "sent"}, 403),
    ("sec", "POST", "/schedule/deliveries/{patel_delivery}/retry", {}, 403),
    ("sec", "GET", "/schedule/ics/dr-patel.ics", None, 403),
    ("sec", "GET", "/schedule/ics/dr-smith.ics", None, 200),
    ("sec", "GET", "/schedule/confirmations", None, 200),
    ("sec", "GET", "/schedule/referrals", None, 200),
    ("sec", "GET", "/schedule/routing", None, 200),
    ("sec", "GET", "/schedule/book", None, 200),
    ("smith", "GET", "/schedule/week?physician=dr-smith", None, 200),
    ("smith", "GET", "/schedule/appointments/{patel_appt}", None, 403),
    ("smith", "POST", "/schedule/recipients",
     {"name": "X", "kind": "department", "channel": "print"}, 403),
    ("patel", "GET", "/schedule/appointments/{patel_appt}", None, 200),
    ("patel", "POST", "/schedule/tasks/{patel_task}/take", {}, 303),
    ("admin", "GET", "/schedule/day?physician=dr-patel", None, 200),
    ("admin", "GET", "/schedule/fhir/dr-patel.json", None, 200),
    ("admin", "GET", "/schedule/appointments/999999", None, 404),
]


@pytest.mark.parametrize(("role", "method", "path", "data", "expected"), ACCESS,
                         ids=[f"{r}-{m}-{p}" for r, m, p, _, _ in ACCESS])
def test_access_table(env, role, method, path, data, expected):
    """Each role sees only its physicians' calendars and work."""
    c = _login(env, role)
    url = path.format(**env)
    r = c.get(url, follow_redirects=False) if method == "GET" else _post(c, url, data or {})
    assert r.status_code == expected, r.text[:300]


def test_secretary_week_shows_only_assigned(env):
    c = _login(env, "sec")
    html = c.get(f"/schedule/week?date={env['monday'].date()}").text
    assert "Ann Smithpatient" in html and "Bob Patelpatient" not in html
    admin = _login(env, "admin").get(f"/schedule/week?date={env['monday'].date()}").text
    assert "Ann Smithpatient" in admin and "Bob Patelpatient" in admin


def test_booking_form_success_and_conflict_feedback(env):
    c = _login(env, "sec")
    day = str(env["monday"].date())
    token = _token(c.get("/schedule/book").text)
    ok = c.post("/schedule/book", data={"csrf_token": token, "physician": "dr-smith",
                                        "date": day, "time": "11:00", "type": "follow_up",
                                        "patient_name": "Carl <b>Bold</b>"},
                follow_redirects=False)
    assert ok.status_code == 303 and "booked" in ok.headers["location"]
    clash = c.post("/schedule/book", data={"csrf_token": token, "physician": "dr-smith",
                                           "date": day, "time": "09:10", "type": "follow_up"})
    assert clash.status_code == 409
    assert "Ann Smithpatient" not in clash.text  # message names the appointment, not patient
    assert "is already booked" in clash.text and "09:00-09:20" in clash.text
    outside = c.post("/schedule/book", data={"csrf_token": token, "physician": "dr-smith",
                                             "date": day, "time": "18:00", "type": "follow_up"})
    assert outside.status_code == 409 and "outside" in outside.text
    day_html = c.get(f"/schedule/day?date={day}&physician=dr-smith").text
    assert "Carl &lt;b&gt;Bold&lt;/b&gt;" in day_html
    with open_store(env["settings"]).session() as s:
        appt = s.scalars(select(Appointment).where(Appointment.patient_name.like("Carl%"))).one()
        start = appt.start_utc.replace(tzinfo=UTC).astimezone(TZ)
        assert (start.hour, start.minute) == (11, 0)


def test_forged_post_without_csrf_rejected(env):
    c = _login(env, "sec")
    r = c.post(f"/schedule/appointments/{env['smith_appt']}/status",
               data={"status": "confirmed"}, follow_redirects=False)
    assert r.status_code == 403
    with open_store(env["settings"]).session() as s:
        assert s.get(Appointment, env["smith_appt"]).status == "booked"


def test_status_flow_and_illegal_move_via_web(env):
    c = _login(env, "sec")
    with open_store(env["settings"]).session() as s:
        aid = schedule.book(s, physician_id="dr-smith", start=env["monday"].replace(hour=14),
                            options=env["opts"]).id
    assert _post(c, f"/schedule/appointments/{aid}/status",
                 {"status": "confirmed"}).status_code == 303
    bad = _post(c, f"/schedule/appointments/{aid}/status", {"status": "completed"})
    assert bad.status_code == 409
    page = c.get(f"/schedule/appointments/{aid}").text
    assert "sec" in page and "confirmed" in page


def test_confirmation_list_page(env):
    c = _login(env, "sec")
    html = c.get(f"/schedule/confirmations?date={env['monday'].date()}").text
    assert "Ann Smithpatient" in html and "555-0100" in html
    assert "Bob Patelpatient" not in html


def test_tasks_referrals_routing_pages(env):
    c = _login(env, "patel")
    tasks_html = c.get("/schedule/tasks").text
    assert "Refer to cardiology" in tasks_html
    ref_html = c.get("/schedule/referrals").text
    assert "cardiology" in ref_html and "requested" in ref_html
    assert _post(c, f"/schedule/referrals/{env['patel_ref']}/advance",
                 {"status": "sent"}).status_code == 303
    with open_store(env["settings"]).session() as s:
        assert s.get(referrals.Referral, env["patel_ref"]).status == "sent"
        assert tasks.task_list(s, physician_ids=["dr-patel"]) == []  # refer task done
    routing_html = c.get("/schedule/routing").text
    assert "Records" in routing_html and "pending" in routing_html
    assert "Refer to cardiology" not in _login(env, "sec").get("/schedule/tasks").text


def test_views_are_audited(env):
    c = _login(env, "sec")
    c.get("/schedule/week")
    c.get(f"/schedule/appointments/{env['smith_appt']}")
    with open_store(env["settings"]).session() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.actor == "sec",
                                                    AuditEvent.action == "view")).all()
        kinds = {(e.object_type, e.object_id) for e in events}
        assert ("calendar_week", None) in kinds
        assert ("appointment", str(env["smith_appt"])) in kinds
        assert any(e.patient_ref == "M-1" for e in events)


def test_physician_names_shown(env):
    with open_store(env["settings"]).session() as s:
        s.get(Physician, "dr-smith").name = "Dr. Jane Smith"
    html = _login(env, "admin").get("/schedule/week").text
    assert "Dr. Jane Smith" in html


def test_move_appointment_via_web(env):
    c = _login(env, "sec")
    with open_store(env["settings"]).session() as s:
        aid = schedule.book(s, physician_id="dr-smith", start=env["monday"].replace(hour=15),
                            options=env["opts"]).id
    day = str(env["monday"].date())
    clash = _post(c, f"/schedule/appointments/{aid}/move", {"date": day, "time": "09:00"})
    assert clash.status_code == 303 and "error=" in clash.headers["location"]
    page = c.get(clash.headers["location"]).text
    assert "already booked" in page
    ok = _post(c, f"/schedule/appointments/{aid}/move", {"date": day, "time": "16:00"})
    assert "notice=" in ok.headers["location"]
    with open_store(env["settings"]).session() as s:
        start = s.get(Appointment, aid).start_utc.replace(tzinfo=UTC).astimezone(TZ)
        assert start.hour == 16
    other = _post(c, f"/schedule/appointments/{env['patel_appt']}/move",
                  {"date": day, "time": "16:00"})
    assert other.status_code == 403


def test_new_referral_via_web(env):
    c = _login(env, "sec")
    r = _post(c, "/schedule/referrals", {"specialty": "dermatology", "physician": "dr-smith",
                                         "mrn": "M-9"})
    assert r.status_code == 303 and "opened" in r.headers["location"]
    assert "dermatology" in c.get("/schedule/referrals").text
    assert _post(c, "/schedule/referrals", {"specialty": "x", "physician": "dr-patel"}
                 ).status_code == 403


def test_resource_week_and_rota(env):
    """Resources: every physician's bookings show, patient names only for one's own."""
    with open_store(env["settings"]).session() as s:
        us = schedule.add_resource(s, "Ultrasound Web", "ultrasound")
        schedule.book(s, physician_id="dr-patel", start=env["monday"].replace(hour=13),
                      type_code="diagnostic_test", resource_id=us.id,
                      patient_name="Zed Patelonly", options=env["opts"])
        schedule.book(s, physician_id="dr-smith", start=env["monday"].replace(hour=13),
                      type_code="diagnostic_test", resource_id=None,
                      patient_name="Yan Smithonly", options=env["opts"])
        schedule.add_on_call(s, "dr-smith", env["monday"].replace(hour=18),
                             env["monday"].replace(hour=23))
        rid = us.id
    c = _login(env, "sec")
    html = c.get(f"/schedule/week?resource={rid}&date={env['monday'].date()}").text
    assert "Ultrasound Web" in html and "Diagnostic test (dr-patel)" in html
    assert "Zed Patelonly" not in html
    admin = _login(env, "admin").get(
        f"/schedule/week?resource=all&date={env['monday'].date()}").text
    assert "Zed Patelonly" in admin and "Yan Smithonly" not in admin  # no resource
    assert c.get("/schedule/week?resource=999").status_code == 404
    rota = c.get("/schedule/rota").text
    assert f"{env['monday']:%a %d %b %Y} 18:00" in rota
    assert "No on-call shifts planned" not in rota


def test_only_admin_adds_folder_recipients(env):
    sec = _login(env, "sec")
    assert _post(sec, "/schedule/recipients", {"name": "Disk", "kind": "department",
                                               "channel": "pdf_folder",
                                               "address": "/etc"}).status_code == 403
    ok = _post(sec, "/schedule/recipients", {"name": "Front printer", "kind": "department",
                                             "channel": "print"})
    assert ok.status_code == 303 and "added" in ok.headers["location"]
    admin = _login(env, "admin")
    ok = _post(admin, "/schedule/recipients", {"name": "EHR", "kind": "department",
                                               "channel": "hl7", "address": "/srv/hl7"})
    assert "added" in ok.headers["location"]
