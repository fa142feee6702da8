"""The transcribe stage: audio -> ``Transcript`` with faster-whisper, guarded and deterministic.

What it adds around ``WhisperModel.transcribe``:

- Streaming: the file is decoded in chunks of ``chunk_seconds`` (at most
  ``max_piece_seconds``, cut at a pause found by the VAD), so an hour-long file stays in
  bounded memory; times get the chunk offset added and are
  clamped to the audio's duration. ``progress(done_s, total_s)`` is called as it goes.
- Determinism: temperature 0 only (faster-whisper's fallback samples at random) and no
  conditioning on previous text, so the same audio gives the same text on every run.
- Guards (each leaves a flag on the transcript):
  ``no_speech``: nothing was said (silence, noise): the transcript is empty, never invented;
  known silence hallucinations ("You", "Thank you.", ". . .") are dropped when weak;
  ``repetition``: n-gram loops are detected and the repeats removed;
  ``dropped_audio``: a stretch of several seconds that the VAD calls speech got no words;
  ``truncated``: the file is shorter than its header promises (from ``audio.probe``).
  Segments that only repeat the prompt terms over audio without speech are dropped.
"""

from __future__ import annotations

import logging
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipeline.core import files
from pipeline.core.records import (
    DROPPED_AUDIO,
    NO_SPEECH,
    REPETITION,
    TRUNCATED,
    Dictation,
    Segment,
    Transcript,
    Word,
)
from pipeline.core.settings import Settings
from pipeline.ingest import audio as audio_mod
from pipeline.speech import models as speech_models

__all__ = [
    "TranscribeOptions",
    "transcribe",
    "whisper_kwargs",
    "find_repeats",
    "remove_repeats",
    "is_hallucination",
    "guard_segments",
    "dropped_stretches",
    "find_gaps",
    "KNOWN_HALLUCINATIONS",
    "ProgressCallback",
]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[float, float], None]
SR = audio_mod.SAMPLE_RATE

#: What Whisper says over silence or noise (compared after lower-casing and removing
#: punctuation). Dropped only when the segment is weak (see ``is_hallucination``).
KNOWN_HALLUCINATIONS = frozenset(
    {
        "you",
        "thank you",
        "thanks",
        "thank you very much",
        "thanks for watching",
        "thank you for watching",
        "thank you so much for watching",
        "please subscribe",
        "bye",
        "subtitles by the amaraorg community",
        "i",
        "so",
        "oh",
        "uh",
        "um",
        "hmm",
    }
)


@dataclass
class TranscribeOptions:
    """Options of the transcribe stage (defaults are the product's defaults)."""

    beam_size: int = 5
    vad: bool = True
    language: str | None = "en"  # pinned; None lets a multilingual model detect it
    word_timestamps: bool = True
    initial_prompt: str | None = None
    hotwords: str | None = None
    #: temperature 0 only: no random fallback, same text every run
    temperature: float = 0.0
    condition_on_previous_text: bool = False
    compression_ratio_threshold: float | None = 2.4
    log_prob_threshold: float | None = -1.0
    no_speech_threshold: float | None = 0.6
    chunk_seconds: float = 600.0
    #: upper bound on the audio given to the model at once: its feature extraction holds
    #: ~0.7 MB per second of audio (600 s: +423 MB peak, 120 s: ~+100 MB), so long files
    #: stay in bounded memory even when ``chunk_seconds`` is large
    max_piece_seconds: float = 120.0
    vad_threshold: float = 0.5
    vad_min_silence_ms: int = 2000  # faster-whisper's default
    vad_speech_pad_ms: int = 400
    #: a VAD speech stretch (or a gap inside one) this long with no words -> dropped_audio
    dropped_audio_seconds: float = 6.0
    remove_repeats: bool = True
    #: decode a dropped stretch again without prompt terms (only when a prompt was used)
    recover_dropped: bool = True
    #: when the prompted decode skipped more than this share of the speech, the whole file
    #: is decoded again without the prompt (the prompt derailed Whisper)
    prompt_fallback_share: float = 0.25
    #: repetition penalty for decoding a looping stretch again (deterministic loop repair)
    loop_repetition_penalty: float = 1.2
    #: beam size for decoding a looping stretch again (None: ``beam_size``). Greedy: a beam
    #: search tends to find the loop's high-probability path again, and greedy is cheaper
    #: (a 30 s stretch with tiny.en: 1.5 s vs 2.5 s). On the four sample dictations where
    #: tiny.en loops (prompted and not), WER was lower than with beam 5 (0.359 -> 0.332
    #: op_lap_chole, 0.406 -> 0.392 referral_neurology, 0.349 -> 0.337 diabetes SOAP)
    loop_beam_size: int | None = 1
    #: weak-segment thresholds for the hallucination guard
    hallucination_max_word_prob: float = 0.6
    hallucination_min_no_speech_prob: float = 0.3
    #: faster than ~10 words per second is not speech, it is a decoding loop
    min_seconds_per_word: float = 0.1

    @classmethod
    def from_settings(cls, settings: Settings) -> TranscribeOptions:
        """Options from the settings (beam size, VAD, language, chunk length)."""
        language = settings.language
        return cls(
            beam_size=settings.beam_size,
            vad=settings.vad,
            language=None if language in ("", "auto") else language,
            chunk_seconds=settings.chunk_seconds,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy (stored with the transcript). Prompts are term lists, not PHI."""
        return asdict(self)


def whisper_kwargs(options: TranscribeOptions, language: str | None) -> dict[str, Any]:
    """The keyword arguments for ``WhisperModel.transcribe`` these options stand for.

    VAD is applied by this module (so that it knows where speech is), so ``vad_filter`` is
    not included; the benchmark adds ``vad_filter=True`` for raw faster-whisper.
    """
    return {
        "language": language,
        "beam_size": options.beam_size,
        "temperature": [options.temperature],
        "condition_on_previous_text": options.condition_on_previous_text,
        "compression_ratio_threshold": options.compression_ratio_threshold,
        "log_prob_threshold": options.log_prob_threshold,
        "no_speech_threshold": options.no_speech_threshold,
        "word_timestamps": options.word_timestamps,
        "initial_prompt": options.initial_prompt or None,
        "hotwords": options.hotwords or None,
    }


def vad_options(options: TranscribeOptions) -> Any:
    """faster-whisper ``VadOptions`` for these options."""
    from faster_whisper.vad import VadOptions

    return VadOptions(
        threshold=options.vad_threshold,
        min_silence_duration_ms=options.vad_min_silence_ms,
        speech_pad_ms=options.vad_speech_pad_ms,
    )


# --------------------------------------------------------------------------------------------
# text helpers


_NON_WORD = re.compile(r"[^\w']+", re.UNICODE)


def _norm(text: str) -> str:
    return _NON_WORD.sub(" ", text.lower()).replace("'", "").strip()


def find_repeats(tokens: list[str], max_n: int = 30) -> list[tuple[int, int, int]]:
    """Find back-to-back loops in a token list: ``(start, n, count)`` per loop.

    A loop is an n-gram repeated consecutively: 1 token 4+ times, 2-3 tokens 3+ times, 4 or
    more tokens 2+ times (a dictated sentence is rarely said twice back to back; Whisper's
    loops repeat whole phrases). Tokens are compared as given (normalise them first).
    """
    loops: list[tuple[int, int, int]] = []
    i, total = 0, len(tokens)
    while i < total:
        best: tuple[int, int] | None = None
        for n in range(1, max_n + 1):
            if i + 2 * n > total:
                break
            gram = tokens[i : i + n]
            if not all(gram):
                continue
            count = 1
            while tokens[i + count * n : i + (count + 1) * n] == gram:
                count += 1
            need = 4 if n == 1 else 3 if n <= 3 else 2
            if count >= need and (best is None or n * count > best[0] * best[1]):
                best = (n, count)
        if best:
            loops.append((i, best[0], best[1]))
            i += best[0] * best[1]
        else:
            i += 1
    return loops


def _is_loop_copy(
    copy: list[tuple[Segment, Word]],
    first: list[tuple[Segment, Word]],
    stretches: list[tuple[float, float]] | None,
    compression_threshold: float | None,
) -> bool:
    """Evidence that a repeated copy was invented rather than said again.

    Its words lie mostly where the VAD heard no speech, or they are squeezed into far less
    time than the first copy took, or Whisper's own compression ratio marks the segment as
    repetitive.
    """
    if stretches is not None:
        mids = [(w.start + w.end) / 2 for _, w in copy]
        outside = sum(not any(a <= m <= b for a, b in stretches) for m in mids)
        if outside > len(mids) / 2:
            return True
    span = copy[-1][1].end - copy[0][1].start
    first_span = first[-1][1].end - first[0][1].start
    if first_span > 0 and span < 0.4 * first_span:
        return True
    return compression_threshold is not None and any(
        seg.compression_ratio > compression_threshold for seg, _ in copy
    )


def remove_repeats(
    segments: list[Segment],
    stretches: list[tuple[float, float]] | None = None,
    compression_threshold: float | None = 2.4,
) -> tuple[list[Segment], int, int]:
    """Remove Whisper's loops, keeping the first copy; return (segments, removed, kept).

    Short n-grams (1-3 words) repeated past ``find_repeats``' thresholds and any phrase
    repeated three or more times are loops: the copies are removed. A longer phrase said
    exactly twice may be a physician repeating a sentence: its copy is removed only with
    evidence (``_is_loop_copy``), otherwise kept (and counted in ``kept``) for the reviewer.
    Works on words when segments have them (times stay right), else on segment texts.
    """
    if any(s.words for s in segments):
        flat = [(seg, w) for seg in segments for w in seg.words]
        tokens = [_norm(w.word) for _, w in flat]
        drop: set[int] = set()
        kept_repeats = 0
        for start, n, count in find_repeats(tokens):
            first = flat[start : start + n]
            for k in range(1, count):
                lo, hi = start + k * n, start + (k + 1) * n
                if (n <= 3 or count >= 3
                        or _is_loop_copy(flat[lo:hi], first, stretches, compression_threshold)):
                    drop.update(range(lo, hi))
                else:
                    kept_repeats += n
        if not drop:
            return segments, 0, kept_repeats
        dropped_ids = {id(flat[i][1]) for i in drop}
        out: list[Segment] = []
        for seg in segments:
            kept = [w for w in seg.words if id(w) not in dropped_ids]
            if len(kept) == len(seg.words):
                out.append(seg)
            elif kept:
                seg.words = kept
                seg.text = "".join(w.word for w in kept).strip()
                seg.start, seg.end = kept[0].start, kept[-1].end
                out.append(seg)
        return out, len(drop), kept_repeats
    texts = [_norm(s.text) for s in segments]
    drop_idx: set[int] = set()
    for start, n, count in find_repeats(texts):
        drop_idx.update(range(start + n, start + n * count))
    return [s for i, s in enumerate(segments) if i not in drop_idx], len(drop_idx), 0


def _mean_word_prob(seg: Segment) -> float:
    if not seg.words:
        return float(np.exp(seg.avg_logprob)) if seg.avg_logprob else 0.0
    return float(np.mean([w.probability for w in seg.words]))


def _squeezed(seg: Segment, min_seconds_per_word: float) -> bool:
    """Four or more words crammed into less time than anyone can say them."""
    n = len(seg.words)
    return n >= 4 and (seg.end - seg.start) < n * min_seconds_per_word


def is_hallucination(seg: Segment, options: TranscribeOptions, speech_overlap: float) -> bool:
    """True for text Whisper invented rather than heard.

    Dropped: punctuation-only segments; segments whose words are squeezed into impossibly
    little time (seen: "Thank you so much for watching..." looped into the last 0.4 s of a
    file); repetitive segments (compression ratio above the threshold) that Whisper itself
    scored as probably not speech; and the known silence phrases ("You", "Thank you.") when
    their words are unsure, Whisper thought it was not speech, or the VAD heard little speech.
    """
    text = _norm(seg.text)
    if not text:
        return True
    if _squeezed(seg, options.min_seconds_per_word):
        return True
    if (
        options.compression_ratio_threshold is not None
        and seg.compression_ratio > options.compression_ratio_threshold
        and _own_repetitive(seg, options.compression_ratio_threshold)
        and seg.no_speech_prob >= 0.5
    ):
        return True  # a repetitive loop where Whisper itself doubted there was speech
    if text not in KNOWN_HALLUCINATIONS:
        return False
    return (
        _mean_word_prob(seg) < options.hallucination_max_word_prob
        or seg.no_speech_prob >= options.hallucination_min_no_speech_prob
        or speech_overlap < 0.5
    )


def _prompt_terms(options: TranscribeOptions) -> set[str]:
    terms: set[str] = set()
    for source in (options.initial_prompt, options.hotwords):
        if source:
            terms.update(t for t in _norm(source).split() if t)
    return terms


def _overlap(start: float, end: float, stretches: list[tuple[float, float]]) -> float:
    """Fraction of [start, end] covered by the speech stretches."""
    length = end - start
    if length <= 0:
        return 1.0 if any(a <= start <= b for a, b in stretches) else 0.0
    covered = sum(max(0.0, min(end, b) - max(start, a)) for a, b in stretches)
    return min(1.0, covered / length)


def guard_segments(
    segments: list[Segment], stretches: list[tuple[float, float]], options: TranscribeOptions
) -> tuple[list[Segment], int, int]:
    """Drop silence hallucinations and prompt leakage; return (kept, hallucinations, leaks).

    A leak is a segment whose words are all prompt/hotword terms, over audio where the VAD
    heard (almost) no speech: Whisper repeating its prompt instead of transcribing.
    """
    prompt_terms = _prompt_terms(options)
    kept: list[Segment] = []
    hallucinations = leaks = 0
    for seg in segments:
        overlap = _overlap(seg.start, seg.end, stretches)
        if is_hallucination(seg, options, overlap):
            hallucinations += 1
            continue
        words = _norm(seg.text).split()
        if prompt_terms and words and all(w in prompt_terms for w in words) and overlap < 0.5:
            leaks += 1
            continue
        kept.append(seg)
    return kept, hallucinations, leaks


# --------------------------------------------------------------------------------------------
# chunking


def _pieces(
    blocks: Iterable[np.ndarray], options: TranscribeOptions, vad: Any
) -> Iterator[tuple[float, np.ndarray, list[dict[str, int]]]]:
    """Yield (offset_s, audio, speech timestamps) pieces cut at a pause near each block's end.

    A block's trailing speech stretch (speech still going at the block's end) is carried
    over into the next piece so that no word is cut in half.
    """
    from faster_whisper.vad import get_speech_timestamps

    carry = np.zeros(0, dtype=np.float32)
    offset = 0
    blocks = iter(blocks)
    block = next(blocks, None)
    while block is not None:
        nxt = next(blocks, None)
        buf = np.concatenate([carry, block]) if carry.size else block
        speech = get_speech_timestamps(buf, vad) if options.vad else []
        cut = buf.size
        if nxt is not None and speech and speech[-1]["end"] >= buf.size - SR // 2:
            start = speech[-1]["start"]
            if start >= buf.size // 2:  # only carry a reasonable tail
                cut = start
        kept = [s for s in speech if s["end"] <= cut] if cut < buf.size else speech
        yield offset / SR, buf[:cut], kept
        carry = buf[cut:].copy() if cut < buf.size else np.zeros(0, dtype=np.float32)
        offset += cut
        block = nxt
        del buf
    if carry.size:
        yield offset / SR, carry, get_speech_timestamps(carry, vad) if options.vad else []


# --------------------------------------------------------------------------------------------
# the stage


def _to_segment(seg: Any, idx: int, offset: float, duration: float) -> Segment:
    def clamp(t: float) -> float:
        return round(min(max(t + offset, 0.0), duration), 3)

    words = [
        Word(
            word=w.word,
            start=clamp(w.start),
            end=max(clamp(w.end), clamp(w.start)),
            probability=round(float(w.probability), 4),
        )
        for w in (seg.words or [])
    ]
    start = clamp(seg.start)
    return Segment(
        id=idx,
        start=start,
        end=max(clamp(seg.end), start),
        text=seg.text.strip(),
        words=words,
        avg_logprob=float(seg.avg_logprob),
        no_speech_prob=float(seg.no_speech_prob),
        compression_ratio=float(seg.compression_ratio),
        temperature=float(seg.temperature or 0.0),
    )


def find_gaps(
    stretches: list[tuple[float, float]], words: list[Word], min_gap: float
) -> list[tuple[int, float, float]]:
    """Runs of ``min_gap`` seconds or more inside VAD speech stretches that got no words.

    Returns ``(stretch index, start, end)`` per gap.
    """
    gaps: list[tuple[int, float, float]] = []
    for i, (a, b) in enumerate(stretches):
        if b - a < min_gap:
            continue
        # a word stretched over seconds (Whisper's last word before audio it skipped)
        # covers only its plausible length
        inside = sorted((w.start, min(w.end, w.start + _MAX_WORD_SECONDS))
                        for w in words if w.end > a and w.start < b)
        cursor = a
        for ws, we in inside:
            if ws - cursor >= min_gap:
                gaps.append((i, cursor, ws))
            cursor = max(cursor, we)
        if b - cursor >= min_gap:
            gaps.append((i, cursor, b))
    return gaps


def dropped_stretches(
    stretches: list[tuple[float, float]], words: list[Word], min_gap: float
) -> int:
    """How many speech stretches hold a run of ``min_gap`` seconds or more without words."""
    return len({i for i, _, _ in find_gaps(stretches, words, min_gap)})


def _read_ranges(path: Any, ranges: list[tuple[float, float]], chunk_seconds: float
                 ) -> list[np.ndarray]:
    """The 16 kHz samples of each (start, end) range, in one streaming pass over the file."""
    parts: list[list[np.ndarray]] = [[] for _ in ranges]
    offset = 0
    last = max((int(b * SR) for _, b in ranges), default=0)
    for block in audio_mod.iter_audio(path, chunk_seconds):
        if offset >= last:
            break  # past the last range: the rest of the file is not needed
        n = block.size
        for i, (a, b) in enumerate(ranges):
            lo, hi = max(int(a * SR) - offset, 0), min(int(b * SR) - offset, n)
            if hi > lo:
                parts[i].append(block[lo:hi])
        offset += n
    return [np.concatenate(p) if p else np.zeros(0, dtype=np.float32) for p in parts]


def _unprompted(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The same decoding options without the term prompt (for decoding a stretch again)."""
    return {**kwargs, "initial_prompt": None, "hotwords": None}


def _recover_gaps(
    model: Any,
    path: Any,
    gaps: list[tuple[int, float, float]],
    kwargs: dict[str, Any],
    options: TranscribeOptions,
    duration: float,
) -> list[Segment]:
    """Decode each gap again without prompt terms; keep the words that fall inside the gap.

    Whisper sometimes skips a stretch of speech: after a loop (it jumps to the next 30-s
    window) or because of the term prompt; decoding that stretch on its own, unprompted,
    usually brings it back.
    """
    plain = _unprompted(kwargs)
    pad = 0.3
    ranges = [(max(a - pad, 0.0), min(b + pad, duration)) for _, a, b in gaps]
    recovered: list[Segment] = []
    for (_, a, b), (ra, _rb), samples in zip(
        gaps, ranges, _read_ranges(path, ranges, options.chunk_seconds), strict=True
    ):
        if samples.size < SR // 2:
            continue
        raw, _info = model.transcribe(samples, vad_filter=False, **plain)
        for seg in raw:
            rec = _to_segment(seg, 0, ra, duration)
            words = [w for w in rec.words if a - 0.05 <= (w.start + w.end) / 2 <= b + 0.05]
            if not words:
                continue
            rec.words = words
            rec.text = "".join(w.word for w in words).strip()
            rec.start, rec.end = words[0].start, words[-1].end
            if not is_hallucination(rec, options, 1.0):
                recovered.append(rec)
    return recovered


def _decode_file(
    model: Any,
    path: Any,
    kwargs: dict[str, Any],
    options: TranscribeOptions,
    vad: Any,
    duration: float,
    progress: ProgressCallback | None = None,
) -> tuple[list[Segment], list[tuple[float, float]]]:
    """Decode the whole file piece by piece; return (segments, VAD speech stretches)."""
    from faster_whisper.transcribe import restore_speech_timestamps
    from faster_whisper.vad import collect_chunks

    segments: list[Segment] = []
    stretches: list[tuple[float, float]] = []
    piece_seconds = min(options.chunk_seconds, options.max_piece_seconds)
    for offset, piece, speech in _pieces(
        audio_mod.iter_audio(path, piece_seconds), options, vad
    ):
        piece_s = piece.size / SR
        stretches.extend(
            (min(offset + s["start"] / SR, duration), min(offset + s["end"] / SR, duration))
            for s in speech
        )
        if options.vad and not speech:
            if progress:
                progress(min(offset + piece_s, duration), duration)
            continue
        if options.vad:
            chunks, _ = collect_chunks(piece, speech)
            audio_in = np.concatenate(chunks) if len(chunks) > 1 else chunks[0]
            raw, _info = model.transcribe(audio_in, vad_filter=False, **kwargs)
            raw = restore_speech_timestamps(raw, speech, SR)
        else:
            raw, _info = model.transcribe(piece, vad_filter=False, **kwargs)
        for seg in raw:  # consume the lazy generator here
            segments.append(_to_segment(seg, len(segments), offset, duration))
            if progress:
                progress(min(segments[-1].end, duration), duration)
        if progress:
            progress(min(offset + piece_s, duration), duration)
        del piece
    if not options.vad:
        # Guards need to know where speech is, even when decoding ran without VAD.
        from faster_whisper.vad import get_speech_timestamps

        stretches = []
        for offset, block in _offsets(audio_mod.iter_audio(path, options.chunk_seconds)):
            stretches.extend(
                (offset + s["start"] / SR, offset + s["end"] / SR)
                for s in get_speech_timestamps(block, vad)
            )
    return segments, stretches


def _text_compression_ratio(text: str) -> float:
    """faster-whisper's compression ratio (zlib), of one segment's own text."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def _short_loop(seg: Segment) -> bool:
    """A word or two looped over and over ("colon-sympathetic colon-sympathetic ...") or a
    loop inside one word ("...omptomptompt")."""
    tokens = [_norm(w.word) for w in seg.words] or _norm(seg.text).split()
    if any(len(t) > 30 for t in tokens):
        return True
    return any(n <= 3 and count >= 4 for _, n, count in find_repeats(tokens))


def _own_repetitive(seg: Segment, threshold: float) -> bool:
    """The segment's own text is repetitive (not only the window it shares a ratio with)."""
    return _text_compression_ratio(seg.text) > threshold or _short_loop(seg)


def _is_loop_segment(seg: Segment, options: TranscribeOptions) -> bool:
    """Whisper looped inside this segment: a word or two over and over, or inside a word.

    ``Segment.compression_ratio`` is faster-whisper's figure for the whole 30-second window
    the segment came from (every segment of a window shares it), so a sound segment beside
    a loop would be caught too: the segment's own words decide. A whole phrase said several
    times may be real speech and is left to ``remove_repeats``.
    """
    threshold = options.compression_ratio_threshold
    return (threshold is not None and bool(seg.words) and seg.compression_ratio > threshold
            and _short_loop(seg))


def _repair_loops(
    model: Any,
    path: Any,
    segments: list[Segment],
    kwargs: dict[str, Any],
    options: TranscribeOptions,
    duration: float,
    stretches: list[tuple[float, float]],
) -> tuple[list[Segment], int]:
    """Decode each looping segment's stretch again, on its own, with a repetition penalty.

    faster-whisper's answer to a loop is to sample again at a higher temperature (random
    text); ours is deterministic: the same stretch, no prompt terms, greedy
    (``loop_beam_size``), repeated tokens penalised (``repetition_penalty``). The new text
    replaces the loop only when it is no longer repetitive; otherwise the loop stays for
    ``remove_repeats`` and the flags.
    Returns (segments, loops repaired).
    """
    loops = [s for s in segments if _is_loop_segment(s, options)]
    if not loops:
        return segments, 0
    plain = _unprompted(kwargs)
    if options.loop_beam_size:
        plain["beam_size"] = options.loop_beam_size
    attempts = [
        {**plain, "repetition_penalty": options.loop_repetition_penalty},
        {**plain, "no_repeat_ngram_size": 3},
    ]
    last_end = max(s.end for s in segments)
    ranges: list[tuple[float, float]] = []
    for seg in loops:
        # a loop's own end time is unreliable: run to the next segment's start
        later = [s.start for s in segments if s.start >= seg.end - 0.05 and s is not seg]
        b = min(later) if later else last_end
        b = min(max(b, seg.end), seg.start + 30.0, duration)
        ranges.append((seg.start, b))
    repaired = 0
    replace: dict[int, list[Segment]] = {}
    for seg, (a, b), samples in zip(
        loops, ranges, _read_ranges(path, ranges, options.chunk_seconds), strict=True
    ):
        if samples.size < SR // 2:
            continue
        # where the speech in the stretch ends (the VAD's view): a retry must reach it
        ends_in = [min(e, b) for s0, e in stretches if s0 < b and e > a]
        speech_end = max(ends_in) if ends_in else b
        best: tuple[float, list[Segment]] | None = None
        for attempt in attempts:
            new = _decode_samples(model, samples, attempt, a, duration, options)
            if new is None:
                continue
            # Whisper may stop early (its last words then stretch over the rest of the
            # audio): decode on from where the words stop being plausible
            for _ in range(3):
                reach = _plausible_reach(new)
                if reach + 1.5 >= speech_end or reach <= a:
                    break
                skip = int((reach - a) * SR)
                more = _decode_samples(model, samples[skip:], attempt, reach, duration,
                                       options)
                if more is None or _plausible_reach(more) <= reach + 0.5:
                    break
                new = _join_continuation(new, more, reach)
            # a retry that still stops early loses speech: try the next way, keep the one
            # that reaches furthest
            reach = _plausible_reach(new)
            if best is None or reach > best[0]:
                best = (reach, new)
            if reach + 1.5 >= speech_end:
                break
        if best is not None:
            replace[id(seg)] = best[1]
            repaired += 1
    if not replace:
        return segments, 0
    out: list[Segment] = []
    for seg in segments:
        if id(seg) not in replace:
            out.append(seg)
            continue
        new = replace[id(seg)]
        lo, hi = new[0].start, new[-1].end
        # the re-decoded stretch may overlap words of the following segments: those go
        out = [s for s in out if s.end <= lo + 0.05 or s.start >= hi]
        out.extend(new)
    covered = [(n[0].start, n[-1].end) for n in replace.values()]
    out = [
        s for s in out
        if any(s is n for new in replace.values() for n in new)
        or not any(a + 0.05 < (s.start + s.end) / 2 < b - 0.05 for a, b in covered)
    ]
    out.sort(key=lambda s: (s.start, s.end))
    return out, repaired


def _decode_samples(
    model: Any,
    samples: np.ndarray,
    kwargs: dict[str, Any],
    offset: float,
    duration: float,
    options: TranscribeOptions,
) -> list[Segment] | None:
    """Decode ``samples`` (starting at ``offset`` s); None if nothing usable or a loop again."""
    if samples.size < SR // 2:
        return None
    raw, _info = model.transcribe(samples, vad_filter=False, **kwargs)
    new = [_to_segment(r, 0, offset, duration) for r in raw]
    new = [n for n in new if n.words and not is_hallucination(n, options, 1.0)]
    if not new or any(_is_loop_segment(n, options) for n in new):
        return None
    return new


#: no dictated word takes longer than this; a longer one is Whisper stretching its last word
#: over audio it did not transcribe
_MAX_WORD_SECONDS = 1.5


def _plausible_reach(segments: list[Segment]) -> float:
    """Up to when the words of ``segments`` are plausibly timed: the end of the last word,
    or the start of the first word stretched over more than ``_MAX_WORD_SECONDS``."""
    words = [w for seg in segments for w in seg.words]
    for w in words:
        if w.end - w.start > _MAX_WORD_SECONDS:
            return w.start
    return words[-1].end if words else 0.0


def _join_continuation(first: list[Segment], more: list[Segment], cut: float) -> list[Segment]:
    """``first`` up to (not including) its words from ``cut`` on, then ``more``."""
    out: list[Segment] = []
    for seg in first:
        words = [w for w in seg.words if w.start < cut - 0.01]
        if not words:
            continue
        if len(words) < len(seg.words):
            seg.words = words
            seg.text = "".join(w.word for w in words).strip()
            seg.end = words[-1].end
        out.append(seg)
    return out + more


def _gap_seconds(gaps: list[tuple[int, float, float]]) -> float:
    return sum(b - a for _, a, b in gaps)


def transcribe(
    dictation: Dictation,
    settings: Settings,
    options: TranscribeOptions | None = None,
    progress: ProgressCallback | None = None,
    *,
    model: str | None = None,
    model_label: str | None = None,
) -> Transcript:
    """Transcribe the dictation's audio and return a guarded, flagged ``Transcript``.

    ``model`` is a registry name or a CTranslate2 folder (a physician's adapted model),
    default ``settings.model``; ``model_label`` is what the transcript records as its model
    (e.g. ``adapted:dr-smith/v3``), default the model's name.

    Decoding is deterministic (temperature 0 only). The guards, in order: loops are decoded
    again with a repetition penalty (``_repair_loops``); silence hallucinations, prompt
    leakage and repeated phrases are dropped (``guard_segments``, ``remove_repeats``);
    speech the decode skipped (after a loop, or because of the prompt) is decoded again
    without the prompt, stretch by stretch (``_recover_gaps``); when the prompt made Whisper
    skip a large share of the speech (``prompt_fallback_share``), the whole file is decoded
    again without it first.
    """
    options = options or TranscribeOptions.from_settings(settings)
    resolved = speech_models.resolve(model or settings.model, settings)
    model_name = model_label or resolved.name
    whisper = speech_models.load(settings, str(resolved.path), label=model_name)
    language = options.language if whisper.model.is_multilingual else "en"
    kwargs = whisper_kwargs(options, language)
    vad = vad_options(options)
    duration = float(dictation.audio.duration_s)
    # the stored audio may be encrypted at rest: its key ring travels with the path
    path = files.AudioRef(dictation.audio.path, settings)
    prompted = bool(options.initial_prompt or options.hotwords)
    t0 = time.perf_counter()

    segments, stretches = _decode_file(whisper, path, kwargs, options, vad, duration,
                                       progress)
    speech_s = sum(b - a for a, b in stretches)
    prompt_fallback = False
    if prompted and options.recover_dropped and options.word_timestamps and speech_s > 0:
        words = [w for s in segments for w in s.words]
        skipped = _gap_seconds(find_gaps(stretches, words, options.dropped_audio_seconds))
        if skipped > options.prompt_fallback_share * speech_s:
            # The prompt derailed Whisper here (seen: 70 of 108 s skipped, the rest
            # misplaced copies): the unprompted decode is the better transcript.
            segments, stretches = _decode_file(whisper, path, _unprompted(kwargs), options,
                                               vad, duration)
            prompt_fallback = True
    segments, loops_repaired = _repair_loops(whisper, path, segments, kwargs, options,
                                             duration, stretches)

    flags: list[str] = []
    diagnostics: dict[str, Any] = {"vad_speech_s": round(speech_s, 2)}

    before = segments
    segments, dropped_hallucinations, dropped_prompt = guard_segments(
        segments, stretches, options
    )
    kept_ids = {id(s) for s in segments}
    looped = sum(
        1 for s in before
        if id(s) not in kept_ids and find_repeats([_norm(w.word) for w in s.words])
    )
    segments, removed, kept_repeats = _repeats(segments, stretches, options)

    words = [w for s in segments for w in s.words]
    gaps = find_gaps(stretches, words, options.dropped_audio_seconds)
    recovered: list[Segment] = []
    if gaps and options.word_timestamps and options.recover_dropped:
        recovered = _recover_gaps(whisper, path, gaps, kwargs, options, duration)
        if recovered:
            recovered, more = _repair_loops(whisper, path, recovered, kwargs, options,
                                            duration, stretches)
            loops_repaired += more
            segments = sorted(segments + recovered, key=lambda s: (s.start, s.end))
            segments, removed2, kept2 = _repeats(segments, stretches, options)
            removed += removed2
            kept_repeats = kept2
            words = [w for s in segments for w in s.words]
            gaps = find_gaps(stretches, words, options.dropped_audio_seconds)
    elapsed = time.perf_counter() - t0
    if removed or kept_repeats or looped or loops_repaired:
        flags.append(REPETITION)
    for i, seg in enumerate(segments):
        seg.id = i
    if not any(s.text.strip() for s in segments):
        segments = []
        flags.append(NO_SPEECH)
    dropped = len({i for i, _, _ in gaps})
    if dropped and options.word_timestamps:
        flags.append(DROPPED_AUDIO)
    if dictation.audio.truncated:
        flags.append(TRUNCATED)

    diagnostics.update(
        dropped_hallucinations=dropped_hallucinations,
        dropped_loop_segments=looped,
        dropped_prompt_segments=dropped_prompt,
        removed_repeat_words=removed,
        kept_repeat_words=kept_repeats,
        repaired_loops=loops_repaired,
        prompt_fallback=prompt_fallback,
        dropped_stretches=dropped,
        recovered_words=sum(len(r.words) for r in recovered),
    )
    log.info(
        "transcribed dictation=%s model=%s audio_s=%.1f wall_s=%.2f segments=%d flags=%s",
        dictation.id, model_name, duration, elapsed, len(segments), flags,
    )
    opts = options.to_dict()
    opts["diagnostics"] = diagnostics
    return Transcript(
        dictation_id=dictation.id,
        model=model_name,
        language=language or "auto",
        duration_s=duration,
        segments=segments,
        flags=flags,
        transcribe_s=round(elapsed, 3),
        options=opts,
    )


def _repeats(
    segments: list[Segment], stretches: list[tuple[float, float]], options: TranscribeOptions
) -> tuple[list[Segment], int, int]:
    """``remove_repeats`` when enabled, else only count the repeated words (kept)."""
    if options.remove_repeats:
        return remove_repeats(segments, stretches, options.compression_ratio_threshold)
    flat = [_norm(w.word) for s in segments for w in s.words] or [
        _norm(s.text) for s in segments
    ]
    return segments, 0, sum((n * (c - 1)) for _, n, c in find_repeats(flat))


def _offsets(blocks: Iterable[np.ndarray]) -> Iterator[tuple[float, np.ndarray]]:
    offset = 0
    for block in blocks:
        yield offset / SR, block
        offset += block.size
