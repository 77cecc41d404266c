"""Exporting received municipality notices to the ministry's systems (UTF-8 JSON Lines).

One line per received record, in the order received::

    {"lasdec": "131016", "upload_id": "up_…", "terminal_id": "t_…",
     "received_at": "2026-11-27T09:30:00Z", "record": {…the decoded record…},
     "variants": [{"column": "name_kanji", "position": 0, "character": "辻󠄃", "base": "辻"}]}

``record`` is the record exactly as decoded from Juki code (``record_id``,
``pattern`` and the non-empty columns).  The municipality's file cannot name
a character that has no Juki code, so nothing was degenerated on the way in;
``variants`` lists the characters that decoded to an ideographic variation
sequence (an MJ variant with no code point of its own): a system that cannot
keep variation sequences degenerates each of them to ``base``, and this is
where it learns which.  The export streams; memory does not grow with the
number of records.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from typing import TextIO

import sqlalchemy as sa

from .storage import Storage, iso_utc, received_notices, uploads

__all__ = ["export_received", "variation_sequences"]

_PAGE = 1000


def _is_selector(char: str) -> bool:
    point = ord(char)
    return 0xE0100 <= point <= 0xE01EF or 0xFE00 <= point <= 0xFE0F


def variation_sequences(record: dict[str, str]) -> list[dict]:
    """Each base character followed by a variation selector, per column (positions in characters)."""
    found = []
    for column, value in record.items():
        if not isinstance(value, str):
            continue
        for index in range(1, len(value)):
            if _is_selector(value[index]) and not _is_selector(value[index - 1]):
                found.append(
                    {
                        "column": column,
                        "position": index - 1,
                        "character": value[index - 1 : index + 1],
                        "base": value[index - 1],
                    }
                )
    return found


def _lines(storage: Storage, since: datetime | None) -> Iterator[str]:
    last_id = 0
    while True:
        query = (
            sa.select(
                received_notices.c.received_id,
                received_notices.c.lasdec,
                received_notices.c.upload_id,
                uploads.c.terminal_id,
                received_notices.c.received_at,
                received_notices.c.record,
            )
            .join(uploads, uploads.c.upload_id == received_notices.c.upload_id)
            .where(received_notices.c.received_id > last_id)
            .order_by(received_notices.c.received_id)
            .limit(_PAGE)
        )
        if since is not None:
            query = query.where(received_notices.c.received_at >= since)
        with storage.read() as conn:
            page = conn.execute(query).all()
        if not page:
            return
        for row in page:
            record = json.loads(row.record)
            yield (
                json.dumps(
                    {
                        "lasdec": row.lasdec,
                        "upload_id": row.upload_id,
                        "terminal_id": row.terminal_id,
                        "received_at": iso_utc(row.received_at),
                        "record": record,
                        "variants": variation_sequences(record),
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
        last_id = page[-1].received_id


def export_received(storage: Storage, out: TextIO, *, since: datetime | None = None) -> int:
    """Write received notices (received at or after ``since``) to ``out``; return how many."""
    count = 0
    for line in _lines(storage, since):
        out.write(line)
        count += 1
    return count
