"""The language stage imports spaCy without pulling in PyTorch (pipeline/language/spacy_import.py).

The dev install has torch (the [train] extra); thinc would import it with spaCy, costing every
worker and CLI process hundreds of MB. A fresh interpreter shows what a process pays.
"""

from __future__ import annotations

import subprocess
import sys

import torch  # noqa: F401  - the dev install must have it, or this test proves nothing


def _run(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=240, check=True)
    return proc.stdout.strip()


def test_the_language_stage_does_not_import_torch_and_torch_still_imports_after() -> None:
    out = _run(
        "import sys\n"
        "import pipeline.language.normalize.terms as t\n"
        "print('torch' in sys.modules)\n"
        "nlp = t.spacy.blank('en'); print(len(nlp('a test')))\n"
        "import torch\n"
        "print(torch.tensor([1.0]).sum().item())\n"
    )
    assert out.splitlines() == ["False", "2", "1.0"]


def test_torch_already_imported_is_left_alone() -> None:
    out = _run(
        "import sys, torch\n"
        "import pipeline.language.spacy_import as s\n"
        "print(sys.modules['torch'] is torch)\n"
    )
    assert out == "True"
