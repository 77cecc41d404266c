"""Storage, blobs, the signing key and the municipality master, on real files."""

from __future__ import annotations

import os
import stat
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from common import lasdec, statement
from server.blobs import BlobStore
from server.errors import ServerError
from server.keys import load_or_create_signing_key, load_signing_key
from server.municipalities import get_municipality, load_master, shipped_master
from server.storage import (
    Storage,
    batches,
    business_day,
    iso_utc,
    municipalities,
    nonces,
    schema_migrations,
)
from tests.server.conftest import CHIYODA, HOKKAIDO, SAPPORO, SAPPORO_CHUO


def test_migrate_is_recorded_and_idempotent(tmp_path: Path):
    storage = Storage(f"sqlite:///{tmp_path}/db.sqlite3")
    assert storage.schema_version() == 0
    assert storage.migrate() == [
        "001_initial",
        "002_retention",
        "003_operations",
        "004_auth_failure_source",
    ]
    assert storage.migrate() == []
    assert storage.schema_version() == 4
    with storage.read() as conn:
        rows = conn.execute(sa.select(schema_migrations)).all()
        assert [(r.version, r.name) for r in rows] == [
            (1, "initial"),
            (2, "retention"),
            (3, "operations"),
            (4, "auth_failure_source"),
        ]
        assert rows[0].applied_at.tzinfo is not None
    storage.dispose()


def test_sqlite_runs_in_wal_with_foreign_keys(core_storage: Storage):
    with core_storage.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    with pytest.raises(IntegrityError), core_storage.begin() as conn:
        conn.execute(  # no such municipality: the foreign key refuses it
            batches.insert().values(
                batch_id="x",
                lasdec="999999",
                sequence=1,
                business_date=date(2026, 1, 1),
                records=0,
                sha256="0" * 64,
                size=0,
                manifest="{}",
                created_at=datetime.now(UTC),
            )
        )


def test_times_come_back_as_aware_utc(core_storage: Storage):
    tokyo_time = datetime(2026, 11, 27, 18, 0, 0, 123456, tzinfo=timezone(timedelta(hours=9)))
    with core_storage.begin() as conn:
        conn.execute(nonces.insert().values(terminal_id="t", nonce="n", seen_at=tokyo_time))
    with core_storage.read() as conn:
        seen = conn.execute(sa.select(nonces.c.seen_at)).scalar_one()
    assert seen == tokyo_time and seen.tzinfo == UTC and seen.hour == 9
    with pytest.raises(sa.exc.StatementError), core_storage.begin() as conn:
        conn.execute(
            nonces.insert().values(terminal_id="t", nonce="m", seen_at=datetime(2026, 1, 1))
        )


def test_a_failed_transaction_leaves_nothing(core_storage: Storage):
    with pytest.raises(IntegrityError), core_storage.begin() as conn:
        conn.execute(nonces.insert().values(terminal_id="t", nonce="a", seen_at=datetime.now(UTC)))
        conn.execute(nonces.insert().values(terminal_id="t", nonce="a", seen_at=datetime.now(UTC)))
    with core_storage.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(nonces)).scalar() == 0


@pytest.mark.parametrize(
    ("instant", "text", "day"),
    [
        (
            datetime(2026, 11, 27, 14, 59, 59, 999, tzinfo=UTC),
            "2026-11-27T14:59:59Z",
            date(2026, 11, 27),
        ),
        (datetime(2026, 11, 27, 15, 0, tzinfo=UTC), "2026-11-27T15:00:00Z", date(2026, 11, 28)),
        (
            datetime(2026, 11, 28, 0, 30, tzinfo=timezone(timedelta(hours=9))),
            "2026-11-27T15:30:00Z",
            date(2026, 11, 28),
        ),
    ],
)
def test_iso_utc_and_business_day(instant: datetime, text: str, day: date):
    assert iso_utc(instant) == text
    assert business_day(instant) == day


# --- blobs ---------------------------------------------------------------------------------------


def test_blobs_are_content_addressed_and_stored_once(tmp_path: Path):
    store = BlobStore(tmp_path / "blobs")
    digest = store.put(b"hello")
    assert digest == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    path = store.path(digest)
    assert path == tmp_path / "blobs" / "2c" / digest and path.read_bytes() == b"hello"
    assert store.exists(digest) and store.get(digest) == b"hello"
    mtime = path.stat().st_mtime_ns
    assert store.put(b"hello") == digest
    assert path.stat().st_mtime_ns == mtime  # not rewritten
    assert [p.name for p in path.parent.iterdir()] == [digest]  # no temporary left
    assert not store.exists("0" * 64)


@pytest.mark.parametrize("bad", ["../../etc/passwd", "AB" * 32, "0" * 63, ""])
def test_blob_paths_only_for_hashes(tmp_path: Path, bad: str):
    with pytest.raises(ValueError):
        BlobStore(tmp_path).path(bad)


# --- the signing key -----------------------------------------------------------------------------


def test_signing_key_is_made_once_with_mode_0600(tmp_path: Path):
    path = tmp_path / "keys" / "signing-key.pem"
    key = load_or_create_signing_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    again = load_or_create_signing_key(path)
    assert statement.key_id(again.public_key()) == statement.key_id(key.public_key())
    assert statement.key_id(load_signing_key(path).public_key()) == statement.key_id(
        key.public_key()
    )


def test_missing_and_wrong_keys(tmp_path: Path):
    with pytest.raises(ServerError) as caught:
        load_signing_key(tmp_path / "none.pem")
    assert caught.value.code == "key.missing"
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(ServerError) as caught:
        load_signing_key(bad)
    assert caught.value.code == "key.invalid"


# --- the municipality master ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "receiving"),
    [(CHIYODA, True), (SAPPORO_CHUO, True), (SAPPORO, False), (HOKKAIDO, False), ("012025", True)],
)
def test_receiving_units(core_storage: Storage, code: str, receiving: bool):
    row = get_municipality(core_storage, code)
    assert row is not None and row.receiving is receiving and row.in_master


def test_master_counts_match_the_shipped_master(core_storage: Storage):
    entries = shipped_master()
    parents = {m.parent for m in entries if m.parent}
    expected = sum(1 for m in entries if m.kind != "都道府県" and m.code not in parents)
    with core_storage.read() as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(municipalities)).scalar()
        receiving = conn.execute(
            sa.select(sa.func.count()).where(municipalities.c.receiving.is_(True))
        ).scalar()
    assert total == len(entries) == len(lasdec.municipalities()) + 47
    assert receiving == expected and 1800 < receiving < 1950


def test_reloading_the_master_updates_and_retires(core_storage: Storage):
    again = load_master(core_storage)
    assert (again.added, again.updated, again.retired) == (0, 0, 0)
    entries = [m for m in shipped_master() if m.code != "012025"]
    renamed = [
        type(m)(**{**m.__dict__, "name": m.name + "（新）"}) if m.code == CHIYODA else m
        for m in entries
    ]
    result = load_master(core_storage, renamed)
    assert (result.added, result.updated, result.retired) == (0, 1, 1)
    retired = get_municipality(core_storage, "012025")
    assert retired is not None and not retired.in_master and not retired.receiving
    assert get_municipality(core_storage, CHIYODA).name.endswith("（新）")


def test_migration_4_adds_the_failure_source_to_a_version_3_database(tmp_path: Path):
    storage = Storage(f"sqlite:///{tmp_path}/db.sqlite3")
    storage.migrate()
    with storage.begin() as conn:  # auth_failures as migration 1 made it before version 4
        conn.exec_driver_sql("DROP TABLE auth_failures")
        conn.exec_driver_sql(
            "CREATE TABLE auth_failures (failure_id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "key_id VARCHAR(128) NOT NULL, failed_at DATETIME NOT NULL)"
        )
        conn.execute(schema_migrations.delete().where(schema_migrations.c.version == 4))
    assert storage.schema_version() == 3
    assert storage.migrate() == ["004_auth_failure_source"]
    with storage.read() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("auth_failures")}
    assert "source" in columns
    storage.dispose()
