"""Bounded fuzzing of the verifiers in common/: request signatures, statements, keys.

Each verifier gets random and mutated input and must (1) refuse only with
its own error type (SignatureError, StatementError, Ed25519Error), never
with anything else, and (2) never accept what the trusted key did not sign:
whatever it accepts means exactly what was signed.  Every test is bounded
(``max_examples``, :data:`EXAMPLES`) and takes well under a second;
``deadline=None`` because the machine is shared and a slow example is not a
failure.
"""

from __future__ import annotations

import base64
import hashlib
import os
import string
from urllib.parse import urlsplit

import nacl.bindings as sodium
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import ed25519, httpsig, statement
from common.ed25519 import Ed25519Error
from common.httpsig import SignatureError, VerifiedRequest
from common.statement import StatementError
from tests.common.test_ed25519 import CANONICAL_SMALL, EVERYTHING, SECOND_SMALL

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEY_ID = "t_0123456789abcdef"
NOW = 1_795_773_600
NONCE = "AAAAAAAAAAAAAAAAAAAAAA"
URL = "https://renkei.example:8443/api/v1/uploads?lasdec=131016"
BODY = b"131016,J+4E00\n"
WEAK_KEYS = [
    Ed25519PublicKey.from_public_bytes(e) for e in {**CANONICAL_SMALL, **SECOND_SMALL}.values()
]

#: Examples per test; RENKEI_FUZZ_EXAMPLES=20000 for a long run by hand.
#: Signatures to try under a key of small order: the one that fits every message, any 64
#: bytes, and every small-order R with S = 0.
WEAK_SIGNATURES = st.one_of(
    st.just(EVERYTHING),
    st.binary(min_size=64, max_size=64),
    st.sampled_from([*CANONICAL_SMALL.values(), *SECOND_SMALL.values()]).map(
        lambda r: r + bytes(32)
    ),
)
EXAMPLES = int(os.environ.get("RENKEI_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Characters that matter to structured fields, URLs and base64, a few others, and non-ASCII.
FIELD_CHARS = string.ascii_letters + string.digits + ' "();=:,*+/-_.?&%@\\\t' + "é\x00\x7f"
B64 = string.ascii_letters + string.digits + "+/="


def signed_headers(method: str = "POST", url: str = URL, body: bytes = BODY) -> dict[str, str]:
    headers = {"Content-Type": "text/csv"}
    headers |= httpsig.sign_request(
        method, url, headers, body, key_id=KEY_ID, private_key=KEY, created=NOW, nonce=NONCE
    )
    return headers


GENUINE = signed_headers()


@st.composite
def mutated(draw: st.DrawFn, text: str, alphabet: str = FIELD_CHARS) -> str:
    """``text`` with one to three characters replaced, inserted or deleted."""
    chars = list(text)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, len(chars)))
        what = draw(st.sampled_from(["replace", "insert", "delete"]))
        if what == "insert" or not chars:
            chars.insert(where, draw(st.sampled_from(alphabet)))
        elif what == "replace":
            chars[min(where, len(chars) - 1)] = draw(st.sampled_from(alphabet))
        else:
            del chars[min(where, len(chars) - 1)]
    return "".join(chars)


def _resolve(key_id: str):  # type: ignore[no-untyped-def]
    return KEY.public_key() if key_id == KEY_ID else None


def _verify(method, url, headers, body, resolve=_resolve):  # type: ignore[no-untyped-def]
    """The result, or None for a refusal; anything but SignatureError propagates and fails."""
    try:
        return httpsig.verify_request(
            method, url, headers, body, resolve_key=resolve, now=NOW, window=300
        )
    except SignatureError:
        return None


def means_what_was_signed(method: str, url: str, body: bytes, result: VerifiedRequest) -> None:
    """An accepted request is the signed one: same method, authority, path, query, body, params.

    (The scheme is not covered by the profile: TLS, not the signature, decides it.)
    """
    got, signed = urlsplit(url), urlsplit(URL)
    assert method == "POST"
    assert (got.hostname, got.port) == (signed.hostname, signed.port)
    assert (got.path, got.query) == (signed.path, signed.query)
    assert hashlib.sha256(body).digest() == hashlib.sha256(BODY).digest()
    assert (result.key_id, result.created, result.nonce) == (KEY_ID, NOW, NONCE)


@FUZZ
@given(
    signature_input=st.one_of(
        st.text(FIELD_CHARS, max_size=300), mutated(GENUINE["Signature-Input"])
    ),
    signature=st.one_of(st.text(FIELD_CHARS, max_size=120), mutated(GENUINE["Signature"])),
    digest=st.one_of(st.text(FIELD_CHARS, max_size=80), mutated(GENUINE["Content-Digest"])),
    drop=st.sets(st.sampled_from(["Signature-Input", "Signature", "Content-Digest"])),
)
def test_random_signature_headers_are_refused_with_a_signature_error(
    signature_input, signature, digest, drop
):
    headers = GENUINE | {
        "Signature-Input": signature_input,
        "Signature": signature,
        "Content-Digest": digest,
    }
    for name in drop:
        del headers[name]
    result = _verify("POST", URL, headers, BODY)
    if result is not None:  # only an edit that changes no meaning (e.g. whitespace) may pass
        means_what_was_signed("POST", URL, BODY, result)


@FUZZ
@given(
    method=st.one_of(st.just("POST"), mutated("POST", string.ascii_letters)),
    url=st.one_of(st.just(URL), mutated(URL), st.text(FIELD_CHARS, max_size=80)),
    body=st.one_of(st.just(BODY), st.binary(max_size=64)),
    header=st.sampled_from(["Signature-Input", "Signature", "Content-Digest", None]),
    data=st.data(),
)
def test_a_mutated_genuine_request_is_refused_unless_it_means_the_same(
    method, url, body, header, data
):
    headers = dict(GENUINE)
    if header is not None:
        headers[header] = data.draw(mutated(headers[header]))
    result = _verify(method, url, headers, body)
    if result is not None:
        means_what_was_signed(method, url, body, result)


@FUZZ
@given(
    weak=st.sampled_from(WEAK_KEYS),
    value=WEAK_SIGNATURES,
    method=st.sampled_from(["GET", "POST", "PUT"]),
    body=st.binary(max_size=32),
)
def test_nothing_verifies_under_a_key_of_small_order(weak, value, method, body):
    headers = signed_headers(method, URL, body)
    headers["Signature"] = "renkei=:" + base64.b64encode(value).decode() + ":"
    assert _verify(method, URL, headers, body, resolve=lambda _: weak) is None


# --- statements ---------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
BODY_STATEMENT = {"type": "batch-manifest", "lasdec": "131016", "sequence": 7, "names": ["山田"]}
SIGNED = statement.sign(BODY_STATEMENT, KEY)
TRUSTED = {statement.key_id(KEY.public_key()): KEY.public_key()}


def _verify_statement(signed, keys=TRUSTED):  # type: ignore[no-untyped-def]
    try:
        return statement.verify(signed, keys)
    except StatementError:
        return None


@FUZZ
@given(document=JSON)
def test_random_json_is_no_signed_statement(document):
    assert _verify_statement(document) is None


@FUZZ
@given(
    body=st.one_of(st.just(BODY_STATEMENT), st.dictionaries(st.text(max_size=6), JSON, max_size=5)),
    key_id=st.one_of(st.just(SIGNED["signature"]["key_id"]), JSON),
    value=st.one_of(
        st.just(SIGNED["signature"]["value"]),
        mutated(SIGNED["signature"]["value"], B64),
        st.binary(max_size=70).map(lambda b: base64.b64encode(b).decode()),
        JSON,
    ),
    alg=st.one_of(st.just("ed25519"), JSON),
)
def test_a_statement_is_accepted_only_as_signed(body, key_id, value, alg):
    signed = {"statement": body, "signature": {"alg": alg, "key_id": key_id, "value": value}}
    result = _verify_statement(signed)
    if result is not None:
        assert statement.canonical_bytes(result) == statement.canonical_bytes(BODY_STATEMENT)
        assert base64.b64decode(value) == base64.b64decode(SIGNED["signature"]["value"])


@FUZZ
@given(weak=st.sampled_from(WEAK_KEYS), value=st.binary(min_size=64, max_size=64))
def test_no_statement_verifies_under_a_key_of_small_order(weak, value):
    for signature in (value, EVERYTHING):
        forged = {
            "statement": BODY_STATEMENT,
            "signature": {
                "alg": "ed25519",
                "key_id": statement.key_id(weak),
                "value": base64.b64encode(signature).decode(),
            },
        }
        assert _verify_statement(forged, weak) is None
        assert _verify_statement(forged, {statement.key_id(weak): weak}) is None


# --- key texts and the checks themselves ----------------------------------------------------


KEY_TEXT = st.one_of(
    st.binary(min_size=32, max_size=32),
    st.sampled_from([*CANONICAL_SMALL.values(), *SECOND_SMALL.values()]),
).map(lambda raw: base64.b64encode(raw).decode())


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=60),
        st.text(B64, min_size=40, max_size=48),
        KEY_TEXT,
        KEY_TEXT.flatmap(lambda text: mutated(text, B64)),
    )
)
def test_a_key_text_is_accepted_only_when_canonical_and_libsodium_agrees(text):
    try:
        key = statement.public_key_from_text(text)
    except StatementError:
        return
    raw = key.public_bytes_raw()
    assert base64.b64encode(raw).decode() == text
    assert sodium.crypto_core_ed25519_is_valid_point(raw)


@FUZZ
@given(value=st.one_of(st.binary(max_size=70), st.text(max_size=70), st.none(), st.integers()))
def test_the_checks_refuse_anything_with_their_own_error(value):
    for check in (ed25519.check_public_key, ed25519.check_signature):
        try:
            check(value)
        except Ed25519Error:
            pass
