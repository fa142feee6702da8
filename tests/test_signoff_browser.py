"""Sign-off in a real browser (Debian chromium, Playwright, uvicorn): the sign page lists what
blocks signing with links that land on the place in the editor; the secretary previews the
document before sending it for signature and corrects the header; the physician previews,
acknowledges, and signs. Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import shot as _shot
from pgserver import free_port as _free_port

from pipeline.core.db.core import DictationRow, DraftRow
from pipeline.core.records import to_jsonable
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.review import signoff
from pipeline.review.users import create_user
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
TEXT = ("Clinic note for patient Daniel Okonkwo, MRN 055718.\n\n"
        "Subjective: ear pain for 2 days. Objective: the left tympanic membrane is red.\n\n"
        "Plan: amoxicillin 500 mg three times daily for 10 days.\n\n"
        "Assessment: [MISSING: Assessment]\n")


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[dict]:  # type: ignore[type-arg]
    import uvicorn

    from pipeline.web.app import create_app

    dose = TEXT.index("500 mg")
    corrections = [
        {"original": "period", "replacement": ".", "start": TEXT.index(". Obj"),
         "end": TEXT.index(". Obj") + 1, "kind": "command"},
        {"original": "five hundred milligrams", "replacement": "500 mg", "start": dose,
         "end": dose + 6, "kind": "number"},
    ]
    with open_store(settings).session() as s:
        create_user(s, "sec", PASSWORD, "secretary", ["dr-smith"])
        create_user(s, "smith", PASSWORD, "physician", ["dr-smith"])
        draft_id = add_draft(s, text=TEXT, segments=[], physician_id="dr-smith",
                             patient_name="Daniel Okonkwo", mrn="055781",
                             document_type="progress_note", corrections=corrections)
        draft = s.get(DraftRow, draft_id)
        row = s.get(DictationRow, draft.dictation_id)
        row.meta = {**row.meta, "date_of_birth": "1979-07-22", "date_of_service": "2026-11-30"}
        draft.document = to_jsonable(signoff.current_document(s, settings, draft))
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                        log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "draft": draft_id, "settings": settings}
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


def test_blockers_preview_and_signing_in_the_browser(server, browser) -> None:  # type: ignore[no-untyped-def]
    base, draft_id = server["url"], server["draft"]
    errors: list[str] = []

    # The secretary: flags, the preview before "send for signature", the header.
    ctx = browser.new_context(viewport={"width": 1360, "height": 1000})
    page = ctx.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    _login(page, base, "sec")
    page.goto(f"{base}/drafts/{draft_id}")
    page.wait_for_selector("#words span.w")
    # the spoken "period" is applied quietly: only the dose is marked, and F2 goes there
    assert page.locator("#words span.w.corr").all_inner_texts() == ["500", "mg"]
    stops = []
    for _ in range(3):
        page.keyboard.press("F2")
        stops.append(page.evaluate("() => getSelection().toString()"))
    assert "500" in stops and "2 days." not in stops and "." not in stops, stops
    _shot(page, "signoff-01-editor-flags")
    with ctx.expect_page() as new_tab:
        page.click("#preview-link")
    preview = new_tab.value
    preview.wait_for_selector("#preview")
    text = preview.locator("#preview").inner_text()
    assert "CLINIC NOTE" in text and "DRAFT — not signed" in text
    assert "Daniel Okonkwo" in text and "055781" in text
    assert "[MISSING: Assessment]" in text  # the marker still in the text shows as it prints
    assert preview.locator("#preview-blockers").is_visible()
    _shot(preview, "signoff-02-preview-before-sending")
    preview.close()
    # correct the date of service in the header form: audited, rendered again
    page.fill("#hdr-input-date_of_service", "December 1, 2026")
    page.click("#header-save")
    page.wait_for_selector("#header-saved")
    assert page.input_value("#hdr-input-date_of_service") == "2026-12-01"
    page.click("#submit-btn")
    page.wait_for_url(f"{base}/worklist**")
    ctx.close()

    # The physician: the sign page lists what blocks signing; each link lands on its place.
    ctx2 = browser.new_context(viewport={"width": 1360, "height": 1000})
    page2 = ctx2.new_page()
    page2.on("pageerror", lambda exc: errors.append(str(exc)))
    _login(page2, base, "smith")
    page2.goto(f"{base}/drafts/{draft_id}")
    page2.click("#sign-page-link")
    page2.wait_for_selector("#blockers")
    items = page2.locator("#blockers li a.blocker-link").all_inner_texts()
    assert len(items) == 3, items
    assert any("[MISSING: Assessment]" in i for i in items)
    assert any(i.startswith("MRN: dictated 055718, sidecar 055781") for i in items)
    assert any("dose" in i and "500 mg" in i for i in items)
    assert page2.locator("#sign-form").count() == 0
    _shot(page2, "signoff-03-sign-page-blocked")
    for n in range(len(items)):
        link = page2.locator("#blockers li a.blocker-link").nth(n)
        anchor = link.get_attribute("href").split("#", 1)[1]
        link.click()
        page2.wait_for_url(f"**/drafts/{draft_id}#{anchor}")
        target = page2.locator(f"[id='{anchor}']")
        assert target.count() == 1, anchor
        if anchor.startswith("w"):
            assert target.inner_text() in ("[MISSING:", "500"), anchor
        assert target.is_visible() or anchor.startswith("hdr-"), anchor
        if n == 1:
            _shot(page2, "signoff-04-link-landed")
        page2.go_back()
        page2.wait_for_selector("#blockers")
    # the missing assessment is written in the text; the other two are acknowledged
    page2.goto(f"{base}/drafts/{draft_id}")
    page2.evaluate("""() => { const w = document.getElementById('words');
        w.innerText = w.innerText.replace('[MISSING: Assessment]', 'acute otitis media.');
        w.dispatchEvent(new Event('input')); }""")
    page2.keyboard.press("Control+s")
    page2.wait_for_selector("text=Saved as version 2")
    page2.goto(f"{base}/drafts/{draft_id}/sign")
    while page2.locator("#blockers .ack-btn").count():
        with page2.expect_navigation():
            page2.locator("#blockers .ack-btn").first.click()
        assert page2.locator("text=Acknowledged.").is_visible()
    page2.wait_for_selector("#no-blockers")
    page2.click("#preview-link")
    page2.wait_for_selector("#preview")
    printed = page2.locator("#preview").inner_text()
    assert "Acute otitis media" in printed and "[MISSING" not in printed, printed
    assert "December 1, 2026" in printed
    assert page2.locator("#preview-blockers").count() == 0
    _shot(page2, "signoff-05-preview-before-signing")
    page2.go_back()
    page2.fill("#sign-form input[name=password]", PASSWORD)
    page2.click("#sign-btn")
    page2.wait_for_selector("#signature")
    assert page2.locator("#draft-status").inner_text() == "signed"
    _shot(page2, "signoff-06-signed")
    ctx2.close()
    assert errors == []
