"""``dictation bench-language``: speed of the medical-language stage, measured in one run.

Builds a 1,000-word transcript (with word timings and probabilities, as Whisper gives them)
from the synthetic sample references, then measures: vocabulary load from disk (target
<= 1 s), the first normalisation (spaCy pipeline built), and warm normalisations (target
<= 100 ms for 1,000 words), and prints them against the targets.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from pipeline.core.records import Segment, Transcript, Word
from pipeline.core.settings import get_settings

__all__ = ["register", "build_transcript"]

_FALLBACK = (
    "Preoperative diagnosis colon acute cholecystitis period new paragraph. The patient was "
    "prepped and draped in the usual sterile fashion period. A Veress needle was inserted at "
    "the umbilicus and pneumoperitoneum established to fifteen millimeters of mercury period. "
    "Blood pressure one forty two over eighty eight comma hemoglobin eleven point two period. "
    "She takes metformin five hundred milligrams by mouth twice daily period. The fascia was "
    "closed with zero Vicryl and the skin with four oh Monocryl period new paragraph. "
)


def build_transcript(n_words: int, samples_dir: Path | None = None) -> Transcript:
    """A transcript of ``n_words`` words from the sample references (or a built-in text)."""
    texts: list[str] = []
    if samples_dir is not None:
        for path in sorted((samples_dir / "synthetic_medical").glob("*.ref.txt")):
            texts.append(path.read_text(encoding="utf-8"))
    pool = " ".join(texts).split() or _FALLBACK.split()
    words: list[Word] = []
    t = 0.0
    k = 0
    while len(words) < n_words:
        w = pool[k % len(pool)]
        words.append(Word(" " + w, t, t + 0.3, 0.6 + 0.4 * ((k * 7919) % 100) / 100))
        t += 0.35
        k += 1
    segs = [
        Segment(id=i, start=words[j].start, end=words[min(j + 29, n_words - 1)].end,
                text="".join(w.word for w in words[j : j + 30]), words=words[j : j + 30])
        for i, j in enumerate(range(0, n_words, 30))
    ]
    return Transcript("bench", "none", "en", t, segs)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``bench-language`` sub-command."""
    p = subparsers.add_parser("bench-language", help="benchmark the medical-language stage")
    p.add_argument("--words", type=int, default=1000, help="transcript length (default 1000)")
    p.add_argument("--runs", type=int, default=20, help="warm runs (default 20)")
    p.add_argument("--document-type", default="operative_report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Measure and print the figures."""
    from pipeline.language import normalize, vocab
    from pipeline.language.normalize import terms

    settings = get_settings()
    vocab_dir = Path(settings.vocab_dir).resolve()
    t0 = time.perf_counter()
    vocab.load_index(vocab_dir)
    load_s = time.perf_counter() - t0
    vocab._cached_index.cache_clear()
    terms.get_nlp.cache_clear()
    transcript = build_transcript(args.words, settings.samples_dir)
    t0 = time.perf_counter()
    vocab.get_index(settings)
    cached_load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    note = normalize.normalize(transcript, settings, document_type=args.document_type)
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(max(1, args.runs)):
        t0 = time.perf_counter()
        normalize.normalize(transcript, settings, document_type=args.document_type)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    p90 = sorted(times)[int(0.9 * (len(times) - 1))]
    t0 = time.perf_counter()
    normalize.prompt_terms(settings, document_type=args.document_type)
    prompt_s = time.perf_counter() - t0
    n_words = len(transcript.words)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"medical-language benchmark ({n_words} words, {args.runs} warm runs, "
          f"{os.cpu_count()} CPUs, load average {load1:.1f})")
    print(f"  vocabulary load from disk   {load_s * 1000:8.1f} ms   target <= 1000 ms  "
          f"{'OK' if load_s <= 1.0 else 'OVER'}")
    print(f"  get_index (first call)      {cached_load_s * 1000:8.1f} ms")
    print(f"  first normalize (cold nlp)  {first_s * 1000:8.1f} ms")
    print(f"  normalize median            {med * 1000:8.1f} ms   target <= 100 ms   "
          f"{'OK' if med <= 0.1 else 'OVER'}")
    print(f"  normalize p90               {p90 * 1000:8.1f} ms")
    print(f"  per 1,000 words (median)    {med * 1000 * 1000 / n_words:8.1f} ms")
    print(f"  prompt_terms                {prompt_s * 1000:8.2f} ms")
    print(f"  corrections {len(note.corrections)}, review items {len(note.review_items)}")
    return 0
