"""Who is calling: the check every terminal request passes before a view runs.

A terminal signs each request with its own Ed25519 key (RFC 9421, profile in
``common.httpsig``); the signature's key id is the terminal id.  The check,
in order:

1. too many failed requests for this key id from this client address lately
   → 429 with Retry-After (the count is looked up as soon as the key id is
   read, before any cryptography, so a flood of bad signatures costs little;
   per address, so a flood sent from elsewhere under a terminal's key id does
   not lock the terminal itself out);
2. the signature: present, well formed, by the terminal's key, covering
   method, authority, path, query and the body's Content-Digest, with a
   ``created`` time within ± ``clock_window`` of the server clock → else 401;
3. the terminal is not revoked → else 401 ``auth.revoked`` (said only to a
   caller that proved it holds the key);
4. the nonce was never accepted before for this terminal → else 401
   ``auth.replay``.

Every refusal after the key id is known counts as a failure for that key id
and the client address (``request.remote_addr``: behind a load balancer, set
it from the balancer's header with a proxy-fix middleware, or every terminal
shares one count).
A request that passes is recorded as the terminal's last contact, with the
agent version it reports (``Renkei-Agent-Version``) and its clock skew
(server now − signature ``created``) — to the minute, see
:func:`contact_changed` — and the :class:`Terminal` is put in
``flask.g.terminal`` for the view.  Views scope everything by
``g.terminal.lasdec``, which is how one municipality never sees another's
data.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import quote

from flask import g, request

from common.httpsig import COVERED, LABEL, SignatureError, verify_request
from common.statement import StatementError, public_key_from_text
from server.api import ApiError
from server.app import services
from server.enrollment import (
    Terminal,
    find_terminal,
    note_auth_failure,
    note_contact,
    recent_auth_failures,
    remember_nonce,
)

__all__ = [
    "ACCEPT_SIGNATURE",
    "AGENT_HEADER",
    "authenticate",
    "contact_changed",
    "request_url",
    "signature_error",
]

AGENT_HEADER = "Renkei-Agent-Version"
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


def authenticate() -> None:
    """``before_request`` of every terminal blueprint; raises :class:`ApiError` to refuse."""
    ctx = services()
    config = ctx.config
    now = ctx.now()
    seen: dict[str, object] = {}
    source = request.remote_addr or ""

    def resolve(key_id: str):
        seen["key_id"] = key_id
        failures = recent_auth_failures(
            ctx.storage, key_id, source=source, now=now, period=config.failed_auth_period
        )
        if failures >= config.failed_auth_limit:
            raise _TooManyFailures
        terminal = find_terminal(ctx.storage, key_id)
        if terminal is None:
            return None
        seen["terminal"] = terminal
        try:
            return public_key_from_text(terminal.public_key)
        except StatementError:
            return None

    def refuse(error: ApiError) -> ApiError:
        if "key_id" in seen:
            note_auth_failure(ctx.storage, str(seen["key_id"]), source=source, now=now)
        return error

    body = request.get_data(cache=True)  # 413 here when over the limit
    try:
        verified = verify_request(
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
    if terminal.revoked_at is not None:
        raise refuse(
            ApiError(
                401,
                "auth.revoked",
                "this terminal has been revoked; ask the ministry operator to enroll it again",
            )
        )
    keep = 2 * config.clock_window + 60
    if not remember_nonce(ctx.storage, terminal.terminal_id, verified.nonce, now=now, keep=keep):
        raise refuse(
            ApiError(
                401,
                "auth.replay",
                "this request (its nonce) was already received; sign every request anew",
            )
        )
    agent_version = request.headers.get(AGENT_HEADER) or None
    skew = round(now.timestamp() - verified.created, 3)
    if contact_changed(terminal, now=now, agent_version=agent_version, clock_skew=skew):
        note_contact(
            ctx.storage, terminal.terminal_id, now=now, agent_version=agent_version, clock_skew=skew
        )
    g.terminal = terminal
    request.environ[ENVIRON_TERMINAL] = terminal.terminal_id
