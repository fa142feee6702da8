"""Spoken dictation commands: punctuation, line breaks, headings, caps, corrections.

A command word is applied only where the words around it say it is a command: "period" after
"the", "a" or before "of" is the ordinary noun ("the period of time"), "colon" after "sigmoid"
or before "was" is the organ, "comma" before "shaped" is a shape.
"""

from __future__ import annotations

from pipeline.language.normalize.compose import Transform
from pipeline.language.normalize.tokens import (
    BREAK,
    PARAGRAPH,
    TextState,
    Tok,
    is_sentence_end,
    merge,
)
from pipeline.language.spoken_numbers import ONES, is_number_word
from pipeline.language.vocab import phonetic_key

__all__ = [
    "SpokenCommands",
    "NumberedLists",
    "DropAutoPunctuation",
    "PUNCTUATION_COMMANDS",
    "is_command_context",
]

#: spoken words -> (text, glue_left, glue_right, kind)
PUNCTUATION_COMMANDS: dict[tuple[str, ...], tuple[str, bool, bool, str]] = {
    ("period",): (".", True, False, "punct"),
    ("full", "stop"): (".", True, False, "punct"),
    ("comma",): (",", True, False, "punct"),
    ("colon",): (":", True, False, "punct"),
    ("semicolon",): (";", True, False, "punct"),
    ("semi", "colon"): (";", True, False, "punct"),
    ("question", "mark"): ("?", True, False, "punct"),
    ("exclamation", "point"): ("!", True, False, "punct"),
    ("exclamation", "mark"): ("!", True, False, "punct"),
    ("new", "paragraph"): (PARAGRAPH, False, False, "break"),
    ("next", "paragraph"): (PARAGRAPH, False, False, "break"),
    ("new", "line"): (BREAK, False, False, "break"),
    ("next", "line"): (BREAK, False, False, "break"),
    ("open", "paren"): ("(", False, True, "punct"),
    ("open", "parenthesis"): ("(", False, True, "punct"),
    ("open", "parentheses"): ("(", False, True, "punct"),
    ("left", "paren"): ("(", False, True, "punct"),
    ("close", "paren"): (")", True, False, "punct"),
    ("close", "parenthesis"): (")", True, False, "punct"),
    ("close", "parentheses"): (")", True, False, "punct"),
    ("right", "paren"): (")", True, False, "punct"),
    ("end", "paren"): (")", True, False, "punct"),
    ("open", "quote"): ('"', False, True, "punct"),
    ("begin", "quote"): ('"', False, True, "punct"),
    ("quote",): ('"', False, True, "punct"),
    ("unquote",): ('"', True, False, "punct"),
    ("end", "quote"): ('"', True, False, "punct"),
    ("close", "quote"): ('"', True, False, "punct"),
    ("hyphen",): ("-", True, True, "punct"),
    ("dash",): ("-", False, False, "punct"),
    ("slash",): ("/", True, True, "punct"),
}
_MAX_CMD = 2
#: First words of every command (a fast path skips all other words).
_FIRST_WORDS = {w[0] for w in PUNCTUATION_COMMANDS} | {
    "all", "caps", "end", "scratch", "delete", "strike", "correction",
}

_DETERMINERS = {
    "the", "a", "an", "this", "that", "each", "every", "any", "some", "no", "same",
    "his", "her", "their", "its", "our", "my", "your", "which", "what", "whole", "entire",
}
#: words before "period" that make it the noun
_PERIOD_NOUN_BEFORE = _DETERMINERS | {
    "menstrual", "refractory", "incubation", "postoperative", "perioperative", "postpartum",
    "recovery", "grace", "waiting", "trial", "washout", "latent", "study", "observation",
    "neonatal", "prodromal", "symptom-free", "symptom", "short", "long", "brief", "extended",
    "prolonged", "initial", "last", "first", "second", "time", "two-week", "follow-up",
}
_NOUN_AFTER = {"of", "during", "when", "where", "between", "since", "was", "is", "were", "has"}
#: words before "colon" that make it the organ
_COLON_ORGAN_BEFORE = _DETERMINERS | {
    "sigmoid", "descending", "ascending", "transverse", "right", "left", "distal", "proximal",
    "redundant", "spastic", "irritable", "of", "entire", "whole", "the", "mobilized", "and",
    "rectosigmoid", "remaining", "residual", "perforated",
}
_COLON_ORGAN_AFTER = {
    "was", "is", "were", "are", "cancer", "carcinoma", "polyp", "polyps", "resection", "wall",
    "mucosa", "lumen", "which", "that", "appeared", "showed", "and", "with", "to", "mass",
    "distension", "distention", "dilation", "perforation", "obstruction", "biopsy", "biopsies",
    "injury", "tumor", "tumour", "lesion", "ischemia", "volvulus",
}
_COMMA_NOUN_AFTER = {"shaped", "shape", "sign", "like"}
_QUOTE_NOUN_BEFORE = {"a", "the", "insurance", "price", "cost"}
_CORRECTION_NOUN_BEFORE = _DETERMINERS | {"for", "of", "without", "with", "surgical", "after"}
_CAPS_ON = (("all", "caps"), ("caps", "on"))
_CAPS_OFF = (("end", "caps"), ("caps", "off"), ("end", "all", "caps"))
_SCRATCH = (("scratch", "that"), ("delete", "that"), ("strike", "that"))


def _sounds_like_colon(words: tuple[str, ...]) -> bool:
    """Whisper's usual mishearings of "colon" right after a heading ("coal and", "Colin")."""
    key = phonetic_key(words[0])
    if key in ("KLN", "KLNS"):
        return True
    return key == "KL" and len(words) > 1 and words[1] in ("and", "in", "on")


def _norm(tok: Tok) -> str:
    return tok.text.lower().strip(".,;:!?\"'")


def is_command_context(words: tuple[str, ...], before: str | None, after: str | None) -> bool:
    """Whether spoken ``words`` between ``before`` and ``after`` are meant as a command.

    ``before``/``after`` are the neighbouring spoken words (lower case) or None at an edge.
    """
    if words == ("period",):
        return not (before in _PERIOD_NOUN_BEFORE or after in _NOUN_AFTER)
    if words == ("colon",):
        return not (before in _COLON_ORGAN_BEFORE or after in _COLON_ORGAN_AFTER)
    if words == ("comma",):
        return not (before in _DETERMINERS or after in _COMMA_NOUN_AFTER)
    if words == ("quote",):
        return not (before in _QUOTE_NOUN_BEFORE or after in _NOUN_AFTER)
    if words in (("dash",), ("hyphen",), ("slash",)):
        return before not in _DETERMINERS and before is not None
    if words in (("new", "line"), ("next", "line")):
        return after not in {"of", "treatment", "therapy", "agent", "drug"}
    if words == ("semi", "colon"):
        return True
    return True


class SpokenCommands(Transform):
    """Apply spoken punctuation, breaks, section headings, all caps and corrections.

    "preoperative diagnosis colon" starts a heading line (``PREOPERATIVE DIAGNOSIS:``);
    "scratch that" deletes back to the previous punctuation; "correction X" replaces the
    same number of words just said with X (numbers and laterality go to review).
    """

    def process(self, state: TextState) -> TextState:
        toks = state.toks
        words_idx = [i for i, t in enumerate(toks) if t.is_word]
        low = {i: _norm(toks[i]) for i in words_idx}
        # position in words_idx of each token index
        wpos = {ti: k for k, ti in enumerate(words_idx)}
        sections = set(state.index.sections) | set(state.index.inline_headings)
        # "discharge medication" for "discharge medications", "finding" for "findings"
        sections |= {h[:-1] for h in sections if h.endswith("s") and not h.endswith("ss")}
        inline = set(state.index.inline_headings)
        out: list[Tok] = []
        caps = False
        i = 0
        n = len(toks)

        def word_at(k: int) -> str | None:
            return low[words_idx[k]] if 0 <= k < len(words_idx) else None

        def seq(k: int, m: int) -> tuple[str, ...]:
            return tuple(w for w in (word_at(k + j) for j in range(m)) if w is not None)

        def tokens_span(k: int, m: int) -> tuple[list[Tok], int]:
            """Tokens from word k to word k+m-1 (auto punctuation between included), next i."""
            a = words_idx[k]
            b = words_idx[min(k + m - 1, len(words_idx) - 1)]
            return toks[a : b + 1], b + 1

        while i < n:
            tok = toks[i]
            if not tok.is_word:
                out.append(tok)
                i += 1
                continue
            k = wpos[i]
            before = word_at(k - 1)

            # --- section heading: "<heading> colon" ------------------------------------
            at_start = not out or out[-1].kind in ("break", "heading") or is_sentence_end(out[-1])
            heading = (
                self._heading_at(k, seq, sections, toks, words_idx) if at_start else None
            )
            if heading is not None:
                m, colon_words = heading
                span, end = tokens_span(k, m + colon_words)
                if colon_words == 0:  # Whisper wrote the colon itself
                    end = words_idx[k + m - 1] + 2
                    span = toks[words_idx[k] : end]
                said = " ".join(word_at(k + j) or "" for j in range(m))
                if said in inline:
                    h = merge(span, said.capitalize() + ":", "heading", keep_case=True,
                              protected=True)
                    h.kind = "heading"
                    out.append(h)
                    i = end
                    while i < n and toks[i].kind == "auto":
                        i += 1
                    continue
                text = said.upper() + ":"
                if out:
                    while out and out[-1].kind == "auto":
                        out.pop()
                    if out and out[-1].kind == "break":
                        out[-1] = Tok(PARAGRAPH, kind="break", orig=out[-1].orig,
                                      change=out[-1].change)
                    else:
                        out.append(Tok(PARAGRAPH, kind="break"))
                h = merge(span, text, "heading", keep_case=True, protected=True)
                h.kind = "heading"
                out.append(h)
                i = end
                while i < n and toks[i].kind == "auto":  # "colon," -> no stray comma
                    i += 1
                continue

            if low[i] not in _FIRST_WORDS:
                out.append(self._cased(tok) if caps else tok)
                i += 1
                continue
            # --- all caps on / off ----------------------------------------------------
            for words in _CAPS_ON + _CAPS_OFF:
                if seq(k, len(words)) == words:
                    caps = words in _CAPS_ON
                    span, i = tokens_span(k, len(words))
                    out.append(merge(span, "", "command", protected=True))
                    break
            else:
                # --- scratch that ---------------------------------------------------------
                scratch = next((w for w in _SCRATCH if seq(k, len(w)) == w), None)
                if scratch is not None:
                    span, i = tokens_span(k, len(scratch))
                    removed = self._scratch(out)
                    out.append(merge(removed + span, "", "command", protected=True))
                    continue
                # --- correction X -----------------------------------------------------------
                if low[i] == "correction" and before not in _CORRECTION_NOUN_BEFORE:
                    done = self._correction(state, out, toks, words_idx, k, i)
                    if done is not None:
                        i = done
                        continue
                # --- punctuation and breaks -------------------------------------------------
                matched = False
                for m in range(_MAX_CMD, 0, -1):
                    cmd = seq(k, m)
                    if len(cmd) < m or cmd not in PUNCTUATION_COMMANDS:
                        continue
                    after = word_at(k + m)
                    if not is_command_context(cmd, before, after):
                        continue
                    text, gl, gr, kind = PUNCTUATION_COMMANDS[cmd]
                    span, end = tokens_span(k, m)
                    if kind == "punct" and text in ".,;:?!":
                        # Whisper's own punctuation right before a dictated one is redundant
                        while out and out[-1].kind == "auto":
                            out.pop()
                    if kind == "break":
                        while out and out[-1].kind == "auto" and out[-1].text not in ".?!":
                            out.pop()
                    t = merge(span, text, "command", glue_left=gl, glue_right=gr,
                              protected=True)
                    t.kind = kind
                    out.append(t)
                    i = end
                    # drop Whisper punctuation right after the command word
                    while i < n and toks[i].kind == "auto" and toks[i].text in ".,;:":
                        i += 1
                    matched = True
                    break
                if matched:
                    continue
                out.append(self._cased(tok) if caps else tok)
                i += 1
        state.toks = out
        return state

    @staticmethod
    def _cased(tok: Tok) -> Tok:
        """The token in upper case (inside "all caps ... end caps")."""
        up = Tok(**{**tok.__dict__})
        if up.text.upper() != up.text:
            up.orig = tok.text if tok.orig is None else tok.orig
            up.change = up.change or "casing"
        up.text = up.text.upper()
        up.keep_case = True
        return up

    @staticmethod
    def _heading_at(k, seq, sections, toks, words_idx) -> tuple[int, int] | None:  # type: ignore[no-untyped-def]
        """(heading words, words of the spoken colon: 0 when Whisper wrote ":" itself)."""
        for m in (5, 4, 3, 2, 1):
            words = seq(k, m)
            if len(words) < m or " ".join(words) not in sections:
                continue
            nxt = seq(k + m, 2)
            if nxt[:1] == ("colon",):
                return m, 1
            if nxt and _sounds_like_colon(nxt):
                # "diagnosis coal and" / "anesthesia Colin's": a misheard colon
                return m, 1 if phonetic_key(nxt[0]) in ("KLN", "KLNS") else 2
            last_tok = words_idx[k + m - 1]
            if last_tok + 1 < len(toks) and toks[last_tok + 1].text == ":" and (
                toks[last_tok + 1].kind == "auto"
            ):
                return m, 0
        return None

    @staticmethod
    def _scratch(out: list[Tok]) -> list[Tok]:
        """Remove the last sentence or phrase from ``out``; return what was removed."""
        removed: list[Tok] = []
        # a trailing punctuation mark belongs to the sentence being scratched
        while out and out[-1].kind in ("auto", "punct") and out[-1].text in ".,;:?!":
            removed.insert(0, out.pop())
        while out:
            t = out[-1]
            if t.kind in ("break", "heading") or (
                t.kind in ("auto", "punct") and t.text in ".,;:?!"
            ):
                break
            removed.insert(0, out.pop())
        return removed

    @staticmethod
    def _correction(  # type: ignore[no-untyped-def]
        state: TextState, out: list[Tok], toks, words_idx, k: int, i: int
    ) -> int | None:
        """Replace the last words before "correction" with the words after it (reach:
        ``state.options.commands``)."""
        opts = state.options.commands
        new_words: list[Tok] = []
        j = k + 1
        while j < len(words_idx) and len(new_words) < opts.correction_max_words:
            t = toks[words_idx[j]]
            w = _norm(t)
            if any(w == c[0] for c in PUNCTUATION_COMMANDS if len(c) == 1) or w in (
                "new", "next", "scratch", "correction",
            ):
                break
            new_words.append(t)
            # stop at Whisper punctuation after this word
            after = words_idx[j] + 1
            if after < len(toks) and toks[after].kind == "auto":
                break
            j += 1
        if not new_words:
            return None
        prev_words = [t for t in out[-opts.correction_lookback:] if t.is_word]
        if not prev_words:
            return None
        last_old = _norm(prev_words[-1])
        # "left knee correction right knee": the new words end where they repeat the last
        # word said before "correction"; otherwise one word is replaced by one word.
        cut = next((j for j, t in enumerate(new_words) if _norm(t) == last_old), None)
        new_words = new_words[: cut + 1] if cut is not None else new_words[:1]
        m = len(new_words)
        old: list[Tok] = []
        if cut is None and _is_number_word(new_words[0]) and not _is_number_word(prev_words[-1]):
            # "twenty milligrams correction thirty": the number is replaced, not the unit
            back = [t for t in out[-opts.number_lookback:] if t.is_word]
            target = next((t for t in reversed(back) if _is_number_word(t)), None)
            if target is not None:
                pos = len(out) - 1 - out[::-1].index(target)
                old = [out.pop(pos)]
                gone = merge([*old, toks[i]], "", "command", protected=True)
                out[pos:pos] = [gone, *new_words]
                state.review("correction_command", new_words[0],
                             "Dictated correction changed a number.")
                return words_idx[k + m] + 1
        while out and len([t for t in old if t.is_word]) < m:
            t = out[-1]
            if not t.is_word and t.kind != "auto":
                break
            old.insert(0, out.pop())
        if not [t for t in old if t.is_word]:
            out.extend(old)
            return None
        while old and not old[0].is_word:
            out.append(old.pop(0))
        gone = merge([*old, toks[i]], "", "command", protected=True)
        out.append(gone)
        out.extend(new_words)
        t = new_words[0]
        risky = {"left", "right", "bilateral"}
        if any(any(ch.isdigit() for ch in w.text) or _norm(w) in risky or _is_number_word(w)
               for w in old + new_words):
            state.review("correction_command", t, "Dictated correction changed a number or side.")
        return words_idx[k + m] + 1


#: Words that make a dictated "correction" a change of number ("... correction thirty").
_NUMBER_EXTRAS = {"point", "half"}


def _is_number_word(t: Tok) -> bool:
    w = _norm(t)
    return w in _NUMBER_EXTRAS or is_number_word(w)


class NumberedLists(Transform):
    """"one period ... two period" at the start of a line or sentence -> "1." list items.

    Items must count up from one, so a sentence such as "Two." alone is left as it is.
    """

    def process(self, state: TextState) -> TextState:
        toks = state.toks
        out: list[Tok] = []
        expected = 1
        i = 0
        while i < len(toks):
            t = toks[i]
            nxt = toks[i + 1] if i + 1 < len(toks) else None
            prev = out[-1] if out else None
            value = _LIST_NUMBERS.get(_norm(t)) if t.is_word else None
            if (
                value is not None
                and value in (1, expected)
                and nxt is not None
                and nxt.kind == "punct"
                and nxt.text == "."
                and (
                    prev is None
                    or prev.kind in ("break", "heading")
                    or is_sentence_end(prev)
                    or (prev.kind == "punct" and prev.text == ":")
                )
            ):
                if prev is not None and not (prev.kind == "break" and prev.text == BREAK):
                    if prev.kind == "break":
                        out[-1] = Tok(BREAK, kind="break", orig=prev.orig, change=prev.change)
                    else:
                        out.append(Tok(BREAK, kind="break"))
                item = merge([t, nxt], f"{value}.", "number", keep_case=True, protected=True)
                item.kind = "heading"  # the next word starts a sentence
                out.append(item)
                expected = value + 1
                i += 2
                continue
            if t.kind == "heading" and t.text.isupper():
                expected = 1
            out.append(t)
            i += 1
        state.toks = out
        return state


#: List item numbers: one to ten, said or written.
_LIST_NUMBERS = {w: v for w, v in ONES.items() if 1 <= v <= 10} | {
    str(v): v for v in range(1, 11)
}


class DropAutoPunctuation(Transform):
    """Remove Whisper's own punctuation where the physician dictates that kind himself.

    If any sentence end was dictated ("period", "question mark"), Whisper's "." "?" "!" are
    dropped; the same for commas, colons and semicolons separately. The word after a dropped
    sentence end is marked so that casing can undo Whisper's capital.
    """

    def process(self, state: TextState) -> TextState:
        dictated = {t.text for t in state.toks if t.kind == "punct"}
        drop: set[str] = set()
        if dictated & {".", "?", "!"}:
            drop |= {".", "?", "!"}
        for p in (",", ":", ";"):
            if p in dictated:
                drop.add(p)
        if not drop:
            return state
        out: list[Tok] = []
        pending_stop = False
        toks = state.toks
        for k, t in enumerate(toks):
            if t.kind == "auto" and t.text in drop:
                if t.text in ".?!" and self._ends_paragraph(toks, k):
                    out.append(t)  # a sentence the physician forgot to close
                    continue
                if t.text in ".?!":
                    pending_stop = True
                continue
            if t.is_word:
                if pending_stop and not (out and is_sentence_end(out[-1])):
                    t.after_auto_stop = True
                pending_stop = False
            elif t.kind in ("punct", "break", "heading"):
                pending_stop = False
            out.append(t)
        state.toks = out
        return state

    @staticmethod
    def _ends_paragraph(toks: list[Tok], k: int) -> bool:
        """True if only punctuation follows before a break, a heading or the end."""
        for t in toks[k + 1 :]:
            if t.kind in ("break", "heading"):
                return True
            if t.is_word or t.kind == "punct":
                return False
        return True
