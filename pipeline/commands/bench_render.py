"""``dictation bench-render``: how long structuring and rendering a draft take.

For each sample dictation text (``samples/synthetic_medical/*.expected.txt`` with its sidecar),
measures in one run: ``sections.structure`` and ``render.render_outputs`` with all outputs
except PDF (.docx, .txt, FHIR, HL7, written atomically), as median and 95th percentile over
``--repeat`` runs after one warm-up, against the 100 ms target. ``--pdf`` adds one LibreOffice
conversion per template, for scale.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

__all__ = ["register"]

TARGET_MS = 100.0


def _texts(samples: Path, fallback: Path) -> list[tuple[str, Path, Path | None]]:
    found = []
    for text in sorted(samples.glob("*.expected.txt")):
        name = text.name.removesuffix(".expected.txt")
        side = text.with_name(f"{name}.json")
        found.append((name, text, side if side.is_file() else None))
    if not found:
        found = [(p.stem, p, None) for p in sorted(fallback.glob("*.txt"))]
    return found


def _handler(args: argparse.Namespace) -> int:
    from pipeline.core.errors import ConfigError
    from pipeline.core.records import AudioInfo, Dictation, DictationMeta, Note
    from pipeline.core.settings import PROJECT_ROOT, get_settings
    from pipeline.documents.pdf import convert_to_pdf, find_soffice
    from pipeline.documents.render import render_outputs
    from pipeline.documents.sections import structure
    from pipeline.ingest.sidecar import parse_sidecar

    settings = get_settings().model_copy(update={"pdf": "never"})
    texts = _texts(settings.samples_dir / "synthetic_medical",
                   PROJECT_ROOT / "tests" / "data" / "documents")
    if not texts:
        raise ConfigError("No dictation texts found; expected samples/synthetic_medical/"
                          "*.expected.txt.")
    work = Path(tempfile.mkdtemp(prefix="bench-render-"))
    rows = []
    all_render: list[float] = []
    try:
        for name, path, side in texts:
            text = path.read_text(encoding="utf-8")
            meta = (parse_sidecar(side.read_text(encoding="utf-8"), name=side.name)
                    if side else DictationMeta())
            dictation = Dictation(
                id=name,
                audio=AudioInfo(path=path, sha256="", size_bytes=0, format="text", codec="",
                                sample_rate=0, channels=0, duration_s=0.0),
                meta=meta,
            )
            structure_ms: list[float] = []
            render_ms: list[float] = []
            document = structure(Note(text=text), meta, settings)
            render_outputs(document, dictation, name, work / name, settings)  # warm-up
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                document = structure(Note(text=text), meta, settings)
                t1 = time.perf_counter()
                render_outputs(document, dictation, name, work / name, settings)
                t2 = time.perf_counter()
                structure_ms.append(1000 * (t1 - t0))
                render_ms.append(1000 * (t2 - t1))
            all_render.extend(render_ms)
            pdf_s = None
            if args.pdf and find_soffice():
                t0 = time.perf_counter()
                convert_to_pdf(work / name / "document.docx", work / f"{name}-pdf",
                               profile_root=work / "soffice")
                pdf_s = time.perf_counter() - t0
            rows.append((name, document.document_type, len(text), statistics.median(structure_ms),
                         statistics.median(render_ms), _p95(render_ms), pdf_s))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'dictation':<24} {'type':<18} {'chars':>6} {'structure':>10} "
          f"{'render med':>10} {'render p95':>10} {'pdf':>7}")
    for name, doc_type, chars, s_ms, r_ms, r_p95, pdf_s in rows:
        pdf_text = f"{pdf_s:6.2f}s" if pdf_s is not None else "      -"
        print(f"{name:<24} {doc_type:<18} {chars:>6} {s_ms:>8.1f}ms {r_ms:>8.1f}ms "
              f"{r_p95:>8.1f}ms {pdf_text}")
    overall = statistics.median(all_render)
    p95 = _p95(all_render)
    verdict = "meets" if p95 <= TARGET_MS else ("median meets" if overall <= TARGET_MS
                                                else "misses")
    print(f"\nrender (docx+txt+fhir+hl7, atomic write), all drafts: median {overall:.1f} ms, "
          f"p95 {p95:.1f} ms over {len(all_render)} renders; target <= {TARGET_MS:.0f} ms: "
          f"{verdict}")
    return 0


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``bench-render`` command."""
    p = subparsers.add_parser("bench-render", help="time structuring and rendering drafts")
    p.add_argument("--repeat", type=int, default=10, help="timed renders per dictation")
    p.add_argument("--pdf", action="store_true", help="also time one PDF conversion each")
    p.set_defaults(func=_handler)
