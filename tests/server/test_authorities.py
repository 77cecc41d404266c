"""Which names a signed request may address (server.authorities), from settings and certificates."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.authorities import canonical_authority, certificate_names, normalize_authority, pin_for
from server.tls import make_dev_ca, make_server_cert


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("renkei.example", "renkei.example"),
        ("Renkei.EXAMPLE:443", "renkei.example"),
        ("renkei.example:0443", "renkei.example"),
        ("renkei.example:8443", "renkei.example:8443"),
        ("renkei.example:08443", "renkei.example:8443"),
        ("10.1.2.3:8443", "10.1.2.3:8443"),
        ("[0:0:0::1]", "[::1]"),
        ("[FE80::1]:8443", "[fe80::1]:8443"),
        (" lb.example ", "lb.example"),
    ],
)
def test_normalize(text: str, expected: str):
    assert normalize_authority(text) == expected


@pytest.mark.parametrize(
    "text", ["", "https://x", "x:0", "x:65536", "::1", "[::g]", "a/b", "x:y", "user@x", "*"]
)
def test_normalize_refuses(text: str):
    with pytest.raises(ValueError):
        normalize_authority(text)


def test_canonical_authority_elides_the_schemes_default_port():
    assert canonical_authority("X.test", 443) == "x.test"
    assert canonical_authority("x.test", 80, scheme="http") == "x.test"
    assert canonical_authority("x.test", 80) == "x.test:80"
    assert canonical_authority("[::1]", None) == "[::1]"


def _certificate(path: Path, names: list[x509.GeneralName] | None) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "renkei.example")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_the_dev_certificates_names(tmp_path: Path):
    ca_cert, ca_key = make_dev_ca(tmp_path)
    cert, _ = make_server_cert(tmp_path, ca_cert, ca_key, hostnames=["Renkei.test"])
    pin = pin_for((), tls_cert=cert, bind="0.0.0.0:8443")
    assert pin.accepted == {
        "renkei.test:8443",
        "localhost:8443",
        "127.0.0.1:8443",
        "[::1]:8443",
    }
    assert pin_for((), tls_cert=cert, bind="[::]:443").allows("renkei.test")


def test_wildcards_are_skipped_and_a_setting_wins(tmp_path: Path):
    import ipaddress

    cert = _certificate(
        tmp_path / "c.pem",
        [
            x509.DNSName("*.lgwan.example"),
            x509.DNSName("renkei.lgwan.example"),
            x509.IPAddress(ipaddress.ip_address("10.0.0.5")),
        ],
    )
    assert certificate_names(cert) == ("renkei.lgwan.example", "10.0.0.5")
    assert pin_for((), tls_cert=cert, bind="10.0.0.5:443").accepted == {
        "renkei.lgwan.example",
        "10.0.0.5",
    }
    setting = pin_for(("lb.example",), tls_cert=cert, bind="10.0.0.5:443")
    assert (setting.accepted, setting.code) == ({"lb.example"}, "pin.setting")
    assert setting.describe() == "lb.example"


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda tmp: None, "pin.no_name"),
        (lambda tmp: tmp / "missing.pem", "pin.certificate_unreadable"),
        (lambda tmp: _certificate(tmp / "nosan.pem", None), "pin.certificate_names_nothing"),
        (
            lambda tmp: _certificate(tmp / "wild.pem", [x509.DNSName("*.x.example")]),
            "pin.certificate_names_nothing",
        ),
    ],
)
def test_nothing_known_is_an_empty_pin_that_says_why(tmp_path: Path, make, code: str):
    pin = pin_for((), tls_cert=make(tmp_path), bind="127.0.0.1:8443")
    assert (pin.accepted, pin.code) == (frozenset(), code)
    assert "set authorities" in pin.describe()
    assert str(tmp_path) not in pin.describe()  # a client is never told a server's paths
    assert not pin.allows("localhost:8443")
