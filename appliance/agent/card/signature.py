"""Signature and certificate checks of the residence-card chip (DF3/EF01).

The chip carries a signature made at issuance by the ministry's card-issuing
key and that key's X.509 certificate. Checking it tells the counter that the
data read from the chip is what the ministry wrote, which matters more than
any single field. Pure functions over bytes, no clock and no files: the
caller passes the issuing-CA certificates (trust anchors, supplied by the
deployment) and the date to check validity periods against.

What is signed (public spec as read by the open reader eringoio/zairyu-card-reader,
see docs/card.md for what was and was not checked against the PDFs):

- generation 1: DA (RSA-2048, PKCS#1 v1.5, SHA-256) over D0 (front image,
  value padded with 00 to 7000 bytes) ‖ D1 (photo, padded to 3000); DB certificate.
- generation 2: DC (ECDSA P-384, SHA-256, 96 bytes raw r‖s) over the printed
  entries (DF1/EF02 TLV values in file order, padded with 00 to 53 bytes) ‖
  D1 face image (padded to 3000) ‖ D0 name image (padded to 2500); DD certificate.

Statuses: ``valid`` (signature matches and the certificate was issued by a
trust anchor, both valid on the date), ``invalid`` (the data does not match
the signature, or the signature/certificate is malformed), ``untrusted_certificate``
(the signature matches the card's certificate but that certificate is not
issued by any anchor, or is outside its validity period), ``not_checked``
(no trust anchor configured: the signature matches the card's own
certificate, which proves nothing about who issued it). Never ``valid``
without an anchor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from appliance.agent.card import apdu

__all__ = [
    "INVALID",
    "NOT_CHECKED",
    "STATUSES",
    "UNTRUSTED_CERTIFICATE",
    "VALID",
    "SignatureCheck",
    "SignatureFile",
    "load_certificate",
    "parse_signature_file",
    "parse_trust_anchors",
    "signed_data_gen1",
    "signed_data_gen2",
    "verify",
]

VALID = "valid"
INVALID = "invalid"
NOT_CHECKED = "not_checked"
UNTRUSTED_CERTIFICATE = "untrusted_certificate"
STATUSES = (VALID, INVALID, NOT_CHECKED, UNTRUSTED_CERTIFICATE)

# DF3/EF01 tags: (signature, certificate) per generation.
_TAGS = {1: (0xDA, 0xDB), 2: (0xDC, 0xDD)}

GEN1_FRONT_IMAGE_SIZE = 7000
GEN1_PHOTO_SIZE = 3000
GEN2_PRINTED_ENTRIES_SIZE = 53
GEN2_FACE_IMAGE_SIZE = 3000
GEN2_NAME_IMAGE_SIZE = 2500
_RSA_BITS = 2048
_P384_BYTES = 48


@dataclass(frozen=True)
class SignatureCheck:
    """Outcome of checking the card's signature: one of the four statuses and why."""

    status: str
    detail: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown signature status {self.status!r}")

    def to_dict(self) -> dict[str, str]:
        return {"status": self.status, "detail": self.detail}


@dataclass(frozen=True)
class SignatureFile:
    """The two objects of DF3/EF01: signature value and certificate (DER, padding kept)."""

    signature: bytes
    certificate: bytes


class _Malformed(ValueError):
    """Signed data or DF3 contents that cannot be what the spec describes."""


def parse_signature_file(generation: int, data: bytes) -> SignatureFile:
    """Split DF3/EF01 into signature and certificate (DA/DB or DC/DD).

    Raises ``apdu.TlvError`` when the file is not TLV or lacks either object.
    """
    if generation not in _TAGS:
        raise ValueError(f"unknown card generation {generation!r}")
    sig_tag, cert_tag = _TAGS[generation]
    objects = apdu.tlv_dict(data)
    missing = [f"{t:X}" for t in (sig_tag, cert_tag) if not objects.get(t)]
    if missing:
        raise apdu.TlvError(f"signature file lacks {', '.join(missing)}")
    return SignatureFile(objects[sig_tag], objects[cert_tag])


def load_certificate(data: bytes) -> x509.Certificate:
    """Parse a DER certificate that may be followed by 00 padding (DB is a fixed 1200-byte field).

    The outer SEQUENCE header gives the real length; anything after it must
    be zero, or the field has been tampered with.
    """
    if len(data) < 4 or data[0] != 0x30:
        raise ValueError("certificate is not a DER SEQUENCE")
    first = data[1]
    if first < 0x80:
        end = 2 + first
    else:
        n = first & 0x7F
        if not 1 <= n <= 3 or len(data) < 2 + n:
            raise ValueError("certificate length field malformed")
        end = 2 + n + int.from_bytes(data[2 : 2 + n], "big")
    if end > len(data):
        raise ValueError("certificate truncated")
    if any(data[end:]):
        raise ValueError("certificate is followed by non-zero bytes")
    return x509.load_der_x509_certificate(bytes(data[:end]))


def parse_trust_anchors(data: bytes) -> list[x509.Certificate]:
    """Read trust-anchor certificates from PEM (one or more) or a single DER file.

    For configuration code: the deployment supplies the ministry's issuing-CA
    certificate(s); a file without any certificate is refused.
    """
    if b"-----BEGIN" in data:
        anchors = x509.load_pem_x509_certificates(data)
    else:
        anchors = [load_certificate(data)]
    if not anchors:
        raise ValueError("no certificate found")
    return anchors


def _padded(value: bytes, size: int, what: str) -> bytes:
    if len(value) > size:
        raise _Malformed(f"{what} is {len(value)} bytes, more than the {size} the spec allows")
    return value + bytes(size - len(value))


def signed_data_gen1(front_image: bytes, photo: bytes) -> bytes:
    """Generation 1 signed data: D0 value padded to 7000 ‖ D1 value padded to 3000."""
    return _padded(front_image, GEN1_FRONT_IMAGE_SIZE, "front image (D0)") + _padded(
        photo, GEN1_PHOTO_SIZE, "photo (D1)"
    )


def signed_data_gen2(printed_entries_file: bytes, face_image: bytes, name_image: bytes) -> bytes:
    """Generation 2 signed data: printed-entry values ‖ face image ‖ name image.

    The printed entries are the TLV values of DF1/EF02 in file order, tags and
    lengths stripped: 53 bytes on a residence card, 34 on a special permanent
    resident certificate, padded with 00 to 53.
    """
    values = b"".join(value for _, value in apdu.parse_tlv(printed_entries_file))
    return (
        _padded(values, GEN2_PRINTED_ENTRIES_SIZE, "printed entries")
        + _padded(face_image, GEN2_FACE_IMAGE_SIZE, "face image (D1)")
        + _padded(name_image, GEN2_NAME_IMAGE_SIZE, "name image (D0)")
    )


def _check_data_signature(
    generation: int, certificate: x509.Certificate, signature: bytes, data: bytes
) -> None:
    """Raise _Malformed for a wrong key type / encoding, InvalidSignature for a mismatch."""
    key = certificate.public_key()
    if generation == 1:
        if not isinstance(key, rsa.RSAPublicKey) or key.key_size != _RSA_BITS:
            raise _Malformed("the card certificate's key is not RSA-2048")
        if len(signature) != _RSA_BITS // 8:
            raise _Malformed(f"signature DA is {len(signature)} bytes, expected 256")
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        return
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise _Malformed("the card certificate's key is not ECDSA P-384")
    if len(signature) == 2 * _P384_BYTES:
        r = int.from_bytes(signature[:_P384_BYTES], "big")
        s = int.from_bytes(signature[_P384_BYTES:], "big")
        if not r or not s:
            raise InvalidSignature()
        signature = encode_dss_signature(r, s)
    # anything else is tried as DER (some readers report DER); cryptography rejects garbage
    key.verify(signature, data, ec.ECDSA(hashes.SHA256()))


def _within(cert: x509.Certificate, at: datetime) -> str | None:
    """None when ``at`` is inside the validity period, else why not."""
    if at < cert.not_valid_before_utc:
        return f"not valid before {cert.not_valid_before_utc.date().isoformat()}"
    if at > cert.not_valid_after_utc:
        return f"expired on {cert.not_valid_after_utc.date().isoformat()}"
    return None


def _issuer(cert: x509.Certificate, anchors: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The anchor that directly issued ``cert`` (name match and signature), if any."""
    for anchor in anchors:
        try:
            cert.verify_directly_issued_by(anchor)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        return anchor
    return None


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def verify(
    generation: int,
    signature_file: bytes,
    signed_data: bytes,
    *,
    trust_anchors: Sequence[x509.Certificate],
    at: datetime,
) -> SignatureCheck:
    """Check the DF3/EF01 signature over ``signed_data`` (built with signed_data_gen1/2).

    Order: the data must match the signature under the card certificate's key
    (else ``invalid``: that is true whoever issued the certificate); then,
    only with anchors, the certificate must be issued by one of them and it
    and its issuer be valid at ``at`` (else ``untrusted_certificate``).
    """
    if at.tzinfo is None:
        raise ValueError("'at' must be timezone-aware")
    at = at.astimezone(UTC)
    try:
        parts = parse_signature_file(generation, signature_file)
    except apdu.TlvError as exc:
        return SignatureCheck(INVALID, f"signature file malformed: {exc.message}")
    try:
        certificate = load_certificate(parts.certificate)
    except ValueError as exc:
        return SignatureCheck(INVALID, f"card certificate does not parse: {exc}")
    try:
        _check_data_signature(generation, certificate, parts.signature, signed_data)
    except _Malformed as exc:
        return SignatureCheck(INVALID, str(exc))
    except (InvalidSignature, ValueError):
        return SignatureCheck(
            INVALID, "the chip data does not match its signature (altered data or signature)"
        )
    subject = _subject(certificate)
    if not trust_anchors:
        return SignatureCheck(
            NOT_CHECKED,
            f"signature matches the card's certificate ({subject}), but no trust anchor is "
            "configured, so who issued that certificate was not checked",
        )
    issuer = _issuer(certificate, trust_anchors)
    if issuer is None:
        return SignatureCheck(
            UNTRUSTED_CERTIFICATE,
            f"card certificate ({subject}, issuer {certificate.issuer.rfc4514_string()}) "
            "is not issued by any configured trust anchor",
        )
    for cert, what in ((certificate, "card certificate"), (issuer, "issuing CA certificate")):
        problem = _within(cert, at)
        if problem:
            return SignatureCheck(UNTRUSTED_CERTIFICATE, f"{what} ({_subject(cert)}) {problem}")
    return SignatureCheck(
        VALID,
        f"signature valid; card certificate {subject} issued by {_subject(issuer)}",
    )
