"""Training pairs from signed drafts (issue #15): the target carries the reviewer's content
corrections in Whisper's own style, windows stay within 30 s and inside the audio, drafts
and windows too far from their audio are skipped with a reason, the per-physician store is
private and encrypted, and no log line carries a target's text."""

from __future__ import annotations

import doctest
import itertools
import json
import logging
import re
import stat
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from pipeline.adaptation import pairs as P
from pipeline.adaptation.pairs import (
    PairOptions,
    PairSet,
    SkippedDraft,
    TargetWord,
    TrainingPair,
    collect_pairs,
    cut_windows,
    draft_pairs,
    join_words,
    load_pairs,
    load_window_audio,
    pairs_dir,
    pairs_for_draft,
    target_words,
    write_pairs,
)
from pipeline.core import files
from pipeline.core.db.core import DraftRow
from pipeline.core.errors import ConfigError, NotFoundError
from pipeline.core.records import Word
from pipeline.core.settings import Settings
from pipeline.core.store import open_store
from pipeline.ingest import audio as audio_mod

PASSWORD = "amber-lantern-quartz-42"


# --- helpers ----------------------------------------------------------------------------


def said(text: str, step: float = 0.4, start: float = 0.0) -> list[Word]:
    """Whisper-like words for ``text``: one every ``step`` seconds, each with its leading
    space as faster-whisper writes them."""
    return [Word(" " + w, start + k * step, start + k * step + step * 0.75, 0.9)
            for k, w in enumerate(text.split())]


def target(raw: str, signed: str, options: PairOptions | None = None) -> str:
    return join_words(target_words(said(raw), signed, options)[0])


def segments_for(words: list[Word]) -> list[dict[str, Any]]:
    """``TranscriptRow.segments`` JSON holding ``words`` in one segment."""
    return [{"id": 0, "start": words[0].start, "end": words[-1].end,
             "text": "".join(w.word for w in words),
             "words": [{"word": w.word, "start": w.start, "end": w.end,
                        "probability": w.probability} for w in words]}]


def tone_wav(path: Path, seconds: float) -> Path:
    """A 16 kHz mono WAV of a slowly rising tone (every sample different)."""
    t = np.arange(int(seconds * 16000)) / 16000.0
    samples = (0.3 * np.sin(2 * np.pi * (200 + 20 * t) * t) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(16000)
        fh.writeframes(samples.tobytes())
    return path


def sign(settings: Settings, draft_id: str, text: str, physician: str = "dr-smith") -> None:
    """Review ``draft_id`` to ``text`` as a secretary and sign it as its physician, through
    the workbench's own functions (flags a person would acknowledge are acknowledged)."""
    from pipeline.core.db.review import User
    from pipeline.review import signing, signoff
    from pipeline.review import versions as wf
    from pipeline.review.users import create_user, load_user

    def user(s: Any, name: str, role: str, physicians: list[str]) -> Any:
        row = s.scalar(select(User).where(User.username == name))
        return load_user(s, row.id) if row else create_user(s, name, PASSWORD, role, physicians)

    store = open_store(settings)
    with store.session() as s:
        sec = user(s, "sec", "secretary", list(settings.physicians))
        doc = user(s, f"doc-{physician}", "physician", [physician])
        draft = s.get(DraftRow, draft_id)
        assert draft is not None
        wf.claim(s, sec, draft)
        wf.save_text(s, sec, draft, text, None)
        wf.send_for_signature(s, sec, draft)
    with store.session() as s:
        draft = s.get(DraftRow, draft_id)
        assert draft is not None
        for blocker in signoff.blockers(s, settings, draft):
            assert blocker.can_acknowledge, blocker.message
            signoff.acknowledge(s, settings, doc, draft, blocker.key)
    with store.session() as s:
        draft = s.get(DraftRow, draft_id)
        assert draft is not None
        signing.sign_draft(s, settings, doc, draft, PASSWORD)


def stored_draft(settings: Settings, words: list[Word], text: str, audio: Path | None,
                 physician: str = "dr-smith", duration: float | None = None) -> str:
    from pipeline.web.seed import add_draft

    with open_store(settings).session() as s:
        return add_draft(s, text=text, segments=segments_for(words), physician_id=physician,
                         audio_path=audio, document_type="progress_note",
                         duration_s=duration or words[-1].end + 0.5)


# --- the target -------------------------------------------------------------------------


def test_docstring_examples_run() -> None:
    """The module's examples (the alignment rules) give the output they show."""
    result = doctest.testmod(P, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             report=False)
    assert result.attempted >= 8
    assert result.failed == 0


@pytest.mark.parametrize(
    ("raw", "signed", "expected"),
    [
        # a misheard drug name corrected by the reviewer is carried over
        ("she takes epics are gone five milligrams twice daily period",
         "She takes apixaban 5 mg twice daily.",
         "she takes apixaban five milligrams twice daily period"),
        # the same number formatted by the pipeline keeps Whisper's form
        ("metoprolol fifty milligrams daily", "Metoprolol 50 mg daily.",
         "metoprolol fifty milligrams daily"),
        ("born nineteen fifty three", "Born 1953.", "born nineteen fifty three"),
        ("saturation 97 percent", "Saturation 97%.", "saturation 97 percent"),
        # a number the reviewer corrected: the corrected value, said the way it is said
        ("blood pressure 136 over 80 to", "Blood pressure 136/82.",
         "blood pressure 136 over 82"),
        ("take five milligrams", "Take 10 mg.", "take ten milligrams"),
        ("take 5 milligrams", "Take 10 mg.", "take 10 milligrams"),
        # spoken commands stay spoken
        ("no fever period new paragraph plan colon rest full stop",
         "No fever.\n\nPLAN: Rest.",
         "no fever period new paragraph plan colon rest full stop"),
        # a misheard command becomes the command where the signed text has its mark
        ("chest pain Coma fever", "Chest pain, fever.", "chest pain comma fever"),
        ("investigations colony cagey shows sinus rhythm",
         "INVESTIGATIONS: EKG shows sinus rhythm.",
         "investigations colon EKG shows sinus rhythm"),
        # a misheard heading is corrected; a header label nobody said is not added
        ("some captive colon he is well", "SUBJECTIVE: He is well.",
         "subjective colon he is well"),
        ("clinic note for john smith", "PATIENT: John Smith",
         "clinic note for john smith"),
        ("he is well period",
         "PATIENT: Jane Roe\nDATE OF BIRTH: May 1, 1950\n\nHe is well.\n\nASSESSMENT: Stable.",
         "he is well period"),
        # only function words changed: what Whisper heard stands
        ("a patient has a cough", "The patient has the cough.", "a patient has a cough"),
        # a word Whisper dropped inside a sentence is carried; a typed sentence is not
        ("no pain or swelling", "No chest pain or swelling.", "no chest pain or swelling"),
        ("no pain or swelling",
         "No pain or swelling. Follow-up arranged with cardiology in three weeks.",
         "no pain or swelling"),
        # Whisper's joined words stay joined
        ("a 73 -year -old man", "A 73-year-old man.", "a 73-year-old man"),
    ],
)
def test_target(raw: str, signed: str, expected: str) -> None:
    raw_words = said(raw)
    for w in raw_words:  # "-year" is written against the word before it
        if w.word.startswith(" -"):
            w.word = w.word[1:]
    assert join_words(target_words(raw_words, signed)[0]) == expected


def test_target_words_keep_the_times_of_the_raw_words() -> None:
    """A corrected run takes the time of the raw words it replaces; kept words keep theirs;
    a carried word sits at the end of the word before it."""
    raw = said("she takes epics are gone daily")
    words, stats = target_words(raw, "She takes apixaban daily.")
    assert [w.text for w in words] == ["she", "takes", "apixaban", "daily"]
    drug = words[2]
    assert (drug.kind, drug.start, drug.end, drug.raw_count) == \
        ("corrected", raw[2].start, raw[4].end, 3)
    assert (words[3].start, words[3].end) == (raw[5].start, raw[5].end)
    assert stats.corrected == 3 and stats.corrections == 1 and stats.departure == 0.0
    words, stats = target_words(said("no pain today"), "No chest pain today.")
    assert words[1].kind == "inserted" and words[1].start == words[0].end
    assert words[1].span == words[0].span  # never cut away from its neighbour
    assert stats.inserted == 1 and stats.typed == 1


def test_departure_tells_typed_content_from_a_rewrite() -> None:
    raw = said("the patient reports cough for three days and no fever period "
               "lungs are clear period plan rest and fluids period")
    typed = ("The patient reports cough for 3 days and no fever. Lungs are clear. "
             "Plan rest and fluids.\n\nPHYSICAL EXAMINATION: Alert and oriented, pupils "
             "equal and reactive, neck supple without lymphadenopathy, abdomen soft and "
             "nontender, extremities without edema, neurologically grossly intact.")
    _, st = target_words(raw, typed)
    assert st.typed > st.rewritten and st.departure > PairOptions().max_departure
    rewritten = ("Two-week history of productive sputum with intermittent pyrexia managed "
                 "conservatively; auscultation unremarkable; supportive measures advised.")
    _, st = target_words(raw, rewritten)
    assert st.rewritten > st.typed and st.departure > PairOptions().max_departure
    _, st = target_words(raw, "The patient reports cough for 3 days and no fever.")
    assert st.departure == 0.0 and st.raw_dropped_fraction > 0.3  # the rest was deleted


# --- windows ----------------------------------------------------------------------------


def _word(k: int) -> str:
    """A distinct made-up word for each ``k`` ("qab", "qac", ...)."""
    return "q" + "".join(chr(97 + int(d, 26)) for d in np.base_repr(k + 27, 26))


def _sentences(n: int, words_each: int = 9) -> str:
    """``n`` sentences of distinct words, each ending with "end."."""
    return " ".join(" ".join([_word(i * words_each + j) for j in range(words_each - 1)]
                             + ["end."]) for i in range(n))


def test_windows_are_at_most_30_s_inside_the_audio_and_lose_no_word() -> None:
    raw = said(_sentences(30), step=0.4, start=0.5)  # 270 words over 108 s
    words, _ = target_words(raw, _sentences(30).capitalize())
    windows, skipped = cut_windows(words, duration_s=109.0)
    assert skipped == []
    assert all(0 < w.duration_s <= 30.0 for w in windows)
    assert windows[0].start_s >= 0.0 and windows[-1].end_s <= 109.0
    assert all(a.end_s <= b.start_s for a, b in itertools.pairwise(windows))
    assert " ".join(w.text for w in windows) == join_words(words)
    # cut at sentence ends: every window but the last ends one
    assert all(w.text.endswith("end.") for w in windows[:-1])
    # padded, but never into the next word
    assert windows[0].start_s == pytest.approx(0.5 - PairOptions().pad_s)


def test_a_window_of_unconfirmed_words_is_dropped_as_unsure() -> None:
    """The reviewer deleted the spoken header: its words get a window of their own, which
    is dropped with its reason and figures; the rest is kept."""
    raw = said("this is doctor jones dictating on tuesday for the clinic period "
               + _sentences(6), start=0.2)
    words, _ = target_words(raw, _sentences(6))
    windows, skipped = cut_windows(words, duration_s=raw[-1].end + 1)
    assert [s.reason for s in skipped] == ["unsure"]
    assert skipped[0].figures["agreement"] == 0.0
    assert skipped[0].end_s <= windows[0].start_s
    assert windows and all(w.agreement == 1.0 for w in windows)
    assert "doctor" not in " ".join(w.text for w in windows)


def test_a_window_missing_words_of_the_signed_text_is_dropped() -> None:
    """A sentence in the signed text that Whisper has no words for (typed, or said where
    Whisper skipped the audio) is not added, and the window around it is left out: its
    audio may hold speech its target lacks."""
    raw = said(_sentences(20), start=0.2)  # 72 s: three windows
    signed = _sentences(20).replace(
        "end. ", "end. Written advice was given about dizziness and falls. ", 1)
    words, stats = target_words(raw, signed)
    assert stats.typed == 6 and "advice" not in join_words(words)
    windows, skipped = cut_windows(words, duration_s=raw[-1].end + 1)
    assert [s.reason for s in skipped] == ["missing_words"]
    assert skipped[0].figures["missing"] == 6.0 and skipped[0].start_s < 4.0
    assert windows and all(w.missing == 0 for w in windows)


def test_too_short_too_long_and_corrected_windows_are_recorded() -> None:
    long_word = [TargetWord("hmm", 0.0, 31.0, "kept", 1),
                 TargetWord("well", 31.5, 32.0, "kept", 2)]
    windows, skipped = cut_windows(long_word, duration_s=33.0)
    assert windows == [] and [s.reason for s in skipped] == ["too_long", "too_short"]
    words, _ = target_words(said("one two three four"),
                            "Alpha bravo charlie delta.")  # all four replaced
    windows, skipped = cut_windows(words, PairOptions(max_correction_words=10))
    assert windows == [] and skipped[0].reason == "too_many_corrections"


# --- from signed drafts -----------------------------------------------------------------

TEXT = ("new paragraph history colon the patient reports cough for three days period "
        "she takes epics are gone five milligrams twice daily period plan colon rest and "
        "fluids period")
SIGNED = ("HISTORY: The patient reports cough for 3 days. She takes apixaban 5 mg twice "
          "daily.\n\nPLAN: Rest and fluids.\n")


@pytest.mark.slow  # signing: argon2 password checks and the final render
def test_pairs_for_a_signed_draft_carry_the_correction(settings: Settings,
                                                       tmp_path: Path) -> None:
    audio = tone_wav(tmp_path / "a.wav", 12.0)
    raw = said(TEXT, step=0.4, start=0.3)
    draft_id = stored_draft(settings, raw, TEXT, audio, duration=12.0)
    with open_store(settings).session() as s:  # not signed yet
        assert pairs_for_draft(s, settings, draft_id).reason == "not_signed"  # type: ignore[union-attr]
    sign(settings, draft_id, SIGNED)
    with open_store(settings).session() as s:
        result = draft_pairs(s, settings, draft_id)
    assert not isinstance(result, SkippedDraft), result
    (pair,) = result.pairs
    assert "apixaban five milligrams" in pair.text and "epics" not in pair.text
    assert pair.text.startswith("new paragraph history colon")
    assert pair.corrected == 1 and pair.physician_id == "dr-smith"
    assert 0.0 <= pair.start_s < pair.end_s <= 12.0 and pair.duration_s <= 30.0
    assert result.stats.corrected == 3 and result.stats.departure == 0.0
    assert "apixaban" not in repr(pair)  # the text never shows in a repr


@pytest.mark.slow  # signing: argon2 password checks and the final render
def test_a_rewritten_draft_is_skipped_with_its_reason(settings: Settings,
                                                      tmp_path: Path) -> None:
    audio = tone_wav(tmp_path / "a.wav", 12.0)
    draft_id = stored_draft(settings, said(TEXT, start=0.3), TEXT, audio)
    sign(settings, draft_id, "ASSESSMENT: Two-week productive sputum, afebrile, treated "
                             "conservatively with supportive measures; anticoagulation "
                             "unchanged.\n")
    with open_store(settings).session() as s:
        skipped = pairs_for_draft(s, settings, draft_id)
    assert isinstance(skipped, SkippedDraft)
    assert skipped.reason == "rewritten" and skipped.draft_id == draft_id
    assert skipped.figures["departure"] > PairOptions().max_departure


@pytest.mark.slow  # signing: argon2 password checks and the final render
def test_a_draft_whose_audio_is_gone_is_skipped(settings: Settings, tmp_path: Path) -> None:
    audio = tone_wav(tmp_path / "a.wav", 12.0)
    draft_id = stored_draft(settings, said(TEXT, start=0.3), TEXT, audio)
    sign(settings, draft_id, SIGNED)
    audio.unlink()  # retention removed it
    with open_store(settings).session() as s:
        skipped = pairs_for_draft(s, settings, draft_id)
        assert isinstance(skipped, SkippedDraft) and skipped.reason == "audio_missing"
        with pytest.raises(NotFoundError):
            pairs_for_draft(s, settings, "0" * 32)


@pytest.mark.slow  # signing: argon2 password checks and the final render
def test_collect_pairs_takes_the_physicians_signed_drafts_oldest_first(
        settings: Settings, tmp_path: Path) -> None:
    audio = tone_wav(tmp_path / "a.wav", 12.0)
    first = stored_draft(settings, said(TEXT, start=0.3), TEXT, audio)
    second = stored_draft(settings, said(TEXT, start=0.3), TEXT, audio)
    unsigned = stored_draft(settings, said(TEXT, start=0.3), TEXT, audio)
    other = stored_draft(settings, said(TEXT, start=0.3), TEXT, audio, physician="dr-patel")
    sign(settings, second, SIGNED)
    sign(settings, first, SIGNED)
    sign(settings, other, SIGNED, physician="dr-patel")
    with open_store(settings).session() as s:
        got = collect_pairs(s, settings, "dr-smith")
        assert [p.draft_id for p in got.pairs] == [second, first]
        assert unsigned not in {p.draft_id for p in got.pairs} and got.skipped == []
        second_row = s.get(DraftRow, second)
        assert second_row is not None
        dictation = second_row.dictation_id
        held_back = collect_pairs(s, settings, "dr-smith", exclude={dictation})
        assert [p.draft_id for p in held_back.pairs] == [first]


# --- the store --------------------------------------------------------------------------


def _clear_hits(root: Path, needles: list[str]) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and any(n.encode() in path.read_bytes() for n in needles):
            found.append(str(path.relative_to(root)))
    return found


@pytest.mark.slow  # signing: argon2 password checks and the final render
def test_store_is_private_encrypted_and_reads_back(settings: Settings, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    audio = tone_wav(tmp_path / "a.wav", 12.0)
    draft_id = stored_draft(settings, said(TEXT, start=0.3), TEXT, audio)
    sign(settings, draft_id, SIGNED)
    with open_store(settings).session() as s:
        pair_set = collect_pairs(s, settings, "dr-smith")
    stored = write_pairs(pair_set, settings)
    folder = pairs_dir(settings, "dr-smith")
    assert folder == settings.data_path / "adaptation" / "dr-smith" / "pairs"
    for d in (folder, folder.parent, folder.parent.parent):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    made = sorted(p.name for p in folder.iterdir())
    assert made == sorted([f"{p.pair_id}.npy" for p in stored.pairs]
                          + ["manifest.json", "targets.json"])
    for f in folder.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        assert files.is_encrypted(f)
    assert _clear_hits(folder, ["apixaban", "milligrams", "cough"]) == []
    manifest = json.loads(files.read_bytes(folder / "manifest.json", settings))
    assert "apixaban" not in json.dumps(manifest)
    assert set(manifest["pairs"][0]) == {"pair_id", "dictation_id", "draft_id", "start_s",
                                         "end_s", "words", "corrected", "agreement"}

    loaded = load_pairs(settings, "dr-smith")
    assert [(p.pair_id, p.text, p.start_s, p.end_s) for p in loaded.pairs] == \
        [(p.pair_id, p.text, p.start_s, p.end_s) for p in pair_set.pairs]
    pair = loaded.pairs[0]
    samples = load_window_audio(pair, settings)
    whole = audio_mod.decode(audio)
    a, b = round(pair.start_s * 16000), round(pair.end_s * 16000)
    assert samples.dtype == np.float32 and samples.size == b - a
    np.testing.assert_array_equal(samples, whole[a:b])  # s16 decode: stored exactly
    # cut from the dictation's own audio before it is stored: the same samples
    np.testing.assert_array_equal(load_window_audio(pair_set.pairs[0], settings), samples)
    # nothing of the targets in any log line
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "pairs stored physician=dr-smith" in logged
    for text in (p.text for p in pair_set.pairs):
        assert text not in logged
    assert not re.search(r"apixaban|milligrams|cough", logged)


@pytest.mark.slow  # signing: argon2 password checks and the final render
def test_a_plain_store_when_files_are_not_encrypted(settings: Settings,
                                                    tmp_path: Path) -> None:
    """With ``encrypt_files`` off the same store is written plain (so the clear-text search
    above is able to find the text when it is there)."""
    settings.encrypt_files = False
    audio = tone_wav(tmp_path / "a.wav", 12.0)
    draft_id = stored_draft(settings, said(TEXT, start=0.3), TEXT, audio)
    sign(settings, draft_id, SIGNED)
    with open_store(settings).session() as s:
        write_pairs(collect_pairs(s, settings, "dr-smith"), settings)
    folder = pairs_dir(settings, "dr-smith")
    assert _clear_hits(folder, ["apixaban"]) == ["targets.json"]
    assert load_pairs(settings, "dr-smith").pairs[0].text.count("apixaban") == 1


def test_store_rewrites_and_refuses_unsafe_ids(settings: Settings, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        pairs_dir(settings, "../etc")
    with pytest.raises(NotFoundError, match="No training pairs"):
        load_pairs(settings, "dr-smith")
    audio = tone_wav(tmp_path / "a.wav", 12.0)
    pair = TrainingPair("ab" * 16 + "-000", "ab" * 16, "cd" * 16, "dr-smith", 1.0, 3.0,
                        "hello there", 2, 0, 1.0, str(audio))
    folder = pairs_dir(settings, "dr-smith")
    write_pairs(PairSet("dr-smith", [pair, TrainingPair(
        "ab" * 16 + "-001", "ab" * 16, "cd" * 16, "dr-smith", 4.0, 6.0, "general kenobi",
        2, 0, 1.0, str(audio))]), settings)
    assert len(list(folder.glob("*.npy"))) == 2
    write_pairs(PairSet("dr-smith", [pair]), settings)  # a later run with fewer pairs
    assert [p.name for p in folder.glob("*.npy")] == [f"{pair.pair_id}.npy"]
    missing = TrainingPair("ef" * 16 + "-000", "ef" * 16, "cd" * 16, "dr-smith", 1.0, 3.0,
                           "x", 1, 0, 1.0, str(tmp_path / "gone.wav"))
    stored = write_pairs(PairSet("dr-smith", [missing]), settings)
    assert stored.pairs == [] and [s.reason for s in stored.skipped] == ["audio_unreadable"]


# --- end to end: the real pipeline on a shipped sample ----------------------------------


def _pick_word(raw: list[Word], text: str) -> Word:
    """A content word Whisper wrote once, that the draft's text has once, mid-dictation:
    the word the reviewer will "correct" (the test does not depend on what tiny.en heard)."""
    counts: dict[str, int] = {}
    for w in raw:
        counts[w.word.strip().lower()] = counts.get(w.word.strip().lower(), 0) + 1
    mid = raw[-1].end / 2
    for w in sorted(raw, key=lambda w: abs(w.start - mid)):
        core = w.word.strip()
        if (core.isalpha() and core.islower() and len(core) >= 6 and counts[core] == 1
                and len(re.findall(rf"\b{core}\b", text)) == 1):
            return w
    raise AssertionError("no word to correct in the transcript")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_signed_dictation_gives_pairs(settings: Settings, samples_dir: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """samples/synthetic_medical/cardiology_afib through the real pipeline (tiny.en,
    normalize, structure, render, queue), reviewed with one correction and signed: its
    pairs stay within 30 s and inside the audio, the correction is in the window holding
    the corrected word, and a second copy whose signed text was rewritten is skipped."""
    from pipeline.core.db.core import TranscriptRow
    from pipeline.ingest.sidecar import parse_sidecar
    from pipeline.service.process import process_file

    caplog.set_level(logging.DEBUG)
    base = samples_dir / "synthetic_medical" / "cardiology_afib"
    meta = parse_sidecar(base.with_suffix(".json").read_text(), name="sidecar.json")
    meta.physician_id = "dr-smith"
    result = process_file(base.with_suffix(".ogg"), settings, meta)
    rewritten = process_file(base.with_suffix(".ogg"), settings, meta)
    duration = result.dictation.audio.duration_s
    with open_store(settings).session() as s:
        row = s.scalars(select(TranscriptRow)
                        .where(TranscriptRow.dictation_id == result.dictation.id)).one()
        raw = P.words_from_segments(row.segments)
        draft_row = s.get(DraftRow, result.draft.id)
        assert draft_row is not None
        text = draft_row.text
    picked = _pick_word(raw, text)
    core = picked.word.strip()
    # the reviewer corrects one word, and types the assessment heading the template requires
    # when tiny.en's draft has none (the typed words are not added to any target)
    corrected = re.sub(rf"\b{core}\b", "apixaban", text)
    sign(settings, result.draft.id,
         corrected + "\n\nASSESSMENT: Atrial fibrillation, rate controlled.\n")
    sign(settings, rewritten.draft.id,
         "ASSESSMENT: Seen in clinic today; doing well. Plan unchanged.\n\n"
         "PLAN: Review in six months with routine bloods beforehand.\n")

    with open_store(settings).session() as s:
        pair_set = collect_pairs(s, settings, "dr-smith")
    assert [s.reason for s in pair_set.skipped] == ["rewritten"]
    assert pair_set.skipped[0].draft_id == rewritten.draft.id
    pairs = pair_set.pairs
    assert pairs and {p.draft_id for p in pairs} == {result.draft.id}
    for p in pairs:
        assert 0.0 <= p.start_s < p.end_s <= duration + 1e-6
        assert p.duration_s <= 30.0
    assert all(a.end_s <= b.start_s + 1e-6 for a, b in itertools.pairwise(pairs))
    # the pairs cover most of the dictation (the rest is recorded as skipped windows)
    covered = sum(p.duration_s for p in pairs)
    assert covered >= 0.5 * duration, (covered, duration, pair_set.skipped_windows)
    holding = [p for p in pairs if p.start_s <= picked.start and picked.end <= p.end_s]
    if holding:  # unless that window was left out (then it says why)
        assert "apixaban" in holding[0].text and not re.search(rf"\b{core}\b", holding[0].text)
    else:
        assert any(w.start_s <= picked.start <= w.end_s for w in pair_set.skipped_windows)
    assert sum(p.text.count("apixaban") for p in pairs) <= 1

    stored = write_pairs(pair_set, settings)
    window = load_window_audio(stored.pairs[0], settings)
    assert window.size == pytest.approx(stored.pairs[0].duration_s * 16000, abs=2)
    assert float(np.abs(window).max()) > 0.01  # speech, not silence
    folder = pairs_dir(settings, "dr-smith")
    assert all(files.is_encrypted(f) for f in folder.iterdir())
    assert _clear_hits(folder, ["apixaban"]) == []
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "pairs physician=dr-smith" in logged
    for p in pairs:
        assert p.text not in logged
    assert "apixaban" not in logged
