"""Bounded fuzzing of the server's fast signature check (server.auth.verify_profile).

Random and mutated Signature-Input, Signature and Content-Digest fields,
URLs, methods and bodies.  ``verify_profile`` must refuse only with
SignatureError, look the key up at most once (the lockout is decided in the
resolver), accept nothing the library verifier (``common.httpsig``) would
refuse, and accept only what the terminal's key signed.  Bounded like
tests/common/test_verifier_fuzz.py (same ``RENKEI_FUZZ_EXAMPLES``).
"""

from __future__ import annotations

import base64
import string

from hypothesis import given
from hypothesis import strategies as st

from common import httpsig
from common.httpsig import SignatureError
from server.auth import verify_profile
from tests.common.test_verifier_fuzz import (
    BODY,
    FIELD_CHARS,
    FUZZ,
    GENUINE,
    KEY,
    KEY_ID,
    NOW,
    URL,
    WEAK_KEYS,
    WEAK_SIGNATURES,
    means_what_was_signed,
    mutated,
    signed_headers,
)

URL_CHARS = string.ascii_letters + string.digits + ":/?#[]@!$&'()*+,;=%-._~é "


class Resolver:
    """The terminal's key (or another), counting the look-ups."""

    def __init__(self, key=None):  # type: ignore[no-untyped-def]
        self.key = key or KEY.public_key()
        self.calls = 0

    def __call__(self, key_id: str):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.key if key_id == KEY_ID else None


def _outcome(verify, method, url, headers, body, key=None):  # type: ignore[no-untyped-def]
    """(result or refusal code, look-ups); anything but SignatureError propagates and fails."""
    resolver = Resolver(key)
    try:
        result = verify(method, url, headers, body, resolve_key=resolver, now=NOW, window=300)
    except SignatureError as error:
        return error.code, resolver.calls
    return result, resolver.calls


def _check(method, url, headers, body, key=None):  # type: ignore[no-untyped-def]
    fast, calls = _outcome(verify_profile, method, url, headers, body, key)
    assert calls <= 1
    if not isinstance(fast, str):
        library, _ = _outcome(httpsig.verify_request, method, url, headers, body, key)
        assert library == fast  # accepted here only when the library accepts it too
        means_what_was_signed(method, url, body, fast)
    return fast


@FUZZ
@given(
    signature_input=st.one_of(
        st.text(FIELD_CHARS, max_size=300), mutated(GENUINE["Signature-Input"])
    ),
    signature=st.one_of(st.text(FIELD_CHARS, max_size=120), mutated(GENUINE["Signature"])),
    digest=st.one_of(st.text(FIELD_CHARS, max_size=80), mutated(GENUINE["Content-Digest"])),
    drop=st.sets(st.sampled_from(["Signature-Input", "Signature", "Content-Digest"])),
)
def test_random_signature_fields(signature_input, signature, digest, drop):
    headers = GENUINE | {
        "Signature-Input": signature_input,
        "Signature": signature,
        "Content-Digest": digest,
    }
    for name in drop:
        del headers[name]
    _check("POST", URL, headers, BODY)


@FUZZ
@given(
    method=st.one_of(st.just("POST"), mutated("POST", string.ascii_letters + " ")),
    url=st.one_of(st.just(URL), mutated(URL, URL_CHARS), st.text(URL_CHARS, max_size=80)),
    body=st.one_of(st.just(BODY), st.binary(max_size=64)),
    header=st.sampled_from(["Signature-Input", "Signature", "Content-Digest", None]),
    data=st.data(),
)
def test_mutated_genuine_requests(method, url, body, header, data):
    headers = dict(GENUINE)
    if header is not None:
        headers[header] = data.draw(mutated(headers[header]))
    _check(method, url, headers, body)


@FUZZ
@given(
    weak=st.sampled_from(WEAK_KEYS),
    value=WEAK_SIGNATURES,
    method=st.sampled_from(["GET", "POST", "PUT"]),
    body=st.binary(max_size=32),
)
def test_nothing_passes_under_a_key_of_small_order(weak, value, method, body):
    headers = signed_headers(method, URL, body)
    headers["Signature"] = "renkei=:" + base64.b64encode(value).decode() + ":"
    assert _outcome(verify_profile, method, URL, headers, body, weak)[0] == "sig.unknown_key"
