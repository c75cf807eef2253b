"""English text normalisation: numbers, currency, units and symbols spelled out in words.

Written for this project (no inflect / num2words dependency); the wording follows the official
GPT-SoVITS English normaliser, which uses ``inflect``:

* cardinals without "and" and with a comma between thousands groups, as inflect writes them
  (``1234`` -> "one thousand, two hundred thirty-four"; the comma becomes a pause phone); the last
  group is joined without a comma when it is below one hundred (``1001`` -> "one thousand one");
* integers from 1001 to 2999 are read as years: ``1999`` -> "nineteen ninety-nine", ``1905`` ->
  "nineteen oh five", ``2000`` -> "two thousand", ``2008`` -> "two thousand eight", ``1900`` ->
  "nineteen hundred", ``2024`` -> "twenty twenty-four";
* ordinals ``21st`` -> "twenty-first", ``101st`` -> "one hundred and first" (inflect's "and");
* decimals ``3.14`` -> "three point one four"; fractions ``3/4`` -> "three fourths", ``1/2`` -> "one
  half"; percentages ``50%`` -> "fifty percent"; negative numbers ``-5`` -> "negative five";
* currency ``$6.24`` / ``6.24$`` -> "six dollars and twenty-four cents", likewise pounds / pence;
* units right after a number: ``5km`` -> "five kilometers", ``1h`` -> "one hour" (m km km/h ft L tbsp
  tsp h min s °C °F);
* ``a + b`` (with spaces) -> "a plus b", also minus, times, divided by, equals;
* clock times ``13:30`` -> "one thirty P M", ``4:00`` -> "four o'clock A M";
* accents stripped; characters other than letters, space and ``' . , ? ! -`` removed; "i.e." ->
  "that is", "e.g." -> "for example"; a capital letter inside a word starts a new word (``GPT`` ->
  "G P T", ``iPhone`` -> "i Phone"), so acronyms are spelled letter by letter.

Deliberate differences from the official normaliser: clock times are expanded before ``:`` is
turned into a comma (the official order turns ``4:30`` into ``430`` first); "N. " is not turned into
an ordinal (the official reads a sentence-final "in 1990. " as "nineteen ninetieth,"); thousands
separators are only removed in well-formed groups (``1,234``), not in lists (``1,2,3``); a decimal
point must be followed directly by a digit; "negative" keeps its preceding space.
"""

from __future__ import annotations

import re
import unicodedata

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ("", "thousand", "million", "billion", "trillion", "quadrillion")
_ORDINAL_IRREGULAR = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}


def _below_hundred(n: int) -> str:
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")


def _below_thousand(n: int, andword: str) -> str:
    hundreds, rest = divmod(n, 100)
    words = []
    if hundreds:
        words.append(f"{_ONES[hundreds]} hundred")
        if rest and andword:
            words.append(andword)
    if rest or not hundreds:
        words.append(_below_hundred(rest))
    return " ".join(words)


def cardinal(n: int, andword: str = "") -> str:
    """Cardinal number in words, in inflect's style (``andword`` "" or "and")."""
    if n < 0:
        return "minus " + cardinal(-n, andword)
    if n == 0:
        return "zero"
    if n >= 1000 ** len(_SCALES):
        return " ".join(_ONES[int(d)] for d in str(n))
    groups = []
    scale = 0
    while n:
        n, group = divmod(n, 1000)
        if group:
            groups.append((scale, group))
        scale += 1
    groups.reverse()
    out = ""
    for i, (scale, group) in enumerate(groups):
        words = _below_thousand(group, andword) + (f" {_SCALES[scale]}" if scale else "")
        if i == 0:
            out = words
        elif scale == 0 and group < 100:
            out += f" {andword} {words}" if andword else f" {words}"
        else:
            out += f", {words}"
    return out


def ordinal_word(words: str) -> str:
    """Turn the last word of a spelled-out number into its ordinal ("twenty-one" -> "twenty-first")."""
    m = re.search(r"([a-z]+)$", words)
    if not m:
        return words
    last = m.group(1)
    if last in _ORDINAL_IRREGULAR:
        new = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        new = last[:-1] + "ieth"
    else:
        new = last + "th"
    return words[: m.start()] + new


def ordinal(n: int) -> str:
    return ordinal_word(cardinal(n, andword="and"))


def year_or_cardinal(n: int) -> str:
    """Integers 1001-2999 are read as years (as the official normaliser does), others as cardinals."""
    if not 1000 < n < 3000:
        return cardinal(n)
    if n == 2000:
        return "two thousand"
    if 2000 < n < 2010:
        return "two thousand " + cardinal(n % 100)
    high, low = divmod(n, 100)
    if low == 0:
        return cardinal(high) + " hundred"
    return cardinal(high) + " " + (f"oh {_ONES[low]}" if low < 10 else cardinal(low))


def _digits(s: str) -> str:
    return " ".join(_ONES[int(d)] for d in s)


# ---------------------------------------------------------------------------------------------

_UNITS = {
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "tbsp": ("tablespoon", "tablespoons"),
    "tsp": ("teaspoon", "teaspoons"),
    "min": ("minute", "minutes"),
    "km": ("kilometer", "kilometers"),
    "ft": ("foot", "feet"),
    "°C": ("degree celsius", "degrees celsius"),
    "°F": ("degree fahrenheit", "degrees fahrenheit"),
    "m": ("meter", "meters"),
    "L": ("liter", "liters"),
    "h": ("hour", "hours"),
    "s": ("second", "seconds"),
}
_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence")}

_RE_TIME = re.compile(r"\b([01]?\d|2[0-3]):([0-5]\d)\b")
_RE_ASMD = re.compile(r"(\d|\b[A-Za-z]\b)\s+([-+×÷=])\s+(?=-?\d|-?\.\d|[A-Za-z]\b)")
_ASMD_WORDS = {"+": "plus", "-": "minus", "×": "times", "÷": "divided by", "=": "equals"}
_RE_NEGATIVE = re.compile(r"(^|\s)-(?=\d)")
_RE_GROUPED = re.compile(r"\b\d{1,3}(?:,\d{3})+\b")
_RE_UNIT = re.compile(r"\b(\d+(?:\.\d+)?)(" + "|".join(re.escape(u) for u in _UNITS) + r")(?![A-Za-z0-9/])")
_RE_MONEY_BEFORE = re.compile(r"([$£])(\d*\.?\d+)")
_RE_MONEY_AFTER = re.compile(r"(\d*\.?\d+)([$£])")
_RE_DECIMAL = re.compile(r"(\d+)\.(\d+)")
_RE_FRACTION = re.compile(r"\b(\d+)/(\d+)\b")
_RE_ORDINAL = re.compile(r"(\d+)(st|nd|rd|th)\b")
_RE_NUMBER = re.compile(r"\d+")
_RE_UPPER_IN_WORD = re.compile(r"(?<=\S)([A-Z])")


def _time(m: re.Match) -> str:
    hour, minute = int(m[1]), int(m[2])
    period = "A M" if hour < 12 else "P M"
    hour = hour - 12 if hour > 12 else (12 if hour == 0 else hour)
    if minute == 0:
        return f"{cardinal(hour)} o'clock {period}"
    minute_words = f"oh {_ONES[minute]}" if minute < 10 else cardinal(minute)
    return f"{cardinal(hour)} {minute_words} {period}"


def _unit(m: re.Match) -> str:
    value, unit = m.groups()
    singular = value == "1"
    return f"{value} {_UNITS[unit][0 if singular else 1]}"


def _money(amount: str, symbol: str) -> str:
    major_1, major_n, minor_1, minor_n = _CURRENCIES[symbol]
    whole, _, frac = amount.partition(".")
    major = int(whole) if whole else 0
    minor = int(frac[:2].ljust(2, "0")) if frac else 0
    parts = []
    if major:
        parts.append(f"{major} {major_1 if major == 1 else major_n}")
    if minor:
        parts.append(f"{minor} {minor_1 if minor == 1 else minor_n}")
    return " and ".join(parts) if parts else f"zero {major_n}"


def _fraction(m: re.Match) -> str:
    num, den = int(m[1]), int(m[2])
    if den == 0:
        return f"{cardinal(num)} over zero"
    numerator = cardinal(num, andword="and")
    if den == 1:
        return numerator
    if den == 2:
        return f"{numerator} {'half' if num == 1 else 'halves'}"
    return f"{numerator} {ordinal(den)}{'s' if num > 1 else ''}"


def expand_times(text: str) -> str:
    """``13:30`` -> "one thirty P M" (run before ``:`` is mapped to a comma)."""
    return _RE_TIME.sub(_time, text)


def normalize(text: str) -> str:
    """Spell out numbers and symbols (see the module doc). Punctuation is left to the caller."""
    text = expand_times(text)
    text = _RE_ASMD.sub(lambda m: f"{m[1]} {_ASMD_WORDS[m[2]]} ", text)
    text = _RE_NEGATIVE.sub(r"\1negative ", text)
    text = _RE_GROUPED.sub(lambda m: m[0].replace(",", ""), text)
    text = _RE_UNIT.sub(_unit, text)
    text = _RE_MONEY_BEFORE.sub(lambda m: _money(m[2], m[1]), text)
    text = _RE_MONEY_AFTER.sub(lambda m: _money(m[1], m[2]), text)
    text = _RE_DECIMAL.sub(lambda m: f"{m[1]} point {_digits(m[2])}", text)
    text = _RE_FRACTION.sub(_fraction, text)
    text = _RE_ORDINAL.sub(lambda m: ordinal(int(m[1])), text)
    text = _RE_NUMBER.sub(lambda m: year_or_cardinal(int(m[0])), text)
    text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    text = text.replace("%", " percent")
    text = re.sub(r"[^ A-Za-z'.,?!\-]", "", text)
    text = re.sub(r"(?i)i\.e\.", "that is", text)
    text = re.sub(r"(?i)e\.g\.", "for example", text)
    return _RE_UPPER_IN_WORD.sub(r" \1", text)
