"""The ``dictation`` command.

Sub-commands live in ``pipeline/commands/<name>.py``; each module has a
``register(subparsers)`` function that adds its parser and sets ``func``. ``main`` turns a
``PipelineError`` into one clear line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence

import pipeline  # noqa: F401  (offline environment first)
from pipeline import commands
from pipeline.core.errors import PipelineError

__all__ = ["main", "build_parser", "COMMAND_GROUPS"]

#: ``dictation --help`` lists the commands by the stage they belong to, in the order a
#: dictation passes through them (the same names as the packages under ``pipeline/``).
COMMAND_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("service (pipeline/service)", ("run", "worker", "status", "web")),
    ("speech (pipeline/speech)", ("transcribe", "models")),
    ("adaptation (pipeline/adaptation)", ("adapt",)),
    ("language (pipeline/language)", ("vocab",)),
    ("documents (pipeline/documents)", ("render",)),
    ("review (pipeline/review)", ("user", "audit")),
    ("secretary (pipeline/secretary)", ("schedule",)),
    ("data protection", ("keys", "backup", "restore", "retention")),
    ("developer tools (pipeline/devtools)", (
        "evaluate", "evaluate-adaptation", "flags-eval", "samples", "sections-eval", "bench",
        "bench-inbox", "bench-language", "bench-render", "bench-schedule", "bench-web",
        "bench-crypto", "bench-kill")),
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="dictation", description="Medical dictation and health-secretary system.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{commands.__name__}.{mod.name}")
        module.register(sub)
    parser.epilog = _grouped_commands(sub)
    return parser


def _grouped_commands(sub: argparse._SubParsersAction) -> str:  # type: ignore[type-arg]
    """The commands by stage, for ``--help``; the flat list argparse prints is hidden."""
    helps = {action.dest: action.help or "" for action in sub._choices_actions}
    sub.help = "one of the commands below"
    sub._choices_actions.clear()  # argparse's own flat list: replaced by the grouped one
    grouped = {name for _, names in COMMAND_GROUPS for name in names}
    groups = [(title, [n for n in names if n in helps]) for title, names in COMMAND_GROUPS]
    groups.append(("other", sorted(n for n in helps if n not in grouped)))
    width = max(len(n) for n in helps) + 2
    lines = ["commands:"]
    for title, names in groups:
        if names:
            lines.append(f"  {title}")
            lines += [f"    {n.ljust(width)}{helps[n]}" for n in names]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dictation`` console script; returns the exit status."""
    os.umask(0o077)  # files 0600, folders 0700: patient data is readable by this account only
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
