"""Test PKI for the virtual card: a test CA and a card-issuing key, made in the test run.

Stands in for the ministry's issuing CA (the trust anchor a deployment
configures) and the card-issuing key whose certificate the chip carries.
Generation 1 uses RSA-2048 (PKCS#1 v1.5, SHA-256), generation 2 ECDSA P-384
with the signature stored as raw r‖s. No key is ever written to disk or
committed; keys are made once per test process and cached.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

# Inside both the CA's and the good card certificate's validity period.
GOOD_DATE = datetime(2026, 6, 1, tzinfo=UTC)

_CA_VALIDITY = (datetime(2020, 1, 1, tzinfo=UTC), datetime(2045, 1, 1, tzinfo=UTC))
_CARD_VALIDITY = (datetime(2024, 1, 1, tzinfo=UTC), datetime(2040, 1, 1, tzinfo=UTC))
_EXPIRED_VALIDITY = (datetime(2020, 1, 1, tzinfo=UTC), datetime(2023, 1, 1, tzinfo=UTC))


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Renkei test PKI (not the ministry)"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _new_key(generation: int):
    if generation == 1:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP384R1())


def _certificate(subject, key, issuer_name, issuer_key, validity, *, ca: bool) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class CertificateAuthority:
    """A test issuing CA: its certificate is what tests pass as the trust anchor."""

    generation: int
    key: object
    cert: x509.Certificate


@dataclass(frozen=True)
class CardIssuer:
    """A card-issuing key with its certificate, issued by ``ca``; signs card data."""

    generation: int
    ca: CertificateAuthority
    key: object
    cert: x509.Certificate

    @property
    def anchor(self) -> x509.Certificate:
        return self.ca.cert

    @property
    def certificate_der(self) -> bytes:
        return self.cert.public_bytes(Encoding.DER)

    def sign(self, data: bytes) -> bytes:
        """Generation 1: 256-byte RSA PKCS#1 v1.5 SHA-256; generation 2: 96-byte raw r‖s."""
        if self.generation == 1:
            return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        r, s = decode_dss_signature(self.key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(48, "big") + s.to_bytes(48, "big")


@functools.cache
def authority(generation: int, name: str = "Renkei Test Card CA") -> CertificateAuthority:
    """A self-signed test CA per generation and name (cached for the process)."""
    key = _new_key(generation)
    subject = _name(f"{name} G{generation}")
    return CertificateAuthority(
        generation, key, _certificate(subject, key, subject, key, _CA_VALIDITY, ca=True)
    )


@functools.cache
def issuer(generation: int, variant: str = "good") -> CardIssuer:
    """The card-issuing key and certificate: ``good``, ``expired`` or ``other_ca``.

    ``expired`` has the same CA as ``good`` but a certificate that ended in
    2023; ``other_ca`` is issued by a different test CA (what the deployment
    does not trust).
    """
    if variant not in ("good", "expired", "other_ca"):
        raise ValueError(f"unknown issuer variant {variant!r}")
    ca = authority(
        generation, "Renkei Other CA" if variant == "other_ca" else "Renkei Test Card CA"
    )
    key = _new_key(generation)
    validity = _EXPIRED_VALIDITY if variant == "expired" else _CARD_VALIDITY
    cert = _certificate(
        _name(f"Renkei test card issuing key G{generation} {variant}"),
        key,
        ca.cert.subject,
        ca.key,
        validity,
        ca=False,
    )
    return CardIssuer(generation, ca, key, cert)
