"""Every terminal request is signed: each way a request can fail the check, and what a good one records."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.app import create_app
from server.enrollment import find_terminal, recent_auth_failures, revoke_terminal
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


# --- issue #18: the signed @authority is pinned ----------------------------------------------------


@pytest.fixture
def pinned(tmp_path, api_clock):
    """An app with these settings (the authorities under test); its database closed after."""
    made: list[ApiTester] = []

    def make(**overrides) -> ApiTester:
        app = create_app(api_init_data(tmp_path / f"pin{len(made)}", **overrides), clock=api_clock)
        made.append(ApiTester(app, api_clock))
        return made[-1]

    yield make
    for tester in made:
        tester.services.storage.dispose()


def _terminal_of(tester: ApiTester, api_clock) -> tuple[str, ApiTester]:
    from tests.server.conftest import api_enroll

    terminal, key = api_enroll(tester.services.storage, API_A, api_clock())
    return terminal.terminal_id, tester.as_terminal(key, terminal.terminal_id)


def test_a_request_signed_for_another_host_is_refused_and_counted(api, api_terminal, api_clock):
    """Signed, unchanged, fresh — but for elsewhere.test: a request meant for another server."""
    terminal, client = api_terminal()
    reply = client.get(LIST, base="https://elsewhere.test")
    assert (reply.status_code, _code(reply)) == (401, "sig.authority")
    message = reply.get_json()["error"]["message"]
    assert "elsewhere.test" in message and "renkei.test" in message  # which names are accepted
    assert "Accept-Signature" in reply.headers
    failures = recent_auth_failures(
        api.services.storage, terminal.terminal_id, source="127.0.0.1", now=api_clock(), period=60
    )
    assert failures == 1  # the terminal's key, used for another server: a failure of that key
    seen = find_terminal(api.services.storage, terminal.terminal_id)
    assert seen.last_seen_at is None or seen.last_seen_at < api_clock()  # not recorded as contact
    assert client.get(LIST).status_code == 200  # the same terminal, addressing this server


@pytest.mark.parametrize(
    ("base", "accepted"),
    [
        ("https://renkei.test", True),
        ("https://RENKEI.Test", True),  # a host name's case does not matter
        ("https://renkei.test:443", True),  # the default port is left out, as the signature does
        ("https://renkei.test:8443", False),  # another port: another server
        ("https://renkei.test.", False),
        ("https://evil.renkei.test", False),
        ("https://127.0.0.1", False),
    ],
)
def test_authority_matching(api_terminal, base, accepted):
    _, client = api_terminal()
    reply = client.get(LIST, base=base)
    assert (reply.status_code == 200) is accepted, reply.get_json()
    if not accepted:
        assert _code(reply) == "sig.authority"


def test_authorities_setting_with_ports_and_ipv6(pinned, api_clock):
    tester = pinned(authorities=("Renkei.Example:8443", "[0:0::1]:8443", "lb.example:443"))
    _, client = _terminal_of(tester, api_clock)
    assert client.get(LIST, base="https://renkei.example:8443").status_code == 200
    assert client.get(LIST, base="https://[::1]:8443").status_code == 200
    assert client.get(LIST, base="https://lb.example").status_code == 200
    for other in ("https://renkei.example", "https://lb.example:8443", "https://renkei.test"):
        assert _code(client.get(LIST, base=other)) == "sig.authority", other


def test_default_pin_is_the_certificates_names_at_the_port_of_bind(pinned, api_clock):
    """No authorities setting: the TLS certificate's names (dev: localhost, 127.0.0.1, ::1)."""
    tester = pinned(tls=True, authorities=(), bind="127.0.0.1:9443")
    _, client = _terminal_of(tester, api_clock)
    for good in ("https://localhost:9443", "https://127.0.0.1:9443", "https://[::1]:9443"):
        assert client.get(LIST, base=good).status_code == 200, good
    for bad in ("https://localhost", "https://localhost:8443", "https://renkei.test:9443"):
        reply = client.get(LIST, base=bad)
        assert _code(reply) == "sig.authority", bad
        assert "localhost:9443" in reply.get_json()["error"]["message"]


def test_without_a_certificate_or_setting_every_signed_request_is_refused(pinned, api_clock):
    """Deny by default: nothing says what this server is called; not the terminal's failure."""
    tester = pinned(authorities=())
    terminal_id, client = _terminal_of(tester, api_clock)
    reply = client.get(LIST)
    assert (reply.status_code, _code(reply)) == (401, "sig.authority")
    assert "set authorities" in reply.get_json()["error"]["message"]
    assert (
        recent_auth_failures(
            tester.services.storage, terminal_id, source="127.0.0.1", now=api_clock(), period=60
        )
        == 0
    )


def test_enrollment_signed_for_another_host_is_refused_and_keeps_the_token(api, api_clock):
    from common import statement
    from server.enrollment import issue_token, list_tokens

    token = issue_token(api.services.storage, API_A, now=api_clock(), ttl=3600)
    key = Ed25519PrivateKey.generate()
    document = {"token": token, "public_key": statement.public_key_to_text(key.public_key())}
    elsewhere = api.post_json(
        "/api/v1/enroll", document, key=key, key_id="enroll", base="https://elsewhere.test"
    )
    assert (elsewhere.status_code, _code(elsewhere)) == (401, "sig.authority")
    assert list_tokens(api.services.storage)[0]["used_at"] is None
    assert api.post_json("/api/v1/enroll", document, key=key, key_id="enroll").status_code == 201


# --- issue #18: Renkei-Agent-Version is checked before it is stored --------------------------------


@pytest.mark.parametrize(
    "header",  # as the bytes arrive (HTTP header text is read as latin-1)
    [
        "1.0\x9b2J",  # a raw 0x9B byte: a terminal's one-byte CSI (what the probe sent)
        "1.0\x1b[2J",
        "renkei agent 1.0",  # a space
        "1.0\t",
        "x" * 65,
        "版1.0".encode().decode("latin-1"),  # UTF-8 bytes
    ],
)
def test_a_bad_agent_version_is_400_before_anything_is_written(api, api_terminal, header):
    terminal, client = api_terminal()
    before = _row_counts(api.services.storage)
    reply = client.get(LIST, headers={"Renkei-Agent-Version": header})
    assert (reply.status_code, _code(reply)) == (400, "request.agent_version")
    assert _row_counts(api.services.storage) == before  # no nonce, no contact, no failure
    assert find_terminal(api.services.storage, terminal.terminal_id).agent_version is None


def test_a_good_agent_version_is_recorded(api, api_terminal):
    terminal, client = api_terminal()
    version = "renkei-agent/1.2.3+deb12~rc1"
    assert client.get(LIST, headers={"Renkei-Agent-Version": version}).status_code == 200
    assert find_terminal(api.services.storage, terminal.terminal_id).agent_version == version


def test_a_bad_agent_version_at_enrollment_is_400_and_keeps_the_token(api, api_clock):
    from common import statement
    from server.enrollment import issue_token, list_tokens

    token = issue_token(api.services.storage, API_A, now=api_clock(), ttl=3600)
    key = Ed25519PrivateKey.generate()
    document = {"token": token, "public_key": statement.public_key_to_text(key.public_key())}
    reply = api.post_json(
        "/api/v1/enroll",
        document,
        key=key,
        key_id="enroll",
        headers={"Renkei-Agent-Version": "1.0\x9b"},
    )
    assert (reply.status_code, _code(reply)) == (400, "request.agent_version")
    assert list_tokens(api.services.storage)[0]["used_at"] is None


# --- issue #18: made-up key ids cost no durable write ----------------------------------------------


def _row_counts(storage) -> dict[str, int]:
    import sqlalchemy as sa

    from server.storage import metadata

    with storage.read() as conn:
        return {
            table.name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for table in metadata.sorted_tables
        }


def test_a_flood_of_made_up_key_ids_writes_nothing(api, api_terminal, api_clock):
    terminal, client = api_terminal()
    storage = api.services.storage
    before = _row_counts(storage)
    wrong = Ed25519PrivateKey.generate()
    for number in range(60):
        key_id = f"t_{number:016x}"
        for sign in ({"key_id": key_id}, {"key_id": key_id, "key": wrong}):
            reply = client.get(LIST, **sign)
            assert (reply.status_code, _code(reply)) == (401, "sig.unknown_key")
        reply = client.post(
            f"{LIST}/x/ack", b"{}", key_id=f"ed25519:{number}", remote_addr="10.9.9.9"
        )
        assert _code(reply) == "sig.unknown_key"
    assert _row_counts(storage) == before
    # the lockout still holds for a key id that names a terminal
    for _ in range(api.services.config.failed_auth_limit):
        assert _code(client.get(LIST, key=wrong)) == "sig.invalid"
    assert client.get(LIST).status_code == 429


def test_a_json_body_over_64_kib_is_413_chunked_or_not_and_not_counted(
    api, api_terminal, api_clock
):
    from server.api import JSON_BODY_LIMIT

    terminal, client = api_terminal()
    path, body = f"{LIST}/x/ack", b"{" + b" " * JSON_BODY_LIMIT + b"}"
    headers = {"Content-Type": "application/json"}
    declared = client.post(path, body, headers=headers)
    chunked = client.post(path, body, headers=headers, chunked=True)
    for reply in (declared, chunked):
        assert (reply.status_code, _code(reply)) == (413, "request.too_large")
    assert (
        recent_auth_failures(
            api.services.storage,
            terminal.terminal_id,
            source="127.0.0.1",
            now=api_clock(),
            period=60,
        )
        == 0
    )
