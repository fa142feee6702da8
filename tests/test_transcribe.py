"""The transcribe stage with the real tiny.en model, plus its guards as unit tests."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from pipeline.core.records import Dictation, Segment, Word
from pipeline.core.settings import Settings
from pipeline.ingest import audio
from pipeline.speech import transcribe
from pipeline.speech.transcribe import TranscribeOptions

sys.path.insert(0, str(Path(__file__).parent / "data" / "speech"))
import speechgen as gen


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gen.speak(tmp_path_factory.mktemp("clip") / "clip.wav")


def _dictation(path: Path, settings: Settings, did: str = "d1") -> Dictation:
    return Dictation(id=did, audio=audio.probe(path, settings))


def _run(path: Path, settings: Settings, options: TranscribeOptions | None = None, **kw):
    return transcribe.transcribe(_dictation(path, settings), settings, options, **kw)


# ---------------------------------------------------------------------------- real model


def test_clip_is_transcribed_with_words_and_times(clip: Path, settings: Settings) -> None:
    t = _run(clip, settings)
    text = t.raw_text.lower()
    found = [k for k in gen.CLIP_KEYWORDS if k in text]
    assert len(found) >= 6, (found, text)
    assert t.model == "tiny.en" and t.language == "en"
    assert t.flags == []
    assert t.duration_s > 5
    words = t.words
    assert len(words) >= 15
    for w in words:
        assert 0 <= w.start <= w.end <= t.duration_s
        assert 0 <= w.probability <= 1
    starts = [w.start for w in words]
    assert starts == sorted(starts)
    for s in t.segments:
        assert 0 <= s.start <= s.end <= t.duration_s
        assert s.temperature == 0.0
    assert t.options["temperature"] == 0.0 and t.options["beam_size"] == 5


@pytest.mark.slow
def test_same_audio_gives_same_transcript_every_run(clip: Path, settings: Settings) -> None:
    """Determinism: no random temperature fallback, identical segments and words."""
    first = _run(clip, settings)
    second = _run(clip, settings)
    assert [s.to_dict() for s in first.segments] == [s.to_dict() for s in second.segments]
    assert first.raw_text == second.raw_text and first.raw_text


@pytest.mark.slow
def test_unprompted_transcript_equals_raw_faster_whisper(clip: Path, settings: Settings) -> None:
    """Our decoding, VAD and chunking hand the model exactly what faster-whisper would: with
    the same options and no prompt, the words and times are the same as a raw call's."""
    from pipeline.speech import models as speech_models

    options = TranscribeOptions()
    ours = _run(clip, settings, options)
    model = speech_models.load(settings)
    raw, _ = model.transcribe(str(clip), vad_filter=True,
                              vad_parameters=transcribe.vad_options(options),
                              **transcribe.whisper_kwargs(options, "en"))
    raw_words = [(w.word, round(w.start, 2), round(w.end, 2)) for s in raw for w in s.words]
    assert [(w.word, round(w.start, 2), round(w.end, 2)) for w in ours.words] == raw_words


def test_silence_gives_empty_transcript_flagged_no_speech(
    tmp_path: Path, settings: Settings
) -> None:
    t = _run(gen.silence(tmp_path / "silence.wav", 20), settings)
    assert t.raw_text == ""
    assert t.segments == []
    assert "no_speech" in t.flags


def test_silence_without_vad_does_not_become_you(tmp_path: Path, settings: Settings) -> None:
    """Without VAD tiny.en says "You" over silence; the hallucination guard drops it."""
    path = gen.silence(tmp_path / "silence.wav", 20)
    t = _run(path, settings, TranscribeOptions(vad=False))
    assert t.raw_text == ""
    assert "no_speech" in t.flags


@pytest.mark.parametrize("kind", ["pink", "white"])
def test_noise_invents_no_text(kind: str, tmp_path: Path, settings: Settings) -> None:
    make = gen.pink_noise if kind == "pink" else gen.white_noise
    t = _run(make(tmp_path / f"{kind}.wav", 20), settings)
    assert t.raw_text == ""
    assert "no_speech" in t.flags


def test_truncated_wav_is_transcribed_and_flagged(
    clip: Path, tmp_path: Path, settings: Settings
) -> None:
    t = _run(gen.truncate_wav(clip, tmp_path / "cut.wav", 0.6), settings)
    assert "truncated" in t.flags
    assert "patient" in t.raw_text.lower()


@pytest.mark.slow
def test_spoken_repetition_loop_is_removed_and_flagged(tmp_path: Path, settings: Settings) -> None:
    phrase = "The wound was closed with staples."
    path = gen.speak(tmp_path / "loop.wav", " ".join([phrase] * 4))
    t = _run(path, settings)
    assert "repetition" in t.flags
    assert t.raw_text.lower().count("staples") == 1
    assert t.options["diagnostics"]["removed_repeat_words"] >= 12


#: A term prompt like the medical-language stage's; with it, tiny.en once ended this clip with
#: "Thank you so much for watching and I'll see you in the next video, see you in the ..."
#: looped into the last 0.4 s (compression ratio 10.9).
PROMPT = ("Medical dictation. cholecystectomy, cholecystitis, cholelithiasis, laparoscopic, "
          "trocar, trocars, Veress needle, pneumoperitoneum, Calot's triangle, cystic duct, "
          "cystic artery, common bile duct, electrocautery, Vicryl, Monocryl, Prolene.")


@pytest.mark.slow
def test_regression_prompted_decoding_invents_no_youtube_outro(
    clip: Path, settings: Settings, tmp_path: Path
) -> None:
    """(16 kHz copy of the clip: the loop showed there.) The invented outro is dropped."""
    path = gen.ffmpeg(clip, tmp_path / "clip16k.wav", "-ar", "16000")
    t = _run(path, settings, TranscribeOptions(initial_prompt=PROMPT))
    text = t.raw_text.lower()
    assert "watching" not in text and "video" not in text, text
    assert "anesthesia" in text
    assert all(len(s.words) < 4 or s.end - s.start >= 0.1 * len(s.words) for s in t.segments)


OP_OPENING = (
    "Operative report. Preoperative diagnosis, symptomatic cholelithiasis. Postoperative "
    "diagnosis, same. Procedure, laparoscopic cholecystectomy. Surgeon, Doctor Smith. "
    "Anesthesia, general endotracheal. Indications. The patient is a forty five year old woman "
    "with recurrent right upper quadrant pain after fatty meals."
)


@pytest.mark.slow
def test_regression_prompt_loop_drops_no_speech(tmp_path: Path, settings: Settings) -> None:
    """With the term prompt, tiny.en looped "cholecystitis," for 20 s and dropped everything
    after it. The loop copies are removed and the stretch is decoded again unprompted."""
    path = gen.speak(tmp_path / "opening.wav", OP_OPENING, speed=155)
    t = _run(path, settings, TranscribeOptions(initial_prompt=PROMPT))
    text = t.raw_text.lower().replace("-", "")  # "pre-operative" is the same word
    assert text.count("cholecystitis") <= 2, text
    for word in ("preoperative", "diagnosis", "procedure", "anesthesia", "year", "meals"):
        assert word in text, (word, text)
    assert "dropped_audio" not in t.flags
    starts = [w.start for w in t.words]
    assert starts == sorted(starts)
    assert [s.id for s in t.segments] == list(range(len(t.segments)))


#: The shipped lap-chole dictation: 12.1-42.1 s is the stretch where tiny.en loops.
LAP_CHOLE = Path(__file__).parents[1] / "samples" / "synthetic_medical" / "op_lap_chole.ogg"
LOOP_STRETCH = (12.1, 42.08)
#: Dictated words of that stretch ("Preoperative diagnosis: ... Postoperative diagnosis: ...
#: Procedure: ... Anesthesia: ... The patient was brought to the operating room ... prepped
#: and draped in the usual sterile fashion").
LOOP_STRETCH_WORDS = ("preoperative", "postoperative", "procedure", "operating room",
                      "anesthesia", "sterile")
#: How many of them a decode of the stretch must give back. Which ones come back depends on
#: the matrix kernels the CPU runs (docs/decoding-determinism.md): over 30 kernel settings
#: measured on the shipped sample, tiny.en gave 4 to 6 of them ("sterile" came out as "will
#: settle" or "special", "preoperative" as "Preoproton"); the loop itself gives 1 ("Preoperative
#: diagnosis colon-sympathetic colon-sympathetic ..."), so 4 tells a decoded stretch from a
#: lost one without asserting the words Whisper garbles.
MIN_STRETCH_WORDS = 4


def _letters(text: str) -> str:
    """Only the letters, lower-cased: "pre-operative" and "Preoperative" compare equal."""
    return re.sub(r"[^a-z]", "", text.lower())


def _stretch_words_found(words: list[Word], a: float, b: float) -> list[str]:
    """Which ``LOOP_STRETCH_WORDS`` are among the words that start between ``a`` and ``b``."""
    heard = _letters(" ".join(w.word for w in words if a <= w.start < b))
    return [w for w in LOOP_STRETCH_WORDS if _letters(w) in heard]


def _short_loops(words: list[Word]) -> list[tuple[int, int, int]]:
    """Runs of a 1-3 word phrase repeated 4+ times back to back (a decoding loop)."""
    tokens = [w.word.strip(" ,.").lower() for w in words]
    return [r for r in transcribe.find_repeats(tokens) if r[1] <= 3 and r[2] >= 4]


@pytest.mark.slow
def test_loop_repair_decodes_the_looping_stretch_again(settings: Settings) -> None:
    """The repair itself, on real audio, on every CPU: a segment that loops over 12-42 s of
    the shipped dictation (as raw tiny.en decodes it with Intel MKL on AVX2 or AVX-512 VNNI)
    is replaced by a greedy, penalised decode of its stretch. Whether tiny.en loops there at
    all depends on the CPU's kernels, so the loop is given here; the decode is real. Asserted:
    the loop is gone, the stretch is covered without a hole, the neighbours are untouched and
    most of the dictated words are back (``MIN_STRETCH_WORDS``, why there)."""
    from pipeline.speech import models as speech_models

    a, b = LOOP_STRETCH
    header = _seg("Patient Margaret Ellison, operative report, new paragraph,", 0.0, a)
    loop = _seg("Preoperative diagnosis " + "colon-sympathetic " * 40, a, b)
    loop.compression_ratio = 15.07  # the raw decode's own figure
    after = _seg("Ancef was given intravenously before incision period,", b, 46.92)
    options = TranscribeOptions()
    assert transcribe._is_loop_segment(loop, options)
    duration = audio.probe(LAP_CHOLE, settings).duration_s
    out, repaired = transcribe._repair_loops(
        speech_models.load(settings), LAP_CHOLE, [header, loop, after],
        transcribe.whisper_kwargs(options, "en"), options, duration, [(0.0, duration)])
    assert repaired == 1
    assert out[0] is header and out[-1] is after
    new = out[1:-1]
    assert new and loop not in new
    words = [w for s in new for w in s.words]
    assert _short_loops(words) == [], [s.text for s in new]
    assert all(a - 0.05 <= w.start <= w.end <= b + 0.05 for w in words)
    starts = [w.start for w in words]
    assert starts == sorted(starts)
    assert transcribe.find_gaps([LOOP_STRETCH], words, options.dropped_audio_seconds) == []
    found = _stretch_words_found(words, a, b)
    assert len(found) >= MIN_STRETCH_WORDS, (found, [s.text for s in new])


@pytest.mark.slow
def test_regression_loop_is_repaired_greedily_from_the_shipped_sample(settings: Settings) -> None:
    """Raw tiny.en loops "colon-sympathetic" over 12-42 s of the shipped lap-chole dictation
    (30 s of diagnoses, procedure and anesthesia lost) with Intel MKL on AVX2/AVX-512 VNNI;
    with other kernels (forced GENERIC or AVX512, oneDNN, float32) it does not loop there at
    all. Whatever the raw decode did, the transcript promises: no loop, no speech dropped,
    ordered times, and most dictated words of the stretch back (``MIN_STRETCH_WORDS``: which
    of them come back is decoding luck, see docs/decoding-determinism.md). A loop that was
    decoded again is counted and flagged. (The repair itself: the test above.)"""
    options = TranscribeOptions()
    assert options.loop_beam_size == 1
    t = _run(LAP_CHOLE, settings, options)
    diagnostics = t.options["diagnostics"]
    if diagnostics["repaired_loops"]:
        assert "repetition" in t.flags
    assert "dropped_audio" not in t.flags and diagnostics["dropped_stretches"] == 0
    assert _short_loops(t.words) == [], t.raw_text
    assert _letters(t.raw_text).count("sympathetic") <= 1, t.raw_text
    assert transcribe.find_gaps([LOOP_STRETCH], t.words, options.dropped_audio_seconds) == []
    found = _stretch_words_found(t.words, *LOOP_STRETCH)
    assert len(found) >= MIN_STRETCH_WORDS, (found, t.raw_text)
    starts = [w.start for w in t.words]
    assert starts == sorted(starts)
    assert all(0 <= w.start <= w.end <= t.duration_s for w in t.words)


@pytest.mark.slow
def test_regression_unprompted_loop_drops_no_speech(settings: Settings) -> None:
    """Without any prompt, tiny.en heard "comma" as "Commodary" over and over in the shipped
    COPD dictation and then skipped ten seconds of speech (a history sentence with its dates
    and drugs); the skipped stretch is decoded again on its own, as for a prompted decode.
    Whether the raw decode skips there depends on the CPU's kernels
    (docs/decoding-determinism.md), so the recovery is not required to have run: no stretch
    may be left without words, and the sentence's date words (clear speech) must be there."""
    from pipeline.core.settings import PROJECT_ROOT

    path = PROJECT_ROOT / "samples" / "synthetic_heldout" / "progress_copd_pulmonology.ogg"
    t = _run(path, settings, TranscribeOptions())
    diagnostics = t.options["diagnostics"]
    assert "2018" in t.raw_text and "September" in t.raw_text, t.raw_text
    assert "dropped_audio" not in t.flags and diagnostics["dropped_stretches"] == 0
    assert _short_loops(t.words) == [], t.raw_text
    starts = [w.start for w in t.words]
    assert starts == sorted(starts)


@pytest.mark.slow
def test_long_file_is_chunked_with_offsets_and_progress(
    clip: Path, tmp_path: Path, settings: Settings
) -> None:
    """Chunks of 12 s: the same words, times shifted by each chunk's offset, progress to 100%."""
    second = gen.speak(tmp_path / "b.wav", "Two trocars were placed. The gallbladder was "
                       "removed through the umbilical port without difficulty.")
    third = gen.speak(tmp_path / "c.wav", "The fascia was closed. Skin was closed with "
                      "staples. The patient went to recovery in stable condition.")
    path = gen.concat_wav(tmp_path / "three.wav", [clip, second, third], gap_s=3.0)
    whole = _run(path, settings)
    calls: list[tuple[float, float]] = []
    chunked = _run(path, settings, TranscribeOptions(chunk_seconds=12.0),
                   progress=lambda d, t: calls.append((d, t)))
    duration = whole.duration_s
    assert duration > 30
    for t in (whole, chunked):
        text = t.raw_text.lower()
        assert all(k in text for k in ("anesthesia", "umbilical", "recovery")), text
        assert t.flags == []
    assert max(w.end for w in chunked.words) > 2 * duration / 3
    starts = [w.start for w in chunked.words]
    assert starts == sorted(starts)
    assert all(w.end <= duration for w in chunked.words)
    assert len(calls) > 3
    assert calls[-1] == (pytest.approx(duration, abs=0.01), pytest.approx(duration, abs=0.01))
    done = [c[0] for c in calls]
    assert all(t == calls[0][1] for _, t in calls)
    assert done == sorted(done)


def test_options_from_settings(settings: Settings) -> None:
    settings.beam_size = 2
    settings.vad = False
    settings.chunk_seconds = 120
    o = TranscribeOptions.from_settings(settings)
    assert (o.beam_size, o.vad, o.chunk_seconds, o.language) == (2, False, 120, "en")
    kw = transcribe.whisper_kwargs(o, "en")
    assert kw["temperature"] == [0.0]
    assert kw["word_timestamps"] is True
    assert kw["condition_on_previous_text"] is False


# ---------------------------------------------------------------------------- guards (units)


@pytest.mark.parametrize(
    ("text", "loops"),
    [
        ("the the the the", [(0, 1, 4)]),
        ("the the the", []),  # three singles: can be dictated ("no no no")
        ("left knee left knee", []),  # a bigram twice is normal speech
        ("left knee left knee left knee", [(0, 2, 3)]),
        ("closed in two layers closed in two layers", [(0, 4, 2)]),
        ("a b c d e f", []),
        ("start x y z w x y z w end", [(1, 4, 2)]),
        ("", []),
    ],
)
def test_find_repeats(text: str, loops: list[tuple[int, int, int]]) -> None:
    assert transcribe.find_repeats(text.split()) == loops


def _seg(text: str, start: float, end: float, prob: float = 0.9, nsp: float = 0.0,
         words: bool = True) -> Segment:
    toks = text.split()
    step = (end - start) / max(len(toks), 1)
    ws = [Word(" " + t, start + i * step, start + (i + 1) * step, prob)
          for i, t in enumerate(toks)] if words else []
    return Segment(id=0, start=start, end=end, text=text, words=ws, no_speech_prob=nsp)


def test_remove_repeats_across_segments_keeps_first_copy() -> None:
    segs = [
        _seg("Endotracheal tube was placed.", 0, 2),
        _seg("Endotracheal. Endotracheal. Endotracheal. Endotracheal.", 2, 6),
    ]
    out, removed, kept = transcribe.remove_repeats(segs)
    assert (removed, kept) == (3, 0)
    assert [s.text for s in out] == ["Endotracheal tube was placed.", "Endotracheal."]


def test_remove_repeats_drops_segments_that_are_only_repeats() -> None:
    segs = [_seg("the wound was closed", 0, 2), _seg("the wound was closed", 2, 4),
            _seg("the wound was closed", 4, 6), _seg("dressing applied", 6, 7)]
    out, removed, _ = transcribe.remove_repeats(segs)
    assert removed == 8
    assert [s.text for s in out] == ["the wound was closed", "dressing applied"]


def test_sentence_said_twice_is_kept_but_flagged_without_loop_evidence() -> None:
    """A physician may repeat a sentence: with its own audio, the copy stays (flag only)."""
    segs = [_seg("the wound was closed", 0, 2), _seg("the wound was closed", 2.5, 4.5)]
    out, removed, kept = transcribe.remove_repeats(segs, stretches=[(0.0, 5.0)])
    assert (removed, kept) == (0, 4)
    assert len(out) == 2


@pytest.mark.parametrize(
    ("second", "stretches", "why"),
    [
        (_seg("the wound was closed", 2.0, 2.4), [(0.0, 5.0)], "squeezed into 0.4 s"),
        (_seg("the wound was closed", 6.0, 8.0), [(0.0, 2.2)], "over audio without speech"),
    ],
)
def test_sentence_copy_with_loop_evidence_is_removed(second, stretches, why) -> None:
    segs = [_seg("the wound was closed", 0, 2), second]
    out, removed, kept = transcribe.remove_repeats(segs, stretches=stretches)
    assert (removed, kept) == (4, 0), why
    assert [s.text for s in out] == ["the wound was closed"]


def test_remove_repeats_leaves_normal_text_alone() -> None:
    segs = [_seg("Left knee, left knee pain for two two weeks.", 0, 3)]
    out, removed, kept = transcribe.remove_repeats(segs)
    assert removed == kept == 0 and out[0].text == "Left knee, left knee pain for two two weeks."


@pytest.mark.parametrize(
    ("text", "prob", "nsp", "overlap", "dropped"),
    [
        ("You", 0.3, 0.1, 1.0, True),  # weak
        ("Thank you.", 0.9, 0.8, 1.0, True),  # Whisper itself thought: no speech
        ("you", 0.95, 0.0, 0.1, True),  # over audio the VAD calls silence
        (". . . .", 0.9, 0.0, 1.0, True),  # punctuation only
        ("Thank you.", 0.95, 0.05, 1.0, False),  # said clearly: kept
        ("Patient tolerated the procedure well.", 0.2, 0.5, 0.0, False),  # not a known phrase
    ],
)
def test_is_hallucination(text: str, prob: float, nsp: float, overlap: float,
                          dropped: bool) -> None:
    seg = _seg(text, 0, 1, prob=prob, nsp=nsp)
    assert transcribe.is_hallucination(seg, TranscribeOptions(), overlap) is dropped


def test_squeezed_or_looping_segments_are_hallucinations() -> None:
    options = TranscribeOptions()
    squeezed = _seg("see you in the next video see you in the next", 10.1, 10.5)
    assert transcribe.is_hallucination(squeezed, options, 1.0)
    normal = _seg("see you in the clinic next week", 10.0, 12.5)
    assert not transcribe.is_hallucination(normal, options, 1.0)
    loop = _seg("closed closed closed closed closed closed", 0, 6, nsp=0.7)
    loop.compression_ratio = 3.1
    assert transcribe.is_hallucination(loop, options, 1.0)
    loop.no_speech_prob = 0.1  # Whisper sure it is speech: left to the repetition guard
    assert not transcribe.is_hallucination(loop, options, 1.0)


def test_prompt_leakage_over_non_speech_is_dropped() -> None:
    options = TranscribeOptions(initial_prompt="Cholecystectomy, Vicryl, trocar.",
                                hotwords="Monocryl Veress")
    segs = [
        _seg("Vicryl, Monocryl, Veress.", 0, 4),  # prompt terms over silence: leak
        _seg("Closed with Vicryl.", 5, 7),  # real speech using a term: kept
        _seg("Cholecystectomy.", 10, 11),  # a term, said where VAD heard speech: kept
    ]
    kept, hall, leaks = transcribe.guard_segments(segs, [(5.0, 7.5), (9.8, 11.2)], options)
    assert (hall, leaks) == (0, 1)
    assert [s.text for s in kept] == ["Closed with Vicryl.", "Cholecystectomy."]


def test_find_gaps_reports_each_hole() -> None:
    words = [Word(" a", 1.0, 2.0, 0.9), Word(" b", 12.0, 13.0, 0.9)]
    assert transcribe.find_gaps([(0.0, 20.0)], words, 6.0) == [(0, 2.0, 12.0), (0, 13.0, 20.0)]
    assert transcribe.find_gaps([(0.0, 20.0)], words, 11.0) == []


def test_dropped_stretches_finds_speech_without_words() -> None:
    words = [Word(" a", 0.5, 1.0, 0.9), Word(" b", 1.2, 2.0, 0.9), Word(" c", 20.0, 21.0, 0.9)]
    # stretch 1 covered; stretch 2 (10-18 s) has no words; stretch 3 has a 9 s hole
    stretches = [(0.0, 2.5), (10.0, 18.0), (19.5, 30.0)]
    assert transcribe.dropped_stretches(stretches, words, 6.0) == 2
    assert transcribe.dropped_stretches(stretches[:1], words, 6.0) == 0


def test_loop_is_judged_on_the_segment_own_text() -> None:
    """faster-whisper gives every segment of a 30-s window the window's compression ratio:
    a sound segment beside a loop is not a loop; a word looped over and over is."""
    options = TranscribeOptions()

    def seg(text: str, ratio: float) -> Segment:
        words = [Word(word=" " + w, start=i * 0.4, end=i * 0.4 + 0.3, probability=0.9)
                 for i, w in enumerate(text.split())]
        return Segment(id=0, start=0.0, end=len(words) * 0.4, text=text, words=words,
                       compression_ratio=ratio)

    sound = seg("Patient Margaret Ellison, date of birth March 4, 1962, operative report.", 5.3)
    looped = seg("Preoperative diagnosis " + "colon-sympathetic " * 30, 5.3)
    assert not transcribe._is_loop_segment(sound, options)
    assert transcribe._is_loop_segment(looped, options)
    assert not transcribe.is_hallucination(sound, options, 1.0)


@pytest.mark.slow
def test_prompt_that_derails_whisper_loses_no_speech(settings: Settings) -> None:
    """The operative-report term prompt made tiny.en skip 70 of 108 s of this sample and loop
    over the rest; the transcript must still cover the speech, once, without loops. Coverage
    is checked with words from the start, middle and end that every kernel setting measured
    gets right ("cystic": the duct and the artery are both dictated; with oneDNN, tiny.en
    wrote "Massystic duct", see docs/decoding-determinism.md)."""
    from pipeline.language import normalize

    sample = Path(__file__).parents[1] / "samples" / "synthetic_medical" / "op_lap_chole.ogg"
    prompt = normalize.prompt_terms(settings, document_type="operative_report")
    t = _run(sample, settings, TranscribeOptions(hotwords=prompt.hotwords))
    words = [w.word.strip(" ,.").lower() for w in t.words]
    assert "dropped_audio" not in t.flags
    assert not [r for r in transcribe.find_repeats(words) if r[1] <= 3 and r[2] >= 4]
    text = t.raw_text.lower()
    for phrase in ("margaret", "cystic", "umbilic", "stable condition", "two weeks"):
        assert text.count(phrase) >= 1, (phrase, text)
    assert text.count("margaret") == 1, text  # no misplaced copy of the header
    starts = [w.start for w in t.words]
    assert starts == sorted(starts)
