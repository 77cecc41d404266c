"""Ministry-notice batches as a terminal sees them: list, fetch, note the download, acknowledge.

A batch is one municipality's notices of one business day (made by
:mod:`server.closeday`).  Every function is scoped by municipality: asking
for another municipality's batch id finds nothing, exactly as an unknown id
does, so a terminal cannot even learn which ids exist elsewhere.  A batch is
delivered only when a terminal acknowledges it with the file's SHA-256; a
second acknowledgement is harmless and keeps the first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime

import sqlalchemy as sa

from .errors import AckError, NotFoundError
from .storage import Storage, batches, iso_utc

__all__ = ["Batch", "acknowledge", "get_batch", "list_batches", "note_download"]


@dataclass(frozen=True)
class Batch:
    batch_id: str
    lasdec: str
    sequence: int
    business_date: date
    records: int
    sha256: str
    size: int
    manifest: dict  # the signed statement (common.statement.sign)
    created_at: datetime
    first_downloaded_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    purged_at: datetime | None = None  # the file was removed after retention (server.retention)

    @property
    def pending(self) -> bool:
        return self.acknowledged_at is None

    def to_json(self) -> dict:
        def when(value: datetime | None) -> str | None:
            return iso_utc(value) if value is not None else None

        return {
            "batch_id": self.batch_id,
            "lasdec": self.lasdec,
            "sequence": self.sequence,
            "business_date": self.business_date.isoformat(),
            "records": self.records,
            "sha256": self.sha256,
            "size": self.size,
            "created_at": when(self.created_at),
            "first_downloaded_at": when(self.first_downloaded_at),
            "acknowledged_at": when(self.acknowledged_at),
            "acknowledged_by": self.acknowledged_by,
            "purged_at": when(self.purged_at),
        }


def _batch(row: sa.Row) -> Batch:
    values = row._asdict()
    values["manifest"] = json.loads(values["manifest"])
    return Batch(**values)


def list_batches(storage: Storage, lasdec: str, *, pending_only: bool) -> list[Batch]:
    """The municipality's batches in sequence order (only unacknowledged ones if ``pending_only``)."""
    query = sa.select(batches).where(batches.c.lasdec == lasdec).order_by(batches.c.sequence)
    if pending_only:
        query = query.where(batches.c.acknowledged_at.is_(None))
    with storage.read() as conn:
        return [_batch(row) for row in conn.execute(query)]


#: One batch by id, scoped by municipality.  Built once: building a select and its cache key
#: cost about as much as running it (every download and acknowledgement runs it, issue 10).
_ONE_BATCH = sa.select(batches).where(
    batches.c.batch_id == sa.bindparam("batch_id"), batches.c.lasdec == sa.bindparam("lasdec")
)


def get_batch(storage: Storage, lasdec: str, batch_id: str) -> Batch | None:
    """The batch, or None if there is none with this id *for this municipality*."""
    with storage.read() as conn:
        row = conn.execute(_ONE_BATCH, {"batch_id": batch_id, "lasdec": lasdec}).first()
    return _batch(row) if row is not None else None


def note_download(storage: Storage, lasdec: str, batch_id: str, *, now: datetime) -> None:
    """Remember the first time the batch file was fetched (later fetches change nothing)."""
    with storage.begin() as conn:
        conn.execute(
            batches.update()
            .where(
                batches.c.batch_id == batch_id,
                batches.c.lasdec == lasdec,
                batches.c.first_downloaded_at.is_(None),
            )
            .values(first_downloaded_at=now)
        )


def acknowledge(
    storage: Storage, lasdec: str, batch_id: str, sha256: str, terminal_id: str, *, now: datetime
) -> Batch:
    """Mark the batch delivered, if ``sha256`` is the file's hash; return it.

    Raises NotFoundError ``batch.not_found`` (no such batch for this
    municipality) or AckError ``ack.hash_mismatch``.  Acknowledging again
    returns the batch with the first acknowledgement kept.
    """
    batch = get_batch(storage, lasdec, batch_id)
    if batch is None:
        raise NotFoundError(f"no batch {batch_id!r} for this municipality", code="batch.not_found")
    if not isinstance(sha256, str) or sha256.strip().lower() != batch.sha256:
        raise AckError(
            f"the SHA-256 given for batch {batch_id} does not match the file; download it again",
            code="ack.hash_mismatch",
        )
    with storage.begin() as conn:
        conn.execute(
            batches.update()
            .where(
                batches.c.batch_id == batch_id,
                batches.c.lasdec == lasdec,
                batches.c.acknowledged_at.is_(None),
            )
            .values(acknowledged_at=now, acknowledged_by=terminal_id)
        )
        # Read back in the same transaction: one fewer round trip, and the answer is the row
        # exactly as this transaction left it.
        row = conn.execute(_ONE_BATCH, {"batch_id": batch_id, "lasdec": lasdec}).first()
    assert row is not None
    return _batch(row)
