"""``dictation transcribe FILE...``: transcribe files into drafts (no Prefect on this path).

Prints one summary line per file, or with ``--json`` exactly one JSON object per file on
stdout (nothing else goes to stdout). A bad file is reported and the next file still runs;
the exit status is 1 if any file failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from pipeline.core.errors import ConfigError, PipelineError
from pipeline.core.settings import Settings, get_settings

__all__ = ["register", "run", "settings_from_args", "result_json", "error_json"]

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``transcribe`` sub-command."""
    p = subparsers.add_parser(
        "transcribe",
        help="transcribe audio files into drafts",
        description="Transcribe dictation audio files into drafts in the review queue.",
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="audio file(s)")
    p.add_argument("--json", action="store_true", help="one JSON object per file on stdout")
    p.add_argument("--model", help="registry name (tiny.en, base) or CTranslate2 folder")
    p.add_argument("--no-store", action="store_true",
                   help="render the draft but do not store it in the review queue")
    p.add_argument("--data-dir", type=Path, help="data directory (default DICTATION_DATA_DIR)")
    p.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with ``--data-dir`` / ``--model`` overrides."""
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    if getattr(args, "model", None):
        overrides["model"] = args.model
        overrides["adapted_models"] = False  # the model asked for, not an adapted one
    try:
        return Settings(**overrides) if overrides else get_settings()
    except (ValidationError, SettingsError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"Settings could not be read from the environment: {first}") from exc


def _flags(*lists: list[str]) -> list[str]:
    return list(dict.fromkeys(f for flags in lists for f in flags))


def _blockers(result: Any, settings: Settings) -> list[dict[str, Any]]:
    from pipeline.core.records import to_jsonable
    from pipeline.language.vocab import get_index
    from pipeline.review.signoff import document_blockers

    corrections = to_jsonable(result.note.corrections)
    found = document_blockers(result.document, result.note.text, corrections,
                              index=get_index(settings))
    return [b.to_dict() for b in found]


def result_json(result: Any, audio_path: Path, settings: Settings | None = None) -> dict[str, Any]:
    """The JSON contract object for one processed file (``ProcessResult``)."""
    transcript = result.transcript
    draft = result.draft
    return {
        "id": result.dictation.id,
        "audio": str(audio_path),
        "duration_s": result.dictation.audio.duration_s,
        "model": transcript.model,
        "raw_text": transcript.raw_text,
        "text": result.note.text,
        "segments": [
            {
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "words": [
                    {"word": w.word, "start": w.start, "end": w.end,
                     "probability": w.probability}
                    for w in s.words
                ],
            }
            for s in transcript.segments
        ],
        "flags": _flags(transcript.flags, result.note.flags, result.document.flags),
        # what would block signing this draft as it stands (pipeline.review.signoff): missing
        # required sections, header mismatches (which field and how), flagged dose/side/drug
        # changes
        "blockers": _blockers(result, settings or get_settings()),
        "draft_id": draft.id,
        "draft_path": str(draft.docx_path) if draft.docx_path else None,
        "pdf_path": str(draft.outputs["pdf"]) if draft.outputs.get("pdf") else None,
        # seconds until the draft was queued (stored, or rendered with --no-store); the PDF
        # is made after that ("pdf" in timings)
        "queued_s": round(result.queued_s, 3),
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
    }


def error_json(error_id: str, audio_path: Path, error: BaseException) -> dict[str, Any]:
    """The JSON contract object for a file that failed."""
    if isinstance(error, PipelineError):
        message, code = str(error), error.code
    else:
        message = f"Unexpected {type(error).__name__} while processing this file; see the log."
        code = "internal_error"
    return {"id": error_id, "audio": str(audio_path), "error": message, "code": code}


@contextmanager
def _progress(console: Console, enabled: bool) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not enabled,
    )
    with progress:
        yield progress


def run(args: argparse.Namespace) -> int:
    """Process each file; print a line or a JSON object per file; 1 if any failed."""
    from pipeline.ingest.sidecar import read_sidecar
    from pipeline.service.process import new_id, process_file

    settings = settings_from_args(args)
    out = Console(highlight=False, soft_wrap=True)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    failed = 0
    with _progress(err, err.is_terminal) as bar:
        for path in args.files:
            task = bar.add_task(escape(path.name), total=None)

            def progress(done: float, total: float, task: Any = task) -> None:
                bar.update(task, completed=done, total=max(total, 0.001))

            try:
                meta = read_sidecar(path) if path.is_file() else None
                result = process_file(
                    path, settings, meta, progress=progress, store=not args.no_store
                )
            except Exception as exc:  # one bad file must not stop the others
                failed += 1
                if not isinstance(exc, PipelineError):
                    log.exception("unexpected error on one file (%s)", type(exc).__name__)
                obj = error_json(new_id(), path, exc)
                if args.json:
                    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
                    sys.stdout.flush()
                else:
                    err.print(f"[red]✗[/red] {escape(str(path))}: {escape(obj['error'])}")
                continue
            finally:
                bar.remove_task(task)
            if args.json:
                sys.stdout.write(json.dumps(result_json(result, path, settings),
                                            ensure_ascii=False) + "\n")
                sys.stdout.flush()
            else:
                flags = _flags(result.transcript.flags, result.note.flags, result.document.flags)
                out.print(
                    f"[green]✓[/green] {escape(str(path))}  "
                    f"{result.dictation.audio.duration_s:.1f} s  "
                    f"model {escape(result.transcript.model)}  "
                    f"flags {escape(', '.join(flags) or '-')}  "
                    f"draft {escape(str(result.draft.docx_path or result.draft.id))}"
                )
    return 1 if failed else 0
