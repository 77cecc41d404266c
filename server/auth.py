"""Who is calling: the check every terminal request passes before a view runs.

A terminal signs each request with its own Ed25519 key (RFC 9421, profile in
``common.httpsig``); the signature's key id is the terminal id.  The check,
in order:

0. before anything is read or looked up: a ``Renkei-Agent-Version`` that is
   not 1–64 printable ASCII characters → 400 ``request.agent_version``
   (it is stored and shown to operators), and a body over the limit, with
   a Content-Length or chunked → 413 ``request.too_large``
   (``server.request_body``); neither is an authentication failure;
1. too many failed requests for this key id from this client address lately
   → 429 with Retry-After (the count is looked up as soon as the key id is
   read, before any cryptography, so a flood of bad signatures costs little;
   per address, so a flood sent from elsewhere under a terminal's key id does
   not lock the terminal itself out);
2. the signature: present, well formed, by the terminal's key, covering
   method, authority, path, query and the body's Content-Digest, with a
   ``created`` time within ± ``clock_window`` of the server clock → else 401
   (:func:`verify_profile`: exactly the form terminals sign, checked directly);
2a. the signed ``@authority`` is one this server answers to
   (``server.authorities``: the ``authorities`` setting, else the TLS
   certificate's names at the port of ``bind``) → else 401 ``sig.authority``
   naming the accepted ones.  Checked after the signature, so the code always
   means a real terminal's request addressed to another name: a misconfigured
   terminal, or a request captured on its way to another server and replayed
   here;
3. the terminal is not revoked → else 401 ``auth.revoked`` (said only to a
   caller that proved it holds the key);
4. the nonce was never accepted before for this terminal → else 401
   ``auth.replay``.

Every refusal after the key id is known counts as a failure for that key id
and the client address (``request.remote_addr``: behind a load balancer, set
it from the balancer's header with a proxy-fix middleware, or every terminal
shares one count) — when the key id names a terminal.  A key id that names
none costs no durable write at all: counting it would let anyone add a
database row per request by making up ids, and a lockout cannot slow a
flood of ids that are all new anyway.  A ``sig.authority`` refusal counts
too (it is the terminal's key, used for another server), except when this
server has no authority configured at all: that is the server's fault.
A request that passes is recorded as the terminal's last contact, with the
agent version it reports (``Renkei-Agent-Version``) and its clock skew
(server now − signature ``created``) — to the minute, see
:func:`contact_changed` — and the :class:`Terminal` is put in
``flask.g.terminal`` for the view.  Views scope everything by
``g.terminal.lasdec``, which is how one municipality never sees another's
data.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from urllib.parse import quote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flask import current_app, g, request

from common import ed25519
from common.httpsig import (
    ALG,
    COVERED,
    LABEL,
    SignatureError,
    VerifiedRequest,
    verify_request,
)
from common.statement import StatementError, public_key_from_text
from server.api import ApiError
from server.app import services
from server.authorities import AuthorityPin, canonical_authority, pin_for
from server.enrollment import Terminal, find_caller, note_auth_failure, record_request
from server.eventlog import event

__all__ = [
    "ACCEPT_SIGNATURE",
    "AGENT_HEADER",
    "AGENT_VERSION",
    "agent_version_header",
    "authenticate",
    "authority_refusal",
    "contact_changed",
    "request_url",
    "signature_error",
    "verify_profile",
]

AGENT_HEADER = "Renkei-Agent-Version"
#: What an agent version may be: 1-64 printable ASCII characters, no space (it is stored and
#: shown to operators; server.api.enroll takes the same in its body).
AGENT_VERSION = re.compile(r"[\x21-\x7e]{1,64}")
#: Where an app keeps its :class:`server.authorities.AuthorityPin` (computed at first use).
_PIN_EXTENSION = "renkei.authority_pin"
#: RFC 9421 §5.1: tells a client how to sign, on every 401 for a signature problem.
ACCEPT_SIGNATURE = (
    f"{LABEL}=(" + " ".join(f'"{name}"' for name in COVERED) + ');alg="ed25519";created;nonce'
)
#: "Last seen" is kept to this resolution (see :func:`contact_changed`).
CONTACT_INTERVAL = timedelta(seconds=60)
#: Clock skew changes smaller than this (seconds) are not written.
SKEW_RESOLUTION = 1.0
#: Where the access log finds the verified terminal id (``%({renkei.terminal}e)s``).
ENVIRON_TERMINAL = "renkei.terminal"


# The exact form of common.httpsig.sign_request's output (see verify_profile).  Every
# pattern admits only canonical Structured Field text, so the text received is the text
# signed: the "@signature-params" line of the signature base is the Signature-Input
# member as it came.
_INPUT = re.compile(
    re.escape(f"{LABEL}=")
    + "("
    + re.escape("(" + " ".join(f'"{name}"' for name in COVERED) + ")")
    + r";created=(0|[1-9][0-9]{0,14})"
    + r';keyid="([\x20\x21\x23-\x5b\x5d-\x7e]{1,256})"'  # printable, no quote or backslash
    + re.escape(f';alg="{ALG}"')
    + r';nonce="([A-Za-z0-9_-]{16,128})")'
)
_SIGNATURE = re.compile(re.escape(f"{LABEL}=:") + r"([A-Za-z0-9+/]{86}==):")  # 64 bytes
_DIGEST = re.compile(r"sha-256=:[A-Za-z0-9+/]{43}=:")
_METHOD = re.compile(r"[A-Z]{1,20}")
# RFC 3986 as the library parses a URL, minus user info, fragment and hosts of other than
# unreserved characters (a terminal's server address is a DNS name or an IP address).
_PCHAR = r"(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2})"
_URL = re.compile(
    r"(?P<scheme>https?)://(?P<host>[A-Za-z0-9._~-]+|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])"
    r"(?::(?P<port>[0-9]{1,5}))?"
    rf"(?P<path>/(?:{_PCHAR}|/)*)(?:\?(?P<query>(?:{_PCHAR}|[/?])*))?"
)
_DEFAULT_PORT = {"http": "80", "https": "443"}
_PROFILE_FIELDS = ("signature-input", "signature", "content-digest")


def _profile_form(
    method: str, url: str, headers: Mapping[str, str]
) -> tuple[str, int, str, bytes, bytes, str] | None:
    """(key id, created, nonce, signature, signature base, Content-Digest) when the request
    is exactly in the signer's form, else None.  Pure text work: no key, no clock."""
    fields: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in _PROFILE_FIELDS:
            if lower in fields:
                return None  # repeated field lines are combined by the library's rules
            fields[lower] = value.strip(" \t")
    if len(fields) != len(_PROFILE_FIELDS) or not _METHOD.fullmatch(method):
        return None
    signed = _INPUT.fullmatch(fields["signature-input"])
    value = _SIGNATURE.fullmatch(fields["signature"])
    digest = fields["content-digest"]
    parts = _URL.fullmatch(url)
    if signed is None or value is None or parts is None or not _DIGEST.fullmatch(digest):
        return None
    if parts["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(parts["ipv6"])
        except ValueError:
            return None
    authority, port = parts["host"].lower(), parts["port"]
    if port and port.lstrip("0") != _DEFAULT_PORT[parts["scheme"]]:
        authority = f"{authority}:{port}"
    params, created, key_id, nonce = signed.groups()
    values = (method, authority, parts["path"], "?" + (parts["query"] or ""), digest)
    base = "\n".join(f'"{name}": {item}' for name, item in zip(COVERED, values, strict=True))
    base += f'\n"@signature-params": {params}'
    signature = base64.b64decode(value[1], validate=True)
    return key_id, int(created), nonce, signature, base.encode("ascii"), digest


def verify_profile(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    resolve_key: Callable[[str], Ed25519PublicKey | None],
    now: int,
    window: int,
) -> VerifiedRequest:
    """:func:`common.httpsig.verify_request` for the form terminals send, at a third of the cost.

    Measured here, the general verifier (``http_message_signatures``:
    structured field parsing, component resolution, its own checks) took
    0.55 ms of CPU a request, of which the Ed25519 check itself was 0.2 ms;
    this takes 0.2 ms all told.  A terminal signs with
    :func:`common.httpsig.sign_request`, whose output has one fixed form:
    label, components in order, parameters ``created;keyid;alg;nonce`` in
    that order, ``Content-Digest`` in SHA-256 only, URL without user info or
    fragment.  A request in exactly that form is checked here directly: the
    signature base is built from the request, the Ed25519 signature checked
    with ``cryptography``, then the body digest, then the window — the
    library's order, with its codes.  Anything else goes to the general
    verifier, which says what is wrong (same codes as ever); what it would
    accept in another form is refused here (``sig.malformed``): the server
    takes only what terminals send.  tests/server/test_auth_profile.py checks
    both against each other on signatures made by the library.
    """
    form = _profile_form(method, url, headers)
    if form is None:
        verify_request(method, url, headers, body, resolve_key=resolve_key, now=now, window=window)
        raise SignatureError(
            "the signature verifies but is not in the form terminals sign "
            f"({ACCEPT_SIGNATURE}; Content-Digest sha-256; no user info or fragment in the URL)",
            code="sig.malformed",
        )
    key_id, created, nonce, signature, base, digest = form
    public_key = resolve_key(key_id)
    if public_key is None:
        raise SignatureError(f"no terminal key has id {key_id!r}", code="sig.unknown_key")
    if not isinstance(public_key, Ed25519PublicKey):
        raise SignatureError("the key for this id is not an Ed25519 key", code="sig.alg")
    try:  # a key nobody needs to hold (issue #18) is no key; verify_request's order and codes
        ed25519.check_public_key(public_key)
    except ed25519.Ed25519Error as error:
        raise SignatureError(
            f"the key of id {key_id!r} is not usable: {error.message}", code="sig.unknown_key"
        ) from None
    try:
        ed25519.check_signature(signature)
        public_key.verify(signature, base)
    except (ed25519.Ed25519Error, InvalidSignature):
        raise SignatureError(
            "signature does not verify: the request is not the one the key signed",
            code="sig.invalid",
        ) from None
    expected = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"
    if digest != expected:  # the one form _DIGEST admits, i.e. common.httpsig.content_digest's
        raise SignatureError(
            "Content-Digest: the body's SHA-256 differs from the signed digest", code="sig.digest"
        )
    if not now - window <= created <= now + window:
        raise SignatureError(
            f"created {created} is {created - now:+d} s from the server clock (window ±{window} s)",
            code="sig.stale",
        )
    return VerifiedRequest(key_id=key_id, created=created, nonce=nonce, covered=COVERED)


class _TooManyFailures(Exception):
    """Raised from inside the key resolver to stop verification early."""


def request_url() -> str:
    """The absolute URL as the client addressed it: scheme, its Host header, raw path and query.

    The raw request target (gunicorn's ``RAW_URI``) is used, not the decoded
    path, because the signature covers the path as sent.
    """
    environ = request.environ
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not target:
        query = environ.get("QUERY_STRING", "")
        target = quote(environ.get("PATH_INFO", "/")) + (f"?{query}" if query else "")
    if "://" in target:  # absolute-form request target: keep path and query only
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    return f"{request.scheme}://{request.host}{target}"


def contact_changed(
    terminal: Terminal, *, now: datetime, agent_version: str | None, clock_skew: float
) -> bool:
    """Whether this request tells the operator something the database does not know yet.

    The contact record (last seen, agent version, clock skew) is written when
    the last one is older than :data:`CONTACT_INTERVAL`, the agent version
    changed, or the skew moved by more than :data:`SKEW_RESOLUTION`.  Writing
    it on every request would add a synchronous database commit to each
    download and upload for a "last seen" nobody reads to the second.
    """
    if terminal.last_seen_at is None or now - terminal.last_seen_at >= CONTACT_INTERVAL:
        return True
    if agent_version is not None and agent_version[:64] != terminal.agent_version:
        return True
    return terminal.clock_skew is None or abs(clock_skew - terminal.clock_skew) > SKEW_RESOLUTION


def signature_error(error: SignatureError) -> ApiError:
    return ApiError(401, error.code, error.message, headers={"Accept-Signature": ACCEPT_SIGNATURE})


def agent_version_header() -> str | None:
    """The request's ``Renkei-Agent-Version`` (None when absent or empty); 400 when malformed.

    Checked before anything is read or stored: the value is written to the
    terminal's record and shown by ``renkei-server terminal list`` and the
    dashboard, so a control byte in it (a raw ``0x9B`` is a terminal's CSI)
    must never get that far.
    """
    value = request.headers.get(AGENT_HEADER)
    if not value:
        return None
    if not AGENT_VERSION.fullmatch(value):
        raise ApiError(
            400,
            "request.agent_version",
            f"{AGENT_HEADER} must be 1 to 64 printable ASCII characters without spaces "
            "(e.g. renkei-agent/1.2.0)",
        )
    return value


def _authority_pin() -> AuthorityPin:
    """This app's pin, computed once (it reads the TLS certificate) and logged when made."""
    pin = current_app.extensions.get(_PIN_EXTENSION)
    if pin is None:
        config = services().config
        pin = pin_for(config.authorities, tls_cert=config.tls_cert, bind=config.bind)
        current_app.extensions[_PIN_EXTENSION] = pin
        # Once per process; with no name, every signed request will be refused: say so loudly.
        level = logging.INFO if pin.accepted else logging.ERROR
        event("auth.authority_pin", level=level, code=pin.code, count=len(pin.accepted))
    return pin


def signed_authority(url: str) -> str | None:
    """The ``@authority`` a request for ``url`` signs, in the form the pin compares; None if
    the URL is not one the signature profile admits (then the signature was refused already)."""
    parts = _URL.fullmatch(url)
    if parts is None:
        return None
    port = int(parts["port"]) if parts["port"] else None
    try:
        return canonical_authority(parts["host"], port, scheme=parts["scheme"])
    except ValueError:  # a bracketed host that is not an IPv6 address
        return None


def authority_refusal(url: str) -> tuple[ApiError, bool] | None:
    """None when ``url``'s authority is one this server answers to; else (401 ``sig.authority``,
    whether it counts as the key's failure — not when the server has no authority at all)."""
    pin = _authority_pin()
    authority = signed_authority(url)
    if authority is not None and pin.allows(authority):
        return None
    return (
        ApiError(
            401,
            "sig.authority",
            f"the request is signed for {authority or url!r}, not a name of this server; "
            f"this server accepts requests signed for: {pin.describe()}",
            headers={"Accept-Signature": ACCEPT_SIGNATURE},
        ),
        bool(pin.accepted),
    )


def authenticate() -> None:
    """``before_request`` of every terminal blueprint; raises :class:`ApiError` to refuse."""
    ctx = services()
    config = ctx.config
    now = ctx.now()
    seen: dict[str, object] = {}
    source = request.remote_addr or ""

    def resolve(key_id: str):
        seen["key_id"] = key_id
        terminal, failures = find_caller(
            ctx.storage, key_id, source=source, now=now, period=config.failed_auth_period
        )
        if failures >= config.failed_auth_limit:
            raise _TooManyFailures
        if terminal is None:
            return None
        seen["terminal"] = terminal
        try:
            return public_key_from_text(terminal.public_key)
        except StatementError:
            return None

    def refuse(error: ApiError, *, count: bool = True) -> ApiError:
        if count and "terminal" in seen:  # an id that names no terminal costs no write
            note_auth_failure(ctx.storage, str(seen["key_id"]), source=source, now=now)
        return error

    agent_version = agent_version_header()  # 400 before anything is read or written
    body = request.get_data(cache=True)  # 413 here when over the limit, chunked too
    try:
        verified = verify_profile(
            request.method,
            request_url(),
            request.headers,
            body,
            resolve_key=resolve,
            now=int(now.timestamp()),
            window=config.clock_window,
        )
    except _TooManyFailures:
        raise ApiError(
            429,
            "auth.too_many_failures",
            f"too many failed requests for this key from this address in the last "
            f"{config.failed_auth_period} s; "
            "check the terminal's clock and key, then retry later",
            headers={"Retry-After": str(config.failed_auth_period)},
        ) from None
    except SignatureError as error:
        raise refuse(signature_error(error)) from None

    terminal = seen["terminal"]
    assert isinstance(terminal, Terminal)
    refusal = authority_refusal(request_url())
    if refusal is not None:
        error, counts = refusal
        raise refuse(error, count=counts)
    if terminal.revoked_at is not None:
        raise refuse(
            ApiError(
                401,
                "auth.revoked",
                "this terminal has been revoked; ask the ministry operator to enroll it again",
            )
        )
    skew = round(now.timestamp() - verified.created, 3)
    fresh = record_request(
        ctx.storage,
        terminal.terminal_id,
        verified.nonce,
        now=now,
        keep=2 * config.clock_window + 60,
        contact=contact_changed(terminal, now=now, agent_version=agent_version, clock_skew=skew),
        agent_version=agent_version,
        clock_skew=skew,
    )
    if not fresh:
        raise refuse(
            ApiError(
                401,
                "auth.replay",
                "this request (its nonce) was already received; sign every request anew",
            )
        )
    g.terminal = terminal
    request.environ[ENVIRON_TERMINAL] = terminal.terminal_id


#: Headers the front (server/front/) sets on its pre-check of an upload's request head.
ORIGINAL_METHOD = "X-Renkei-Original-Method"
ORIGINAL_URI = "X-Renkei-Original-Uri"


def check_head() -> None:
    """The checks of :func:`authenticate` that need no body, for the front's pre-check.

    nginx asks this before it reads an upload's body (``auth_request``): the
    request must be in the terminals' signed form, be signed for a name of
    this server, name a known terminal's key, be created within the clock
    window, and come from an address not locked out for that key.  Nothing
    here proves the caller holds the key, so nothing is written (a failure is
    counted by :func:`authenticate`, once the signature itself has been
    checked) and a revoked terminal passes here to hear "revoked" only after
    proving its key.  Raises :class:`ApiError`.
    """
    ctx = services()
    config = ctx.config
    now = ctx.now()
    target = request.headers.get(ORIGINAL_URI, "")
    method = request.headers.get(ORIGINAL_METHOD, "")
    if not target.startswith("/"):
        raise ApiError(400, "request.malformed", "the front's pre-check carries no request target")
    url = f"{request.scheme}://{request.host}{target}"
    if "signature-input" not in {name.lower() for name in request.headers.keys()}:
        raise signature_error(
            SignatureError("the request carries no Signature-Input", code="sig.missing")
        )
    form = _profile_form(method, url, request.headers)
    if form is None:
        raise signature_error(
            SignatureError(
                f"the signature is not in the form terminals sign ({ACCEPT_SIGNATURE})",
                code="sig.malformed",
            )
        )
    refusal = authority_refusal(url)
    if refusal is not None:
        raise refusal[0]
    key_id, created, *_ = form
    stamp = int(now.timestamp())
    if not stamp - config.clock_window <= created <= stamp + config.clock_window:
        raise signature_error(
            SignatureError(
                f"created {created} is {created - stamp:+d} s from the server clock "
                f"(window ±{config.clock_window} s)",
                code="sig.stale",
            )
        )
    terminal, failures = find_caller(
        ctx.storage,
        key_id,
        source=request.remote_addr or "",
        now=now,
        period=config.failed_auth_period,
    )
    if failures >= config.failed_auth_limit:
        raise ApiError(
            429,
            "auth.too_many_failures",
            f"too many failed requests for this key from this address in the last "
            f"{config.failed_auth_period} s; check the terminal's clock and key, then retry later",
            headers={"Retry-After": str(config.failed_auth_period)},
        )
    if terminal is None:
        raise signature_error(
            SignatureError(f"no terminal key has id {key_id!r}", code="sig.unknown_key")
        )
