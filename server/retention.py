"""Retention: removing batch files and uploaded originals once nobody may need the bytes.

Batch files and uploaded originals are kept so any delivery can be proved
later; ``retention_days`` says for how long.  After that the *file* may go,
but never the database row: the signed manifest (batch) and the signed
receipt (upload), with hash and size, still prove what was delivered and
received.  The row gets ``purged_at``, so a later download of the batch is
answered "gone" (HTTP 410 ``batch.purged``) instead of "server error".

Rules, checked in the database:

* A row is *expired* when it is older than the cutoff (``now -
  retention_days``, by ``created_at`` / ``received_at``) and, for a batch,
  acknowledged.  An unacknowledged batch is never expired, however old: it
  was never delivered, and it is listed so the operator can follow it up.
* Blobs are content-addressed and shared (every empty batch is the same
  file), so a blob goes only when *every* unpurged row that refers to it is
  expired.  Then all those rows are marked together; a blob still needed by
  a younger or unacknowledged row is kept and its expired rows stay unmarked
  (they are still downloadable — the file is there).

Crash-safe order: the rows are marked in one transaction first, then the
files are deleted.  Every run (not only the one that marked them) deletes
the files of blobs whose rows are all marked and that are still on disk, so
a run interrupted between the two steps is finished by the next one — and a
blob store restored from a backup is trimmed again.  A file is deleted only
inside a write transaction that has just checked that no unpurged row refers
to it; on SQLite that transaction holds the write lock, so no row can be
added between the check and the deletion (on PostgreSQL the two tables are
locked in SHARE mode for the moment).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .blobs import BlobStore
from .storage import TOKYO, Storage, batches, iso_utc, uploads

__all__ = [
    "ExpiredRow",
    "PurgeResult",
    "RemovedFile",
    "SharedBlob",
    "UnacknowledgedBatch",
    "cutoff_for",
    "delete_marked",
    "mark_expired",
    "purge",
]

#: Hashes per ``IN (…)`` list and per deletion transaction (keeps the write lock short).
_CHUNK = 500


@dataclass(frozen=True)
class ExpiredRow:
    """A batch or upload whose file goes (or, in a dry run, would go) in this run."""

    kind: str  # "batch" | "upload"
    row_id: str  # batch_id | upload_id
    lasdec: str
    at: datetime  # created_at | received_at
    sha256: str
    size: int

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "id": self.row_id,
            "lasdec": self.lasdec,
            "at": iso_utc(self.at),
            "sha256": self.sha256,
            "size": self.size,
        }


@dataclass(frozen=True)
class UnacknowledgedBatch:
    """A batch past the retention period that was never acknowledged: kept, and reported."""

    batch_id: str
    lasdec: str
    sequence: int
    business_date: date
    created_at: datetime

    def to_json(self) -> dict:
        return {
            "batch_id": self.batch_id,
            "lasdec": self.lasdec,
            "sequence": self.sequence,
            "business_date": self.business_date.isoformat(),
            "created_at": iso_utc(self.created_at),
        }


@dataclass(frozen=True)
class SharedBlob:
    """A blob with expired rows that is kept because other rows still need it."""

    sha256: str
    expired_rows: int  # unpurged rows past retention (acknowledged, for batches)
    holding_rows: int  # unpurged rows still within retention, or unacknowledged

    def to_json(self) -> dict:
        return {
            "sha256": self.sha256,
            "expired_rows": self.expired_rows,
            "holding_rows": self.holding_rows,
        }


@dataclass(frozen=True)
class RemovedFile:
    """A blob file deleted (or, in a dry run, that would be deleted)."""

    sha256: str
    size: int
    earlier_run: bool  # its rows were marked by an earlier, interrupted run

    def to_json(self) -> dict:
        return {"sha256": self.sha256, "size": self.size, "earlier_run": self.earlier_run}


@dataclass
class PurgeResult:
    """What a purge did (or, with ``dry_run``, would do).  ``ok`` is False if a file could not
    be deleted: its rows are marked and the next run tries again."""

    now: datetime
    retention_days: int
    dry_run: bool
    rows: list[ExpiredRow] = field(default_factory=list)
    unacknowledged: list[UnacknowledgedBatch] = field(default_factory=list)
    shared: list[SharedBlob] = field(default_factory=list)
    files: list[RemovedFile] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # {"sha256", "error"}

    @property
    def cutoff(self) -> datetime:
        return cutoff_for(self.now, self.retention_days)

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def bytes_removed(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "retention_days": self.retention_days,
            "cutoff": iso_utc(self.cutoff),
            "ok": self.ok,
            "rows": [row.to_json() for row in self.rows],
            "files": [f.to_json() for f in self.files],
            "bytes_removed": self.bytes_removed,
            "failed": self.failed,
            "unacknowledged": [b.to_json() for b in self.unacknowledged],
            "shared": [s.to_json() for s in self.shared],
        }

    def text_lines(self) -> Iterator[str]:
        """The report in Japanese, for the operator."""
        cutoff = self.cutoff.astimezone(TOKYO)
        yield (
            f"保存期間 {self.retention_days} 日: {cutoff:%Y-%m-%d %H:%M} (JST) より前に作成・"
            "受信したファイルが対象です"
        )
        if self.dry_run:
            yield "試行（--dry-run）: 何も変更していません。以下は削除される予定のものです"
        kinds = {"batch": "バッチ", "upload": "受信ファイル"}
        verb = "削除予定" if self.dry_run else "削除"
        if not self.rows and not self.files and not self.failed:
            yield "削除するものはありません"
        elif self.rows or self.files:
            batch_rows = sum(1 for row in self.rows if row.kind == "batch")
            yield (
                f"{verb}: バッチ {batch_rows} 件・受信ファイル {len(self.rows) - batch_rows} 件の"
                f"原本（ファイル {len(self.files)} 個、{self.bytes_removed:,} バイト）"
            )
        for row in self.rows:
            at = row.at.astimezone(TOKYO)
            yield (
                f"  {kinds[row.kind]} {row.row_id}\t{row.lasdec}\t{at:%Y-%m-%d}\t"
                f"{row.sha256[:16]}…\t{row.size:,} バイト"
            )
        earlier = [f for f in self.files if f.earlier_run]
        if earlier:
            yield f"前回中断した削除の残り: ファイル {len(earlier)} 個を{verb}"
        for failure in self.failed:
            yield f"削除できませんでした: {failure['sha256']}: {failure['error']}（次回の実行で再試行）"
        if self.unacknowledged:
            yield (
                f"保持: 受領確認のないバッチ {len(self.unacknowledged)} 件 — 保存期間を過ぎても"
                "削除しません。団体に確認してください"
            )
            for b in self.unacknowledged:
                yield f"  バッチ {b.batch_id}\t{b.lasdec}\t業務日 {b.business_date.isoformat()}"
        if self.shared:
            expired = sum(s.expired_rows for s in self.shared)
            yield (
                f"保持: 保存期間内または受領確認前の行と共有しているファイル {len(self.shared)} 個"
                f"（保存期間を過ぎた行 {expired} 件はそのまま残ります）"
            )


def cutoff_for(now: datetime, retention_days: int) -> datetime:
    """Rows created or received before this instant are past the retention period."""
    return now - timedelta(days=retention_days)


# --- queries ------------------------------------------------------------------------------------


def _chunks(items: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _batch_expired(cutoff: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(batches.c.created_at < cutoff, batches.c.acknowledged_at.is_not(None))


def _upload_expired(cutoff: datetime) -> sa.ColumnElement[bool]:
    return uploads.c.received_at < cutoff


def _candidates(conn: Connection, cutoff: datetime) -> list[str]:
    """Hashes with at least one unpurged, expired row."""
    query = sa.union(
        sa.select(batches.c.sha256).where(batches.c.purged_at.is_(None), _batch_expired(cutoff)),
        sa.select(uploads.c.sha256).where(uploads.c.purged_at.is_(None), _upload_expired(cutoff)),
    )
    return sorted(conn.execute(query).scalars())


def _reference_counts(
    conn: Connection, cutoff: datetime, hashes: list[str]
) -> dict[str, tuple[int, int]]:
    """hash -> (expired rows, holding rows) over the unpurged rows that refer to it."""
    counts: dict[str, tuple[int, int]] = {}
    for chunk in _chunks(hashes):
        refs = sa.union_all(
            sa.select(
                batches.c.sha256.label("sha256"),
                sa.case((_batch_expired(cutoff), 1), else_=0).label("expired"),
            ).where(batches.c.purged_at.is_(None), batches.c.sha256.in_(chunk)),
            sa.select(
                uploads.c.sha256.label("sha256"),
                sa.case((_upload_expired(cutoff), 1), else_=0).label("expired"),
            ).where(uploads.c.purged_at.is_(None), uploads.c.sha256.in_(chunk)),
        ).subquery()
        query = sa.select(refs.c.sha256, sa.func.sum(refs.c.expired), sa.func.count()).group_by(
            refs.c.sha256
        )
        for sha256, expired, total in conn.execute(query):
            counts[sha256] = (int(expired), int(total) - int(expired))
    return counts


def _expired_rows(conn: Connection, cutoff: datetime, hashes: list[str]) -> list[ExpiredRow]:
    rows: list[ExpiredRow] = []
    for chunk in _chunks(hashes):
        query = sa.union_all(
            sa.select(
                sa.literal_column("'batch'", sa.String).label("kind"),
                batches.c.batch_id.label("row_id"),
                batches.c.lasdec,
                batches.c.created_at.label("at"),
                batches.c.sha256,
                batches.c.size,
            ).where(
                batches.c.purged_at.is_(None),
                batches.c.sha256.in_(chunk),
                _batch_expired(cutoff),
            ),
            sa.select(
                sa.literal_column("'upload'", sa.String).label("kind"),
                uploads.c.upload_id.label("row_id"),
                uploads.c.lasdec,
                uploads.c.received_at.label("at"),
                uploads.c.sha256,
                uploads.c.size,
            ).where(
                uploads.c.purged_at.is_(None),
                uploads.c.sha256.in_(chunk),
                _upload_expired(cutoff),
            ),
        )
        for row in conn.execute(query):
            rows.append(ExpiredRow(row.kind, row.row_id, row.lasdec, row.at, row.sha256, row.size))
    rows.sort(key=lambda r: (r.at, r.kind, r.row_id))
    return rows


def _unacknowledged(conn: Connection, cutoff: datetime) -> list[UnacknowledgedBatch]:
    query = (
        sa.select(
            batches.c.batch_id,
            batches.c.lasdec,
            batches.c.sequence,
            batches.c.business_date,
            batches.c.created_at,
        )
        .where(
            batches.c.purged_at.is_(None),
            batches.c.acknowledged_at.is_(None),
            batches.c.created_at < cutoff,
        )
        .order_by(batches.c.lasdec, batches.c.sequence)
    )
    return [UnacknowledgedBatch(*row) for row in conn.execute(query)]


def _referenced(conn: Connection, hashes: list[str]) -> set[str]:
    """The hashes among ``hashes`` that an unpurged row still refers to."""
    found: set[str] = set()
    for chunk in _chunks(hashes):
        query = sa.union(
            sa.select(batches.c.sha256).where(
                batches.c.purged_at.is_(None), batches.c.sha256.in_(chunk)
            ),
            sa.select(uploads.c.sha256).where(
                uploads.c.purged_at.is_(None), uploads.c.sha256.in_(chunk)
            ),
        )
        found.update(conn.execute(query).scalars())
    return found


def _marked_unreferenced(conn: Connection) -> list[str]:
    """Hashes that marked rows refer to and no unpurged row does: their files should be gone."""

    def unreferenced(table: sa.Table) -> sa.Select:
        other_b, other_u = batches.alias("ref_b"), uploads.alias("ref_u")
        return sa.select(table.c.sha256).where(
            table.c.purged_at.is_not(None),
            ~sa.exists().where(other_b.c.sha256 == table.c.sha256, other_b.c.purged_at.is_(None)),
            ~sa.exists().where(other_u.c.sha256 == table.c.sha256, other_u.c.purged_at.is_(None)),
        )

    return sorted(conn.execute(sa.union(unreferenced(batches), unreferenced(uploads))).scalars())


# --- the two steps ------------------------------------------------------------------------------


def _plan(conn: Connection, result: PurgeResult) -> list[str]:
    """Fill ``result`` with the rows that expire and what is kept; return the blobs that go."""
    cutoff = result.cutoff
    counts = _reference_counts(conn, cutoff, _candidates(conn, cutoff))
    going = sorted(sha for sha, (_, holding) in counts.items() if holding == 0)
    result.shared = [
        SharedBlob(sha, expired, holding)
        for sha, (expired, holding) in sorted(counts.items())
        if holding > 0
    ]
    result.unacknowledged = _unacknowledged(conn, cutoff)
    result.rows = _expired_rows(conn, cutoff, going)
    return going


def mark_expired(
    storage: Storage, *, now: datetime, retention_days: int, dry_run: bool = False
) -> PurgeResult:
    """Step 1: in one transaction, set ``purged_at = now`` on every row of every blob that goes.

    Returns the result with ``rows``, ``unacknowledged`` and ``shared``
    filled in (``files`` is step 2's).  With ``dry_run`` nothing is written.
    The update repeats the expiry conditions, so a row that appeared since
    the plan was made (possible on PostgreSQL) is never marked.
    """
    result = PurgeResult(now=now, retention_days=retention_days, dry_run=dry_run)
    if dry_run:
        with storage.read() as conn:
            _plan(conn, result)
        return result
    cutoff = result.cutoff
    with storage.begin() as conn:
        going = _plan(conn, result)
        for chunk in _chunks(going):
            conn.execute(
                batches.update()
                .where(
                    batches.c.purged_at.is_(None),
                    batches.c.sha256.in_(chunk),
                    _batch_expired(cutoff),
                )
                .values(purged_at=now)
            )
            conn.execute(
                uploads.update()
                .where(
                    uploads.c.purged_at.is_(None),
                    uploads.c.sha256.in_(chunk),
                    _upload_expired(cutoff),
                )
                .values(purged_at=now)
            )
    return result


def _lock_references(conn: Connection) -> None:
    """Stop rows being added while files are checked and deleted.

    SQLite: the write transaction (``BEGIN IMMEDIATE``) already holds the
    database's write lock.  PostgreSQL: SHARE mode blocks inserts and updates
    of the two tables until the transaction ends.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("LOCK TABLE batches, uploads IN SHARE MODE")


def delete_marked(storage: Storage, blobs: BlobStore, result: PurgeResult) -> PurgeResult:
    """Step 2: delete the files of blobs whose rows are all marked and that are still on disk.

    This includes the blobs ``mark_expired`` just marked and any left by an
    interrupted earlier run (``earlier_run``).  Each file is deleted inside a
    write transaction that first checks no unpurged row refers to it.  A file
    that cannot be deleted is listed in ``failed``; the next run tries again.
    With ``result.dry_run`` the files that would go are listed, nothing is
    deleted: those of the planned rows and those left by an earlier run.
    """
    planned = {row.sha256 for row in result.rows}
    with storage.read() as conn:
        pending = set(_marked_unreferenced(conn))
    if result.dry_run:
        pending |= planned
    on_disk: dict[str, int] = {}
    for sha256 in sorted(pending):
        try:
            on_disk[sha256] = blobs.path(sha256).stat().st_size
        except FileNotFoundError:
            continue
    if result.dry_run:
        result.files = [RemovedFile(s, n, s not in planned) for s, n in on_disk.items()]
        return result
    for chunk in _chunks(on_disk):
        with storage.begin() as conn:
            _lock_references(conn)
            still_needed = _referenced(conn, chunk)
            for sha256 in chunk:
                if sha256 in still_needed:
                    continue
                try:
                    blobs.path(sha256).unlink()
                except FileNotFoundError:  # another purge run was faster
                    continue
                except OSError as exc:
                    result.failed.append({"sha256": sha256, "error": exc.strerror or str(exc)})
                    continue
                result.files.append(RemovedFile(sha256, on_disk[sha256], sha256 not in planned))
    return result


def purge(
    storage: Storage,
    blobs: BlobStore,
    *,
    now: datetime,
    retention_days: int,
    dry_run: bool = False,
) -> PurgeResult:
    """Mark the rows whose blobs are past retention, then delete those files (and leftovers).

    See the module docstring for the rules.  With ``dry_run`` nothing is
    changed and the result lists what would be.
    """
    result = mark_expired(storage, now=now, retention_days=retention_days, dry_run=dry_run)
    return delete_marked(storage, blobs, result)
