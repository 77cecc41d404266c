"""The real server: gunicorn on loopback with TLS, a real SQLite database, a signing HTTPS client.

One server runs for the module (the restart test starts its own); each test
enrolls its own terminals, so the tests do not depend on one another.  The
client trusts only the test's CA.  Times are real: the server reads the
system clock, the client signs with it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import statement
from server.blobs import BlobStore
from server.enrollment import issue_token, revoke_terminal
from server.keys import load_signing_key
from server.storage import Storage
from tests.server.client import GUNICORN_CONF, ServerProcess, SigningClient
from tests.server.conftest import (
    API_A,
    API_B,
    API_C,
    api_enroll,
    api_init_data,
    api_municipality_file,
    api_publish,
)

pytestmark = pytest.mark.slow

LIST = "/api/v1/batches"
UPLOADS = "/api/v1/uploads"
MAX_UPLOAD = 1_000_000
FAILED_AUTH_LIMIT = 5
#: Settings the gunicorn process gets through its environment (as an operator would set them).
SERVER_ENV = {
    "RENKEI_SERVER_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
    "RENKEI_SERVER_FAILED_AUTH_LIMIT": str(FAILED_AUTH_LIMIT),
}


class Live:
    """A running server and what the test needs beside it: its database and keys."""

    def __init__(self, root: Path, *, batches: dict[str, int]):
        self.config = api_init_data(root / "srv", tls=True)
        self.storage = Storage(self.config.database_url)
        self.server_key = load_signing_key(self.config.signing_key_path)
        now = datetime.now(UTC)
        api_publish(self.storage, BlobStore(self.config.blob_dir), self.server_key, now, batches)
        self.gunicorn = ServerProcess(
            self.config.data_dir, log_path=root / "gunicorn.log", env=SERVER_ENV
        )

    def terminal(self, lasdec: str = API_A) -> tuple[str, SigningClient]:
        terminal, key = api_enroll(self.storage, lasdec, datetime.now(UTC))
        return terminal.terminal_id, self.gunicorn.client(key=key, key_id=terminal.terminal_id)

    def close(self) -> None:
        self.gunicorn.stop()
        self.storage.dispose()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    server = Live(tmp_path_factory.mktemp("live"), batches={API_A: 1000, API_B: 2})
    server.gunicorn.start()
    yield server
    server.close()


def _upload(client: SigningClient, data: bytes, name: str = "notice.csv", **signing):
    headers = {"Content-Type": "application/octet-stream", "Renkei-File-Name": quote(name)}
    return client.post(UPLOADS, data, headers=headers, **signing)


# --- enrollment ----------------------------------------------------------------------------------


def _enroll(client: SigningClient, token: str, key: Ed25519PrivateKey, signer=None):
    document = {
        "token": token,
        "public_key": statement.public_key_to_text(key.public_key()),
        "agent_version": "1.0.0",
    }
    return client.post_json("/api/v1/enroll", document, key=signer or key, key_id="enroll")


def test_enrollment_over_https(live):
    now = datetime.now(UTC)
    token = issue_token(live.storage, API_A, now=now, ttl=3600)
    expired = issue_token(live.storage, API_A, now=now - timedelta(hours=2), ttl=3600)
    key = Ed25519PrivateKey.generate()
    with live.gunicorn.client() as client:
        forged = _enroll(client, token, key, signer=Ed25519PrivateKey.generate())
        good = _enroll(client, token, key)
        used = _enroll(client, token, Ed25519PrivateKey.generate())
        late = _enroll(client, expired, Ed25519PrivateKey.generate())
    assert (forged.status, forged.error_code) == (401, "sig.invalid")
    assert good.status == 201
    assert good.json()["server_key"]["key_id"] == statement.key_id(live.server_key.public_key())
    assert (used.status, used.error_code) == (401, "token.used")
    assert (late.status, late.error_code) == (401, "token.expired")
    with live.gunicorn.client(key=key, key_id=good.json()["terminal_id"]) as terminal:
        assert terminal.get(LIST).status == 200


# --- batches -------------------------------------------------------------------------------------


def test_list_download_interrupted_resume_ack_and_redownload(live):
    _, client = live.terminal(API_A)
    with client:
        (batch,) = client.get(LIST).json()["batches"]
        assert batch["records"] == 1000
        manifest = statement.verify(
            client.get(batch["manifest"]).json(), live.server_key.public_key()
        )
        status, head = client.get_interrupted(batch["file"], keep=100_000)
        assert (status, len(head)) == (200, 100_000)
        rest = client.get(
            batch["file"],
            headers={"Range": f"bytes={len(head)}-", "If-Range": f'"{batch["sha256"]}"'},
        )
        assert rest.status == 206
        data = head + rest.body
        assert hashlib.sha256(data).hexdigest() == manifest["sha256"] == batch["sha256"]
        assert len(data) == manifest["size"]

        ack = client.post_json(f"{batch['file']}/ack", {"sha256": manifest["sha256"]})
        assert ack.status == 200 and ack.json()["acknowledged_at"]
        assert client.get(LIST).json()["batches"] == []
        assert [b["batch_id"] for b in client.get(LIST + "?all=1").json()["batches"]] == [
            batch["batch_id"]
        ]
        again = client.get(batch["file"])
        assert (again.status, again.body) == (200, data)


def test_malformed_json_is_400(live):
    _, client = live.terminal(API_B)
    with client:
        (batch,) = client.get(LIST).json()["batches"]
        reply = client.post(
            f"{batch['file']}/ack", b'{"sha256": ', headers={"Content-Type": "application/json"}
        )
    assert (reply.status, reply.error_code) == (400, "request.malformed_json")


# --- uploads -------------------------------------------------------------------------------------


def test_upload_receipt_and_idempotent_reupload(live):
    terminal_id, client = live.terminal(API_A)
    data = api_municipality_file(API_A, 50, seed=21)
    with client:
        first = _upload(client, data, "20261127.csv")
        again = _upload(client, data, "20261127.csv")
        fetched = client.get(first.headers["location"])
    assert (first.status, again.status, fetched.status) == (201, 200, 200)
    body = statement.verify(first.json(), live.server_key.public_key())
    assert body["terminal_id"] == terminal_id
    assert len(body["accepted"]) == 50
    assert again.json() == first.json() == fetched.json()


def test_oversized_upload_is_413(live):
    _, client = live.terminal(API_A)
    with client:
        reply = _upload(client, os.urandom(MAX_UPLOAD + 1))
        after = client.get(LIST)  # the client (and the server) carry on
    assert (reply.status, reply.error_code) == (413, "request.too_large")
    assert after.status == 200


# --- every auth failure --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "status", "code"),
    [
        ("unsigned", 401, "sig.missing"),
        ("wrong key", 401, "sig.invalid"),
        ("stale, too old", 401, "sig.stale"),
        ("stale, from the future", 401, "sig.stale"),
        ("replay", 401, "auth.replay"),
        ("other municipality's batch", 404, "batch.not_found"),
        ("revoked", 401, "auth.revoked"),
    ],
)
def test_auth_failures(live, case, status, code):
    terminal_id, client = live.terminal(API_A)
    window = live.config.clock_window
    path, signing, headers = LIST, {}, None
    if case == "unsigned":
        headers, signing = {}, None
    elif case == "wrong key":
        signing = {"key": Ed25519PrivateKey.generate()}
    elif case == "stale, too old":
        signing = {"created": int(time.time()) - window - 30}
    elif case == "stale, from the future":
        signing = {"created": int(time.time()) + window + 30}
    elif case == "replay":
        headers = client.signed_headers("GET", LIST)
        assert client.get(LIST, sign=False, headers=headers).status == 200
    elif case == "other municipality's batch":
        _, other = live.terminal(API_B)
        with other:
            (theirs,) = other.get(LIST + "?all=1").json()["batches"]
        path = theirs["file"]
    elif case == "revoked":
        revoke_terminal(live.storage, terminal_id, now=datetime.now(UTC))
    with client:
        if headers is not None:
            reply = client.get(path, sign=False, headers=headers)
        else:
            reply = client.get(path, **signing)
    assert (reply.status, reply.error_code) == (status, code)


def test_too_many_failures_is_429_with_retry_after(live):
    terminal_id, client = live.terminal(API_A)
    wrong = Ed25519PrivateKey.generate()
    with client:
        codes = [client.get(LIST, key=wrong).status for _ in range(FAILED_AUTH_LIMIT)]
        locked = client.get(LIST)
    assert codes == [401] * FAILED_AUTH_LIMIT
    assert (locked.status, locked.error_code) == (429, "auth.too_many_failures")
    assert int(locked.headers["retry-after"]) == live.config.failed_auth_period


def test_access_log_has_no_personal_data(live):
    terminal_id, client = live.terminal(API_A)
    name = "ヤマダタロウ_山田太郎.csv"
    with client:
        assert _upload(client, api_municipality_file(API_A, 2, seed=33), name).status == 201
        assert client.get(LIST + "?all=1&who=YAMADA").status == 200
    time.sleep(0.2)  # the access log line is written after the response
    log = live.gunicorn.log_path.read_text(encoding="utf-8")
    mine = [line for line in log.splitlines() if f"terminal={terminal_id}" in line]
    assert any('"POST /api/v1/uploads ' in line for line in mine)
    assert any('"GET /api/v1/batches ' in line for line in mine)
    for secret in ("山田", "ヤマダ", quote("山田"), "YAMADA", "all=1"):
        assert secret not in log


# --- restart ---------------------------------------------------------------------------------------


def test_restart_between_upload_and_ack_loses_nothing(tmp_path):
    live = Live(tmp_path, batches={API_C: 30})
    try:
        live.gunicorn.start()
        terminal_id, client = live.terminal(API_C)
        data = api_municipality_file(API_C, 20, seed=44)
        with client:
            (batch,) = client.get(LIST).json()["batches"]
            downloaded = client.get(batch["file"]).body
            receipt = _upload(client, data)
            replay_headers = client.signed_headers("GET", LIST)
            assert client.get(LIST, sign=False, headers=replay_headers).status == 200
        assert receipt.status == 201
        old_group = live.gunicorn.process.pid

        live.gunicorn.restart()
        with pytest.raises(ProcessLookupError):
            os.killpg(old_group, 0)  # no process of the old server is left

        assert client.port == live.gunicorn.port  # same port: the old signatures still match
        with client:
            replay = client.get(LIST, sign=False, headers=replay_headers)
            ack = client.post_json(
                f"{batch['file']}/ack", {"sha256": hashlib.sha256(downloaded).hexdigest()}
            )
            pending = client.get(LIST).json()["batches"]
            fetched = client.get(receipt.headers["location"])
            again = _upload(client, data)
        assert (replay.status, replay.error_code) == (401, "auth.replay")
        assert ack.status == 200 and ack.json()["acknowledged_by"] == terminal_id
        assert pending == []
        assert fetched.json() == receipt.json() == again.json()
        assert again.status == 200
    finally:
        live.close()


def test_the_log_names_the_terminal_not_the_file(live):
    """Errors are logged without request bodies: a malformed upload leaves no trace of its bytes."""
    _, client = live.terminal(API_A)
    marker = "ZZ-PERSONAL-MARKER-" + json.dumps(time.time())
    with client:
        _upload(client, marker.encode())
    time.sleep(0.2)
    assert marker not in live.gunicorn.log_path.read_text(encoding="utf-8")


# --- the configuration file itself (no server needed) ----------------------------------------------


def _conf(monkeypatch, tmp_path, **env) -> dict:
    import runpy

    for name in list(os.environ):
        if name.startswith("RENKEI_SERVER_") or name in {"WEB_CONCURRENCY"}:
            monkeypatch.delenv(name)
    monkeypatch.setenv("RENKEI_SERVER_DATA_DIR", str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(GUNICORN_CONF))


def test_conf_listens_only_on_the_run_folders_socket_without_tls(monkeypatch, tmp_path):
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    conf = _conf(
        monkeypatch,
        tmp_path,
        RENKEI_SERVER_BIND="0.0.0.0:9443",
        RENKEI_SERVER_RUN_DIR=str(tmp_path / "run"),
        RENKEI_SERVER_TLS_CERT=str(tmp_path / "c.pem"),
        RENKEI_SERVER_TLS_KEY=str(tmp_path / "k.pem"),
        WEB_CONCURRENCY="3",
    )
    # bind and TLS are the front's (nginx): gunicorn has one Unix socket, for it alone.
    assert conf["bind"] == [f"unix:{tmp_path / 'run' / 'app.sock'}"]
    assert conf["umask"] == 0o077
    assert "certfile" not in conf and "keyfile" not in conf and "ssl_context" not in conf
    assert conf["workers"] == 3
    assert conf["worker_class"] == "gthread"
    assert conf["preload_app"] is True
    assert conf["control_socket_disable"] is True
    assert conf["wsgi_app"] == "server.wsgi:app"


def test_conf_default_socket_and_workers(monkeypatch, tmp_path):
    conf = _conf(monkeypatch, tmp_path)
    assert conf["bind"] == ["unix:/run/renkei-server/app.sock"]
    assert conf["workers"] == 2 * (os.cpu_count() or 1) + 1


def test_access_log_format_has_no_query_string_or_request_line(monkeypatch, tmp_path):
    conf = _conf(monkeypatch, tmp_path)
    fmt = conf["access_log_format"]
    for atom in ("%(r)s", "%(q)s", "%(f)s", "%(a)s"):  # request line and query carry names
        assert atom not in fmt
    assert "%(U)s" in fmt and "{renkei.terminal}e" in fmt
