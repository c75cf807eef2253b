"""Regenerate the bundled demo corpus (demo/data) with espeak-ng.

The corpus is synthetic speech: one espeak-ng voice per language, 32 kHz mono FLAC, with a GPT-SoVITS
`.list` file (`wav_path|speaker|lang|text`). It exists so that `make demo` and the tests can prepare and
train offline; it is far too robotic to make a good voice. Run once, by hand:

    apt-get install espeak-ng && python scripts/make_demo_corpus.py
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile
import soxr

ENGLISH = [
    "The morning train was late again, so we walked along the river.",
    "Please put the blue books back on the second shelf.",
    "A small boat drifted slowly past the old stone bridge.",
    "She counted twenty seven birds sitting on the fence.",
    "Bright lights filled the hall as the music began.",
    "We planted tomatoes and beans behind the garden wall.",
    "The library closes at nine o'clock on Sundays.",
    "His brother fixed the bicycle with a borrowed wrench.",
    "Warm bread smells wonderful early in the day.",
    "The children laughed when the puppy chased its tail.",
    "Rain tapped gently on the kitchen window all night.",
    "Our teacher asked us to read three chapters by Friday.",
    "A cold wind blew across the empty parking lot.",
    "They painted the fence white before the summer party.",
    "The old clock in the hallway stopped at noon.",
    "Fresh snow covered the hills behind the village.",
    "He wrote a long letter to his grandmother in Spain.",
    "The market sells apples, pears and yellow plums.",
    "Turn left at the corner and follow the narrow road.",
    "My neighbour plays the violin every evening.",
    "The scientist measured the water temperature twice.",
    "Thunder rolled over the valley just after sunset.",
    "We need more paper for the printer upstairs.",
    "The cat slept on the warm stones near the door.",
]

MANDARIN = [
    "今天天气很好，我们去公园散步吧。",
    "他每天早上七点起床，然后去上班。",
    "这本书很有意思，我已经看了两遍。",
    "请把窗户关上，外面有点冷。",
    "我们明天下午在图书馆见面。",
    "妈妈做的饺子特别好吃。",
    "火车站离这里不太远，走路十分钟就到了。",
    "老师说下个星期有一个考试。",
    "小猫在沙发上睡得很香。",
    "周末我想去海边看日出。",
    "这家饭店的菜又便宜又好吃。",
    "他的中文说得越来越流利了。",
    "秋天的树叶变成了红色和黄色。",
    "我们一起唱歌，大家都很开心。",
    "请问，去博物馆怎么走？",
    "哥哥喜欢打篮球，妹妹喜欢画画。",
]

SAMPLE_RATE = 32000


def synthesize(text: str, voice: str, out: Path, work: Path) -> float:
    raw = work / "raw.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text], check=True)
    audio, rate = soundfile.read(str(raw), dtype="float32")
    audio = soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ")
    audio = 0.9 * audio / max(float(np.abs(audio).max()), 1e-6)
    soundfile.write(str(out), audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return len(audio) / SAMPLE_RATE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "demo" / "data")
    args = parser.parse_args()
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng not found: apt-get install espeak-ng")
    wav_dir = args.out / "wavs"
    wav_dir.mkdir(parents=True, exist_ok=True)
    lines, total = [], 0.0
    with tempfile.TemporaryDirectory() as work:
        for lang, voice, sentences in (("en", "en-us", ENGLISH), ("zh", "cmn", MANDARIN)):
            for index, text in enumerate(sentences):
                name = f"{lang}_{index:03d}.flac"
                total += synthesize(text, voice, wav_dir / name, Path(work))
                lines.append(f"wavs/{name}|demo_speaker|{lang}|{text}")
    (args.out / "demo.list").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} utterances, {total:.1f} s of audio, to {args.out}")


if __name__ == "__main__":
    main()
