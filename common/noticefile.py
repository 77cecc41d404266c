"""The notice file: one batch of notices, CSV (RFC 4180) in 住基統一文字コード.

Layout (docs/format.md is the contract):

* the whole file is Juki code, two bytes per character, big-endian, no BOM;
* line 1 is the header: the format tag (``renkei-ministry-notice-v1`` or
  ``renkei-municipality-notice-v1``), then ``pattern``, then the item columns
  of that direction in catalogue order.  The tag is also the id of the first
  column, whose values are the record ids;
* one record per line, every line (the last too) ending in CR LF;
* a field is quoted only when it holds a comma or a double quote; values never
  hold CR or LF.

The reader streams: it holds one line at a time, so a file of any size is read
in constant memory.  A row that cannot be read (bad code unit, wrong column
count, stray quote) becomes a :class:`RowError` and reading goes on; what makes
the whole file unreadable (no header, unknown version, BOM, truncation) raises
:class:`~common.errors.NoticeFileError`.  The same header and rows are
accepted in Unicode (UTF-8 CSV and JSON Lines) for the ministry's own systems
and for vendors' tools; those paths share the row parser.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import compress, repeat
from typing import BinaryIO, TextIO

from . import juki
from .errors import NoticeFileError, NoticeWriteError
from .items import DIRECTIONS, MINISTRY, MUNICIPALITY, columns_for
from .records import RECORD_TYPES, Record

FORMAT_VERSION = 1
FORMAT_TAGS: dict[str, str] = {
    MINISTRY: f"renkei-ministry-notice-v{FORMAT_VERSION}",
    MUNICIPALITY: f"renkei-municipality-notice-v{FORMAT_VERSION}",
}
_TAG_PREFIXES = {"renkei-ministry-notice-v": MINISTRY, "renkei-municipality-notice-v": MUNICIPALITY}

CRLF = b"\x00\r\x00\n"
#: A line longer than this (in characters) is not a notice record; it usually
#: means LF-only line ends or a file that is not a notice file at all.
MAX_LINE_CHARS = 16_384
_CHUNK = 1 << 20


def header(direction: str) -> tuple[str, ...]:
    return (FORMAT_TAGS[direction], "pattern", *columns_for(direction))


@dataclass(frozen=True, slots=True)
class RowError:
    """A line that could not be read as a record; the rest of the file still is."""

    line: int
    code: str
    message: str  # English, for logs
    message_ja: str  # for municipal staff
    record_id: str | None = None
    column: str | None = None


@dataclass(slots=True)
class ReadStats:
    lines: int = 0
    records: int = 0
    row_errors: int = 0


def detect_direction(tag: str, *, name: str = "<stream>") -> str:
    """The direction a header's format tag names; a clear error for any other tag."""
    for prefix, direction in _TAG_PREFIXES.items():
        if tag.startswith(prefix):
            version = tag[len(prefix) :]
            if version != str(FORMAT_VERSION):
                raise NoticeFileError(
                    f"unknown format version {version!r} (this program reads version "
                    f"{FORMAT_VERSION})",
                    message_ja=f"ファイル形式の版 {version} には対応していません（対応している版: {FORMAT_VERSION}）",
                    code="file.version",
                    name=name,
                    line=1,
                )
            return direction
    raise NoticeFileError(
        f"not a notice file: the header starts with {tag[:40]!r}, expected "
        f"{FORMAT_TAGS[MINISTRY]!r} or {FORMAT_TAGS[MUNICIPALITY]!r}",
        message_ja="通知ファイルではありません（1行目の見出しが通知ファイルの形式と一致しません）",
        code="file.header",
        name=name,
        line=1,
    )


def check_header(fields: list[str], *, name: str = "<stream>") -> str:
    """Validate a header row; returns the direction."""
    direction = detect_direction(fields[0] if fields else "", name=name)
    expected = header(direction)
    if tuple(fields) != expected:
        for index, (got, want) in enumerate(zip(fields, expected, strict=False)):
            if got != want:
                where = f"column {index + 1}: {got!r}, expected {want!r}"
                break
        else:
            where = f"{len(fields)} columns, expected {len(expected)}"
        raise NoticeFileError(
            f"the header does not match format {expected[0]}: {where}",
            message_ja=f"1行目の見出しが形式 {expected[0]} と一致しません（{where}）",
            code="file.header",
            name=name,
            line=1,
        )
    return direction


def split_fields(line: str) -> list[str]:
    """One CSV line (without its line end) -> fields.  Raises ``csv.Error``."""
    if '"' not in line:
        return line.split(",")
    return next(csv.reader((line,), strict=True))


class RowParser:
    """Turns the fields of one line into a record or a :class:`RowError`."""

    def __init__(self, direction: str, *, name: str = "<stream>"):
        self.direction = direction
        self.name = name
        self.record_type = RECORD_TYPES[direction]
        self.columns = columns_for(direction)
        self.width = len(self.columns) + 2
        self.seen: set[str] = set()

    def parse_line(self, line_no: int, line: str) -> Record | RowError:
        if "\r" in line or "\n" in line:
            return RowError(
                line_no,
                "row.line_end",
                "a bare CR or LF inside the line; records end in CR LF and values hold no line breaks",
                "行の途中に改行文字（CR または LF）があります。改行は各行末の CR LF のみです",
            )
        try:
            fields = split_fields(line)
        except csv.Error as exc:
            return RowError(
                line_no,
                "row.quote",
                f"bad quoting: {exc}",
                'ダブルクォート（"）の使い方が正しくありません',
            )
        return self.parse_fields(line_no, fields)

    def parse_fields(self, line_no: int, fields: list[str]) -> Record | RowError:
        if len(fields) != self.width:
            record_id = fields[0] if fields and fields[0] else None
            return RowError(
                line_no,
                "row.columns",
                f"{len(fields)} fields, expected {self.width}",
                f"項目の数が {len(fields)} 個です（正しくは {self.width} 個）",
                record_id=record_id,
            )
        values = dict(compress(zip(self.columns, fields[2:], strict=True), fields[2:]))  # non-empty
        return self.make(line_no, fields[0], fields[1], values)

    def make(
        self, line_no: int, record_id: str, pattern: str, values: dict[str, str]
    ) -> Record | RowError:
        """The record, unless its id was seen before in this file.

        ``values``: the non-empty columns, in column order.
        """
        if record_id:
            if record_id in self.seen:
                return RowError(
                    line_no,
                    "row.duplicate_id",
                    f"record id {record_id!r} appears twice in the file",
                    f"レコード番号 {record_id} がファイル内で重複しています",
                    record_id=record_id,
                )
            self.seen.add(record_id)
        return self.record_type(record_id, pattern, values)


def _binary_lines(stream: BinaryIO, name: str) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, line without CR LF) for each CR LF-terminated line."""
    buf = b""
    base = 0  # file offset of buf[0]; always the start of a line, so even
    line_no = 0
    max_bytes = 2 * MAX_LINE_CHARS
    checked = False
    while True:
        chunk = stream.read(_CHUNK)
        if not chunk:
            break
        buf = buf + chunk if buf else chunk
        if not checked:
            if len(buf) < 4:
                continue
            _check_start(buf, name)
            checked = True
        start = 0
        search = 0
        while True:
            end = buf.find(CRLF, search)
            if end < 0:
                break
            if (end - start) % 2:  # CR LF bytes straddling two code units: not a line end
                search = end + 1
                continue
            line_no += 1
            yield line_no, base + start, buf[start:end]
            start = search = end + 4
        if len(buf) - start > max_bytes:
            raise _long_line(buf[start:], name, line_no + 1, base + start)
        base += start
        buf = buf[start:]
    if buf and not checked:
        _check_start(buf, name)
    if buf:
        if len(buf) % 2:
            raise NoticeFileError(
                f"the file has an odd number of bytes ({base + len(buf)}); every character is "
                "two bytes, so it was cut short or is not in Juki code",
                message_ja="ファイルのバイト数が奇数です。途中で切れているか、住基統一文字コードではありません",
                code="file.odd_length",
                name=name,
                line=line_no + 1,
                offset=base + len(buf) - 1,
            )
        if _has_lf(buf):
            raise _lf_only(name, line_no + 1, base)
        raise NoticeFileError(
            "the last line does not end in CR LF: the file was cut short (truncated)",
            message_ja="最終行が改行（CR LF）で終わっていません。ファイルが途中で切れている可能性があります",
            code="file.truncated",
            name=name,
            line=line_no + 1,
            offset=base,
        )


def _has_lf(data: bytes) -> bool:
    """Whether ``data`` (starting at a unit) holds an LF unit, J+000A."""
    at = data.find(b"\x00\n")
    while at >= 0 and at % 2:  # the bytes of two other units
        at = data.find(b"\x00\n", at + 1)
    return at >= 0


def _lf_only(name: str, line_no: int, offset: int) -> NoticeFileError:
    """LF without CR: the commonest conversion slip, named as such rather than as a cut."""
    return NoticeFileError(
        "line ends are LF only; notice files end every line in CR LF",
        message_ja="改行コードが LF のみです。通知ファイルの改行は CR LF です",
        code="file.line_end",
        name=name,
        line=line_no,
        offset=offset,
    )


def _long_line(data: bytes, name: str, line_no: int, offset: int) -> NoticeFileError:
    if _has_lf(data):
        return _lf_only(name, line_no, offset)
    return NoticeFileError(
        f"a line longer than {MAX_LINE_CHARS} characters: not a notice file",
        message_ja=f"{MAX_LINE_CHARS} 文字を超える行があります。通知ファイルではありません",
        code="file.long_line",
        name=name,
        line=line_no,
        offset=offset,
    )


def _check_start(first: bytes, name: str) -> None:
    if first.startswith((b"\xfe\xff", b"\xff\xfe", b"\xef\xbb\xbf")):
        raise NoticeFileError(
            "the file starts with a byte order mark (BOM); notice files have none",
            message_ja="ファイルの先頭に BOM があります。通知ファイルには BOM を付けません",
            code="file.bom",
            name=name,
            line=1,
            offset=0,
        )
    if first[:2] == b"re" or (len(first) >= 2 and first[0] != 0):
        raise NoticeFileError(
            "the file is not in Juki code (it looks like ASCII/UTF-8 text); convert it with "
            "`renkei-format encode`",
            message_ja="住基統一文字コードのファイルではありません（UTF-8 等の可能性があります）",
            code="file.encoding",
            name=name,
            line=1,
            offset=0,
        )


class NoticeReader:
    """Streams records out of a notice file in Juki code.

    Iterating yields :class:`Record` or :class:`RowError` in file order and
    raises :class:`NoticeFileError` when the file as a whole is unreadable —
    possibly after some rows, for a truncated file, so callers that need all
    or nothing collect inside a transaction.
    """

    def __init__(self, stream: BinaryIO, *, name: str = "<stream>"):
        self.name = name
        self.stats = ReadStats()
        self._lines = _binary_lines(stream, name)
        self.direction = self._read_header()

    def _read_header(self) -> str:
        try:
            line_no, _offset, raw = next(self._lines)
        except StopIteration:
            raise NoticeFileError(
                "the file is empty (no header line)",
                message_ja="ファイルが空です（見出し行がありません）",
                code="file.empty",
                name=self.name,
            ) from None
        try:
            text = juki.decode(raw)
        except UnicodeDecodeError as exc:
            raise NoticeFileError(
                f"the header is not valid Juki code: {exc}",
                message_ja="1行目（見出し）に住基統一文字コードとして読めない文字があります",
                code="file.encoding",
                name=self.name,
                line=1,
            ) from None
        try:
            fields = split_fields(text)
        except csv.Error:
            fields = [text]
        direction = check_header(fields, name=self.name)
        self.stats.lines = line_no
        self._parser = RowParser(direction, name=self.name)
        return direction

    def __iter__(self) -> Iterator[Record | RowError]:
        parser = self._parser
        stats = self.stats
        # The common line (no quotes, no stray line breaks, the right width, a new id) is
        # handled inline, by the C row parser when the juki extension is built; anything
        # else goes through the Python parser, which explains what is wrong.
        columns, width, seen, make = parser.columns, parser.width, parser.seen, parser.record_type
        fast = juki.row_parser(columns, make)
        decode = juki.decode
        for line_no, offset, raw in self._lines:
            stats.lines = line_no
            if fast is not None:
                record = fast(raw)
                if record is not None:
                    record_id = record.record_id
                    if record_id and record_id not in seen:
                        seen.add(record_id)
                        stats.records += 1
                        yield record
                        continue
            try:
                text = decode(raw)
            except UnicodeDecodeError as exc:
                result: Record | RowError = _encoding_error(line_no, offset, raw, exc, columns)
            else:
                if '"' in text or "\r" in text or "\n" in text:
                    result = parser.parse_line(line_no, text)
                else:
                    fields = text.split(",")
                    record_id = fields[0]
                    if len(fields) != width or not record_id or record_id in seen:
                        result = parser.parse_fields(line_no, fields)
                    else:
                        seen.add(record_id)
                        values = fields[2:]
                        result = make(
                            record_id,
                            fields[1],
                            # The width was checked above: zip need not check it again.
                            dict(compress(zip(columns, values, strict=False), values)),
                        )
            if isinstance(result, RowError):
                stats.row_errors += 1
            else:
                stats.records += 1
            yield result


def _encoding_error(
    line_no: int, offset: int, raw: bytes, exc: UnicodeDecodeError, columns: tuple[str, ...]
) -> RowError:
    """A row with a unit that is not Juki: where it is, down to the record and the item.

    Everything before the first bad unit decodes, so its commas (outside
    quotes) say which field the unit is in, and the first field, when
    complete, is the record id.
    """
    at = exc.start - exc.start % 2
    unit = raw[at : at + 2].hex().upper()
    before = juki.decode(raw[:at])
    field, field_start, quoted, record_id = 0, 0, False, None
    for i, char in enumerate(before):
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            if field == 0:
                record_id = before[:i].strip('"') or None
            field, field_start = field + 1, i + 1
    names = ("record_id", "pattern", *columns)
    column = names[field] if field < len(names) else None
    written = before[field_start:]
    if written.startswith('"'):  # the value's own characters, as the sender means them
        written = written[1:].replace('""', '"')
    position = len(written) + 1
    where = f"column {column}" if column else f"field {field + 1}"
    where_ja = f"項目 {column} の" if column else f"{field + 1} 番目の項目の"
    return RowError(
        line_no,
        "row.encoding",
        f"byte {offset + at}, {where}, character {position}: J+{unit} is not a Juki character "
        f"({exc.reason})",
        f"{where_ja} {position} 文字目（J+{unit}）は住基統一文字コードの文字ではありません",
        record_id=record_id,
        column=column,
    )


def read_notice_file(stream: BinaryIO, *, name: str = "<stream>") -> NoticeReader:
    return NoticeReader(stream, name=name)


# --- Unicode inputs: UTF-8 CSV and JSON Lines -----------------------------------------------


def read_unicode_csv(
    stream: TextIO, *, name: str = "<stream>"
) -> tuple[str, Iterator[Record | RowError]]:
    """A notice file's header and rows, in UTF-8 text (the ministry's import, vendors' tools).

    ``stream`` must be opened with ``newline=""``.  Returns the direction and
    an iterator of records and row errors.
    """
    reader = csv.reader(stream, strict=True)
    try:
        head = next(reader)
    except StopIteration:
        raise NoticeFileError(
            "the file is empty (no header line)",
            message_ja="ファイルが空です（見出し行がありません）",
            code="file.empty",
            name=name,
        ) from None
    except csv.Error as exc:
        raise NoticeFileError(
            f"the header cannot be read: {exc}",
            message_ja="見出し行を読めません",
            code="file.header",
            name=name,
            line=1,
        ) from None
    if head and head[0].startswith("\ufeff"):
        head[0] = head[0][1:]  # UTF-8 BOM from spreadsheet tools: harmless in Unicode input
    direction = check_header(head, name=name)
    parser = RowParser(direction, name=name)

    def rows() -> Iterator[Record | RowError]:
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield RowError(
                    reader.line_num,
                    "row.quote",
                    f"bad quoting: {exc}",
                    'ダブルクォート（"）の使い方が正しくありません',
                )
                continue
            joined = "".join(fields)  # one scan of the row, not one per field
            if "\r" in joined or "\n" in joined:
                yield RowError(
                    reader.line_num,
                    "row.line_end",
                    "a value holds a line break",
                    "項目の値に改行が含まれています",
                    record_id=fields[0] or None,
                )
                continue
            yield parser.parse_fields(reader.line_num, fields)

    return direction, rows()


def read_jsonl(
    stream: TextIO, *, direction: str | None = None, name: str = "<stream>"
) -> tuple[str, Iterator[Record | RowError]]:
    """Records from JSON Lines: an optional first line ``{"format": TAG}``, then one object per record.

    Every value must be a string; keys must be ``record_id``, ``pattern`` or a
    column of the direction (anything else is a row error, never dropped).
    """
    first_line = stream.readline()
    line_no = 1
    pending: list[tuple[int, str]] = []
    if first_line.strip():
        try:
            first = json.loads(first_line)
        except json.JSONDecodeError:
            first = None
        if isinstance(first, dict) and set(first) == {"format"}:
            direction = detect_direction(str(first["format"]), name=name)
        else:
            pending.append((1, first_line))
    if direction is None:
        raise NoticeFileError(
            'JSON Lines input needs a first line {"format": TAG} or an explicit direction',
            message_ja="JSON Lines の1行目に形式（format）がありません",
            code="file.header",
            name=name,
            line=1,
        )
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}")
    parser = RowParser(direction, name=name)
    known = {"record_id", "pattern", *parser.columns}
    order = parser.columns
    ordered: dict[tuple[str, ...], bool] = {}  # key order seen -> whether it is column order

    def rows() -> Iterator[Record | RowError]:
        nonlocal line_no
        lines: Iterable[tuple[int, str]] = pending
        for number, text in _chain(lines, stream, line_no):
            if not text or text.isspace():  # what strip() would empty, without copying the line
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                yield RowError(number, "row.json", f"not JSON: {exc}", "JSON として読めません")
                continue
            if not isinstance(obj, dict):
                yield RowError(
                    number, "row.json", "not a JSON object", "JSON のオブジェクトではありません"
                )
                continue
            if not obj.keys() <= known:
                unknown = sorted(set(obj) - known)
                yield RowError(
                    number,
                    "row.unknown_key",
                    f"unknown keys: {', '.join(unknown)}",
                    f"不明な項目名があります: {', '.join(unknown)}",
                    record_id=_str_or_none(obj.get("record_id")),
                    column=unknown[0],
                )
                continue
            if not set(map(type, obj.values())) <= _STR_TYPES:  # one C-level pass over the values
                bad = sorted(k for k, v in obj.items() if v is not None and not isinstance(v, str))
                if bad:
                    yield RowError(
                        number,
                        "row.type",
                        f"values must be strings: {', '.join(bad)}",
                        f"値は文字列で指定してください: {', '.join(bad)}",
                        record_id=_str_or_none(obj.get("record_id")),
                        column=bad[0],
                    )
                    continue
            keys = tuple(obj)
            in_order = ordered.get(keys)
            if in_order is None:
                if len(ordered) >= _SHAPE_LIMIT:
                    ordered.clear()
                in_order = ordered[keys] = _in_column_order(keys, parser.columns)
            if in_order:
                # The keys come in column order (as this module writes them): the values are
                # the object itself, without the two ids and the empty values.
                values = dict(obj)
                record_id = values.pop("record_id", None) or ""
                pattern = values.pop("pattern", None) or ""
                if not all(values.values()):
                    values = {k: v for k, v in values.items() if v}
                result = parser.make(number, record_id, pattern, values)
            else:
                fields = [obj.get("record_id") or "", obj.get("pattern") or ""]
                fields.extend(obj.get(c) or "" for c in order)
                result = parser.parse_fields(number, fields)
            # JSON writes a line break inside a string as an escape: no backslash, no line break.
            if "\\" in text and not isinstance(result, RowError):
                record_id = obj.get("record_id") or ""
                texts = [record_id, obj.get("pattern") or "", *(obj.get(c) or "" for c in order)]
                newline = next((f for f in texts if "\r" in f or "\n" in f), None)
                if newline is not None:
                    result = RowError(
                        number,
                        "row.line_end",
                        "a value holds a line break",
                        "項目の値に改行が含まれています",
                        record_id=record_id or None,
                    )
            yield result

    return direction, rows()


_STR_TYPES = frozenset({str, type(None)})
_SHAPE_LIMIT = 4_096


def _in_column_order(keys: tuple[str, ...], columns: tuple[str, ...]) -> bool:
    """Whether ``keys`` are distinct, each an id or a column, in the order of the file's columns."""
    position = {name: i for i, name in enumerate(("record_id", "pattern", *columns))}
    places = [position.get(key, -1) for key in keys]
    return -1 not in places and places == sorted(set(places))


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _chain(
    first: Iterable[tuple[int, str]], stream: TextIO, last: int
) -> Iterator[tuple[int, str]]:
    yield from first
    number = last
    for text in stream:
        number += 1
        yield number, text


# --- Writing -------------------------------------------------------------------------------------


def _quote(value: str) -> str:
    if "," in value or '"' in value:
        return '"' + value.replace('"', '""') + '"'
    return value


def format_row(fields: Iterable[str]) -> str:
    """One CSV line with its CR LF; a field is quoted only when it holds a comma or a quote."""
    if not isinstance(fields, (list, tuple)):
        fields = list(fields)
    line = ",".join(fields)
    # The common row needs no quoting: no quote anywhere, and no comma but the separators.
    if '"' not in line and line.count(",") == len(fields) - 1:
        return line + "\r\n"
    return ",".join(_quote(f) for f in fields) + "\r\n"


def record_fields(record: Record) -> list[str]:
    return [
        record.record_id,
        record.pattern,
        *map(record.values.get, columns_for(record.direction), repeat("")),
    ]


class NoticeWriter:
    """Writes a notice file in canonical form (the form :class:`NoticeReader` round-trips).

    Text is buffered and encoded in blocks.  A record that cannot be encoded
    raises :class:`NoticeWriteError` naming record, column and character; the
    caller writes to a temporary file and renames only on success, so no half
    file is ever visible.
    """

    def __init__(self, stream: BinaryIO, direction: str, *, block: int = 512):
        self.stream = stream
        self.direction = direction
        self.columns = columns_for(direction)
        self.count = 0
        self._block = block
        self._pending: list[tuple[Record, str]] = []
        self.stream.write(juki.encode(format_row(header(direction))))

    def write(self, record: Record) -> None:
        if record.direction != self.direction:
            raise NoticeWriteError(
                f"record {record.record_id!r} is a {record.direction} notice, the file holds "
                f"{self.direction} notices",
                code="write.direction",
            )
        fields = record_fields(record)
        row = format_row(fields)
        if "\r" in row[:-2] or "\n" in row[:-2]:  # quoting adds no line break: a value holds one
            for column, value in zip(("record_id", "pattern", *self.columns), fields, strict=True):
                if "\r" in value or "\n" in value:
                    raise NoticeWriteError(
                        f"record {record.record_id!r}, column {column}: a value holds a line break",
                        message_ja=f"レコード {record.record_id} の項目 {column} に改行が含まれています",
                        code="write.line_end",
                    )
        self._pending.append((record, row))
        if len(self._pending) >= self._block:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        text = "".join(row for _record, row in self._pending)
        try:
            data = juki.encode(text)
        except UnicodeEncodeError:
            self._raise_unencodable()
        self.stream.write(data)
        self.count += len(self._pending)
        self._pending.clear()

    def _raise_unencodable(self) -> None:
        for record, _row in self._pending:
            for column, value in zip(
                ("record_id", "pattern", *self.columns), record_fields(record), strict=True
            ):
                bad = juki.unencodable(value)
                if bad:
                    position, char = bad[0]
                    raise NoticeWriteError(
                        f"record {record.record_id!r}, column {column}, character {position + 1}: "
                        f"{char!r} (U+{ord(char[0]):04X}) has no Juki code",
                        message_ja=(
                            f"レコード {record.record_id} の項目 {column} の {position + 1} 文字目"
                            f"「{char}」は住基統一文字コードに変換できません"
                        ),
                        code="write.unencodable",
                    )
        raise NoticeWriteError(
            "a row could not be encoded", code="write.unencodable"
        )  # pragma: no cover

    def close(self) -> None:
        self.flush()


def write_notice_file(stream: BinaryIO, direction: str, records: Iterable[Record]) -> int:
    writer = NoticeWriter(stream, direction)
    for record in records:
        writer.write(record)
    writer.close()
    return writer.count


def encode_notice_file(direction: str, records: Iterable[Record]) -> bytes:
    buffer = io.BytesIO()
    write_notice_file(buffer, direction, records)
    return buffer.getvalue()


def degenerate_record(record: Record) -> tuple[Record, list[dict[str, object]]]:
    """Replace characters without a Juki code by their MJ縮退マップ fallback.

    Returns the new record and one entry per substitution (record, column,
    position, original, replacement, source) so every change can be reported.
    A character with neither a code nor a fallback still raises.
    """
    changes: dict[str, str] = {}
    substitutions: list[dict[str, object]] = []
    for column, value in record.values.items():
        if juki.is_encodable(value):
            continue
        try:
            data, subs = juki.encode_degenerate(value)
        except UnicodeEncodeError as exc:
            char = value[exc.start : exc.end]
            raise NoticeWriteError(
                f"record {record.record_id!r}, column {column}, character {exc.start + 1}: "
                f"{char!r} (U+{ord(char[0]):04X}) has no Juki code and no 縮退 fallback",
                message_ja=(
                    f"レコード {record.record_id} の項目 {column} の {exc.start + 1} 文字目"
                    f"「{char}」は住基統一文字コードに変換できず、縮退先もありません"
                ),
                code="write.unencodable",
            ) from None
        changes[column] = juki.decode(data)
        for sub in subs:
            substitutions.append(
                {
                    "record_id": record.record_id,
                    "column": column,
                    "position": sub.position,
                    "original": sub.original,
                    "replacement": sub.replacement,
                    "source": sub.source,
                }
            )
    if not changes:
        return record, []
    return record.with_values(**changes), substitutions


def format_json_header(direction: str) -> str:
    return json.dumps({"format": FORMAT_TAGS[direction]}) + "\n"


def format_json_record(record: Record) -> str:
    return json.dumps(record.to_json(), ensure_ascii=False) + "\n"


def records_to_jsonl(direction: str, records: Iterable[Record], out: TextIO) -> int:
    out.write(format_json_header(direction))
    count = 0
    for record in records:
        out.write(format_json_record(record))
        count += 1
    return count
