"""Learned corrections between trainings (issue #15, section 5): a misheard phrase a reviewer
replaced twice for one physician is replaced in that physician's next drafts, recorded as a
``learned`` correction, flagged for review, shown in the editor and undoable there; doses and
sides are never changed this way."""

from __future__ import annotations

import doctest
import re
import wave
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from pipeline.core.db.core import DraftRow
from pipeline.core.db.review import DraftAutosave, DraftVersion
from pipeline.core.records import DictationMeta, Segment, Transcript
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.language.normalize import (
    LanguageOptions,
    LearnedOptions,
    LearnedPair,
    normalize_text,
)
from pipeline.language.normalize import learned as learned_lang
from pipeline.language.normalize.learned import FLAG, KIND, refusal, sound_score, usable_pairs
from pipeline.language.normalize.review_flags import classify, needs_review
from pipeline.language.vocab import VocabIndex, get_index
from pipeline.review import learned as learned_review
from pipeline.review import learning, signing
from pipeline.review import versions as wf
from pipeline.review.users import create_user
from pipeline.service import process
from pipeline.web.app import create_app

PASSWORD = "correct-horse-9"
SEALER = LearnedPair("sealer cyst", "cholecystitis", 2)


@pytest.fixture
def index(settings: Settings) -> VocabIndex:
    return get_index(settings)


def _learned(note):  # type: ignore[no-untyped-def]
    return [c for c in note.corrections if c.kind == KIND]


# --- the apply step, pure -----------------------------------------------------------------

def test_learned_change_is_applied_recorded_and_marked(settings: Settings) -> None:
    """The phrase is replaced, listed as a ``learned`` correction at its place in the text,
    flagged for review (editor mark, review item, note flags)."""
    note = normalize_text("Assessment: acute sealer cyst. Plan: surgery consult.", settings,
                          learned=[SEALER])
    assert "acute cholecystitis" in note.text.lower() and "sealer" not in note.text.lower()
    (corr,) = _learned(note)
    assert (corr.original, corr.replacement) == ("sealer cyst", "cholecystitis")
    assert note.text[corr.start:corr.end] == "cholecystitis"
    assert needs_review(corr.to_dict())
    assert FLAG in note.flags and "needs_review" in note.flags
    assert [r["kind"] for r in note.review_items] == [KIND]
    assert note.review_items[0]["original"] == "sealer cyst"


def test_without_learned_pairs_nothing_changes(settings: Settings) -> None:
    text = "Assessment: acute sealer cyst."
    assert normalize_text(text, settings).text == normalize_text(text, settings,
                                                                 learned=[]).text
    assert "sealer cyst" in normalize_text(text, settings).text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Sealer cyst is suspected.", "Cholecystitis is suspected."),  # sentence start
        ("Noted SEALER CYST today.", "Noted cholecystitis today."),  # case ignored
        ("The sealer cysts are rare.", "The sealer cysts are rare."),  # whole words only
        ("A resealer cyst was seen.", "A resealer cyst was seen."),
        ("Sealer, cyst.", "Sealer, cyst."),  # punctuation between the words breaks a match
    ],
)
def test_word_boundaries_and_case(settings: Settings, text: str, expected: str) -> None:
    note = normalize_text(text, settings, learned=[SEALER])
    assert expected in note.text
    assert bool(_learned(note)) == ("cholecystitis" in expected.lower())


@pytest.mark.parametrize(
    ("pair", "reason"),
    [
        (LearnedPair("left knee", "right knee", 5), "side"),
        (LearnedPair("sealer cyst", "left cholecystitis", 5), "side"),
        (LearnedPair("bilateral", "unilateral", 5), "side"),
        (LearnedPair("ten", "two", 5), "number"),
        (LearnedPair("5 mg", "50 mg", 5), "number"),
        (LearnedPair("lisinopril 10", "lisinopril 20", 5), "number"),
        (LearnedPair("milligrams", "micrograms", 5), "unit"),
        (LearnedPair("sealer cyst", "cholecystitis mg", 5), "unit"),
        (LearnedPair("twice daily", "three times daily", 5), "frequency"),
        (LearnedPair("lisinopril", "lisinopril daily", 5), "frequency"),
        (LearnedPair("b.i.d.", "t.i.d.", 5), "frequency"),
        (LearnedPair("no", "know", 5), "negation"),
        (LearnedPair("sealer cyst", "cholecystitis 2%", 5), "number"),
    ],
)
def test_doses_and_sides_are_never_learned(settings: Settings, index: VocabIndex,
                                           pair: LearnedPair, reason: str) -> None:
    """A pair with a number, a unit, a frequency, a side or a negation on either side is
    refused, and the text keeps what was said."""
    assert refusal(pair, index) == reason
    text = f"Noted {pair.original} today."
    note = normalize_text(text, settings, learned=[pair])
    assert not _learned(note)


def test_a_side_in_the_text_is_untouched(settings: Settings) -> None:
    pairs = [LearnedPair("left knee", "right knee", 9), LearnedPair("ten milligrams",
                                                                    "two milligrams", 9)]
    note = normalize_text("Pain in the left knee. Start lisinopril ten milligrams.", settings,
                          learned=pairs)
    assert "left knee" in note.text and "10 mg" in note.text and not _learned(note)
    assert FLAG not in note.flags


MISHEARINGS = [
    ("sealer cyst", "cholecystitis"), ("sealer cyst itis", "cholecystitis"),
    ("various needle", "Veress needle"), ("vicar ill", "Vicryl"), ("monocle", "Monocryl"),
    ("trucker's", "trocars"), ("listen up real", "lisinopril"),
    ("new mo peritoneum", "pneumoperitoneum"), ("electric cautery", "electrocautery"),
    ("calls triangle", "Calot's triangle"), ("sefalad", "cephalad"),
    ("tranecate", "tourniquet"), ("new monia", "pneumonia"),
]
STYLE_EDITS = [
    ("belly", "abdomen"), ("tummy", "abdomen"), ("stomach", "abdomen"), ("kidney", "renal"),
    ("pt", "patient"), ("HTN", "hypertension"), ("heart attack", "myocardial infarction"),
    ("a fib", "atrial fibrillation"), ("sugar", "diabetes"), ("pain", "discomfort"),
    ("hypertension", "hypotension"),  # a term for a term: a clinical edit
    ("Celebrex", "Celexa"), ("tylenol", "acetaminophen"),  # one drug for another (ISMP)
    ("raped", "draped"),  # a common word would be rewritten everywhere
    ("Cholecystitis", "cholecystitis"),  # case only
]


@pytest.mark.parametrize(("original", "replacement"), MISHEARINGS)
def test_mishearings_are_learned(index: VocabIndex, original: str, replacement: str) -> None:
    assert refusal(LearnedPair(original, replacement, 2), index) is None


@pytest.mark.parametrize(("original", "replacement"), STYLE_EDITS)
def test_style_edits_and_term_swaps_are_not(index: VocabIndex, original: str,
                                            replacement: str) -> None:
    assert refusal(LearnedPair(original, replacement, 2), index) is not None


def test_sound_threshold_separates_the_measured_pairs() -> None:
    """``LearnedOptions.sound_min`` sits between the mishearings (lowest 56) and the lay
    words and rewordings that only the sound test refuses (highest 42)."""
    cut = LearnedOptions().sound_min
    heard = [sound_score(o, r) for o, r in MISHEARINGS]
    lay = [sound_score(o, r) for o, r in STYLE_EDITS[:10] if o not in ("HTN",)]
    assert min(heard) >= cut > max(lay)


def test_rare_ambiguous_and_options(settings: Settings, index: VocabIndex) -> None:
    once = LearnedPair("sealer cyst", "cholecystitis", 1)
    kept, refused = usable_pairs([once], index)
    assert not kept and refused["too_rare"] == 1
    both = [SEALER, LearnedPair("sealer cyst", "cholangitis", 2)]
    kept, refused = usable_pairs(both, index)
    assert not kept and refused["ambiguous"] == 2
    text = "Acute sealer cyst."
    strict = LanguageOptions(learned=LearnedOptions(min_count=3))
    assert not _learned(normalize_text(text, settings, learned=[SEALER], options=strict))
    short = LanguageOptions(learned=LearnedOptions(max_words=1))
    assert not _learned(normalize_text(text, settings, learned=[SEALER], options=short))
    assert LearnedOptions().min_count == learning.REPEAT_THRESHOLD


def test_a_learned_drug_name_blocks_signing_like_other_drug_repairs(index: VocabIndex) -> None:
    corr = {"kind": KIND, "original": "listen up real", "replacement": "lisinopril"}
    assert classify(corr, index) == "drug"
    assert classify({**corr, "original": "sealer cyst", "replacement": "cholecystitis"},
                    index) == "term"


@pytest.mark.parametrize("module", [learned_lang, learned_review])
def test_docstring_examples(module) -> None:  # type: ignore[no-untyped-def]
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             report=False)
    assert result.attempted > 0 and result.failed == 0


def test_learned_pairs_fold_case_and_subtract_undoes(settings: Settings) -> None:
    """Pairs are counted per physician ignoring case; each signed undo (the reverse
    replacement) takes one off."""
    from datetime import UTC, datetime

    from pipeline.core.db.review import CorrectionStat
    from pipeline.web.seed import add_draft

    with open_store(settings).session() as s:
        draft = add_draft(s, text="x", segments=[], physician_id="dr-smith")
        now = datetime.now(UTC)
        for pid, o, r in [("dr-smith", "sealer cyst", "cholecystitis"),
                          ("dr-smith", "Sealer cyst", "Cholecystitis"),
                          ("dr-smith", "sealer cyst", "cholecystitis"),
                          ("dr-smith", "vicar ill", "Vicryl"),
                          ("dr-smith", "vicar ill", "Vicryl"),
                          ("dr-smith", "Vicryl", "vicar ill"),  # one undo signed
                          ("dr-patel", "sefalad", "cephalad"),
                          ("dr-patel", "sefalad", "cephalad")]:
            s.add(CorrectionStat(draft_id=draft, physician_id=pid, original=o,
                                 replacement=r, created_at=now))
        s.flush()
        assert learned_review.learned_pairs(s, "dr-smith") == [
            ("sealer cyst", "cholecystitis", 3)]
        assert learned_review.learned_pairs(s, "dr-smith", min_count=1) == [
            ("sealer cyst", "cholecystitis", 3), ("vicar ill", "Vicryl", 1)]
        assert learned_review.learned_pairs(s, "dr-patel") == [("sefalad", "cephalad", 2)]
        assert learned_review.learned_pairs(s, None) == []


# --- the editor's undo, pure --------------------------------------------------------------

def test_restore_original_finds_the_same_occurrence() -> None:
    base = "Cholecystitis suspected. Known cholecystitis."
    first = {"kind": KIND, "original": "sealer cyst", "replacement": "Cholecystitis", "start": 0}
    second = {"kind": KIND, "original": "sealer cyst", "replacement": "cholecystitis",
              "start": base.index("cholecystitis")}
    typed = base + " Typed later."
    assert learned_review.restore_original(base, typed, first) == (
        "Sealer cyst suspected. Known cholecystitis. Typed later.")
    assert learned_review.restore_original(base, typed, second) == (
        "Cholecystitis suspected. Known sealer cyst. Typed later.")
    # the reviewer added another one: which is meant is no longer certain
    assert learned_review.restore_original(base, typed + " cholecystitis", second) is None


# --- end to end: real database, real language stage, real editor ------------------------

def _row(session, draft_id: str) -> DraftRow:  # type: ignore[no-untyped-def]
    row = session.get(DraftRow, draft_id)
    assert row is not None
    return row


def _wav(path: Path) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x00" * 16000)
    return path


def _dictate(settings: Settings, tmp_path: Path, text: str, physician: str) -> str:
    """One dictation through the service's stages (load, normalise, structure, render,
    enqueue) with ``text`` as the transcript; returns the draft id."""
    wav = _wav(tmp_path / f"{process.new_id()}.wav")
    meta = DictationMeta(physician_id=physician, patient_name="Pat Learned", mrn="MRN-LRN",
                         document_type="progress_note", source="sidecar")
    dictation = process.load_dictation(wav, settings, meta)
    transcript = Transcript(dictation_id=dictation.id, model="tiny.en", language="en",
                            duration_s=1.0, segments=[Segment(0, 0.0, 1.0, text)])
    note = process.normalize_stage(transcript, dictation, settings)
    document = process.structure_stage(note, dictation, settings)
    draft = process.render_stage(document, dictation, transcript, note, settings)
    return process.enqueue_stage(dictation, transcript, note, document, draft, settings).id


def _review_and_sign(settings: Settings, users: dict, draft_id: str, edit=None) -> None:  # type: ignore[no-untyped-def,type-arg]
    """The secretary edits (``edit``: text -> text), sends for signature; the physician signs."""
    with open_store(settings).session() as s:
        draft = _row(s, draft_id)
        wf.claim(s, users["sec"], draft)
        if edit is not None:
            wf.save_text(s, users["sec"], draft, edit(draft.text), None)
        wf.send_for_signature(s, users["sec"], draft)
    with open_store(settings).session() as s:
        signing.sign_draft(s, settings, users["smith"], _row(s, draft_id), PASSWORD)


def _token(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m
    return m.group(1)


def _login(app, username: str) -> TestClient:  # type: ignore[no-untyped-def]
    c = TestClient(app, client=("127.0.0.1", 50000))
    r = c.post("/login", data={"csrf_token": _token(c.get("/login").text),
                               "username": username, "password": PASSWORD},
               follow_redirects=False)
    assert r.status_code == 303
    return c


SAID = "Assessment: acute sealer cyst. Plan: surgery consult."


@pytest.mark.slow
def test_repeated_correction_is_applied_to_the_next_draft_and_undone_in_the_editor(
        settings: Settings, tmp_path: Path) -> None:
    with open_store(settings).session() as s:
        users = {"sec": create_user(s, "sec", PASSWORD, "secretary", ["dr-smith", "dr-patel"]),
                 "smith": create_user(s, "smith", PASSWORD, "physician", ["dr-smith"])}

    def fix(text: str) -> str:
        assert "sealer cyst" in text
        return text.replace("sealer cyst", "cholecystitis")

    # Two signed drafts where the reviewer replaced the same misheard phrase.
    for _ in range(2):
        first = _dictate(settings, tmp_path, SAID, "dr-smith")
        _review_and_sign(settings, users, first, fix)
    with open_store(settings).session() as s:
        assert learned_review.learned_pairs(s, "dr-smith") == [
            ("sealer cyst", "cholecystitis", 2)]
        assert learned_review.learned_pairs(s, "dr-patel") == []

    # The next draft of that physician carries the change, recorded and flagged ...
    third = _dictate(settings, tmp_path, SAID, "dr-smith")
    other = _dictate(settings, tmp_path, SAID, "dr-patel")
    with open_store(settings).session() as s:
        row = _row(s, third)
        assert "acute cholecystitis" in row.text.lower()
        (i, corr), = [(n, c) for n, c in enumerate(row.corrections) if c["kind"] == KIND]
        assert (corr["original"], corr["replacement"]) == ("sealer cyst", "cholecystitis")
        assert row.text[corr["start"]:corr["end"]] == "cholecystitis"
        assert FLAG in row.flags and "needs_review" in row.flags
        # ... another physician's draft does not.
        patel = _row(s, other)
        assert "sealer cyst" in patel.text
        assert not [c for c in patel.corrections if c["kind"] == KIND]
        assert FLAG not in patel.flags

    # The editor shows it and restores what was heard, keeping what was typed.
    app = create_app(settings)
    sec = _login(app, "sec")
    page = sec.get(f"/drafts/{third}").text
    assert 'id="learned-card"' in page and "heard “sealer cyst”" in page
    assert re.search(r'class="w corr learned"[^>]*title="Learned from earlier corrections; '
                     r'Whisper heard: sealer cyst"', page)
    assert f'formaction="/drafts/{third}/learned/{i}/undo"' in page
    with open_store(settings).session() as s:
        saved = _row(s, third).text
    typed = saved.rstrip("\n") + " Typed before the undo."
    r = sec.post(f"/drafts/{third}/learned/{i}/undo",
                 data={"csrf_token": _token(page), "text": typed, "base_version": "1"},
                 follow_redirects=False)
    assert r.status_code == 303 and "learned=undone" in r.headers["location"]
    with open_store(settings).session() as s:
        row = _row(s, third)
        assert "acute sealer cyst" in row.text.lower() and "Typed before the undo." in row.text
        assert "cholecystitis" not in row.text.lower()
        undone = row.text
        versions = s.scalars(select(DraftVersion.author).where(
            DraftVersion.draft_id == third).order_by(DraftVersion.version)).all()
        assert versions == ["system:pipeline", "sec"]
    page = sec.get(r.headers["location"]).text
    assert "Learned change undone" in page and "no longer in the text as written" in page
    assert f"/learned/{i}/undo" not in page

    # Undoing again finds nothing to restore: nothing changes and the typed text is kept.
    again = sec.post(f"/drafts/{third}/learned/{i}/undo",
                     data={"csrf_token": _token(page), "text": undone + " More typing.",
                           "base_version": "2"}, follow_redirects=False)
    assert again.status_code == 303 and "learned=missing" in again.headers["location"]
    with open_store(settings).session() as s:
        assert "More typing." not in _row(s, third).text
        kept = s.scalars(select(DraftAutosave.text).where(DraftAutosave.draft_id == third)).one()
        assert "More typing." in kept
    sec.post(f"/drafts/{third}/autosave/discard", data={"csrf_token": _token(page)})

    # Signing the undone draft counts against the pair: the next draft is left alone.
    _review_and_sign(settings, users, third)
    with open_store(settings).session() as s:
        assert learned_review.learned_pairs(s, "dr-smith") == []
    fourth = _dictate(settings, tmp_path, SAID, "dr-smith")
    with open_store(settings).session() as s:
        assert "sealer cyst" in _row(s, fourth).text


# --- in a real browser: the undo button carries the typed text ---------------------------

BROWSER_TEXT = "Assessment: acute cholecystitis.\n\nPlan: surgery consult.\n"


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(180)
def test_undo_in_the_browser_keeps_what_was_typed(settings: Settings) -> None:
    """The restore button submits the editor's form: text typed in the editor (not saved)
    and the restored words end up together in the new version."""
    import shutil
    import threading
    import time

    import uvicorn

    playwright_sync = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium is not installed")
    from browser_support import shot
    from pgserver import free_port

    from pipeline.web.seed import add_draft

    start = BROWSER_TEXT.index("cholecystitis")
    with open_store(settings).session() as s:
        create_user(s, "sec", PASSWORD, "secretary", ["dr-smith"])
        draft_id = add_draft(s, text=BROWSER_TEXT, segments=[], physician_id="dr-smith",
                             document_type="progress_note", corrections=[
                                 {"kind": KIND, "original": "sealer cyst",
                                  "replacement": "cholecystitis", "start": start,
                                  "end": start + len("cholecystitis"), "score": 1.0}])
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                        log_level="warning", access_log=False))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    try:
        with playwright_sync.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1360, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{base}/login")
            page.fill("input[name=username]", "sec")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/worklist**")
            page.goto(f"{base}/drafts/{draft_id}")
            page.wait_for_selector("#learned-undo-0")
            assert page.locator("#words span.learned").inner_text().startswith("cholecystitis")
            page.locator("#words span.w").last.click()
            page.keyboard.press("Control+End")
            page.keyboard.type(" Typed in the browser.")
            page.click("#learned-undo-0")
            page.wait_for_selector("#learned-undone")
            shot(page, "learned-01-undone")
            words = page.locator("#words").inner_text()
            assert "sealer cyst" in words and "Typed in the browser." in words
            assert errors == []
            browser.close()
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
    with open_store(settings).session() as s:
        text = _row(s, draft_id).text
    assert "acute sealer cyst" in text and "Typed in the browser." in text
