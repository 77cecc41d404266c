"""The juki codec's C extension (``common.juki._scan``) against its regex fallback.

The extension finds characters and converts every spelling with a code
(one-for-one characters, variation sequences, astral kanji); the codec gives the same answers with either scanner. These tests check
that the extension is built here, that its scanner agrees with the regex on
every edge of the C loop (string kinds, surrogates, unroll boundaries, start
positions), that its runs agree with a plain-Python model over the mapping
dicts (string and output kinds, selectors, growth of the output, hand-back
points), and that encode/decode/streams give identical results and identical
errors with ``using_scanner("c")`` and ``using_scanner("python")``. Expected
values not produced by the code under test come from the regex classes and
mapping dicts in ``tables.py`` and from the examples in ``test_juki.py``.
"""

from __future__ import annotations

import array
import codecs
import functools
import importlib
import io
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import common.juki as juki
from common.juki import _scan, codec
from common.juki.tables import VARIATION_SELECTORS, tables
from tests.common.leakcheck import assert_no_leaks

T = tables()
IDENTITY = [chr(c) for c in range(0x10000) if not T.encode_flags[c]]
SPECIAL_BMP = [chr(c) for c in range(0x10000) if T.encode_flags[c]]
MAPPED = sorted(T.encode_fast)  # hits that are whole spellings on their own
SPELLINGS = sorted(T.encode)
SELECTORS = sorted(VARIATION_SELECTORS)
CODES = sorted(T.decode)
ROOT = Path(__file__).resolve().parents[2]


def units(*codes: int) -> bytes:
    return b"".join(c.to_bytes(2, "big") for c in codes)


# --- the extension is there ---------------------------------------------------------------


def test_extension_is_built_and_used_by_default() -> None:
    # CI builds it with `pip install -e .`; optional=True would hide a failed build.
    scan = importlib.import_module("common.juki._scan")
    assert scan.TABLE_SIZE == len(T.encode_flags) == len(T.decode_flags) == 0x10000
    assert codec.scanner("c").name == "c"
    if os.environ.get(codec.SCANNER_ENV, "") in ("", "c"):
        assert codec.scanner_name() == "c"


@pytest.mark.parametrize(
    ("value", "expected"), [("", "c"), ("c", "c"), ("python", "python"), ("regex", None)]
)
def test_environment_variable_chooses_at_import(value: str, expected: str | None) -> None:
    env = {**os.environ, codec.SCANNER_ENV: value}
    run = subprocess.run(
        [sys.executable, "-c", "from common.juki import codec; print(codec.scanner_name())"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if expected is None:
        assert run.returncode != 0 and "RENKEI_JUKI_SCANNER='regex'" in run.stderr
    else:
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip() == expected


def test_using_scanner_restores_and_is_per_thread() -> None:
    before = codec.scanner_name()
    seen: list[str] = []
    with codec.using_scanner("python") as chosen:
        assert chosen.name == codec.scanner_name() == "python"
        with codec.using_scanner("c"):
            assert codec.scanner_name() == "c"
        assert codec.scanner_name() == "python"
        other = threading.Thread(target=lambda: seen.append(codec.scanner_name()))
        other.start()
        other.join()
    assert seen == [before]  # another thread never sees the switch
    assert codec.scanner_name() == before
    with pytest.raises(RuntimeError), codec.using_scanner("python"):
        raise RuntimeError
    assert codec.scanner_name() == before
    with pytest.raises(ValueError, match="unknown juki scanner"), codec.using_scanner("re"):
        pass


def test_codec_suite_passes_with_the_fallback_forced() -> None:
    # Every hand-written case of test_juki.py, through the regex scanner.
    env = {**os.environ, codec.SCANNER_ENV: "python"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/common/test_juki.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:]


# --- the flag tables say what the regex classes say ---------------------------------------


@pytest.mark.parametrize("direction", ["encode", "decode"])
def test_flags_match_regex_class_for_every_bmp_code_point(direction: str) -> None:
    flags: bytes = getattr(T, f"{direction}_flags")
    pattern = getattr(T, f"{direction}_scan")
    assert set(flags) == {0, 1}
    differ = [c for c in range(0x10000) if bool(flags[c]) != bool(pattern.fullmatch(chr(c)))]
    assert differ == []


def test_flags_mark_what_needs_the_table() -> None:
    for text, special in [("A", 0), ("\t", 0), ("辻", 0), ("々", 1), ("\ud800", 1), ("\ufeff", 1)]:
        assert T.encode_flags[ord(text)] == special, text
    assert T.decode_flags[0xAD1D] == 1  # J+AD1D decodes to 々, not to U+AD1D
    assert T.decode_flags[0x3005] == 1  # J+3005 is no code


# --- the C loop against the regex, edge by edge -------------------------------------------

C_ENCODE = codec.scanner("c").encode_find
PY_ENCODE = codec.scanner("python").encode_find
C_DECODE = codec.scanner("c").decode_find
PY_DECODE = codec.scanner("python").decode_find


def every_hit(find: Callable[[str, int], int], text: str) -> list[int]:
    hits, i = [], find(text, 0)
    while i >= 0:
        hits.append(i)
        i = find(text, i + 1)
    return hits


@pytest.mark.parametrize(
    ("text", "hits"),
    [
        ("", []),
        ("abc", []),  # 1-byte kind
        ("a\x00b\x7f", [1, 3]),
        ("\xe9", [0]),  # Latin-1 in the 1-byte kind
        ("¢£¬", []),  # JIS X 0208 non-kanji below U+0100 are their own code
        ("山田 太郎", []),  # 2-byte kind
        ("佐々木", [1]),
        ("a\ud800", [1]),  # lone surrogate, 2-byte kind
        ("\udfff", [0]),
        ("\uffff", [0]),  # last BMP index of the table
        ("𠮷", [0]),  # 4-byte kind: above U+FFFF is always a hit
        ("a𠮷b", [1]),
        ("𠮷山\ud800田\U000e0100", [0, 2, 4]),
        ("\U0010ffff", [0]),
        ("辻\U000e0103", [1]),
    ],
)
def test_known_hits(text: str, hits: list[int]) -> None:
    assert every_hit(PY_ENCODE, text) == hits  # the regex says so
    assert every_hit(C_ENCODE, text) == hits


@pytest.mark.parametrize("filler", ["a", "山", "𠮷"])
@pytest.mark.parametrize("size", range(0, 19))
def test_every_position_around_the_unrolled_loop(filler: str, size: int) -> None:
    # Eight characters per step: a hit at each position of short strings of
    # each kind. In the 4-byte kind the filler itself is a hit.
    base = filler if filler != "𠮷" else "a"
    for pos in range(size):
        text = base * pos + "々" + base * (size - pos - 1)
        if filler == "𠮷":
            text = "𠮷" + text
        for start in range(len(text) + 2):
            assert C_ENCODE(text, start) == PY_ENCODE(text, start), (text, start)


@pytest.mark.parametrize("start", [-(2**63), -1, 0, 1, 2, 3, 4, 2**31, 2**63 - 1])
def test_any_start(start: int) -> None:
    for text in ["", "ab", "a々", "々", "𠮷a", "a𠮷", "山\ud800"]:
        assert C_ENCODE(text, start) == PY_ENCODE(text, start), (text, start)


@pytest.mark.parametrize("start", [-(2**63) - 1, 2**63, 2**100])
def test_start_beyond_ssize_t_overflows_like_re(start: int) -> None:
    for find in (C_ENCODE, PY_ENCODE):
        with pytest.raises(OverflowError):
            find("ab", start)


def test_bad_arguments() -> None:
    from common.juki import _scan

    flags = T.encode_flags
    assert _scan.find_special_str(flags, "a々") == 1  # start defaults to 0
    with pytest.raises(ValueError, match="65536"):
        _scan.find_special_str(flags[:-1], "a")
    with pytest.raises(ValueError, match="65536"):
        _scan.find_special_str(bytearray(flags), "a")
    with pytest.raises(TypeError, match="must be str"):
        _scan.find_special_str(flags, b"a")
    with pytest.raises(TypeError):
        _scan.find_special_str(flags, "a", 1.0)
    with pytest.raises(TypeError, match="2 or 3"):
        _scan.find_special_str(flags)
    with pytest.raises(TypeError, match="2 or 3"):
        _scan.find_special_str(flags, "a", 0, 0)


def test_any_table() -> None:
    from common.juki import _scan

    none, every = bytes(0x10000), b"\x01" * 0x10000
    only_last = bytes(0xFFFF) + b"\x02"
    assert _scan.find_special_str(none, "abc山\uffff") == -1
    assert _scan.find_special_str(none, "abc山𠮷") == 4  # astral regardless of the table
    assert _scan.find_special_str(every, "abc", 1) == 1
    assert _scan.find_special_str(only_last, "ab\ufffe\uffff") == 3


def mixed_text() -> st.SearchStrategy[str]:
    piece = st.one_of(
        st.sampled_from(IDENTITY),
        st.sampled_from(IDENTITY),
        st.sampled_from(SPECIAL_BMP),
        st.sampled_from(MAPPED),
        st.sampled_from(SPELLINGS),
        st.sampled_from(SELECTORS),
        st.integers(0xD800, 0xDFFF).map(chr),
        st.integers(0x10000, 0x10FFFF).map(chr),
    )
    return st.lists(piece, max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(mixed_text(), st.integers(-3, 50))
def test_c_scanner_equals_regex(text: str, start: int) -> None:
    assert C_ENCODE(text, start) == PY_ENCODE(text, start)
    assert C_DECODE(text, start) == PY_DECODE(text, start)


# --- has_control: the validator's control check over several strings ----------------------


@pytest.mark.parametrize(
    ("texts", "expected"),
    [
        ([], False),
        (["", "abc", "山田", "𠮷\U000e0100"], False),
        (["abc", "a\tb"], True),  # TAB, LF and CR are Juki codes, but controls
        (["\n"], True),
        (["山\r"], True),
        (["𠮷\x00"], True),  # in the 4-byte kind
        (["x", "\x7f"], True),
        (["\x80\x9f"], False),  # C1 controls are not refused by this check (nor the regex)
        (["\U0001001f", "\U000e007f"], False),  # astral: never a control
        (("a", "b\x1f"), True),
        ({"k": "v"}.values(), False),
        ({"k": "v", "j": "\x01"}.values(), True),
    ],
)
def test_has_control(texts: object, expected: bool) -> None:
    assert with_both(juki.has_control, texts) == ("ok", expected)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(mixed_text(), st.text(max_size=8)), max_size=6))
def test_has_control_same_with_either_scanner(texts: list[str]) -> None:
    with_both(juki.has_control, texts)
    with_both(lambda: juki.has_control(iter(texts)))  # a fresh iterator each time


def test_any_flagged_bad_arguments() -> None:
    flags = codec.scanner("c").has_control.args[0]
    assert _scan.any_flagged(flags, ["a\x01"]) is True
    with pytest.raises(ValueError, match="65536"):
        _scan.any_flagged(flags[:-1], ["a"])
    with pytest.raises(TypeError, match="2 positional"):
        _scan.any_flagged(flags)
    with pytest.raises(TypeError, match="must hold str"):
        _scan.any_flagged(flags, ["a", b"b"])
    with pytest.raises(TypeError, match="iterable"):
        _scan.any_flagged(flags, 5)
    with pytest.raises(ZeroDivisionError):
        _scan.any_flagged(flags, (1 / 0 for _ in range(1)))


# --- the codec: same answers, same errors, with either scanner ----------------------------


def outcome(fn: Callable[..., object], *args: object, **kwargs: object) -> tuple:
    """The result, or everything a caller can see of the error."""
    try:
        return ("ok", fn(*args, **kwargs))
    except UnicodeError as exc:
        assert isinstance(exc, UnicodeEncodeError | UnicodeDecodeError)
        return (
            type(exc),
            exc.object,
            exc.start,
            exc.end,
            exc.reason,
            str(exc),
            getattr(exc, "offset", None),
        )


def with_both(fn: Callable[..., object], *args: object, **kwargs: object) -> tuple:
    """``fn``'s outcome with the C scanner; fails unless the regex gives the same."""
    with codec.using_scanner("c"):
        fast = outcome(fn, *args, **kwargs)
    with codec.using_scanner("python"):
        slow = outcome(fn, *args, **kwargs)
    assert fast == slow
    return fast


ERRORS = ["strict", "replace", "ignore", "backslashreplace", "xmlcharrefreplace"]


@settings(max_examples=300, deadline=None)
@given(mixed_text(), st.sampled_from(ERRORS))
def test_encode_same_with_either_scanner(text: str, errors: str) -> None:
    with_both(juki.encode, text)
    with_both(codec.encode_with, text, errors)
    with_both(codecs.encode, text, "juki", errors)
    bad = with_both(juki.unencodable, text)
    assert with_both(juki.is_encodable, text) == ("ok", bad == ("ok", []))


def mixed_data() -> st.SearchStrategy[bytes]:
    unit = st.one_of(
        st.sampled_from(CODES),
        st.sampled_from(CODES),
        st.integers(0, 0xFFFF),
        st.integers(0xD800, 0xDFFF),  # lone or paired surrogates
        st.tuples(st.integers(0xD800, 0xDBFF), st.integers(0xDC00, 0xDFFF)),
    ).map(lambda u: units(*u) if isinstance(u, tuple) else units(u))
    odd = st.sampled_from([b"", b"", b"\x00", b"\xd8"])
    return st.tuples(st.lists(unit, max_size=40), odd).map(lambda t: b"".join(t[0]) + t[1])


@settings(max_examples=300, deadline=None)
@given(mixed_data(), st.sampled_from(["strict", "replace", "ignore", "backslashreplace"]))
def test_decode_same_with_either_scanner(data: bytes, errors: str) -> None:
    with_both(juki.decode, data)
    with_both(codecs.decode, data, "juki", errors)
    for final in (False, True):
        with_both(codec.decode_chunk, data, errors, final=final, offset=10)
        with_both(codec.decode_chunk, memoryview(data), errors, final=final, offset=None)


@settings(max_examples=100, deadline=None)
@given(mixed_data(), st.integers(1, 7))
def test_incremental_decoder_same_with_either_scanner(data: bytes, size: int) -> None:
    def chunked() -> str:
        decoder = codecs.getincrementaldecoder("juki")("replace")
        text = "".join(decoder.decode(data[i : i + size]) for i in range(0, len(data), size))
        return text + decoder.decode(b"", final=True)

    with_both(chunked)
    with_both(lambda: io.TextIOWrapper(io.BytesIO(data), encoding="juki", newline="").read())


@settings(max_examples=100, deadline=None)
@given(st.lists(mixed_text(), max_size=6))
def test_stream_writers_same_with_either_scanner(lines: list[str]) -> None:
    def text_io() -> bytes:
        sink = io.BytesIO()
        out = io.TextIOWrapper(sink, encoding="juki", errors="backslashreplace", newline="")
        for line in lines:
            out.write(line)
        out.flush()
        return sink.getvalue()

    def incremental() -> list[bytes]:
        encoder = juki.IncrementalEncoder()  # strict: stops at the first bad line
        return [encoder.encode(line) for line in lines]

    with_both(text_io)
    with_both(incremental)


# --- astral characters, surrogates, odd lengths -------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("𠮷", units(0xAEAC)),  # an astral spelling with a code of its own
        ("a𠮷b𠮷", units(0x61, 0xAEAC, 0x62, 0xAEAC)),
        ("𠮷々", units(0xAEAC, 0xAD1D)),
        ("\U0002a6b2山", units(0xABCF, 0x5C71)),
        ("𠮷辻\U000e0103", units(0xAEAC, 0xBC2F)),  # astral, then the careful path
        ("a\U00030000", (1, 2)),  # astral without a code: error at its str index
        ("𠮷\U000e0100", (0, 2)),  # an unknown variation sequence on an astral base
        ("\U000e0100𠮷", (0, 1)),
        ("𠮷\ud800", (1, 2)),  # lone surrogates in the 4-byte kind
        ("a\udc00", (1, 2)),
        ("\ud83d\ude00", (0, 1)),  # a surrogate "pair" in a str is two lone surrogates
    ],
)
def test_astral_and_surrogate_encoding(text: str, expected: bytes | tuple[int, int]) -> None:
    result = with_both(juki.encode, text)
    if isinstance(expected, bytes):
        assert result == ("ok", expected)
    else:
        assert result[0] is juki.JukiEncodeError
        assert result[2:4] == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (units(0xAEAC), "𠮷"),
        (units(0x61, 0xAD1D, 0xAEAC), "a々𠮷"),
        (units(0xD842, 0xDFB7), (0, 4)),  # UTF-16 for 𠮷 is not Juki: one error, both units
        (units(0x61, 0xDC00, 0xD800), (2, 4)),  # reversed pair: two lone surrogates
        (units(0x61, 0xD800), (2, 4)),  # high surrogate held back at the end
        (units(0x61, 0xD800) + b"\x00", (2, 4)),  # ... and then an odd byte
        (units(0x61, 0x62) + b"\x00", (4, 5)),  # odd length
        (b"\x00", (0, 1)),
        (b"", ""),
    ],
)
def test_astral_surrogate_and_odd_decoding(data: bytes, expected: str | tuple[int, int]) -> None:
    result = with_both(juki.decode, data)
    if isinstance(expected, str):
        assert result == ("ok", expected)
    else:
        assert result[0] is juki.JukiDecodeError
        assert result[2:4] == expected and result[6] == expected[0]


def test_odd_length_left_for_the_next_chunk() -> None:
    data = units(0x61, 0xAD1D) + b"\x00"
    assert with_both(codec.decode_chunk, data, "strict", final=False) == ("ok", ("a々", 4))
    assert with_both(codec.decode_chunk, data[:1], "strict", final=False) == ("ok", ("", 0))
    replaced = with_both(codec.decode_chunk, data, "replace", final=True)
    assert replaced == ("ok", ("a々\ufffd", 5))


# --- long input: decoded in pieces --------------------------------------------------------

HALF = codec._PIECE // 2  # units per piece


@pytest.mark.parametrize("before", [HALF - 3, HALF - 2, HALF - 1, HALF, 2 * HALF - 1])
@pytest.mark.parametrize(
    ("spelling", "code"), [("々", 0xAD1D), ("辻\U000e0103", 0xBC2F), ("𠮷", 0xAEAC)]
)
def test_long_input_across_piece_boundaries(before: int, spelling: str, code: int) -> None:
    # Two table-mapped units around the end of the first (or second) piece.
    text = "山" * before + spelling * 2 + "a" * HALF * 2
    data = units(*[0x5C71] * before, code, code, *[0x61] * HALF * 2)
    assert with_both(juki.encode, text) == ("ok", data)
    assert with_both(juki.decode, data) == ("ok", text)
    assert len(data) > 2 * codec._PIECE


@pytest.mark.parametrize("where", [0, 2, codec._PIECE - 2, codec._PIECE, 2 * codec._PIECE + 6])
def test_long_input_error_offset(where: int) -> None:
    data = bytearray(juki.encode("山" * (3 * codec._PIECE // 2)))
    data[where : where + 2] = b"\xac\x00"  # Hangul: no Juki code
    result = with_both(juki.decode, bytes(data))
    assert result[0] is juki.JukiDecodeError and result[2:4] == (where, where + 2)
    assert "J+AC00" in result[5]


def test_long_input_held_back_surrogate_and_odd_tail() -> None:
    body = juki.encode("山" * (codec._PIECE // 2 - 1))  # ends 2 bytes before a boundary
    data = body + units(0xD842, 0xDFB7) + juki.encode("x" * 100) + b"\x00"
    result = with_both(juki.decode, data)
    assert result[0] is juki.JukiDecodeError and result[2:4] == (len(body), len(body) + 4)
    text, used = codec.decode_chunk(
        body + juki.encode("々" * 40000) + b"\x00", "strict", final=False
    )
    assert text == "山" * (codec._PIECE // 2 - 1) + "々" * 40000 and used % 2 == 0


def test_long_input_from_a_buffer_of_16_bit_items() -> None:
    text = "山々a辻\U000e0103" * HALF
    items = array.array("H")
    items.frombytes(juki.encode(text))  # the same bytes, counted as 16-bit items
    assert with_both(codecs.decode, memoryview(items), "juki") == ("ok", text)


# --- the C runs: encode_run / decode_run against a model over the mapping dicts -----------

BLOCK_EDGES = [4095, 4096, 4097, 16383, 16384, 16385, 65535, 65536, 65537, 70001]


def model_encode_run(text: str, start: int) -> tuple[bytes, int]:
    """What ``encode_run`` must return, from ``Tables.encode`` alone.

    Spelling by spelling as ``codec._spelling_bounds`` cuts them: a
    character with the selector after it, if any; a selector is never a base.
    """
    stop = min(max(start, 0), len(text))
    out = []
    while stop < len(text) and text[stop] not in VARIATION_SELECTORS:
        end = stop + 2 if text[stop + 1 : stop + 2] in VARIATION_SELECTORS else stop + 1
        unit = T.encode.get(text[stop:end])
        if unit is None:
            break
        out.append(unit)
        stop = end
    return b"".join(out), stop


def model_decode_run(data: bytes, start: int) -> tuple[str, int]:
    """What ``decode_run`` must return, from ``Tables.decode`` alone: every valid unit."""
    stop = min(max(start, 0), len(data))
    out = []
    while len(data) - stop >= 2:
        canonical = T.decode.get(int.from_bytes(data[stop : stop + 2], "big"))
        if canonical is None:
            break
        out.append(canonical)
        stop += 2
    return "".join(out), stop


def encode_run(text: str, start: int = 0) -> tuple[bytes, int]:
    return _scan.encode_run(T.encode_units, T.encode_sequences, text, start)


def decode_run(data: object, start: int = 0) -> tuple[str, int]:
    return _scan.decode_run(T.decode_units, T.decode_sequences, data, start)


def assert_same_str(got: str, expected: str) -> None:
    # Equal, and of the same (narrowest) kind: a 1-byte str must not come out as 2-byte.
    assert got == expected
    assert sys.getsizeof(got) == sys.getsizeof(expected)


def test_unit_tables_hold_exactly_the_one_for_one_cases() -> None:
    points = array.array("H")
    points.frombytes(T.decode_units)
    wrong_encode = [
        c
        for c in range(0x10000)
        if T.encode_units[2 * c : 2 * c + 2] != T.encode.get(chr(c), b"\0\0")
    ]
    wrong_decode = []
    for code in range(0x10000):
        canonical = T.decode.get(code, "")
        expected = ord(canonical) if len(canonical) == 1 and ord(canonical) < 0x10000 else 0
        if points[code] != expected:
            wrong_decode.append(code)
    assert wrong_encode == [] and wrong_decode == []
    assert len(T.encode_units) == len(T.decode_units) == _scan.RUN_TABLE_SIZE == 0x20000


@pytest.mark.parametrize(
    ("text", "start", "expected", "stop"),
    [
        ("", 0, b"", 0),
        ("abc", 0, units(0x61, 0x62, 0x63), 3),  # 1-byte kind
        ("abc", 1, units(0x62, 0x63), 3),
        ("abc", -5, units(0x61, 0x62, 0x63), 3),  # start clamped, as find's
        ("abc", 10, b"", 3),
        ("a¢é", 0, units(0x61, 0xA2), 2),  # ¢ is J+00A2; é has no code
        ("佐々木", 0, units(0x4F50, 0xAD1D, 0x6728), 3),  # 々 is J+AD1D
        ("山가", 0, units(0x5C71), 1),  # Hangul has no code
        ("a\ud800", 0, units(0x61), 1),
        ("a辻\U000e0103b", 0, units(0x61, 0xBC2F, 0x62), 4),  # 辻 + IVS is J+BC2F
        ("a辻\U000e0103b", 1, units(0xBC2F, 0x62), 4),
        ("a辻\U000e0103b", 2, b"", 2),  # a selector at start stands alone
        ("a辻\U000e0103b", 3, units(0x62), 4),
        ("辻\U000e0103\U000e0103", 0, units(0xBC2F), 2),  # doubled: the second is alone
        ("辻\U000e0103辻\U000e0102", 0, units(0xBC2F, 0x8FBB), 4),  # two in a row
        ("a辻\U000e0103", 0, units(0x61, 0xBC2F), 3),  # a selector at the end
        ("\U000e0103a", 0, b"", 0),
        ("\U000e0103", 0, b"", 0),
        ("山\U000e0100", 0, b"", 0),  # 山 alone has a code; this sequence none
        ("a山\U000e0100", 0, units(0x61), 1),  # stop at the base, not the selector
        ("々\ufe00", 0, b"", 0),  # SVS too, also after a table-mapped base
        ("\u6b04\ufe00x", 0, units(0xF91D, 0x78), 3),  # an SVS spelling
        ("\ufe00\ufe00", 0, b"", 0),  # a selector is never a base
        ("a\ufe0f", 0, b"", 0),
        ("a\U000e01ef", 0, b"", 0),
        ("a\ufdff", 0, units(0x61), 1),  # the neighbours of the selector ranges
        ("a\ufe10", 0, units(0x61), 1),
        ("a\U000e00ff", 0, units(0x61), 1),
        ("a\U000e01f0", 0, units(0x61), 1),
        ("a𠮷b", 0, units(0x61, 0xAEAC, 0x62), 3),  # astral: J+AEAC
        ("𠮷ab", 1, units(0x61, 0x62), 3),  # 4-byte kind
        ("樹\U000e0101𠮷々", 0, units(0xB39E, 0xAEAC, 0xAD1D), 4),
        ("𠮷\ufe00", 0, b"", 0),  # an astral base: this sequence has no code
        ("a\U0002a6d7b", 0, units(0x61), 1),  # an astral character without a code
        ("a\U0010ffff", 0, units(0x61), 1),
        ("a\ud842\udfb7", 0, units(0x61), 1),  # lone surrogates, even as a pair
        ("辻\U000e0103\ud800", 0, units(0xBC2F), 2),
    ],
)
def test_encode_run_known(text: str, start: int, expected: bytes, stop: int) -> None:
    assert model_encode_run(text, start) == (expected, stop)  # the model says so
    assert encode_run(text, start) == (expected, stop)


@pytest.mark.parametrize(
    ("data", "start", "expected", "stop"),
    [
        (b"", 0, "", 0),
        (b"\x00", 0, "", 0),
        (units(0x61, 0x62), 0, "ab", 4),  # ASCII result
        (units(0x61, 0x62), 2, "b", 4),
        (units(0x61, 0x62), -3, "ab", 4),
        (units(0x61, 0x62), 9, "", 4),
        (units(0x61, 0x62) + b"\x00", 0, "ab", 4),  # a last odd byte is never decoded
        (units(0x61, 0xA2), 0, "a¢", 4),  # Latin-1 result
        (units(0xA2, 0x5C71), 0, "¢山", 4),  # UCS-2 result
        (units(0x61, 0xAD1D, 0x6728), 0, "a々木", 6),
        (units(0x61, 0xBC2F, 0x62), 0, "a辻\U000e0103b", 6),  # J+BC2F decodes to 辻 + IVS
        (units(0x61, 0xAEAC), 0, "a𠮷", 4),  # J+AEAC decodes to astral 𠮷
        (units(0xBC2F), 0, "辻\U000e0103", 2),  # a sequence first: straight to UCS-4
        (units(0x61, 0xA2, 0xAEAC, 0x62), 0, "a¢𠮷b", 8),  # Latin-1 so far, then UCS-4
        (units(0x5C71, 0xAEAC, 0x3005), 0, "山𠮷", 4),  # UCS-2 so far, then UCS-4; no code
        (units(0xAEAC, 0x61) + b"\x00", 0, "𠮷a", 4),
        (units(0x61, 0x3005), 0, "a", 2),  # not a code
        (units(0x5C71, 0xD842, 0xDFB7), 0, "山", 2),  # surrogates are no codes
        (units(0xA2, 0xFEFF), 0, "¢", 2),
        (units(0x0000, 0x61), 0, "", 0),  # J+0000 is no code either
    ],
)
def test_decode_run_known(data: bytes, start: int, expected: str, stop: int) -> None:
    assert model_decode_run(data, start) == (expected, stop)  # the model says so
    got, got_stop = decode_run(data, start)
    assert_same_str(got, expected)
    assert got_stop == stop


@pytest.mark.parametrize("size", [4094, *BLOCK_EDGES])
@pytest.mark.parametrize("filler", ["a", "¢", "山", "々"])
@pytest.mark.parametrize(
    "tail", ["", "々", "é", "辻\U000e0103", "𠮷", "山\U000e0100", "辻\U000e0103\U000e0103"]
)
def test_encode_run_across_output_growth(size: int, filler: str, tail: str) -> None:
    # The output grows at 4096, 16384 and 65536 characters; stop just before,
    # at and after each, in each string kind. 々, the IVS spelling (its base
    # at, before or after a growth point, its selector on either side) and
    # the astral kanji go on; é and the sequences without a code stop.
    text = filler * size + tail + "a"
    codes = {"": (), "々": (0xAD1D,), "辻\U000e0103": (0xBC2F,), "𠮷": (0xAEAC,)}
    stops = {"é": 0, "山\U000e0100": 0, "辻\U000e0103\U000e0103": 2}
    for start in (0, 1, size - 1):
        expected = T.encode[filler] * (size - start)
        if tail in codes:
            expected += units(*codes[tail], 0x61)
            assert encode_run(text, start) == (expected, len(text))
        else:
            expected += units(0xBC2F) if stops[tail] else b""
            assert encode_run(text, start) == (expected, size + stops[tail])


@pytest.mark.parametrize("size", BLOCK_EDGES)
@pytest.mark.parametrize("wide", ["", "¢", "山", "¢山"])
@pytest.mark.parametrize(("tail", "more"), [((), "c"), ((0xAD1D,), "々c"), ((0x3005,), "")])
def test_decode_run_across_output_growth(
    size: int, wide: str, tail: tuple[int, ...], more: str
) -> None:
    # ASCII first, then wider from a character at, before and after each growth
    # point (made 1-byte again when nothing is above U+00FF). These characters
    # are their own codes; J+3005 stops the run.
    for where in (0, size - 1, size, size + 1):
        text = "a" * where + wide + "b" * (size - where)
        data = text.encode("utf-16-be") + units(*tail) + units(0x63)
        for start in (0, 2):
            got, stop = decode_run(data, start)
            assert_same_str(got, text[start // 2 :] + more)
            assert stop == (len(data) if more else len(data) - 4)


@pytest.mark.parametrize("size", BLOCK_EDGES)
@pytest.mark.parametrize("wide", ["", "¢", "山"])
@pytest.mark.parametrize("code", [0xBC2F, 0xAEAC])  # 辻 + IVS, astral 𠮷
def test_decode_run_sequence_after_output_growth(size: int, wide: str, code: int) -> None:
    # A multi-unit spelling after 1-byte, Latin-1 or UCS-2 output of every
    # size around the growth points: the output is copied to UCS-4 at its
    # exact final size, then a unit that is no code (J+3005) stops the run.
    spelling = T.decode[code]
    for where in (0, size - 1, size, size + 1):
        text = "a" * where + wide + "b" * (size - where)
        data = text.encode("utf-16-be") + units(code, 0x5C71, 0xAD1D, code, 0x3005, 0x61)
        for start in (0, 2):
            got, stop = decode_run(data, start)
            assert_same_str(got, text[start // 2 :] + spelling + "山々" + spelling)
            assert stop == len(data) - 4


def test_decode_run_any_buffer() -> None:
    data = units(0x61, 0xAD1D, 0x6728, 0xBC2F, 0x3005)
    expected = ("a々木辻\U000e0103", 8)
    assert decode_run(bytearray(data)) == expected
    assert decode_run(memoryview(data)) == expected
    items = array.array("H")
    items.frombytes(data)  # 16-bit items: offsets still count bytes
    assert decode_run(memoryview(items)) == expected
    assert decode_run(items) == expected
    with pytest.raises(BufferError):
        decode_run(memoryview(data + data)[::2])  # not contiguous
    with pytest.raises(TypeError, match="bytes-like"):
        decode_run("a々")


def test_runs_bad_arguments() -> None:
    decode = functools.partial(_scan.decode_run, T.decode_units, T.decode_sequences)
    for run, good_text in [(_scan.encode_run, "a"), (decode, b"\0a")]:
        table = T.encode_units if run is _scan.encode_run else T.decode_units
        short = functools.partial(_scan.decode_run, table[:-1], T.decode_sequences)
        flags = functools.partial(_scan.decode_run, T.encode_flags, T.decode_sequences)
        if run is _scan.encode_run:
            run = functools.partial(_scan.encode_run, table, T.encode_sequences)
            short = functools.partial(_scan.encode_run, table[:-1], T.encode_sequences)
            flags = functools.partial(_scan.encode_run, T.encode_flags, T.encode_sequences)
        assert run(good_text, 0)[1] > 0
        with pytest.raises(ValueError, match="131072"):
            short(good_text, 0)
        with pytest.raises(ValueError, match="131072"):
            flags(good_text, 0)
        with pytest.raises(TypeError, match="positional"):
            run(good_text)
        with pytest.raises(TypeError):
            run(good_text, 1.0)
        with pytest.raises(OverflowError):
            run(good_text, 2**63)
    with pytest.raises(TypeError, match="must be str"):
        _scan.encode_run(T.encode_units, T.encode_sequences, b"a", 0)
    with pytest.raises(TypeError, match="4 positional"):
        _scan.encode_run(T.encode_units, "a", 0)
    for bad in [T.encode_sequences[:-4], bytearray(T.encode_sequences), "a"]:
        with pytest.raises(ValueError, match="spellings must be bytes"):
            _scan.encode_run(T.encode_units, bad, "a", 0)
    with pytest.raises(TypeError, match="4 positional"):
        _scan.decode_run(T.decode_units, b"\0a", 0)
    for bad in [T.decode_units[:-1], T.decode_sequences[:-4], bytearray(T.decode_sequences)]:
        with pytest.raises(ValueError, match="sequences must be bytes"):
            _scan.decode_run(T.decode_units, bad, b"\0a", 0)


def test_sequence_table_holds_exactly_the_multi_unit_spellings() -> None:
    numbers = array.array("H")
    numbers.frombytes(T.decode_sequences[: 2 * 0x10000])
    points = array.array("I")
    points.frombytes(T.decode_sequences[2 * 0x10000 :])
    spelled = {}
    for code in range(0x10000):
        if numbers[code]:
            first, second = points[2 * numbers[code] - 2 : 2 * numbers[code]]
            spelled[code] = chr(first) + (chr(second) if second else "")
    expected = {code: s for code, s in T.decode.items() if not (len(s) == 1 and ord(s) < 0x10000)}
    assert spelled == expected
    assert len(expected) > 5000  # IVS spellings and astral kanji of the MJ table


def sequence_table(*spellings: tuple[int, list[int]]) -> bytes:
    """A hand-made sequence table: (unit, code points) pairs."""
    numbers = array.array("H", bytes(0x20000))
    points = array.array("I")
    for unit, cps in spellings:
        numbers[unit] = len(points) // 2 + 1
        points.extend((cps + [0])[:2])
    return numbers.tobytes() + points.tobytes()


def test_decode_run_never_trusts_a_bad_sequence_table() -> None:
    # Entries out of range stop the run as "no code" instead of reading past
    # the table or writing a code point above U+10FFFF into a str.
    numbers = array.array("H", bytes(0x20000))
    numbers[0x100] = 2  # only one pair follows
    table = numbers.tobytes() + array.array("I", [0x20000, 0]).tobytes()
    too_big = sequence_table((0x100, [0x110000]), (0x101, [0x41, 0x110000]), (0x102, [0, 0x41]))
    for bad in (table, too_big):
        for unit in (0x100, 0x101, 0x102):
            got = _scan.decode_run(T.decode_units, bad, units(0x61, unit, 0x62), 0)
            assert got == ("a", 2)


def test_decode_run_sequences_of_bmp_characters_come_out_narrow() -> None:
    # No such spelling in the MJ table today; the str must still be in its
    # narrowest kind when a sequence holds no character above U+FFFF.
    seqs = sequence_table((0x100, [0x41, 0x42]), (0x101, [0x5C71, 0xFE00]), (0x102, [0x20000]))
    for data, expected in [
        (units(0x61, 0x100), "aAB"),
        (units(0x100, 0x5C71), "AB山"),
        (units(0x61, 0x101), "a山\ufe00"),
        (units(0x102, 0x100), "\U00020000AB"),
    ]:
        got, stop = _scan.decode_run(T.decode_units, seqs, data, 0)
        assert_same_str(got, expected)
        assert stop == len(data)


def test_spelling_table_holds_exactly_the_other_spellings() -> None:
    entries = array.array("I")
    entries.frombytes(T.encode_sequences)
    triples = [tuple(entries[k : k + 3]) for k in range(0, len(entries), 3)]
    assert triples == sorted(triples)  # the binary search needs them sorted
    spelled = {chr(a) + (chr(b) if b else ""): code.to_bytes(2, "big") for a, b, code in triples}
    expected = {s: u for s, u in T.encode.items() if not (len(s) == 1 and ord(s) < 0x10000)}
    assert spelled == expected
    assert len(expected) > 9000  # IVS/SVS spellings and astral kanji of the MJ table


def spelling_table(*entries: tuple[int, int, int]) -> bytes:
    """A hand-made spelling table: (first, second or 0, code) triples, as given."""
    return array.array("I", [x for e in entries for x in e]).tobytes()


def test_encode_run_never_trusts_a_bad_spelling_table() -> None:
    # A code of 0 or above 0xFFFF is no code; an unsorted table only fails
    # to find; an empty one finds nothing. Nothing is read past the table.
    ivs, astral = (0x8FBB, 0xE0103), (0x20BB7, 0)
    for bad in [
        spelling_table((*ivs, 0), (*astral, 0x1_0000)),
        spelling_table((*ivs, 0xFFFF_FFFF), (*astral, 0x10_AEAC)),
        b"",
    ]:
        for text in ("a辻\U000e0103b", "a𠮷b"):
            assert _scan.encode_run(T.encode_units, bad, text, 0) == (units(0x61), 1)
    unsorted = spelling_table((0x20BB7, 0, 0xAEAC), (0x10, 0, 0x1), (0x8FBB, 0xE0103, 0xBC2F))
    assert _scan.encode_run(T.encode_units, unsorted, "a𠮷", 0) == (units(0x61), 1)
    one = spelling_table((0x41, 0xFE00, 0x1234), (0x20BB7, 0, 0xAEAC))  # any code it holds
    got = _scan.encode_run(T.encode_units, one, "A\ufe00𠮷A", 0)
    assert got == (units(0x1234, 0xAEAC, 0x41), 4)


def test_tables_refuse_a_selector_spelled_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    # C never encodes a selector on its own (codec._spelling_bounds never
    # makes one a base), so no table may give one a code.
    import common.juki.tables as tables_module

    real_rows = tables_module._rows

    def with_selector(name: str) -> list[list[str]]:
        extra = [["FE00", "FE00", "VS1"]] if name == "nonkanji.csv" else []
        return real_rows(name) + extra

    monkeypatch.setattr(tables_module, "_rows", with_selector)
    with pytest.raises(ValueError, match="optional variation selector"):
        tables_module.tables.__wrapped__()


ENCODE_LEAK_SCRIPT = r"""
import functools, sys
from common.juki import _scan
from common.juki.tables import tables

T = tables()
run = functools.partial(_scan.encode_run, T.encode_units, T.encode_sequences)
cases = [
    lambda: run("a佐々木辻\U000e0103𠮷b" * 50, 0),
    lambda: run("山" * 4100 + "辻\U000e0103" + "a" * 100, 0),  # past a growth point
    lambda: run("a辻\U000e0103\U000e0103b", 0),
    lambda: run("a\ud800b", 0),
    lambda: run("𠮷\ufe00", 0),
    lambda: run("abc", 2**63),
    lambda: run(b"abc", 0),
    lambda: _scan.encode_run(T.encode_units, b"short", "a", 0),
    lambda: _scan.encode_run(T.encode_units, "a", 0),
]

"""


def test_encode_run_leaks_nothing() -> None:
    # Every path of encode_run (growth, sequences, each stop, each argument
    # error), 10^5 times each in a process of its own, as test_row_scan does
    # for the decoder: allocated blocks and the resident set stay put.
    assert_no_leaks(ENCODE_LEAK_SCRIPT)


@settings(max_examples=300, deadline=None)
@given(mixed_text(), st.integers(-3, 50))
def test_encode_run_equals_model(text: str, start: int) -> None:
    assert encode_run(text, start) == model_encode_run(text, start)


@settings(max_examples=300, deadline=None)
@given(mixed_data(), st.integers(-3, 90))
def test_decode_run_equals_model(data: bytes, start: int) -> None:
    got, stop = decode_run(data, start)
    expected, expected_stop = model_decode_run(data, start)
    assert_same_str(got, expected)
    assert stop == expected_stop


def test_tables_refuse_code_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0 marks "not one-for-one" in the unit tables, so no mapping may use it.
    import common.juki.tables as tables_module

    real_rows = tables_module._rows

    def with_nul(name: str) -> list[list[str]]:
        return real_rows(name) + ([["0000", "0000", "NUL"]] if name == "nonkanji.csv" else [])

    monkeypatch.setattr(tables_module, "_rows", with_nul)
    with pytest.raises(ValueError, match=r"J\+0000"):
        tables_module.tables.__wrapped__()


# --- the codec on the C runs: the same answers, and the careful path only for errors ------


def test_only_the_c_scanner_has_runs() -> None:
    assert codec.scanner("c").encode_run is not None
    assert codec.scanner("c").decode_run is not None
    assert codec.scanner("python").encode_run is None
    assert codec.scanner("python").decode_run is None


@pytest.mark.parametrize(
    ("text", "data", "decoded"),
    [
        ("佐々木", units(0x4F50, 0xAD1D, 0x6728), "佐々木"),
        ("a辻\U000e0103b", units(0x61, 0xBC2F, 0x62), "a辻\U000e0103b"),
        # two sequences in a row; J+8FBB decodes to plain 辻
        ("辻\U000e0103辻\U000e0102", units(0xBC2F, 0x8FBB), "辻\U000e0103辻"),
        ("樹\U000e0101𠮷々", units(0xB39E, 0xAEAC, 0xAD1D), "樹\U000e0101𠮷々"),
        # an SVS spelling; J+F91D decodes to the compatibility ideograph
        ("\u6b04\ufe00x", units(0xF91D, 0x78), "\uf91dx"),
    ],
)
def test_valid_text_never_takes_the_careful_path(
    monkeypatch: pytest.MonkeyPatch, text: str, data: bytes, decoded: str
) -> None:
    # Selectors and astral kanji are handed back by C and spliced by the run
    # loops; only an error may restart from scratch.
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("careful path taken")

    for name in ("_encode_careful", "_decode_careful", "_encode_hits", "_decode_plain"):
        monkeypatch.setattr(codec, name, refuse)
    with codec.using_scanner("c"):
        assert juki.encode(text) == data
        assert juki.IncrementalEncoder().encode(text) == data
        assert juki.decode(data) == decoded
        assert codec.decode_chunk(data + b"\x00", "strict", final=False) == (decoded, len(data))


Failure: TypeAlias = UnicodeEncodeError | UnicodeDecodeError


def _skip_one_more(exc: Failure) -> tuple[str, int]:
    return "<?>", exc.end + 1


def _from_the_end(exc: Failure) -> tuple[str, int]:
    back = exc.end - len(exc.object)  # negative, except at the very end (0 is the start)
    return "<!>", back if back < 0 else exc.end


def _bytes_replacement(exc: Failure) -> tuple[bytes | str, int]:
    return (b"\xff\xfd" if isinstance(exc, UnicodeEncodeError) else "\ufffd"), exc.end


# Handlers beyond the standard ones: moving the position (so the codec must
# restart there), a negative position, a bytes replacement.
MOVING_HANDLERS = ["juki-test-skip", "juki-test-from-end", "juki-test-bytes"]
for _name, _handler in zip(
    MOVING_HANDLERS, [_skip_one_more, _from_the_end, _bytes_replacement], strict=True
):
    codecs.register_error(_name, _handler)


def long_text() -> st.SearchStrategy[str]:
    return st.tuples(
        st.sampled_from(["a", "山", "々", "¢"]),
        st.sampled_from([0, 3, *BLOCK_EDGES[:6]]),
        mixed_text(),
        mixed_text(),
    ).map(lambda t: t[0] * t[1] + t[2] + t[0] * 5 + t[3])


@settings(max_examples=120, deadline=None)
@given(long_text(), st.sampled_from(ERRORS + MOVING_HANDLERS))
def test_long_encode_same_with_either_scanner(text: str, errors: str) -> None:
    with_both(codec.encode_with, text, errors)
    with_both(lambda: juki.IncrementalEncoder(errors).encode(text))


@settings(max_examples=120, deadline=None)
@given(
    st.sampled_from([0, 1, 2, *BLOCK_EDGES[:6]]),
    mixed_data(),
    mixed_data(),
    # Not juki-test-skip: misaligned, every later unit is an error, each a
    # restart one frame deeper (test_moving_handlers_same_with_either_scanner).
    st.sampled_from(["strict", "replace", "ignore", "juki-test-from-end", "juki-test-bytes"]),
)
def test_long_decode_same_with_either_scanner(
    size: int, head: bytes, tail: bytes, errors: str
) -> None:
    data = head + juki.encode("山" * size) + tail
    for final in (False, True):
        with_both(codec.decode_chunk, data, errors, final=final, offset=7)
    with_both(codecs.decode, data, "juki", errors)


@settings(max_examples=200, deadline=None)
@given(mixed_text(), st.sampled_from(MOVING_HANDLERS))
def test_moving_handlers_same_with_either_scanner(text: str, errors: str) -> None:
    with_both(codec.encode_with, text, errors)
    data = b"".join(
        units(ord(c)) if ord(c) < 0x10000 else units(0xD800) for c in text
    )  # every character's code point as a unit: many invalid
    for final in (False, True):
        with_both(codec.decode_chunk, data, errors, final=final, offset=3)


# --- encoding in C: variation sequences and astral kanji, valid and not ----------------------

PAIRS = [s for s in SPELLINGS if len(s) == 2]
BASES = sorted({s[0] for s in PAIRS})
ASTRAL = [s for s in SPELLINGS if ord(s[0]) > 0xFFFF]


def variant_text() -> st.SearchStrategy[str]:
    """Text dense in what ``encode_run`` now spells in C, valid and not.

    Sequences with and without a code (a base with a selector it does not
    take), astral kanji with and without one, selectors at the start, the end
    and doubled, lone surrogates (a high one before an astral character too).
    """
    piece = st.one_of(
        st.sampled_from(PAIRS),
        st.sampled_from(ASTRAL),
        st.sampled_from(MAPPED),
        st.sampled_from(IDENTITY),
        st.tuples(st.sampled_from(BASES + ASTRAL + IDENTITY[:200]), st.sampled_from(SELECTORS)).map(
            "".join
        ),
        st.sampled_from(SELECTORS),
        st.sampled_from(SELECTORS).map(lambda v: v * 2),
        st.integers(0xD800, 0xDFFF).map(chr),
        st.integers(0x20000, 0x3134F).map(chr),
    )
    return st.tuples(
        st.sampled_from(["", *SELECTORS[:2], SELECTORS[-1]]),
        st.lists(piece, max_size=30).map("".join),
        st.sampled_from(["", *SELECTORS[:2], SELECTORS[-1], "\ud800"]),
    ).map("".join)


@settings(max_examples=300, deadline=None)
@given(variant_text(), st.sampled_from(ERRORS + MOVING_HANDLERS))
def test_variants_encode_same_with_either_scanner(text: str, errors: str) -> None:
    # Identical bytes, or identical errors (positions, reasons, messages).
    with_both(juki.encode, text)
    with_both(codec.encode_with, text, errors)
    with_both(lambda: juki.IncrementalEncoder(errors).encode(text))
    with_both(juki.unencodable, text)


@settings(max_examples=300, deadline=None)
@given(variant_text(), st.integers(-3, 60))
def test_variants_encode_run_equals_model(text: str, start: int) -> None:
    assert encode_run(text, start) == model_encode_run(text, start)
