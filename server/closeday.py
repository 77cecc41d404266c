"""Closing a business day: one signed batch per receiving unit (spec §5.1).

After business hours the operator (or a timer) closes the day D.  Every
receiving unit that has no batch for D yet gets one: all its notices not yet
in a batch with a business date on or before D (so a notice imported late,
after D was closed, goes out with the next day), numbered previous + 1 per
municipality so a terminal can see a missing batch.  A municipality with no
notices gets an *empty* batch, so "nothing happened" differs from "not
delivered".  Each batch file is written in Juki code, stored by its SHA-256,
and described by a manifest the server signs.

The whole day is one transaction: either every batch of the run exists or
none does.  Runs take turns (``serialize(conn, "close-day")``: SQLite's write
lock, an advisory lock on PostgreSQL, so also across app servers): a second
run started meanwhile waits, then finds the batches made and makes none.
Should two runs still meet, ``UNIQUE(lasdec, business_date)`` and
``UNIQUE(lasdec, sequence)`` stop the second, which then changes nothing.
Running the same day again creates nothing and says so; it only fills in municipalities that had
no batch for D (e.g. one added to the master since).  Batch files are written
before the commit; a crash between leaves only unreferenced content-addressed
files, which the next run reuses.

Empty batches are all the same bytes, so the empty file is encoded and stored
once per run; each manifest is still its own signed statement.  Which units
have pending notices is asked once, and the empty batches' rows are inserted
together at the end: on most days most of the ~1,900 units get an empty
batch, and on PostgreSQL each statement is a round trip to another host.

Notices are read one receiving unit at a time, so memory holds the largest
batch, not the day (two million notices on the transition day), and the
batch files are made durable together at the end (:class:`BlobWriter`)
instead of one fsync after another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.exc import IntegrityError

from common import statement
from common.items import MINISTRY
from common.noticefile import FORMAT_TAGS, encode_notice_file
from common.records import record_from_json

from .blobs import BlobStore, BlobWriter
from .errors import CloseDayError
from .municipalities import receiving_units
from .storage import Storage, batches, iso_utc, notices, serialize

__all__ = ["CloseDayResult", "batch_id_for", "close_day", "manifest_body"]

MANIFEST_TYPE = "ministry-batch"
_CHUNK = 500  # notice ids per UPDATE … IN (…): well under every database's parameter limit


@dataclass
class CloseDayResult:
    """What a close-day run did.  ``changed`` is False for a rerun that had nothing to do."""

    business_date: date
    created: int = 0  # batches made by this run
    empty: int = 0  # … of which empty
    records: int = 0  # notices put into batches by this run
    existing: int = 0  # receiving units that already had a batch for the day
    waiting: int = 0  # notices (business date <= D) still not in a batch after the run
    batches: list[dict] = field(default_factory=list)  # the non-empty batches made

    @property
    def changed(self) -> bool:
        return self.created > 0

    def to_json(self) -> dict:
        return {
            "business_date": self.business_date.isoformat(),
            "changed": self.changed,
            "created": self.created,
            "empty": self.empty,
            "records": self.records,
            "existing": self.existing,
            "waiting": self.waiting,
            "batches": self.batches,
        }


def batch_id_for(lasdec: str, business_date: date, sequence: int) -> str:
    return f"{lasdec}-{business_date:%Y%m%d}-{sequence:06d}"


def manifest_body(
    *,
    batch_id: str,
    lasdec: str,
    sequence: int,
    business_date: date,
    records: int,
    sha256: str,
    size: int,
    created_at: datetime,
) -> dict:
    """The statement the server signs for one batch (the contract in docs/api.md)."""
    return {
        "type": MANIFEST_TYPE,
        "format": FORMAT_TAGS[MINISTRY],
        "batch_id": batch_id,
        "lasdec": lasdec,
        "sequence": sequence,
        "business_date": business_date.isoformat(),
        "records": records,
        "sha256": sha256,
        "size": size,
        "created_at": iso_utc(created_at),
    }


def close_day(
    storage: Storage,
    blobs: BlobStore,
    signing_key: Ed25519PrivateKey,
    business_date: date,
    *,
    now: datetime,
) -> CloseDayResult:
    """Cut the batches of ``business_date`` for every receiving unit that has none yet.

    Raises CloseDayError ``closeday.no_master`` (run init) or
    ``closeday.later_day_closed`` (a later business day already has batches:
    closing an earlier one now would number batches out of date order) or
    ``closeday.concurrent`` (another run won; nothing was changed by this one).
    """
    try:
        return _close_day(storage, blobs, signing_key, business_date, now=now)
    except IntegrityError:
        raise CloseDayError(
            "another close-day run cut batches at the same time; run it again to see the result "
            "(it will change nothing if the other run finished)",
            code="closeday.concurrent",
        ) from None


def _close_day(
    storage: Storage,
    blobs: BlobStore,
    signing_key: Ed25519PrivateKey,
    business_date: date,
    *,
    now: datetime,
) -> CloseDayResult:
    result = CloseDayResult(business_date)
    with storage.begin() as conn, BlobWriter(blobs) as writer:
        serialize(conn, "close-day")  # sequence numbers are previous + 1: one run at a time
        units = [m.lasdec for m in receiving_units(conn)]
        if not units:
            raise CloseDayError(
                "the municipality master is not loaded; run `renkei-server init` first",
                code="closeday.no_master",
            )
        latest = conn.execute(sa.select(sa.func.max(batches.c.business_date))).scalar()
        if latest is not None and latest > business_date:
            raise CloseDayError(
                f"business day {latest.isoformat()} is already closed; an earlier day "
                f"({business_date.isoformat()}) can no longer be closed. Notices imported for "
                "it go out with the next day closed",
                code="closeday.later_day_closed",
            )
        done = set(
            conn.execute(
                sa.select(batches.c.lasdec).where(batches.c.business_date == business_date)
            ).scalars()
        )
        last_sequence = dict(
            conn.execute(
                sa.select(batches.c.lasdec, sa.func.max(batches.c.sequence)).group_by(
                    batches.c.lasdec
                )
            ).all()
        )
        # One unit's pending notices at a time (the pending index leads with batch_id, lasdec),
        # so memory holds the largest batch, not the day.
        pending = (
            sa.select(notices.c.notice_id, notices.c.record)
            .where(
                notices.c.batch_id.is_(None),
                notices.c.lasdec == sa.bindparam("unit"),
                notices.c.business_date <= business_date,
            )
            .order_by(notices.c.notice_id)
        )
        assign = (
            notices.update()
            .where(notices.c.notice_id.in_(sa.bindparam("ids", expanding=True)))
            .values(batch_id=sa.bindparam("bid"))
        )
        with_pending = set(
            conn.execute(
                sa.select(notices.c.lasdec)
                .where(notices.c.batch_id.is_(None), notices.c.business_date <= business_date)
                .distinct()
            ).scalars()
        )
        empty_file = encode_notice_file(MINISTRY, ())
        empty_sha: str | None = None
        empty_rows: list[dict] = []
        for lasdec in units:
            if lasdec in done:
                result.existing += 1
                continue
            sequence = last_sequence.get(lasdec, 0) + 1
            batch_id = batch_id_for(lasdec, business_date, sequence)
            items = conn.execute(pending, {"unit": lasdec}).all() if lasdec in with_pending else []
            if items:
                data = encode_notice_file(
                    MINISTRY, (record_from_json(MINISTRY, json.loads(text)) for _, text in items)
                )
                sha256 = writer.put(data)
                result.batches.append(
                    {
                        "lasdec": lasdec,
                        "batch_id": batch_id,
                        "sequence": sequence,
                        "records": len(items),
                    }
                )
            else:
                data = empty_file
                if empty_sha is None:
                    empty_sha = writer.put(empty_file)
                sha256 = empty_sha
                result.empty += 1
            body = manifest_body(
                batch_id=batch_id,
                lasdec=lasdec,
                sequence=sequence,
                business_date=business_date,
                records=len(items),
                sha256=sha256,
                size=len(data),
                created_at=now,
            )
            signed = statement.sign(body, signing_key)
            row = {
                "batch_id": batch_id,
                "lasdec": lasdec,
                "sequence": sequence,
                "business_date": business_date,
                "records": len(items),
                "sha256": sha256,
                "size": len(data),
                "manifest": json.dumps(signed, ensure_ascii=False, separators=(",", ":")),
                "created_at": now,
            }
            result.created += 1
            result.records += len(items)
            if not items:
                empty_rows.append(row)
                continue
            conn.execute(batches.insert(), row)  # before the notices that name it (foreign key)
            ids = [notice_id for notice_id, _ in items]
            for start in range(0, len(ids), _CHUNK):
                conn.execute(assign, {"ids": ids[start : start + _CHUNK], "bid": batch_id})
            del items, data
        if empty_rows:
            conn.execute(batches.insert(), empty_rows)
        # Notices of the day (or before) left without a batch: those of units that already had
        # one for the day, or of codes that are no longer receiving units.
        result.waiting = conn.execute(
            sa.select(sa.func.count())
            .select_from(notices)
            .where(notices.c.batch_id.is_(None), notices.c.business_date <= business_date)
        ).scalar_one()
        writer.wait()  # every batch file is on disk before the rows that name it are committed
    return result
