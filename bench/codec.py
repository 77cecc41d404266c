"""Benchmark: the Juki codec against Python's own ``utf-16-be`` codec.

Both codecs run on the same realistic text in the same process: CSV lines of
kanji and alphabet names, addresses, dates, digits, commas and CR LF. The
figures with a target are ratios juki/utf-16-be of throughput (target ≥ 0.5):

* ``encode`` / ``decode``: one call over the whole text;
* ``stream_read`` / ``stream_write``: through ``io.TextIOWrapper`` line by
  line, as the notice-file reader and writer use it;
* ``encode_variants`` / ``decode_variants``: one call over the same kind of
  text where some surnames need a variation sequence or an astral kanji
  (辻 + U+E0103, 𠮷), which the C runs hand back to Python one by one
  (utf-16-be is slower here too: its output or input is then UCS-4 /
  surrogate pairs, off its fast path).

Each figure is measured twice: with the scanner the codec uses here
(``scanner``: "c" when the ``common.juki._scan`` extension is built) and with
the pure-Python regex scanner forced (``pure_python_*``), so the report shows
what the extension buys. The target applies to ``ratio``.

Run as ``python -m bench.codec``; ``make bench`` calls ``run()``.
"""

from __future__ import annotations

import io
import json
import random
import time
from collections.abc import Callable

import common.juki as juki
from common.juki import codec

TARGET = 0.5

SURNAMES = "佐藤 鈴木 高橋 田中 伊藤 渡辺 山本 中村 小林 加藤 吉田 山田 佐々木 松本 井上 木村 林 斎藤 清水 山崎 森 池田 橋本 阿部 石川 髙橋 﨑山 辻 齋藤 金 李 朴 王 張 陳 劉".split()
GIVEN = "太郎 花子 一郎 美咲 大輔 陽菜 翔太 結衣 健 明美 秀樹 由美子 浩 恵 俊 優 蓮 葵 悠真 さくら ひなた".split()
LATIN = "NGUYEN VAN AN|TRAN THI MAI|LI WEI|KIM MIN JUN|SANTOS MARIA|SILVA JOAO|WANG FANG|PARK JI HOON|GARCIA ANA|SMITH JOHN".split(
    "|"
)
PLACES = "東京都千代田区霞が関 大阪府大阪市北区梅田 愛知県名古屋市中区栄 福岡県福岡市博多区博多駅前 北海道札幌市中央区北一条西 神奈川県横浜市中区山下町 京都府京都市左京区吉田本町 広島県広島市中区基町".split()
# Spellings whose code is not one unit <-> one BMP character (canonical, so they round-trip).
VARIANT_SURNAMES = ["辻\U000e0103", "𠮷田", "樹\U000e0101下"]
NATIONS = "中国 韓国 ベトナム フィリピン ブラジル ネパール インドネシア 米国".split()


def realistic_text(lines: int = 20_000, seed: int = 7, variants: bool = False) -> str:
    """Notice-like CSV text: mostly identity-mapped, a few table-mapped kanji.

    With ``variants``, about one line in 13 has a surname from ``VARIANT_SURNAMES``.
    """
    rnd = random.Random(seed)
    surnames = SURNAMES + VARIANT_SURNAMES if variants else SURNAMES
    out = []
    for i in range(lines):
        kanji = rnd.choice(surnames) + "　" + rnd.choice(GIVEN)
        out.append(
            ",".join(
                (
                    f"B{i:09d}",
                    rnd.choice("ABCDEFG"),
                    rnd.choice(LATIN),
                    kanji,
                    f"{rnd.randint(1940, 2010)}{rnd.randint(1, 12):02d}{rnd.randint(1, 28):02d}",
                    rnd.choice(NATIONS),
                    f"{rnd.choice(PLACES)}{rnd.randint(1, 9)}丁目{rnd.randint(1, 30)}番{rnd.randint(1, 20)}号",
                    f"{rnd.randint(100000, 479999)}",
                    f"AB{rnd.randint(10000000, 99999999)}CD",
                )
            )
            + "\r\n"
        )
    return "".join(out)


def _best(fn: Callable[[], object], repeat: int = 5) -> float:
    """Fastest of ``repeat`` runs, in seconds (the least disturbed by the machine)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _pair(size_mb: float, juki: Callable[[], object], base: Callable[[], object]) -> dict:
    """Throughputs and ratios of ``juki`` against ``base``, with each scanner."""
    base_s = _best(base)
    juki_s = _best(juki)
    with codec.using_scanner("python"):
        pure_s = _best(juki)
    return {
        "scanner": codec.scanner_name(),
        "juki_mb_s": size_mb / juki_s,
        "utf16be_mb_s": size_mb / base_s,
        "ratio": base_s / juki_s,
        "target": TARGET,
        "pure_python_mb_s": size_mb / pure_s,
        "pure_python_ratio": base_s / pure_s,
    }


def _stream_read(data: bytes, encoding: str) -> int:
    return sum(1 for _ in io.TextIOWrapper(io.BytesIO(data), encoding=encoding, newline=""))


def _stream_write(lines: list[str], encoding: str) -> int:
    sink = io.BytesIO()
    out = io.TextIOWrapper(sink, encoding=encoding, newline="")
    for line in lines:
        out.write(line)
    out.flush()
    return len(sink.getvalue())


def run(lines: int = 20_000) -> dict:
    """Measure; return {figure name: {throughputs, ratio, target}}."""
    text = realistic_text(lines)
    data = juki.encode(text)
    if data.decode("juki") != text:
        raise AssertionError("benchmark text does not round-trip")
    mb = len(data) / 1e6
    base_data = text.encode("utf-16-be")
    split = text.splitlines(keepends=True)
    mixed = realistic_text(lines, variants=True)
    mixed_data = juki.encode(mixed)
    if mixed_data.decode("juki") != mixed:
        raise AssertionError("benchmark text with variants does not round-trip")
    mixed_base = mixed.encode("utf-16-be", "surrogatepass")
    mixed_mb = len(mixed_data) / 1e6
    juki.encode("")  # load the tables outside the timings
    figures = {
        "encode": _pair(mb, lambda: text.encode("juki"), lambda: text.encode("utf-16-be")),
        "decode": _pair(mb, lambda: data.decode("juki"), lambda: base_data.decode("utf-16-be")),
        "stream_read": _pair(
            mb,
            lambda: _stream_read(data, "juki"),
            lambda: _stream_read(base_data, "utf-16-be"),
        ),
        "stream_write": _pair(
            mb,
            lambda: _stream_write(split, "juki"),
            lambda: _stream_write(split, "utf-16-be"),
        ),
        "encode_variants": _pair(
            mixed_mb, lambda: mixed.encode("juki"), lambda: mixed.encode("utf-16-be")
        ),
        "decode_variants": _pair(
            mixed_mb,
            lambda: mixed_data.decode("juki"),
            lambda: mixed_base.decode("utf-16-be"),
        ),
    }
    figures["text"] = {
        "characters": len(text),
        "bytes": len(data),
        "lines": lines,
        # characters that need the table (here 々, J+AD1D) rather than identity
        "table_mapped_units": sum(
            1 for i in range(0, len(data), 2) if data[i : i + 2] != base_data[i : i + 2]
        ),
    }
    return figures


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
