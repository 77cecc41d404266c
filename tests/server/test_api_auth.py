"""Every terminal request is signed: each way a request can fail the check, and what a good one records."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.app import create_app
from server.enrollment import find_terminal, revoke_terminal
from tests.server.conftest import (
    API_A,
    API_B,
    ApiTester,
    api_init_data,
    api_publish,
)

LIST = "/api/v1/batches"


def _code(reply) -> str:
    return reply.get_json()["error"]["code"]


def test_good_request_records_contact_agent_version_and_clock_skew(api, api_terminal, api_clock):
    terminal, client = api_terminal()
    created = int(api_clock().timestamp()) - 7
    reply = client.get(LIST, created=created, headers={"Renkei-Agent-Version": "agent/3.4.5"})
    assert reply.status_code == 200
    seen = find_terminal(api.services.storage, terminal.terminal_id)
    assert seen.last_seen_at == api_clock()
    assert seen.agent_version == "agent/3.4.5"
    assert seen.clock_skew == pytest.approx(7.0)


def test_unsigned_request_is_401_with_how_to_sign(api):
    reply = api.get(LIST)
    assert reply.status_code == 401
    assert _code(reply) == "sig.missing"
    assert '"content-digest"' in reply.headers["Accept-Signature"]
    assert 'alg="ed25519"' in reply.headers["Accept-Signature"]


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("other key", "sig.invalid"),
        ("unknown key id", "sig.unknown_key"),
        ("another terminal's id", "sig.invalid"),
        ("too old", "sig.stale"),
        ("from the future", "sig.stale"),
        ("body changed", "sig.digest"),
        ("query added", "sig.invalid"),
        ("other host", "sig.invalid"),
        ("other method", "sig.invalid"),
        ("garbage header", "sig.malformed"),
    ],
)
def test_bad_signature_is_401(api, api_terminal, api_clock, case, code):
    terminal, client = api_terminal()
    other, _ = api_terminal(API_B)
    now = int(api_clock().timestamp())
    window = api.services.config.clock_window
    path, method, body, headers, sign = LIST, "GET", b"", None, {}
    if case == "other key":
        sign = {"key": Ed25519PrivateKey.generate()}
    elif case == "unknown key id":
        sign = {"key_id": "t_0000000000000000"}
    elif case == "another terminal's id":
        sign = {"key_id": other.terminal_id}
    elif case == "too old":
        sign = {"created": now - window - 1}
    elif case == "from the future":
        sign = {"created": now + window + 1}
    if case == "body changed":
        headers = client.signed_headers("POST", "/api/v1/batches/x/ack", b'{"sha256": "1"}')
        method, path, body = "POST", "/api/v1/batches/x/ack", b'{"sha256": "2"}'
    elif case == "query added":
        headers = client.signed_headers("GET", LIST)
        path = LIST + "?all=1"
    elif case == "other host":
        headers = client.signed_headers("GET", LIST)
        headers["Host"] = "elsewhere.test"
    elif case == "other method":
        headers = client.signed_headers("POST", LIST)
    elif case == "garbage header":
        headers = {**client.signed_headers("GET", LIST), "Signature-Input": "renkei=(((("}
    if headers is None:
        reply = client.request(method, path, body, **sign)
    else:
        reply = client.request(method, path, body, sign=False, headers=headers)
    assert reply.status_code == 401, reply.get_json()
    assert _code(reply) == code


@pytest.mark.parametrize("offset", [-300, 300])
def test_created_at_the_edge_of_the_window_is_accepted(api_terminal, api_clock, offset):
    _, client = api_terminal()
    reply = client.get(LIST, created=int(api_clock().timestamp()) + offset)
    assert reply.status_code == 200


def test_replayed_request_is_refused(api_terminal):
    _, client = api_terminal()
    headers = client.signed_headers("GET", LIST)
    first = client.get(LIST, sign=False, headers=headers)
    again = client.get(LIST, sign=False, headers=headers)
    assert first.status_code == 200
    assert (again.status_code, _code(again)) == (401, "auth.replay")


def test_same_nonce_from_two_terminals_is_not_a_replay(api_terminal):
    _, one = api_terminal()
    _, two = api_terminal()
    assert one.get(LIST, nonce="shared-nonce-0123456789").status_code == 200
    assert two.get(LIST, nonce="shared-nonce-0123456789").status_code == 200


def test_revoked_terminal_is_401(api, api_terminal, api_clock):
    terminal, client = api_terminal()
    assert client.get(LIST).status_code == 200
    revoke_terminal(api.services.storage, terminal.terminal_id, now=api_clock())
    reply = client.get(LIST)
    assert (reply.status_code, _code(reply)) == (401, "auth.revoked")


@pytest.fixture
def strict(tmp_path, api_clock):
    config = api_init_data(tmp_path / "strict", failed_auth_limit=3, failed_auth_period=600)
    app = create_app(config, clock=api_clock)
    yield ApiTester(app, api_clock)
    app.extensions["renkei"].storage.dispose()


def test_too_many_failures_for_a_key_id_is_429_until_the_period_passes(strict, api_clock):
    from tests.server.conftest import api_enroll

    terminal, key = api_enroll(strict.services.storage, API_A, api_clock())
    client = strict.as_terminal(key, terminal.terminal_id)
    other_terminal, other_key = api_enroll(strict.services.storage, API_A, api_clock())
    other = strict.as_terminal(other_key, other_terminal.terminal_id)
    wrong = Ed25519PrivateKey.generate()
    for _ in range(3):
        assert _code(client.get(LIST, key=wrong)) == "sig.invalid"
    locked = client.get(LIST)  # even a good signature waits
    assert locked.status_code == 429
    assert _code(locked) == "auth.too_many_failures"
    assert locked.headers["Retry-After"] == "600"
    assert other.get(LIST).status_code == 200  # counted per key id
    api_clock.advance(601)
    assert client.get(LIST).status_code == 200


def test_failures_from_another_address_do_not_lock_the_terminal_out(strict, api_clock):
    from tests.server.conftest import api_enroll

    terminal, key = api_enroll(strict.services.storage, API_A, api_clock())
    client = strict.as_terminal(key, terminal.terminal_id)
    wrong = Ed25519PrivateKey.generate()
    for _ in range(5):  # someone else, sending garbage under the terminal's key id
        reply = client.get(LIST, key=wrong, remote_addr="192.0.2.66")
        assert _code(reply) in {"sig.invalid", "auth.too_many_failures"}
    assert client.get(LIST, remote_addr="192.0.2.66").status_code == 429
    assert client.get(LIST, remote_addr="10.20.30.40").status_code == 200  # the terminal


def test_unsigned_requests_are_not_counted_against_anyone(strict, api_clock):
    from tests.server.conftest import api_enroll

    terminal, key = api_enroll(strict.services.storage, API_A, api_clock())
    client = strict.as_terminal(key, terminal.terminal_id)
    for _ in range(5):
        assert strict.get(LIST).status_code == 401
    assert client.get(LIST).status_code == 200


def test_other_municipality_batch_is_404_like_an_unknown_one(api, api_terminal):
    services = api.services
    api_publish(
        services.storage, services.blobs, services.signing_key, api.clock(), {API_A: 2, API_B: 2}
    )
    _, a = api_terminal(API_A)
    _, b = api_terminal(API_B)
    theirs = b.get(LIST).get_json()["batches"][0]
    assert theirs["lasdec"] == API_B
    assert all(batch["lasdec"] == API_A for batch in a.get(LIST + "?all=1").get_json()["batches"])
    for method, path, body in [
        ("GET", f"{LIST}/{theirs['batch_id']}", b""),
        ("GET", f"{LIST}/{theirs['batch_id']}/manifest", b""),
        (
            "POST",
            f"{LIST}/{theirs['batch_id']}/ack",
            b'{"sha256": "%s"}' % theirs["sha256"].encode(),
        ),
        ("GET", f"{LIST}/{API_A}-20261127-999999", b""),
    ]:
        reply = a.request(method, path, body)
        assert (reply.status_code, _code(reply)) == (404, "batch.not_found"), path
    # and B's batch is still pending: A's attempt acknowledged nothing
    assert b.get(LIST).get_json()["batches"][0]["acknowledged_at"] is None


def test_contact_is_kept_to_the_minute_but_a_new_version_is_recorded_at_once(
    api, api_terminal, api_clock
):
    terminal, client = api_terminal()
    storage = api.services.storage
    assert client.get(LIST, headers={"Renkei-Agent-Version": "1.0"}).status_code == 200
    first = find_terminal(storage, terminal.terminal_id).last_seen_at
    api_clock.advance(30)
    client.get(LIST, headers={"Renkei-Agent-Version": "1.0"})
    assert find_terminal(storage, terminal.terminal_id).last_seen_at == first
    client.get(LIST, headers={"Renkei-Agent-Version": "1.1"})
    seen = find_terminal(storage, terminal.terminal_id)
    assert (seen.agent_version, seen.last_seen_at) == ("1.1", api_clock())
    api_clock.advance(60)
    client.get(LIST, headers={"Renkei-Agent-Version": "1.1"})
    assert find_terminal(storage, terminal.terminal_id).last_seen_at == api_clock()
    client.get(
        LIST, headers={"Renkei-Agent-Version": "1.1"}, created=int(api_clock().timestamp()) - 90
    )
    assert find_terminal(storage, terminal.terminal_id).clock_skew == pytest.approx(90.0)
