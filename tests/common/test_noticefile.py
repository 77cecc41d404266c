"""The notice file format: round trips, streaming, and every kind of bad input."""

from __future__ import annotations

import io
import json
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import common  # noqa: F401 - registers the codec
from common import juki
from common.errors import NoticeFileError, NoticeWriteError
from common.items import MINISTRY, MUNICIPALITY, columns_for
from common.noticefile import (
    FORMAT_TAGS,
    NoticeReader,
    RowError,
    encode_notice_file,
    header,
    read_jsonl,
    read_unicode_csv,
    records_to_jsonl,
)
from common.records import MinistryNotice, MunicipalityNotice


def ministry(record_id: str, **values: str) -> MinistryNotice:
    base = {
        "change_fact": "3",
        "name_kind": "3",
        "name_alphabet": "NGUYEN VAN AN",
        "name_kanji": "阮文安",
        "address_code": "131016",
        "address": "東京都千代田区霞が関一丁目1番1号",
    }
    base.update(values)
    return MinistryNotice(record_id, "A", {k: v for k, v in base.items() if v})


def read_all(data: bytes, name: str = "t.csv") -> tuple[str, list]:
    reader = NoticeReader(io.BytesIO(data), name=name)
    return reader.direction, list(reader)


class OneByteStream:
    """A stream that hands out one byte per read: every boundary split happens."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.data[self.pos : self.pos + 1]
        self.pos += len(chunk)
        return chunk


RECORDS = [
    ministry("M-1"),
    ministry("M-2", name_alphabet='SMITH, JOHN "JACK"', name_kind="1", name_kanji=""),
    ministry("M-3", old_name_kanji="髙橋", name_kanji="辻󠄃本"),
    ministry("M-4", address="大阪府大阪市北区梅田１−1，２"),
]


def test_header_names_format_version_and_columns():
    row = header(MINISTRY)
    assert row[0] == FORMAT_TAGS[MINISTRY] == "renkei-ministry-notice-v1"
    assert row[1] == "pattern"
    assert row[2:] == columns_for(MINISTRY)
    assert "old_name_kanji" in row and "resident_category" in row
    assert "previous_address_code" in header(MUNICIPALITY)
    assert "resident_category" not in header(MUNICIPALITY)


def test_round_trip_file_records_file_is_byte_identical():
    data = encode_notice_file(MINISTRY, RECORDS)
    direction, rows = read_all(data)
    assert direction == MINISTRY
    assert rows == RECORDS
    assert encode_notice_file(MINISTRY, rows) == data


def test_file_is_juki_code_crlf_and_quotes_only_when_needed():
    data = encode_notice_file(MINISTRY, RECORDS[:2])
    text = data.decode("juki")
    lines = text.split("\r\n")
    assert lines[-1] == ""  # every line, the last too, ends in CR LF
    assert "\n" not in "".join(lines)
    assert lines[1].startswith("M-1,A,3,,,,,3,NGUYEN VAN AN,")
    assert '"SMITH, JOHN ""JACK"""' in lines[2]
    assert data[:4] == b"\x00r\x00e"  # two bytes per character, big-endian, no BOM


def test_round_trip_through_unicode_json_is_lossless():
    data = encode_notice_file(MINISTRY, RECORDS)
    _, rows = read_all(data)
    out = io.StringIO()
    records_to_jsonl(MINISTRY, rows, out)
    text = out.getvalue()
    assert json.loads(text.splitlines()[0]) == {"format": "renkei-ministry-notice-v1"}
    assert json.loads(text.splitlines()[3])["name_kanji"] == "辻󠄃本"
    direction, again = read_jsonl(io.StringIO(text))
    assert direction == MINISTRY
    assert encode_notice_file(direction, list(again)) == data


def test_empty_batch_round_trips_with_its_direction():
    data = encode_notice_file(MUNICIPALITY, [])
    direction, rows = read_all(data)
    assert (direction, rows) == (MUNICIPALITY, [])
    out = io.StringIO()
    records_to_jsonl(MUNICIPALITY, rows, out)
    direction, again = read_jsonl(io.StringIO(out.getvalue()))
    assert encode_notice_file(direction, list(again)) == data


def test_reader_streams_through_one_byte_reads():
    data = encode_notice_file(MINISTRY, RECORDS)
    reader = NoticeReader(OneByteStream(data), name="slow")  # type: ignore[arg-type]
    assert list(reader) == RECORDS


def test_reading_a_large_file_uses_flat_memory():
    record = ministry("X", address="北海道札幌市中央区北一条西二丁目" * 3)
    rows = [record.__class__(f"R{i}", "A", record.values) for i in range(40_000)]
    data = encode_notice_file(MINISTRY, rows)
    assert len(data) > 10_000_000
    tracemalloc.start()
    count = sum(1 for _ in NoticeReader(io.BytesIO(data)))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 40_000
    assert peak < 8_000_000  # a few 1 MiB chunks and the seen-id set; not the 10 MB file


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "file.empty"),
        (b"\xfe\xff" + encode_notice_file(MINISTRY, []), "file.bom"),
        (b"renkei-ministry-notice-v1,pattern\r\n", "file.encoding"),
        (juki.encode("renkei-ministry-notice-v2,pattern\r\n"), "file.version"),
        (juki.encode("record_id,pattern\r\n"), "file.header"),
        (juki.encode(",".join(header(MINISTRY)[:-1]) + "\r\n"), "file.header"),
        (juki.encode(",".join(header(MINISTRY)) + "\n"), "file.line_end"),
    ],
    ids=["empty", "bom", "utf8", "version", "not-notice", "missing-column", "lf-header"],
)
def test_file_level_errors_are_clear(data: bytes, code: str):
    with pytest.raises(NoticeFileError) as info:
        read_all(data, "bad.csv")
    assert info.value.code == code
    assert "bad.csv" in str(info.value)
    assert info.value.message_ja


def test_truncated_file_yields_good_rows_then_fails():
    data = encode_notice_file(MINISTRY, RECORDS)
    cut = data[: len(data) - 10]  # inside the last record, at an even offset
    reader = NoticeReader(io.BytesIO(cut))
    seen = []
    with pytest.raises(NoticeFileError) as info:
        for row in reader:
            seen.append(row)
    assert info.value.code == "file.truncated"
    assert seen == RECORDS[:-1]
    assert info.value.line == len(RECORDS) + 1


def test_odd_byte_count_is_reported_with_offset():
    data = encode_notice_file(MINISTRY, RECORDS) + b"\x00"
    with pytest.raises(NoticeFileError) as info:
        read_all(data)
    assert info.value.code == "file.odd_length"
    assert info.value.offset == len(data) - 1


def test_lf_only_line_ends_are_named():
    text = (
        ",".join(header(MINISTRY))
        + "\r\n"
        + ("M-1,A" + "," * len(columns_for(MINISTRY)) + "\n") * 2000
    )
    with pytest.raises(NoticeFileError) as info:
        read_all(juki.encode(text))
    assert info.value.code == "file.line_end"


def test_bad_rows_are_reported_and_reading_goes_on():
    good = encode_notice_file(MINISTRY, RECORDS[:1])
    head = juki.encode(",".join(header(MINISTRY)) + "\r\n")
    bad_width = juki.encode("M-9,A,3\r\n")
    bad_code = (
        juki.encode("M-8,A,")
        + b"\xac\x00"
        + juki.encode("," * (len(columns_for(MINISTRY)) - 1) + "\r\n")
    )
    bad_quote = juki.encode('M-7,A,"3' + "," * (len(columns_for(MINISTRY)) - 1) + "\r\n")
    bare_cr = juki.encode("M-6,A,3\r" + "," * (len(columns_for(MINISTRY)) - 1) + "\r\n")
    data = head + bad_width + bad_code + bad_quote + bare_cr + good[len(head) :] + good[len(head) :]
    _, rows = read_all(data)
    errors = [r for r in rows if isinstance(r, RowError)]
    assert [(e.line, e.code) for e in errors] == [
        (2, "row.columns"),
        (3, "row.encoding"),
        (4, "row.quote"),
        (5, "row.line_end"),
        (7, "row.duplicate_id"),
    ]
    assert "J+AC00" in errors[1].message
    assert (errors[1].record_id, errors[1].column) == ("M-8", "change_fact")
    assert rows[4] == RECORDS[0]
    assert all(e.message_ja for e in errors)


@pytest.mark.parametrize(
    ("before", "after", "record_id", "column", "position"),
    [
        ("M-1,A,3,,", "", "M-1", "report_date", 1),
        ("M-1,A,3,1,20261127,", "", "M-1", "processing_date", 1),
        ("M", "-1,A", None, "record_id", 2),
        ('"M,1",A,"x,""', '"', "M,1", "change_fact", 4),  # quoted: the value's characters
        ("M-1,A" + "," * len(columns_for(MINISTRY)) + ",", "", "M-1", None, 1),  # one too many
    ],
)
def test_a_bad_unit_is_named_by_record_item_and_character(
    before, after, record_id, column, position
):
    line = juki.encode(before) + b"\xac\x00" + juki.encode(after)  # J+AC00: Hangul, no code
    data = juki.encode(",".join(header(MINISTRY)) + "\r\n") + line + juki.encode("\r\n")
    _, rows = read_all(data)
    (error,) = rows
    assert error.code == "row.encoding"
    assert (error.record_id, error.column) == (record_id, column)
    assert f"character {position}: J+AC00" in error.message
    assert f"{position} 文字目（J+AC00）" in error.message_ja
    assert (column or "58 番目の項目") in error.message_ja


def test_writer_refuses_line_breaks_and_unencodable_characters_naming_them():
    with pytest.raises(NoticeWriteError) as info:
        encode_notice_file(MINISTRY, [ministry("M-1", address="東京都\r\n千代田区")])
    assert "M-1" in str(info.value) and "address" in str(info.value)
    with pytest.raises(NoticeWriteError) as info:
        encode_notice_file(MINISTRY, [ministry("M-2"), ministry("M-3", name_kanji="김민준")])
    message = str(info.value)
    assert "M-3" in message and "name_kanji" in message and "김" in message
    with pytest.raises(NoticeWriteError):
        encode_notice_file(MINISTRY, [MunicipalityNotice("C-1", "A", {})])


def test_unicode_csv_input_shares_the_header_and_rows():
    data = encode_notice_file(MINISTRY, RECORDS)
    text = "\ufeff" + data.decode("juki")
    direction, rows = read_unicode_csv(io.StringIO(text, newline=""))
    assert direction == MINISTRY
    assert list(rows) == RECORDS


def test_jsonl_rejects_unknown_keys_and_non_strings_without_dropping_them():
    lines = [
        json.dumps({"format": FORMAT_TAGS[MUNICIPALITY]}),
        json.dumps({"record_id": "C-1", "pattern": "B", "nickname": "x"}),
        json.dumps({"record_id": "C-2", "pattern": "B", "sex": 1}),
        "not json",
        json.dumps({"record_id": "C-3", "pattern": "B", "sex": "1"}),
    ]
    direction, rows = read_jsonl(io.StringIO("\n".join(lines) + "\n"))
    rows = list(rows)
    assert direction == MUNICIPALITY
    assert [getattr(r, "code", None) for r in rows] == [
        "row.unknown_key",
        "row.type",
        "row.json",
        None,
    ]
    assert rows[0].column == "nickname"
    assert rows[3] == MunicipalityNotice("C-3", "B", {"sex": "1"})


def test_jsonl_without_format_line_needs_a_direction():
    with pytest.raises(NoticeFileError):
        read_jsonl(io.StringIO('{"record_id": "C-1"}\n'))
    direction, rows = read_jsonl(
        io.StringIO('{"record_id": "C-1", "pattern": "B"}\n'), direction=MUNICIPALITY
    )
    assert list(rows) == [MunicipalityNotice("C-1", "B", {})]


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=400), cut=st.integers(min_value=0, max_value=4))
def test_arbitrary_bytes_never_crash_the_reader(body: bytes, cut: int):
    """Whatever follows a good header: records, row errors or one NoticeFileError — nothing else."""
    data = juki.encode(",".join(header(MUNICIPALITY)) + "\r\n") + body
    data = data[: len(data) - cut] if cut else data
    try:
        for row in NoticeReader(io.BytesIO(data)):
            assert isinstance(row, MunicipalityNotice | RowError)
    except NoticeFileError as exc:
        assert exc.code.startswith("file.")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_files_are_refused_cleanly(data: bytes):
    try:
        list(NoticeReader(io.BytesIO(data)))
    except NoticeFileError as exc:
        assert exc.message_ja
