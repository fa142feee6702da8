"""``dictation render TEXTFILE``: structure a dictation text and render its draft files.

For trying templates and for the workbench's re-render from edited text: reads the text (a
normalized dictation), the optional sidecar JSON, picks the template (``--type`` or the
sidecar's document type, else detected), and writes .docx, .txt, FHIR, HL7 and (``--pdf``) PDF
into ``--out`` (default ``<data>/drafts/<id>``).
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["register"]


def _handler(args: argparse.Namespace) -> int:
    from pipeline.core.errors import ConfigError
    from pipeline.core.records import AudioInfo, Dictation, DictationMeta, Note
    from pipeline.core.settings import get_settings
    from pipeline.documents.render import render_outputs
    from pipeline.documents.sections import structure
    from pipeline.ingest.sidecar import parse_sidecar
    from pipeline.service.process import new_id

    settings = get_settings()
    path = Path(args.textfile)
    if not path.is_file():
        raise ConfigError(f"Text file {path} does not exist; expected a dictation text file.")
    text = path.read_text(encoding="utf-8", errors="replace")
    meta = DictationMeta()
    if args.sidecar:
        side = Path(args.sidecar)
        if not side.is_file():
            raise ConfigError(f"Sidecar {side} does not exist; expected a JSON file.")
        meta = parse_sidecar(side.read_text(encoding="utf-8"), name=side.name)
    if args.type:
        meta.document_type = args.type
    document = structure(Note(text=text), meta, settings)
    draft_id = args.id or new_id()
    dictation = Dictation(
        id=f"text-{draft_id}",
        audio=AudioInfo(path=path, sha256="", size_bytes=path.stat().st_size, format="text",
                        codec="", sample_rate=0, channels=0, duration_s=0.0),
        meta=meta,
    )
    out_dir = Path(args.out) if args.out else settings.drafts_dir / draft_id
    outputs = render_outputs(
        document, dictation, draft_id, out_dir, settings,
        final=args.final, signed_by=args.signed_by,
        signed_at=datetime.now(UTC) if args.final else None,
        pdf="always" if args.pdf else None,
    )
    if args.json:
        print(json.dumps({
            "draft_id": draft_id,
            "document": document.to_dict(),
            "outputs": {k: str(v) for k, v in outputs.items()},
        }, indent=2))
        return 0
    print(f"document type: {document.document_type}")
    print(f"sections: {', '.join(s.key for s in document.sections) or '(none)'}")
    print(f"missing: {', '.join(document.missing) or '(none)'}")
    print(f"flags: {', '.join(document.flags) or '(none)'}")
    for ins in document.instructions:
        print(f"instruction: {ins.kind} {json.dumps(ins.params)}")
    for kind, p in outputs.items():
        print(f"{kind}: {p}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``render`` command."""
    p = subparsers.add_parser("render", help="render a dictation text into draft documents")
    p.add_argument("textfile", help="normalized dictation text (UTF-8)")
    p.add_argument("--type", help="document type key (default: sidecar's, else detected)")
    p.add_argument("--sidecar", help="sidecar JSON with patient data")
    p.add_argument("--out", help="output folder (default <data>/drafts/<id>)")
    p.add_argument("--id", help="draft id (default: new)")
    p.add_argument("--pdf", action="store_true", help="also make a PDF (needs LibreOffice)")
    p.add_argument("--final", action="store_true", help="render as signed")
    p.add_argument("--signed-by", default=None, help="signer's name with --final")
    p.add_argument("--json", action="store_true", help="print the structured document as JSON")
    p.set_defaults(func=_handler)
