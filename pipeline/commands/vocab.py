"""``dictation vocab``: build the vocabulary, show it, add a physician's custom words.

    dictation vocab build                 # read the installed sources, write vocab/
    dictation vocab mine-terms CSV        # maintainers: vocab/mined/ from mtsamples.com reports
    dictation vocab info                  # manifest: version, sources, licences, counts
    dictation vocab add-term dr-smith "Monocryl" "Dermabond"
    dictation vocab terms dr-smith        # list a physician's custom words
    dictation vocab check WORD...         # is it a medical term? what would it become?
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.core.settings import Settings, get_settings

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``vocab`` sub-command and its actions."""
    p = subparsers.add_parser("vocab", help="medical vocabulary: build, info, custom words")
    sub = p.add_subparsers(dest="vocab_action", metavar="ACTION")
    b = sub.add_parser("build", help="build vocab/ from the installed offline sources")
    b.add_argument("--out", type=Path, help="vocabulary folder (default: settings.vocab_dir)")
    b.set_defaults(func=_build)
    m = sub.add_parser(
        "mine-terms",
        help="maintainers: mine specialty term lists (vocab/mined/) from a sample-report CSV",
        description="Count, per specialty, in how many sample reports each medical word and "
        "short phrase occurs (CSV with medical_specialty and transcription columns, e.g. the "
        "mtsamples.com crawl; .xz/.gz allowed) and write the top terms to vocab/mined/. Only "
        "term lists with counts are written, never report text. Run `dictation vocab build` "
        "afterwards and commit vocab/.",
    )
    m.add_argument("csv", type=Path, help="sample-report CSV (.csv, .csv.xz or .csv.gz)")
    m.add_argument("--out", type=Path, help="vocabulary folder (default: settings.vocab_dir)")
    m.add_argument("--top", type=int, default=400, help="words per specialty (default 400)")
    m.add_argument("--top-phrases", type=int, default=100,
                   help="multi-word terms per specialty (default 100)")
    m.set_defaults(func=_mine)
    i = sub.add_parser("info", help="print the vocabulary manifest")
    i.set_defaults(func=_info)
    a = sub.add_parser("add-term", help="add custom words for a physician")
    a.add_argument("physician")
    a.add_argument("terms", nargs="+")
    a.add_argument("--data-dir", type=Path, help="data directory")
    a.set_defaults(func=_add)
    t = sub.add_parser("terms", help="list a physician's custom words")
    t.add_argument("physician")
    t.add_argument("--data-dir", type=Path, help="data directory")
    t.set_defaults(func=_terms)
    c = sub.add_parser("check", help="look words up in the vocabulary")
    c.add_argument("words", nargs="+")
    c.set_defaults(func=_check)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _settings(args: argparse.Namespace) -> Settings:
    settings = get_settings()
    data_dir = getattr(args, "data_dir", None)
    if data_dir:
        settings = settings.model_copy(update={"data_dir": data_dir})
    return settings


def _build(args: argparse.Namespace) -> int:
    from pipeline.devtools import vocab_build

    out = args.out or get_settings().vocab_dir
    manifest = vocab_build.build(Path(out))
    print(f"vocabulary {manifest['version']} written to {out} in {manifest['build_s']} s")
    for k, v in manifest["counts"].items():
        print(f"  {k:18} {v:>8,}")
    total = sum(manifest["files"].values())
    print(f"  {'bytes':18} {total:>8,}")
    return 0


def _mine(args: argparse.Namespace) -> int:
    from pipeline.devtools import vocab_build
    from pipeline.language import vocab

    out = Path(args.out or get_settings().vocab_dir)
    index = vocab.load_index(out)
    mined = vocab_build.mine_terms(args.csv, index, top=args.top, top_phrases=args.top_phrases)
    sizes = vocab_build.write_mined(mined, out / "mined")
    print(f"specialty term lists written to {out / 'mined'}:")
    for name, n in sizes.items():
        print(f"  {name:18} {n:>5} terms")
    print("next: dictation vocab build (folds new words into the vocabulary), then commit vocab/")
    return 0


def _info(args: argparse.Namespace) -> int:
    path = Path(get_settings().vocab_dir) / "manifest.json"
    print(path.read_text(encoding="utf-8") if path.exists() else "no vocabulary built")
    return 0 if path.exists() else 1


def _add(args: argparse.Namespace) -> int:
    from pipeline.language import vocab

    n = vocab.add_physician_terms(_settings(args), args.physician, args.terms)
    print(f"{n} new term(s) for {args.physician}")
    return 0


def _terms(args: argparse.Namespace) -> int:
    from pipeline.language import vocab

    for t in vocab.physician_terms(_settings(args), args.physician):
        print(t)
    return 0


def _check(args: argparse.Namespace) -> int:
    from pipeline.language import vocab
    from pipeline.language.normalize.terms import best_candidate

    index = vocab.get_index(get_settings())
    rows = []
    for w in args.words:
        cand = best_candidate(index, w)
        rows.append(
            {
                "word": w,
                "medical": index.is_medical(w),
                "display": index.display(w),
                "english_zipf": index.zipf(w),
                "key": vocab.phonetic_key(w),
                "candidate": cand[0] if cand else None,
                "score": round(cand[1], 1) if cand else None,
            }
        )
    print(json.dumps(rows, indent=2))
    return 0
