"""POST /api/v1/enroll: a token and proof of possession of the key make a terminal."""

from __future__ import annotations

import base64
import json

import nacl.bindings as sodium
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common import statement
from server.enrollment import find_terminal, issue_token, list_terminals
from server.storage import terminals
from tests.common.test_ed25519 import CANONICAL_SMALL, EVERYTHING, IDENTITY, SECOND_SMALL
from tests.server.conftest import API_A

ENROLL = "/api/v1/enroll"


@pytest.fixture
def token(api):
    return issue_token(api.services.storage, API_A, now=api.clock(), ttl=3600)


def _enroll(api, token, key, *, signer=None, key_id="enroll", document=None, **options):
    document = document or {
        "token": token,
        "public_key": statement.public_key_to_text(key.public_key()),
        "agent_version": "1.2.3",
    }
    return api.post_json(ENROLL, document, key=signer or key, key_id=key_id, **options)


def test_enrollment_registers_the_key_and_answers_the_server_key(api, token):
    key = Ed25519PrivateKey.generate()
    reply = _enroll(api, token, key)
    assert reply.status_code == 201
    body = reply.get_json()
    server_key = api.services.signing_key.public_key()
    assert body["lasdec"] == API_A
    assert body["municipality"] == "東京都千代田区"
    assert body["server_key"] == {
        "key_id": statement.key_id(server_key),
        "public_key": statement.public_key_to_text(server_key),
    }
    terminal = find_terminal(api.services.storage, body["terminal_id"])
    assert terminal.public_key == statement.public_key_to_text(key.public_key())
    assert terminal.agent_version == "1.2.3"
    # and the new terminal can make requests at once
    client = api.as_terminal(key, body["terminal_id"])
    assert client.get("/api/v1/batches").status_code == 200


def test_a_used_token_is_refused(api, token):
    assert _enroll(api, token, Ed25519PrivateKey.generate()).status_code == 201
    reply = _enroll(api, token, Ed25519PrivateKey.generate())
    assert (reply.status_code, reply.get_json()["error"]["code"]) == (401, "token.used")


def test_an_expired_token_is_refused(api, token):
    api.clock.advance(3601)
    reply = _enroll(api, token, Ed25519PrivateKey.generate())
    assert (reply.status_code, reply.get_json()["error"]["code"]) == (401, "token.expired")


def test_an_unknown_token_is_refused(api):
    reply = _enroll(api, "AAAAA-BBBBB-CCCCC-DDDDD", Ed25519PrivateKey.generate())
    assert (reply.status_code, reply.get_json()["error"]["code"]) == (401, "token.invalid")


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("signed with another key", "sig.invalid"),
        ("key id is not enroll", "sig.unknown_key"),
        ("unsigned", "sig.missing"),
        ("stale", "sig.stale"),
    ],
)
def test_without_proof_of_possession_nothing_is_enrolled_and_the_token_stays(
    api, token, case, code
):
    key = Ed25519PrivateKey.generate()
    options = {}
    if case == "signed with another key":
        options["signer"] = Ed25519PrivateKey.generate()
    elif case == "key id is not enroll":
        options["key_id"] = "t_0123456789abcdef"
    elif case == "unsigned":
        options["sign"] = False
    elif case == "stale":
        options["created"] = int(api.clock().timestamp()) - 3600
    reply = _enroll(api, token, key, **options)
    assert reply.status_code == 401
    assert reply.get_json()["error"]["code"] == code
    assert _enroll(api, token, key).status_code == 201  # the token was not used up


def test_the_same_key_twice_is_409(api, token):
    key = Ed25519PrivateKey.generate()
    assert _enroll(api, token, key).status_code == 201
    second = issue_token(api.services.storage, API_A, now=api.clock(), ttl=3600)
    reply = _enroll(api, second, key)
    assert (reply.status_code, reply.get_json()["error"]["code"]) == (409, "key.duplicate")


@pytest.mark.parametrize(
    ("document", "status", "code"),
    [
        (b"not json", 400, "request.malformed_json"),
        ({"public_key": "x"}, 400, "request.missing_field"),
        ({"token": "x"}, 400, "request.missing_field"),
        ({"token": 5, "public_key": "x"}, 400, "request.bad_field"),
        ({"token": "x", "public_key": "bm90IGEga2V5"}, 400, "key.invalid"),
        ({"token": "x", "public_key": "%%%"}, 400, "key.invalid"),
    ],
)
def test_malformed_enrollment_requests(api, document, status, code):
    key = Ed25519PrivateKey.generate()
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    reply = api.post(
        ENROLL, body, key=key, key_id="enroll", headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == status
    assert reply.get_json()["error"]["code"] == code


# --- keys nobody holds (issue #18) ---------------------------------------------------------

WEAK = {**CANONICAL_SMALL, **SECOND_SMALL}


def _forged(api, method, path, body, *, key_id):  # type: ignore[no-untyped-def]
    """Headers of a request "signed" with R = identity, S = 0: no private key involved."""
    headers = api.signed_headers(
        method, path, body, key=Ed25519PrivateKey.generate(), key_id=key_id
    )
    headers["Signature"] = "renkei=:" + base64.b64encode(EVERYTHING).decode() + ":"
    return headers


def _enroll_weak(api, token, encoded: bytes):  # type: ignore[no-untyped-def]
    document = {"token": token, "public_key": base64.b64encode(encoded).decode()}
    body = json.dumps(document).encode()
    headers = {"Content-Type": "application/json"}
    headers |= _forged(api, "POST", ENROLL, body, key_id="enroll")
    return api.post(ENROLL, body, sign=False, headers=headers)


def test_the_identity_key_is_refused_though_its_forged_signature_verifies(api, token):
    reply = _enroll_weak(api, token, IDENTITY)
    assert (reply.status_code, reply.get_json()["error"]["code"]) == (400, "key.invalid")
    assert "small order" in reply.get_json()["error"]["message"]
    assert list_terminals(api.services.storage) == []
    assert _enroll(api, token, Ed25519PrivateKey.generate()).status_code == 201  # token kept


@pytest.mark.parametrize("name", WEAK)
def test_every_small_order_point_in_every_encoding_is_refused(api, token, name):
    reply = _enroll_weak(api, token, WEAK[name])
    assert (reply.status_code, reply.get_json()["error"]["code"]) == (400, "key.invalid")
    assert list_terminals(api.services.storage) == []


def test_a_mixed_order_key_is_refused(api, token):
    proper = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    mixed = sodium.crypto_core_ed25519_add(proper, CANONICAL_SMALL["order 2"])
    reply = _enroll_weak(api, token, mixed)
    assert (reply.status_code, reply.get_json()["error"]["code"]) == (400, "key.invalid")
    assert "mixed order" in reply.get_json()["error"]["message"]


def test_the_same_point_in_a_second_encoding_is_not_a_second_terminal(api, token):
    # Both name the identity; before the fix each enrolled, with a different key id.
    first = _enroll_weak(api, token, IDENTITY)
    second = issue_token(api.services.storage, API_A, now=api.clock(), ttl=3600)
    again = _enroll_weak(api, second, WEAK["identity, y + p, sign 0"])
    assert (first.status_code, again.status_code) == (400, 400)
    assert list_terminals(api.services.storage) == []


def test_another_base64_text_of_an_enrolled_key_is_not_a_second_terminal(api, token):
    key = Ed25519PrivateKey.generate()
    assert _enroll(api, token, key).status_code == 201
    text = statement.public_key_to_text(key.public_key())
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    other = text[:42] + alphabet[alphabet.index(text[42]) ^ 1] + "="  # same 32 bytes
    second = issue_token(api.services.storage, API_A, now=api.clock(), ttl=3600)
    reply = _enroll(api, second, key, document={"token": second, "public_key": other})
    assert (reply.status_code, reply.get_json()["error"]["code"]) in [
        (400, "key.invalid"),
        (409, "key.duplicate"),
    ]
    assert len(list_terminals(api.services.storage)) == 1


def test_a_terminal_stored_with_such_a_key_before_the_fix_cannot_authenticate(api):
    """A key already in the database is checked on every request: it resolves to no key."""
    identity = Ed25519PublicKey.from_public_bytes(IDENTITY)
    with api.services.storage.begin() as conn:
        conn.execute(
            terminals.insert().values(
                terminal_id="t_00000000000000ff",
                lasdec=API_A,
                public_key=base64.b64encode(IDENTITY).decode(),
                key_id=statement.key_id(identity),
                enrolled_at=api.clock(),
            )
        )
    listing = api.get(
        "/api/v1/batches",
        sign=False,
        headers=_forged(api, "GET", "/api/v1/batches", b"", key_id="t_00000000000000ff"),
    )
    assert (listing.status_code, listing.get_json()["error"]["code"]) == (401, "sig.unknown_key")
    data = b"forged"
    upload = api.post(
        "/api/v1/uploads",
        data,
        sign=False,
        headers={
            "Content-Type": "application/octet-stream",
            "Renkei-File-Name": "forged.csv",
            **_forged(api, "POST", "/api/v1/uploads", data, key_id="t_00000000000000ff"),
        },
    )
    assert (upload.status_code, upload.get_json()["error"]["code"]) == (401, "sig.unknown_key")
