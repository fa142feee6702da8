"""The editor's word map: draft words get audio times, low-confidence and correction marks,
and keep them through a reviewer's edits."""

from __future__ import annotations

from pipeline.web.wordmap import map_words, tokenize, word_diff

SEGMENTS = [{
    "id": 0, "start": 0.0, "end": 4.0, "text": " Start lisinopril ten milligrams daily.",
    "words": [
        {"word": " Start", "start": 0.0, "end": 0.4, "probability": 0.95},
        {"word": " lice", "start": 0.5, "end": 0.8, "probability": 0.30},
        {"word": " in", "start": 0.8, "end": 0.9, "probability": 0.35},
        {"word": " oprah", "start": 0.9, "end": 1.3, "probability": 0.40},
        {"word": " ten", "start": 1.4, "end": 1.6, "probability": 0.90},
        {"word": " milligrams", "start": 1.7, "end": 2.3, "probability": 0.92},
        {"word": " daily.", "start": 2.4, "end": 2.8, "probability": 0.45},
    ],
}]
BASE = "Start lisinopril 10 mg daily.\n"
CORRECTIONS = [
    {"original": "lice in oprah", "replacement": "lisinopril", "start": 6, "end": 16,
     "kind": "term", "source_start_s": 0.5, "source_end_s": 1.3},
    {"original": "ten milligrams", "replacement": "10 mg", "start": 17, "end": 22,
     "kind": "number"},
]


def _words(tokens):  # type: ignore[no-untyped-def]
    return {t.text: t for t in tokens if t.is_word}


def test_tokenize_round_trips() -> None:
    text = "One  two\n\nthree <b>&amp;\n"
    assert "".join(t.text for t in tokenize(text)) == text


def test_pipeline_text_gets_times_marks_and_what_whisper_heard() -> None:
    w = _words(map_words(BASE, BASE, SEGMENTS, CORRECTIONS))
    assert w["Start"].start == 0.0 and not w["Start"].flagged
    assert w["lisinopril"].heard == "lice in oprah" and w["lisinopril"].start == 0.5
    assert w["10"].heard == "ten milligrams" and w["10"].start == 1.4
    assert w["mg"].heard == "ten milligrams"
    assert w["daily."].low and w["daily."].start == 2.4 and w["daily."].heard is None


def test_edits_keep_marks_on_unchanged_words_and_mark_new_ones() -> None:
    edited = "Start lisinopril 20 mg twice daily.\n"
    w = _words(map_words(edited, BASE, SEGMENTS, CORRECTIONS))
    assert w["lisinopril"].heard == "lice in oprah"
    assert w["20"].edited and w["20"].start == 1.4  # replaced "10": same place in the audio
    assert w["twice"].edited and w["twice"].start is not None  # clickable, near its place
    assert w["daily."].start == 2.4 and not w["daily."].edited


def test_text_without_transcript_is_still_clickable() -> None:
    tokens = map_words("Typed by hand.\n", "Typed by hand.\n", [], [])
    assert all(t.start == 0.0 for t in tokens if t.is_word)


def test_word_diff() -> None:
    assert word_diff("take ten mg", "take 10 mg") == [
        ("equal", "take "), ("delete", "ten"), ("insert", "10"), ("equal", " mg"),
    ]


def test_words_html_escapes_text_and_what_whisper_heard() -> None:
    from pipeline.web.wordmap import words_html

    text = "Give <script>x</script> & \"more\"\n"
    corr = [{"original": "<b>\"q\"</b> & 'r'", "replacement": "Give", "start": 0, "end": 4}]
    html = str(words_html(map_words(text, text, [], corr)))
    assert "<script>" not in html and "<b>" not in html
    assert "&lt;script&gt;x&lt;/script&gt;" in html and "&amp;" in html
    assert 'title="Whisper heard: &lt;b&gt;&#34;q&#34;&lt;/b&gt; &amp; &#39;r&#39;"' in html
    assert html.count('<span class="w') == 4
