"""Signed statements: round trip, tampering, unknown keys and a stable canonical form."""

from __future__ import annotations

import base64
import copy
import hashlib
import json

import nacl.bindings as sodium
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common import ed25519, statement
from common.statement import StatementError
from tests.common.test_ed25519 import (
    CANONICAL_SMALL,
    EVERYTHING,
    IDENTITY,
    SECOND_SMALL,
    identity_r_signature,
)

SERVER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OLD_SERVER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))
STRANGER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(200, 232)))

MANIFEST = {
    "type": "batch-manifest",
    "lasdec": "131016",
    "sequence": 42,
    "date": "2026-04-01",
    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "records": 3,
    "empty": False,
    "note": None,
    "names": ["山田　太郎", "ＹＡＭＡＤＡ", "𠮷野"],
}


def trusted(*keys):
    return {statement.key_id(key.public_key()): key.public_key() for key in keys}


def code_of(signed, keys) -> str:
    with pytest.raises(StatementError) as caught:
        statement.verify(signed, keys)
    return caught.value.code


# --- round trip ---------------------------------------------------------------------------


def test_round_trip_returns_the_body():
    signed = statement.sign(MANIFEST, SERVER_KEY)
    assert statement.verify(signed, trusted(SERVER_KEY)) == MANIFEST
    assert statement.verify(signed, SERVER_KEY.public_key()) == MANIFEST


def test_round_trip_survives_json_transport():
    signed = statement.sign(MANIFEST, SERVER_KEY)
    text = json.dumps(signed, indent=2, ensure_ascii=True)  # pretty, escaped: not canonical
    assert statement.verify(json.loads(text), trusted(SERVER_KEY)) == MANIFEST


def test_shape_of_a_signed_statement():
    signed = statement.sign(MANIFEST, SERVER_KEY)
    assert set(signed) == {"statement", "signature"}
    assert signed["signature"]["alg"] == "ed25519"
    assert signed["signature"]["key_id"] == statement.key_id(SERVER_KEY.public_key())
    assert len(base64.b64decode(signed["signature"]["value"], validate=True)) == 64


def test_signature_is_over_the_documented_bytes():
    """What a verifier in another language does: prefix + canonical JSON, Ed25519."""
    signed = statement.sign({"b": 1, "a": "x"}, SERVER_KEY)
    value = base64.b64decode(signed["signature"]["value"])
    SERVER_KEY.public_key().verify(value, b'renkei-statement-v1\n{"a":"x","b":1}')


def test_signed_copy_is_independent_of_the_callers_body():
    body = copy.deepcopy(MANIFEST)
    signed = statement.sign(body, SERVER_KEY)
    body["records"] = 999
    body["names"].append("x")
    assert statement.verify(signed, trusted(SERVER_KEY)) == MANIFEST


def test_old_keys_still_verify_after_rollover():
    old = statement.sign(MANIFEST, OLD_SERVER_KEY)
    new = statement.sign(MANIFEST, SERVER_KEY)
    keys = trusted(SERVER_KEY, OLD_SERVER_KEY)
    assert statement.verify(old, keys) == statement.verify(new, keys) == MANIFEST


# --- tampering ----------------------------------------------------------------------------


def _set(path, value):
    def change(signed):
        target = signed
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        return signed

    return change


def _flip_signature_bit(signed):
    raw = bytearray(base64.b64decode(signed["signature"]["value"]))
    raw[10] ^= 0x01
    signed["signature"]["value"] = base64.b64encode(bytes(raw)).decode()
    return signed


TAMPERING = {
    "sequence changed": (_set(("statement", "sequence"), 43), "statement.signature"),
    "hash changed": (_set(("statement", "sha256"), "0" * 64), "statement.signature"),
    "member added": (_set(("statement", "extra"), 1), "statement.signature"),
    "name changed": (_set(("statement", "names", 2), "吉野"), "statement.signature"),
    "bool for int": (_set(("statement", "records"), True), "statement.signature"),
    "signature bit flipped": (_flip_signature_bit, "statement.signature"),
    "signature of another body": (
        _set(("signature", "value"), statement.sign({"x": 1}, SERVER_KEY)["signature"]["value"]),
        "statement.signature",
    ),
    "stranger's key id": (
        _set(("signature", "key_id"), statement.key_id(STRANGER_KEY.public_key())),
        "statement.unknown_key",
    ),
    "alg changed": (_set(("signature", "alg"), "rsa"), "statement.shape"),
    "value not base64": (_set(("signature", "value"), "not base64!"), "statement.shape"),
    "value too short": (_set(("signature", "value"), "AAAA"), "statement.shape"),
    "statement not an object": (_set(("statement",), [1, 2]), "statement.shape"),
    "statement with a float": (_set(("statement", "records"), 3.0), "statement.shape"),
    "extra top-level member": (_set(("comment",), "hi"), "statement.shape"),
    "extra signature member": (_set(("signature", "created"), 1), "statement.shape"),
}


@pytest.mark.parametrize(("change", "code"), TAMPERING.values(), ids=TAMPERING.keys())
def test_tampering_is_detected(change, code):
    signed = statement.sign(MANIFEST, SERVER_KEY)
    assert statement.verify(copy.deepcopy(signed), trusted(SERVER_KEY)) == MANIFEST
    assert code_of(change(copy.deepcopy(signed)), trusted(SERVER_KEY)) == code


@pytest.mark.parametrize("signed", [None, [], "text", {"statement": {}}, {"signature": {}}])
def test_not_a_signed_statement(signed):
    assert code_of(signed, trusted(SERVER_KEY)) == "statement.shape"


def test_signed_by_a_stranger_is_unknown():
    signed = statement.sign(MANIFEST, STRANGER_KEY)
    assert code_of(signed, trusted(SERVER_KEY)) == "statement.unknown_key"
    assert code_of(signed, SERVER_KEY.public_key()) == "statement.unknown_key"
    assert code_of(signed, {}) == "statement.unknown_key"


def test_key_filed_under_the_wrong_id_does_not_answer():
    """A stranger's key placed under the server's id must not vouch for the stranger."""
    signed = statement.sign(MANIFEST, STRANGER_KEY)
    wrong = {statement.key_id(STRANGER_KEY.public_key()): SERVER_KEY.public_key()}
    assert code_of(signed, wrong) == "statement.unknown_key"


# --- canonical form -----------------------------------------------------------------------


def test_key_order_does_not_matter():
    forward = {"a": 1, "b": {"x": [1, 2], "y": None}, "c": "z"}
    backward = {"c": "z", "b": {"y": None, "x": [1, 2]}, "a": 1}
    assert statement.canonical_bytes(forward) == statement.canonical_bytes(backward)
    assert statement.canonical_bytes(forward) == b'{"a":1,"b":{"x":[1,2],"y":null},"c":"z"}'


def test_signature_is_stable_across_key_order():
    first = statement.sign({"a": 1, "b": 2}, SERVER_KEY)
    second = statement.sign({"b": 2, "a": 1}, SERVER_KEY)
    assert first == second  # Ed25519 is deterministic, so equal bytes give equal signatures


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"name": "山田"}, '{"name":"山田"}'.encode()),
        ({"kanji": "𠮷"}, '{"kanji":"𠮷"}'.encode()),
        ({"s": 'q"b\\'}, b'{"s":"q\\"b\\\\"}'),
        ({"s": "\n\t\r\b\f"}, b'{"s":"\\n\\t\\r\\b\\f"}'),
        ({"s": "\x00\x1f"}, b'{"s":"\\u0000\\u001f"}'),
        ({"s": "\x7f\u2028/"}, '{"s":"\x7f\u2028/"}'.encode()),
        (
            {"n": [0, -1, 2**53 - 1, -(2**53 - 1)]},
            b'{"n":[0,-1,9007199254740991,-9007199254740991]}',
        ),
        (
            {"t": True, "f": False, "z": None, "e": [], "o": {}},
            b'{"e":[],"f":false,"o":{},"t":true,"z":null}',
        ),
        ({"tuple": (1, "a")}, b'{"tuple":[1,"a"]}'),
    ],
)
def test_canonical_bytes(body, expected):
    assert statement.canonical_bytes(body) == expected


def test_keys_sort_by_utf16_code_units_as_rfc8785_says():
    # U+FF61 sorts before U+1F600 by code point, after it by UTF-16 (D83D < FF61).
    body = {"\uff61": 1, "\U0001f600": 2, "a": 3, "\u00e9": 4}
    assert statement.canonical_bytes(body) == '{"a":3,"é":4,"😀":2,"｡":1}'.encode()


def test_canonical_form_is_the_same_on_every_call():
    first = statement.canonical_bytes(MANIFEST)
    assert statement.canonical_bytes(json.loads(first)) == first
    assert (
        hashlib.sha256(first).hexdigest()
        == hashlib.sha256(statement.canonical_bytes(MANIFEST)).hexdigest()
    )


@pytest.mark.parametrize(
    "body",
    [
        {"x": 1.0},
        {"x": 0.5},
        {"x": float("nan")},
        {"x": float("inf")},
        {"x": [1, {"y": 2.5}]},
        {1: "non-string key"},
        {"x": {None: 1}},
        {"x": 2**53},
        {"x": -(2**53)},
        {"x": b"bytes"},
        {"x": {1, 2}},
        {"x": "\ud800"},
        {"\udfff": 1},
        ["not", "an", "object"],
    ],
)
def test_values_without_a_canonical_form_are_refused(body):
    with pytest.raises(ValueError):
        statement.canonical_bytes(body)
    with pytest.raises(ValueError):
        statement.sign(body, SERVER_KEY)


# --- keys ---------------------------------------------------------------------------------


def test_key_id_is_a_sha256_fingerprint():
    raw = bytes.fromhex("03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8")
    assert (
        SERVER_KEY.public_key().public_bytes_raw() == raw
    )  # the well-known public key for the seed 00 01 .. 1f
    assert (
        statement.key_id(SERVER_KEY.public_key())
        == "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]
    )


def test_public_key_text_round_trip():
    text = statement.public_key_to_text(SERVER_KEY.public_key())
    assert base64.b64decode(text) == SERVER_KEY.public_key().public_bytes_raw()
    again = statement.public_key_from_text(text)
    assert statement.key_id(again) == statement.key_id(SERVER_KEY.public_key())


@pytest.mark.parametrize("text", ["", "AAAA", "not base64!", base64.b64encode(bytes(33)).decode()])
def test_bad_public_key_text_is_refused(text):
    with pytest.raises(StatementError) as caught:
        statement.public_key_from_text(text)
    assert caught.value.code == "statement.shape"


# --- keys nobody holds, and signatures that prove nothing (issue #18) -----------------------

SMALL_ORDER_TEXTS = {
    name: base64.b64encode(encoded).decode("ascii")
    for name, encoded in {**CANONICAL_SMALL, **SECOND_SMALL}.items()
}


@pytest.mark.parametrize("name", SMALL_ORDER_TEXTS)
def test_a_small_order_point_is_no_public_key(name):
    with pytest.raises(StatementError) as caught:
        statement.public_key_from_text(SMALL_ORDER_TEXTS[name])
    assert caught.value.code == "statement.shape"
    assert "small order" in caught.value.message or "canonical" in caught.value.message


def test_a_mixed_order_point_is_no_public_key():
    proper = SERVER_KEY.public_key().public_bytes_raw()
    mixed = sodium.crypto_core_ed25519_add(proper, CANONICAL_SMALL["order 8, a"])
    with pytest.raises(StatementError, match="mixed order"):
        statement.public_key_from_text(base64.b64encode(mixed).decode())


def _other_base64_of_the_same_bytes(text: str) -> str:
    """32 bytes are 43 base64 digits and '=': the last digit's two low bits are unused."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(text[42])
    return text[:42] + alphabet[last ^ 1] + text[43:]


def test_a_key_has_one_text_only():
    text = statement.public_key_to_text(SERVER_KEY.public_key())
    other = _other_base64_of_the_same_bytes(text)
    assert other != text and base64.b64decode(other) == base64.b64decode(text)
    with pytest.raises(StatementError, match="canonical base64"):
        statement.public_key_from_text(other)


def test_the_identity_key_and_the_signature_that_fits_every_statement_are_refused():
    forged = statement.sign(MANIFEST, SERVER_KEY)
    identity = Ed25519PublicKey.from_public_bytes(IDENTITY)
    forged["signature"]["key_id"] = statement.key_id(identity)
    forged["signature"]["value"] = base64.b64encode(EVERYTHING).decode()
    assert code_of(forged, identity) == "statement.unknown_key"
    assert code_of(forged, {statement.key_id(identity): identity}) == "statement.unknown_key"


def test_a_signature_with_a_small_order_r_is_refused():
    seed = bytes(range(32))  # SERVER_KEY's
    signed = statement.sign(MANIFEST, SERVER_KEY)
    value = identity_r_signature(seed, statement.CONTEXT + statement.canonical_bytes(MANIFEST))
    SERVER_KEY.public_key().verify(value, statement.CONTEXT + statement.canonical_bytes(MANIFEST))
    signed["signature"]["value"] = base64.b64encode(value).decode()
    assert code_of(signed, trusted(SERVER_KEY)) == "statement.signature"


def test_a_signature_with_s_plus_l_is_refused():
    signed = statement.sign(MANIFEST, SERVER_KEY)
    value = base64.b64decode(signed["signature"]["value"])
    s = int.from_bytes(value[32:], "little") + ed25519.L
    signed["signature"]["value"] = base64.b64encode(value[:32] + s.to_bytes(32, "little")).decode()
    assert code_of(signed, trusted(SERVER_KEY)) == "statement.signature"
