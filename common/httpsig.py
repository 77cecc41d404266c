"""HTTP Message Signatures (RFC 9421) with Ed25519 and Content-Digest (RFC 9530).

Every request a terminal makes is signed with the terminal's own Ed25519 key,
which is made on the appliance at enrollment and never leaves it.  TLS proves
the server to the terminal; this signature proves the terminal to the server,
request by request, and binds the body to it, so a captured request cannot be
changed, pointed at another path or replayed after the window.

The profile (``renkei``):

* label ``renkei``; exactly one signature per request;
* covered components, in this order: ``@method``, ``@authority``, ``@path``,
  ``@query``, ``content-digest`` (see :data:`COVERED`).  A body is always
  digested, the empty body of a GET too, so one rule fits every request;
* parameters ``created`` (Unix seconds), ``keyid``, ``alg="ed25519"`` and
  ``nonce`` (128 random bits, URL-safe base64).  ``created`` must lie within
  ``now ± window`` of the verifier's clock; the nonce lets the server refuse
  a request it has seen before (it keeps the nonces, not this module);
* ``Content-Digest: sha-256=:<base64>:`` of the exact body bytes (RFC 9530).

The signature base is built by the maintained ``http-message-signatures``
library; this module fixes the profile and turns every refusal into a
:class:`SignatureError` with a stable ``code``.  Checks run in this order:
headers present (``sig.missing``), well formed (``sig.malformed``),
algorithm (``sig.alg``), key known and usable (``sig.unknown_key``; a key
``common.ed25519`` refuses, such as a point of small order, is no key),
signature valid (``sig.invalid``; its form checked by ``common.ed25519``
first), profile components covered (``sig.components``), nonce present
(``sig.malformed``), body digest (``sig.digest``), time window
(``sig.stale``).  The window is checked last so that a ``sig.stale`` always
comes from a request the terminal really made, unchanged, with its clock
off: the operator wants to see those, not an attacker's noise.

Framework-neutral and pure: plain method, URL, header mapping and body bytes
in, headers or a result out.  The verifier's clock (``now``) is an argument.
"""

from __future__ import annotations

import datetime
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import http_sf
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from http_message_signatures import (
    ContentDigest,
    HTTPMessageSignaturesException,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    InvalidSignature,
    algorithms,
)
from http_message_signatures.structures import get_header_fields

from common import ed25519

__all__ = [
    "ALG",
    "COVERED",
    "LABEL",
    "SignatureError",
    "VerifiedRequest",
    "content_digest",
    "new_nonce",
    "sign_request",
    "verify_request",
]

LABEL = "renkei"
ALG = "ed25519"
COVERED = ("@method", "@authority", "@path", "@query", "content-digest")
DEFAULT_WINDOW = 300

_NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_PARAMETERS = frozenset({"alg", "created", "expires", "keyid", "nonce", "tag"})
_MAX_KEY_ID = 256
_SIGNATURE_HEADERS = frozenset({"signature", "signature-input", "content-digest"})


class SignatureError(ValueError):
    """A request signature was refused (or could not be made).

    ``code`` is stable, for the server's answers and logs: ``sig.missing``,
    ``sig.malformed``, ``sig.alg``, ``sig.unknown_key``, ``sig.invalid``,
    ``sig.components``, ``sig.stale``, ``sig.digest``.
    """

    def __init__(self, message: str, *, code: str):
        super().__init__(message)
        self.message = message
        self.code = code


@dataclass(frozen=True)
class VerifiedRequest:
    """What a verified signature vouches for; ``nonce`` is for the server's replay check."""

    key_id: str
    created: int
    nonce: str
    covered: tuple[str, ...]


@dataclass
class _Request:
    """The message interface the library resolves components from."""

    method: str
    url: str
    headers: object


class _OneKey(HTTPSignatureKeyResolver):
    """The key the caller already resolved (its own lookup decides unknown ids)."""

    def __init__(self, public_key: Ed25519PublicKey):
        self._public_key = public_key

    def resolve_public_key(self, key_id: str):
        return self._public_key

    def resolve_private_key(self, key_id: str):
        raise KeyError(key_id)  # verification only; signing goes through prepare/apply


class _Verifier(HTTPMessageVerifier):
    """The library's verifier minus its clock: the window is checked here, against ``now``."""

    def validate_created_and_expires(self, sig_input, max_age=None):
        return None


def content_digest(body: bytes) -> str:
    """``sha-256=:<base64>:`` of ``body`` (RFC 9530 Content-Digest)."""
    return ContentDigest.create(bytes(body))


def new_nonce() -> str:
    """128 random bits, URL-safe base64 without padding (22 characters)."""
    return secrets.token_urlsafe(16)


def _sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    *,
    covered: Sequence[str],
    key_id: str,
    private_key: Ed25519PrivateKey,
    created: int,
    nonce: str | None,
    include_alg: bool = True,
    label: str = LABEL,
) -> tuple[dict[str, str], bytes]:
    """Sign with any component list; return the signed headers and the signature base.

    :func:`sign_request` is this with the renkei profile; the RFC test vector
    uses it with the RFC's own components.
    """
    message = _Request(method=method, url=url, headers=dict(headers))
    # prepare/apply: the library builds the base, the key signs it; no resolver needed.
    signer = HTTPMessageSigner(signature_algorithm=algorithms.ED25519)
    try:
        prepared = signer.prepare(
            message,
            key_id=key_id,
            created=datetime.datetime.fromtimestamp(created, tz=datetime.UTC),
            nonce=nonce,
            label=label,
            include_alg=include_alg,
            covered_component_ids=tuple(covered),
            use_existing_digest="content-digest" in get_header_fields(message.headers),
        )
        signer.apply(message, prepared, private_key.sign(prepared.signature_base))
    except HTTPMessageSignaturesException as error:
        raise SignatureError(f"cannot sign this request: {error}", code="sig.malformed") from error
    return dict(message.headers), prepared.signature_base


def sign_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    key_id: str,
    private_key: Ed25519PrivateKey,
    created: int,
    nonce: str,
) -> dict[str, str]:
    """Return the headers to add: ``Content-Digest``, ``Signature-Input``, ``Signature``.

    ``url`` is the absolute URL as sent (``https://host:port/api/v1/...?query``),
    ``method`` upper case, ``body`` the exact bytes sent (``b""`` for a GET).
    ``created`` comes from the caller's clock, ``nonce`` from :func:`new_nonce`.
    Any Content-Digest or signature fields already in ``headers`` are replaced.
    """
    base = {k: v for k, v in headers.items() if k.lower() not in _SIGNATURE_HEADERS}
    base["Content-Digest"] = content_digest(body)
    signed, _ = _sign(
        method,
        url,
        base,
        covered=COVERED,
        key_id=key_id,
        private_key=private_key,
        created=created,
        nonce=nonce,
    )
    return {name: signed[name] for name in ("Content-Digest", "Signature-Input", "Signature")}


def _parse_dictionary(name: str, value: str) -> dict:
    def reject_duplicate(key: str, context: str) -> None:
        if context == "dictionary":
            raise SignatureError(f"{name} repeats the label {key!r}", code="sig.malformed")

    try:
        parsed = http_sf.parse(
            value.encode("ascii"), tltype="dictionary", on_duplicate_key=reject_duplicate
        )
    except (ValueError, UnicodeEncodeError) as error:
        raise SignatureError(
            f"{name} is not a structured dictionary", code="sig.malformed"
        ) from error
    return parsed


def _component_name(bare: object, params: Mapping) -> str:
    return str(bare) if not params else http_sf.ser((bare, dict(params)))


def _parse_signature(fields: Mapping[str, str]) -> tuple[str, list[str], dict, bytes]:
    """The single signature in the message: label, covered names, parameters, value."""
    for name in ("Signature-Input", "Signature"):
        if name not in fields:
            raise SignatureError(f"{name} header is missing", code="sig.missing")
    inputs = _parse_dictionary("Signature-Input", fields["Signature-Input"])
    values = _parse_dictionary("Signature", fields["Signature"])
    if len(inputs) != 1 or set(inputs) != set(values):
        raise SignatureError(
            "exactly one signature, with the same label in Signature-Input and Signature, is expected",
            code="sig.malformed",
        )
    (label,) = inputs
    members, params = inputs[label]
    value, _ = values[label]
    if not isinstance(members, list) or not all(isinstance(bare, str) for bare, _ in members):
        raise SignatureError(
            "Signature-Input must be a list of component names", code="sig.malformed"
        )
    if not isinstance(value, bytes) or not value:
        raise SignatureError("Signature must be a byte sequence", code="sig.malformed")
    unknown = set(params) - _PARAMETERS
    if unknown:
        raise SignatureError(
            f"unknown signature parameters {sorted(unknown)}", code="sig.malformed"
        )
    if type(params.get("created")) is not int:
        raise SignatureError("created must be an integer", code="sig.malformed")
    if "expires" in params and type(params["expires"]) is not int:
        raise SignatureError("expires must be an integer", code="sig.malformed")
    keyid = params.get("keyid")
    if not isinstance(keyid, str) or not 0 < len(keyid) <= _MAX_KEY_ID:
        raise SignatureError("keyid must be a non-empty string", code="sig.malformed")
    nonce = params.get("nonce")
    if nonce is not None and (not isinstance(nonce, str) or not _NONCE.fullmatch(nonce)):
        raise SignatureError(
            "nonce must be 16-128 URL-safe base64 characters", code="sig.malformed"
        )
    if "alg" in params and params["alg"] != ALG:
        raise SignatureError(f"algorithm {params['alg']!r} is not {ALG}", code="sig.alg")
    covered = [_component_name(bare, member_params) for bare, member_params in members]
    return label, covered, dict(params), value


def verify_request(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    resolve_key: Callable[[str], Ed25519PublicKey | None],
    now: int,
    window: int = DEFAULT_WINDOW,
) -> VerifiedRequest:
    """Check a terminal's request; return who signed it, when, and its nonce.

    ``url`` is the absolute URL the client addressed (scheme, the ``Host`` it
    sent, path and query exactly as received); ``headers`` any mapping with
    ``items()`` (repeated fields are joined, as HTTP does).  ``resolve_key``
    returns the terminal's public key for a key id, or None when unknown or
    revoked.  Raises :class:`SignatureError`; the caller still has to refuse
    a nonce it has seen within the window.
    """
    fields = get_header_fields(headers)
    label, covered, params, value = _parse_signature(fields)
    if "content-digest" not in fields:
        raise SignatureError("Content-Digest header is missing", code="sig.missing")
    public_key = resolve_key(params["keyid"])
    if public_key is None:
        raise SignatureError(f"no terminal key has id {params['keyid']!r}", code="sig.unknown_key")
    if not isinstance(public_key, Ed25519PublicKey):
        raise SignatureError("the key for this id is not an Ed25519 key", code="sig.alg")
    try:
        ed25519.check_public_key(public_key)
    except ed25519.Ed25519Error as error:
        raise SignatureError(
            f"the key of id {params['keyid']!r} is not usable: {error.message}",
            code="sig.unknown_key",
        ) from None
    try:
        ed25519.check_signature(value)
    except ed25519.Ed25519Error as error:
        raise SignatureError(
            f"signature does not verify: {error.message}", code="sig.invalid"
        ) from None

    verifier = _Verifier(signature_algorithm=algorithms.ED25519, key_resolver=_OneKey(public_key))
    try:
        results = verifier.verify(_Request(method=method, url=url, headers=headers), max_age=None)
    except HTTPMessageSignaturesException as error:
        raise SignatureError(f"signature does not verify: {error}", code="sig.invalid") from error
    if len(results) != 1 or results[0].label != label:
        raise SignatureError("exactly one signature is expected", code="sig.malformed")

    missing = [name for name in COVERED if name not in covered]
    if missing:
        raise SignatureError(f"signature does not cover {missing}", code="sig.components")
    if "nonce" not in params:
        raise SignatureError(
            "signature has no nonce, so replay cannot be refused", code="sig.malformed"
        )

    digest = results[0].covered_components['"content-digest"']
    try:
        ContentDigest.verify(digest, bytes(body))
    except InvalidSignature as error:
        raise SignatureError(f"Content-Digest: {error}", code="sig.digest") from error

    created = params["created"]
    if not now - window <= created <= now + window:
        raise SignatureError(
            f"created {created} is {created - now:+d} s from the server clock (window ±{window} s)",
            code="sig.stale",
        )
    if "expires" in params and params["expires"] < now:
        raise SignatureError(f"signature expired at {params['expires']}", code="sig.stale")

    return VerifiedRequest(
        key_id=params["keyid"], created=created, nonce=params["nonce"], covered=tuple(covered)
    )
