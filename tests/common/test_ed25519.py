"""Ed25519 key and signature checks (common.ed25519), against libsodium and published vectors.

Three independent judges: libsodium (PyNaCl's ``crypto_core_ed25519_*``,
a second implementation of the point checks), a small affine reference
written here from RFC 8032 §5.1 (curve equation, addition law, §5.1.3
decoding), and the published vectors in tests/common/vectors/ (SOURCE.md).
Nothing here computes an expected answer with the module under test.

"Full verification" below is what every verifier of ours does: the key
check, the signature pre-check, then ``cryptography`` for the equation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nacl.bindings as sodium
import nacl.exceptions
import nacl.signing
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from common import ed25519
from common.ed25519 import Ed25519Error

VECTORS = Path(__file__).parent / "vectors"

# --- an affine reference, from RFC 8032 §5.1 (not from the module) -------------------------

p = 2**255 - 19
ORDER = 2**252 + 27742317777372353535851937790883648493
d = -121665 * pow(121666, -1, p) % p
IDENTITY_POINT = (0, 1)


def on_curve(x: int, y: int) -> bool:
    """−x² + y² = 1 + d·x²·y² (RFC 8032 §5.1, a = −1)."""
    return (-x * x + y * y - 1 - d * x * x * y * y) % p == 0


def add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """The twisted Edwards addition law, affine: one inversion per coordinate."""
    (x1, y1), (x2, y2) = a, b
    t = d * x1 * x2 * y1 * y2 % p
    return (
        (x1 * y2 + y1 * x2) * pow(1 + t, -1, p) % p,
        (y1 * y2 + x1 * x2) * pow(1 - t, -1, p) % p,
    )


def times(n: int, point: tuple[int, int]) -> tuple[int, int]:
    result = IDENTITY_POINT
    for _ in range(n):
        result = add(result, point)
    return result


def recover(encoded: bytes) -> tuple[int, int] | None:
    """Lenient §5.1.3 decoding (y taken mod p, a sign on x = 0 ignored): the point meant, if any."""
    number = int.from_bytes(encoded, "little")
    y, sign = (number & ((1 << 255) - 1)) % p, number >> 255
    x2 = (y * y - 1) * pow(d * y * y + 1, -1, p) % p
    x = pow(x2, (p + 3) // 8, p)
    if x * x % p != x2:
        x = x * pow(2, (p - 1) // 4, p) % p
    if x * x % p != x2:
        return None
    if x != 0 and x & 1 != sign:
        x = p - x
    assert on_curve(x, y)
    return x, y


def encode(x: int, y: int, *, sign: int | None = None) -> bytes:
    """y little-endian with the low bit of x on top (§5.1.2), or the given sign bit."""
    return (y | ((x & 1 if sign is None else sign) << 255)).to_bytes(32, "little")


def order(point: tuple[int, int]) -> int:
    """The order of a point of small order (1, 2, 4 or 8), or 0 when it is not."""
    for n in (1, 2, 4, 8):
        if times(n, point) == IDENTITY_POINT:
            return n
    return 0


# The eight points of small order, canonically encoded, as listed in the literature
# (libsodium's blocklist; "Taming the many EdDSAs" §3): identity, order 2, two of order 4,
# four of order 8.  Each one's order is checked with the reference above, not assumed.
SMALL_ORDER = {
    "identity": ("0100000000000000000000000000000000000000000000000000000000000000", 1),
    "order 2": ("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f", 2),
    "order 4, x even": ("0000000000000000000000000000000000000000000000000000000000000000", 4),
    "order 4, x odd": ("0000000000000000000000000000000000000000000000000000000000000080", 4),
    "order 8, a": ("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05", 8),
    "order 8, b": ("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85", 8),
    "order 8, c": ("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a", 8),
    "order 8, d": ("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa", 8),
}
CANONICAL_SMALL = {name: bytes.fromhex(text) for name, (text, _) in SMALL_ORDER.items()}


def _second_encodings() -> dict[str, bytes]:
    """Every other 32-byte string that names one of the eight points.

    y + p fits in 255 bits only for y < 19, i.e. y = 0 and y = 1 here, with
    either sign bit; and x = 0 with the sign bit set (y = 1 and y = p − 1).
    """
    out = {}
    for y, name in ((0, "order 4"), (1, "identity")):
        for sign in (0, 1):
            out[f"{name}, y + p, sign {sign}"] = ((y + p) | (sign << 255)).to_bytes(32, "little")
    out["identity, x = 0 with sign"] = encode(0, 1, sign=1)
    out["order 2, x = 0 with sign"] = encode(0, p - 1, sign=1)
    return out


SECOND_SMALL = _second_encodings()
IDENTITY = CANONICAL_SMALL["identity"]
#: The signature R = identity, S = 0: under the identity "key" it verifies for every message.
EVERYTHING = IDENTITY + bytes(32)


def identity_r_signature(seed: bytes, message: bytes) -> bytes:
    """A signature whose R is the identity, made by the key's holder (RFC 8032 §5.1.6, r = 0).

    S = k·a mod L with k = SHA-512(R ‖ A ‖ M): then [S]B = R + [k]A holds, so a
    cofactorless verifier accepts it.  Only the holder of the key can make it,
    but a signature with a small-order R proves nothing about R: refused.
    """
    digest = hashlib.sha512(seed).digest()
    a = int.from_bytes(digest[:32], "little") & ((1 << 254) - 8) | (1 << 254)  # §5.1.5 clamping
    public = raw(Ed25519PrivateKey.from_private_bytes(seed).public_key())
    k = int.from_bytes(hashlib.sha512(IDENTITY + public + message).digest(), "little") % ORDER
    return IDENTITY + (k * a % ORDER).to_bytes(32, "little")


class IdentityRSigner:
    """Stands in for an Ed25519PrivateKey where only ``sign`` is called."""

    def __init__(self, seed: bytes):
        self.seed = seed

    def sign(self, data: bytes) -> bytes:
        return identity_r_signature(self.seed, data)


def raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def reason_of(check, value) -> str | None:  # type: ignore[no-untyped-def]
    try:
        check(value)
    except Ed25519Error as error:
        return error.reason
    return None


def full_verify(public_key: bytes, signature: bytes, message: bytes) -> str | None:
    """None when accepted; else the first refusal: key check, signature pre-check, equation."""
    try:
        ed25519.check_public_key(public_key)
        ed25519.check_signature(signature)
    except Ed25519Error as error:
        return error.reason
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature:
        return "equation"
    return None


def cryptography_alone(public_key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def sodium_valid(encoded: bytes) -> bool:
    return bool(sodium.crypto_core_ed25519_is_valid_point(encoded))


# --- the eight small-order points -----------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [(n, o) for n, (_, o) in SMALL_ORDER.items()])
def test_the_listed_small_order_points_have_the_listed_order(name, expected):
    point = recover(CANONICAL_SMALL[name])
    assert point is not None
    assert order(point) == expected
    assert encode(*point) == CANONICAL_SMALL[name]  # the listed bytes are canonical
    assert not sodium_valid(CANONICAL_SMALL[name])


def test_the_eight_are_all_of_them():
    points = {recover(encoded) for encoded in CANONICAL_SMALL.values()}
    assert len(points) == 8
    # Closed under addition: a subgroup of 8.  The group has order 8·L (RFC 8032 §5.1), so
    # the points of order dividing 8 are one subgroup of 8: these are all of them.
    assert {add(a, b) for a in points for b in points} == points


@pytest.mark.parametrize("name", CANONICAL_SMALL)
def test_small_order_keys_are_refused(name):
    assert reason_of(ed25519.check_public_key, CANONICAL_SMALL[name]) == "small_order"


@pytest.mark.parametrize("name", SECOND_SMALL)
def test_second_encodings_of_small_order_points_are_refused(name):
    encoded = SECOND_SMALL[name]
    assert recover(encoded) in {recover(e) for e in CANONICAL_SMALL.values()}
    assert encoded not in CANONICAL_SMALL.values()
    assert reason_of(ed25519.check_public_key, encoded) == "non_canonical"
    assert not sodium_valid(encoded)


@pytest.mark.parametrize("y", range(p, 2**255))
@pytest.mark.parametrize("sign", [0, 1])
def test_every_y_not_below_p_is_refused(y, sign):
    encoded = (y | (sign << 255)).to_bytes(32, "little")
    assert reason_of(ed25519.check_public_key, encoded) == "non_canonical"
    assert not sodium_valid(encoded)


def test_a_y_with_no_x_is_not_on_the_curve():
    assert recover(encode(0, 2)) is None  # x² = 3/(4d + 1) has no square root
    assert reason_of(ed25519.check_public_key, encode(0, 2)) == "not_on_curve"
    assert not sodium_valid(encode(0, 2))


@pytest.mark.parametrize("value", [b"", bytes(31), bytes(33), "A" * 32, None])
def test_anything_but_32_bytes_is_refused(value):
    assert reason_of(ed25519.check_public_key, value) == "length"


# --- mixed order: a proper key plus a small-order point (sums made by libsodium) -----------

PROPER = [
    bytes.fromhex(case["public_key"])
    for case in json.loads((VECTORS / "rfc8032_ed25519.json").read_text())
]


@pytest.mark.parametrize("small", [n for n in CANONICAL_SMALL if n != "identity"])
@pytest.mark.parametrize("key", range(len(PROPER)))
def test_mixed_order_keys_are_refused(key, small):
    mixed = sodium.crypto_core_ed25519_add(PROPER[key], CANONICAL_SMALL[small])
    assert order(recover(mixed)) == 0  # not small
    assert not sodium_valid(mixed)
    assert reason_of(ed25519.check_public_key, mixed) == "mixed_order"


@pytest.mark.parametrize("key", range(len(PROPER)))
def test_proper_keys_are_accepted_and_returned(key):
    assert sodium_valid(PROPER[key])
    assert ed25519.check_public_key(PROPER[key]) == PROPER[key]
    assert ed25519.check_public_key(Ed25519PublicKey.from_public_bytes(PROPER[key])) == PROPER[key]


@settings(max_examples=40, deadline=None)
@given(seed=st.binary(min_size=32, max_size=32))
def test_keys_cryptography_makes_are_accepted(seed):
    key = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    assert ed25519.check_public_key(key) == raw(key)


@settings(max_examples=300, deadline=None)
@given(encoded=st.binary(min_size=32, max_size=32))
def test_any_32_bytes_get_libsodiums_verdict(encoded):
    assert (reason_of(ed25519.check_public_key, encoded) is None) == sodium_valid(encoded)


@settings(max_examples=100, deadline=None)
@given(
    scalar=st.integers(min_value=1, max_value=ORDER - 1),
    small=st.sampled_from(sorted(CANONICAL_SMALL)),
)
def test_points_with_and_without_a_small_component_get_libsodiums_verdict(scalar, small):
    proper = sodium.crypto_scalarmult_ed25519_base_noclamp(scalar.to_bytes(32, "little"))
    point = sodium.crypto_core_ed25519_add(proper, CANONICAL_SMALL[small])
    verdict = reason_of(ed25519.check_public_key, point)
    assert (verdict is None) == sodium_valid(point) == (small == "identity")
    assert verdict in (None, "mixed_order")


# --- signatures -----------------------------------------------------------------------------

GOOD_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
GOOD_SIGNATURE = GOOD_KEY.sign(b"renkei")
S_GOOD = GOOD_SIGNATURE[32:]


def _s(value: int) -> bytes:
    return value.to_bytes(32, "little")


def test_a_proper_signature_passes_the_pre_check():
    ed25519.check_signature(GOOD_SIGNATURE)


@pytest.mark.parametrize(
    "encoded",
    [*CANONICAL_SMALL.values(), *SECOND_SMALL.values()],
    ids=[*CANONICAL_SMALL, *SECOND_SMALL],
)
@pytest.mark.parametrize("s", [0, 1, ORDER - 1])
def test_small_order_r_is_refused_in_every_encoding(encoded, s):
    y = int.from_bytes(encoded, "little") & ((1 << 255) - 1)
    expected = "non_canonical" if y >= p else "small_order"
    assert reason_of(ed25519.check_signature, encoded + _s(s)) == expected


@pytest.mark.parametrize("s", [ORDER, ORDER + 1, 2 * ORDER, 2**253, 2**256 - 1])
def test_s_not_below_l_is_refused(s):
    assert reason_of(ed25519.check_signature, GOOD_SIGNATURE[:32] + _s(s)) == "s_not_reduced"
    s_plus = GOOD_SIGNATURE[:32] + _s(int.from_bytes(S_GOOD, "little") + ORDER)
    assert reason_of(ed25519.check_signature, s_plus) == "s_not_reduced"


def test_s_just_below_l_passes_the_pre_check():
    ed25519.check_signature(GOOD_SIGNATURE[:32] + _s(ORDER - 1))


@pytest.mark.parametrize("y", [p, p + 1, 2**255 - 1])
def test_r_not_below_p_is_refused(y):
    assert reason_of(ed25519.check_signature, _s(y) + S_GOOD) == "non_canonical"


@pytest.mark.parametrize(
    "value", [b"", GOOD_SIGNATURE[:63], GOOD_SIGNATURE + b"\0", None, "x" * 64]
)
def test_anything_but_64_bytes_is_no_signature(value):
    assert reason_of(ed25519.check_signature, value) == "length"


@settings(max_examples=300, deadline=None)
@given(
    r=st.one_of(
        st.binary(min_size=32, max_size=32),
        st.sampled_from([*CANONICAL_SMALL.values(), *SECOND_SMALL.values()]),
    ),
    s=st.one_of(st.integers(0, 2**256 - 1), st.integers(ORDER - 2, ORDER + 2)),
)
def test_the_pre_check_refuses_exactly_what_rfc8032_and_the_small_order_rule_do(r, s):
    verdict = reason_of(ed25519.check_signature, r + _s(s))
    y = int.from_bytes(r, "little") & ((1 << 255) - 1)
    point = recover(r)
    if y >= p:
        assert verdict == "non_canonical"
    elif point is not None and order(point) in (1, 2, 4, 8):
        assert verdict == "small_order"
    elif s >= ORDER:
        assert verdict == "s_not_reduced"
    else:
        assert verdict is None  # R off the curve is left to OpenSSL: see the Wycheproof test


# --- the hole this closes -------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(message=st.binary(max_size=200))
def test_the_identity_key_and_one_fixed_signature_verify_everything_without_these_checks(message):
    # cryptography (OpenSSL) alone accepts it: that is the forgery of issue #18.
    assert cryptography_alone(IDENTITY, EVERYTHING, message)
    assert full_verify(IDENTITY, EVERYTHING, message) == "small_order"
    assert reason_of(ed25519.check_signature, EVERYTHING) == "small_order"


@settings(max_examples=10, deadline=None)
@given(message=st.binary(max_size=200))
def test_a_small_order_r_made_by_the_key_holder_is_refused(message):
    seed = bytes(range(32))
    signature = identity_r_signature(seed, message)
    public = raw(Ed25519PrivateKey.from_private_bytes(seed).public_key())
    assert cryptography_alone(public, signature, message)
    assert full_verify(public, signature, message) == "small_order"


# --- published vectors ----------------------------------------------------------------------

RFC8032 = json.loads((VECTORS / "rfc8032_ed25519.json").read_text())


@pytest.mark.parametrize("case", RFC8032, ids=[case["name"] for case in RFC8032])
def test_rfc8032_section_7_1_vectors(case):
    secret, public, message, signature = (
        bytes.fromhex(case[k]) for k in ("secret_key", "public_key", "message", "signature")
    )
    private = Ed25519PrivateKey.from_private_bytes(secret)
    assert raw(private.public_key()) == public  # the transcription is right, byte for byte
    assert private.sign(message) == signature
    assert full_verify(public, signature, message) is None
    nacl.signing.VerifyKey(public).verify(message, signature)  # and libsodium agrees
    assert full_verify(public, signature, message + b"!") == "equation"
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert full_verify(public, flipped, message) is not None


# "Taming the many EdDSAs" (speccheck cases.json): case → (our first refusal, whether
# cryptography alone accepts, i.e. the paper's PyCA/OpenSSL row: X V X V X V V X X X X X X X V).
# Our policy: cofactorless (as cryptography), A and R canonical, S < L, A of order exactly L,
# R not of small order.  The key is checked first, so a case with a bad A is refused for it.
SPECCHECK = {
    0: ("small_order", False),  # A and R of order 8, S = 0; R ≠ −[k]A for this message
    1: ("small_order", True),  # the same, with a message where R = −[k]A: forged without a key
    2: ("small_order", False),  # A of order 8, R mixed, S > 0
    3: ("small_order", True),  # ditto, passes the cofactorless equation
    4: ("mixed_order", False),  # A mixed, R of order 8
    5: ("mixed_order", True),  # ditto, passes the cofactorless equation
    6: ("mixed_order", True),  # A and R mixed, passes cofactored and cofactorless (libsodium too)
    7: ("mixed_order", False),  # A and R mixed, passes only the cofactored equation
    8: ("mixed_order", False),  # A mixed; passes only a cofactored check that keeps k unreduced
    9: ("s_not_reduced", False),  # proper A and R, S ≥ L (OpenSSL checks S < L too)
    10: ("s_not_reduced", False),  # S so large its top bits are set
    11: ("mixed_order", False),  # A mixed; R is x = 0 with the sign bit (non-canonical, small)
    12: ("mixed_order", False),  # ditto, other message
    13: ("non_canonical", False),  # A is x = 0 with the sign bit set (a second encoding of order 2)
    14: ("non_canonical", True),  # ditto, and OpenSSL accepts it: decodes A leniently
}
SPECCHECK_CASES = json.loads((VECTORS / "speccheck_cases.json").read_text())


def test_speccheck_has_the_fifteen_cases_of_the_paper():
    assert len(SPECCHECK_CASES) == len(SPECCHECK) == 15


@pytest.mark.parametrize("index", sorted(SPECCHECK))
def test_taming_the_many_eddsas_cases(index):
    case = SPECCHECK_CASES[index]
    public, signature, message = (
        bytes.fromhex(case[k]) for k in ("pub_key", "signature", "message")
    )
    refusal, openssl_accepts = SPECCHECK[index]
    assert full_verify(public, signature, message) == refusal
    assert cryptography_alone(public, signature, message) == openssl_accepts


WYCHEPROOF = json.loads((VECTORS / "wycheproof_ed25519_excerpt.json").read_text())
WYCHEPROOF_CASES = [
    (group["publicKey"]["pk"], test)
    for group in WYCHEPROOF["testGroups"]
    for test in group["tests"]
]


@pytest.mark.parametrize(
    ("public", "test"), WYCHEPROOF_CASES, ids=[f"tc{test['tcId']}" for _, test in WYCHEPROOF_CASES]
)
def test_wycheproof(public, test):
    verdict = full_verify(
        bytes.fromhex(public), bytes.fromhex(test["sig"]), bytes.fromhex(test["msg"])
    )
    if test["result"] == "valid":
        assert verdict is None
        nacl.signing.VerifyKey(bytes.fromhex(public)).verify(
            bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"])
        )
    else:
        assert verdict is not None
        with pytest.raises(nacl.exceptions.BadSignatureError):
            nacl.signing.VerifyKey(bytes.fromhex(public)).verify(
                bytes.fromhex(test["msg"]), bytes.fromhex(test["sig"])
            )


def test_an_r_off_the_curve_never_verifies_though_the_pre_check_does_not_decode_it():
    # Wycheproof 62 flips every bit of R: it passes the pre-check (cheap, y-only) and OpenSSL
    # refuses it, because it accepts only the canonical encoding of the R it recomputes.
    public = bytes.fromhex(WYCHEPROOF["testGroups"][0]["publicKey"]["pk"])
    (test,) = [t for _, t in WYCHEPROOF_CASES if t["tcId"] == 62]
    signature = bytes.fromhex(test["sig"])
    ed25519.check_signature(signature)
    assert full_verify(public, signature, bytes.fromhex(test["msg"])) == "equation"
    # and R made of a y with no x at all, with a real S
    off_curve = encode(0, 2)
    assert recover(off_curve) is None
    ed25519.check_signature(off_curve + S_GOOD)
    assert full_verify(raw(GOOD_KEY.public_key()), off_curve + S_GOOD, b"renkei") == "equation"
