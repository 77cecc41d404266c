"""Storage on either database: URLs, snapshots, the turn-taking lock, reconnecting after a restart.

The tests use the run's database (``--database``); those about PostgreSQL's
own behaviour (read-only transactions, advisory locks in ``pg_locks``, a
server that dropped every connection) skip on SQLite and say why.
"""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from server.config import load_config
from server.errors import ConfigError
from server.storage import Storage, engine_url, lock_key, nonces, serialize

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)


def _postgresql_only(storage: Storage) -> None:
    if storage.engine.dialect.name != "postgresql":
        pytest.skip("about PostgreSQL itself (run with --database=postgresql)")


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("sqlite:////var/lib/renkei-server/renkei.sqlite3", "sqlite"),
        ("postgresql://renkei@db.example/renkei", "postgresql+psycopg"),
        ("postgres://renkei@db.example/renkei", "postgresql+psycopg"),
        ("postgresql+psycopg://renkei@/renkei?host=/run/postgresql", "postgresql+psycopg"),
    ],
)
def test_database_urls_name_sqlite_or_postgresql_with_psycopg(url: str, driver: str):
    assert engine_url(url).drivername == driver


@pytest.mark.parametrize(
    "url", ["mysql://renkei@db/renkei", "postgresql+psycopg2://renkei@db/renkei", "renkei.sqlite3"]
)
def test_other_databases_are_a_config_error_naming_the_key(url: str):
    with pytest.raises(ConfigError, match="database_url"):
        load_config(env={}, database_url=url)
    with pytest.raises(ConfigError, match="database"):
        engine_url(url)


def test_messages_show_the_url_without_its_password():
    storage = Storage("postgresql://renkei:s3cret@db.example:5432/renkei")
    try:
        assert "s3cret" not in storage.safe_url
        assert storage.safe_url.startswith("postgresql+psycopg://renkei:***@db.example:5432/")
    finally:
        storage.dispose()


def test_lock_keys_are_the_documented_sha256_prefix():
    """Operators find a lock in pg_locks from its scope: the first 8 bytes of SHA-256, signed."""
    digest = hashlib.sha256(b"renkei\x1fupload\x1f131016").digest()
    assert lock_key("upload", "131016") == int.from_bytes(digest[:8], "big", signed=True)
    assert lock_key("close-day") != lock_key("import")


def test_a_read_is_one_snapshot(core_storage: Storage):
    """Rows committed by another transaction after a read began are not seen by that read."""
    with core_storage.read() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(nonces)).scalar_one()
        with core_storage.begin() as writer:
            writer.execute(nonces.insert().values(terminal_id="t", nonce="n", seen_at=NOW))
        during = conn.execute(sa.select(sa.func.count()).select_from(nonces)).scalar_one()
    with core_storage.read() as conn:
        after = conn.execute(sa.select(sa.func.count()).select_from(nonces)).scalar_one()
    assert (before, during, after) == (0, 0, 1)


def test_a_read_cannot_write_on_postgresql(core_storage: Storage):
    _postgresql_only(core_storage)
    with pytest.raises(DBAPIError, match="read-only transaction"), core_storage.read() as conn:
        conn.execute(nonces.insert().values(terminal_id="t", nonce="n", seen_at=NOW))
    with core_storage.begin() as conn:  # the connection went back to the pool read-write
        conn.execute(nonces.insert().values(terminal_id="t", nonce="n", seen_at=NOW))


def _waiting(storage: Storage, *scope: str) -> int:
    unsigned = lock_key(*scope) & 0xFFFF_FFFF_FFFF_FFFF
    with storage.read() as conn:
        return conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND objsubid = 1 AND classid::bigint = :high AND objid::bigint = :low"
            ),
            {"high": unsigned >> 32, "low": unsigned & 0xFFFF_FFFF},
        ).scalar_one()


def test_serialized_transactions_take_turns_and_see_each_others_rows(core_storage: Storage):
    """The second waits at serialize() until the first commits, then reads what it wrote."""
    _postgresql_only(core_storage)
    seen: list[int] = []

    def second() -> None:
        with core_storage.begin() as conn:
            serialize(conn, "test", "turns")
            seen.append(conn.execute(sa.select(sa.func.count()).select_from(nonces)).scalar_one())

    with core_storage.begin() as conn:
        serialize(conn, "test", "turns")
        thread = threading.Thread(target=second)
        thread.start()
        deadline = time.monotonic() + 30
        while _waiting(core_storage, "test", "turns") < 1:
            assert time.monotonic() < deadline and thread.is_alive(), "the second never waited"
            time.sleep(0.02)
        assert not seen, "the second ran while the first held the lock"
        conn.execute(nonces.insert().values(terminal_id="t", nonce="n", seen_at=NOW))
    thread.join(timeout=30)
    assert seen == [1]
    with core_storage.begin() as conn:  # another scope is not held up by anything
        serialize(conn, "test", "other")


def test_the_pool_reconnects_after_the_server_dropped_every_connection(core_storage: Storage):
    """What a failover or restart does to the app servers' pooled connections: no error after."""
    _postgresql_only(core_storage)
    with core_storage.read() as conn:
        conn.execute(sa.text("SELECT 1"))
        database = conn.execute(sa.text("SELECT current_database()")).scalar_one()
    other = Storage(core_storage.url)
    try:
        with other.begin() as conn:
            dropped = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ),
                {"db": database},
            ).scalar_one()
    finally:
        other.dispose()
    assert dropped >= 1
    with core_storage.begin() as conn:
        conn.execute(nonces.insert().values(terminal_id="t", nonce="after", seen_at=NOW))
    with core_storage.read() as conn:
        assert conn.execute(sa.select(nonces.c.nonce)).scalars().all() == ["after"]
