"""POST /api/v1/enroll: a token and proof of possession of the key make a terminal."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import statement
from server.enrollment import find_terminal, issue_token
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
