"""The spoken-number vocabulary: one table of number words and the parsing built on it.

Every part of the pipeline that reads a number said in words uses these tables: the number
normaliser (``pipeline.language.normalize.numbers``: doses, vitals, dates), spoken commands
(numbered lists, "correction thirty"), the secretary instructions ("follow up in seventeen
days", ``pipeline.language.instructions``) and the task list (``pipeline.secretary.tasks``).
Before issue #14 four copies disagreed ("seventeen days" was no interval, "sixteen days" was).

It lives in the language stage, the lowest layer that reads spoken words: the core imports
nothing above it, and every user of the tables sits in this stage or above it.

>>> parse_number("seventeen")
17
>>> parse_number("twenty-one")
21
>>> parse_number("one hundred and five")
105
>>> parse_number("seventeen days") is None
True
>>> parse_count("two and a half")
2.5
>>> parse_count("a couple of")
2
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

__all__ = [
    "ONES",
    "TENS",
    "SCALES",
    "ORDINALS",
    "DIGIT_WORDS",
    "VAGUE_COUNTS",
    "NUMBER_WORDS",
    "parse_cardinal",
    "parse_number",
    "parse_count",
    "is_number_word",
    "words_pattern",
    "count_pattern",
]

#: Zero to nineteen.
ONES: dict[str, int] = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19,
}
#: Twenty to ninety.
TENS: dict[str, int] = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90,
}
#: Multipliers a cardinal may use (dictated numbers stop at thousands: "2024", "1000 mg").
SCALES: dict[str, int] = {"hundred": 100, "thousand": 1000}
#: Ordinals as dates use them ("March third", "the twentieth", "thirtieth").
ORDINALS: dict[str, int] = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
    "fourteenth": 14, "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18,
    "nineteenth": 19, "twentieth": 20, "thirtieth": 30,
}
#: Words for one digit when digits are read out one by one ("four oh seven" -> "407").
DIGIT_WORDS: dict[str, str] = {
    "zero": "0", "oh": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9",
}
#: Counts said without a number word ("in a week", "in a couple of weeks", "in a few days"):
#: the value an office books for them.
VAGUE_COUNTS: dict[str, int] = {
    "a": 1, "an": 1, "a couple of": 2, "a couple": 2, "couple of": 2, "a few": 3, "few": 3,
    "several": 3,
}
#: Every word a cardinal is made of.
NUMBER_WORDS: frozenset[str] = frozenset(ONES) | frozenset(TENS) | frozenset(SCALES)

_HALF = re.compile(r"^(?P<n>.+?)\s+and\s+a\s+half$")


def _compound(word: str) -> int | None:
    """ "twenty-one" -> 21 (a tens word and a unit joined by a hyphen), else None."""
    tens, sep, unit = word.partition("-")
    if sep and tens in TENS and unit in ONES and 0 < ONES[unit] < 10:
        return TENS[tens] + ONES[unit]
    return None


def is_number_word(word: str) -> bool:
    """Whether ``word`` (lower case) is part of a spoken cardinal.

    >>> [is_number_word(w) for w in ("seventeen", "twenty-one", "hundred", "seventh", "a")]
    [True, True, True, False, False]
    """
    return word in NUMBER_WORDS or _compound(word) is not None


def parse_cardinal(
    words: Sequence[str], i: int = 0, colloquial: bool = False
) -> tuple[int, int] | None:
    """Parse spoken cardinal number words at ``words[i]``: (value, words consumed) or None.

    Words are lower case, one per item. With ``colloquial``, a digit word followed by a
    two-digit number is read the way vitals and doses are said ("one forty two" -> 142).

    >>> parse_cardinal("one hundred twenty five milligrams".split())
    (125, 4)
    >>> parse_cardinal("two thousand twenty four".split())
    (2024, 4)
    >>> parse_cardinal("seventeen days".split())
    (17, 1)
    >>> parse_cardinal(["twenty-one"])
    (21, 1)
    >>> parse_cardinal("one forty two".split())
    (1, 1)
    >>> parse_cardinal("one forty two".split(), colloquial=True)
    (142, 3)
    >>> parse_cardinal("the patient".split()) is None
    True
    """
    n = len(words)
    total = 0
    current = 0
    j = i
    last: str | None = None  # ones, teens, tens, hundred, thousand
    starts = (None, "hundred", "thousand")
    while j < n:
        w = words[j]
        if w in ONES:
            v = ONES[w]
            if v >= 10 and last not in starts:
                break
            if v < 10 and last not in (*starts, "tens"):
                break
            if v == 0 and last is not None:
                break
            current += v
            last = "teens" if v >= 10 else "ones"
        elif w in TENS:
            if last not in starts:
                break
            current += TENS[w]
            last = "tens"
        elif (joined := _compound(w)) is not None:
            if last not in starts:
                break
            current += joined
            last = "ones"
        elif w == "hundred" and last in ("ones", "teens") and current < 100:
            current *= 100
            last = "hundred"
        elif w == "thousand" and last is not None and last != "thousand" and total == 0:
            total = current * 1000
            current = 0
            last = "thousand"
        elif (
            w == "and"
            and last == "hundred"
            and j + 1 < n
            and (words[j + 1] in ONES or words[j + 1] in TENS)
        ):
            j += 1
            continue
        else:
            break
        j += 1
    if last is None:
        return None
    value = total + current
    consumed = j - i
    if (
        colloquial
        and consumed == 1
        and 1 <= value <= 9
        and j < n
        and (words[j] in TENS or (words[j] in ONES and ONES[words[j]] >= 10))
    ):
        rest = parse_cardinal(words, j)
        if rest and 10 <= rest[0] <= 99:
            return value * 100 + rest[0], consumed + rest[1]
    return value, consumed


def _words(text: str | Sequence[str]) -> list[str]:
    if isinstance(text, str):
        return text.lower().split()
    return [w.lower() for w in text]


def parse_number(text: str | Sequence[str]) -> int | None:
    """The value of ``text`` when all of it is one cardinal number (digits or words), else None.

    >>> parse_number("17"), parse_number("Seventeen"), parse_number("twenty one")
    (17, 17, 21)
    >>> parse_number(["two", "hundred"])
    200
    >>> parse_number("two weeks") is None, parse_number("") is None
    (True, True)
    """
    words = _words(text)
    if len(words) == 1 and words[0].isdigit():
        return int(words[0])
    parsed = parse_cardinal(words) if words else None
    if parsed is None or parsed[1] != len(words):
        return None
    return parsed[0]


def parse_count(text: str) -> int | float | None:
    """How many, as said before a unit: a number, a vague count, "... and a half".

    >>> parse_count("seventeen"), parse_count("a"), parse_count("a few"), parse_count("6")
    (17, 1, 3, 6)
    >>> parse_count("one and a half")
    1.5
    >>> parse_count("about") is None
    True
    """
    said = " ".join(_words(text))
    if said in VAGUE_COUNTS:
        return VAGUE_COUNTS[said]
    half = _HALF.match(said)
    if half:
        whole = parse_number(half.group("n"))
        return None if whole is None else whole + 0.5
    return parse_number(said)


@lru_cache(maxsize=8)
def words_pattern(max_value: int = 99) -> str:
    """A regular-expression fragment (no groups) for one cardinal from 1 to ``max_value``
    (at most 99) in words: "seven", "seventeen", "twenty one", "twenty-one".

    >>> re.fullmatch(words_pattern(), "twenty-one") is not None
    True
    >>> re.fullmatch(words_pattern(20), "twenty one") is None
    True
    """
    small = sorted((w for w, v in ONES.items() if 1 <= v <= min(max_value, 19)),
                   key=len, reverse=True)
    units = sorted((w for w, v in ONES.items() if 1 <= v <= 9), key=len, reverse=True)
    tens = sorted((w for w, v in TENS.items() if v <= max_value), key=len, reverse=True)
    alts = []
    if tens:
        unit_part = "|".join(units)
        alts.append(rf"(?:{'|'.join(tens)})(?:[\s-]+(?:{unit_part}))?" if max_value >= 21
                    else f"(?:{'|'.join(tens)})")
    alts.append(f"(?:{'|'.join(small)})")
    return rf"(?:{'|'.join(alts)})\b"


@lru_cache(maxsize=8)
def count_pattern(*, vague: bool = True, half: bool = True, max_value: int = 99) -> str:
    """A regular-expression fragment (no groups) for a count before a unit: digits (up to
    three), number words (``words_pattern``), optionally "... and a half" and the vague
    counts ("a", "a couple of", "several"). Compile it with ``re.I``; ``parse_count`` reads
    what it matched.

    >>> pat = re.compile(rf"in (?P<n>{count_pattern()}) (?P<unit>days?|weeks?)", re.I)
    >>> [pat.search(s).group("n") for s in ("in seventeen days", "in Twenty-One days",
    ...                                     "in two and a half weeks", "in a couple of weeks")]
    ['seventeen', 'Twenty-One', 'two and a half', 'a couple of']
    """
    number = rf"(?:\d{{1,3}}|{words_pattern(max_value)})"
    if half:
        number = rf"{number}(?:\s+and\s+a\s+half)?"
    if not vague:
        return rf"(?:{number})"
    vague_alts = sorted(VAGUE_COUNTS, key=len, reverse=True)
    said = "|".join(re.escape(v).replace(r"\ ", r"\s+") for v in vague_alts)
    return rf"(?:{number}|(?:{said})\b)"
