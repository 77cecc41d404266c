"""Signed statements: a JSON object and an Ed25519 signature over its canonical bytes.

The server signs each day's batch manifest and each upload receipt with its
own key, so that years later anyone holding the server's public key can prove,
offline, which file the ministry delivered and what it accepted.  The
statement travels as ordinary JSON; the signature is over a canonical byte
form that any language can rebuild.

Format (version 1)
------------------

A signed statement is a JSON object with exactly two members::

    {
      "statement": { ...the body, a JSON object... },
      "signature": {
        "alg": "ed25519",
        "key_id": "ed25519:<16 lowercase hex digits>",
        "value": "<standard base64, with padding, of the 64-byte signature>"
      }
    }

To verify it:

1. Take ``statement`` and serialise it canonically (below) to UTF-8 bytes *C*.
2. Let *M* = ``b"renkei-statement-v1\\n"`` followed by *C*.  The fixed prefix
   keeps a statement signature from ever being valid for anything else the
   same key signs (update packages, other protocols).
3. Find the public key whose ``key_id`` matches, and check the Ed25519
   signature (RFC 8032, pure Ed25519) ``value`` over *M*.

``key_id`` is a fingerprint, not a secret and not a name: ``"ed25519:"``
followed by the first 16 lowercase hex digits of SHA-256 over the 32 raw
public key bytes.  Public keys are exchanged as standard base64 of those 32
raw bytes.

Keys and signatures are checked strictly (``common.ed25519``): a public key
must be the canonical encoding of a point of prime order L, written in its
one canonical base64 text; a signature's S must be below L and its R must
not be a point of small order.  Without that, the identity point would be a
"key" for which one fixed signature fits every statement.

Canonical form: the JSON Canonicalization Scheme (RFC 8785) restricted to
values on which every implementation agrees —

* objects with string keys only; members ordered by their keys compared as
  sequences of UTF-16 code units (RFC 8785 §3.2.3); no duplicate keys;
* no whitespace; ``,`` and ``:`` as separators;
* strings as UTF-8, escaping only ``"``, ``\\``, and control characters below
  U+0020 (``\\b \\t \\n \\f \\r`` in short form, others as ``\\u00xx`` lowercase);
  unpaired surrogates are refused;
* numbers are integers only, in the range ±(2**53 − 1), written in decimal
  without leading zeros or ``+``: floats (and NaN, Infinity) are refused,
  because their decimal spelling differs between languages;
* ``true``, ``false``, ``null`` and arrays as usual.

Any RFC 8785 library produces the same bytes for such a value.

This module is pure: it reads no files and no clock.  Time stamps, file
hashes and names are whatever the caller puts in the body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from common import ed25519

__all__ = [
    "ALG",
    "CONTEXT",
    "StatementError",
    "canonical_bytes",
    "key_id",
    "public_key_from_text",
    "public_key_to_text",
    "sign",
    "verify",
]

ALG = "ed25519"
CONTEXT = b"renkei-statement-v1\n"
MAX_SAFE_INTEGER = 2**53 - 1
_KEY_ID_PREFIX = "ed25519:"


class StatementError(ValueError):
    """A statement could not be signed or verified.

    ``code`` is stable: ``statement.shape`` (not a signed statement, or a body
    that has no canonical form; a public key text that is no usable key),
    ``statement.unknown_key`` (no trusted key has this key id, or the one
    filed under it is not usable), ``statement.signature`` (the signature
    does not match, or is of a form RFC 8032 or ``common.ed25519`` refuses).
    """

    def __init__(self, message: str, *, code: str):
        super().__init__(message)
        self.message = message
        self.code = code


def _canonical_value(value: Any, where: str) -> Any:
    """Return a copy of ``value`` with dict members in RFC 8785 order, or raise ValueError."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise ValueError(f"{where}: integer {value} is outside ±(2**53 - 1)")
        return int(value)
    if isinstance(value, float):
        raise ValueError(f"{where}: floats have no canonical form; use an integer or a string")
    if isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise ValueError(f"{where}: object key {key!r} is not a string")
        ordered = sorted(value, key=_utf16_order)
        return {key: _canonical_value(value[key], f"{where}.{key}") for key in ordered}
    if isinstance(value, list | tuple):
        return [_canonical_value(item, f"{where}[{index}]") for index, item in enumerate(value)]
    raise ValueError(f"{where}: {type(value).__name__} is not a JSON value")


def _utf16_order(key: str) -> bytes:
    try:
        return key.encode("utf-16-be")
    except UnicodeEncodeError as error:
        raise ValueError(f"object key {key!r} contains an unpaired surrogate") from error


def canonical_bytes(body: Mapping[str, Any]) -> bytes:
    """The canonical UTF-8 bytes of ``body`` (see the module docstring).

    Raises ValueError for floats, NaN, non-string keys, out-of-range integers,
    unpaired surrogates and anything that is not a JSON value.
    """
    if not isinstance(body, Mapping):
        raise ValueError("a statement body must be a JSON object")
    ordered = _canonical_value(body, "$")
    text = json.dumps(ordered, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError("a string contains an unpaired surrogate") from error


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """``"ed25519:"`` + the first 16 hex digits of SHA-256(raw public key): a fingerprint."""
    return _KEY_ID_PREFIX + hashlib.sha256(_raw(public_key)).hexdigest()[:16]


def public_key_to_text(key: Ed25519PublicKey) -> str:
    """Standard base64 of the 32 raw public key bytes."""
    return base64.b64encode(_raw(key)).decode("ascii")


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """Inverse of :func:`public_key_to_text`; raises StatementError (``statement.shape``).

    Only the one text :func:`public_key_to_text` writes is taken: base64 whose
    unused low bits are set decodes to the same bytes, so a second text for one
    key would pass a comparison of texts (a duplicate check, a pinned key).
    The bytes must be a usable key (:func:`common.ed25519.check_public_key`:
    canonical, of prime order; no point of small or mixed order).
    """
    if not isinstance(text, str):
        raise StatementError("public key must be text (base64)", code="statement.shape")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError) as error:
        raise StatementError("public key is not base64", code="statement.shape") from error
    if len(raw) != 32:
        raise StatementError("an Ed25519 public key has 32 bytes", code="statement.shape")
    if base64.b64encode(raw).decode("ascii") != text:
        raise StatementError(
            "public key is not in canonical base64 (it is another text for the same 32 bytes)",
            code="statement.shape",
        )
    try:
        ed25519.check_public_key(raw)
    except ed25519.Ed25519Error as error:
        raise StatementError(error.message, code="statement.shape") from None
    return Ed25519PublicKey.from_public_bytes(raw)


def sign(body: Mapping[str, Any], private_key: Ed25519PrivateKey) -> dict:
    """Sign ``body``; return ``{"statement": copy_of_body, "signature": {...}}``.

    The returned statement is a fresh copy of exactly what was signed, so later
    changes to the caller's ``body`` cannot make the pair disagree.  Raises
    ValueError when the body has no canonical form.
    """
    message = canonical_bytes(body)
    return {
        "statement": json.loads(message),
        "signature": {
            "alg": ALG,
            "key_id": key_id(private_key.public_key()),
            "value": base64.b64encode(private_key.sign(CONTEXT + message)).decode("ascii"),
        },
    }


def _shape(message: str) -> StatementError:
    return StatementError(message, code="statement.shape")


def verify(
    signed: Mapping[str, Any],
    public_keys: Mapping[str, Ed25519PublicKey] | Ed25519PublicKey,
) -> dict:
    """Check a signed statement; return a copy of its body.

    ``public_keys`` maps trusted key ids to keys (old server keys stay in the
    map after a key rollover so old receipts still verify), or is one key.
    Raises StatementError with ``code`` ``statement.shape``,
    ``statement.unknown_key`` or ``statement.signature``.
    """
    if not isinstance(signed, Mapping) or set(signed) != {"statement", "signature"}:
        raise _shape('a signed statement has exactly the members "statement" and "signature"')
    body, signature = signed["statement"], signed["signature"]
    if not isinstance(body, Mapping):
        raise _shape('"statement" must be a JSON object')
    if not isinstance(signature, Mapping) or set(signature) != {"alg", "key_id", "value"}:
        raise _shape('"signature" has exactly the members "alg", "key_id" and "value"')
    if signature["alg"] != ALG:
        raise _shape(f'signature algorithm {signature["alg"]!r} is not "{ALG}"')
    wanted = signature["key_id"]
    if not isinstance(wanted, str) or not isinstance(signature["value"], str):
        raise _shape('"key_id" and "value" must be strings')
    try:
        value = base64.b64decode(signature["value"], validate=True)
    except (binascii.Error, ValueError) as error:
        raise _shape("signature value is not base64") from error
    if len(value) != 64:
        raise _shape("an Ed25519 signature has 64 bytes")
    try:
        message = canonical_bytes(body)
    except ValueError as error:
        raise _shape(f"statement has no canonical form: {error}") from error

    if isinstance(public_keys, Ed25519PublicKey):
        public_key = public_keys if key_id(public_keys) == wanted else None
    else:
        public_key = public_keys.get(wanted)
    if public_key is None:
        raise StatementError(f"no trusted key has id {wanted!r}", code="statement.unknown_key")
    if key_id(public_key) != wanted:
        # A mis-filed trust map must not make one key answer for another's id.
        raise StatementError(
            f"trusted key filed under {wanted!r} has another id", code="statement.unknown_key"
        )
    try:
        ed25519.check_public_key(public_key)
    except ed25519.Ed25519Error as error:
        raise StatementError(
            f"trusted key {wanted!r} is not usable: {error.message}", code="statement.unknown_key"
        ) from None
    try:
        ed25519.check_signature(value)
        public_key.verify(value, CONTEXT + message)
    except (ed25519.Ed25519Error, InvalidSignature) as error:
        raise StatementError(
            "signature does not match the statement", code="statement.signature"
        ) from error
    return json.loads(message)
