"""The ``dictation`` command's help: every sub-command is listed under the stage it belongs to."""

from __future__ import annotations

import argparse

from pipeline.cli import COMMAND_GROUPS, build_parser, main


def _registered() -> set[str]:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_every_command_belongs_to_a_stage_group() -> None:
    """A new command must be placed in ``COMMAND_GROUPS`` (else it would show under "other")."""
    grouped = {name for _, names in COMMAND_GROUPS for name in names}
    assert _registered() - grouped == set()


def test_help_lists_commands_by_stage(capsys) -> None:  # type: ignore[no-untyped-def]
    """``dictation --help`` names each stage and lists its commands beneath it, once each."""
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    out = capsys.readouterr().out
    assert "service (pipeline/service)" in out and "developer tools (pipeline/devtools)" in out
    assert out.index("service (pipeline/service)") < out.index("    run ")
    for name in _registered():
        assert sum(line.split()[0] == name for line in out.splitlines()
                   if line.startswith("    ") and line.split()) == 1, name
    assert "other" not in out.split("commands:")[1]
