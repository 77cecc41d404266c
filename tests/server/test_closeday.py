"""Closing the day: one signed, numbered batch per receiving unit; reruns change nothing."""

from __future__ import annotations

import hashlib
import io
import threading
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from common import statement
from common.items import MINISTRY
from common.noticefile import FORMAT_TAGS, RowError, read_notice_file
from server.batches import acknowledge, get_batch, list_batches, note_download
from server.blobs import BlobStore
from server.closeday import close_day
from server.errors import AckError, CloseDayError, NotFoundError
from server.ingest import import_notices
from server.storage import Storage, batches, municipalities, notices
from tests.server.conftest import CHIYODA, SAPPORO_CHUO, ministry_jsonl

DAY = date(2026, 11, 27)
NEXT = date(2026, 11, 28)


def load(storage: Storage, records, day: date, now: datetime) -> None:
    result = import_notices(
        storage, ministry_jsonl(records), file_name="in.jsonl", business_date=day, now=now
    )
    assert result.ok and result.loaded == len(records)


def receiving_count(storage: Storage) -> int:
    with storage.read() as conn:
        return conn.execute(
            sa.select(sa.func.count()).where(municipalities.c.receiving.is_(True))
        ).scalar()


def decode(blobs: BlobStore, sha256: str) -> list[dict]:
    data = blobs.get(sha256)
    assert hashlib.sha256(data).hexdigest() == sha256
    reader = read_notice_file(io.BytesIO(data))
    assert reader.direction == MINISTRY
    rows = list(reader)
    assert not any(isinstance(r, RowError) for r in rows)
    return [r.to_json() for r in rows]


def test_close_day_cuts_one_batch_per_receiving_unit(
    core_storage: Storage, core_blobs: BlobStore, core_key, core_samples, core_now
):
    chiyoda = list(core_samples.day_of(MINISTRY, CHIYODA, 7))
    ward = list(core_samples.day_of(MINISTRY, SAPPORO_CHUO, 2))
    load(core_storage, chiyoda + ward, DAY, core_now)
    result = close_day(core_storage, core_blobs, core_key, DAY, now=core_now)

    units = receiving_count(core_storage)
    assert result.changed and result.created == units and result.empty == units - 2
    assert result.records == 9 and result.waiting == 0 and result.existing == 0
    assert sorted((b["lasdec"], b["records"]) for b in result.batches) == [
        (SAPPORO_CHUO, 2),
        (CHIYODA, 7),
    ]
    with core_storage.read() as conn:
        rows = conn.execute(sa.select(batches)).all()
        assert (
            conn.execute(sa.select(sa.func.count()).where(notices.c.batch_id.is_(None))).scalar()
            == 0
        )
    assert len(rows) == units and {r.sequence for r in rows} == {1}
    assert {r.business_date for r in rows} == {DAY}
    empties = [r for r in rows if r.records == 0]
    assert len({r.sha256 for r in empties}) == 1  # the same bytes, stored once
    assert decode(core_blobs, empties[0].sha256) == []
    [batch] = list_batches(core_storage, CHIYODA, pending_only=True)
    assert decode(core_blobs, batch.sha256) == [r.to_json() for r in chiyoda]


def test_manifest_is_signed_and_matches_the_blob(
    core_storage: Storage, core_blobs: BlobStore, core_key, core_samples, core_now
):
    load(core_storage, list(core_samples.day_of(MINISTRY, CHIYODA, 3)), DAY, core_now)
    close_day(core_storage, core_blobs, core_key, DAY, now=core_now)
    for lasdec in (CHIYODA, SAPPORO_CHUO):
        [batch] = list_batches(core_storage, lasdec, pending_only=False)
        body = statement.verify(batch.manifest, core_key.public_key())
        data = core_blobs.get(body["sha256"])
        assert body == {
            "type": "ministry-batch",
            "format": FORMAT_TAGS[MINISTRY],
            "batch_id": batch.batch_id,
            "lasdec": lasdec,
            "sequence": 1,
            "business_date": "2026-11-27",
            "records": batch.records,
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
            "created_at": "2026-11-27T09:00:00Z",
        }
        assert batch.size == len(data) and batch.sha256 == body["sha256"]
    tampered = dict(batch.manifest, statement={**batch.manifest["statement"], "records": 5})
    with pytest.raises(statement.StatementError):
        statement.verify(tampered, core_key.public_key())


def test_rerun_changes_nothing_and_next_day_continues(
    core_storage: Storage, core_blobs: BlobStore, core_key, core_samples, core_now
):
    load(core_storage, list(core_samples.day_of(MINISTRY, CHIYODA, 2)), DAY, core_now)
    close_day(core_storage, core_blobs, core_key, DAY, now=core_now)
    with core_storage.read() as conn:
        before = conn.execute(sa.select(batches).order_by(batches.c.batch_id)).all()

    late = list(core_samples.day_of(MINISTRY, CHIYODA, 3))  # imported after the day was closed
    load(core_storage, late, DAY, core_now + timedelta(hours=1))
    rerun = close_day(core_storage, core_blobs, core_key, DAY, now=core_now + timedelta(hours=2))
    assert not rerun.changed and rerun.created == 0
    assert rerun.existing == len(before) and rerun.waiting == 3
    with core_storage.read() as conn:
        assert conn.execute(sa.select(batches).order_by(batches.c.batch_id)).all() == before

    tomorrow = list(core_samples.day_of(MINISTRY, CHIYODA, 1))
    load(core_storage, tomorrow, NEXT, core_now + timedelta(days=1))
    result = close_day(core_storage, core_blobs, core_key, NEXT, now=core_now + timedelta(days=1))
    assert result.created == len(before) and result.waiting == 0
    chiyoda = list_batches(core_storage, CHIYODA, pending_only=False)
    assert [(b.sequence, b.business_date, b.records) for b in chiyoda] == [
        (1, DAY, 2),
        (2, NEXT, 4),
    ]
    assert decode(core_blobs, chiyoda[1].sha256) == [r.to_json() for r in late + tomorrow]
    assert [b.sequence for b in list_batches(core_storage, SAPPORO_CHUO, pending_only=False)] == [
        1,
        2,
    ]


def test_skipped_days_keep_sequences_and_earlier_days_are_refused(
    core_storage: Storage, core_blobs: BlobStore, core_key, core_now
):
    close_day(core_storage, core_blobs, core_key, DAY, now=core_now)
    later = DAY + timedelta(days=3)
    close_day(core_storage, core_blobs, core_key, later, now=core_now + timedelta(days=3))
    assert [b.sequence for b in list_batches(core_storage, CHIYODA, pending_only=False)] == [1, 2]
    with pytest.raises(CloseDayError) as caught:
        close_day(core_storage, core_blobs, core_key, NEXT, now=core_now + timedelta(days=4))
    assert caught.value.code == "closeday.later_day_closed"


def test_close_day_needs_the_master(tmp_path: Path, core_key, core_now):
    storage = Storage(f"sqlite:///{tmp_path}/empty.sqlite3")
    storage.migrate()
    with pytest.raises(CloseDayError) as caught:
        close_day(storage, BlobStore(tmp_path / "b"), core_key, DAY, now=core_now)
    assert caught.value.code == "closeday.no_master"
    storage.dispose()


def test_download_and_acknowledge(
    core_storage: Storage, core_blobs: BlobStore, core_key, core_samples, core_now
):
    load(core_storage, list(core_samples.day_of(MINISTRY, CHIYODA, 1)), DAY, core_now)
    close_day(core_storage, core_blobs, core_key, DAY, now=core_now)
    [batch] = list_batches(core_storage, CHIYODA, pending_only=True)
    assert get_batch(core_storage, SAPPORO_CHUO, batch.batch_id) is None  # another municipality
    assert get_batch(core_storage, CHIYODA, "nope") is None

    first = core_now + timedelta(hours=1)
    note_download(core_storage, CHIYODA, batch.batch_id, now=first)
    note_download(core_storage, CHIYODA, batch.batch_id, now=first + timedelta(hours=1))
    note_download(core_storage, SAPPORO_CHUO, batch.batch_id, now=first)  # not theirs: no effect
    assert get_batch(core_storage, CHIYODA, batch.batch_id).first_downloaded_at == first

    with pytest.raises(AckError) as caught:
        acknowledge(core_storage, CHIYODA, batch.batch_id, "0" * 64, "t_1", now=first)
    assert caught.value.code == "ack.hash_mismatch"
    with pytest.raises(NotFoundError):
        acknowledge(core_storage, SAPPORO_CHUO, batch.batch_id, batch.sha256, "t_2", now=first)
    assert list_batches(core_storage, CHIYODA, pending_only=True) == [
        get_batch(core_storage, CHIYODA, batch.batch_id)
    ]

    acked = acknowledge(
        core_storage, CHIYODA, batch.batch_id, batch.sha256.upper(), "t_1", now=first
    )
    assert (acked.acknowledged_at, acked.acknowledged_by) == (first, "t_1")
    again = acknowledge(
        core_storage, CHIYODA, batch.batch_id, batch.sha256, "t_9", now=first + timedelta(hours=5)
    )
    assert (again.acknowledged_at, again.acknowledged_by) == (first, "t_1")  # the first is kept
    assert list_batches(core_storage, CHIYODA, pending_only=True) == []
    assert [b.batch_id for b in list_batches(core_storage, CHIYODA, pending_only=False)] == [
        batch.batch_id
    ]


def test_two_runs_at_once_cut_the_day_once(core_storage: Storage, core_blobs, core_key, core_now):
    results = []

    def run() -> None:
        results.append(close_day(core_storage, core_blobs, core_key, DAY, now=core_now))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.changed for r in results) == [False, True]
    with core_storage.read() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(batches)).scalar()
    assert count == receiving_count(core_storage)
