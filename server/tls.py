"""A local certificate authority and server certificate, for demos and tests only.

Production servers use the certificate the ministry's PKI issues for the
server's LGWAN name.  ``renkei-server init --dev-tls`` calls this module so
that a demo or a test run gets real TLS anyway: the terminal trusts exactly
this CA (or pins :func:`fingerprint` of the server certificate), never the
system store.

Keys are ECDSA P-256 — small, fast, accepted by every TLS stack the appliance
and browsers use.  Private keys are PKCS#8 PEM, unencrypted (gunicorn reads
them unattended), written atomically with mode 0600 in a folder created 0700;
they are never printed or logged.

Files in ``folder``: ``ca.crt``, ``ca.key``, ``server.crt``, ``server.key``.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.atomicwrite import write_bytes

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "SERVER_CERT",
    "SERVER_KEY",
    "fingerprint",
    "make_dev_ca",
    "make_server_cert",
]

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"

#: Always in the server certificate, so a demo on one machine just works.
DEFAULT_HOSTNAMES = ("localhost",)
DEFAULT_IPS = ("127.0.0.1", "::1")

CA_VALIDITY = datetime.timedelta(days=5 * 365)
#: The longest lifetime public CAs may issue (CA/Browser Forum); re-run init to renew.
SERVER_VALIDITY = datetime.timedelta(days=397)
#: Back-dating covers a client whose clock is a little behind the server's.
BACKDATE = datetime.timedelta(minutes=5)


def _now(now: datetime.datetime | None) -> datetime.datetime:
    return now if now is not None else datetime.datetime.now(datetime.UTC)


def _folder(folder: str | os.PathLike[str]) -> Path:
    path = Path(folder)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_bytes(path, pem, mode=0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    write_bytes(path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def make_dev_ca(
    folder: str | os.PathLike[str], *, now: datetime.datetime | None = None
) -> tuple[Path, Path]:
    """Make (or reuse) the demo CA in ``folder``; return ``(ca_cert_path, ca_key_path)``.

    An existing CA is kept, so re-running ``init --dev-tls`` does not break
    terminals that already trust it.  A CA certificate without its key is an
    error (nothing could be signed with it); a key without a certificate is a
    leftover of an interrupted run and is replaced.
    """
    folder = _folder(folder)
    cert_path, key_path = folder / CA_CERT, folder / CA_KEY
    if cert_path.exists():
        if not key_path.exists():
            raise FileExistsError(
                f"{cert_path} exists but {key_path} does not; remove {cert_path} to make a new CA"
            )
        return cert_path, key_path

    start = _now(now) - BACKDATE
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "renkei demo"),
            x509.NameAttribute(NameOID.COMMON_NAME, "renkei dev CA (not for production)"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def _subject_alt_names(hostnames: Sequence[str], ips: Sequence[str]) -> tuple[list[str], list]:
    """DNS names and IP addresses, defaults included, duplicates dropped, order kept."""
    names: list[str] = []
    addresses: list = []
    for text in (*hostnames, *DEFAULT_HOSTNAMES, *ips, *DEFAULT_IPS):
        text = text.strip()
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            name = text.lower().rstrip(".")
            if not name:
                raise ValueError("an empty host name cannot go into a certificate") from None
            if name not in names:
                names.append(name)
        else:
            if address not in addresses:
                addresses.append(address)
    return names, addresses


def make_server_cert(
    folder: str | os.PathLike[str],
    ca_cert_path: str | os.PathLike[str],
    ca_key_path: str | os.PathLike[str],
    hostnames: Sequence[str] = (),
    ips: Sequence[str] = (),
    *,
    now: datetime.datetime | None = None,
) -> tuple[Path, Path]:
    """Issue a server certificate from the demo CA; return ``(cert_path, key_path)``.

    The certificate names every host name and IP address given, plus
    ``localhost``, ``127.0.0.1`` and ``::1``; an IP given among the host names is
    filed as an IP.  A new key and certificate replace any in ``folder``
    (clients trust the CA, so they keep working).
    """
    folder = _folder(folder)
    ca_cert = x509.load_pem_x509_certificate(Path(ca_cert_path).read_bytes())
    ca_key = serialization.load_pem_private_key(Path(ca_key_path).read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_key_path} is not an ECDSA key")
    names, addresses = _subject_alt_names(hostnames, ips)

    start = _now(now) - BACKDATE
    end = min(start + SERVER_VALIDITY, ca_cert.not_valid_after_utc)
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    san = [x509.DNSName(name) for name in names] + [x509.IPAddress(a) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / SERVER_CERT, folder / SERVER_KEY
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def fingerprint(cert_path: str | os.PathLike[str]) -> str:
    """SHA-256 of the certificate's DER encoding, lowercase hex: the value a terminal pins."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
