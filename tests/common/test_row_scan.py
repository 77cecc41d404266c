"""The notice reader's C row parser (``_scan.parse_row``) against the Python one.

The reader hands each line to the C parser when the juki extension is built
and to its Python parser otherwise, and also whenever C declines a line
(anything but the common row). These tests check that C returns exactly
what decoding, splitting and keeping the non-empty fields gives — same
records, same ``str`` kinds — and declines every other line; that whole
files read the same with either scanner, records, row errors and file
errors alike (hypothesis, valid and invalid input); that a record made in C
is indistinguishable from one made in Python; and that none of
``parse_row``, ``decode_run`` and ``any_flagged`` leaks memory, on success
or on any error path. Expected values come from the Python path (``using_scanner("python")``)
and from the records written by ``encode_notice_file``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import io
import os
import pickle
import subprocess
import sys
from itertools import compress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import common.juki as juki
from common.errors import NoticeFileError
from common.items import MINISTRY, columns_for
from common.juki import _scan, codec
from common.juki.tables import tables
from common.noticefile import NoticeReader, RowError, encode_notice_file, header
from common.records import MinistryNotice, MunicipalityNotice, Record
from tests.common.leakcheck import assert_no_leaks

T = tables()
ROOT = Path(__file__).resolve().parents[2]
PARSE = functools.partial(_scan.parse_row, T.decode_units, T.decode_sequences)
DECODE = functools.partial(_scan.decode_run, T.decode_units, T.decode_sequences)
CODES = sorted(T.decode)
MULTI = sorted(c for c, s in T.decode.items() if not (len(s) == 1 and ord(s) < 0x10000))
COMMA, QUOTE, CR, LF = 0x2C, 0x22, 0x0D, 0x0A
NO_CODES = [0x0000, 0x0001, 0x3005, 0xAC00, 0xD800, 0xDC00, 0xFEFF, 0xFFFE, 0xFFFF]
SMALL = ("a", "b", "c")  # width 5


def units(*codes: int) -> bytes:
    return b"".join(c.to_bytes(2, "big") for c in codes)


def python_row(line: bytes, columns: tuple[str, ...], record_type: type[Record]) -> Record | None:
    """What the reader's Python path makes of a line C may take, or None."""
    with codec.using_scanner("python"):
        try:
            text = juki.decode(line)
        except UnicodeDecodeError:
            return None
    if '"' in text or "\r" in text or "\n" in text:
        return None
    fields = text.split(",")
    if len(fields) != len(columns) + 2:
        return None
    values = fields[2:]
    return record_type(
        fields[0], fields[1], dict(compress(zip(columns, values, strict=True), values))
    )


def assert_same(got: object, expected: object) -> None:
    """Equal, of the same type, and every str of the same (narrowest) kind."""
    assert type(got) is type(expected)
    assert got == expected
    if isinstance(got, Record) and isinstance(expected, Record):
        pairs = [(got.record_id, expected.record_id), (got.pattern, expected.pattern)]
        pairs += [(got.values[k], expected.values[k]) for k in expected.values]
        assert list(got.values) == list(expected.values)  # column order
        for a, b in pairs:
            assert sys.getsizeof(a) == sys.getsizeof(b), (a, b)


# --- parse_row against the Python split, line by line ------------------------------------


# Built once: sampled_from copies its 25,000 codes each time it is made.
FIELD = st.lists(
    st.one_of(
        st.sampled_from(CODES),
        st.sampled_from(CODES),
        st.sampled_from(MULTI),
        st.integers(0x20, 0x7E),
        st.sampled_from([0xA2, 0xAD1D, 0x5C71, 0x09]),
    ),
    max_size=6,
)
# Units that make a line uncommon: a quote, CR, LF, a unit that is no code, any unit.
TROUBLE = st.lists(
    st.one_of(st.sampled_from([COMMA, QUOTE, CR, LF, *NO_CODES]), st.integers(0, 0xFFFF)),
    max_size=2,
)


@st.composite
def lines(draw: st.DrawFn, width: int) -> bytes:
    count = draw(st.sampled_from([width, width, width, width - 1, width + 1, 1]))
    fields = [draw(FIELD) for _ in range(count)]
    if draw(st.booleans()):
        where = draw(st.integers(0, len(fields) - 1))
        at = draw(st.integers(0, len(fields[where])))
        fields[where][at:at] = draw(TROUBLE)
    codes: list[int] = []
    for i, field in enumerate(fields):
        if i:
            codes.append(COMMA)
        codes += field
    tail = draw(st.sampled_from([b"", b"", b"", b"\x00"]))
    return units(*codes) + tail


@settings(max_examples=400, deadline=None)
@given(lines(len(SMALL) + 2), st.sampled_from([MinistryNotice, MunicipalityNotice]))
def test_parse_row_equals_the_python_split(line: bytes, record_type: type[Record]) -> None:
    expected = python_row(line, SMALL, record_type)
    got = PARSE(SMALL, record_type, line)
    assert_same(got, expected)


@settings(max_examples=100, deadline=None)
@given(lines(len(columns_for(MINISTRY)) + 2))
def test_parse_row_equals_the_python_split_at_full_width(line: bytes) -> None:
    columns = columns_for(MINISTRY)
    assert_same(PARSE(columns, MinistryNotice, line), python_row(line, columns, MinistryNotice))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            units(0x41, COMMA, 0x42, COMMA, 0x31, COMMA, COMMA, 0x33),
            ("A", "B", {"a": "1", "c": "3"}),
        ),
        # every field empty: the record of nothing (validation names what is missing)
        (units(COMMA, COMMA, COMMA, COMMA), ("", "", {})),
        # 々 (J+AD1D), an IVS spelling (J+BC2F) and an astral kanji (J+AEAC) in one field
        (
            units(0x41, COMMA, 0x42, COMMA, 0xAD1D, 0xBC2F, 0xAEAC, COMMA, 0xA2, COMMA, 0x5C71),
            ("A", "B", {"a": "々辻\U000e0103𠮷", "b": "¢", "c": "山"}),
        ),
        (units(0x41, COMMA, 0x42, COMMA, 0x09, COMMA, COMMA), ("A", "B", {"a": "\t"})),
        (units(0x41, COMMA, 0x42, COMMA, COMMA, COMMA), ("A", "B", {})),
        (units(0x41, COMMA, 0x42, COMMA, COMMA), None),  # one field short
        (units(0x41, COMMA, 0x42, COMMA, COMMA, COMMA, COMMA), None),  # one too many
        (units(0x41, COMMA, QUOTE, 0x42, QUOTE, COMMA, COMMA, COMMA), None),  # quoted: Python's
        (units(0x41, COMMA, 0x42, CR, COMMA, COMMA, COMMA), None),
        (units(0x41, COMMA, 0x42, LF, COMMA, COMMA, COMMA), None),
        (units(0x41, COMMA, 0x42, 0x3005, COMMA, COMMA, COMMA), None),  # J+3005: no code
        (units(0x41, COMMA, 0x42, 0xD842, 0xDFB7, COMMA, COMMA, COMMA), None),  # UTF-16, not Juki
        (units(0x41, COMMA, 0x42, COMMA, COMMA, COMMA) + b"\x00", None),  # odd length
        (b"", None),
    ],
)
def test_parse_row_known(line: bytes, expected: tuple[str, str, dict[str, str]] | None) -> None:
    want = None if expected is None else MinistryNotice(*expected)
    assert python_row(line, SMALL, MinistryNotice) == want  # the Python path says so
    assert_same(PARSE(SMALL, MinistryNotice, line), want)


@pytest.mark.parametrize("chars", [1, 200, 511, 512, 513, 1024, 5000])
@pytest.mark.parametrize("width", [2, 5, 127, 128, 129, 300])
def test_parse_row_beyond_its_stack_buffers(chars: int, width: int) -> None:
    # 512 units and 128 fields fit on the stack; longer lines and wider rows
    # take an allocation. Multi-unit spellings double the characters.
    columns = tuple(f"c{i}" for i in range(width - 2))
    body = [0xBC2F if i % 3 else 0x5C71 for i in range(chars)]
    fields = [[0x52, 0x31], [0x41]] + [[] for _ in columns]
    if columns:
        fields[-1] = body
    else:
        fields[0] = body
    codes: list[int] = []
    for i, field in enumerate(fields):
        codes += ([COMMA] if i else []) + field
    line = units(*codes)
    expected = python_row(line, columns, MunicipalityNotice)
    assert expected is not None
    assert_same(PARSE(columns, MunicipalityNotice, line), expected)
    assert PARSE(columns, MunicipalityNotice, line + units(COMMA)) is None


def test_parse_row_any_buffer() -> None:
    line = units(0x41, COMMA, 0x42, COMMA, 0xBC2F, COMMA, COMMA)
    expected = MinistryNotice("A", "B", {"a": "辻\U000e0103"})
    for data in (line, bytearray(line), memoryview(line)):
        assert PARSE(SMALL, MinistryNotice, data) == expected
    with pytest.raises(BufferError):
        PARSE(SMALL, MinistryNotice, memoryview(line + line)[::2])
    with pytest.raises(TypeError, match="bytes-like"):
        PARSE(SMALL, MinistryNotice, "A,B,,,")


class Unslotted:
    __slots__ = ("record_id",)


def test_parse_row_bad_arguments() -> None:
    line = units(0x41, COMMA, 0x42, COMMA, COMMA, COMMA)
    with pytest.raises(TypeError, match="5 positional"):
        _scan.parse_row(T.decode_units, T.decode_sequences, SMALL, MinistryNotice)
    with pytest.raises(ValueError, match="131072"):
        _scan.parse_row(T.decode_units[:-2], T.decode_sequences, SMALL, MinistryNotice, line)
    with pytest.raises(ValueError, match="sequences must be bytes"):
        _scan.parse_row(T.decode_units, T.decode_sequences[:-1], SMALL, MinistryNotice, line)
    with pytest.raises(TypeError, match="columns must be a tuple"):
        PARSE(list(SMALL), MinistryNotice, line)
    with pytest.raises(TypeError, match="record_type must be a type"):
        PARSE(SMALL, MinistryNotice("A", "B"), line)
    with pytest.raises(AttributeError):
        PARSE(SMALL, Unslotted, line)  # no slot for pattern: the record is dropped
    with pytest.raises(TypeError, match="unhashable"):
        PARSE(
            ("a", ["b"], "c"), MinistryNotice, units(0x41, COMMA, 0x42, COMMA, COMMA, 0x31, COMMA)
        )

    class NoNew:
        __new__ = None  # type: ignore[assignment]  # instances cannot be made

    with pytest.raises(TypeError):
        PARSE(SMALL, NoNew, line)


# --- a record made in C is a record --------------------------------------------------------


def test_a_record_from_c_is_indistinguishable_from_one_from_python() -> None:
    line = juki.encode("M-1,A,3" + "," * (len(columns_for(MINISTRY)) - 2) + ",辻\U000e0103")
    made = PARSE(columns_for(MINISTRY), MinistryNotice, line)
    python = python_row(line, columns_for(MINISTRY), MinistryNotice)
    assert python is not None and made is not None
    assert_same(made, python)
    assert repr(made) == repr(python)
    assert made.direction == MINISTRY
    assert dataclasses.asdict(made) == dataclasses.asdict(python)
    assert dataclasses.replace(made, pattern="B") == dataclasses.replace(python, pattern="B")
    assert pickle.loads(pickle.dumps(made)) == python
    assert copy.deepcopy(made) == python
    assert made.to_json() == python.to_json()
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.pattern = "B"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del made.values  # type: ignore[misc]
    with pytest.raises(TypeError, match="unhashable"):
        hash(made)
    assert made != MunicipalityNotice(made.record_id, made.pattern, dict(made.values))


def test_record_constructor_keeps_its_dataclass_contract() -> None:
    # The faster __init__ (slot descriptors instead of object.__setattr__).
    a, b = MinistryNotice("X", "A"), MinistryNotice("X", "A")
    assert a.values == {} and a.values is not b.values  # a new dict each time
    assert MinistryNotice(record_id="X", pattern="A", values={"sex": "1"}).values == {"sex": "1"}
    assert [f.name for f in dataclasses.fields(MinistryNotice)] == [
        "record_id",
        "pattern",
        "values",
    ]
    assert not hasattr(a, "__dict__")
    with pytest.raises(TypeError):
        MinistryNotice("X")  # type: ignore[call-arg]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.record_id = "Y"  # type: ignore[misc]


# --- whole files: the same with either scanner ----------------------------------------------

RECORDS = [
    MinistryNotice("M-1", "A", {"change_fact": "3", "name_kanji": "阮文安", "address": "東京都"}),
    MinistryNotice("M-2", "A", {"name_alphabet": 'SMITH, JOHN "JACK"', "name_kind": "1"}),
    MinistryNotice("M-3", "A", {"old_name_kanji": "髙橋", "name_kanji": "辻\U000e0103本𠮷"}),
    MinistryNotice("M-4", "A", {"address": "大阪府大阪市北区梅田１−1，２"}),
]


def read(data: bytes, scanner: str) -> tuple[list[object], tuple[int, int, int], object]:
    """Everything a caller sees of reading ``data``: rows, stats, and the file error if any."""
    rows: list[object] = []
    failure: object = None
    stats = (0, 0, 0)
    with codec.using_scanner(scanner):
        try:
            reader = NoticeReader(io.BytesIO(data), name="f.csv")
            for row in reader:
                rows.append(row)
            stats = (reader.stats.lines, reader.stats.records, reader.stats.row_errors)
        except NoticeFileError as exc:
            failure = (exc.code, str(exc), exc.message_ja, exc.line, exc.offset)
    return rows, stats, failure


def read_both(data: bytes) -> tuple[list[object], tuple[int, int, int], object]:
    fast = read(data, "c")
    slow = read(data, "python")
    assert fast[1:] == slow[1:]
    assert len(fast[0]) == len(slow[0])
    for got, expected in zip(fast[0], slow[0], strict=True):
        assert_same(got, expected)
    return fast


@st.composite
def files(draw: st.DrawFn) -> bytes:
    """A ministry-notice file: good rows, mutated rows, duplicates, damage at the end."""
    good = encode_notice_file(MINISTRY, RECORDS)
    head, *rows = good.split(units(CR, LF))[:-1]
    width = len(columns_for(MINISTRY)) + 2
    body = []
    for _ in range(draw(st.integers(0, 8))):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            body.append(draw(st.sampled_from(rows)))  # good, perhaps a duplicate id
        elif choice == 1:
            body.append(draw(lines(width)))
        else:
            row = bytearray(draw(st.sampled_from(rows)))
            at = 2 * draw(st.integers(0, len(row) // 2))
            row[at:at] = units(*draw(TROUBLE))
            body.append(bytes(row))
    end = draw(st.sampled_from([units(CR, LF)] * 5 + [units(LF), units(CR)]))
    data = head + b"".join(end + row for row in body) + end  # LF or CR alone: file errors
    return data[: len(data) - draw(st.sampled_from([0, 0, 0, 1, 2, 4]))]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files())
def test_files_read_the_same_with_either_scanner(data: bytes) -> None:
    read_both(data)


def test_good_file_reads_the_same_and_round_trips() -> None:
    rows, stats, failure = read_both(encode_notice_file(MINISTRY, RECORDS))
    assert rows == RECORDS and failure is None and stats == (5, 4, 0)


def test_rows_c_declines_get_the_python_explanation() -> None:
    width = len(columns_for(MINISTRY))
    data = juki.encode(",".join(header(MINISTRY)) + "\r\n")
    data += juki.encode("M-1,A" + "," * width + "\r\n")
    data += juki.encode("M-1,A" + "," * width + "\r\n")  # a duplicate id
    data += juki.encode(",A" + "," * width + "\r\n")  # no id
    data += juki.encode("M-2,A,3\r\n")  # too few fields
    data += juki.encode("M-3,A,") + units(0x3005) + juki.encode("," * (width - 1) + "\r\n")
    rows, stats, failure = read_both(data)
    kinds = [r.code if isinstance(r, RowError) else r.record_id for r in rows]
    assert kinds == ["M-1", "row.duplicate_id", "", "row.columns", "row.encoding"]
    assert failure is None and stats == (6, 2, 3)


# --- the Python path on its own ---------------------------------------------------------------


def test_python_scanner_has_no_row_parser_and_reads_the_same() -> None:
    with codec.using_scanner("python"):
        assert juki.row_parser(columns_for(MINISTRY), MinistryNotice) is None
        assert list(NoticeReader(io.BytesIO(encode_notice_file(MINISTRY, RECORDS)))) == RECORDS
    with codec.using_scanner("c"):
        assert juki.row_parser(columns_for(MINISTRY), MinistryNotice) is not None


def test_notice_file_suite_passes_with_the_fallback_forced() -> None:
    # Every hand-written case of test_noticefile.py, through the Python row parser.
    env = {**os.environ, codec.SCANNER_ENV: "python"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/common/test_noticefile.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:]


# --- no leaks ---------------------------------------------------------------------------------

LEAK_SCRIPT = r"""
import functools, sys
from common.items import MINISTRY, columns_for
from common.juki import _scan
from common.juki.tables import tables
from common.records import MinistryNotice

T = tables()
parse = functools.partial(_scan.parse_row, T.decode_units, T.decode_sequences)
decode = functools.partial(_scan.decode_run, T.decode_units, T.decode_sequences)
control = functools.partial(_scan.any_flagged, bytes(range(256)) * 256)
cols = columns_for(MINISTRY)
u = lambda *c: b"".join(x.to_bytes(2, "big") for x in c)
good = u(0x4D, 0x31, 0x2C, 0x41, *([0x2C, 0x5C71, 0xBC2F] * len(cols)))
long = u(0x4D, 0x31, 0x2C, 0x41, *([0x2C] + [0xAEAC] * 30) * len(cols))
cases = [
    lambda: parse(cols, MinistryNotice, good),
    lambda: parse(cols, MinistryNotice, long),
    lambda: parse(cols, MinistryNotice, good[:-2] + u(0x3005)),
    lambda: parse(cols, MinistryNotice, good + u(0x2C)),
    lambda: parse(cols, MinistryNotice, good + b"\x00"),
    lambda: parse(("a", ["b"], "c"), MinistryNotice, u(0x41, 0x2C, 0x42, 0x2C, 0x2C, 0x31, 0x2C)),
    lambda: parse(cols, int, good),
    lambda: parse(list(cols), MinistryNotice, good),
    lambda: parse(cols, MinistryNotice, "text"),
    lambda: decode(u(0x61, 0xAD1D, 0xBC2F, 0xAEAC, 0x62) * 50, 0),
    lambda: decode(u(0x61, 0x62, 0xAEAC) * 3000, 0),
    lambda: decode(u(0x5C71, 0xBC2F, 0x3005, 0x61), 0),
    lambda: decode(u(0x61, 0xAD1D), 2**63),
    lambda: decode("text", 0),
    lambda: _scan.decode_run(T.decode_units, b"short", b"", 0),
    lambda: control(["abc", "山田", "𠮷", "\x01"]),
    lambda: control({"a": "山", "b": "x"}.values()),
    lambda: control(["a", 1]),
    lambda: control(5),
]

"""


def test_no_leaks_in_a_hundred_thousand_calls() -> None:
    # Every path of both functions, 10^5 times each, in a process of its own:
    # Python's allocated blocks stay put and so does the resident set.
    assert_no_leaks(LEAK_SCRIPT)
