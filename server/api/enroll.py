"""POST /api/v1/enroll — an appliance becomes a terminal of the token's municipality.

The field technician types the one-time token the operator issued; the
appliance sends it with the public half of the key it has just made.  The
request is signed (RFC 9421, same profile as every other request) with that
very key, under the fixed key id ``"enroll"``: the server verifies it with the
public key from the body, which proves the appliance holds the private key,
so nobody can enroll a key they do not have — provided it is a real key: for
a point of small order (the identity, ``01 00 … 00``) one fixed signature
verifies everything, so the key is checked first (``common.ed25519``, through
``public_key_from_text``: ``400 key.invalid``).  The answer names the terminal
and carries the server's statement key, which the appliance pins to check
every manifest and receipt from then on.

There is no failed-auth lockout here (all enrollments share one key id, so a
lockout would let anyone block every installation); a token has 100 random
bits, expires, and is used up by the first enrollment that presents it.
"""

from __future__ import annotations

import re

from flask import Blueprint, request

from common.httpsig import SignatureError, verify_request
from common.statement import StatementError, key_id, public_key_from_text, public_key_to_text
from server.api import API_PREFIX, ApiError, json_body, text_field
from server.app import services
from server.auth import (
    ENVIRON_TERMINAL,
    agent_version_header,
    authority_refusal,
    request_url,
    signature_error,
)
from server.enrollment import enroll, note_contact
from server.municipalities import get_municipality

bp = Blueprint("enroll", __name__, url_prefix=API_PREFIX)

#: The key id of an enrollment request's signature (the terminal has no id yet).
ENROLL_KEY_ID = "enroll"
_AGENT_VERSION = re.compile(r"[\x21-\x7e]{1,64}")


@bp.post("/enroll")
def enroll_terminal():
    ctx = services()
    now = ctx.now()
    body = json_body("token", "public_key")
    token = text_field(body, "token", max_length=100)
    key_text = text_field(body, "public_key", max_length=100)
    agent_version = (
        text_field(body, "agent_version", max_length=64, pattern=_AGENT_VERSION, optional=True)
        or agent_version_header()
    )
    try:  # before the signature: a key of small order would make any signature "verify"
        public_key = public_key_from_text(key_text)
    except StatementError as error:
        raise ApiError(
            400,
            "key.invalid",
            f"public_key is refused ({error.message}): it must be the base64 of a raw 32-byte "
            "Ed25519 public key made on the appliance",
        ) from None

    try:
        verified = verify_request(
            request.method,
            request_url(),
            request.headers,
            request.get_data(cache=True),
            resolve_key=lambda kid: public_key if kid == ENROLL_KEY_ID else None,
            now=int(now.timestamp()),
            window=ctx.config.clock_window,
        )
    except SignatureError as error:
        raise signature_error(error) from None
    refusal = authority_refusal(request_url())  # signed for this server, not another
    if refusal is not None:
        raise refusal[0]

    terminal = enroll(ctx.storage, token, key_text, now=now, agent_version=agent_version)
    note_contact(
        ctx.storage,
        terminal.terminal_id,
        now=now,
        agent_version=agent_version,
        clock_skew=round(now.timestamp() - verified.created, 3),
    )
    municipality = get_municipality(ctx.storage, terminal.lasdec)
    server_key = ctx.signing_key.public_key()
    request.environ[ENVIRON_TERMINAL] = terminal.terminal_id
    return {
        "terminal_id": terminal.terminal_id,
        "lasdec": terminal.lasdec,
        "municipality": municipality.full_name if municipality else None,
        "server_key": {"key_id": key_id(server_key), "public_key": public_key_to_text(server_key)},
    }, 201
