"""Request signing: the RFC's own vectors, the renkei profile, and every refusal code."""

from __future__ import annotations

import base64
import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from common import ed25519, httpsig
from common.httpsig import COVERED, SignatureError, VerifiedRequest
from tests.common.test_ed25519 import (
    CANONICAL_SMALL,
    EVERYTHING,
    IDENTITY,
    SECOND_SMALL,
    IdentityRSigner,
)

# RFC 9421 Appendix B.1.4, "Example Ed25519 Test Key" (test-key-ed25519).
RFC_PRIVATE_PEM = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
"""
RFC_PUBLIC_PEM = b"""-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----
"""

# RFC 9421 Appendix B.2, the test request.
RFC_METHOD = "POST"
RFC_URL = "http://example.com/foo?param=Value&Pet=dog"
RFC_HEADERS = {
    "Host": "example.com",
    "Date": "Tue, 20 Apr 2021 02:07:55 GMT",
    "Content-Type": "application/json",
    "Content-Digest": (
        "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:"
    ),
    "Content-Length": "18",
}
RFC_BODY = b'{"hello": "world"}'

# RFC 9421 Appendix B.2.6, "Signing a Request Using ed25519".
RFC_B26_COVERED = ("date", "@method", "@path", "@authority", "content-type", "content-length")
RFC_B26_BASE = (
    b'"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
    b'"@method": POST\n'
    b'"@path": /foo\n'
    b'"@authority": example.com\n'
    b'"content-type": application/json\n'
    b'"content-length": 18\n'
    b'"@signature-params": ("date" "@method" "@path" "@authority" "content-type" '
    b'"content-length");created=1618884473;keyid="test-key-ed25519"'
)
RFC_B26_INPUT = (
    'sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length")'
    ';created=1618884473;keyid="test-key-ed25519"'
)
RFC_B26_SIGNATURE = "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:"

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
KEY_ID = "terminal-0001"
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
NONCE = "AAAAAAAAAAAAAAAAAAAAAA"
URL = "https://renkei.example:8443/api/v1/uploads?lasdec=131016&dry=0"
BODY = "市町村通知,J+4E00\n".encode()


def rfc_private_key():
    return load_pem_private_key(RFC_PRIVATE_PEM, password=None)


def resolve(key_id: str):
    return KEY.public_key() if key_id == KEY_ID else None


def signed_request(method="POST", url=URL, body=BODY, *, created=NOW, nonce=NONCE):
    headers = {"Content-Type": "text/csv", "Accept": "application/json"}
    headers |= httpsig.sign_request(
        method, url, headers, body, key_id=KEY_ID, private_key=KEY, created=created, nonce=nonce
    )
    return method, url, headers, body


def verify(method, url, headers, body, *, now=NOW, resolve_key=resolve, window=300):
    return httpsig.verify_request(
        method, url, headers, body, resolve_key=resolve_key, now=now, window=window
    )


def refusal(*args, **kwargs) -> str:
    with pytest.raises(SignatureError) as caught:
        verify(*args, **kwargs)
    return caught.value.code


# --- the RFCs' own bytes ------------------------------------------------------------------


def test_rfc9421_b26_signature_base_and_value_are_reproduced():
    headers, base = httpsig._sign(
        RFC_METHOD,
        RFC_URL,
        RFC_HEADERS,
        covered=RFC_B26_COVERED,
        key_id="test-key-ed25519",
        private_key=rfc_private_key(),
        created=1618884473,
        nonce=None,
        include_alg=False,
        label="sig-b26",
    )
    assert base == RFC_B26_BASE
    assert headers["Signature-Input"] == RFC_B26_INPUT
    assert headers["Signature"] == RFC_B26_SIGNATURE


def test_rfc9421_b26_signature_verifies_against_the_rfc_public_key():
    public_key = load_pem_public_key(RFC_PUBLIC_PEM)
    value = base64.b64decode(RFC_B26_SIGNATURE.split(":")[1])
    public_key.verify(value, RFC_B26_BASE)  # raises if the vector were wrong


def test_rfc9421_b26_passes_the_cryptographic_check_and_fails_only_the_profile():
    """The RFC's signature is genuine, but it does not cover what renkei requires."""
    public_key = load_pem_public_key(RFC_PUBLIC_PEM)
    headers = RFC_HEADERS | {"Signature-Input": RFC_B26_INPUT, "Signature": RFC_B26_SIGNATURE}
    args = (RFC_METHOD, RFC_URL, headers, RFC_BODY)
    assert refusal(*args, resolve_key=lambda _id: public_key, now=1618884473) == "sig.components"
    tampered = headers | {"Date": "Wed, 21 Apr 2021 02:07:55 GMT"}
    assert (
        refusal(RFC_METHOD, RFC_URL, tampered, RFC_BODY, resolve_key=lambda _id: public_key)
        == "sig.invalid"
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # RFC 9530 Appendix B.1: {"hello": "world"} followed by a line feed.
        (b'{"hello": "world"}\n', "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:"),
        # RFC 9530 Appendix B.2: empty content.
        (b"", "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"),
        # RFC 9421 Appendix B.2's body without the line feed (as in RFC 9421 B.1 examples).
        (b'{"hello": "world"}', "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"),
    ],
)
def test_content_digest_matches_rfc9530(body, expected):
    assert httpsig.content_digest(body) == expected


# --- round trip ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", "https://renkei.example/api/v1/batches", b""),
        ("GET", "https://renkei.example:8443/api/v1/batches/42?part=1", b""),
        ("POST", URL, BODY),
        ("POST", "https://127.0.0.1:8443/api/v1/batches/42/ack", b'{"sha256":"ab"}'),
    ],
)
def test_round_trip(method, url, body):
    result = verify(*signed_request(method, url, body))
    assert result == VerifiedRequest(key_id=KEY_ID, created=NOW, nonce=NONCE, covered=COVERED)


def test_signature_input_names_the_profile():
    _, _, headers, _ = signed_request()
    value = headers["Signature-Input"]
    assert value.startswith('renkei=("@method" "@authority" "@path" "@query" "content-digest");')
    assert f"created={NOW}" in value and f'keyid="{KEY_ID}"' in value
    assert 'alg="ed25519"' in value and f'nonce="{NONCE}"' in value
    assert headers["Content-Digest"] == httpsig.content_digest(BODY)


def test_header_names_are_case_insensitive():
    method, url, headers, body = signed_request()
    lowered = {name.lower(): value for name, value in headers.items()}
    assert verify(method, url, lowered, body).key_id == KEY_ID


def test_sign_request_replaces_stale_signature_headers():
    stale = {"content-digest": "sha-256=:AAAA:", "SIGNATURE": "x=:AAAA:", "Signature-Input": "x=()"}
    added = httpsig.sign_request(
        "GET", URL, stale, b"", key_id=KEY_ID, private_key=KEY, created=NOW, nonce=NONCE
    )
    assert set(added) == {"Content-Digest", "Signature-Input", "Signature"}
    assert verify("GET", URL, added, b"").nonce == NONCE


@pytest.mark.parametrize("edge", [-300, 300])
def test_created_at_the_edge_of_the_window_is_accepted(edge):
    assert verify(*signed_request(created=NOW + edge)).created == NOW + edge


def test_window_is_configurable():
    request = signed_request(created=NOW - 600)
    assert refusal(*request) == "sig.stale"
    assert verify(*request, window=900).created == NOW - 600


def test_new_nonce_is_128_random_bits_url_safe():
    nonces = {httpsig.new_nonce() for _ in range(50)}
    assert len(nonces) == 50
    for nonce in nonces:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", nonce)
        assert len(base64.urlsafe_b64decode(nonce + "==")) == 16
    assert verify(*signed_request(nonce=nonces.pop())).key_id == KEY_ID


# --- refusals -----------------------------------------------------------------------------


def _replace_header(name, value):
    def change(method, url, headers, body):
        return method, url, headers | {name: value}, body

    return change


def _drop_header(name):
    def change(method, url, headers, body):
        return method, url, {k: v for k, v in headers.items() if k != name}, body

    return change


def _edit_header(name, old, new):
    def change(method, url, headers, body):
        assert old in headers[name]
        return method, url, headers | {name: headers[name].replace(old, new)}, body

    return change


def _body(new_body, *, redigest=False):
    def change(method, url, headers, body):
        if redigest:  # an attacker who also recomputes the digest
            headers = headers | {"Content-Digest": httpsig.content_digest(new_body)}
        return method, url, headers, new_body

    return change


def _url(new_url):
    def change(method, url, headers, body):
        return method, new_url, headers, body

    return change


def _method(new_method):
    def change(method, url, headers, body):
        return new_method, url, headers, body

    return change


REFUSALS = {
    "tampered body": (_body(BODY + b"x"), "sig.digest"),
    "empty body instead": (_body(b""), "sig.digest"),
    "body and digest replaced": (_body(b"other", redigest=True), "sig.invalid"),
    "tampered path": (_url(URL.replace("/uploads", "/batches")), "sig.invalid"),
    "tampered query": (_url(URL.replace("131016", "131024")), "sig.invalid"),
    "query added": (_url(URL.split("?")[0] + "?lasdec=131016"), "sig.invalid"),
    "tampered authority": (_url(URL.replace("renkei.example", "evil.example")), "sig.invalid"),
    "tampered port": (_url(URL.replace(":8443", ":9443")), "sig.invalid"),
    "tampered method": (_method("PUT"), "sig.invalid"),
    "tampered created": (
        _edit_header("Signature-Input", f"created={NOW}", f"created={NOW + 1}"),
        "sig.invalid",
    ),
    "tampered nonce": (_edit_header("Signature-Input", NONCE, "B" * 22), "sig.invalid"),
    "tampered signature": (_edit_header("Signature", "renkei=:", "renkei=:AAAA"), "sig.invalid"),
    "missing Signature": (_drop_header("Signature"), "sig.missing"),
    "missing Signature-Input": (_drop_header("Signature-Input"), "sig.missing"),
    "missing Content-Digest": (_drop_header("Content-Digest"), "sig.missing"),
    "Signature-Input not a dictionary": (
        _replace_header("Signature-Input", "(((garbage"),
        "sig.malformed",
    ),
    "Signature not bytes": (_replace_header("Signature", 'renkei="abc"'), "sig.malformed"),
    "Signature non-ASCII": (_replace_header("Signature", "renkei=:Ä:"), "sig.malformed"),
    "labels differ": (_edit_header("Signature", "renkei=", "other="), "sig.malformed"),
    "two signatures": (
        _edit_header("Signature-Input", "renkei=(", 'x=("@method");created=1, renkei=('),
        "sig.malformed",
    ),
    "created not an integer": (
        _edit_header("Signature-Input", f"created={NOW}", 'created="now"'),
        "sig.malformed",
    ),
    "nonce too short": (_edit_header("Signature-Input", NONCE, "abc"), "sig.malformed"),
    "unknown parameter": (
        _edit_header("Signature-Input", ";alg=", ";color=1;alg="),
        "sig.malformed",
    ),
    "alg hmac": (_edit_header("Signature-Input", 'alg="ed25519"', 'alg="hmac-sha256"'), "sig.alg"),
    "alg rsa": (
        _edit_header("Signature-Input", 'alg="ed25519"', 'alg="rsa-pss-sha512"'),
        "sig.alg",
    ),
    "unknown key id": (
        _edit_header("Signature-Input", f'keyid="{KEY_ID}"', 'keyid="terminal-9999"'),
        "sig.unknown_key",
    ),
}


@pytest.mark.parametrize(("change", "code"), REFUSALS.values(), ids=REFUSALS.keys())
def test_refusal_codes(change, code):
    original = signed_request()
    assert verify(*original).key_id == KEY_ID  # the unchanged request passes
    assert refusal(*change(*original)) == code


def test_wrong_key_is_invalid():
    assert (
        refusal(*signed_request(), resolve_key=lambda _id: OTHER_KEY.public_key()) == "sig.invalid"
    )


def test_unknown_key_when_resolver_returns_none():
    assert refusal(*signed_request(), resolve_key=lambda _id: None) == "sig.unknown_key"


@pytest.mark.parametrize("offset", [-301, 301, -86_400, 86_400])
def test_created_outside_the_window_is_stale(offset):
    assert refusal(*signed_request(created=NOW + offset)) == "sig.stale"


def test_stale_needs_a_genuine_signature_first():
    method, url, headers, body = signed_request(created=NOW - 3600)
    assert refusal(method, url, headers, body + b"!") == "sig.digest"
    assert (
        refusal(method, url, headers, body, resolve_key=lambda _id: OTHER_KEY.public_key())
        == "sig.invalid"
    )


def _sign_custom(covered, *, nonce=NONCE, body=BODY):
    headers = {"Content-Digest": httpsig.content_digest(body)}
    added, _ = httpsig._sign(
        "POST",
        URL,
        headers,
        covered=covered,
        key_id=KEY_ID,
        private_key=KEY,
        created=NOW,
        nonce=nonce,
    )
    return "POST", URL, added, body


@pytest.mark.parametrize(
    "covered",
    [
        ("@method", "@authority", "@path", "@query"),  # no content-digest
        ("@method", "@authority", "@path", "content-digest"),  # no query
        ("@method", "@path", "@query", "content-digest"),  # no authority
        ("@authority", "@path", "@query", "content-digest"),  # no method
        ("@method", "@authority", "@path", "@query", '"content-digest";sf'),  # not the plain field
    ],
)
def test_signature_that_does_not_cover_the_profile_is_refused(covered):
    request = _sign_custom(covered)
    assert refusal(*request) == "sig.components"


def test_extra_covered_components_are_allowed():
    result = verify(*_sign_custom((*COVERED, "@scheme")))
    assert result.covered == (*COVERED, "@scheme")


def test_signature_without_nonce_is_refused():
    assert refusal(*_sign_custom(COVERED, nonce=None)) == "sig.malformed"


def test_signing_a_bad_url_is_refused():
    with pytest.raises(SignatureError) as caught:
        httpsig.sign_request(
            "GET",
            "/relative/only",
            {},
            b"",
            key_id=KEY_ID,
            private_key=KEY,
            created=NOW,
            nonce=NONCE,
        )
    assert caught.value.code == "sig.malformed"


def test_no_clock_is_read(monkeypatch):
    """common/ reads no clock: the library's own time checks must stay out of the way."""
    import http_message_signatures.signatures as library

    class NoClock:
        timedelta = library.datetime.timedelta
        timezone = library.datetime.timezone

        class datetime:  # stands in for the datetime class
            @staticmethod
            def now(*_args):
                raise AssertionError("the clock was read")

            fromtimestamp = staticmethod(library.datetime.datetime.fromtimestamp)

    monkeypatch.setattr(library, "datetime", NoClock)
    assert verify(*signed_request(created=NOW - 200)).created == NOW - 200
    assert refusal(*signed_request(created=NOW - 400)) == "sig.stale"


# --- keys nobody holds, and signatures that prove nothing (issue #18) -----------------------


def _with_signature(headers, value: bytes):
    return headers | {"Signature": f"renkei=:{base64.b64encode(value).decode()}:"}


def test_the_identity_key_with_the_signature_that_fits_everything_is_an_unknown_key():
    method, url, headers, body = signed_request()
    identity = Ed25519PublicKey.from_public_bytes(IDENTITY)
    forged = _with_signature(headers, EVERYTHING)
    assert refusal(method, url, forged, body, resolve_key=lambda _: identity) == "sig.unknown_key"


@pytest.mark.parametrize("name", [*CANONICAL_SMALL, *SECOND_SMALL])
def test_a_small_order_key_is_an_unknown_key(name):
    weak = Ed25519PublicKey.from_public_bytes({**CANONICAL_SMALL, **SECOND_SMALL}[name])
    assert refusal(*signed_request(), resolve_key=lambda _: weak) == "sig.unknown_key"


def test_a_signature_with_a_small_order_r_is_invalid():
    seed = bytes(range(32))  # KEY's
    headers = {"Content-Type": "text/csv"}
    headers |= httpsig.sign_request(
        "POST", URL, headers, BODY, key_id=KEY_ID, private_key=IdentityRSigner(seed),
        created=NOW, nonce=NONCE,
    )  # fmt: skip
    assert base64.b64decode(headers["Signature"][8:-1])[:32] == IDENTITY
    assert refusal("POST", URL, headers, BODY) == "sig.invalid"


def test_a_signature_with_s_plus_l_is_invalid():
    method, url, headers, body = signed_request()
    value = base64.b64decode(headers["Signature"][len("renkei=:") : -1])
    s = int.from_bytes(value[32:], "little") + ed25519.L
    forged = _with_signature(headers, value[:32] + s.to_bytes(32, "little"))
    assert refusal(method, url, forged, body) == "sig.invalid"
