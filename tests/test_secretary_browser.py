"""The secretary's day and practice administration in a real browser (Debian chromium driven
by Playwright, against uvicorn): a task list showing the patient, a report uploaded to a
referral and downloaded, the referrals page's plain title, a cancel confirmation, the
worklist showing a new STAT draft without a reload, an administrator setting working hours
and time off. Screenshots go to ``test-artifacts/`` in the project root."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from browser_support import shot as _shot
from pgserver import free_port as _free_port
from sqlalchemy import select

from pipeline.core.db.core import DraftRow
from pipeline.core.db.schedule import Appointment, AvailabilityRule, CalendarBlock
from pipeline.core.records import Instruction, to_jsonable
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.review.users import create_user
from pipeline.secretary import schedule, tasks
from pipeline.secretary.schedule.calendars import ScheduleOptions
from pipeline.web.routes import worklist as worklist_routes
from pipeline.web.seed import add_draft

playwright_sync = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                       reason="Debian chromium is not installed"),
]

PASSWORD = "correct-horse-9"
TZ = ZoneInfo("America/New_York")
PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<<>>\n%%EOF\n"


@pytest.fixture
def server(settings: Settings, monkeypatch) -> Iterator[dict]:  # type: ignore[type-arg]
    import uvicorn

    from pipeline.web.app import create_app

    settings.timezone = "America/New_York"
    monkeypatch.setattr(worklist_routes, "POLL_SECONDS", 2)  # the test need not wait 10 s
    opts = ScheduleOptions(default_timezone="America/New_York")
    today = datetime.now(TZ).date()
    monday = today + timedelta(days=7 - today.weekday())
    with open_store(settings).session() as s:
        create_user(s, "sec", PASSWORD, "secretary", ["dr-smith"])
        create_user(s, "admin", PASSWORD, "admin")
        for wd in range(5):
            schedule.add_availability(s, "dr-smith", wd, "09:00", "17:00")
        doc = {"instructions": [to_jsonable(Instruction("refer", "Refer to cardiology.",
                                                        {"specialty": "cardiology"}))]}
        draft_id = add_draft(s, text="Refer to cardiology.", segments=[
            {"text": "Refer to cardiology."}], physician_id="dr-smith",
            patient_name="Carol Taskpatient", mrn="MRN-7731", document=doc,
            document_type="consultation_letter")
        draft = s.get(DraftRow, draft_id)
        (task,) = tasks.tasks_from_draft(s, draft, options=tasks.TaskOptions(schedule=opts))
        appt = schedule.book(s, physician_id="dr-smith",
                             start=datetime(monday.year, monday.month, monday.day, 10,
                                            tzinfo=TZ),
                             patient_name="Eve Confirmpatient", mrn="MRN-C1", options=opts)
        ids = {"ref": task.referral_id, "appt": appt.id}
    port = _free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                            log_level="warning", access_log=False)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "settings": settings, "monday": monday, **ids}
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser() -> Iterator[object]:
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"],
        )
        yield b
        b.close()


def _login(page, base: str, username: str) -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{base}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/worklist**")


def test_secretary_day_and_practice_admin(server, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base, settings = server["url"], server["settings"]
    errors: list[str] = []
    ctx = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    page = ctx.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    _login(page, base, "sec")

    # The task list shows the patient, not only a draft id.
    page.goto(f"{base}/schedule/tasks")
    cell = page.locator("td.patient", has_text="Carol Taskpatient")
    assert cell.is_visible() and "MRN-7731" in cell.inner_text()
    _shot(page, "sec-01-tasks-patient")

    # The referrals page: a plain tab title, the form in the body, a report uploaded.
    page.goto(f"{base}/schedule/referrals")
    assert page.title() == "Referrals · Dictation workbench"
    assert page.locator("head form").count() == 0
    assert page.locator("main form, body form").filter(has_text="New referral").count() == 1
    report = tmp_path / "cardiology-report.pdf"
    report.write_bytes(PDF)
    row = page.locator(f"#ref-{server['ref']}")
    row.locator("input[type=file]").set_input_files(str(report))
    row.get_by_role("button", name="attach report").click()
    page.wait_for_selector("text=Document attached to referral")
    link = page.locator(f"#ref-{server['ref']} a.doc-download")
    assert link.inner_text() == "cardiology-report.pdf"
    _shot(page, "sec-02-referral-report-attached")
    with page.expect_download() as dl:
        link.click()
    saved = tmp_path / "downloaded.pdf"
    dl.value.save_as(saved)
    assert saved.read_bytes() == PDF

    # Cancel asks first; "No" leaves the appointment booked, "Yes" cancels it.
    page.goto(f"{base}/schedule/day?date={server['monday']}&physician=dr-smith")
    page.get_by_role("button", name="cancel").first.click()
    page.wait_for_selector("text=Mark this appointment as cancelled?")
    _shot(page, "sec-03-cancel-confirmation")
    page.get_by_role("link", name="No, go back").click()
    page.wait_for_url("**/schedule/day**")
    with open_store(settings).session() as s:
        assert s.get(Appointment, server["appt"]).status == "booked"
    page.get_by_role("button", name="cancel").first.click()
    page.get_by_role("button", name="Yes, cancel").click()
    page.wait_for_selector(f"text=Appointment {server['appt']}: cancelled")
    with open_store(settings).session() as s:
        assert s.get(Appointment, server["appt"]).status == "cancelled"

    # The worklist refreshes itself: a new STAT draft appears and is announced, the page is
    # not reloaded and the filter stays.
    page.goto(f"{base}/worklist")
    page.select_option("select[name=doctype]", "consultation_letter")
    page.wait_for_url("**doctype=consultation_letter**")
    page.evaluate("window.__marker = 1")
    with open_store(settings).session() as s:
        add_draft(s, text="Chest pain.", segments=[{"text": "Chest pain."}],
                  physician_id="dr-smith", patient_name="Frank Statpatient", mrn="MRN-S1",
                  priority="stat", document_type="consultation_letter")
        add_draft(s, text="Knee.", segments=[{"text": "Knee."}], physician_id="dr-smith",
                  patient_name="Gina Filteredout", document_type="progress_note")
    page.wait_for_selector("table.worklist >> text=Frank Statpatient", timeout=15000)
    banner = page.locator("#stat-announce .stat-banner")
    banner.wait_for(timeout=5000)
    assert "Frank Statpatient" in banner.inner_text()
    assert page.locator("#stat-announce").get_attribute("aria-live") == "assertive"
    assert page.evaluate("window.__marker") == 1
    assert page.locator("select[name=doctype]").input_value() == "consultation_letter"
    assert page.locator("table.worklist >> text=Gina Filteredout").count() == 0
    _shot(page, "sec-04-worklist-new-stat")

    # An administrator sets working hours and time off in the browser.
    admin = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
    admin.on("pageerror", lambda exc: errors.append(str(exc)))
    _login(admin, base, "admin")
    admin.goto(f"{base}/admin/practice?physician=dr-smith")
    form = admin.locator("#add-hours")
    form.get_by_label("Sat").check()
    form.locator("input[name=start]").fill("08:00")
    form.locator("input[name=end]").fill("12:00")
    form.get_by_role("button", name="Add working hours").click()
    admin.wait_for_selector("text=Working hours 08:00-12:00 added on Sat.")
    first = datetime.now(TZ).date() + timedelta(days=20)
    off = admin.locator("#add-time-off")
    off.locator("input[name=first_day]").fill(str(first))
    off.locator("input[name=last_day]").fill(str(first + timedelta(days=4)))
    off.locator("input[name=title]").fill("Congress")
    off.get_by_role("button", name="Add time off").click()
    admin.wait_for_selector(f"text=Time off {first} to {first + timedelta(days=4)} added.")
    assert admin.locator("#absences td", has_text="Congress").is_visible()
    _shot(admin, "sec-05-admin-practice-hours-time-off")
    with open_store(settings).session() as s:
        assert s.scalars(select(AvailabilityRule).where(
            AvailabilityRule.physician_id == "dr-smith", AvailabilityRule.weekday == 5)).one()
        assert s.scalars(select(CalendarBlock).where(
            CalendarBlock.kind == "time_off", CalendarBlock.title == "Congress")).one()
    # the users page: role and physician assignments are forms in each row
    admin.goto(f"{base}/admin/users")
    row = admin.locator("#user-sec")
    row.locator("input[name=physician][value=dr-patel]").check()
    row.get_by_role("button", name="Save physicians").click()
    admin.wait_for_selector("text=sec is assigned to dr-patel, dr-smith.")
    _shot(admin, "sec-06-admin-users-roles")
    assert errors == [], errors


def test_routing_failure_reads_as_words_in_the_browser(server, browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A delivery to a mail server that refuses the connection: the routing page tells the
    secretary what failed and what to do, with no Python exception text."""
    import uuid

    from pipeline.core.db.core import DictationRow
    from pipeline.core.db.schedule import Delivery
    from pipeline.secretary import route

    base, settings = server["url"], server["settings"]
    port = _free_port()  # nothing listens there
    doc = tmp_path / "letter.txt"
    doc.write_text("Signed letter.\n")
    with open_store(settings).session() as s:
        did = uuid.uuid4().hex
        s.add(DictationRow(id=did, sha256=did * 2, physician_id="dr-smith"))
        draft = DraftRow(id=uuid.uuid4().hex, dictation_id=did, physician_id="dr-smith",
                         document_type="consultation_letter", status="signed",
                         audio_sha256=did * 2, text="Signed letter.", mrn="MRN-R9",
                         patient_name="Dora Routepatient", outputs={"txt": str(doc)})
        s.add(draft)
        s.flush()
        rec = route.add_recipient(s, "Lab", "department", "email", "lab@clinic.example")
        delivery_id = route.route_draft(s, draft.id, recipient_id=rec.id).id
        draft_id = draft.id
    opts = route.RouteOptions(smtp_host="localhost", smtp_port=port, smtp_security="starttls",
                              smtp_timeout_s=5)
    route.deliver_due(settings, opts, draft_id=draft_id)
    with open_store(settings).session() as s:
        assert s.get(Delivery, delivery_id).last_error  # it did fail

    page = browser.new_context(viewport={"width": 1360, "height": 900}).new_page()
    _login(page, base, "sec")
    page.goto(f"{base}/schedule/routing")
    body = page.locator("body").inner_text()
    assert f"Connection refused by the mail server at localhost:{port}" in body
    assert "check that it runs and the SMTP settings" in body
    assert "Errno" not in body and "ConnectionRefusedError" not in body
    assert "Dora Routepatient" in body
    _shot(page, "sec-07-routing-failure-explained")
