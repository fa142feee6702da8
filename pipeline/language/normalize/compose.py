"""The transform protocol and ``Compose`` (after jiwer's ``transforms.py``)."""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.core.settings import Settings, get_settings
from pipeline.language.normalize.options import LanguageOptions
from pipeline.language.normalize.tokens import TextState, from_text, render
from pipeline.language.vocab import get_index

__all__ = ["Transform", "Compose"]


class Transform:
    """One job on the token list. Subclasses implement ``process`` and say what in a docstring."""

    def __call__(self, state: TextState) -> TextState:
        return self.process(state)

    def process(self, state: TextState) -> TextState:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_text(
        self,
        text: str,
        settings: Settings | None = None,
        *,
        document_type: str | None = None,
        options: LanguageOptions | None = None,
    ) -> str:
        """This transform alone on plain ``text``, rendered back to text (what the docstring
        examples use; the pipeline runs transforms on a shared ``TextState``)."""
        settings = settings or get_settings()
        state = TextState(toks=from_text(text), settings=settings, index=get_index(settings),
                          document_type=document_type, options=options or LanguageOptions())
        return render(self(state).toks)[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Compose(Transform):
    """Apply transforms in order; the output of one is the input of the next."""

    def __init__(self, transforms: Iterable[Transform]) -> None:
        self.transforms = list(transforms)

    def process(self, state: TextState) -> TextState:
        for t in self.transforms:
            state = t(state)
        return state

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"
