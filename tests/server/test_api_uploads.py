"""Uploads of municipality notice files: signed receipts, idempotent re-upload, limits."""

from __future__ import annotations

import hashlib
from urllib.parse import quote

import pytest

from common import statement
from server.app import create_app
from server.enrollment import recent_auth_failures
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
        # issue #18: C1 controls, DEL, bidirectional and other format characters, separators
        ({"Renkei-File-Name": "a%C2%9B31m.csv"}, 400, "upload.file_name"),  # U+009B CSI
        ({"Renkei-File-Name": "a%C2%85.csv"}, 400, "upload.file_name"),  # U+0085 NEL
        ({"Renkei-File-Name": "a%7F.csv"}, 400, "upload.file_name"),
        ({"Renkei-File-Name": "evil%E2%80%AEvsc.exe"}, 400, "upload.file_name"),  # U+202E RLO
        ({"Renkei-File-Name": "a%E2%81%A6b.csv"}, 400, "upload.file_name"),  # U+2066 LRI
        ({"Renkei-File-Name": "a%D8%9Cb.csv"}, 400, "upload.file_name"),  # U+061C ALM
        ({"Renkei-File-Name": "a%E2%80%8Fb.csv"}, 400, "upload.file_name"),  # U+200F RLM
        ({"Renkei-File-Name": "a%E2%80%8Bb.csv"}, 400, "upload.file_name"),  # U+200B ZWSP (Cf)
        ({"Renkei-File-Name": "%EF%BB%BFa.csv"}, 400, "upload.file_name"),  # U+FEFF BOM (Cf)
        ({"Renkei-File-Name": "a%F3%A0%80%81.csv"}, 400, "upload.file_name"),  # U+E0001 tag
        ({"Renkei-File-Name": "a%E2%80%A8b.csv"}, 400, "upload.file_name"),  # U+2028 (Zl)
        ({"Renkei-File-Name": "a%ED%A0%80b.csv"}, 400, "upload.file_name"),  # a surrogate
        ({"Renkei-File-Name": "a%5Cb.csv"}, 400, "upload.file_name"),  # backslash
        ({"Renkei-File-Name": "%E5%8D%83" * 86}, 400, "upload.file_name"),  # 258 bytes
        ({"Renkei-File-Name": "a\x9bb.csv"}, 400, "upload.file_name"),  # raw, not encoded
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


def test_a_255_byte_japanese_file_name_is_accepted(api_terminal):
    _, client = api_terminal(API_A)
    name = "千" * 83 + ".csv"  # 253 bytes of UTF-8
    reply = _upload(client, api_municipality_file(API_A, 1), name)
    assert reply.status_code == 201
    assert reply.get_json()["statement"]["file_name"] == name


def test_a_bad_file_name_stores_nothing(api, api_terminal):
    _, client = api_terminal(API_A)
    reply = _upload(client, api_municipality_file(API_A, 1), "evil\u202ecsv.exe")
    assert (reply.status_code, reply.get_json()["error"]["code"]) == (400, "upload.file_name")
    assert "U+202E" in reply.get_json()["error"]["message"]
    assert not any(api.services.config.blob_dir.rglob("*"))


# --- issue #18: a body over the limit is 413, chunked or not, and never an auth failure -----------


@pytest.fixture
def small_server(tmp_path, api_clock):
    """``make(limit)``: an app whose upload limit is ``limit`` bytes, a terminal and its tester."""
    made = []

    def make(limit: int):
        config = api_init_data(tmp_path / f"small{len(made)}", max_upload_bytes=limit)
        tester = ApiTester(create_app(config, clock=api_clock), api_clock)
        made.append(tester)
        terminal, key = api_enroll(tester.services.storage, API_A, api_clock())
        return tester, terminal, tester.as_terminal(key, terminal.terminal_id)

    yield make
    for tester in made:
        tester.services.storage.dispose()


def _chunked_upload(client, data: bytes, **signing):
    """What gunicorn hands the app for ``Transfer-Encoding: chunked``: no Content-Length, the
    decoded body in a stream it ends itself (``wsgi.input_terminated``)."""
    headers = {"Content-Type": OCTETS, "Renkei-File-Name": "notice.csv"}
    return client.request("POST", UPLOADS, data, headers=headers, chunked=True, **signing)


def test_a_chunked_body_over_the_limit_is_413_not_a_failed_signature(small_server, api_clock):
    data = api_municipality_file(API_A, 20)
    tester, terminal, client = small_server(len(data) - 1)
    reply = _chunked_upload(client, data)
    assert (reply.status_code, reply.get_json()["error"]["code"]) == (413, "request.too_large")
    storage = tester.services.storage
    failures = recent_auth_failures(
        storage, terminal.terminal_id, source="127.0.0.1", now=api_clock(), period=600
    )
    assert failures == 0
    assert not any(tester.services.config.blob_dir.rglob("*"))


def test_a_chunked_body_of_exactly_the_limit_is_read_whole(small_server):
    data = api_municipality_file(API_A, 20)
    _, _, client = small_server(len(data))
    reply = _chunked_upload(client, data)
    assert reply.status_code == 201, reply.get_json()
    assert len(reply.get_json()["statement"]["accepted"]) == 20


def test_a_content_length_over_the_limit_is_413_and_not_counted(small_server, api_clock):
    data = api_municipality_file(API_A, 20)
    tester, terminal, client = small_server(len(data) - 1)
    for _ in range(tester.services.config.failed_auth_limit + 1):
        reply = _upload(client, data)
        assert (reply.status_code, reply.get_json()["error"]["code"]) == (413, "request.too_large")
    failures = recent_auth_failures(
        tester.services.storage,
        terminal.terminal_id,
        source="127.0.0.1",
        now=api_clock(),
        period=600,
    )
    assert failures == 0
    assert _upload(client, api_municipality_file(API_A, 1)).status_code == 201  # not locked out


# --- issue #18: a terminal reports its own municipality's notices only ----------------------------


def test_another_municipalitys_file_is_rejected_record_by_record(api, api_terminal):
    """The probe: B's terminal uploads records whose reporting municipality is 131016."""
    _, b = api_terminal(API_B)
    data = api_municipality_file(API_A, 4)
    reply = _upload(b, data)
    assert reply.status_code == 201  # the receipt is the answer
    body = statement.verify(reply.get_json(), api.services.signing_key.public_key())
    assert body["lasdec"] == API_B and body["records"] == 4
    assert body["accepted"] == [] and body["duplicates"] == []
    assert len(body["rejected"]) == 4
    for entry in body["rejected"]:
        assert [p["code"] for p in entry["problems"]] == ["address.other_municipality"]
        assert entry["problems"][0]["message"].startswith("住居地の全国地方公共団体コード「131016")
    _, a = api_terminal(API_A)
    assert len(_upload(a, data).get_json()["statement"]["accepted"]) == 4  # A may send them
