"""spaCy, imported without PyTorch.

thinc (spaCy's machine-learning library) runs ``import torch`` at import time whenever torch is
installed (``thinc/compat.py``), only to offer torch-backed layers. Our spaCy pipeline uses
none of them (a blank English pipeline, scispaCy's tokenizer and abbreviation detector and a
rule component), but once the ``[train]`` extra is installed (speech-model adaptation, issue
#15) every process that normalises text would pay for torch: measured 2026-12-02 on the 2-core
machine, ``import spacy`` took 337 MB of memory with torch against 96 MB without, and seconds
of start-up in the worker, the web workbench and every CLI command.

So spaCy is imported here with torch hidden (``sys.modules["torch"] = None`` makes
``import torch`` raise ImportError, which thinc handles as "not installed"), and the entry is
removed again at once: a later ``import torch`` (the adaptation code) works as usual, and
thinc simply keeps its "no torch" answer. If torch is already imported, nothing is hidden.
"""

from __future__ import annotations

import sys

__all__ = ["spacy"]

_hide = "torch" not in sys.modules
if _hide:
    sys.modules["torch"] = None  # type: ignore[assignment]
try:
    import spacy
finally:
    if _hide and "torch" in sys.modules and sys.modules["torch"] is None:
        del sys.modules["torch"]
