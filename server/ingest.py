"""Importing the day's ministry notices from the issuance system (法務省通知, Unicode).

The issuance system hands over UTF-8 JSON Lines or UTF-8 CSV with the notice
file's header (a notice file in Juki code is accepted too).  Every record is
validated against the pattern and code tables and must be addressed to a
receiving unit; a bad record is reported with every problem and not loaded,
the rest load — in one transaction per file, so a file that turns out to be
unreadable halfway (truncated CSV, bad UTF-8) loads nothing.

Importing is idempotent by record id: the same id with the same content is a
duplicate (counted, not loaded again); the same id with other content is a
conflict (rejected, because the first version may already be delivered).
The content compared is the record as it will be delivered — after 縮退
(``degenerate=True``), whose substitutions are stored with the record.

The helpers for problems and record hashes are shared with uploads.
"""

from __future__ import annotations

import hashlib
import io
import json
import operator
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from common.cli import sniff
from common.errors import NoticeFileError, NoticeWriteError
from common.items import MINISTRY
from common.noticefile import (
    FORMAT_TAGS,
    RowError,
    degenerate_record,
    read_jsonl,
    read_notice_file,
    read_unicode_csv,
)
from common.records import Record
from common.rejections import file_error_entry, row_error_entry
from common.validation import validate

from .errors import NoticeImportError
from .storage import Storage, imports, iso_utc, municipalities, notices, serialize

__all__ = [
    "ImportResult",
    "import_notices",
    "record_content",
]

_CHUNK = 500  # ids per IN (…) query: well under every database's parameter limit


@dataclass
class ImportResult:
    """What one import did; ``ok`` when every record loaded or was a duplicate."""

    import_id: str
    file_name: str
    sha256: str
    size: int
    business_date: date
    records: int = 0
    loaded: int = 0
    duplicates: list[str] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    substitutions: list[dict] = field(default_factory=list)
    file_error: dict | None = None

    @property
    def ok(self) -> bool:
        return self.file_error is None and not self.rejected

    def to_json(self) -> dict:
        return {
            "import_id": self.import_id,
            "file": self.file_name,
            "sha256": self.sha256,
            "size": self.size,
            "business_date": self.business_date.isoformat(),
            "records": self.records,
            "loaded": self.loaded,
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "substitutions": self.substitutions,
            "file_error": self.file_error,
            "ok": self.ok,
        }


# --- shared with uploads -------------------------------------------------------------------------


#: What ``json.dumps(..., ensure_ascii=False)`` escapes besides the quote, as UTF-8 bytes
#: (no byte of a multi-byte UTF-8 sequence is below 0x80, so these bytes are those characters).
_ESCAPED = bytes(range(0x20)) + b"\\"
_PAIR = '":"'.join
_COMMA = '","'.join
#: Key order as the record's keys come -> the same keys sorted (records of a pattern share it).
_SORTED: dict[tuple, tuple] = {}
_SORTED_LIMIT = 4_096


def record_content(record: Record) -> tuple[str, str]:
    """The record as stored (canonical JSON text) and its SHA-256: equal content, equal hash.

    The canonical text is ``json.dumps(record.to_json(), ensure_ascii=False,
    sort_keys=True, separators=(",", ":"))`` — stored hashes depend on it, so
    it never changes.  A record of plain strings (no quote, backslash or
    control character: every valid record) has exactly that text without an
    encoder: ``{"key":"value",…}`` in key order, joined in C, with the sorted
    key order remembered per key set.  Anything else goes through
    ``json.dumps`` itself.
    """
    obj = record.to_json()
    try:
        keys = tuple(obj)
        order = _SORTED.get(keys)
        if order is None:
            if len(_SORTED) >= _SORTED_LIMIT:
                _SORTED.clear()
            order = _SORTED[keys] = tuple(sorted(keys))
        text = (
            '{"' + _COMMA(map(_PAIR, zip(order, map(obj.__getitem__, order), strict=True))) + '"}'
        )
    except TypeError:  # a key or value that is not a string: the encoder decides
        text = None
    if text is not None:
        data = text.encode("utf-8")
        # Four structural quotes per pair: any more is a quote inside a key or value.
        if data.count(b'"') == 4 * len(obj) and len(data.translate(None, _ESCAPED)) == len(data):
            return text, hashlib.sha256(data).hexdigest()
    text = json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return text, hashlib.sha256(text.encode("utf-8")).hexdigest()


def conflict_problem(record_id: str, before_ja: str) -> dict:
    """``before_ja`` says when the first version came, e.g. "2026-11-27 の取込で"."""
    return {
        "code": "record.conflict",
        "item": None,
        "column": "record_id",
        "message": f"レコード番号 {record_id} は{before_ja}既に異なる内容で受け付けています。"
        "訂正は新しいレコード番号で送ってください",
        "message_en": f"record id {record_id!r} was received before with different content; "
        "send a correction under a new record id",
    }


def utf8_file_error(name: str, exc: UnicodeDecodeError) -> NoticeFileError:
    return NoticeFileError(
        f"not valid UTF-8 at byte {exc.start}",
        message_ja=f"UTF-8 として読めないバイトがあります（{exc.start} バイト目）",
        code="file.encoding",
        name=name,
    )


# --- reading -------------------------------------------------------------------------------------


class _CountingText:
    """A text stream that counts the lines read from it, so records get their line numbers."""

    def __init__(self, stream: io.TextIOBase):
        self.stream = stream
        self.lines = 0

    def readline(self, *args: int) -> str:
        line = self.stream.readline(*args)
        if line:
            self.lines += 1
        return line

    def __iter__(self) -> _CountingText:
        return self

    def __next__(self) -> str:
        line = next(self.stream)
        self.lines += 1
        return line


def read_rows(data: bytes, name: str) -> tuple[str, Iterator[tuple[int, Record | RowError]], bool]:
    """Direction, (line, row) pairs, and whether the file was Juki code (encodable by construction).

    UTF-8 input must end in a line break, as a notice file does: a file cut
    short mid-line is a file error, not a short last record.  Raises
    NoticeFileError (and UnicodeDecodeError while iterating UTF-8 input).
    """
    kind = sniff(data[:4])
    if kind != "juki" and data and not data.endswith(b"\n"):
        raise NoticeFileError(
            "the last line does not end in a line break: the file was cut short (truncated)",
            message_ja="最終行が改行で終わっていません。ファイルが途中で切れている可能性があります",
            code="file.truncated",
            name=name,
        )
    if kind == "juki":
        reader = read_notice_file(io.BytesIO(data), name=name)

        def juki_rows() -> Iterator[tuple[int, Record | RowError]]:
            for row in reader:
                yield (row.line if isinstance(row, RowError) else reader.stats.lines), row

        return reader.direction, juki_rows(), True
    text = _CountingText(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline=""))
    if kind == "jsonl":
        direction, rows = read_jsonl(text, name=name)  # type: ignore[arg-type]
    else:
        direction, rows = read_unicode_csv(text, name=name)  # type: ignore[arg-type]

    def text_rows() -> Iterator[tuple[int, Record | RowError]]:
        for row in rows:
            yield (row.line if isinstance(row, RowError) else text.lines), row

    return direction, text_rows(), False


# --- importing -----------------------------------------------------------------------------------


class _Candidate(NamedTuple):
    """A valid record, reduced to what is stored (the record itself is not kept: memory)."""

    line: int
    record_id: str
    lasdec: str | None
    pattern: str
    text: str
    content_hash: str
    substitutions: list[dict]


def routing_problem(code: str | None, receiving: set[str]) -> dict | None:
    """A problem when a ministry notice's address is not a receiving unit (None when it is)."""
    if not code:
        return {
            "code": "routing.no_address",
            "item": "address",
            "column": "address_code",
            "message": "住居地の全国地方公共団体コードがないため、送付先の市区町村を決められません",
            "message_en": "address_code missing: the receiving municipality cannot be determined",
        }
    if code in receiving:
        return None
    return {
        "code": "routing.not_receiving",
        "item": "address",
        "column": "address_code",
        "message": f"住居地の全国地方公共団体コード「{code}」は送付先になりません"
        "（都道府県・区のある政令指定都市・廃止された団体ではなく、市町村または区のコードを指定してください）",
        "message_en": f"address_code {code} is not a receiving unit (a prefecture, a designated "
        "city with wards, or no longer in the master); use the municipality's or the ward's code",
    }


def _receiving(conn: Connection) -> set[str]:
    return set(
        conn.execute(
            sa.select(municipalities.c.lasdec).where(municipalities.c.receiving.is_(True))
        ).scalars()
    )


def _check(
    result: ImportResult,
    rows: Iterator[tuple[int, Record | RowError]],
    receiving: set[str],
    *,
    degenerate: bool,
    from_juki: bool,
) -> list[_Candidate]:
    candidates: list[_Candidate] = []
    for line, row in rows:
        result.records += 1
        if isinstance(row, RowError):
            result.rejected.append(row_error_entry(row))
            continue
        record, subs = row, []
        if degenerate:
            try:
                record, subs = degenerate_record(row)
            except NoticeWriteError:
                record, subs = row, []  # validation names every character without a code
        found = validate(record, check_encoding=not from_juki)
        problems = [p.to_json() for p in found] if found else []
        if not problems:
            routing = routing_problem(record.get("address_code"), receiving)
            if routing is not None:
                problems.append(routing)
        if problems:
            result.rejected.append(
                {
                    "line": line,
                    "record_id": row.record_id or None,
                    "pattern": row.pattern or None,
                    "problems": problems,
                }
            )
            continue
        text, content_hash = record_content(record)
        candidates.append(
            _Candidate(
                line,
                record.record_id,
                record.get("address_code"),
                record.pattern,
                text,
                content_hash,
                subs,
            )
        )
    return candidates


def _existing(conn: Connection, ids: list[str]) -> dict[str, tuple[str, date]]:
    """record id -> (content hash, business date) of already imported notices."""
    found: dict[str, tuple[str, date]] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        query = sa.select(
            notices.c.record_id, notices.c.content_hash, notices.c.business_date
        ).where(notices.c.record_id.in_(chunk))
        for row in conn.execute(query):
            found[row.record_id] = (row.content_hash, row.business_date)
    return found


def import_notices(
    storage: Storage,
    data: bytes,
    *,
    file_name: str,
    business_date: date,
    now: datetime,
    degenerate: bool = False,
) -> ImportResult:
    """Validate and load the ministry notices in ``data`` for ``business_date``; report every record.

    File-level problems are returned in ``file_error`` (nothing loaded).
    Raises NoticeImportError when the municipality master is not loaded or a
    concurrent import of the same records won the race (run it again).
    """
    result = ImportResult(
        import_id="imp_" + secrets.token_hex(8),
        file_name=file_name,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        business_date=business_date,
    )
    with storage.read() as conn:
        receiving = _receiving(conn)
    if not receiving:
        raise NoticeImportError(
            "the municipality master is not loaded; run `renkei-server init` first",
            code="import.no_master",
        )
    candidates: list[_Candidate] = []
    try:
        direction, rows, from_juki = read_rows(data, file_name)
        if direction != MINISTRY:
            raise NoticeFileError(
                f"this is a {direction} notice file; import takes ministry notices "
                f"({FORMAT_TAGS[MINISTRY]})",
                message_ja="市町村通知のファイルです。取込できるのは法務省通知です",
                code="file.direction",
                name=file_name,
                line=1,
            )
        candidates = _check(result, rows, receiving, degenerate=degenerate, from_juki=from_juki)
    except NoticeFileError as exc:
        result.file_error = file_error_entry(exc)
    except UnicodeDecodeError as exc:
        result.file_error = file_error_entry(utf8_file_error(file_name, exc))
    if result.file_error is not None:
        result.records, result.rejected, candidates = 0, [], []
    try:
        with storage.begin() as conn:
            _store(conn, result, candidates, now)
    except IntegrityError:
        raise NoticeImportError(
            "another import loaded some of these records at the same time; run the import again "
            "(records already loaded will be counted as duplicates)",
            code="import.concurrent",
        ) from None
    return result


def _store(
    conn: Connection, result: ImportResult, candidates: list[_Candidate], now: datetime
) -> None:
    # Imports take turns (across app servers too), so one that overlaps another counts the
    # other's records as duplicates instead of failing on UNIQUE(record_id).
    serialize(conn, "import")
    existing = _existing(conn, [c.record_id for c in candidates])
    new: list[_Candidate] = []
    conflicts: list[dict] = []
    for candidate in candidates:
        record_id = candidate.record_id
        before = existing.get(record_id)
        if before is None:
            new.append(candidate)
            result.substitutions.extend(candidate.substitutions)
        elif before[0] == candidate.content_hash:
            result.duplicates.append(record_id)
        else:
            where = f"{before[1].isoformat()} の取込で"
            conflicts.append(
                {
                    "line": candidate.line,
                    "record_id": record_id,
                    "pattern": candidate.pattern,
                    "problems": [conflict_problem(record_id, where)],
                }
            )
    if conflicts:
        result.rejected = sorted(result.rejected + conflicts, key=lambda e: e["line"] or 0)
    result.loaded = len(new)
    conn.execute(
        imports.insert().values(
            import_id=result.import_id,
            file_name=result.file_name[:500],
            sha256=result.sha256,
            size=result.size,
            business_date=result.business_date,
            imported_at=now,
            records=result.records,
            loaded=result.loaded,
            duplicates=len(result.duplicates),
            rejected=len(result.rejected),
            report=json.dumps(
                {**result.to_json(), "imported_at": iso_utc(now)}, ensure_ascii=False
            ),
        )
    )
    if new:
        _insert_notices(conn, new, result, now)


#: The columns an import fills; the rest (notice_id, batch_id) take their defaults.
_VARYING = ("record_id", "lasdec", "pattern", "record", "content_hash", "substitutions")
_CONSTANT = ("business_date", "import_id", "imported_at")


def _insert_notices(
    conn: Connection, new: list[_Candidate], result: ImportResult, now: datetime
) -> None:
    """Insert the new notices with one ``executemany``, parameters already in the driver's form.

    ``conn.execute(notices.insert(), rows)`` runs SQLAlchemy's parameter
    processing for every value of every row in Python — for a large file it
    costs more than the database's own insert.  The values that need
    converting (the business date and the aware timestamp) are the same for
    the whole file, so they are converted once with the column types' own
    processors for this dialect; the varying values are strings, which no
    dialect converts.  The SQL is the table's INSERT compiled for the
    connection's dialect, so SQLite and PostgreSQL run the same statement as
    before.
    """
    dialect = conn.dialect
    constants = {
        "business_date": result.business_date,
        "import_id": result.import_id,
        "imported_at": now,
    }
    if any(
        notices.c[name].type.dialect_impl(dialect).bind_processor(dialect) is not None
        for name in _VARYING
    ):  # a dialect that converts strings: let SQLAlchemy convert everything, row by row
        conn.execute(notices.insert(), [_row_values(c, constants) for c in new])
        return
    for name, value in constants.items():
        processor = notices.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        constants[name] = processor(value) if processor is not None else value
    compiled = notices.insert().compile(dialect=dialect, column_keys=[*_VARYING, *_CONSTANT])
    rows = (_row_values(c, constants) for c in new)
    if compiled.positional:
        params: list = list(map(operator.itemgetter(*compiled.positiontup), rows))
    else:
        params = list(rows)
    conn.exec_driver_sql(str(compiled), params)


def _row_values(candidate: _Candidate, constants: dict) -> dict:
    return {
        "record_id": candidate.record_id,
        "lasdec": candidate.lasdec,
        "pattern": candidate.pattern,
        "record": candidate.text,
        "content_hash": candidate.content_hash,
        "substitutions": json.dumps(candidate.substitutions, ensure_ascii=False)
        if candidate.substitutions
        else None,
        **constants,
    }
