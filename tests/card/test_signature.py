"""Signature and certificate checks over bytes, with the test PKI (no card, no reader)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.agent.card import signature
from appliance.agent.card.apdu import TlvError
from tests.card import pki

AT = pki.GOOD_DATE

# Generation 2 printed entries (residence card): ten objects, 53 value bytes.
PRINTED_VALUES = [
    (0xC5, b"20310401"),
    (0xC6, b"19950312"),
    (0xC7, b"2"),
    (0xC8, b"VNM"),
    (0xC9, b"T000000001"),
    (0xCE, b"0300"),
    (0xCA, b"01"),
    (0xCB, b"20280401"),
    (0xCC, b"2"),
    (0xCD, b"20310401"),
]
PRINTED_FILE = b"".join(bytes([t, len(v)]) + v for t, v in PRINTED_VALUES)
FACE = b"\x00\x00\x00\x0cjP  face" * 40
NAME = b"II*\x00name" * 50
FRONT = b"II*\x00front" * 300
PHOTO = b"\x00\x00\x00\x0cjP  photo" * 100


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    length = bytes([n]) if n < 0x80 else b"\x82" + n.to_bytes(2, "big")
    return bytes([tag]) + length + value


def _gen1_signed(front: bytes = FRONT, photo: bytes = PHOTO) -> bytes:
    return front + bytes(7000 - len(front)) + photo + bytes(3000 - len(photo))


def _gen2_signed() -> bytes:
    values = b"".join(v for _, v in PRINTED_VALUES)
    return values + FACE + bytes(3000 - len(FACE)) + NAME + bytes(2500 - len(NAME))


def _file(generation: int, issuer: pki.CardIssuer, signed: bytes, *, sig: bytes | None = None):
    value = issuer.sign(signed) if sig is None else sig
    cert = issuer.certificate_der
    if generation == 1:
        return _tlv(0xDA, value) + _tlv(0xDB, cert + bytes(1200 - len(cert)))
    return _tlv(0xDC, value) + _tlv(0xDD, cert) + bytes(4)


def _verify(generation, file, data, anchors=None, at=AT):
    if anchors is None:
        anchors = [pki.issuer(generation).anchor]
    return signature.verify(generation, file, data, trust_anchors=anchors, at=at)


# --- signed data layout -------------------------------------------------------------


def test_gen1_signed_data_is_front_padded_to_7000_then_photo_padded_to_3000():
    data = signature.signed_data_gen1(b"\x01\x02", b"\x03")
    assert data == b"\x01\x02" + bytes(6998) + b"\x03" + bytes(2999)


def test_gen2_signed_data_is_values_then_face_then_name():
    data = signature.signed_data_gen2(PRINTED_FILE + bytes(5), FACE, NAME)
    assert data == _gen2_signed()
    assert len(data) == 53 + 3000 + 2500


def test_gen2_special_permanent_printed_values_are_padded_to_53():
    spr = [(0xC5, b"20320815"), (0xC6, b"19620405"), (0xC7, b"1"), (0xC8, b"KOR")]
    spr += [(0xC9, b"S000000000"), (0xCE, b"0000")]
    printed = b"".join(bytes([t, len(v)]) + v for t, v in spr)
    assert len(printed) == 46
    data = signature.signed_data_gen2(printed, b"f", b"n")
    assert data[:53] == b"".join(v for _, v in spr) + bytes(19)
    assert data[53:54] == b"f" and data[3053:3054] == b"n"


@pytest.mark.parametrize(
    "call",
    [
        lambda: signature.signed_data_gen1(bytes(7001), b""),
        lambda: signature.signed_data_gen1(b"", bytes(3001)),
        lambda: signature.signed_data_gen2(_tlv(0xC9, bytes(54)), b"", b""),
        lambda: signature.signed_data_gen2(PRINTED_FILE, bytes(3001), b""),
        lambda: signature.signed_data_gen2(PRINTED_FILE, b"", bytes(2501)),
    ],
)
def test_oversized_signed_values_are_refused(call):
    with pytest.raises(ValueError):
        call()


# --- certificates ---------------------------------------------------------------------


def test_certificate_with_zero_padding_loads():
    der = pki.issuer(2).certificate_der
    assert signature.load_certificate(der + bytes(300)) == pki.issuer(2).cert


@pytest.mark.parametrize(
    "mangle",
    [lambda d: d + b"\x00\x01", lambda d: d[:-10], lambda d: b"\x31" + d[1:], lambda d: d[:3]],
)
def test_malformed_certificate_is_refused(mangle):
    with pytest.raises(ValueError):
        signature.load_certificate(mangle(pki.issuer(2).certificate_der))


def test_trust_anchors_from_pem_bundle_and_der():
    a, b = pki.authority(2).cert, pki.authority(2, "Renkei Other CA").cert
    pem = a.public_bytes(Encoding.PEM) + b.public_bytes(Encoding.PEM)
    assert signature.parse_trust_anchors(pem) == [a, b]
    assert signature.parse_trust_anchors(a.public_bytes(Encoding.DER)) == [a]
    with pytest.raises(ValueError):
        signature.parse_trust_anchors(b"not a certificate")


# --- verification -------------------------------------------------------------------


@pytest.mark.parametrize("generation", [1, 2])
def test_good_signature_is_valid(generation):
    signed = _gen1_signed() if generation == 1 else _gen2_signed()
    check = _verify(generation, _file(generation, pki.issuer(generation), signed), signed)
    assert check.status == signature.VALID
    assert "Renkei Test Card CA" in check.detail


@pytest.mark.parametrize("generation", [1, 2])
def test_tampered_data_is_invalid(generation):
    signed = _gen1_signed() if generation == 1 else _gen2_signed()
    file = _file(generation, pki.issuer(generation), signed)
    altered = signed[:20] + bytes([signed[20] ^ 1]) + signed[21:]
    check = _verify(generation, file, altered)
    assert check.status == signature.INVALID
    assert "does not match" in check.detail


@pytest.mark.parametrize("generation", [1, 2])
def test_tampered_signature_is_invalid(generation):
    signed = _gen1_signed() if generation == 1 else _gen2_signed()
    good = pki.issuer(generation).sign(signed)
    bad = good[:-1] + bytes([good[-1] ^ 0x80])
    check = _verify(generation, _file(generation, pki.issuer(generation), signed, sig=bad), signed)
    assert check.status == signature.INVALID


@pytest.mark.parametrize("generation", [1, 2])
def test_certificate_from_another_ca_is_untrusted(generation):
    signed = _gen1_signed() if generation == 1 else _gen2_signed()
    file = _file(generation, pki.issuer(generation, "other_ca"), signed)
    check = _verify(generation, file, signed)
    assert check.status == signature.UNTRUSTED_CERTIFICATE
    assert "Renkei Other CA" in check.detail


@pytest.mark.parametrize("generation", [1, 2])
def test_anchor_of_another_ca_does_not_trust_a_good_card(generation):
    signed = _gen1_signed() if generation == 1 else _gen2_signed()
    file = _file(generation, pki.issuer(generation), signed)
    other = pki.authority(generation, "Renkei Other CA").cert
    assert _verify(generation, file, signed, [other]).status == signature.UNTRUSTED_CERTIFICATE
    # both anchors configured: the issuing one is found
    good = pki.issuer(generation).anchor
    assert _verify(generation, file, signed, [other, good]).status == signature.VALID


@pytest.mark.parametrize("generation", [1, 2])
def test_expired_certificate_is_untrusted(generation):
    signed = _gen1_signed() if generation == 1 else _gen2_signed()
    file = _file(generation, pki.issuer(generation, "expired"), signed)
    check = _verify(generation, file, signed)
    assert check.status == signature.UNTRUSTED_CERTIFICATE
    assert "expired on 2023-01-01" in check.detail
    # before it expired the same card was valid: the date passed in decides
    assert _verify(generation, file, signed, at=datetime(2022, 6, 1, tzinfo=UTC)).status == (
        signature.VALID
    )


def test_certificate_not_yet_valid_is_untrusted():
    signed = _gen2_signed()
    file = _file(2, pki.issuer(2), signed)
    check = _verify(2, file, signed, at=datetime(2023, 12, 31, tzinfo=UTC))
    assert check.status == signature.UNTRUSTED_CERTIFICATE
    assert "not valid before 2024-01-01" in check.detail


@pytest.mark.parametrize("generation", [1, 2])
def test_without_anchor_never_valid(generation):
    signed = _gen1_signed() if generation == 1 else _gen2_signed()
    file = _file(generation, pki.issuer(generation), signed)
    check = _verify(generation, file, signed, anchors=[])
    assert check.status == signature.NOT_CHECKED
    assert "no trust anchor" in check.detail
    # a mismatch is still reported: the data does not match whatever certificate it carries
    assert _verify(generation, file, signed[:-1] + b"\x01", anchors=[]).status == signature.INVALID


def test_gen2_der_encoded_signature_is_accepted():
    signed = _gen2_signed()
    der = pki.issuer(2).key.sign(signed, ec.ECDSA(hashes.SHA256()))
    assert _verify(2, _file(2, pki.issuer(2), signed, sig=der), signed).status == signature.VALID


def test_gen2_zero_signature_is_invalid():
    signed = _gen2_signed()
    assert _verify(2, _file(2, pki.issuer(2), signed, sig=bytes(96)), signed).status == (
        signature.INVALID
    )


def test_wrong_key_type_for_the_generation_is_invalid():
    # a generation-1 file (DA/DB) carrying an ECDSA certificate
    signed = _gen1_signed()
    ec_issuer = pki.issuer(2)
    file = _tlv(0xDA, bytes(256)) + _tlv(0xDB, ec_issuer.certificate_der)
    check = _verify(1, file, signed, [ec_issuer.anchor])
    assert check.status == signature.INVALID
    assert "RSA-2048" in check.detail


def test_gen1_signature_of_wrong_length_is_invalid():
    signed = _gen1_signed()
    file = _tlv(0xDA, bytes(255)) + _tlv(0xDB, pki.issuer(1).certificate_der)
    check = _verify(1, file, signed)
    assert check.status == signature.INVALID
    assert "255 bytes" in check.detail


@pytest.mark.parametrize(
    "file",
    [b"\xdc\x60", _tlv(0xDC, bytes(96)), _tlv(0xDC, bytes(96)) + _tlv(0xDD, b"\x30\x03abc")],
)
def test_malformed_signature_file_is_invalid(file):
    assert _verify(2, file, _gen2_signed()).status == signature.INVALID


def test_parse_signature_file_names_missing_objects():
    with pytest.raises(TlvError, match="DB"):
        signature.parse_signature_file(1, _tlv(0xDA, bytes(256)))


def test_naive_date_is_refused():
    with pytest.raises(ValueError):
        signature.verify(2, b"", b"", trust_anchors=[], at=datetime(2026, 1, 1))


def test_unknown_status_is_refused():
    with pytest.raises(ValueError):
        signature.SignatureCheck("ok", "")
