"""Mandarin tone sandhi, following the rules of the official GPT-SoVITS frontend (from PaddleSpeech).

The input is a jieba segmentation (word, part-of-speech) of one clause of Chinese characters; the
tones are pypinyin finals written with a tone digit ("ao3", "e5"). Two stages:

1. :func:`merge_for_sandhi` re-groups the segmentation so that the rules see the right units:
   不 + next word, V一V reduplications and 一 + next word, repeated words, adjacent words that are all
   third tone (or meet on a third tone) when together at most three characters, and a trailing 儿.
2. :func:`apply_sandhi` changes the tones of one word's finals:
   * 不: bu4 -> bu2 before a fourth tone; neutral in the middle of a three-character word (看不懂).
   * 一: yi1 -> yi2 before a fourth tone, yi4 before other tones; neutral in V一V (看一看); first tone
     in ordinals (第一) and in digit strings (一零一).
   * neutral tone: reduplicated nouns/verbs/adjectives (奶奶, 看看), modal particles (吧, 呢, 啊 ...),
     的/地/得, aspect markers 了/着/过, the suffixes 们/子, locatives 上/下/里, directional 来/去 after a
     verb of motion, the classifier 个, and a list of words with a conventionally neutral last
     syllable (a subset of the official list, see ``NEUTRAL_TONE_WORDS``).
   * 3-3 sandhi: in a two-character word of third tones the first becomes second tone; in three- and
     four-character words the word is split (jieba's search segmentation for three characters, 2+2
     for four) and the rule is applied inside and across the parts.

Everything here is pure (lists are copied, not mutated in place).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

# Words whose last syllable is conventionally neutral. The official frontend carries a longer
# list (about 400 words); this is a selection of the frequent ones.
NEUTRAL_TONE_WORDS = frozenset(
    """
    什么 怎么 这么 那么 多么 这个 那个 东西 朋友 时候 先生 学生 意思 喜欢 告诉 认识 知识 事情 关系
    衣服 衣裳 舒服 漂亮 聪明 明白 清楚 消息 休息 大夫 丈夫 姑娘 姐夫 媳妇 女婿 父亲 母亲
    兄弟 弟兄 亲戚 亲家 人家 大爷 老爷 少爷 老婆 老实 老头 老太 外甥 师父 师傅 伙计 家伙 客气
    实在 本事 故事 名字 地方 地道 打算 打扮 打听 打量 打发 商量 麻烦 便宜 热闹 暖和 凉快
    痛快 爽快 勤快 快活 凑合 照顾 收拾 招呼 称呼 嘱咐 答应 折腾 琢磨 算计 算盘 主意 生意
    买卖 工夫 功夫 力气 脾气 福气 运气 小气 志气 秀气 阔气 骨头 石头 木头 舌头 枕头 指头 拳头
    馒头 码头 罐头 念头 跟头 苗头 丫头 里头 上头 后头 前头 眼睛 眉毛 耳朵 嘴巴 尾巴 下巴
    巴掌 脑袋 屁股 胳膊 指甲 头发 葡萄 萝卜 蘑菇 芝麻 核桃 豆腐 月饼 烧饼 点心 粮食 庄稼 棉花
    风筝 灯笼 钥匙 扫帚 窗户 口袋 篱笆 玻璃 琵琶 胡琴 喇叭 喇嘛 和尚 菩萨 状元 秀才 先生 大人
    爱人 媒人 丈人 冤家 对头 对付 将就 讲究 规矩 记性 记号 见识 意识 学问 部分 位置 体面
    利索 利落 利害 厉害 结实 扎实 踏实 壮实 精神 困难 在乎 似的 委屈 冤枉 糊涂 马虎 迷糊 含糊
    模糊 疙瘩 哆嗦 咳嗽 哈欠 吆喝 嘀咕 嘟囔 念叨 叫唤 使唤 吓唬 欺负 报复 惦记 耽误 耽搁
    挑剔 提防 佩服 应酬 交情 心思 情形 动静 动弹 能耐 别扭 稳当 妥当 自在 舒坦 新鲜 白净
    机灵 活泼 温和 软和 匀称 大方 比方 正经 生意 太阳 月亮 云彩 世故 行李 包袱 铺盖 帐篷 棺材
    """.split()
)
NOT_NEUTRAL_WORDS = frozenset("男子 女子 分子 原子 量子 莲子 石子 瓜子 电子 人人 虎虎".split())

MODAL_PARTICLES = "吧呢哈啊呐噻嘛吖嗨哦哒额滴哩哟喽啰耶喔诶"
STRUCTURAL_PARTICLES = "的地得"
ASPECT_PARTICLES = "了着过"
PLURAL_SUFFIXES = "们子"
LOCATIVE_SUFFIXES = "上下里"
DIRECTIONAL_SUFFIXES = "来去"
MOTION_VERBS = "上下进出回过起开"
GE_PRECEDERS = "几有两半多各整每做是"
# Characters after which 一 keeps its first tone (it ends the phrase).
PHRASE_END = "：，；。？！“”‘’':,;.?!"

FinalsFn = Callable[[str], list[str]]


def _tone(final: str) -> str:
    return final[-1]


def _with_tone(final: str, tone: str) -> str:
    return final[:-1] + tone


def _all_third(finals: Sequence[str]) -> bool:
    return all(_tone(f) == "3" for f in finals)


def _is_reduplication(word: str) -> bool:
    return len(word) == 2 and word[0] == word[1]


@lru_cache(maxsize=4096)
def _search_split(word: str) -> tuple[str, str]:
    """Split a word into two parts around its shortest jieba search-mode sub-word."""
    import jieba

    pieces = sorted(jieba.cut_for_search(word), key=len)
    first = pieces[0]
    if word.find(first) == 0:
        return first, word[len(first) :]
    return word[: -len(first)], first


# ---------------------------------------------------------------------------------------------
# stage 1: regrouping the segmentation


def _merge_bu(seg: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pending = False
    for word, pos in seg:
        if pending:
            word = "不" + word
        pending = word == "不"
        if not pending:
            out.append((word, pos))
    if pending:
        out.append(("不", "d"))
    return out


def _merge_yi(seg: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # V 一 V  ->  V一V (verb reduplication around 一)
    grouped: list[list[str]] = []
    skip_next = False
    for i, (word, pos) in enumerate(seg):
        if skip_next:
            skip_next = False
            continue
        if (
            word == "一"
            and 0 < i < len(seg) - 1
            and seg[i - 1][0] == seg[i + 1][0]
            and seg[i - 1][1] == "v"
            and seg[i + 1][1] == "v"
        ):
            grouped[-1][0] = seg[i - 1][0] + "一" + seg[i - 1][0]
            skip_next = True
        else:
            grouped.append([word, pos])
    # a lone 一 joins the word after it
    out: list[list[str]] = []
    for word, pos in grouped:
        if out and out[-1][0] == "一":
            out[-1][0] += word
        else:
            out.append([word, pos])
    return [(w, p) for w, p in out]


def _merge_repeats(seg: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out: list[list[str]] = []
    for word, pos in seg:
        if out and out[-1][0] == word:
            out[-1][0] += word
        else:
            out.append([word, pos])
    return [(w, p) for w, p in out]


def _merge_third_tones(
    seg: list[tuple[str, str]], finals_of: FinalsFn, whole_words: bool
) -> list[tuple[str, str]]:
    """Join neighbours that are both all-third-tone (whole_words) or meet on two third tones."""
    finals = [finals_of(word) for word, _ in seg]
    out: list[list[str]] = []
    merged_prev = False
    for i, (word, pos) in enumerate(seg):
        merge = False
        if i > 0 and not merged_prev and finals[i - 1] and finals[i]:
            if whole_words:
                meets = _all_third(finals[i - 1]) and _all_third(finals[i])
            else:
                meets = _tone(finals[i - 1][-1]) == "3" and _tone(finals[i][0]) == "3"
            prev_word = seg[i - 1][0]
            merge = meets and not _is_reduplication(prev_word) and len(prev_word) + len(word) <= 3
        if merge:
            out[-1][0] += word
        else:
            out.append([word, pos])
        merged_prev = merge
    return [(w, p) for w, p in out]


def _merge_er(seg: list[tuple[str, str]]) -> list[tuple[str, str]]:
    out: list[list[str]] = []
    for word, pos in seg:
        if out and word == "儿" and out[-1][0] != "#":
            out[-1][0] += word
        else:
            out.append([word, pos])
    return [(w, p) for w, p in out]


def merge_for_sandhi(seg: Sequence[tuple[str, str]], finals_of: FinalsFn) -> list[tuple[str, str]]:
    """Regroup a (word, pos) segmentation; ``finals_of(word)`` gives a word's toned finals."""
    out = _merge_bu(list(seg))
    out = _merge_yi(out)
    out = _merge_repeats(out)
    out = _merge_third_tones(out, finals_of, whole_words=True)
    out = _merge_third_tones(out, finals_of, whole_words=False)
    return _merge_er(out)


# ---------------------------------------------------------------------------------------------
# stage 2: tone changes inside one word


def _bu_sandhi(word: str, finals: list[str]) -> list[str]:
    if len(word) == 3 and word[1] == "不":
        finals[1] = _with_tone(finals[1], "5")
        return finals
    for i, char in enumerate(word[:-1]):
        if char == "不" and _tone(finals[i + 1]) == "4":
            finals[i] = _with_tone(finals[i], "2")
    return finals


def _yi_sandhi(word: str, finals: list[str]) -> list[str]:
    if "一" in word and all(c.isnumeric() for c in word if c != "一"):
        return finals  # a digit string such as 一零一: keep yi1
    if len(word) == 3 and word[1] == "一" and word[0] == word[2]:
        finals[1] = _with_tone(finals[1], "5")
    elif word.startswith("第一"):
        finals[1] = _with_tone(finals[1], "1")
    else:
        for i, char in enumerate(word[:-1]):
            if char != "一":
                continue
            if _tone(finals[i + 1]) == "4":
                finals[i] = _with_tone(finals[i], "2")
            elif word[i + 1] not in PHRASE_END:
                finals[i] = _with_tone(finals[i], "4")
    return finals


def _is_neutral_word(word: str) -> bool:
    return word in NEUTRAL_TONE_WORDS or word[-2:] in NEUTRAL_TONE_WORDS


def _neutral_sandhi(word: str, pos: str, finals: list[str]) -> list[str]:
    if pos[:1] in {"n", "v", "a"} and word not in NOT_NEUTRAL_WORDS:
        for j in range(1, len(word)):
            if word[j] == word[j - 1]:
                finals[j] = _with_tone(finals[j], "5")
    ge = word.find("个")
    last = word[-1]
    if last in MODAL_PARTICLES or last in STRUCTURAL_PARTICLES:
        finals[-1] = _with_tone(finals[-1], "5")
    elif len(word) == 1 and word in ASPECT_PARTICLES and pos in {"ul", "uz", "ug"}:
        finals[-1] = _with_tone(finals[-1], "5")
    elif len(word) > 1 and last in PLURAL_SUFFIXES and pos in {"r", "n"} and word not in NOT_NEUTRAL_WORDS:
        finals[-1] = _with_tone(finals[-1], "5")
    elif len(word) > 1 and last in LOCATIVE_SUFFIXES and pos in {"s", "l", "f"}:
        finals[-1] = _with_tone(finals[-1], "5")
    elif len(word) > 1 and last in DIRECTIONAL_SUFFIXES and word[-2] in MOTION_VERBS:
        finals[-1] = _with_tone(finals[-1], "5")
    elif (ge >= 1 and (word[ge - 1].isnumeric() or word[ge - 1] in GE_PRECEDERS)) or word == "个":
        finals[ge] = _with_tone(finals[ge], "5")
    elif _is_neutral_word(word):
        finals[-1] = _with_tone(finals[-1], "5")
    # the same check on the two halves of the word
    head, tail = _search_split(word)
    for start, part in ((0, head), (len(head), tail)):
        if part and _is_neutral_word(part):
            end = start + len(part) - 1
            finals[end] = _with_tone(finals[end], "5")
    return finals


def _three_sandhi(word: str, finals: list[str]) -> list[str]:
    if len(word) == 2:
        if _all_third(finals):
            finals[0] = _with_tone(finals[0], "2")
    elif len(word) == 3:
        head, _ = _search_split(word)
        if _all_third(finals):
            if len(head) == 2:  # 蒙古/包
                finals[0] = _with_tone(finals[0], "2")
                finals[1] = _with_tone(finals[1], "2")
            elif len(head) == 1:  # 纸/老虎
                finals[1] = _with_tone(finals[1], "2")
        else:
            a, b = finals[: len(head)], finals[len(head) :]
            for i, part in enumerate((a, b)):
                if len(part) == 2 and _all_third(part):  # 所有/人
                    part[0] = _with_tone(part[0], "2")
                elif i == 1 and a and part and part[0][-1] == "3" == a[-1][-1] and not _all_third(part):
                    # 好/喜欢
                    a[-1] = _with_tone(a[-1], "2")
            finals = a + b
    elif len(word) == 4:  # idioms: two halves of two
        halves = [finals[:2], finals[2:]]
        for part in halves:
            if _all_third(part):
                part[0] = _with_tone(part[0], "2")
        finals = halves[0] + halves[1]
    return finals


def apply_sandhi(word: str, pos: str, finals: Sequence[str]) -> list[str]:
    """Tone-sandhi'd copy of ``finals`` (one toned final per character of ``word``)."""
    if len(finals) != len(word):
        raise ValueError(f"{word!r}: {len(finals)} finals for {len(word)} characters")
    out = list(finals)
    out = _bu_sandhi(word, out)
    out = _yi_sandhi(word, out)
    out = _neutral_sandhi(word, pos, out)
    return _three_sandhi(word, out)
