"""What every signed request reads and writes: the caller in one read, nonce and contact in one
transaction that does not wait for the disk, and the nonce still unique in the database."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from server.enrollment import (
    find_caller,
    find_terminal,
    note_auth_failure,
    recent_auth_failures,
    record_request,
    revoke_terminal,
)
from server.storage import Storage, nonces

HERE, THERE = "192.0.2.1", "198.51.100.7"


def test_find_caller_reads_the_terminal_and_its_failures_from_this_address(
    core_storage: Storage, core_now, core_enroll
):
    terminal, _ = core_enroll()
    for seconds in (0, 100, 500):
        note_auth_failure(
            core_storage,
            terminal.terminal_id,
            source=HERE,
            now=core_now + timedelta(seconds=seconds),
        )
    note_auth_failure(core_storage, terminal.terminal_id, source=THERE, now=core_now)
    at = core_now + timedelta(seconds=600)
    found, failures = find_caller(
        core_storage, terminal.terminal_id, source=HERE, now=at, period=550
    )
    assert found == find_terminal(core_storage, terminal.terminal_id)
    assert failures == 2  # the one at 0 s is older than the period
    assert find_caller(core_storage, terminal.terminal_id, source=THERE, now=at, period=600)[1] == 1
    assert (
        find_caller(core_storage, terminal.terminal_id, source="10.0.0.9", now=at, period=600)[1]
        == 0
    )


def test_an_id_that_names_no_terminal_has_no_failures_and_writes_none(core_storage, core_now):
    for _ in range(4):
        assert not note_auth_failure(core_storage, "t_0000000000000000", source=HERE, now=core_now)
    found, failures = find_caller(
        core_storage, "t_0000000000000000", source=HERE, now=core_now, period=60
    )
    assert (found, failures) == (None, 0)
    assert failures == recent_auth_failures(
        core_storage, "t_0000000000000000", source=HERE, now=core_now, period=60
    )


def test_find_caller_sees_a_revocation_at_once(core_storage: Storage, core_now, core_enroll):
    terminal, _ = core_enroll()
    assert find_caller(core_storage, terminal.terminal_id, source=HERE, now=core_now, period=60)[
        0
    ].active
    revoke_terminal(core_storage, terminal.terminal_id, now=core_now)
    found, _ = find_caller(core_storage, terminal.terminal_id, source=HERE, now=core_now, period=60)
    assert found.revoked_at == core_now


def test_nonce_and_contact_are_written_together(core_storage: Storage, core_now, core_enroll):
    terminal, _ = core_enroll()
    later = core_now + timedelta(minutes=5)
    assert record_request(
        core_storage,
        terminal.terminal_id,
        "nonce-0000000000000001",
        now=later,
        keep=660,
        contact=True,
        agent_version="agent/9.9",
        clock_skew=2.5,
    )
    seen = find_terminal(core_storage, terminal.terminal_id)
    assert (seen.last_seen_at, seen.agent_version, seen.clock_skew) == (later, "agent/9.9", 2.5)
    with core_storage.read() as conn:
        stored = conn.execute(
            sa.select(nonces.c.nonce, nonces.c.seen_at).where(
                nonces.c.terminal_id == terminal.terminal_id
            )
        ).all()
    assert [(row.nonce, row.seen_at) for row in stored] == [("nonce-0000000000000001", later)]


def test_a_replay_writes_nothing(core_storage: Storage, core_now, core_enroll):
    terminal, _ = core_enroll()
    assert record_request(core_storage, terminal.terminal_id, "n" * 22, now=core_now, keep=660)
    before = find_terminal(core_storage, terminal.terminal_id)
    replayed = record_request(
        core_storage,
        terminal.terminal_id,
        "n" * 22,
        now=core_now + timedelta(minutes=2),
        keep=660,
        contact=True,
        agent_version="agent/evil",
        clock_skew=0.0,
    )
    assert replayed is False
    assert find_terminal(core_storage, terminal.terminal_id) == before


def test_without_contact_only_the_nonce_is_written(core_storage: Storage, core_now, core_enroll):
    terminal, _ = core_enroll()
    before = find_terminal(core_storage, terminal.terminal_id)
    assert record_request(
        core_storage,
        terminal.terminal_id,
        "m" * 22,
        now=core_now + timedelta(hours=1),
        keep=660,
        agent_version="ignored",
        clock_skew=99.0,
    )
    assert find_terminal(core_storage, terminal.terminal_id) == before


def _nonces_of(storage: Storage, terminal_id: str) -> set[str]:
    with storage.read() as conn:
        return set(
            conn.execute(sa.select(nonces.c.nonce).where(nonces.c.terminal_id == terminal_id))
            .scalars()
            .all()
        )


def test_expired_nonces_are_forgotten_with_the_contact(core_storage: Storage, core_now):
    def record(nonce: str, seconds: int, *, contact: bool) -> bool:
        at = core_now + timedelta(seconds=seconds)
        return record_request(core_storage, "t_a", nonce, now=at, keep=660, contact=contact)

    assert record("old-00000000000000000", 0, contact=True)
    assert record("recent-00000000000000", 300, contact=False)
    assert record("later-000000000000000", 700, contact=False)
    assert _nonces_of(core_storage, "t_a") == {
        "old-00000000000000000",
        "recent-00000000000000",
        "later-000000000000000",
    }
    assert record("contact-0000000000000", 720, contact=True)  # the old one is 720 s old now
    assert _nonces_of(core_storage, "t_a") == {
        "recent-00000000000000",
        "later-000000000000000",
        "contact-0000000000000",
    }
    assert not record("recent-00000000000000", 730, contact=True)  # still within keep: a replay


def test_a_nonce_is_accepted_once_by_the_database_when_app_servers_race(core_config, core_now):
    """Several app servers share one database: each its own Storage (engine, pool), at once."""
    servers = [Storage(core_config.database_url) for _ in range(4)]
    start = threading.Barrier(len(servers) * 2)
    results: list[bool] = []
    lock = threading.Lock()

    def attempt(storage: Storage) -> None:
        start.wait()
        won = record_request(storage, "t_shared", "race-0000000000000000", now=core_now, keep=660)
        with lock:
            results.append(won)

    threads = [threading.Thread(target=attempt, args=(s,)) for s in servers for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        for storage in servers:
            storage.dispose()
    assert sorted(results) == [False] * 7 + [True]


# --- Storage.begin(durable=False) -----------------------------------------------------------


def _level(conn: sa.Connection) -> str:
    if conn.dialect.name == "sqlite":
        return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[
            conn.exec_driver_sql("PRAGMA synchronous").scalar_one()
        ]
    return conn.exec_driver_sql("SHOW synchronous_commit").scalar_one()


def test_a_relaxed_transaction_relaxes_only_itself(core_storage: Storage):
    with core_storage.begin() as conn:
        durable = _level(conn)
    assert durable in {"FULL", "on"}
    with core_storage.begin(durable=False) as conn:
        assert _level(conn) in {"NORMAL", "off"}
        raw = conn.connection.driver_connection
    with core_storage.begin() as conn:
        assert _level(conn) == durable
    if (
        core_storage.engine.dialect.name == "sqlite"
    ):  # the very connection it used, back in the pool
        assert raw.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_a_relaxed_transaction_rolls_back_on_error_and_restores_the_level(
    core_storage: Storage, core_now
):
    with pytest.raises(IntegrityError), core_storage.begin(durable=False) as conn:
        raw = conn.connection.driver_connection
        conn.execute(nonces.insert().values(terminal_id="t_a", nonce="x" * 22, seen_at=core_now))
        conn.execute(nonces.insert().values(terminal_id="t_a", nonce="x" * 22, seen_at=core_now))
    with core_storage.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(nonces)).scalar_one() == 0
    if core_storage.engine.dialect.name == "sqlite":
        assert raw.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_what_a_relaxed_transaction_commits_is_seen_at_once(
    core_storage: Storage, core_config, core_now
):
    other = Storage(core_config.database_url)  # another app server
    try:
        assert record_request(core_storage, "t_a", "seen-000000000000000", now=core_now, keep=660)
        assert not record_request(other, "t_a", "seen-000000000000000", now=core_now, keep=660)
    finally:
        other.dispose()
