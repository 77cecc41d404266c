"""The juki codec's C scanner (``common.juki._scan``) against its regex fallback.

The extension only finds characters; the codec gives the same answers with
either scanner. These tests check that the extension is built here, that it
agrees with the regex on every edge of the C loop (string kinds, surrogates,
unroll boundaries, start positions), and that encode/decode/streams give
identical results and identical errors with ``using_scanner("c")`` and
``using_scanner("python")``. Expected values not produced by the code under
test come from the regex classes in ``tables.py`` and from the examples in
``test_juki.py``.
"""

from __future__ import annotations

import array
import codecs
import importlib
import io
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import common.juki as juki
from common.juki import codec
from common.juki.tables import VARIATION_SELECTORS, tables

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
