"""Issue #18's probe, again, against the real server: the front (nginx) and gunicorn over TLS.

Each attack the independent probe found is sent as the probe sent it, through
the whole stack a terminal reaches (``tests.server.client.ServerProcess``);
the one that nginx would stop on its own (a chunked body over the limit) is
also sent straight to gunicorn's socket, to show the app holds by itself.
The server's settings come from its environment, as an operator sets them;
the accepted authority is the default one: the dev certificate's names at the
port the front listens on.
"""

from __future__ import annotations

import http.client
import json
import socket
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import statement
from common.httpsig import new_nonce, sign_request
from server.enrollment import find_terminal, recent_auth_failures
from server.keys import load_signing_key
from server.storage import Storage, metadata
from tests.server.client import ServerProcess, SigningClient
from tests.server.conftest import API_A, API_B, api_enroll, api_init_data, api_municipality_file

pytestmark = pytest.mark.slow

LIST = "/api/v1/batches"
UPLOADS = "/api/v1/uploads"
MAX_UPLOAD = 200_000
SERVER_ENV = {"RENKEI_SERVER_MAX_UPLOAD_BYTES": str(MAX_UPLOAD)}


class Live:
    def __init__(self, root: Path):
        # The default pin (no authorities setting): the dev certificate's names, the front's port.
        self.config = api_init_data(root / "srv", tls=True, authorities=())
        self.storage = Storage(self.config.database_url)
        self.server_key = load_signing_key(self.config.signing_key_path)
        self.gunicorn = ServerProcess(
            self.config.data_dir, log_path=root / "gunicorn.log", env=SERVER_ENV
        )

    def terminal(self, lasdec: str = API_A, **options) -> tuple[str, SigningClient]:
        terminal, key = api_enroll(self.storage, lasdec, datetime.now(UTC))
        client = self.gunicorn.client(key=key, key_id=terminal.terminal_id, **options)
        return terminal.terminal_id, client

    def failures(self, terminal_id: str) -> int:
        return recent_auth_failures(
            self.storage, terminal_id, source="127.0.0.1", now=datetime.now(UTC), period=600
        )

    def rows(self) -> dict[str, int]:
        with self.storage.read() as conn:
            return {
                table.name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                for table in metadata.sorted_tables
            }


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    server = Live(tmp_path_factory.mktemp("attacks"))
    server.gunicorn.start()
    yield server
    server.gunicorn.stop()
    server.storage.dispose()


def _upload(client: SigningClient, data: bytes, name: str = "notice.csv"):
    headers = {"Content-Type": "application/octet-stream", "Renkei-File-Name": quote(name)}
    return client.post(UPLOADS, data, headers=headers)


def test_a_request_signed_for_another_name_is_refused(live):
    terminal_id, client = live.terminal()
    port = live.gunicorn.port
    for authority in ("elsewhere.test", f"elsewhere.test:{port}", f"localhost:{port + 1}"):
        with live.gunicorn.client(
            key=client.key, key_id=terminal_id, authority=authority
        ) as forged:
            reply = forged.get(LIST)
        assert (reply.status, reply.error_code) == (401, "sig.authority"), authority
        assert f"localhost:{port}" in reply.json()["error"]["message"]
    assert live.failures(terminal_id) == 3
    for authority in (f"127.0.0.1:{port}", f"LOCALHOST:{port}"):
        with live.gunicorn.client(key=client.key, key_id=terminal_id, authority=authority) as ok:
            assert ok.get(LIST).status == 200, authority


def test_a_raw_control_byte_in_the_agent_version_is_refused(live):
    terminal_id, client = live.terminal(agent_version="1.0\x9b2J")
    with client:
        reply = client.get(LIST)
    assert (reply.status, reply.error_code) == (400, "request.agent_version")
    assert find_terminal(live.storage, terminal_id).agent_version is None
    assert live.failures(terminal_id) == 0


def test_a_file_name_with_a_bidirectional_override_is_refused(live):
    _, client = live.terminal()
    with client:
        reply = _upload(client, api_municipality_file(API_A, 1), "evil\u202ecsv.exe")
        good = _upload(client, api_municipality_file(API_A, 1), "千代田区-20261127.csv")
    assert (reply.status, reply.error_code) == (400, "upload.file_name")
    assert good.status == 201


def test_made_up_key_ids_write_nothing(live):
    _, client = live.terminal()
    before = live.rows()
    with client:
        for number in range(40):
            reply = client.get(LIST, key_id=f"t_{number:016x}", key=Ed25519PrivateKey.generate())
            assert (reply.status, reply.error_code) == (401, "sig.unknown_key")
    assert live.rows() == before


def test_another_municipalitys_records_are_rejected(live):
    _, b = live.terminal(API_B)
    with b:
        reply = _upload(b, api_municipality_file(API_A, 3, seed=61))
    assert reply.status == 201
    body = statement.verify(reply.json(), live.server_key.public_key())
    assert body["accepted"] == []
    assert {p["code"] for e in body["rejected"] for p in e["problems"]} == {
        "address.other_municipality"
    }


def _chunked(conn: http.client.HTTPConnection, key, key_id: str, authority: str, data: bytes):
    headers = {
        "Host": authority,
        "Content-Type": "application/octet-stream",
        "Renkei-File-Name": "notice.csv",
        "Transfer-Encoding": "chunked",
        **sign_request(
            "POST",
            f"https://{authority}{UPLOADS}",
            {},
            data,
            key_id=key_id,
            private_key=key,
            created=int(datetime.now(UTC).timestamp()),
            nonce=new_nonce(),
        ),
    }
    conn.putrequest("POST", UPLOADS, skip_host=True, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    try:
        for start in range(0, len(data), 16_384):
            piece = data[start : start + 16_384]
            conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # answered early: read the answer
    response = conn.getresponse()
    return response.status, json.loads(response.read())


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path):
        super().__init__("localhost", timeout=30)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def test_a_chunked_body_over_the_limit_is_413_and_not_a_failure(live):
    terminal_id, client = live.terminal()
    authority = f"127.0.0.1:{live.gunicorn.port}"
    data = b"x" * (MAX_UPLOAD + 70_000)
    https = http.client.HTTPSConnection(
        "127.0.0.1", live.gunicorn.port, context=client.context, timeout=30
    )
    try:  # through the front, as a terminal reaches the server
        status, body = _chunked(https, client.key, terminal_id, authority, data)
    finally:
        https.close()
    assert (status, body["error"]["code"]) == (413, "request.too_large")
    app = _UnixConnection(live.gunicorn.app_socket)
    try:  # straight to gunicorn: the app itself refuses it, before the signature check
        status, body = _chunked(app, client.key, terminal_id, authority, data)
    finally:
        app.close()
    assert (status, body["error"]["code"]) == (413, "request.too_large")
    assert live.failures(terminal_id) == 0
    with client:
        small = api_municipality_file(API_A, 2, seed=62)
        assert _upload(client, small).status == 201  # and the terminal carries on
