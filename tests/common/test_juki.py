"""The "juki" codec: mapping, strictness, streaming, degeneration, committed tables.

Expected codes below were looked up by hand in mojidata 1.8.1's moji.db
(table mji, column 住基ネット統一文字コード; tables mjsm_*), not computed by
the code under test.
"""

from __future__ import annotations

import codecs
import io
import re
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import common.juki as juki
from common.juki.tables import tables

IVS = [chr(c) for c in range(0xE0100, 0xE01F0)]


def units(*codes: int) -> bytes:
    return b"".join(c.to_bytes(2, "big") for c in codes)


# --- round trips of the non-kanji set ---------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "".join(chr(c) for c in range(0x20, 0x7F)),
        "YAMADA,TARO\r\n19800101\tx\n",
        "あいうえおがぎぐげごぱぴぷぺぽゃゅょっゎゐゑをん",
        "アイウエオヴヵヶーヽヾ・",
        "０１２３４５６７８９ＡＢＣＸＹＺａｂｃ",
        "　、。，．・：；？！゛゜〜―‐／＼（）「」『』【】＋−±×÷＝≠〒※",
        "ΑΩαωАЯаяЁё─│┌┐",
    ],
)
def test_non_kanji_round_trip_as_ucs2(text: str) -> None:
    data = juki.encode(text)
    assert data == text.encode("utf-16-be")  # the UCS-2 layout: identity
    assert juki.decode(data) == text


# --- known kanji ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("辻", 0x8FBB),  # plain: the code point's own code (MJ025760)
        ("辻\U000e0102", 0x8FBB),  # one dot, MJ025760
        ("辻\U000e0103", 0xBC2F),  # two dots, MJ025761 (added kanji)
        ("髙", 0x9AD9),  # MJ028902
        ("高", 0x9AD8),
        ("﨑", 0xFA11),  # MJ030196
        ("﨑\U000e0103", 0xB07A),  # MJ030197
        ("崎", 0x5D0E),
        ("𠮷", 0xAEAC),  # astral, MJ032129
        ("樹", 0x6A39),  # MJ014475
        ("樹\U000e0101", 0xB39E),  # MJ014474
        ("々", 0xAD1D),  # MJ000001: a kanji code, not J+3005
        ("仝", 0x4EDD),  # MJ006525
        ("㐄", 0x3404),  # 対応するUCS of MJ000007 (plain 㐄 is MJ068055, no Juki code)
        ("\u3404\U000e0101", 0x3404),  # MJ000007's IVS
        ("\U0002a6b2", 0xABCF),  # MJ056789, an added kanji at J+ABxx
        ("\U0002b740", 0xAD02),  # MJ056880
        ("\uf91d", 0xF91D),  # compatibility ideograph 欄 U+F91D, MJ030183
        ("\u6b04\ufe00", 0xF91D),  # its SVS: unified 欄 + VS1
        ("\u6b04", 0x6B04),  # the unified 欄 U+6B04
    ],
)
def test_known_kanji(text: str, code: int) -> None:
    assert juki.encode(text) == units(code)
    assert text.encode("juki") == units(code)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0x8FBB, "辻"),
        (0xBC2F, "辻\U000e0103"),
        (0xB39E, "樹\U000e0101"),
        (0xB07A, "﨑\U000e0103"),
        (0xAEAC, "𠮷"),
        (0xAD1D, "々"),
        (0x3404, "㐄"),
        (0xF91D, "\uf91d"),
        (0xABCF, "\U0002a6b2"),
    ],
)
def test_decode_canonical(code: int, text: str) -> None:
    assert juki.decode(units(code)) == text
    assert units(code).decode("juki") == text


@pytest.mark.parametrize("code", [0xAD1D, 0xAEAC, 0xB07A, 0xBC2F, 0xC0E1])
def test_added_kanji_decode_to_kanji_not_hangul(code: int) -> None:
    text = juki.decode(units(code))
    assert "HANGUL" in unicodedata.name(chr(code))  # the same number *is* Hangul in UCS
    assert unicodedata.name(text[0]).startswith("CJK") or text[0] == "々"
    assert text[0] != chr(code)


def test_spellings_of_one_code_decode_to_canonical() -> None:
    assert juki.decode(juki.encode("辻\U000e0102")) == "辻"
    assert juki.decode(juki.encode("㐄\U000e0101")) == "㐄"
    assert juki.decode(juki.encode("\u6b04\ufe00")) == "\uf91d"


# --- strictness and errors --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "position", "shown"),
    [
        ("ab가c", 2, "U+AC00"),  # Hangul
        ("ab\ud800c", 2, "U+D800"),  # lone surrogate
        ("\ufeffabc", 0, "U+FEFF"),  # BOM
        ("a\x00", 1, "U+0000"),
        ("a\x1b", 1, "U+001B"),
        ("ｱ", 0, "U+FF71"),  # half-width katakana
        ("1～3", 1, "U+FF5E"),  # cp932 tilde
        ("1－1", 1, "U+2212"),  # cp932 minus: the message names the JIS character
        ("é", 0, "U+00E9"),
        ("\U00030000", 0, "U+30000"),  # not in the MJ table
        ("x辻\U000e0100", 1, "U+8FBB U+E0100"),  # IVS not in the MJ table
        ("\U000e0102", 0, "U+E0102"),  # selector without base
        ("辻\U000e0102\U000e0102", 2, "U+E0102"),  # second selector
    ],
)
def test_encode_errors_name_position_and_character(text: str, position: int, shown: str) -> None:
    with pytest.raises(juki.JukiEncodeError) as info:
        juki.encode(text)
    err = info.value
    assert isinstance(err, UnicodeEncodeError)
    assert err.start == position
    message = str(err)
    assert f"position {position}" in message
    assert shown in message
    assert repr(text[err.start : err.end]) in message
    with pytest.raises(UnicodeEncodeError):
        text.encode("juki")


@pytest.mark.parametrize(
    ("data", "offset", "shown"),
    [
        (b"\xfe\xff\x00a", 0, "J+FEFF"),  # BOM
        (b"\x00a\xff\xfe", 2, "J+FFFE"),
        (b"\x00a\xd8\x00\x00b", 2, "J+D800"),  # lone surrogate unit
        (b"\x00a\xd8\x00\xdc\x00", 2, "J+D800 J+DC00"),  # a UTF-16 pair is not Juki
        (b"\x00a\xdc\x00", 2, "J+DC00"),
        (b"\x00a\xd8\x00", 2, "J+D800"),  # held-back high surrogate at the end
        (b"\x00a\x30\x05", 2, "J+3005"),  # 々 is J+AD1D
        (b"\x00a\xac\x00", 2, "J+AC00"),  # unassigned: no Hangul
        (b"\x00a\xd6\xff", 2, "J+D6FF"),
        (b"\x00\x00", 0, "J+0000"),
        (b"\x00a\x00", 2, "trailing byte 0x00"),  # odd byte count
    ],
)
def test_decode_errors_name_offset_and_unit(data: bytes, offset: int, shown: str) -> None:
    with pytest.raises(juki.JukiDecodeError) as info:
        juki.decode(data)
    err = info.value
    assert isinstance(err, UnicodeDecodeError)
    assert err.start == offset and err.offset == offset
    assert f"byte offset {offset}" in str(err)
    assert shown in str(err)
    with pytest.raises(UnicodeDecodeError):
        data.decode("juki")


def test_error_handlers_only_when_asked() -> None:
    assert "a가b".encode("juki", "replace") == juki.encode("a?b")
    assert "a가b".encode("juki", "ignore") == juki.encode("ab")
    assert b"\x00a\xac\x00\x00b".decode("juki", "replace") == "a\ufffdb"
    assert b"\x00a\xd8\x00\xdc\x00\x00b".decode("juki", "ignore") == "ab"
    assert b"\x00a\x00".decode("juki", "replace") == "a\ufffd"


def test_unencodable_reports_every_problem() -> None:
    text = "가辻\U000e0100x\ud800𠮷ｱ"
    assert juki.unencodable(text) == [(0, "가"), (1, "辻\U000e0100"), (4, "\ud800"), (6, "ｱ")]
    assert not juki.is_encodable(text)
    assert juki.unencodable("山田 辻\U000e0103 𠮷") == []
    assert juki.is_encodable("山田 辻\U000e0103 𠮷\r\n")


# --- streaming --------------------------------------------------------------------------


class OneByteAtATime(io.RawIOBase):
    """A raw stream that returns one byte per read: every unit is split."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._pos >= len(self._data):
            return 0
        buffer[0] = self._data[self._pos]
        self._pos += 1
        return 1


STREAM_TEXT = "山田,辻\U000e0103,𠮷\r\nYAMADA TARO,々﨑\r\n樹\U000e0101,\tx\r\n"


def one_byte_reader(data: bytes) -> io.TextIOWrapper:
    raw = io.BufferedReader(OneByteAtATime(data), buffer_size=1)
    return io.TextIOWrapper(raw, encoding="juki", newline="")


def test_text_io_wrapper_reads_across_split_units() -> None:
    data = juki.encode(STREAM_TEXT)
    assert one_byte_reader(data).read() == STREAM_TEXT
    assert list(one_byte_reader(data)) == STREAM_TEXT.splitlines(keepends=True)


def test_text_io_wrapper_trailing_odd_byte_names_offset() -> None:
    data = juki.encode(STREAM_TEXT) + b"\x00"
    with pytest.raises(juki.JukiDecodeError, match=rf"byte offset {len(data) - 1}\b"):
        one_byte_reader(data).read()


def test_text_io_wrapper_bad_unit_names_stream_offset() -> None:
    data = juki.encode("a" * 5000) + b"\xac\x00"
    wrapper = io.TextIOWrapper(io.BytesIO(data), encoding="juki", newline="")
    with pytest.raises(juki.JukiDecodeError, match="byte offset 10000: J\\+AC00"):
        wrapper.read()


def test_text_io_wrapper_write_and_seek() -> None:
    sink = io.BytesIO()
    out = io.TextIOWrapper(sink, encoding="juki", newline="")
    for line in STREAM_TEXT.splitlines(keepends=True):
        out.write(line)
    out.flush()
    assert sink.getvalue() == juki.encode(STREAM_TEXT)
    sink.seek(0)
    back = io.TextIOWrapper(sink, encoding="juki", newline="")
    first = back.readline()
    mark = back.tell()
    second = back.readline()
    back.seek(mark)
    assert [first, back.readline()] == STREAM_TEXT.splitlines(keepends=True)[:2]
    assert second == STREAM_TEXT.splitlines(keepends=True)[1]


def test_incremental_decoder_byte_by_byte_equals_one_shot() -> None:
    data = juki.encode(STREAM_TEXT)
    decoder = codecs.getincrementaldecoder("juki")()
    text = "".join(decoder.decode(data[i : i + 1]) for i in range(len(data)))
    assert text + decoder.decode(b"", final=True) == STREAM_TEXT
    decoder.reset()
    assert decoder.decode(b"\x00") == ""
    with pytest.raises(juki.JukiDecodeError, match="byte offset 0"):
        decoder.decode(b"", final=True)


def test_stream_reader_and_writer() -> None:
    sink = io.BytesIO()
    codecs.getwriter("juki")(sink).write(STREAM_TEXT)
    assert sink.getvalue() == juki.encode(STREAM_TEXT)
    reader = codecs.getreader("juki")(io.BytesIO(sink.getvalue()))
    assert reader.readlines() == STREAM_TEXT.splitlines(keepends=True)
    odd = codecs.getreader("juki")(io.BytesIO(sink.getvalue() + b"\x00"))
    with pytest.raises(juki.JukiDecodeError, match="trailing byte"):
        odd.read()


# --- degeneration -----------------------------------------------------------------------


def test_degeneration_only_where_needed_and_reported() -> None:
    # 㐄+U+E0100 is MJ000008 (no Juki code); 法務省告示582号別表第四_二 順位1 gives 牛.
    # 㐬+U+E0102 has no Juki code; JIS包摂規準UCS統合規則 gives 㐬 (J+342C).
    text = "辻\U000e0103山\u3404\U000e0100田\u342c\U000e0102"
    data, subs = juki.encode_degenerate(text)
    assert subs == [
        juki.Substitution(3, "\u3404\U000e0100", "牛", "法務省告示582号別表第四_二"),
        juki.Substitution(6, "\u342c\U000e0102", "\u342c", "JIS包摂規準UCS統合規則"),
    ]
    assert data == juki.encode("辻\U000e0103山牛田\u342c")
    with pytest.raises(juki.JukiEncodeError):
        juki.encode(text)  # never without asking


def test_degeneration_of_encodable_text_substitutes_nothing() -> None:
    assert juki.encode_degenerate(STREAM_TEXT) == (juki.encode(STREAM_TEXT), [])


def test_degeneration_without_entry_is_an_error() -> None:
    with pytest.raises(juki.JukiEncodeError, match="position 1: U\\+AC00"):
        juki.encode_degenerate("a가")


def test_substitution_is_frozen() -> None:
    sub = juki.Substitution(0, "a", "b", "JIS包摂規準UCS統合規則")
    with pytest.raises(AttributeError):
        sub.position = 1  # type: ignore[misc]


def test_degeneration_sources_are_the_mjsm_tables() -> None:
    sources = juki.degeneration_sources()
    assert sources[0] == "JIS包摂規準UCS統合規則"
    assert len(sources) == 10 and len(set(sources)) == 10


# --- committed tables -------------------------------------------------------------------


def test_table_counts_match_generator_report() -> None:
    t = tables()
    assert len(t.kanji_codes) == 19563
    source_md = (Path(juki.__file__).parent / "SOURCE.md").read_text("utf-8")
    reported = re.search(r"kanji codes: (\d+)", source_md)
    assert reported is not None and int(reported.group(1)) == len(t.kanji_codes)
    nonkanji = sum(b - a + 1 for a, b, _ in t.nonkanji_ranges)
    reported = re.search(r"non-kanji codes: (\d+)", source_md)
    assert reported is not None and int(reported.group(1)) == nonkanji


def test_every_code_decodes_to_one_canonical_that_encodes_back() -> None:
    t = tables()
    canonical_owner: dict[str, int] = {}
    for code, text in t.decode.items():
        assert canonical_owner.setdefault(text, code) == code, text
        assert t.encode[text] == code.to_bytes(2, "big")
    assert not t.kanji_codes & {c for a, b, _ in t.nonkanji_ranges for c in range(a, b + 1)}
    assert not any(0xAC00 <= ord(s[0]) <= 0xD7A3 for s in t.encode)  # no Hangul spelling


def test_degeneration_targets_are_encodable_and_originals_are_not() -> None:
    from common.juki.tables import degeneration

    t = tables()
    for original, (replacement, _source) in degeneration().replacements.items():
        assert original not in t.encode
        assert replacement in t.encode


def test_registered_codec() -> None:
    info = codecs.lookup("juki")
    assert info.name == "juki"
    assert info.incrementalencoder is juki.IncrementalEncoder
    assert info.incrementaldecoder is juki.IncrementalDecoder


# --- properties -------------------------------------------------------------------------

CANONICAL = sorted(tables().decode.values())
CODES = sorted(tables().decode)
SPELLINGS = sorted(tables().encode)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(CANONICAL), max_size=40))
def test_decode_encode_round_trip(spellings: list[str]) -> None:
    text = "".join(spellings)
    assert juki.decode(juki.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(CODES), max_size=40))
def test_encode_decode_round_trip(codes: list[int]) -> None:
    data = units(*codes)
    assert juki.encode(juki.decode(data)) == data


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(SPELLINGS), max_size=20), st.integers(1, 7))
def test_any_spelling_streams_like_one_shot(spellings: list[str], chunk: int) -> None:
    text = "".join(spellings)
    data = juki.encode(text)
    assert juki.decode(juki.encode(juki.decode(data))) == juki.decode(data)
    decoder = juki.IncrementalDecoder()
    pieces = [decoder.decode(data[i : i + chunk]) for i in range(0, len(data), chunk)]
    assert "".join(pieces) + decoder.decode(b"", final=True) == juki.decode(data)
