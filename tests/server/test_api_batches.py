"""Batches: list, download (resumable), manifest, acknowledge, re-download."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from common import statement
from tests.server.conftest import API_A, API_B, api_publish

LIST = "/api/v1/batches"


@pytest.fixture
def published(api, api_terminal):
    """A terminal of API_A with one 40-record batch (and API_B with its own)."""
    services = api.services
    api_publish(
        services.storage, services.blobs, services.signing_key, api.clock(), {API_A: 40, API_B: 3}
    )
    terminal, client = api_terminal(API_A)
    batch = client.get(LIST).get_json()["batches"][0]
    data = services.blobs.get(batch["sha256"])
    return client, batch, data


def _download(client, batch_id, **headers):
    reply = client.get(f"{LIST}/{batch_id}", headers=headers)
    body = reply.get_data()
    reply.close()
    return reply, body


def test_list_shows_the_pending_batch_of_the_callers_municipality(published):
    client, batch, data = published
    assert batch["lasdec"] == API_A
    assert batch["records"] == 40
    assert batch["sequence"] == 1
    assert batch["size"] == len(data)
    assert batch["sha256"] == hashlib.sha256(data).hexdigest()
    assert batch["acknowledged_at"] is None
    assert batch["file"] == f"{LIST}/{batch['batch_id']}"
    assert batch["manifest"] == f"{LIST}/{batch['batch_id']}/manifest"


def test_download_whole_file_with_etag_and_digest(published):
    client, batch, data = published
    reply, body = _download(client, batch["batch_id"])
    assert reply.status_code == 200
    assert body == data
    assert reply.headers["ETag"] == f'"{batch["sha256"]}"'
    assert reply.headers["Accept-Ranges"] == "bytes"
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert reply.headers["Repr-Digest"] == f"sha-256=:{digest}:"
    assert reply.mimetype == "application/octet-stream"


def test_download_resumes_with_range_and_if_range(published):
    client, batch, data = published
    half = len(data) // 2
    reply, first = _download(client, batch["batch_id"], Range=f"bytes=0-{half - 1}")
    assert (reply.status_code, first) == (206, data[:half])
    etag = reply.headers["ETag"]
    reply, rest = _download(client, batch["batch_id"], Range=f"bytes={half}-", **{"If-Range": etag})
    assert reply.status_code == 206
    assert reply.headers["Content-Range"] == f"bytes {half}-{len(data) - 1}/{len(data)}"
    assert first + rest == data


def test_if_range_with_another_etag_sends_the_whole_file(published):
    client, batch, data = published
    reply, body = _download(client, batch["batch_id"], Range="bytes=10-", **{"If-Range": '"0000"'})
    assert (reply.status_code, body) == (200, data)


def test_if_none_match_is_304(published):
    client, batch, _ = published
    reply, body = _download(client, batch["batch_id"], **{"If-None-Match": f'"{batch["sha256"]}"'})
    assert (reply.status_code, body) == (304, b"")


def test_unsatisfiable_range_is_416(published):
    client, batch, data = published
    reply, _ = _download(client, batch["batch_id"], Range=f"bytes={len(data) + 10}-")
    assert reply.status_code == 416


def test_download_is_noted(api, published):
    from server.batches import get_batch

    client, batch, _ = published
    _download(client, batch["batch_id"])
    stored = get_batch(api.services.storage, API_A, batch["batch_id"])
    assert stored.first_downloaded_at == api.clock()


def test_manifest_is_signed_by_the_server_and_describes_the_file(api, published):
    client, batch, data = published
    reply = client.get(f"{LIST}/{batch['batch_id']}/manifest")
    assert reply.status_code == 200
    body = statement.verify(reply.get_json(), api.services.signing_key.public_key())
    assert body["type"] == "ministry-batch"
    assert body["batch_id"] == batch["batch_id"]
    assert body["lasdec"] == API_A
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["size"] == len(data)
    assert body["records"] == 40


def test_ack_with_the_right_hash_delivers_and_redownload_still_works(api, published):
    client, batch, data = published
    path = f"{LIST}/{batch['batch_id']}/ack"
    reply = client.post_json(path, {"sha256": batch["sha256"].upper()})
    assert reply.status_code == 200
    acked = reply.get_json()
    assert acked["acknowledged_at"] is not None
    assert acked["acknowledged_by"] == client.key_id
    assert client.get(LIST).get_json()["batches"] == []
    everything = client.get(LIST + "?all=1").get_json()["batches"]
    assert [b["batch_id"] for b in everything] == [batch["batch_id"]]
    reply, body = _download(client, batch["batch_id"])
    assert (reply.status_code, body) == (200, data)
    api.clock.advance(60)
    again = client.post_json(path, {"sha256": batch["sha256"]})
    assert again.status_code == 200
    assert again.get_json()["acknowledged_at"] == acked["acknowledged_at"]


def test_ack_with_a_wrong_hash_is_409_and_changes_nothing(published):
    client, batch, _ = published
    reply = client.post_json(f"{LIST}/{batch['batch_id']}/ack", {"sha256": "0" * 64})
    assert (reply.status_code, reply.get_json()["error"]["code"]) == (409, "ack.hash_mismatch")
    assert client.get(LIST).get_json()["batches"][0]["acknowledged_at"] is None


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "request.malformed_json"),
        (b"\xff\xfe", 400, "request.malformed_json"),
        (b"[1, 2]", 400, "request.malformed_json"),
        (b"{}", 400, "request.missing_field"),
        (b'{"sha256": 42}', 400, "request.bad_field"),
        (b'{"sha256": "abc"}', 400, "request.bad_field"),
        (json.dumps({"sha256": "0" * 64, "pad": "x" * 70_000}).encode(), 413, "request.too_large"),
    ],
)
def test_ack_with_a_bad_body(published, body, status, code):
    client, batch, _ = published
    reply = client.post(
        f"{LIST}/{batch['batch_id']}/ack", body, headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == status
    assert reply.get_json()["error"]["code"] == code


def test_empty_day_gives_an_empty_batch(api, api_terminal):
    services = api.services
    api_publish(services.storage, services.blobs, services.signing_key, api.clock(), {API_B: 1})
    _, client = api_terminal(API_A)
    (batch,) = client.get(LIST).get_json()["batches"]
    assert batch["records"] == 0
    reply, body = _download(client, batch["batch_id"])
    assert reply.status_code == 200
    assert len(body) == batch["size"] > 0  # the header line: "nothing happened", delivered
