"""The transform protocol and ``Compose`` (after jiwer's ``transforms.py``)."""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.language.normalize.tokens import TextState

__all__ = ["Transform", "Compose"]


class Transform:
    """One job on the token list. Subclasses implement ``process`` and say what in a docstring."""

    def __call__(self, state: TextState) -> TextState:
        return self.process(state)

    def process(self, state: TextState) -> TextState:  # pragma: no cover - abstract
        raise NotImplementedError

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
