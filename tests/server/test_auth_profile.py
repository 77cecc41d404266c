"""The server's own check of the terminals' signature form (server.auth.verify_profile).

Every signature here is made by ``common.httpsig.sign_request`` — the
``http_message_signatures`` library, as on the appliance — or by the
library's signer with other options, and every result is compared with the
library's own verifier (``common.httpsig.verify_request``): the same answer
for what terminals send, the same refusal code for what is wrong, and a
refusal for what the library would accept in any other form.
"""

from __future__ import annotations

import base64
import hashlib
import string

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common import ed25519, httpsig
from common.httpsig import COVERED, SignatureError, VerifiedRequest
from server import auth
from server.auth import verify_profile
from server.enrollment import recent_auth_failures
from tests.common.test_ed25519 import (
    CANONICAL_SMALL,
    EVERYTHING,
    IDENTITY,
    SECOND_SMALL,
    IdentityRSigner,
)
from tests.server.conftest import API_BASE

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
KEY_ID = "t_0123456789abcdef"
NOW = 1_795_773_600  # 2026-11-27T09:20:00Z
NONCE = "AAAAAAAAAAAAAAAAAAAAAA"
URL = "https://renkei.example:8443/api/v1/batches/131016-20261127-000001/ack"
BODY = b'{"sha256": "ab"}'


class Calls:
    """A key resolver that counts its calls (the lockout check runs inside it, once)."""

    def __init__(self, key=KEY):  # type: ignore[no-untyped-def]
        self.key = key
        self.ids: list[str] = []

    def __call__(self, key_id: str):  # type: ignore[no-untyped-def]
        self.ids.append(key_id)
        return self.key.public_key() if key_id == KEY_ID and self.key is not None else None


def signed(method="POST", url=URL, body=BODY, *, created=NOW, nonce=NONCE, key=KEY):  # type: ignore[no-untyped-def]
    headers = {"Host": "ignored.example", "Accept": "application/json"}
    headers |= httpsig.sign_request(
        method, url, headers, body, key_id=KEY_ID, private_key=key, created=created, nonce=nonce
    )
    return method, url, headers, body


def outcome(verify, method, url, headers, body, *, resolve=None, now=NOW, window=300):  # type: ignore[no-untyped-def]
    """The result, or the refusal code, of one verifier."""
    try:
        return verify(
            method, url, headers, body, resolve_key=resolve or Calls(), now=now, window=window
        )
    except SignatureError as error:
        return error.code


def both(method, url, headers, body, **kwargs):  # type: ignore[no-untyped-def]
    """(this module's answer, the library's answer) for the same request."""
    return (
        outcome(verify_profile, method, url, headers, body, **kwargs),
        outcome(httpsig.verify_request, method, url, headers, body, **kwargs),
    )


# --- what terminals send is accepted, with the library's answer ----------------------------


@pytest.mark.parametrize(
    ("method", "url", "body"),
    [
        ("GET", "https://renkei.example/api/v1/batches", b""),
        ("GET", "https://renkei.example:443/api/v1/batches", b""),  # the default port, spelt out
        ("GET", "https://RENKEI.Example:8443/api/v1/batches?all=1", b""),
        ("GET", "https://127.0.0.1:8443/api/v1/batches/131016-20261127-000001", b""),
        ("GET", "https://[::1]:8443/api/v1/batches/x/manifest", b""),
        ("GET", "http://10.0.0.5:8080/api/v1/batches?all=1&x=%E3%81%82", b""),
        ("GET", "https://renkei.example/api/v1/batches/a%2Fb?q=a/b?c", b""),
        ("GET", "https://renkei.example/api/v1/batches?", b""),  # an empty query
        ("POST", URL, BODY),
        ("POST", "https://renkei.example/api/v1/uploads", "市町村通知\n".encode()),
    ],
)
def test_what_the_signer_emits_is_accepted_like_the_library_accepts_it(method, url, body):
    mine, library = both(*signed(method, url, body))
    assert mine == VerifiedRequest(key_id=KEY_ID, created=NOW, nonce=NONCE, covered=COVERED)
    assert mine == library


def test_the_form_is_checked_without_the_library(monkeypatch):
    """A terminal's request never reaches the general verifier (that is the point)."""

    def unused(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the general verifier was called")

    monkeypatch.setattr(auth, "verify_request", unused)
    assert outcome(verify_profile, *signed()).nonce == NONCE


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    host=st.sampled_from(["renkei.example", "127.0.0.1", "a-b.lg.jp", "[2001:db8::1]"]),
    port=st.sampled_from(["", ":443", ":8443", ":0443"]),
    path=st.lists(
        st.text(string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@%", max_size=8),
        max_size=4,
    ),
    query=st.none() | st.text(string.ascii_letters + string.digits + "=&/?%", max_size=12),
    body=st.binary(max_size=64),
    created=st.integers(NOW - 400, NOW + 400),
    nonce=st.from_regex(r"[A-Za-z0-9_-]{16,40}", fullmatch=True),
)
def test_any_request_the_signer_can_sign_gets_the_library_answer(
    method, host, port, path, query, body, created, nonce
):
    url = f"https://{host}{port}/" + "/".join(path) + ("" if query is None else f"?{query}")
    try:
        request = signed(method, url, body, created=created, nonce=nonce)
    except SignatureError:
        return  # not a URL the library signs (a stray "%"): nothing a terminal can send
    assert auth._profile_form(*request[:3]) is not None  # the signer's form, checked directly
    mine, library = both(*request)
    assert mine == library


# --- what is wrong gets the library's code --------------------------------------------------


def _replace(name, value):  # type: ignore[no-untyped-def]
    def change(method, url, headers, body):  # type: ignore[no-untyped-def]
        return method, url, headers | {name: value}, body

    return change


def _drop(name):  # type: ignore[no-untyped-def]
    def change(method, url, headers, body):  # type: ignore[no-untyped-def]
        return method, url, {k: v for k, v in headers.items() if k != name}, body

    return change


def _edit(name, old, new):  # type: ignore[no-untyped-def]
    def change(method, url, headers, body):  # type: ignore[no-untyped-def]
        assert old in headers[name]
        return method, url, headers | {name: headers[name].replace(old, new)}, body

    return change


def _url(old, new):  # type: ignore[no-untyped-def]
    def change(method, url, headers, body):  # type: ignore[no-untyped-def]
        assert old in url
        return method, url.replace(old, new), headers, body

    return change


REFUSALS = {
    "tampered body": (lambda m, u, h, b: (m, u, h, b + b"x"), "sig.digest"),
    "body and digest replaced": (
        lambda m, u, h, b: (m, u, h | {"Content-Digest": httpsig.content_digest(b"x")}, b"x"),
        "sig.invalid",
    ),
    "tampered path": (_url("/batches/", "/uploads/"), "sig.invalid"),
    "query added": (lambda m, u, h, b: (m, u + "?all=1", h, b), "sig.invalid"),
    "tampered authority": (_url("renkei.example", "evil.example"), "sig.invalid"),
    "tampered port": (_url(":8443", ":9443"), "sig.invalid"),
    "tampered method": (lambda m, u, h, b: ("PUT", u, h, b), "sig.invalid"),
    "tampered created": (
        _edit("Signature-Input", f"created={NOW}", f"created={NOW + 1}"),
        "sig.invalid",
    ),
    "tampered nonce": (_edit("Signature-Input", NONCE, "B" * 22), "sig.invalid"),
    "tampered key id": (_edit("Signature-Input", KEY_ID, "t_ffffffffffffffff"), "sig.unknown_key"),
    "tampered signature": (_edit("Signature", "renkei=:", "renkei=:AAAA"), "sig.invalid"),
    "signature of another key": (
        _replace("Signature", signed(key=OTHER_KEY)[2]["Signature"]),
        "sig.invalid",
    ),
    "missing Signature": (_drop("Signature"), "sig.missing"),
    "missing Signature-Input": (_drop("Signature-Input"), "sig.missing"),
    "missing Content-Digest": (_drop("Content-Digest"), "sig.missing"),
    "Signature-Input not a dictionary": (
        _replace("Signature-Input", "renkei=(((("),
        "sig.malformed",
    ),
    "Signature not bytes": (_replace("Signature", 'renkei="abc"'), "sig.malformed"),
    "labels differ": (_edit("Signature", "renkei=", "other="), "sig.malformed"),
    "created not an integer": (
        _edit("Signature-Input", f"created={NOW}", 'created="x"'),
        "sig.malformed",
    ),
    "nonce too short": (_edit("Signature-Input", NONCE, "abc"), "sig.malformed"),
    "alg hmac": (_edit("Signature-Input", 'alg="ed25519"', 'alg="hmac-sha256"'), "sig.alg"),
    "non-ASCII signature": (_replace("Signature", "renkei=:Ä:"), "sig.malformed"),
}


@pytest.mark.parametrize(("change", "code"), REFUSALS.values(), ids=REFUSALS.keys())
def test_a_wrong_request_gets_the_library_code(change, code):
    request = signed()
    assert isinstance(outcome(verify_profile, *request), VerifiedRequest)
    mine, library = both(*change(*request))
    assert (mine, library) == (code, code)


@pytest.mark.parametrize(("offset", "code"), [(-301, "sig.stale"), (301, "sig.stale"), (300, None)])
def test_the_window_is_checked_last_like_the_library(offset, code):
    request = signed(created=NOW + offset)
    mine, library = both(*request)
    assert mine == library
    assert (mine if isinstance(mine, str) else None) == code
    # a stale request that was also changed is refused for the change, not for its age
    assert both(*request[:3], request[3] + b"!") == ("sig.digest", "sig.digest")


def test_wrong_key_and_unknown_key():
    request = signed()
    assert both(*request, resolve=Calls(OTHER_KEY)) == ("sig.invalid", "sig.invalid")
    assert both(*request, resolve=Calls(None)) == ("sig.unknown_key", "sig.unknown_key")


@pytest.mark.parametrize("form", ["terminal", "other form", "malformed"])
def test_the_key_is_resolved_once(form):
    """The lockout is decided in the resolver: it must run exactly once, before any cryptography."""
    method, url, headers, body = signed()
    if form == "other form":
        headers = headers | {"Signature-Input": headers["Signature-Input"] + ';tag="x"'}
    elif form == "malformed":
        headers = headers | {"Signature": "renkei=:AAAA:"}
    calls = Calls()
    outcome(verify_profile, method, url, headers, body, resolve=calls)
    assert calls.ids == [KEY_ID]


# --- what the library accepts in another form is refused ------------------------------------


def _library_signed(covered=COVERED, *, url=URL, include_alg=True, digest=None):  # type: ignore[no-untyped-def]
    headers = {"Content-Digest": digest or httpsig.content_digest(BODY)}
    added, _ = httpsig._sign(
        "POST",
        url,
        headers,
        covered=covered,
        key_id=KEY_ID,
        private_key=KEY,
        created=NOW,
        nonce=NONCE,
        include_alg=include_alg,
    )
    return "POST", url, added, BODY


def _sha512_digest() -> str:
    return f"sha-512=:{base64.b64encode(hashlib.sha512(BODY).digest()).decode()}:"


OTHER_FORMS = {
    "an extra component": lambda: _library_signed((*COVERED, "@scheme")),
    "components in another order": lambda: _library_signed(
        ("@authority", "@method", "@path", "@query", "content-digest")
    ),
    "no alg parameter": lambda: _library_signed(include_alg=False),
    "a SHA-512 Content-Digest": lambda: _library_signed(digest=_sha512_digest()),
    "user info in the URL": lambda: _library_signed(url=URL.replace("https://", "https://me@")),
    "a fragment in the URL": lambda: _library_signed(url=URL + "#part"),
    "parameters in another order": lambda: _reordered_parameters(),
}


def _reordered_parameters():  # type: ignore[no-untyped-def]
    """``created`` after ``keyid``, signed over that text: valid RFC 9421, not the signer's form."""
    method, url, headers, body = signed()
    params = headers["Signature-Input"].split("renkei=", 1)[1]
    inner, _, rest = params.partition(";")
    created, keyid, alg, nonce = rest.split(";")
    reordered = ";".join([inner, keyid, created, alg, nonce])
    base = (
        f'"@method": {method}\n"@authority": renkei.example:8443\n'
        '"@path": /api/v1/batches/131016-20261127-000001/ack\n"@query": ?\n'
        f'"content-digest": {headers["Content-Digest"]}\n"@signature-params": {reordered}'
    )
    value = base64.b64encode(KEY.sign(base.encode())).decode()
    return (
        method,
        url,
        headers
        | {
            "Signature-Input": f"renkei={reordered}",
            "Signature": f"renkei=:{value}:",
        },
        body,
    )


@pytest.mark.parametrize("make", OTHER_FORMS.values(), ids=OTHER_FORMS.keys())
def test_a_valid_signature_in_another_form_is_refused(make):
    request = make()
    mine, library = both(*request)
    assert isinstance(library, VerifiedRequest), library  # genuine RFC 9421 …
    assert mine == "sig.malformed"  # … but not what terminals send


def test_repeated_signature_fields_are_not_the_form():
    """Two field lines are combined by HTTP's rules; the fast path never picks one of them."""

    class Repeated(dict):
        def items(self):  # type: ignore[no-untyped-def]
            yield from super().items()
            yield "Signature", self["Signature"]

    method, url, headers, body = signed()
    calls = Calls()
    assert outcome(verify_profile, method, url, Repeated(headers), body, resolve=calls) == (
        "sig.malformed"
    )


def test_the_api_refuses_another_form_and_counts_it_as_a_failure(api, api_terminal, api_clock):
    terminal, client = api_terminal()
    path = "/api/v1/batches"
    headers = {"Content-Digest": httpsig.content_digest(b"")}
    added, _ = httpsig._sign(
        "GET",
        API_BASE + path,
        headers,
        covered=(*COVERED, "@scheme"),
        key_id=terminal.terminal_id,
        private_key=client.key,
        created=int(api_clock().timestamp()),
        nonce=httpsig.new_nonce(),
    )
    reply = client.get(path, sign=False, headers=added)
    assert (reply.status_code, reply.get_json()["error"]["code"]) == (401, "sig.malformed")
    assert "Accept-Signature" in reply.headers
    storage = api.services.storage
    assert (
        recent_auth_failures(
            storage, terminal.terminal_id, source="127.0.0.1", now=api_clock(), period=60
        )
        == 1
    )
    assert client.get(path).status_code == 200  # the terminal's own form still passes


# --- keys nobody holds, and signatures that prove nothing (issue #18) -----------------------


class Fixed:
    """A resolver that answers one public key object for the terminal's id."""

    def __init__(self, public_key):  # type: ignore[no-untyped-def]
        self.public_key = public_key

    def __call__(self, key_id: str):  # type: ignore[no-untyped-def]
        return self.public_key if key_id == KEY_ID else None


def _with_signature(request, value: bytes):  # type: ignore[no-untyped-def]
    method, url, headers, body = request
    return (
        method,
        url,
        headers | {"Signature": f"renkei=:{base64.b64encode(value).decode()}:"},
        body,
    )


def test_the_identity_key_with_the_signature_that_fits_everything_is_refused_by_both():
    identity = Ed25519PublicKey.from_public_bytes(IDENTITY)
    for method, url, body in (("GET", URL, b""), ("POST", URL, BODY), ("PUT", URL + "?x=1", b"x")):
        forged = _with_signature(signed(method, url, body), EVERYTHING)
        assert both(*forged, resolve=Fixed(identity)) == ("sig.unknown_key", "sig.unknown_key")


@pytest.mark.parametrize("name", [*CANONICAL_SMALL, *SECOND_SMALL])
def test_a_small_order_key_is_unknown_to_both(name):
    weak = Ed25519PublicKey.from_public_bytes({**CANONICAL_SMALL, **SECOND_SMALL}[name])
    assert both(*signed(), resolve=Fixed(weak)) == ("sig.unknown_key", "sig.unknown_key")


def test_a_signature_with_a_small_order_r_is_invalid_to_both():
    request = signed(key=IdentityRSigner(bytes(range(32))))  # KEY's seed
    assert both(*request) == ("sig.invalid", "sig.invalid")


def test_a_signature_with_s_plus_l_is_invalid_to_both():
    request = signed()
    value = base64.b64decode(request[2]["Signature"][len("renkei=:") : -1])
    s = int.from_bytes(value[32:], "little") + ed25519.L
    forged = _with_signature(request, value[:32] + s.to_bytes(32, "little"))
    assert both(*forged) == ("sig.invalid", "sig.invalid")
