"""Enrollment tokens, terminals, nonces and failed-auth counts, on a real database."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import statement
from server.enrollment import (
    enroll,
    find_terminal,
    find_terminal_by_key_id,
    issue_token,
    list_terminals,
    list_tokens,
    note_auth_failure,
    note_contact,
    recent_auth_failures,
    remember_nonce,
    revoke_terminal,
)
from server.errors import EnrollmentError, NotFoundError
from server.storage import Storage, auth_failures, enrollment_tokens
from tests.server.conftest import CHIYODA, HOKKAIDO, SAPPORO, SAPPORO_CHUO


def public_text() -> str:
    return statement.public_key_to_text(Ed25519PrivateKey.generate().public_key())


def test_token_enrolls_a_terminal_once(core_storage: Storage, core_now: datetime):
    token = issue_token(core_storage, CHIYODA, now=core_now, ttl=3600)
    key = public_text()
    terminal = enroll(core_storage, token, key, now=core_now, agent_version="1.2.3")
    assert terminal.lasdec == CHIYODA and terminal.public_key == key
    assert terminal.key_id == statement.key_id(statement.public_key_from_text(key))
    assert terminal.enrolled_at == core_now and terminal.revoked_at is None
    assert terminal.agent_version == "1.2.3"
    assert find_terminal(core_storage, terminal.terminal_id) == terminal
    assert find_terminal_by_key_id(core_storage, terminal.key_id) == terminal
    with pytest.raises(EnrollmentError) as caught:
        enroll(core_storage, token, public_text(), now=core_now)
    assert caught.value.code == "token.used"
    assert [t.terminal_id for t in list_terminals(core_storage)] == [terminal.terminal_id]


def test_tokens_are_stored_hashed(core_storage: Storage, core_now: datetime):
    token = issue_token(core_storage, CHIYODA, now=core_now, ttl=60)
    with core_storage.read() as conn:
        stored = conn.execute(sa.select(enrollment_tokens)).one()
    assert token not in str(stored._asdict())
    assert [t["lasdec"] for t in list_tokens(core_storage)] == [CHIYODA]


def test_token_is_forgiving_about_case_and_separators(core_storage: Storage, core_now: datetime):
    token = issue_token(core_storage, CHIYODA, now=core_now, ttl=60)
    typed = token.replace("-", " ").lower()
    assert enroll(core_storage, typed, public_text(), now=core_now).lasdec == CHIYODA


@pytest.mark.parametrize(
    ("token", "offset", "code"),
    [
        ("WRONG-TOKEN-AAAAA-BBBBB", 0, "token.invalid"),
        (None, 3600, "token.expired"),
        (None, 3599, None),
    ],
)
def test_invalid_and_expired_tokens(core_storage: Storage, core_now: datetime, token, offset, code):
    issued = issue_token(core_storage, CHIYODA, now=core_now, ttl=3600)
    when = core_now + timedelta(seconds=offset)
    if code is None:
        assert enroll(core_storage, token or issued, public_text(), now=when).lasdec == CHIYODA
        return
    with pytest.raises(EnrollmentError) as caught:
        enroll(core_storage, token or issued, public_text(), now=when)
    assert caught.value.code == code


@pytest.mark.parametrize("key", ["", "not base64!", "AAAA", "A" * 44 + "=="])
def test_invalid_keys_are_refused_and_keep_the_token(core_storage: Storage, core_now, key):
    token = issue_token(core_storage, CHIYODA, now=core_now, ttl=60)
    with pytest.raises(EnrollmentError) as caught:
        enroll(core_storage, token, key, now=core_now)
    assert caught.value.code == "key.invalid"
    assert enroll(core_storage, token, public_text(), now=core_now)  # token still usable


def test_a_key_enrolls_once_and_the_refusal_keeps_the_token(core_storage: Storage, core_now):
    key = public_text()
    enroll(
        core_storage, issue_token(core_storage, CHIYODA, now=core_now, ttl=60), key, now=core_now
    )
    second = issue_token(core_storage, SAPPORO_CHUO, now=core_now, ttl=60)
    with pytest.raises(EnrollmentError) as caught:
        enroll(core_storage, second, key, now=core_now)
    assert caught.value.code == "key.duplicate"
    terminal = enroll(core_storage, second, public_text(), now=core_now)
    assert terminal.lasdec == SAPPORO_CHUO


def test_concurrent_enrollments_with_one_token_one_wins(core_storage: Storage, core_now):
    token = issue_token(core_storage, CHIYODA, now=core_now, ttl=60)
    outcomes: list[str] = []

    def attempt() -> None:
        try:
            enroll(core_storage, token, public_text(), now=core_now)
            outcomes.append("ok")
        except EnrollmentError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["ok"] + ["token.used"] * 5
    assert len(list_terminals(core_storage, CHIYODA)) == 1


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("999999", "municipality.unknown"),
        (SAPPORO, "municipality.not_receiving"),
        (HOKKAIDO, "municipality.not_receiving"),
    ],
)
def test_tokens_only_for_receiving_units(core_storage: Storage, core_now, code, error):
    with pytest.raises(NotFoundError) as caught:
        issue_token(core_storage, code, now=core_now, ttl=60)
    assert caught.value.code == error


def test_revoke_and_list(core_storage: Storage, core_now, core_enroll):
    first, _ = core_enroll(CHIYODA)
    second, _ = core_enroll(SAPPORO_CHUO)
    assert [t.terminal_id for t in list_terminals(core_storage, CHIYODA)] == [first.terminal_id]
    assert revoke_terminal(core_storage, first.terminal_id, now=core_now) is True
    assert revoke_terminal(core_storage, first.terminal_id, now=core_now) is False
    assert revoke_terminal(core_storage, "t_nobody", now=core_now) is False
    assert find_terminal(core_storage, first.terminal_id).revoked_at == core_now
    assert find_terminal(core_storage, second.terminal_id).revoked_at is None


def test_note_contact(core_storage: Storage, core_now, core_enroll):
    terminal, _ = core_enroll()
    note_contact(
        core_storage, terminal.terminal_id, now=core_now, agent_version="2.0", clock_skew=-1.5
    )
    later = core_now + timedelta(minutes=5)
    note_contact(core_storage, terminal.terminal_id, now=later, agent_version=None, clock_skew=None)
    found = find_terminal(core_storage, terminal.terminal_id)
    assert (found.last_seen_at, found.agent_version, found.clock_skew) == (later, "2.0", -1.5)


def test_nonces_are_accepted_once_per_terminal(core_storage: Storage, core_now):
    assert remember_nonce(core_storage, "t_a", "n1", now=core_now, keep=600)
    assert not remember_nonce(
        core_storage, "t_a", "n1", now=core_now + timedelta(seconds=5), keep=600
    )
    assert remember_nonce(core_storage, "t_b", "n1", now=core_now, keep=600)  # another terminal
    # after `keep` the nonce is forgotten (the clock window rejects such an old request anyway)
    assert remember_nonce(
        core_storage, "t_a", "n1", now=core_now + timedelta(seconds=601), keep=600
    )


def test_long_nonces_are_remembered_by_hash(core_storage: Storage, core_now):
    long = "n" * 500
    assert remember_nonce(core_storage, "t_a", long, now=core_now, keep=600)
    assert not remember_nonce(core_storage, "t_a", long, now=core_now, keep=600)
    assert remember_nonce(core_storage, "t_a", long + "x", now=core_now, keep=600)


def test_failed_auth_is_counted_within_the_period_per_key_and_address(
    core_storage: Storage, core_now, core_enroll
):
    here, there = "192.0.2.1", "198.51.100.7"
    abc, other = core_enroll()[0].terminal_id, core_enroll()[0].terminal_id
    for seconds in (0, 100, 500):
        assert note_auth_failure(
            core_storage, abc, source=here, now=core_now + timedelta(seconds=seconds)
        )
    note_auth_failure(core_storage, other, source=here, now=core_now)
    note_auth_failure(core_storage, abc, source=there, now=core_now)
    at = core_now + timedelta(seconds=600)

    def count(key_id: str, source: str = here, period: int = 600) -> int:
        return recent_auth_failures(core_storage, key_id, source=source, now=at, period=period)

    assert count(abc) == 3
    assert count(abc, period=550) == 2
    assert count(abc, source=there) == 1
    assert count("t_0000000000000000") == 0


def test_a_key_id_that_names_no_terminal_is_not_counted(core_storage: Storage, core_now):
    """Anyone can make up key ids: counting them would be a database row per request."""
    assert not note_auth_failure(core_storage, "t_0000000000000000", source="x", now=core_now)
    assert not note_auth_failure(core_storage, "ed25519:abc", source="x", now=core_now)
    with core_storage.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(auth_failures)).scalar() == 0
