"""Auto-texts ("normals") inserted by a spoken command: "insert normal exam" becomes the body
of the auto-text whose trigger phrase is "normal exam".

The language stage does not know where auto-texts are kept: the caller hands the physician's
active ones in (trigger phrase -> body, the physician's own over the practice's:
``pipeline.review.autotexts.active_autotexts``, loaded by ``pipeline.service.process``).
Dragon and PowerScribe call these "normals" or "auto-texts"; their command word is
"insert". The body goes in as one token that later transforms leave alone (it was written
by the practice, not heard), and the change is listed as a correction of kind ``autotext``
("auto-text inserted"), so the editor shows where it came from.

    >>> from pipeline.language.normalize.tokens import from_text, render
    >>> state = _State(from_text("Exam: insert normal exam. Plan follows."),
    ...                {"normal exam": "Lungs clear. Heart regular."})
    >>> text, corrections = render(InsertAutoText().process(state).toks)
    >>> text
    'Exam: Lungs clear. Heart regular. Plan follows.'
    >>> corrections[0].kind, corrections[0].original
    ('autotext', 'insert normal exam')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.language.normalize.compose import Transform
from pipeline.language.normalize.tokens import TextState, Tok, merge

__all__ = ["InsertAutoText", "COMMAND_WORDS", "spoken_key"]

#: Words that start the command ("insert normal exam", "insert the normal exam").
COMMAND_WORDS = frozenset({"insert"})
_FILLERS = frozenset({"the", "my", "our"})
_SENTENCE_END = ".?!"


def spoken_key(text: str) -> str:
    """A phrase as it is compared: lower case, hyphens as spaces, outer punctuation off.

        >>> spoken_key("Post-op  Instructions.")
        'post op instructions'
    """
    words = text.lower().replace("-", " ").split()
    return " ".join(w.strip(".,;:!?\"'()") for w in words if w.strip(".,;:!?\"'()"))


@dataclass
class _State:
    """The two fields the transform reads (the doctest's stand-in for ``TextState``)."""

    toks: list[Tok]
    autotexts: Mapping[str, str] = field(default_factory=dict)


class InsertAutoText(Transform):
    """Replace "insert <trigger>" with the body of the auto-text whose trigger it is.

    The longest trigger that the following words spell wins ("insert normal exam female"
    picks "normal exam female" over "normal exam" when both exist). Without auto-texts, or
    when no trigger follows, "insert" is an ordinary word.
    """

    def process(self, state: TextState) -> TextState:
        texts: Mapping[str, str] = getattr(state, "autotexts", None) or {}
        if not texts:
            return state
        triggers = {spoken_key(k): v for k, v in texts.items() if spoken_key(k) and v.strip()}
        longest = max((len(k.split()) for k in triggers), default=0)
        toks = state.toks
        words = [i for i, t in enumerate(toks) if t.is_word]
        out: list[Tok] = []
        consumed = -1  # token index up to which the input was used
        k = 0
        while k < len(words):
            i = words[k]
            if spoken_key(toks[i].text) not in COMMAND_WORDS:
                k += 1
                continue
            found = self._match(toks, words, k + 1, triggers, longest)
            if found is None:
                k += 1
                continue
            last_k, body = found
            j = words[last_k]
            out.extend(toks[consumed + 1 : i])
            out.extend(_body_tokens(toks[i : j + 1], body))
            consumed = j
            k = last_k + 1
        if consumed < 0:
            return state
        out.extend(toks[consumed + 1 :])
        state.toks = out
        return state

    @staticmethod
    def _match(toks: list[Tok], words: list[int], k: int, triggers: Mapping[str, str],
               longest: int) -> tuple[int, str] | None:
        """(index in ``words`` of the trigger's last word, body) for the longest trigger
        starting at word ``k`` (a filler such as "the" may come first), or None."""
        for start in (k, k + 1):
            if start != k and (k >= len(words) or spoken_key(toks[words[k]].text)
                               not in _FILLERS):
                break
            said: list[str] = []
            best: tuple[int, str] | None = None
            for m in range(start, min(start + longest, len(words))):
                piece = spoken_key(toks[words[m]].text)
                if not piece:
                    break
                said.append(piece)
                phrase = " ".join(said)
                if len(phrase.split()) > longest:
                    break
                if phrase in triggers:
                    best = (m, triggers[phrase])
            if best is not None:
                return best
        return None


def _body_tokens(span: list[Tok], body: str) -> list[Tok]:
    """The body as one protected token (a final sentence end as its own token, so the next
    dictated word starts a sentence)."""
    text = body.strip()
    end: str | None = None
    if len(text) > 1 and text[-1] in _SENTENCE_END:
        text, end = text[:-1], text[-1]
    kw: dict[str, Any] = {"kind": "autotext", "protected": True, "keep_case": True}
    tok = merge(span, text, "autotext", **kw)
    if end is None:
        return [tok]
    return [tok, Tok(end, tok.end_s, tok.end_s, kind="punct", glue_left=True)]
