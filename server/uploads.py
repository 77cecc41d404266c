"""Receiving a municipality notice file (市町村通知) from a terminal, and its signed receipt.

The HTTP layer hands over the uploaded bytes and the verified terminal.  The
file is read as a notice file in Juki code; every record is validated (every
problem reported); accepted records are stored decoded to Unicode with their
municipality and upload.  A record id this municipality sent before is a
duplicate when the content is the same (listed, not stored again) and a
conflict (``record.conflict``, rejected) when it differs.  A file that cannot
be read as a whole (truncated, wrong header, too many records) gets a receipt
with ``file_error`` and nothing is stored.  The receipt is a statement signed
by the server key, so the municipality can later prove what was accepted.

A terminal reports only its own municipality's notices: a record whose
住居地 code (``address_code``) names another municipality, another ward, or
the designated city of the terminal's ward is rejected on its own with
``address.other_municipality`` (``common.reporting`` says why, from the spec).

The file's name is part of the signed receipt and is shown to operators, so
it must be a plain name (:func:`file_name_problem`): no folders, no control,
format or bidirectional characters, at most 255 bytes of UTF-8.

Uploads are idempotent by (municipality, SHA-256 of the bytes): sending the
same file again returns the stored receipt and stores nothing.  The original
bytes are always kept in the blob store.  Everything is one transaction, and
one municipality's uploads take turns (``serialize(conn, "upload", lasdec)``,
across app servers too): the second of two identical uploads finds the first's
receipt, and a record sent in two files at once is stored once, as a duplicate
in the later file.  ``UNIQUE(lasdec, sha256)`` and ``UNIQUE(lasdec,
record_id)`` stay as the last line of defence.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import unicodedata
from datetime import datetime

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from common import statement
from common.errors import NoticeFileError
from common.items import MUNICIPALITY
from common.noticefile import FORMAT_TAGS, RowError, read_notice_file
from common.printable import UNSAFE_CATEGORIES
from common.records import Record
from common.rejections import file_error_entry, row_error_entry
from common.reporting import reporting_problem
from common.validation import validate

from .blobs import BlobStore
from .enrollment import Terminal
from .errors import UploadError
from .ingest import conflict_problem, record_content
from .storage import Storage, iso_utc, received_notices, serialize, uploads

__all__ = [
    "MAX_FILE_NAME_BYTES",
    "RECEIPT_TYPE",
    "file_name_problem",
    "get_receipt",
    "receive_upload",
]

RECEIPT_TYPE = "municipality-receipt"
#: Longest uploaded file name in bytes of UTF-8 (a Linux file name's limit); the agent sends
#: at most 200 (appliance.agent.folders.MAX_NAME_BYTES).
MAX_FILE_NAME_BYTES = 255
_CHUNK = 500


def _stored_receipt(conn: Connection, lasdec: str, sha256: str) -> dict | None:
    text = conn.execute(
        sa.select(uploads.c.receipt).where(uploads.c.lasdec == lasdec, uploads.c.sha256 == sha256)
    ).scalar()
    return json.loads(text) if text is not None else None


def file_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an uploaded file's name (for the engineer), or None when it can.

    Refused: empty, ``.`` or ``..``; a folder separator (``/`` or ``\\``); any
    character of Unicode category Cc (C0 and C1 controls, DEL), Cf (format:
    the bidirectional controls U+061C, U+200E, U+200F, U+202A–U+202E,
    U+2066–U+2069, zero-width characters, the BOM, tags), Cs (lone
    surrogates), Zl or Zp (line and paragraph separators); more than
    :data:`MAX_FILE_NAME_BYTES` bytes of UTF-8.  The name goes into the signed
    receipt and is shown on operators' screens, where such characters would
    act instead of being text (``common.printable``).
    """
    if not name or name in {".", ".."}:
        return "the file name is empty, '.' or '..'"
    if "/" in name or "\\" in name:
        return "the file name has a folder separator (send the base name only)"
    if len(name) > MAX_FILE_NAME_BYTES:  # every character is at least one byte
        return f"the file name is {len(name)} characters long (at most {MAX_FILE_NAME_BYTES} bytes)"
    for position, char in enumerate(name, 1):
        category = unicodedata.category(char)
        if category in UNSAFE_CATEGORIES:
            return (
                f"character {position} of the file name is U+{ord(char):04X} "
                f"(Unicode category {category}: a control, format, bidirectional or separator "
                "character)"
            )
    size = len(name.encode("utf-8"))
    if size > MAX_FILE_NAME_BYTES:
        return f"the file name is {size} bytes of UTF-8 (at most {MAX_FILE_NAME_BYTES})"
    return None


def _read(
    data: bytes, file_name: str, max_records: int, reporter: str
) -> tuple[int, list[tuple[int, Record]], list[dict]]:
    """(rows read, valid records with their lines, rejected entries).  Raises NoticeFileError."""
    reader = read_notice_file(io.BytesIO(data), name=file_name)
    if reader.direction != MUNICIPALITY:
        raise NoticeFileError(
            f"this is a {reader.direction} notice file; upload municipality notices "
            f"({FORMAT_TAGS[MUNICIPALITY]})",
            message_ja="法務省通知のファイルです。送信できるのは市町村通知のファイルです",
            code="file.direction",
            name=file_name,
            line=1,
        )
    rows = 0
    good: list[tuple[int, Record]] = []
    rejected: list[dict] = []
    for row in reader:
        rows += 1
        if rows > max_records:
            raise NoticeFileError(
                f"the file has more than {max_records} records; split it into several files",
                message_ja=f"レコードが {max_records} 件を超えています。ファイルを分けて送ってください",
                code="file.too_many_records",
                name=file_name,
                line=reader.stats.lines,
            )
        if isinstance(row, RowError):
            rejected.append(row_error_entry(row))
            continue
        problems = validate(row, check_encoding=False)
        refusal = reporting_problem(row, reporter)
        if refusal is not None:
            problems = [*problems, refusal]
        if problems:
            rejected.append(
                {
                    "line": reader.stats.lines,
                    "record_id": row.record_id or None,
                    "problems": [p.to_json() for p in problems],
                }
            )
        else:
            good.append((reader.stats.lines, row))
    return rows, good, rejected


def _previous(conn: Connection, lasdec: str, ids: list[str]) -> dict[str, str]:
    """record id -> content hash of records this municipality sent before."""
    found: dict[str, str] = {}
    for start in range(0, len(ids), _CHUNK):
        query = sa.select(received_notices.c.record_id, received_notices.c.content_hash).where(
            received_notices.c.lasdec == lasdec,
            received_notices.c.record_id.in_(ids[start : start + _CHUNK]),
        )
        found.update((record_id, content_hash) for record_id, content_hash in conn.execute(query))
    return found


def receive_upload(
    storage: Storage,
    blobs: BlobStore,
    signing_key: Ed25519PrivateKey,
    terminal: Terminal,
    data: bytes,
    *,
    file_name: str,
    now: datetime,
    max_records: int,
) -> tuple[dict, bool]:
    """Process one uploaded file; return (signed receipt, whether this call created it).

    Raises UploadError ``upload.file_name`` for a name :func:`file_name_problem`
    refuses (before anything is stored), and ``upload.concurrent`` in the rare
    case that another upload stored some of the same records at the same
    moment (send again).
    """
    problem = file_name_problem(file_name)
    if problem is not None:
        raise UploadError(problem, code="upload.file_name")
    lasdec = terminal.lasdec
    sha256 = hashlib.sha256(data).hexdigest()
    with storage.read() as conn:
        stored = _stored_receipt(conn, lasdec, sha256)
    if stored is not None:
        return stored, False
    file_error: dict | None = None
    try:
        rows, good, rejected = _read(data, file_name, max_records, lasdec)
    except NoticeFileError as exc:
        rows, good, rejected, file_error = 0, [], [], file_error_entry(exc)
    upload_id = "up_" + secrets.token_hex(8)
    # Written (two fsyncs) before the write transaction, so the database's single writer lock
    # is not held while the disk syncs — every terminal's requests queue behind that lock.
    blobs.put(data, sha256=sha256)
    try:
        with storage.begin() as conn:
            serialize(conn, "upload", lasdec)
            stored = _stored_receipt(conn, lasdec, sha256)
            if stored is not None:  # the same file, stored while this one was being read
                return stored, False
            # Stored again inside the write transaction — a no-op unless a purge removed the file
            # in between — so a purge (which re-checks references in its own write transaction)
            # can never delete the file this new row will point to.
            blobs.put(data, sha256=sha256)
            previous = _previous(conn, lasdec, [record.record_id for _, record in good])
            accepted: list[str] = []
            duplicates: list[str] = []
            new_rows: list[dict] = []
            for line, record in good:
                text, content_hash = record_content(record)
                before = previous.get(record.record_id)
                if before is None:
                    accepted.append(record.record_id)
                    new_rows.append(
                        {
                            "lasdec": lasdec,
                            "record_id": record.record_id,
                            "pattern": record.pattern,
                            "upload_id": upload_id,
                            "record": text,
                            "content_hash": content_hash,
                            "received_at": now,
                        }
                    )
                elif before == content_hash:
                    duplicates.append(record.record_id)
                else:
                    rejected.append(
                        {
                            "line": line,
                            "record_id": record.record_id,
                            "problems": [conflict_problem(record.record_id, "以前の送信で")],
                        }
                    )
            rejected.sort(key=lambda entry: entry["line"] or 0)
            body = {
                "type": RECEIPT_TYPE,
                "upload_id": upload_id,
                "lasdec": lasdec,
                "terminal_id": terminal.terminal_id,
                "file_name": file_name,
                "sha256": sha256,
                "size": len(data),
                "received_at": iso_utc(now),
                "records": rows,
                "accepted": accepted,
                "duplicates": duplicates,
                "rejected": rejected,
                "file_error": file_error,
            }
            receipt = statement.sign(body, signing_key)
            conn.execute(
                uploads.insert().values(
                    upload_id=upload_id,
                    lasdec=lasdec,
                    terminal_id=terminal.terminal_id,
                    file_name=file_name,
                    sha256=sha256,
                    size=len(data),
                    received_at=now,
                    records=rows,
                    accepted=len(accepted),
                    duplicates=len(duplicates),
                    rejected=len(rejected),
                    file_error=file_error["code"] if file_error else None,
                    receipt=json.dumps(receipt, ensure_ascii=False, separators=(",", ":")),
                )
            )
            if new_rows:
                conn.execute(received_notices.insert(), new_rows)
    except IntegrityError:
        with storage.read() as conn:
            stored = _stored_receipt(conn, lasdec, sha256)
        if stored is not None:
            return stored, False
        raise UploadError(
            "another upload stored some of these records at the same moment; send the file again",
            code="upload.concurrent",
        ) from None
    return receipt, True


def get_receipt(storage: Storage, lasdec: str, upload_id: str) -> dict | None:
    """The signed receipt of an upload, or None if there is none with this id for this municipality."""
    with storage.read() as conn:
        text = conn.execute(
            sa.select(uploads.c.receipt).where(
                uploads.c.upload_id == upload_id, uploads.c.lasdec == lasdec
            )
        ).scalar()
    return json.loads(text) if text is not None else None
