"""Ed25519 public keys and signatures: the checks the verifier itself does not make.

``cryptography`` (OpenSSL) verifies Ed25519 signatures cofactorless and
correctly for honest keys, but it takes any 32 bytes that decode to a curve
point as a public key.  A point of small order breaks the scheme: for the
identity point (``01 00 … 00``) the signature ``R = identity, S = 0`` makes
the check ``[S]B = R + [k]A`` hold for every message, so whoever enrolls such
a "key" holds no secret and anyone can sign as it.  Points of mixed order
(a proper key plus a small-order component) and second encodings of one point
are refused too: an honest implementation never makes them, and they are
exactly what lets two verifiers, or a verifier and a duplicate check,
disagree (Chalkias, Garillot, Nikolaenko, "Taming the many EdDSAs", 2020).

:func:`check_public_key` — RFC 8032 §5.1.3 decoding, made strict:

* 32 bytes;
* canonical: ``y < p`` (§5.1.3 step 1) and no sign bit on ``x = 0``
  (step 4: "If x = 0, and x_0 = 1, decoding fails");
* on the curve (§5.1.3 steps 2–3: ``x²`` must have a square root);
* of order exactly ``L``: ``[L]A`` is the identity and ``A`` is not of small
  order (``[8]A`` is not the identity).  ``L`` is prime, so this refuses
  the eight small-order points and every mixed-order point alike.

:func:`check_signature` — RFC 8032 §5.1.7 step 1, made strict, before the
signature goes to ``cryptography`` for the equation itself:

* 64 bytes;
* ``R`` canonical (``y < p``) and not one of the eight small-order points
  (decided by ``y`` alone, see :data:`_SMALL_ORDER_Y`; both signs);
* ``S < L`` (§5.1.7: "If any of the decodings fail (including S being out
  of range), the signature is invalid").

``R`` is not decoded here (its square root is the costly step and this
check runs on every request): OpenSSL recomputes ``R' = [S]B − [k]A`` and
accepts only when the canonical encoding of ``R'`` equals the 32 bytes
sent, so an ``R`` that is not on the curve, or not canonical, can never
pass.  tests/common/test_ed25519.py shows it with Wycheproof's vectors on R
and with an R that decodes to no point at all.

Everything here is public data (keys and signatures), so nothing needs to be
constant-time and nothing is.  Pure Python, no I/O.  A key check costs about
a millisecond (the ``[L]A`` multiplication), so its verdict is cached per key;
a signature check is a few comparisons.
"""

from __future__ import annotations

import functools

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "L",
    "P",
    "Ed25519Error",
    "check_public_key",
    "check_signature",
]

#: The field prime (RFC 8032 §5.1).
P = 2**255 - 19
#: The prime order of the base point (RFC 8032 §5.1).
L = 2**252 + 27742317777372353535851937790883648493
#: The curve constant d = −121665/121666 (RFC 8032 §5.1); the curve is −x² + y² = 1 + d·x²·y².
D = -121665 * pow(121666, P - 2, P) % P
#: A square root of −1 (RFC 8032 §5.1.3 step 3).
SQRT_M1 = pow(2, (P - 1) // 4, P)

_Y_MASK = (1 << 255) - 1
_IDENTITY = (0, 1, 1, 0)  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, x·y = T/Z

# Stable reasons, for logs and tests.
LENGTH = "length"
NON_CANONICAL = "non_canonical"
NOT_ON_CURVE = "not_on_curve"
SMALL_ORDER = "small_order"
MIXED_ORDER = "mixed_order"
S_NOT_REDUCED = "s_not_reduced"


class Ed25519Error(ValueError):
    """A public key or signature that must not be used.

    ``reason`` is stable: ``length``, ``non_canonical``, ``not_on_curve``,
    ``small_order``, ``mixed_order`` (keys: a small-order component on top of
    a proper key), ``s_not_reduced`` (signatures: ``S ≥ L``).
    """

    def __init__(self, message: str, *, reason: str):
        super().__init__(message)
        self.message = message
        self.reason = reason


def _sqrt(a: int) -> int | None:
    """A square root of ``a`` mod p, or None (RFC 8032 §5.1.3 step 3, with v = 1)."""
    x = pow(a, (P + 3) // 8, P)
    if x * x % P == a % P:
        return x
    x = x * SQRT_M1 % P
    return x if x * x % P == a % P else None


def _order8_y() -> tuple[int, int]:
    """The two ``y`` of the four points of order 8.

    Doubling a point of order 8 gives one of order 4, ``(±√−1, 0)``.  On this
    curve ``y(2Q) = (y² + x²)/(2 + x² − y²)``, so ``x² = −y²``, and the curve
    equation becomes ``d·y⁴ + 2·y² − 1 = 0``: ``y² = (−1 ± √(1 + d))/d``.
    """
    root = _sqrt(1 + D)
    assert root is not None
    inverse_d = pow(D, P - 2, P)
    for y2 in ((-1 + root) * inverse_d % P, (-1 - root) * inverse_d % P):
        y = _sqrt(y2)
        if y is not None:
            return y, P - y
    raise AssertionError("edwards25519 has points of order 8")


#: ``y`` of the eight points of small order: 1 (the identity), p − 1 (order 2),
#: 0 (the two of order 4) and the two ``y`` of the four of order 8.  Each ``y``
#: with its two signs of ``x`` names both points (±x, y), both of small order.
_SMALL_ORDER_Y = frozenset({1, P - 1, 0, *_order8_y()})


def _decode(raw: bytes) -> tuple[int, int, int, int]:
    """RFC 8032 §5.1.3 point decoding, strict; extended coordinates, or raise."""
    y = int.from_bytes(raw, "little") & _Y_MASK
    sign = raw[31] >> 7
    if y >= P:
        raise Ed25519Error("y is not below p: not a canonical encoding", reason=NON_CANONICAL)
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    # x = u·v³·(u·v⁷)^((p−5)/8), then fix it with √−1 or give up (§5.1.3 step 3).
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    vxx = v * x * x % P
    if vxx == (-u) % P:
        x = x * SQRT_M1 % P
    elif vxx != u:
        raise Ed25519Error("no x satisfies the curve equation for this y", reason=NOT_ON_CURVE)
    if x == 0 and sign:
        raise Ed25519Error(
            "x = 0 with the sign bit set: not a canonical encoding", reason=NON_CANONICAL
        )
    if x & 1 != sign:
        x = P - x
    return x, y, 1, x * y % P


def _add(p: tuple[int, int, int, int], q: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Point addition in extended coordinates (RFC 8032 §5.1.4); complete, so doubles too."""
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * t1 * t2 * D % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % P, g * h % P, f * g % P, e * h % P


def _double(p: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Point doubling in extended coordinates (RFC 8032 §5.1.4)."""
    x1, y1, z1, _ = p
    a = x1 * x1 % P
    b = y1 * y1 % P
    c = 2 * z1 * z1 % P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1)
    g = a - b
    f = c + g
    return e * f % P, g * h % P, f * g % P, e * h % P


def _multiply(scalar: int, point: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    result = _IDENTITY
    for bit in bin(scalar)[2:]:
        result = _double(result)
        if bit == "1":
            result = _add(result, point)
    return result


def _is_identity(point: tuple[int, int, int, int]) -> bool:
    x, y, z, _ = point
    return x % P == 0 and (y - z) % P == 0


@functools.lru_cache(maxsize=8192)
def _key_problem(raw: bytes) -> tuple[str, str] | None:
    """``(reason, message)`` when ``raw`` is no public key, else None.

    Cached: the server checks the same terminal keys on every request.
    """
    try:
        point = _decode(raw)
    except Ed25519Error as error:
        return error.reason, error.message
    if _is_identity(_double(_double(_double(point)))):
        return SMALL_ORDER, "a point of small order: signatures need no private key"
    if not _is_identity(_multiply(L, point)):
        return MIXED_ORDER, "a point of mixed order, outside the prime-order subgroup"
    return None


def check_public_key(key: bytes | Ed25519PublicKey) -> bytes:
    """Refuse anything but the canonical encoding of a point of order L; return the 32 bytes.

    ``key`` is the raw 32-byte encoding or a ``cryptography`` key object
    (which keeps whatever bytes it was made from).  Raises
    :class:`Ed25519Error`.
    """
    if isinstance(key, Ed25519PublicKey):
        key = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    if not isinstance(key, bytes | bytearray | memoryview) or len(key) != 32:
        raise Ed25519Error("an Ed25519 public key has 32 bytes", reason=LENGTH)
    raw = bytes(key)
    problem = _key_problem(raw)
    if problem is not None:
        reason, message = problem
        raise Ed25519Error(f"not a usable Ed25519 public key: {message}", reason=reason)
    return raw


def check_signature(signature: bytes) -> None:
    """Refuse a signature RFC 8032 §5.1.7 calls undecodable, or whose R is of small order.

    Raises :class:`Ed25519Error`.  The equation is then checked by
    ``cryptography`` (see the module docstring for why ``R`` is not decoded).
    """
    if not isinstance(signature, bytes | bytearray | memoryview) or len(signature) != 64:
        raise Ed25519Error("an Ed25519 signature has 64 bytes", reason=LENGTH)
    signature = bytes(signature)
    y = int.from_bytes(signature[:32], "little") & _Y_MASK
    if y >= P:
        raise Ed25519Error("R is not a canonical encoding (y ≥ p)", reason=NON_CANONICAL)
    if y in _SMALL_ORDER_Y:
        raise Ed25519Error(
            "R is a point of small order: such a signature proves nothing about the key",
            reason=SMALL_ORDER,
        )
    if int.from_bytes(signature[32:], "little") >= L:
        raise Ed25519Error("S is not below L (RFC 8032 §5.1.7)", reason=S_NOT_REDUCED)
