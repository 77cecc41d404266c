"""The demo CA and server certificate complete real TLS handshakes, and refuse the wrong ones."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from server import tls


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls") / "tls"
    ca_cert, ca_key = tls.make_dev_ca(folder)
    cert, key = tls.make_server_cert(folder, ca_cert, ca_key, ["renkei.test"], ["127.0.0.2"])
    return {"folder": folder, "ca_cert": ca_cert, "ca_key": ca_key, "cert": cert, "key": key}


def client_trusting(cafile=None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies chain and host name
    context.verify_flags |= ssl.VERIFY_X509_STRICT  # the default from Python 3.13
    if cafile is not None:
        context.load_verify_locations(cafile=cafile)
    return context


def handshake(pki, client: ssl.SSLContext, server_hostname: str) -> bytes:
    """Serve one TLS connection on 127.0.0.1; return the peer certificate the client saw."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki["cert"], pki["key"])
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)

        def serve():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                with server.wrap_socket(conn, server_side=True) as stream:
                    stream.sendall(b"ok")
            except (ssl.SSLError, OSError):
                conn.close()  # the client refused us: expected in the failure cases

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with socket.create_connection(listener.getsockname(), timeout=5) as raw:
                with client.wrap_socket(raw, server_hostname=server_hostname) as stream:
                    assert stream.recv(2) == b"ok"
                    return stream.getpeercert(binary_form=True)
        finally:
            thread.join(10)


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "renkei.test", "127.0.0.2"])
def test_client_trusting_only_the_ca_completes_a_handshake(pki, name):
    peer = handshake(pki, client_trusting(pki["ca_cert"]), name)
    assert hashlib.sha256(peer).hexdigest() == tls.fingerprint(pki["cert"])


def test_client_trusting_nothing_fails(pki):
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(pki, client_trusting(None), "localhost")


def test_client_trusting_another_ca_fails(pki, tmp_path):
    other_ca, _ = tls.make_dev_ca(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(pki, client_trusting(other_ca), "localhost")


@pytest.mark.parametrize("name", ["other.example", "renkei.test.evil", "127.0.0.3"])
def test_hostname_mismatch_fails(pki, name):
    with pytest.raises(ssl.SSLCertVerificationError) as caught:
        handshake(pki, client_trusting(pki["ca_cert"]), name)
    assert "mismatch" in str(caught.value).lower()


def test_fingerprint_is_sha256_of_the_der(pki):
    der = ssl.PEM_cert_to_DER_cert(pki["cert"].read_text())
    assert tls.fingerprint(pki["cert"]) == hashlib.sha256(der).hexdigest()
    assert tls.fingerprint(pki["ca_cert"]) != tls.fingerprint(pki["cert"])


def test_certificate_contents(pki):
    cert = x509.load_pem_x509_certificate(pki["cert"].read_bytes())
    ca = x509.load_pem_x509_certificate(pki["ca_cert"].read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["renkei.test", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address(a) for a in ("127.0.0.2", "127.0.0.1", "::1")
    ]
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    assert cert.issuer == ca.subject
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=365) < lifetime <= datetime.timedelta(days=398)
    assert cert.not_valid_after_utc <= ca.not_valid_after_utc
    now = datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_before_utc < now < cert.not_valid_after_utc


def test_key_files_are_private(pki):
    for name in ("ca_key", "key"):
        assert stat.S_IMODE(pki[name].stat().st_mode) == 0o600
        assert pki[name].read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    for name in ("ca_cert", "cert"):
        assert stat.S_IMODE(pki[name].stat().st_mode) == 0o644
    assert stat.S_IMODE(pki["folder"].stat().st_mode) == 0o700
    assert not [p.name for p in pki["folder"].iterdir() if p.name.startswith(".")]


def test_nothing_is_printed(tmp_path, capsys):
    ca_cert, ca_key = tls.make_dev_ca(tmp_path)
    tls.make_server_cert(tmp_path, ca_cert, ca_key)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_the_ca_is_reused_and_the_server_certificate_renewed(tmp_path):
    ca_cert, ca_key = tls.make_dev_ca(tmp_path)
    cert, key = tls.make_server_cert(tmp_path, ca_cert, ca_key)
    first_ca, first_cert = tls.fingerprint(ca_cert), tls.fingerprint(cert)
    assert tls.make_dev_ca(tmp_path) == (ca_cert, ca_key)
    assert tls.fingerprint(ca_cert) == first_ca
    tls.make_server_cert(tmp_path, ca_cert, ca_key, ["new.example"])
    assert tls.fingerprint(cert) != first_cert


def test_a_ca_certificate_without_its_key_is_refused(tmp_path):
    ca_cert, ca_key = tls.make_dev_ca(tmp_path)
    ca_key.unlink()
    with pytest.raises(FileExistsError):
        tls.make_dev_ca(tmp_path)


def test_default_names_only(tmp_path):
    ca_cert, ca_key = tls.make_dev_ca(tmp_path)
    cert, _ = tls.make_server_cert(tmp_path, ca_cert, ca_key, ["127.0.0.1", "LOCALHOST."])
    san = x509.load_pem_x509_certificate(cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(a) for a in san.value.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
