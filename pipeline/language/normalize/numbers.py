"""Inverse text normalisation in medical style: numbers, doses, vitals, sizes, dates, times.

"twenty five milligrams" -> "25 mg", "one forty two over eighty eight" -> "142/88",
"hemoglobin eleven point two" -> "11.2", "four oh vicryl" -> "4-0 vicryl", "L four L five" ->
"L4-L5", "January fifth twenty twenty four" -> "January 5, 2024", "ten thirty a m" ->
"10:30 a.m.". Safety rules of the Joint Commission list: never a naked decimal point (".5 mg"
becomes "0.5 mg"), never a trailing zero after a dose ("5.0 mg" becomes "5 mg", flagged).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from pipeline.language.normalize.compose import Transform
from pipeline.language.normalize.options import NumberOptions
from pipeline.language.normalize.tokens import TextState, Tok, merge
from pipeline.language.spoken_numbers import DIGIT_WORDS, ONES, ORDINALS, TENS, parse_cardinal

__all__ = [
    "SpokenNumbers",
    "LetterSequences",
    "ZeroSafety",
    "parse_cardinal",
    "format_decimal",
    "ONES",
    "TENS",
]

log = logging.getLogger(__name__)

_DEFAULTS = NumberOptions()
_ORD_UNITS = {k: v for k, v in ORDINALS.items() if v < 10}
MONTHS = [
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december",
]
_DIGIT = re.compile(r"^\d+(?:\.\d+)?$")
_DIGIT_COMMA = re.compile(r"^\d{1,3}(?:,\d{3})+$")
_NAKED_DECIMAL = re.compile(r"^\.\d+$")
_SUTURE_DIGITS = re.compile(r"^(\d)[-.](0)$")
_ORDINAL_DIGITS = re.compile(r"^(\d{1,2})(?:st|nd|rd|th)$")
_GLUED_UNITS = {"mm": "mm", "cm": "cm", "mg": "mg", "mcg": "mcg", "ml": "mL", "kg": "kg",
                "g": "g", "meq": "mEq", "mmhg": "mmHg"}
_GLUED_UNIT = re.compile(r"^(\d*\.?\d+)(mm|cm|mg|mcg|ml|mL|kg|g|mEq|meq|mmHg|mmhg)$")
_HYPHEN_SIZE = re.compile(
    rf"^({'|'.join(w for w, v in ONES.items() if 1 <= v <= 10)}|\d{{1,2}})[-.](?:oh|o|zero|0)$"
)
_LETTER_NUM = re.compile(r"^([CTLS])(\d{1,2})$")
#: Words after which a small number is a measure, not a word ("day 2", "grade 3").
_NUMBER_KEYWORDS = {
    "day", "days", "grade", "stage", "level", "type", "number", "size", "room", "bed", "step",
    "page", "class", "zone", "x", "times", "gravida", "para", "score", "of",
}
_TIME_UNITS = {
    "second", "seconds", "minute", "minutes", "hour", "hours", "day", "days", "week", "weeks",
    "month", "months", "year", "years", "time", "times", "tablet", "tablets", "capsule",
    "capsules", "puff", "puffs", "drop", "drops", "refill", "refills", "pack", "packs",
    "cycle", "cycles", "dose", "doses", "stitch", "stitches", "ports", "port", "incisions",
    "cm", "mm",
}
_VITAL_WORDS = {
    "pressure", "bp", "pulse", "rate", "heart", "hr", "weight", "glucose", "sugar", "sugars",
    "saturation", "sats", "platelets", "platelet", "temperature", "temp", "systolic",
}
_BP_WORDS = {"pressure", "bp", "pressures", "systolic"}
_SUTURE_MATERIALS = {
    "vicryl", "monocryl", "prolene", "nylon", "silk", "chromic", "pds", "ethilon", "ethibond",
    "maxon", "biosyn", "polysorb", "dexon", "suture", "sutures", "stitch", "stitches",
    "plain", "gut", "mersilene", "tevdek", "ticron", "novafil", "caprosyn", "v-loc", "stratafix",
}
_PER = {
    "kilogram": "/kg", "kilo": "/kg", "kg": "/kg", "hour": "/h", "hr": "/h", "minute": "/min",
    "min": "/min", "day": "/day", "dose": "/dose", "liter": "/L", "deciliter": "/dL",
    "milliliter": "/mL", "meter": "/m2",
}
_SINGLE_DIGITS = DIGIT_WORDS
_DOSE_UNITS = {"mg", "mcg", "g", "mL", "L", "units", "international units", "mEq", "mmol"}


def _w(tok: Tok) -> str:
    return tok.text.lower().strip(",;:!?\"'")


def format_decimal(int_part: str, frac: str) -> str:
    """"0.5" style: always a leading zero, the fraction as spoken (Joint Commission "Do Not
    Use": never a naked decimal point).

    >>> format_decimal("", "5"), format_decimal("11", "25"), format_decimal("3", "")
    ('0.5', '11.25', '3')
    """
    return f"{int(int_part or 0)}.{frac}" if frac else str(int(int_part or 0))


@dataclass
class _Num:
    text: str  # as written
    value: float
    end: int  # index after the last token used
    spoken: bool  # parsed from words (not Whisper digits)
    decimal: bool = False


class SpokenNumbers(Transform):
    """Spoken numbers to digits with medical context (doses, vitals, sizes, dates, times).

    Small numbers stay words in ordinary speech ("one of the") and, with
    ``numbers_style="words_under_ten"``, before time words ("two weeks"); with units, decimals,
    vitals, sizes and dates they are always digits (AHDI Book of Style). Ranges and windows
    come from ``state.options.numbers`` (``NumberOptions``).

    >>> SpokenNumbers().on_text("twenty five milligrams")
    '25 mg'
    >>> SpokenNumbers().on_text("blood pressure one forty two over eighty eight")
    'blood pressure 142/88'
    >>> SpokenNumbers().on_text("hemoglobin eleven point two")
    'hemoglobin 11.2'
    >>> SpokenNumbers().on_text("closed with four oh vicryl")
    'closed with 4-0 vicryl'
    >>> SpokenNumbers().on_text("L four L five disc")
    'L4-L5 disc'
    >>> SpokenNumbers().on_text("seen on January fifth twenty twenty four")
    'seen on January 5, 2024'
    >>> SpokenNumbers().on_text("at ten thirty a m")
    'at 10:30 a.m.'
    >>> SpokenNumbers().on_text("a sixty eight year old man")
    'a 68-year-old man'
    >>> SpokenNumbers().on_text("follow up in seventeen days")
    'follow up in 17 days'
    >>> SpokenNumbers().on_text("three of the nurses")  # a small count in prose stays a word
    'three of the nurses'
    """

    def process(self, state: TextState) -> TextState:
        toks = state.toks
        opts = state.options.numbers
        sutures = range(1, opts.suture_size_max + 1)
        units = state.index.units
        unit_keys = sorted(units, key=lambda u: -len(u.split()))
        words_style = state.settings.numbers_style == "words_under_ten"
        out: list[Tok] = []
        i = 0
        n = len(toks)
        lows = [_w(t) if t.is_word else "" for t in toks]
        while i < n:
            t = toks[i]
            if not t.is_word or t.protected:
                out.append(t)
                i += 1
                continue
            # --- digits said one by one (record numbers): "four four seven one" -> "4471"
            j = i
            while j < n and toks[j].is_word and (lows[j] in _SINGLE_DIGITS or (
                len(lows[j]) == 1 and lows[j].isdigit()
            )):
                j += 1
            if j - i >= opts.digit_run_min:
                digits = "".join(_SINGLE_DIGITS.get(lows[x], lows[x]) for x in range(i, j))
                out.append(merge(toks[i:j], digits, "number", protected=True))
                i = j
                continue
            # --- "A one C" -> "A1c" ------------------------------------------------------
            if lows[i] == "a" and i + 2 < n and lows[i + 1] in ("one", "1") and lows[i + 2] == "c":
                out.append(merge(toks[i : i + 3], "A1c", "number", protected=True,
                                 keep_case=True))
                i += 3
                continue
            if lows[i] == "a1c":
                out.append(merge([t], "A1c", "number", protected=True, keep_case=True))
                i += 1
                continue
            # --- a unit glued to its number: "2mm" -> "2 mm" --------------------------------
            m_glued = _GLUED_UNIT.match(t.text)
            if m_glued:
                unit = _GLUED_UNITS[m_glued.group(2).lower()]
                value = m_glued.group(1)
                if value.startswith("."):
                    value = "0" + value
                out.append(merge([t], f"{value} {unit}", "number", protected=True))
                i += 1
                continue
            # --- "four-oh" / "4.0" before a suture material -> "4-0" -----------------------
            m = _HYPHEN_SIZE.match(lows[i])
            nxt_w = lows[i + 1] if i + 1 < n else ""
            if m and (m.group(1) in ONES or nxt_w in _SUTURE_MATERIALS):
                size = ONES.get(m.group(1), m.group(1))
                out.append(merge([t], f"{size}-0", "number", protected=True))
                i += 1
                continue
            # --- dates: "<month> <day>[,] [<year>]" ---------------------------------------
            if lows[i] in MONTHS and i + 1 < n:
                got = self._date(toks, lows, i)
                if got:
                    text, end = got
                    out.append(Tok(t.text.capitalize(), t.start_s, t.end_s, t.prob))
                    out.append(merge(toks[i + 1 : end], text, "number", protected=True))
                    i = end
                    continue
            # --- vertebral levels and letter + number: "L four L five" -> "L4-L5" ---------
            got_lv = self._level(toks, lows, i, opts)
            if got_lv:
                text, end = got_lv
                out.append(merge(toks[i:end], text, "number", protected=True))
                i = end
                continue
            prev_words = [w for w in (lows[j] for j in range(max(0, i - opts.vital_window), i))
                          if w]
            vital_ctx = bool(_VITAL_WORDS & set(prev_words))
            num = self._number(toks, lows, i, colloquial=vital_ctx or self._over_follows(lows, i))
            if num is None:
                out.append(t)
                i += 1
                continue
            if num.spoken and not vital_ctx:
                # "eight seventy five milligrams": a dose said the colloquial way
                alt = self._number(toks, lows, i, colloquial=True)
                if alt is not None and alt.end > num.end and self._unit(lows, alt.end, unit_keys):
                    num = alt
            end = num.end
            # --- "A over B" (blood pressure) -----------------------------------------------
            if end < n and lows[end] == "over" and (
                vital_ctx or _BP_WORDS & set(prev_words)
                or opts.bp_systolic_min <= num.value <= opts.bp_systolic_max
            ):
                other = self._number(toks, lows, end + 1, colloquial=True)
                diastolic = other is not None and (
                    opts.bp_diastolic_min <= other.value <= opts.bp_diastolic_max)
                # the values themselves are health data: only the decision is logged
                log.debug("numbers bp token=%d vital_words=%s diastolic_in_range=%s "
                          "decimal=%s", i, vital_ctx, diastolic, num.decimal)
                if other is not None and diastolic and not num.decimal:
                    out.append(merge(toks[i : other.end], f"{num.text}/{other.text}", "number",
                                     protected=True))
                    i = other.end
                    continue
            # --- suture size misheard: "four on nylon", "three of silk" ------------------------
            if (
                num.spoken and not num.decimal and num.value in sutures and end + 1 < n
                and lows[end] in ("of", "on", "owe")
                and lows[end + 1].split("-")[0] in _SUTURE_MATERIALS
            ):
                out.append(merge(toks[i : end + 1], f"{int(num.value)}-0", "number",
                                 protected=True))
                state.review("suture_size", out[-1], "Suture size heard as words; check it.")
                log.debug("numbers suture_size token=%d heard_as_words=True review=True", i)
                i = end + 1
                continue
            # --- suture size: "four oh vicryl" / "4-0" ------------------------------------
            if num.spoken and end < n and lows[end] in ("oh", "o", "zero") and (
                num.value in sutures
            ) and not num.decimal and not (end + 1 < n and self._is_num_word(lows[end + 1])):
                nxt = lows[end + 1] if end + 1 < n else ""
                if nxt and nxt not in {"clock", "o'clock"}:
                    out.append(merge(toks[i : end + 1], f"{int(num.value)}-0", "number",
                                     protected=True))
                    i = end + 1
                    continue
            # --- "N year old" -> "N-year-old" ----------------------------------------------
            if end + 1 < n and lows[end] in ("year", "month", "week", "day") and lows[end + 1] in (
                "old",
            ) and not num.decimal:
                text = f"{num.text}-{lows[end]}-old"
                out.append(merge(toks[i : end + 2], text, "number", protected=True))
                i = end + 2
                continue
            m = re.match(r"^(year|month|week|day)-old$", lows[end] if end < n else "")
            if m and not num.decimal:
                out.append(merge(toks[i : end + 1], f"{num.text}-{m.group(0)}", "number",
                                 protected=True))
                i = end + 1
                continue
            # --- time of day: "ten thirty a m" --------------------------------------------
            got_t = self._time(toks, lows, i, num) or self._clock(toks, lows, i, num, prev_words)
            if got_t:
                text, tend = got_t
                out.append(merge(toks[i:tend], text, "number", protected=True))
                i = tend
                continue
            # --- number + unit ------------------------------------------------------------
            got_u = self._unit(lows, end, unit_keys)
            if got_u:
                spoken_unit, uend = got_u
                written, kind = units[spoken_unit]
                # "per kilogram", "per hour"
                while uend + 1 < n and lows[uend] == "per" and lows[uend + 1].rstrip("s") in _PER:
                    written += _PER[lows[uend + 1].rstrip("s")]
                    uend += 2
                value_text = num.text
                if kind == "temperature":
                    text = f"{value_text}{written}"
                elif written == "%":
                    text = f"{value_text}%"
                else:
                    text = f"{value_text} {written}"
                tok = merge(toks[i:uend], text, "number", protected=True)
                if written.split("/")[0] in _DOSE_UNITS and num.decimal and re.search(
                    r"\.0+$", value_text
                ):
                    fixed = re.sub(r"\.0+$", "", value_text)
                    tok.text = text.replace(value_text, fixed, 1)
                    state.review("trailing_zero", tok,
                                 "Trailing zero removed from a dose; check the amount.")
                out.append(tok)
                i = uend
                continue
            # --- plain numbers -------------------------------------------------------------
            small = num.value < opts.small_number and not num.decimal
            next_w = lows[end] if end < n else ""
            prev_w = prev_words[-1] if prev_words else ""
            if num.spoken:
                as_digits = (
                    num.decimal
                    or not small
                    or vital_ctx
                    or (prev_w in _NUMBER_KEYWORDS and prev_w != "of")
                    or (next_w in _TIME_UNITS and not words_style)
                )
                if as_digits:
                    out.append(merge(toks[i:end], num.text, "number", protected=True))
                else:
                    out.extend(toks[i:end])
            else:
                # Whisper wrote digits: only the style rule for small counts of time
                if words_style and small and next_w in _TIME_UNITS and num.value == int(
                    num.value
                ):
                    word = next(k for k, v in ONES.items() if v == int(num.value))
                    out.append(merge(toks[i:end], word, "number"))
                else:
                    tok = toks[i]
                    if tok.text != num.text:
                        out.append(merge(toks[i:end], num.text, "number", protected=True))
                    else:
                        tok.protected = True
                        out.append(tok)
            i = end
        state.toks = out
        return state

    @staticmethod
    def _is_num_word(w: str) -> bool:
        return w in ONES or w in TENS or bool(_DIGIT.match(w))

    def _over_follows(self, lows: list[str], i: int) -> bool:
        return any(lows[j] == "over" for j in range(i + 1, min(i + 4, len(lows))))

    def _number(self, toks: list[Tok], lows: list[str], i: int, colloquial: bool) -> _Num | None:
        """A number at token i: Whisper digits or spoken words, with "point" decimals."""
        n = len(toks)
        if i >= n or not toks[i].is_word:
            return None
        w = lows[i]
        if _NAKED_DECIMAL.match(w):
            return _Num("0" + w, float(w), i + 1, False, True)
        if _DIGIT.match(w) or _DIGIT_COMMA.match(w):
            value = float(w.replace(",", ""))
            text = w
            dec = "." in w
            # "11 point 2" / "11. 2": Whisper split decimals
            if i + 2 < n and lows[i + 1] == "point" and lows[i + 2].isdigit():
                text = f"{w}.{lows[i + 2]}"
                return _Num(text, float(text), i + 3, True, True)
            return _Num(text, value, i + 1, False, dec)
        if w == "point" and i + 1 < n:
            frac = self._digits(lows, i + 1)
            if frac:
                digits, end = frac
                return _Num(format_decimal("0", digits), float("0." + digits), end, True, True)
            return None
        words = [lows[j] if toks[j].is_word else "\x00" for j in range(i, min(n, i + 12))]
        parsed = parse_cardinal(words, 0, colloquial=colloquial)
        if parsed is None:
            return None
        value, used = parsed
        end = i + used
        if end < n and lows[end] == "point":
            frac = self._digits(lows, end + 1)
            if frac:
                digits, fend = frac
                return _Num(format_decimal(str(value), digits), float(f"{value}.{digits}"), fend,
                            True, True)
        if end < n and lows[end] in ("and", "a") and end + 1 < n and lows[end + 1] == "half":
            return _Num(f"{value}.5", value + 0.5, end + 2, True, True)
        return _Num(str(value), float(value), end, True)

    @staticmethod
    def _digits(lows: list[str], j: int) -> tuple[str, int] | None:
        """Digits after "point": "two" -> "2", "oh five" -> "05", or Whisper's "25"."""
        out = ""
        while j < len(lows):
            w = lows[j]
            if w in ("oh", "o", "zero"):
                out += "0"
            elif w in ONES and ONES[w] < 10:
                out += str(ONES[w])
            elif w.isdigit() and not out:
                out = w
                j += 1
                break
            else:
                break
            j += 1
        return (out, j) if out else None

    @staticmethod
    def _unit(lows: list[str], j: int, unit_keys: list[str]) -> tuple[str, int] | None:
        for key in unit_keys:
            parts = key.split()
            if lows[j : j + len(parts)] == parts:
                return key, j + len(parts)
        return None

    def _date(self, toks: list[Tok], lows: list[str], i: int) -> tuple[str, int] | None:
        """"March third twenty twenty four" -> ("3, 2024", end)."""
        j = i + 1
        n = len(lows)
        day: int | None = None
        if j < n and lows[j] == "the":
            j += 1
        w = lows[j] if j < n else ""
        m = _ORDINAL_DIGITS.match(w)
        if w in ORDINALS:
            day = ORDINALS[w]
            j += 1
        elif m:
            day = int(m.group(1))
            j += 1
        elif w in TENS and j + 1 < n and lows[j + 1] in _ORD_UNITS:
            day = TENS[w] + _ORD_UNITS[lows[j + 1]]
            j += 2
        elif w.isdigit() and 1 <= int(w) <= 31:
            day = int(w)
            j += 1
        elif w in ONES and 1 <= ONES[w] <= 31 and lows[i] != "may":
            day = ONES[w]
            j += 1
        if day is None or not 1 <= day <= 31:
            return None
        text = str(day)
        year = self._year(lows, j)
        if year:
            y, j = year
            text = f"{day}, {y}"
        return text, j

    @staticmethod
    def _year(lows: list[str], j: int) -> tuple[int, int] | None:
        n = len(lows)
        if j < n and re.match(r"^(19|20)\d\d$", lows[j]):
            return int(lows[j]), j + 1
        if j + 1 < n and lows[j] in ("nineteen", "twenty") and (
            lows[j + 1] in TENS or lows[j + 1] in ONES or "-" in lows[j + 1]
        ):
            rest = parse_cardinal(lows, j + 1)
            if rest and 10 <= rest[0] <= 99:
                return (19 if lows[j] == "nineteen" else 20) * 100 + rest[0], j + 1 + rest[1]
        if j < n and lows[j] == "two":
            got = parse_cardinal(lows, j)
            if got and 2000 <= got[0] <= 2099:
                return got[0], j + got[1]
        return None

    def _time(self, toks: list[Tok], lows: list[str], i: int, num: _Num) -> tuple[str, int] | None:
        """"ten thirty a m" -> "10:30 a.m."; needs a.m./p.m. or o'clock to be a time."""
        if num.decimal or not 1 <= num.value <= 12:
            return None
        n = len(lows)
        j = num.end
        minutes = 0
        if j < n and lows[j] in ("oh", "o") and j + 1 < n and lows[j + 1] in ONES:
            minutes = ONES[lows[j + 1]]
            j += 2
        elif j < n and (lows[j] in TENS or lows[j] in ONES or lows[j].isdigit()):
            got = self._number(toks, lows, j, colloquial=False)
            if got and 10 <= got.value <= 59 and not got.decimal:
                minutes = int(got.value)
                j = got.end
        hour = int(num.value)
        if j < n and lows[j] in ("o'clock",):
            return f"{hour}:{minutes:02d}" if minutes else f"{hour} o'clock", j + 1
        ampm = None
        if j + 1 < n and lows[j] in ("a", "p") and lows[j + 1] in ("m", "m."):
            ampm, j = lows[j], j + 2
        elif j < n and lows[j].replace(".", "") in ("am", "pm"):
            ampm, j = lows[j][0], j + 1
        if ampm is None:
            return None
        return f"{hour}:{minutes:02d} {ampm}.m.", j

    def _clock(
        self, toks: list[Tok], lows: list[str], i: int, num: _Num, prev_words: list[str]
    ) -> tuple[str, int] | None:
        """24-hour times after "at": "at fourteen twenty" -> "14:20", "at oh eight hundred"."""
        if not prev_words or prev_words[-1] != "at" or num.decimal or not num.spoken:
            return None
        if not 0 <= num.value <= 23:
            return None
        j = num.end
        if j < len(lows) and lows[j] == "hundred" and num.value >= 10:
            return f"{int(num.value):02d}:00", j + 1
        got = self._number(toks, lows, j, colloquial=False) if j < len(lows) else None
        if got and got.spoken and not got.decimal and 10 <= got.value <= 59:
            return f"{int(num.value):02d}:{int(got.value):02d}", got.end
        return None

    def _level(
        self, toks: list[Tok], lows: list[str], i: int, opts: NumberOptions = _DEFAULTS
    ) -> tuple[str, int] | None:
        """Spinal levels: "L four L five" -> "L4-L5", "L five S one" -> "L5-S1", "T four"."""
        first = self._one_level(toks, lows, i, opts)
        if first is None:
            return None
        text, j = first
        n = len(lows)
        k = j
        if k < n and lows[k] in ("to", "through", "-", "dash"):
            k += 1
        if k < n and toks[k].kind == "auto" and toks[k].text == ",":
            k += 1
        second = self._one_level(toks, lows, k, opts) if k < n else None
        if second is not None:
            return f"{text}-{second[0]}", second[1]
        return text, j

    def _one_level(
        self, toks: list[Tok], lows: list[str], i: int, opts: NumberOptions = _DEFAULTS
    ) -> tuple[str, int] | None:
        t = toks[i]
        if not t.is_word:
            return None
        m = _LETTER_NUM.match(t.text.strip(",."))
        if m:
            return f"{m.group(1)}{m.group(2)}", i + 1
        if t.text not in ("C", "T", "L", "S") or i + 1 >= len(toks):
            return None
        nxt = lows[i + 1]
        if nxt.isdigit() and 1 <= int(nxt) <= opts.level_max:
            return f"{t.text}{int(nxt)}", i + 2
        if nxt in ONES and 1 <= ONES[nxt] <= opts.level_max:
            return f"{t.text}{ONES[nxt]}", i + 2
        return None


#: A vitamin letter glued to a dose of two or more digits ("D1000", "e400", "D50,000").
_VITAMIN_DOSE = re.compile(r"([ADEKadek])(\d{2,}(?:,\d{3})*)")


class LetterSequences(Transform):
    """Spelled letters to an acronym: "C B C" -> "CBC", "C.B.C." -> "CBC".

    >>> LetterSequences().on_text("C B C and B M P")
    'CBC and BMP'
    >>> LetterSequences().on_text("MRN5520914")
    'MRN 5520914'
    """

    def process(self, state: TextState) -> TextState:
        toks = state.toks
        out: list[Tok] = []
        i = 0
        n = len(toks)
        while i < n:
            t = toks[i]
            if t.is_word and re.fullmatch(r"(?:[A-Za-z0-9]-){2,}[A-Za-z0-9]", t.text):
                # "M-R-N-3-3-8-1" -> "MRN 3381": spelled out with hyphens
                parts = t.text.split("-")
                letters = "".join(p.upper() for p in parts if p.isalpha())
                digits = "".join(p for p in parts if p.isdigit())
                if letters and digits and parts[0].isalpha() and parts[-1].isdigit():
                    out.append(merge([t], f"{letters} {digits}", "number", keep_case=True,
                                     protected=True))
                    i += 1
                    continue
            glued = self._unglued(t, out[-1] if out else None) if t.is_word else None
            if glued:
                out.append(merge([t], glued, "number", keep_case=True, protected=True))
                i += 1
                continue
            if t.is_word and re.fullmatch(r"(?:[A-Z]\.){2,}", t.text):
                out.append(merge([t], t.text.replace(".", ""), "number"))
                i += 1
                continue
            j = i
            while j < n and toks[j].is_word and self._letter(toks[j].text):
                j += 1
            spelled = toks[i:j]
            if len(spelled) >= 2 and not all(x.text.upper() in ("A", "I") for x in spelled) and (
                all(x.text.isupper() for x in spelled)
            ):
                out.append(merge(spelled, "".join(x.text.upper() for x in spelled), "number",
                                 keep_case=True))
                i = j
                continue
            out.append(t)
            i += 1
        state.toks = out
        return state

    @staticmethod
    def _unglued(t: Tok, prev: Tok | None) -> str | None:
        """Letters and a number Whisper wrote as one word, apart: "MRN5520914" -> "MRN
        5520914"; "vitamin d1000" -> "vitamin D 1000" (after "vitamin" only: "vitamin B12",
        "vitamin D3" are names and stay whole)."""
        m = re.fullmatch(r"([A-Z]{2,4})(\d{4,})", t.text)
        if m is None and prev is not None and prev.low == "vitamin":
            m = _VITAMIN_DOSE.fullmatch(t.text)
        return f"{m.group(1).upper()} {m.group(2)}" if m else None

    @staticmethod
    def _letter(text: str) -> bool:
        return (len(text) == 1 and text.isalpha()) or bool(re.fullmatch(r"[A-Z]\.", text))


class ZeroSafety(Transform):
    """Fix number forms the safety lists forbid: ".5" -> "0.5"; "5.0 mg" -> "5 mg" (flagged).

    Source: the Joint Commission "Do Not Use" list (trailing zero, lack of leading zero) and
    ISMP's list of error-prone abbreviations and dose designations.

    >>> ZeroSafety().on_text("give .5 mg now")
    'give 0.5 mg now'
    """

    _dose = re.compile(r"^(\d+)\.0+\s+(mg|mcg|g|mL|units|mEq|mmol)\b")

    def process(self, state: TextState) -> TextState:
        for t in state.toks:
            if not t.is_word:
                continue
            if _NAKED_DECIMAL.match(t.text.split(" ")[0]):
                old = t.text
                t.text = "0" + t.text
                t.orig = t.orig or old
                t.change = t.change or "safety"
            m = self._dose.match(t.text)
            if m:
                old = t.text
                t.text = self._dose.sub(r"\1 \2", t.text)
                if t.orig is None:
                    t.orig = old
                    t.change = "safety"
                state.review("trailing_zero", t, "Trailing zero removed from a dose.")
        return state
