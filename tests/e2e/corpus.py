"""A corpus of bad municipality notice files for the outbox, made on the fly (nothing committed).

Every case starts from a valid file of :mod:`common.synthetic` records and
breaks it one way, named after docs/format.md: the bytes (encoding, byte
order mark, odd length, line ends, NUL), the structure (empty, header,
version, direction, columns, quotes, a line too long, cut short), the
records (each kind of problem ``common.validation`` names), the size (over
``max_file_bytes``, and a large file with its one bad record at the end),
the name (separators, control and direction characters, not UTF-8, too
long) and what is not a file at all (a symlink, a FIFO, a folder, a file
the agent may not read).  Plus seeded mutations of a valid file, each of a
kind that always breaks it (a cut inside a code unit, a byte of the header,
a line end removed).

Each :class:`Case` says what the agent must do with it: ``rejected`` with the
code its report names (``file.records`` cases also name the record problem),
or left in the outbox (``outbox``: a FIFO, a folder — not the agent's to take).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import common.juki  # noqa: F401 — registers the "juki" codec
from common.items import MINISTRY, MUNICIPALITY
from common.noticefile import encode_notice_file, header
from common.records import Record
from common.synthetic import SampleFactory

from .world import municipality_records

__all__ = ["Case", "bad_files"]

CRLF = "\r\n"
#: agent.toml's default ``max_file_bytes`` (provisioning writes none, so the default holds).
MAX_FILE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Case:
    """One entry for the outbox and what must become of it.

    ``group``: the kind of breakage (bytes, structure, records, size, names, mutations).
    ``kind``: file, sparse (``size`` bytes, a hole), symlink (``data`` is the
    target), fifo, folder, unreadable (mode 000).  ``name`` may be bytes (a
    name that is not UTF-8).  ``code``: the reason the run reports;
    ``problem``: a record problem the report must also name.
    """

    group: str
    label: str
    name: str | bytes
    data: bytes
    code: str
    kind: str = "file"
    problem: str = ""
    size: int = 0
    expect: str = "rejected"


def _juki(text: str) -> bytes:
    return text.encode("juki")


def _raw(text: str) -> bytes:
    """ASCII and control characters as Juki code units (the UCS-2 layout), no table needed."""
    return b"".join(ord(char).to_bytes(2, "big") for char in text)


def _fields(record: Record) -> list[str]:
    return [record.record_id, record.pattern] + [
        record.values.get(column, "") for column in header(MUNICIPALITY)[2:]
    ]


def _csv(rows: list[list[str]], head: list[str] | None = None) -> str:
    lines = [",".join(head or header(MUNICIPALITY))] + [",".join(row) for row in rows]
    return "".join(line + CRLF for line in lines)


def _with(records: list[Record], index: int, **values: str) -> list[Record]:
    changed = list(records)
    changed[index] = changed[index].with_values(**values)
    return changed


def _first_with(records: list[Record], column: str) -> int:
    return next(i for i, r in enumerate(records) if r.values.get(column))


def bad_files(lasdec: str, tag: str) -> Iterator[Case]:
    """The corpus for a terminal of ``lasdec``; ``tag`` makes names and record ids unique."""
    records = municipality_records(lasdec, 40, tag)
    good = encode_notice_file(MUNICIPALITY, records)
    text = _csv([_fields(r) for r in records])

    # --- bytes -----------------------------------------------------------------------------------
    yield Case(
        "bytes", "UTF-8 instead of Juki", f"{tag}-utf8.csv", text.encode("utf-8"), "file.encoding"
    )
    yield Case(
        "bytes",
        "Shift_JIS",
        f"{tag}-sjis.csv",
        text.encode("shift_jis", "replace"),
        "file.encoding",
    )
    yield Case("bytes", "UTF-16LE with BOM", f"{tag}-utf16.csv", text.encode("utf-16"), "file.bom")
    yield Case(
        "bytes", "UTF-8 BOM before Juki", f"{tag}-bom.csv", b"\xef\xbb\xbf" + good, "file.bom"
    )
    yield Case("bytes", "Juki BOM FE FF", f"{tag}-fffe.csv", b"\xfe\xff" + good, "file.bom")
    yield Case(
        "bytes", "odd length (cut in a code unit)", f"{tag}-odd.csv", good[:-1], "file.odd_length"
    )
    # docs/format.md: LF-only line ends are file.line_end, whatever the file's size.
    yield Case(
        "bytes", "LF line ends", f"{tag}-lf.csv", _juki(text.replace(CRLF, "\n")), "file.line_end"
    )
    yield Case(
        "bytes", "CR line ends", f"{tag}-cr.csv", _juki(text.replace(CRLF, "\r")), "file.truncated"
    )
    yield Case("bytes", "last line cut short", f"{tag}-cut.csv", good[:-4], "file.truncated")
    nul = good.index(_raw(CRLF)) + 4
    yield Case(
        "bytes",
        "NUL inside a record",
        f"{tag}-nul.csv",
        good[: nul + 6] + b"\x00\x00" + good[nul + 8 :],
        "file.records",
        problem="row.encoding",
    )
    yield Case(
        "bytes",
        "random bytes",
        f"{tag}-noise.csv",
        random.Random(7).randbytes(4096),
        "file.encoding",
    )
    yield Case(
        "bytes",
        "a gzip of a good file",
        f"{tag}.csv.gz.csv",
        b"\x1f\x8b\x08\x00" + good[:200],
        "file.encoding",
    )
    yield Case(
        "bytes",
        "a PDF",
        f"{tag}-scan.pdf",
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n" + bytes(300),
        "file.encoding",
    )
    yield Case(
        "bytes",
        "unassigned code units",
        f"{tag}-unassigned.csv",
        good[: nul + 6] + b"\xff\xff" + good[nul + 8 :],
        "file.records",
        problem="row.encoding",
    )

    # --- structure -------------------------------------------------------------------------------
    yield Case("structure", "empty", f"{tag}-empty.csv", b"", "file.empty")
    yield Case(
        "structure", "no header", f"{tag}-nohead.csv", _juki(text.split(CRLF, 1)[1]), "file.header"
    )
    yield Case(
        "structure",
        "unknown format version",
        f"{tag}-v9.csv",
        _juki(text.replace("renkei-municipality-notice-v1", "renkei-municipality-notice-v9", 1)),
        "file.version",
    )
    yield Case(
        "structure",
        "a ministry notice file",
        f"{tag}-ministry.csv",
        encode_notice_file(MINISTRY, SampleFactory(seed=5).day_of(MINISTRY, lasdec, 3)),
        "file.direction",
    )
    yield Case(
        "structure",
        "header missing a column",
        f"{tag}-head-short.csv",
        _juki(_csv([_fields(r)[:-1] for r in records], list(header(MUNICIPALITY))[:-1])),
        "file.header",
    )
    yield Case(
        "structure",
        "header with columns swapped",
        f"{tag}-head-swap.csv",
        _juki(text.replace("change_fact,change_reason", "change_reason,change_fact", 1)),
        "file.header",
    )
    yield Case(
        "structure",
        "a row with a field too many",
        f"{tag}-extra.csv",
        _juki(_csv([_fields(r) + ([""] if i == 2 else []) for i, r in enumerate(records)])),
        "file.records",
        problem="row.columns",
    )
    yield Case(
        "structure",
        "a row with a field missing",
        f"{tag}-short.csv",
        _juki(_csv([_fields(r)[:-1] if i == 3 else _fields(r) for i, r in enumerate(records)])),
        "file.records",
        problem="row.columns",
    )
    unterminated = [_fields(r) for r in records]
    unterminated[1][2] = '"' + unterminated[1][2]
    yield Case(
        "structure",
        "an unterminated quote",
        f"{tag}-quote.csv",
        _juki(_csv(unterminated)),
        "file.records",
        problem="row.quote",
    )
    yield Case(
        "structure",
        "the header twice",
        f"{tag}-head2.csv",
        _juki(text + ",".join(header(MUNICIPALITY)) + CRLF),
        "file.records",
        problem="pattern.unknown",
    )
    yield Case(
        "structure",
        "40,000 characters without a line end",
        f"{tag}-long.csv",
        _juki(text + "x" * 40000),
        "file.long_line",
    )
    yield Case(
        "structure",
        "a control character in a value",
        f"{tag}-bell.csv",
        _juki(text.split(CRLF, 2)[0] + CRLF)
        + _raw("\x07")
        + _juki(text.split(CRLF, 2)[1] + CRLF + text.split(CRLF, 2)[2]),
        "file.records",
        problem="row.encoding",
    )
    yield Case(
        "structure",
        "the same record id twice",
        f"{tag}-dupid.csv",
        encode_notice_file(MUNICIPALITY, records + [records[0]]),
        "file.records",
        problem="row.duplicate_id",
    )

    # --- records (valid bytes, invalid notices) ------------------------------------------------
    dated = _first_with(records, "report_date")
    bad_records = [
        ("an impossible date", _with(records, dated, report_date="20261399"), "date.invalid"),
        ("a date out of order", _with(records, dated, report_date="18000101"), "date.order"),
        (
            "a bad check digit",
            _with(records, 0, address_code=lasdec[:5] + str((int(lasdec[5]) + 1) % 10)),
            "lasdec.check_digit",
        ),
        (
            "a well-formed code of no municipality",
            _with(records, 0, address_code="999997"),
            "lasdec.unknown",
        ),
        (
            "a bad card number",
            _with(records, _first_with(records, "card_number"), card_number="AB1234567"),
            "card_number.format",
        ),
        ("sex 9", _with(records, _first_with(records, "sex"), sex="9"), "code.unknown"),
        (
            "an unknown nationality",
            _with(records, _first_with(records, "nationality"), nationality="QQQ"),
            "code.unknown",
        ),
        (
            "an unknown pattern",
            [records[0].__class__("C-x-1", "ZZ", records[0].values)] + records[1:],
            "pattern.unknown",
        ),
        ("a change fact the pattern lacks", _with(records, 0, change_fact="9"), "code.unknown"),
        (
            "a required item left out",
            _with(records, _first_with(records, "birth_date"), birth_date=""),
            "item.missing",
        ),
        ("an item the pattern does not carry", _with(records, 0, alias="通称"), "item.not_allowed"),
        (
            "a name kind that does not match",
            _with(records, _first_with(records, "name_kind"), name_kind="2"),
            "name.kind_mismatch",
        ),
        ("an address without its code", _with(records, 0, address_code=""), "address.incomplete"),
        (
            "a card number without its kind",
            _with(records, _first_with(records, "card_number"), card_kind=""),
            "card.incomplete",
        ),
        (
            "a record id with a space",
            [records[0].__class__("C x", records[0].pattern, records[0].values)] + records[1:],
            "record_id.format",
        ),
    ]
    for number, (label, changed, problem) in enumerate(bad_records):
        yield Case(
            "records",
            label,
            f"{tag}-rec{number:02d}.csv",
            encode_notice_file(MUNICIPALITY, changed),
            "file.records",
            problem=problem,
        )

    # --- size ------------------------------------------------------------------------------------
    yield Case(
        "size",
        "over max_file_bytes (sparse)",
        f"{tag}-huge.csv",
        b"",
        "file.too_large",
        kind="sparse",
        size=MAX_FILE_BYTES + 1,
    )
    many = municipality_records(lasdec, 4000, f"{tag}big")
    many[-1] = many[-1].with_values(report_date="20261399")
    yield Case(
        "size",
        "4,000 records, the last one bad",
        f"{tag}-big.csv",
        encode_notice_file(MUNICIPALITY, many),
        "file.records",
        problem="date.invalid",
    )

    # --- names and things that are not files --------------------------------------------------
    yield Case(
        "names and non-files",
        "a backslash in the name",
        f"{tag}\\..\\evil.csv",
        good,
        "name.separator",
    )
    yield Case(
        "names and non-files",
        "a control character in the name",
        f"{tag}-\x07.csv",
        good,
        "name.control",
    )
    yield Case(
        "names and non-files",
        "a direction override in the name",
        f"{tag}-\u202evsc.csv",
        good,
        "name.control",
    )
    yield Case(
        "names and non-files",
        "a name that is not UTF-8",
        tag.encode() + b"-\xff\xfe.csv",
        good,
        "name.encoding",
    )
    yield Case(
        "names and non-files",
        "a name of 220 bytes",
        f"{tag}-" + "あ" * 70 + ".csv",
        good,
        "name.too_long",
    )
    yield Case(
        "names and non-files",
        "a symlink to /etc/shadow",
        f"{tag}-link.csv",
        b"/etc/shadow",
        "file.symlink",
        kind="symlink",
    )
    yield Case(
        "names and non-files",
        "a file the agent may not read",
        f"{tag}-mode000.csv",
        good,
        "file.unreadable",
        kind="unreadable",
    )
    yield Case(
        "names and non-files", "a FIFO", f"{tag}-pipe.csv", b"", "", kind="fifo", expect="outbox"
    )
    yield Case(
        "names and non-files",
        "a folder",
        f"{tag}-folder.csv",
        b"",
        "",
        kind="folder",
        expect="outbox",
    )

    # --- seeded mutations of the good file, each of a kind that always breaks it --------------
    chance = random.Random(20261127)
    head_end = good.index(_raw(CRLF))
    for number in range(4):
        cut = chance.randrange(head_end + 4, len(good) - 4) | 1  # inside a code unit
        yield Case(
            "mutations",
            f"cut at byte {cut}",
            f"{tag}-mut-cut{number}.csv",
            good[:cut],
            "file.odd_length",
        )
    head = header(MUNICIPALITY)
    columns_start = 2 * (len(head[0]) + 1)  # the column names after the format tag
    letters = [
        i for i in range(columns_start, head_end, 2) if good[i] == 0 and 0x61 <= good[i + 1] <= 0x7A
    ]
    for number in range(4):
        where = chance.choice(letters)
        other_letter = b"q" if good[where + 1 : where + 2] != b"q" else b"z"
        changed = good[: where + 1] + other_letter + good[where + 2 :]
        yield Case(
            "mutations",
            f"header letter {where // 2} changed",
            f"{tag}-mut-head{number}.csv",
            changed,
            "file.header",
        )
    for number in range(2):
        ends = [i for i in range(head_end + 4, len(good) - 4, 2) if good[i : i + 4] == _raw(CRLF)]
        where = chance.choice(ends)
        yield Case(
            "mutations",
            f"line end at byte {where} removed",
            f"{tag}-mut-join{number}.csv",
            good[:where] + good[where + 4 :],
            "file.records",
            problem="row.columns",
        )
