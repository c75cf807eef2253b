"""Chinese text normalisation: numbers and symbols to Chinese characters, punctuation to the phone set.

Mirrors what the official frontend does (its TextNormalizer comes from PaddleSpeech), rule by rule:

* full-width letters/digits/space -> ASCII; spaces and bracket/quote-like symbols are removed;
* dates ``2024年5月1日`` / ``2024-05-01`` (year read digit by digit), clock times ``8:30`` (-> 八点半),
  time ranges, temperatures ``-3°C`` (-> 零下三度), units after a number (``5kg`` -> 五千克),
  fractions ``3/4`` (-> 四分之三), percentages, mobile / land-line / 400 phone numbers (digit by
  digit, 一 read 幺), ranges ``3-5`` (-> 三到五), negative numbers, decimals (``3.14`` -> 三点一四);
* an integer followed by a classifier is read as a cardinal (and 二 becomes 两: ``2个`` -> 两个),
  as is an ordinal ``第2`` (-> 第二);
  a bare integer of three or more digits is read digit by digit (``110`` -> 幺幺零, an identifier
  reading); other integers as cardinals (``12`` -> 十二);
* ``/`` -> 每, ``~`` -> 至, circled digits, Greek letters by their Chinese names;
* then the punctuation is mapped onto the six phone-set marks ``! ? … , . -`` (``，`` -> ``,``,
  ``。`` -> ``.``, ``、`` -> ``,``, ``...`` -> ``…`` ...), every character that is neither a CJK
  unified ideograph (U+4E00-U+9FA5) nor one of those marks is deleted, and runs of marks collapse
  to their first one.

Differences from the official normaliser (documented, deliberate):
* unit abbreviations (``m``, ``s``, ``kg`` ...) are expanded only right after a number; the official
  replaces them anywhere in the sentence, which turns the letters of English words into 米 / 秒;
* ordinals (``第2个``, ``第100``) are read as cardinals; the official reads 第两个 and 第幺零零;
  date-like classifiers (月, 日, 号) and 级 / 代 do not turn 二 into 两;
* ``-3.5`` is read 负三点五 (the official reads 负三零点五);
* traditional characters are not converted to simplified ones (pypinyin reads both);
* the text is not split into sentences before normalising (no rule here spans a sentence mark).
"""

from __future__ import annotations

import re

DIGIT_CHARS = "零一二三四五六七八九"
PUNCTUATION = "!?…,.-"

# Classifiers / measure words after which a number is read as a cardinal (and 2 as 两).
_CLASSIFIERS = sorted(
    set(
        """
        个 位 只 条 本 张 件 块 元 角 毛 分 支 枝 根 棵 朵 头 匹 辆 架 艘 台 部 座 栋 层 间 套 家 户
        所 口 名 人 次 回 遍 趟 场 届 章 节 页 行 句 首 篇 段 幅 封 份 种 样 批 群 对 双 副 把 颗 粒
        片 滴 杯 瓶 碗 盘 盒 箱 包 袋 桶 罐 壶 斤 两 克 吨 升 米 里 尺 寸 公里 公斤 千克 千米 厘米
        毫米 毫升 年 岁 天 周 小时 分钟 秒 刻 季 世纪 点 倍 成 万 亿 千 百 美元 项 例 笔 声 步
        门 道 面 扇 盏 顶 枚 款 集 辈 斗 亩 顿 餐 圈 股 阵
        """.split()
    ),
    key=len,
    reverse=True,
)

_UNITS_AFTER_NUMBER = {
    "cm2": "平方厘米",
    "cm²": "平方厘米",
    "cm3": "立方厘米",
    "cm³": "立方厘米",
    "cm": "厘米",
    "mm": "毫米",
    "km": "千米",
    "kg": "千克",
    "ml": "毫升",
    "m2": "平方米",
    "m²": "平方米",
    "m3": "立方米",
    "m³": "立方米",
    "m": "米",
    "db": "分贝",
    "ds": "毫秒",
    "s": "秒",
}

_GREEK = dict(
    pair.split("=")
    for pair in """α=阿尔法 β=贝塔 γ=伽玛 Γ=伽玛 δ=德尔塔 Δ=德尔塔 ε=艾普西龙 ζ=捷塔 η=依塔 θ=西塔 Θ=西塔
    ι=艾欧塔 κ=喀帕 λ=拉姆达 Λ=拉姆达 μ=缪 ν=拗 ξ=克西 Ξ=克西 ο=欧米克伦 π=派 Π=派 ρ=肉 ς=西格玛 Σ=西格玛
    σ=西格玛 τ=套 υ=宇普西龙 φ=服艾 Φ=服艾 χ=器 ψ=普赛 Ψ=普赛 ω=欧米伽 Ω=欧米伽""".split()
)
_CIRCLED = {chr(0x2460 + i): ch for i, ch in enumerate("一二三四五六七八九十")}

# Symbols deleted before and after the number rules (the second pass also deletes "-").
_DROP_EARLY = re.compile(r"[—《》【】<=>{}()（）#&@“”^_|…\\]")
_DROP_LATE = re.compile(r"[-—《》【】<=>{}()（）#&@“”^_|…\\]")

_PUNCT_MAP = {
    "：": ",",
    "；": ",",
    "，": ",",
    "。": ".",
    "！": "!",
    "？": "?",
    "\n": ".",
    "·": ",",
    "、": ",",
    "...": "…",
    "$": ".",
    "/": ",",
    "—": "-",
    "~": "…",
    "～": "…",
}
_PUNCT_RE = re.compile("|".join(re.escape(k) for k in sorted(_PUNCT_MAP, key=len, reverse=True)))
_NOT_KEPT = re.compile(r"[^\u4e00-\u9fa5" + re.escape(PUNCTUATION) + r"]+")
_REPEATED_PUNCT = re.compile(r"([" + re.escape(PUNCTUATION) + r"])[" + re.escape(PUNCTUATION) + r"]+")
LATIN_WORD = re.compile(r"[A-Za-z]+")


# ---------------------------------------------------------------------------------------------
# numbers


def digits(s: str, yao: bool = False) -> str:
    """Read a digit string digit by digit (``yao``: 一 read as 幺, as in phone numbers)."""
    out = "".join(DIGIT_CHARS[int(c)] for c in s)
    return out.replace("一", "幺") if yao else out


def _cardinal_parts(s: str, zero_pad: bool) -> str:
    """Cardinal reading of the digit string ``s`` (leading zeros allowed, meaning a 零 gap)."""
    body = s.lstrip("0")
    if not body:
        return ""
    if len(body) == 1:
        return ("零" if zero_pad and len(body) < len(s) else "") + DIGIT_CHARS[int(body)]
    # the largest unit below the number's length: 十 (10^1) 百 千 万 (10^4) 亿 (10^8)
    power = max(p for p in (1, 2, 3, 4, 8) if p < len(body))
    unit = {1: "十", 2: "百", 3: "千", 4: "万", 8: "亿"}[power]
    return _cardinal_parts(s[:-power], True) + unit + _cardinal_parts(s[-power:], True)


def cardinal(s: str) -> str:
    """``"105"`` -> 一百零五, ``"12"`` -> 十二 (a leading 一十 is shortened to 十)."""
    if not s:
        return ""
    body = s.lstrip("0")
    if not body:
        return "零"
    out = _cardinal_parts(body, True)
    return out[1:] if out.startswith("一十") else out


def number(s: str) -> str:
    """Integer or decimal string -> characters: ``"3.14"`` -> 三点一四, ``".5"`` -> 零点五."""
    whole, _, frac = s.partition(".")
    out = cardinal(whole)
    frac = frac.rstrip("0") + "0" if frac.endswith("0") else frac
    if frac:
        out = (out or "零") + "点" + digits(frac)
    return out


def _time_part(s: str) -> str:
    out = number(s.lstrip("0"))
    return "零" + out if s.startswith("0") else out


def _clock(h: str, m: str, s: str | None) -> str:
    out = number(h) + "点"
    if m.lstrip("0"):
        out += "半" if int(m) == 30 else _time_part(m) + "分"
    if s and s.lstrip("0"):
        out += _time_part(s) + "秒"
    return out


_TIME = r"([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?"
_RE_TIME_RANGE = re.compile(_TIME + r"[~-]" + _TIME)
_RE_TIME = re.compile(_TIME)
_RE_DATE = re.compile(r"(\d{4}|\d{2})年(?:(0?[1-9]|1[0-2])月)?(?:(0?[1-9]|[12]\d|3[01])([日号]))?")
_RE_DATE2 = re.compile(r"(\d{4})([- /.])(0[1-9]|1[012])\2(0[1-9]|[12]\d|3[01])")
_RE_TEMPERATURE = re.compile(r"(-?)(\d+(?:\.\d+)?)(°C|℃|度|摄氏度)")
_UNIT_ALTERNATIVES = "|".join(re.escape(u) for u in sorted(_UNITS_AFTER_NUMBER, key=len, reverse=True))
_RE_UNIT = re.compile(r"(\d)(" + _UNIT_ALTERNATIVES + r")(?![A-Za-z])")
_RE_FRACTION = re.compile(r"(-?)(\d+)/(\d+)")
_RE_PERCENT = re.compile(r"(-?)(\d+(?:\.\d+)?)%")
_RE_MOBILE = re.compile(r"(?<!\d)((?:\+?86 ?)?1(?:[38]\d|5[0-35-9]|7[678]|9[89])\d{8})(?!\d)")
_RE_PHONE = re.compile(r"(?<!\d)((?:0(?:10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})(?!\d)")
_RE_400 = re.compile(r"400-?\d{3}-?\d{4}")
_NUM = r"-?\d+(?:\.\d+)?"
_RE_RANGE = re.compile(r"(?<![\d+\-×÷=])(" + _NUM + r")[-~](" + _NUM + r")(?![\d+\-×÷=])")
_RE_NEGATIVE = re.compile(r"-(\d+(?:\.\d+)?)")
_RE_DECIMAL = re.compile(r"(-?)(\d+\.\d+)|\.(\d+)")
_RE_QUANTIFIED = re.compile(r"(\d+)([多余几+])?(" + "|".join(_CLASSIFIERS) + ")")
_RE_ORDINAL = re.compile(r"第(\d+)")
_RE_LONG_INT = re.compile(r"\d{3,}")
_RE_NUMBER = re.compile(r"(-?)(\d+(?:\.\d+)?)|\.(\d+)")


def _date(m: re.Match) -> str:
    year, month, day, day_mark = m.groups()
    out = digits(year) + "年"
    if month:
        out += cardinal(month) + "月"
    if day:
        out += cardinal(day) + day_mark
    return out


def _signed(sign: str, value: str, minus: str = "负") -> str:
    return (minus if sign else "") + number(value)


def _phone_digits(text: str, sep: str) -> str:
    parts = [p for p in text.lstrip("+").split(sep) if p]
    return "，".join(digits(p, yao=True) for p in parts)


def _decimal(m: re.Match) -> str:
    sign, value, bare = m.groups()
    return number("." + bare) if bare is not None else _signed(sign, value)


def _number_text(s: str) -> str:
    return _RE_NUMBER.sub(_decimal, s)


def _quantified(m: re.Match) -> str:
    value, approx, classifier = m.groups()
    reading = number(value)
    reading = "两" if reading == "二" else reading
    return reading + ("多" if approx == "+" else approx or "") + classifier


def normalize_numbers(text: str) -> str:
    """Verbalise dates, times, numbers and units in Chinese text (the rules in the module doc)."""
    text = _RE_DATE.sub(_date, text)
    text = _RE_DATE2.sub(lambda m: f"{digits(m[1])}年{cardinal(m[3])}月{cardinal(m[4])}日", text)
    text = _RE_TIME_RANGE.sub(lambda m: _clock(*m.groups()[:3]) + "至" + _clock(*m.groups()[3:]), text)
    text = _RE_TIME.sub(lambda m: _clock(*m.groups()), text)
    text = _RE_TEMPERATURE.sub(
        lambda m: _signed(m[1], m[2], "零下") + ("摄氏度" if m[3] == "摄氏度" else "度"), text
    )
    text = _RE_UNIT.sub(lambda m: m[1] + _UNITS_AFTER_NUMBER[m[2]], text)
    text = _RE_FRACTION.sub(lambda m: ("负" if m[1] else "") + f"{number(m[3])}分之{number(m[2])}", text)
    text = _RE_PERCENT.sub(lambda m: ("负" if m[1] else "") + "百分之" + number(m[2]), text)
    text = _RE_MOBILE.sub(lambda m: _phone_digits(m[1], " "), text)
    text = _RE_PHONE.sub(lambda m: _phone_digits(m[1], "-"), text)
    text = _RE_400.sub(lambda m: _phone_digits(m[0], "-"), text)
    text = _RE_RANGE.sub(lambda m: _number_text(m[1]) + "到" + _number_text(m[2]), text)
    text = _RE_NEGATIVE.sub(lambda m: "负" + number(m[1]), text)
    text = _RE_DECIMAL.sub(_decimal, text)
    text = _RE_ORDINAL.sub(lambda m: "第" + number(m[1]), text)
    text = _RE_QUANTIFIED.sub(_quantified, text)
    text = _RE_LONG_INT.sub(lambda m: digits(m[0], yao=True), text)
    return _RE_NUMBER.sub(_decimal, text)


# ---------------------------------------------------------------------------------------------
# whole pipeline


def _to_halfwidth(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\u3000":
            out.append(" ")
        elif 0xFF10 <= code <= 0xFF19 or 0xFF21 <= code <= 0xFF3A or 0xFF41 <= code <= 0xFF5A:
            out.append(chr(code - 0xFEE0))
        else:
            out.append(ch)
    return "".join(out)


def pre_normalize(text: str) -> str:
    """Everything up to (not including) the punctuation mapping and the character filter.

    The result can still hold Latin letters (English words), which the caller decides about.
    """
    text = _DROP_EARLY.sub("", text.replace(" ", ""))
    text = _to_halfwidth(text).replace(" ", "")
    text = normalize_numbers(text)
    text = text.replace("/", "每").replace("~", "至").replace("～", "至")
    text = "".join(_CIRCLED.get(ch) or _GREEK.get(ch) or ch for ch in text)
    return _DROP_LATE.sub("", text)


def map_punctuation(text: str) -> str:
    """Map punctuation onto the phone set and delete every character that is not kept."""
    text = text.replace("嗯", "恩").replace("呣", "母")
    text = _PUNCT_RE.sub(lambda m: _PUNCT_MAP[m.group()], text)
    text = _NOT_KEPT.sub("", text)
    return _REPEATED_PUNCT.sub(r"\1", text)
