"""The docstring examples of the number and sound-alike rules run as tests (jiwer documents its
transforms the same way), without changing pytest's configuration."""

from __future__ import annotations

import doctest
import importlib
import types

import pytest

#: Modules whose examples are part of their documentation; each must have some.
MODULES = [
    "pipeline.language.spoken_numbers",
    "pipeline.language.normalize.numbers",
    "pipeline.language.normalize.soundalike",
    "pipeline.language.normalize.options",
    "pipeline.language.instructions",
]


def _run(module: types.ModuleType) -> doctest.TestResults:
    return doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                           report=False)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    """Every example in the module's docstrings gives the output it shows (failures are
    printed by doctest in the captured output)."""
    result = _run(importlib.import_module(name))
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_a_wrong_example_is_reported() -> None:
    """The runner above can fail: a module whose example is wrong is counted as failed."""
    module = types.ModuleType("wrong_example")
    module.__doc__ = ">>> 1 + 1\n3\n"
    result = _run(module)
    assert (result.attempted, result.failed) == (1, 1)
