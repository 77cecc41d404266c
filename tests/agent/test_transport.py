"""HttpsTransport against the real server under gunicorn with TLS, and against servers that misbehave.

The server's certificate names ``renkei.test``; the transport connects to
127.0.0.1 (from dnsmasq, or an injected resolver) and checks the certificate
against the name.  The failures a real server will not produce on demand —
a 503 with Retry-After, a body cut short, a server that accepts and never
answers — come from tiny servers in this file, over the same TLS.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest

from appliance.agent.preflight import make_resolver
from appliance.agent.transport import HttpsTransport, TransportError, load_private_key
from common import statement
from server.enrollment import find_terminal
from server.tls import make_dev_ca
from tests.agent.conftest import AGENT_VERSION, LOOPBACK, SERVER_NAME, free_port
from tests.server.conftest import API_A, API_B, API_C, api_municipality_file

pytestmark = pytest.mark.slow

MAX_UPLOAD = 100_000
FAILED_AUTH_LIMIT = 3
FAILED_AUTH_PERIOD = 600


@pytest.fixture(scope="module")
def agent_server_env() -> dict[str, str]:
    return {
        "RENKEI_SERVER_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "RENKEI_SERVER_FAILED_AUTH_LIMIT": str(FAILED_AUTH_LIMIT),
        "RENKEI_SERVER_FAILED_AUTH_PERIOD": str(FAILED_AUTH_PERIOD),
    }


@pytest.fixture(scope="module")
def batch_a(agent_server) -> tuple[dict, bytes]:  # type: ignore[no-untyped-def]
    """API_A's batch (never acknowledged in this module) and its bytes, fetched once."""
    with agent_server.transport(agent_server.enroll(API_A)) as transport:
        (batch,) = transport.list_batches()
        sink = io.BytesIO()
        transport.download(batch["batch_id"], sink)
    return batch, sink.getvalue()


def raises(call, *args, **kwargs) -> TransportError:  # type: ignore[no-untyped-def]
    with pytest.raises(TransportError) as caught:
        call(*args, **kwargs)
    return caught.value


# --- the daily cycle against the real server -----------------------------------------------------


def test_cycle_over_tls_with_the_name_from_lgwan_dns(agent_server, lgwan_dns):
    """list → manifest → download → ack, the server's name resolved by dnsmasq, checked by TLS."""
    terminal = agent_server.enroll(API_B)
    resolve = make_resolver([lgwan_dns.address], timeout=2)
    with agent_server.transport(terminal, resolve=resolve) as transport:
        assert abs(transport.server_time() - time.time()) < 5
        (batch,) = transport.list_batches()
        signed = transport.manifest(batch["batch_id"])
        manifest = statement.verify(signed, agent_server.server_key.public_key())
        sink = io.BytesIO()
        written = transport.download(batch["batch_id"], sink)
        data = sink.getvalue()
        assert written == len(data) == manifest["size"] == batch["size"]
        assert hashlib.sha256(data).hexdigest() == manifest["sha256"]

        acked = transport.acknowledge(batch["batch_id"], manifest["sha256"])
        again = transport.acknowledge(batch["batch_id"], manifest["sha256"])
        assert acked["acknowledged_by"] == terminal.terminal_id
        assert again["acknowledged_at"] == acked["acknowledged_at"]
        assert transport.list_batches() == []
        assert [b["batch_id"] for b in transport.list_batches(include_acknowledged=True)] == [
            batch["batch_id"]
        ]
    seen = find_terminal(agent_server.storage, terminal.terminal_id)
    assert seen is not None and seen.agent_version == AGENT_VERSION


def test_upload_is_signed_and_idempotent(agent_server):
    terminal = agent_server.enroll(API_A)
    data = api_municipality_file(API_A, 3, seed=41)
    with agent_server.transport(terminal) as transport:
        status, receipt = transport.upload(data, file_name="千代田区 20261127.csv")
        again_status, again = transport.upload(data, file_name="千代田区 20261127.csv")
        fetched = transport.receipt(receipt["statement"]["upload_id"])
    body = statement.verify(receipt, agent_server.server_key.public_key())
    assert (status, again_status) == (201, 200)
    assert again == receipt == fetched
    assert body["file_name"] == "千代田区 20261127.csv"
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert len(body["accepted"]) == 3 and body["terminal_id"] == terminal.terminal_id


def test_key_loads_from_pem(agent_server, tmp_path):
    from cryptography.hazmat.primitives import serialization

    terminal = agent_server.enroll(API_A)
    pem = terminal.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "terminal.key").write_bytes(pem)
    (tmp_path / "ca.crt").write_bytes(agent_server.ca_file.read_bytes())
    with agent_server.transport(terminal, key=load_private_key(tmp_path / "terminal.key")) as t:
        assert isinstance(t.list_batches(), list)
    with pytest.raises(ValueError, match="not an unencrypted PEM private key"):
        load_private_key(tmp_path / "ca.crt")
    with pytest.raises(ValueError, match="must be Ed25519"):
        load_private_key(agent_server.tls_dir / "server.key")  # ECDSA


# --- downloads: resume, If-Range, restart --------------------------------------------------------


def test_download_resumes_from_an_offset_with_206(agent_server, batch_a):
    batch, whole = batch_a
    half = len(whole) // 2
    with agent_server.transport(agent_server.enroll(API_A)) as transport:
        transport.list_batches()  # remembers the ETag (= SHA-256) for If-Range
        sink = io.BytesIO(whole[:half])
        sink.seek(0, io.SEEK_END)
        written = transport.download(batch["batch_id"], sink, offset=half)
        explicit = io.BytesIO()
        transport.download(batch["batch_id"], explicit, offset=half, etag=batch["sha256"])
    assert written == len(whole) - half
    assert sink.getvalue() == whole
    assert explicit.getvalue() == whole[half:]


def test_resume_whose_if_range_does_not_match_means_start_over(agent_server, batch_a):
    """If-Range with another ETag: the server sends the whole file (200); nothing is written."""
    batch, whole = batch_a
    with agent_server.transport(agent_server.enroll(API_A)) as transport:
        sink = io.BytesIO(b"stale")
        error = raises(transport.download, batch["batch_id"], sink, offset=5, etag="0" * 64)
        assert (error.code, error.status, error.restart, error.retryable) == (
            "download.restart",
            200,
            True,
            True,
        )
        assert sink.getvalue() == b"stale"
        fresh = io.BytesIO()
        assert transport.download(batch["batch_id"], fresh) == len(whole)  # same transport, again
    assert fresh.getvalue() == whole


@pytest.mark.parametrize("past_end", [0, 1])
def test_resume_at_or_past_the_end_answers_416_and_means_start_over(
    agent_server, batch_a, past_end
):
    """The server's 416 carries no Content-Range, so 'already complete' cannot be told apart."""
    batch, whole = batch_a
    with agent_server.transport(agent_server.enroll(API_A)) as transport:
        error = raises(
            transport.download,
            batch["batch_id"],
            io.BytesIO(),
            offset=len(whole) + past_end,
            etag=batch["sha256"],
        )
        assert (error.code, error.status, error.restart) == ("download.restart", 416, True)
        assert transport.list_batches()  # the connection (or a new one) still works


def test_server_side_failure_is_retryable(agent_server):
    """A 500 from the real server: its batch file vanished from the blob store."""
    terminal = agent_server.enroll(API_C)
    with agent_server.transport(terminal) as transport:
        (batch,) = transport.list_batches()
        agent_server.blobs.path(batch["sha256"]).unlink()
        sink = io.BytesIO()
        error = raises(transport.download, batch["batch_id"], sink)
    assert (error.code, error.status, error.retryable) == ("batch.file_missing", 500, True)
    assert sink.getvalue() == b""


# --- refusals from the real server ---------------------------------------------------------------


def test_clock_skew_is_sig_stale_and_not_retryable(agent_server):
    terminal = agent_server.enroll(API_A)
    late = lambda: time.time() - 3600  # noqa: E731
    with agent_server.transport(terminal, clock=late) as transport:
        assert abs(transport.server_time() - time.time()) < 5  # unsigned: works all the same
        error = raises(transport.list_batches)
    assert (error.code, error.status, error.retryable) == ("sig.stale", 401, False)


def test_too_many_failures_is_429_with_retry_after(agent_server):
    terminal = agent_server.enroll(API_A)
    late = lambda: time.time() - 3600  # noqa: E731
    with agent_server.transport(terminal, clock=late) as transport:
        for _ in range(FAILED_AUTH_LIMIT):
            assert raises(transport.list_batches).code == "sig.stale"
    with agent_server.transport(terminal) as transport:  # clock fixed, still locked out
        error = raises(transport.list_batches)
    assert (error.code, error.status, error.retryable) == ("auth.too_many_failures", 429, True)
    assert error.retry_after == FAILED_AUTH_PERIOD


def test_revoked_terminal_is_not_retryable(agent_server):
    terminal = agent_server.enroll(API_A)
    agent_server.revoke(terminal)
    with agent_server.transport(terminal) as transport:
        error = raises(transport.list_batches)
    assert (error.code, error.status, error.retryable) == ("auth.revoked", 401, False)


@pytest.mark.parametrize(
    ("action", "code", "status"),
    [
        (lambda t: t.manifest("131016-20000101-000001"), "batch.not_found", 404),
        (lambda t: t.acknowledge("131016-20000101-000001", "0" * 64), "batch.not_found", 404),
        (lambda t: t.receipt("up_0000000000000000"), "upload.not_found", 404),
    ],
)
def test_not_found_is_not_retryable(agent_server, action, code, status):
    with agent_server.transport(agent_server.enroll(API_A)) as transport:
        error = raises(action, transport)
    assert (error.code, error.status, error.retryable) == (code, status, False)


def test_ack_with_the_wrong_hash_is_409(agent_server, batch_a):
    batch, _ = batch_a
    with agent_server.transport(agent_server.enroll(API_A)) as transport:
        error = raises(transport.acknowledge, batch["batch_id"], "0" * 64)
        assert transport.list_batches()  # still pending
    assert (error.code, error.status, error.retryable) == ("ack.hash_mismatch", 409, False)


def test_too_large_upload_is_413_and_the_connection_is_replaced(agent_server):
    with agent_server.transport(agent_server.enroll(API_A)) as transport:
        transport.list_batches()
        error = raises(transport.upload, b"x" * (MAX_UPLOAD * 3), file_name="big.csv")
        assert (error.code, error.status, error.retryable) == ("request.too_large", 413, False)
        assert transport.list_batches()  # the server closed that connection; a new one works


def test_keep_alive_connection_closed_by_a_restart_is_reopened(agent_server):
    with agent_server.transport(agent_server.enroll(API_A)) as transport:
        assert transport.list_batches()
        gunicorn = agent_server.gunicorn
        port = gunicorn.port
        os.killpg(gunicorn.process.pid, signal.SIGKILL)  # the kernel closes its connections
        gunicorn.stop()
        gunicorn.start(port=port)  # same port: same URL, same signed authority
        assert transport.list_batches()


# --- network and TLS failures --------------------------------------------------------------------


def test_nothing_listening_is_refused_and_retryable(agent_server):
    terminal = agent_server.enroll(API_A)
    port = free_port()
    with agent_server.transport(terminal, url=f"https://{SERVER_NAME}:{port}") as transport:
        error = raises(transport.list_batches)
    assert (error.code, error.retryable, error.status) == ("net.refused", True, None)


def test_server_that_accepts_and_never_answers_times_out(agent_server):
    terminal = agent_server.enroll(API_A)
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen()
        url = f"https://{SERVER_NAME}:{listener.getsockname()[1]}"
        with agent_server.transport(terminal, url=url, timeout=0.5) as transport:
            started = time.monotonic()
            error = raises(transport.list_batches)
            elapsed = time.monotonic() - started
    assert (error.code, error.retryable) == ("net.timeout", True)
    assert elapsed < 3


def test_certificate_from_another_ca_is_refused_for_good(agent_server, tmp_path):
    other_ca, _ = make_dev_ca(tmp_path / "other")
    with agent_server.transport(agent_server.enroll(API_A), ca_file=other_ca) as transport:
        error = raises(transport.list_batches)
    assert (error.code, error.retryable) == ("net.tls", False)
    assert "certificate" in error.message


def test_certificate_for_another_name_is_refused_for_good(agent_server):
    """The address is right (resolve → 127.0.0.1), the name is not in the certificate."""
    url = f"https://wrong.example:{agent_server.port}"
    with agent_server.transport(agent_server.enroll(API_A), url=url) as transport:
        error = raises(transport.list_batches)
    assert (error.code, error.retryable) == ("net.tls", False)
    assert "wrong.example" in error.message or "mismatch" in error.message


def test_name_unknown_to_lgwan_dns_is_a_dns_error(agent_server, lgwan_dns):
    resolve = make_resolver([lgwan_dns.address], timeout=2)
    url = f"https://missing.test:{agent_server.port}"
    with agent_server.transport(agent_server.enroll(API_A), url=url, resolve=resolve) as transport:
        error = raises(transport.list_batches)
    assert (error.code, error.retryable) == ("net.dns", True)
    assert "missing.test" in error.message


def test_missing_ca_file_is_a_tls_error_at_construction(agent_server, tmp_path):
    error = raises(agent_server.transport, agent_server.enroll(API_A), ca_file=tmp_path / "no.crt")
    assert (error.code, error.retryable) == ("net.tls", False)


@pytest.mark.parametrize("url", ["http://renkei.test", "https://", "https://h/?x=1", "ftp://h"])
def test_server_url_must_be_plain_https(url):
    with pytest.raises(ValueError):
        HttpsTransport(url, terminal_id="t", key=None, ca_file=None)  # type: ignore[arg-type]


# --- a tiny HTTPS server for what the real one will not do on demand -----------------------------


@contextmanager
def tiny_server(agent_server, respond) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """An HTTPS server with the test certificate; ``respond(handler)`` answers every request."""
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            seen.append({**self.headers, "peer-port": str(self.client_address[1])})
            respond(self)

        def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
            pass

    server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(
        agent_server.tls_dir / "server.crt", agent_server.tls_dir / "server.key"
    )
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"https://{SERVER_NAME}:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _answer(handler, status: int, body: bytes, **headers: str) -> None:  # type: ignore[no-untyped-def]
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.mark.parametrize(
    ("status", "body", "retry_after", "code", "hint"),
    [
        (
            503,
            json.dumps({"error": {"code": "maintenance", "message": "back soon"}}).encode(),
            "7",
            "maintenance",
            7.0,
        ),
        (502, b"<html>bad gateway</html>", None, "http.502", None),
        (503, b"", "Wed, 21 Oct 2099 07:28:00 GMT", "http.503", "future"),
    ],
)
def test_5xx_is_retryable_with_retry_after_as_a_hint(
    agent_server, status, body, retry_after, code, hint
):
    headers = {"Retry_After": retry_after} if retry_after else {}
    respond = lambda h: _answer(h, status, body, **headers)  # noqa: E731
    with tiny_server(agent_server, respond) as (url, seen):
        with agent_server.transport(agent_server.enroll(API_A), url=url) as transport:
            error = raises(transport.list_batches)
    assert (error.code, error.status, error.retryable) == (code, status, True)
    if hint == "future":
        assert error.retry_after is not None and error.retry_after > 365 * 86400
    else:
        assert error.retry_after == hint
    # what went over the wire: signed, for this host and port, with the agent's version
    (request,) = seen
    assert request["Host"] == url.removeprefix("https://")
    assert request["Renkei-Agent-Version"] == AGENT_VERSION
    assert 'keyid="t_' in request["Signature-Input"] and "nonce=" in request["Signature-Input"]


def test_download_cut_short_reports_what_was_written(agent_server):
    def respond(handler) -> None:  # type: ignore[no-untyped-def]
        handler.send_response(200)
        handler.send_header("Content-Length", "1000000")
        handler.end_headers()
        handler.wfile.write(b"a" * 300_000)
        handler.wfile.flush()
        handler.close_connection = True
        handler.request.shutdown(socket.SHUT_RDWR)

    with tiny_server(agent_server, respond) as (url, _):
        with agent_server.transport(agent_server.enroll(API_A), url=url) as transport:
            sink = io.BytesIO()
            error = raises(transport.download, "131016-20261127-000001", sink)
    assert (error.code, error.retryable) == ("net.interrupted", True)
    assert error.written == len(sink.getvalue()) > 0
    assert sink.getvalue() == b"a" * error.written


def test_206_for_another_range_means_start_over(agent_server):
    def respond(handler) -> None:  # type: ignore[no-untyped-def]
        _answer(handler, 206, b"xyz", Content_Range="bytes 0-2/10")

    with tiny_server(agent_server, respond) as (url, seen):
        with agent_server.transport(agent_server.enroll(API_A), url=url) as transport:
            sink = io.BytesIO()
            error = raises(transport.download, "b", sink, offset=7, etag="abc")
    assert (error.code, error.restart) == ("download.restart", True)
    assert sink.getvalue() == b""
    assert (seen[0]["Range"], seen[0]["If-Range"]) == ("bytes=7-", '"abc"')


def test_skewed_created_time_comes_from_the_injected_clock(agent_server):
    """The signature's ``created`` is the injected clock, not time.time()."""
    fixed = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    respond = lambda h: _answer(h, 200, b'{"batches": []}')  # noqa: E731
    with tiny_server(agent_server, respond) as (url, seen):
        with agent_server.transport(agent_server.enroll(API_A), url=url, clock=lambda: fixed) as t:
            assert t.list_batches() == []
            assert t.list_batches() == []
    first, second = (request["Signature-Input"] for request in seen)
    assert f"created={int(fixed)}" in first and f"created={int(fixed)}" in second
    nonce = lambda text: text.split('nonce="')[1].split('"')[0]  # noqa: E731
    assert nonce(first) != nonce(second)
    assert seen[0]["peer-port"] == seen[1]["peer-port"]  # one kept-alive connection


def test_connection_closed_while_idle_is_reopened_and_the_request_signed_anew(agent_server):
    """The server drops the idle connection without saying so (as after its keep-alive timeout)."""

    def respond(handler) -> None:  # type: ignore[no-untyped-def]
        _answer(handler, 200, b'{"batches": []}')
        handler.close_connection = True  # close after answering, with no Connection: close

    with tiny_server(agent_server, respond) as (url, seen):
        with agent_server.transport(agent_server.enroll(API_A), url=url) as transport:
            assert transport.list_batches() == []
            time.sleep(0.1)  # let the close arrive
            assert transport.list_batches() == []
    assert len(seen) == 2  # the dead connection carried nothing to the server
    assert seen[0]["peer-port"] != seen[1]["peer-port"]
    assert seen[0]["Signature"] != seen[1]["Signature"]


@pytest.mark.parametrize(("size", "expected"), [(10, 0), (8, "download.restart")])
def test_416_that_says_the_file_is_complete(agent_server, size, expected):
    """RFC 9110 §15.5.17: a 416 may say the complete length; equal to the offset = done."""
    respond = lambda h: _answer(h, 416, b"", Content_Range=f"bytes */{size}")  # noqa: E731
    with tiny_server(agent_server, respond) as (url, _):
        with agent_server.transport(agent_server.enroll(API_A), url=url) as transport:
            if expected == 0:
                assert transport.download("b", io.BytesIO(), offset=10, etag="abc") == 0
                assert transport.download("b", io.BytesIO(), offset=10, etag="abc") == 0
            else:
                assert raises(transport.download, "b", io.BytesIO(), offset=10).restart
