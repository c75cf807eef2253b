"""GPT-SoVITS phone inventories (v1: 322 symbols, v2: 732 symbols), built from their parts.

A phone id is the index of the phone in the version's symbol list, so the order matters and must be
the official one. The official code assembles the tables as follows, and this module does the same
from the groups below:

* v1 = the sorted set of: the pad symbol, the Mandarin initials, the Mandarin finals with tones 1-5,
  the Japanese phones, the punctuation marks and special tokens, and the ARPAbet phones. (Python's
  ``sorted`` on strings, i.e. code-point order; the set merges the Japanese and Mandarin phones that
  are spelled the same, such as ``b`` or ``ch``.)
* v2 = v1, then the two Japanese pitch-accent marks ``[`` and ``]``, then the sorted Korean jamo (and
  two pause tokens), then the sorted Cantonese (jyutping) phones, each prefixed with ``Y``. The
  appended groups are not merged into the sort, so that v1 ids stay valid in v2.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache

from .errors import UnknownPhoneError

VERSIONS = ("v1", "v2")

PAD = "_"
# Punctuation kept as phones by every language frontend (the official "punctuation" list).
PUNCTUATION = ("!", "?", "…", ",", ".", "-")
# Pause / unknown tokens: SP2 and SP3 come from the "￥" and "^" pause marks in Chinese text.
SPECIAL_TOKENS = ("SP", "SP2", "SP3", "UNK")

# --- Mandarin, in the opencpop-strict notation -------------------------------------------------
# Initials. AA / EE / OO are the "glottal" initials of syllables that start with a, e or o.
ZH_INITIALS = tuple("AA EE OO b c ch d f g h j k l m n p q r s sh t w x y z zh".split())
# Finals without tone. i0 is the apical vowel after z c s, ir the retroflex one after zh ch sh r;
# v stands for ü; E and En are the finals of ye / yan.
ZH_FINALS = tuple(
    """E En a ai an ang ao e ei en eng er i i0 ia ian iang iao ie in ing iong ir iu
       o ong ou u ua uai uan uang ui un uo v van ve vn""".split()
)
ZH_TONES = "12345"  # 5 = neutral tone

# --- Japanese (pyopenjtalk phones; v2 adds the accent marks [ and ]) ----------------------------
JA_PHONES = tuple(
    """I N U a b by ch cl d dy e f g gy h hy i j k ky m my n ny o p py r ry s sh t ts u v w y z""".split()
)
JA_ACCENT_MARKS = ("[", "]")

# --- English: ARPAbet as used by the CMU dictionary ---------------------------------------------
ARPABET_VOWELS = tuple("AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split())
ARPABET_CONSONANTS = tuple("B CH D DH F G HH JH K L M N NG P R S SH T TH V W Y Z ZH".split())
ARPABET_STRESSES = "012"
# Two stress-less vowels that the official table also carries.
ARPABET_EXTRA = ("ER", "IH")

# --- Korean (jamo, plus two pause tokens) -------------------------------------------------------
KO_PHONES = tuple("ㄱㄴㄷㄹㅁㅂㅅㅇㅈㅊㅋㅌㅍㅎㄲㄸㅃㅆㅉ" + "ㅏㅓㅗㅜㅡㅣㅐㅔ" + "空停")

# --- Cantonese (jyutping pieces, each written with a "Y" prefix) --------------------------------
YUE_PREFIX = "Y"
# Initials carry no tone.
YUE_INITIALS = tuple("b c d f g gw h j k kw l m n ng p s t w z".split())
# Finals appear with each of the six tones. The official table also lists the bare codas
# g k p t and the nasals m n with tones; they are kept as they are part of the id space.
YUE_TONED_FINALS = tuple(
    """a aa aai aak aam aan aang aap aat aau ai ak am an ang ap at au
       e ei ek eng eoi eon eot g i ik im in ing ip it iu k m n
       o oe oek oeng oi ok on ong ot ou p t u ui uk un ung ut yu yun yut""".split()
)
YUE_TONES = "123456"
# Finals that the official table also lists without a tone.
YUE_TONELESS_FINALS = tuple("a aa ai ak au e o oi ok on ou uk".split())


def zh_phones() -> list[str]:
    """Mandarin initials followed by every final with every tone."""
    return list(ZH_INITIALS) + [final + tone for tone in ZH_TONES for final in ZH_FINALS]


def arpabet_phones() -> list[str]:
    vowels = [v + s for v in ARPABET_VOWELS for s in ARPABET_STRESSES]
    return vowels + list(ARPABET_CONSONANTS) + list(ARPABET_EXTRA)


def yue_phones() -> list[str]:
    toned = [f + t for f in YUE_TONED_FINALS for t in YUE_TONES]
    plain = list(YUE_INITIALS) + list(YUE_TONELESS_FINALS)
    return [YUE_PREFIX + p for p in toned + plain]


def _check_version(version: str) -> str:
    if version not in VERSIONS:
        raise ValueError(f"unknown symbol-table version {version!r}; expected one of {VERSIONS}")
    return version


@cache
def _symbol_table(version: str) -> tuple[str, ...]:
    _check_version(version)
    base = {PAD, *zh_phones(), *JA_PHONES, *PUNCTUATION, *SPECIAL_TOKENS, *arpabet_phones()}
    table = sorted(base)
    if version == "v2":
        table += list(JA_ACCENT_MARKS)
        table += sorted(KO_PHONES)
        table += sorted(set(yue_phones()))
    if len(set(table)) != len(table):  # guards the construction itself
        raise AssertionError(f"duplicate symbols in the {version} table")
    return tuple(table)


def symbols(version: str = "v2") -> list[str]:
    """The symbol list of ``version`` ("v1" or "v2") in id order (a fresh list)."""
    return list(_symbol_table(version))


@cache
def _phone_to_id(version: str) -> dict[str, int]:
    return {p: i for i, p in enumerate(_symbol_table(version))}


def phone_to_id(version: str = "v2") -> dict[str, int]:
    """Mapping phone -> id for ``version`` (a fresh dict)."""
    return dict(_phone_to_id(version))


def num_symbols(version: str = "v2") -> int:
    return len(_symbol_table(version))


def phones_to_ids(phones: Iterable[str], version: str = "v2") -> list[int]:
    """Convert phones to ids (the official ``cleaned_text_to_sequence``).

    Raises :class:`UnknownPhoneError` naming every phone that is not in the ``version`` table.
    """
    table = _phone_to_id(version)
    phones = list(phones)
    unknown = [p for p in dict.fromkeys(phones) if p not in table]
    if unknown:
        raise UnknownPhoneError(unknown, version)
    return [table[p] for p in phones]


def ids_to_phones(ids: Sequence[int], version: str = "v2") -> list[str]:
    table = _symbol_table(version)
    out = []
    for i in ids:
        if not 0 <= int(i) < len(table):
            raise ValueError(f"phone id {i} out of range for the {version} table ({len(table)} symbols)")
        out.append(table[int(i)])
    return out
