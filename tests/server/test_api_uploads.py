"""Uploads of municipality notice files: signed receipts, idempotent re-upload, limits."""

from __future__ import annotations

import hashlib
from urllib.parse import quote

import pytest

from common import statement
from server.app import create_app
from tests.server.conftest import (
    API_A,
    API_B,
    ApiTester,
    api_enroll,
    api_init_data,
    api_municipality_file,
)

UPLOADS = "/api/v1/uploads"
OCTETS = "application/octet-stream"


def _upload(client, data: bytes, name: str = "notice.csv", **headers):
    sent = {"Content-Type": OCTETS, "Renkei-File-Name": quote(name), **headers}
    return client.post(UPLOADS, data, headers=sent)


def test_upload_answers_a_signed_receipt(api, api_terminal):
    terminal, client = api_terminal(API_A)
    data = api_municipality_file(API_A, 12)
    reply = _upload(client, data, "千代田区-20261127.csv")
    assert reply.status_code == 201
    body = statement.verify(reply.get_json(), api.services.signing_key.public_key())
    assert body["type"] == "municipality-receipt"
    assert body["lasdec"] == API_A
    assert body["terminal_id"] == terminal.terminal_id
    assert body["file_name"] == "千代田区-20261127.csv"
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["size"] == len(data)
    assert len(body["accepted"]) == body["records"] == 12
    assert body["rejected"] == [] and body["file_error"] is None
    assert reply.headers["Location"] == f"{UPLOADS}/{body['upload_id']}/receipt"


def test_same_bytes_again_answer_200_with_the_same_receipt(api, api_terminal):
    _, client = api_terminal(API_A)
    data = api_municipality_file(API_A, 5)
    first = _upload(client, data)
    api.clock.advance(3600)
    again = _upload(client, data, "renamed.csv")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.get_json() == first.get_json()


def test_receipt_can_be_fetched_again_only_by_its_municipality(api_terminal):
    _, a = api_terminal(API_A)
    _, a2 = api_terminal(API_A)
    _, b = api_terminal(API_B)
    receipt = _upload(a, api_municipality_file(API_A, 3)).get_json()
    path = f"{UPLOADS}/{receipt['statement']['upload_id']}/receipt"
    assert a.get(path).get_json() == receipt
    assert a2.get(path).get_json() == receipt  # another terminal of the same municipality
    reply = b.get(path)
    assert (reply.status_code, reply.get_json()["error"]["code"]) == (404, "upload.not_found")
    assert a.get(f"{UPLOADS}/up_0000000000000000/receipt").status_code == 404


def test_a_bad_file_still_gets_a_receipt_naming_the_problem(api, api_terminal):
    _, client = api_terminal(API_A)
    reply = _upload(client, b"this is not a notice file\r\n")
    assert reply.status_code == 201
    body = reply.get_json()["statement"]
    assert body["file_error"]["code"].startswith("file.")
    assert body["accepted"] == []


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"Renkei-File-Name": ""}, 400, "upload.file_name"),
        ({"Renkei-File-Name": "../etc/passwd"}, 400, "upload.file_name"),
        ({"Renkei-File-Name": "a%2Fb.csv"}, 400, "upload.file_name"),
        ({"Renkei-File-Name": "a%0Ab.csv"}, 400, "upload.file_name"),
        ({"Renkei-File-Name": "%FF.csv"}, 400, "upload.file_name"),
        ({"Renkei-File-Name": ".."}, 400, "upload.file_name"),
        ({"Content-Type": "multipart/form-data; boundary=x"}, 415, "request.media_type"),
    ],
)
def test_bad_upload_requests(api_terminal, headers, status, code):
    _, client = api_terminal(API_A)
    sent = {"Content-Type": OCTETS, "Renkei-File-Name": "ok.csv", **headers}
    reply = client.post(UPLOADS, api_municipality_file(API_A, 1), headers=sent)
    assert reply.status_code == status
    assert reply.get_json()["error"]["code"] == code


def test_upload_without_a_file_name_header(api_terminal):
    _, client = api_terminal(API_A)
    reply = client.post(UPLOADS, b"x", headers={"Content-Type": OCTETS})
    assert (reply.status_code, reply.get_json()["error"]["code"]) == (400, "upload.file_name")


def test_unsigned_upload_is_refused_and_nothing_is_stored(api):
    reply = _upload(api, api_municipality_file(API_A, 1))
    assert reply.status_code == 401
    assert not any(api.services.config.blob_dir.rglob("*"))


def test_oversized_upload_is_413_before_anything_is_stored(tmp_path, api_clock):
    config = api_init_data(tmp_path / "small", max_upload_bytes=4096)
    app = create_app(config, clock=api_clock)
    tester = ApiTester(app, api_clock)
    terminal, key = api_enroll(tester.services.storage, API_A, api_clock())
    client = tester.as_terminal(key, terminal.terminal_id)
    data = api_municipality_file(API_A, 20)
    assert len(data) > 4096
    reply = _upload(client, data)
    app.extensions["renkei"].storage.dispose()
    assert reply.status_code == 413
    assert reply.get_json()["error"]["code"] == "request.too_large"
    assert not any(config.blob_dir.rglob("*"))


def test_just_under_the_limit_is_accepted(tmp_path, api_clock):
    data = api_municipality_file(API_A, 2)
    config = api_init_data(tmp_path / "exact", max_upload_bytes=len(data))
    app = create_app(config, clock=api_clock)
    tester = ApiTester(app, api_clock)
    terminal, key = api_enroll(tester.services.storage, API_A, api_clock())
    reply = _upload(tester.as_terminal(key, terminal.terminal_id), data)
    app.extensions["renkei"].storage.dispose()
    assert reply.status_code == 201
