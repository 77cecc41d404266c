"""The download's answer, header by header, on the fast path and on every conditional path.

Issue 10 made the whole-file answer without Werkzeug's ``make_conditional``
(and the ``cache_control``/``last_modified`` setters) when the request has no
conditional header; these tests pin the answer to what the standard path gives
(expected values written out here, from RFC 9110 and the batch row), and check
that a conditional or range request still goes the standard way.
"""

from __future__ import annotations

import base64
import hashlib
from email.utils import format_datetime, parsedate_to_datetime

import pytest

from server.batches import get_batch
from tests.server.conftest import API_A, api_publish

LIST = "/api/v1/batches"


@pytest.fixture
def published(api, api_terminal):
    services = api.services
    api_publish(services.storage, services.blobs, services.signing_key, api.clock(), {API_A: 7})
    _terminal, client = api_terminal(API_A)
    batch = client.get(LIST).get_json()["batches"][0]
    stored = get_batch(services.storage, API_A, batch["batch_id"])
    return client, stored, services.blobs.get(stored.sha256)


def _get(client, batch_id, **headers):
    reply = client.get(f"{LIST}/{batch_id}", headers=headers)
    body = reply.get_data()
    reply.close()
    return reply, body


def test_whole_file_headers(published):
    client, batch, data = published
    reply, body = _get(client, batch.batch_id)
    assert reply.status_code == 200
    assert body == data
    headers = reply.headers
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Content-Length"] == str(len(data)) == str(batch.size)
    assert headers["Content-Disposition"] == f'attachment; filename="{batch.batch_id}.csv"'
    assert headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Cache-Control"] == "private, no-cache"
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert headers["Repr-Digest"] == f"sha-256=:{digest}:"
    last_modified = parsedate_to_datetime(headers["Last-Modified"])
    assert last_modified == batch.created_at.replace(microsecond=0)
    assert headers["Last-Modified"].endswith(" GMT")
    assert parsedate_to_datetime(headers["Date"]).tzinfo is not None
    assert "Content-Range" not in headers
    # Each header once: the fast path must not add what the standard path would add again.
    names = [name.lower() for name, _ in headers]
    assert len(names) == len(set(names)), names


def test_if_modified_since_at_the_creation_time_is_304(published):
    client, batch, _ = published
    since = format_datetime(batch.created_at.replace(microsecond=0), usegmt=True)
    reply, body = _get(client, batch.batch_id, **{"If-Modified-Since": since})
    assert (reply.status_code, body) == (304, b"")


def test_if_modified_since_before_creation_sends_the_file(published):
    client, batch, data = published
    reply, body = _get(
        client, batch.batch_id, **{"If-Modified-Since": "Mon, 01 Jan 2024 00:00:00 GMT"}
    )
    assert (reply.status_code, body) == (200, data)


def test_if_match_with_another_etag_is_412(published):
    client, batch, _ = published
    reply, _ = _get(client, batch.batch_id, **{"If-Match": '"00"'})
    assert reply.status_code == 412


def test_if_none_match_with_another_etag_sends_the_file(published):
    client, batch, data = published
    reply, body = _get(client, batch.batch_id, **{"If-None-Match": '"00"'})
    assert (reply.status_code, body) == (200, data)
    assert reply.headers["ETag"] == f'"{batch.sha256}"'


def test_range_still_answers_206_with_the_whole_files_digest(published):
    client, batch, data = published
    reply, body = _get(client, batch.batch_id, Range="bytes=5-9")
    assert (reply.status_code, body) == (206, data[5:10])
    assert reply.headers["Content-Range"] == f"bytes 5-9/{len(data)}"
    assert reply.headers["Content-Length"] == "5"
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    assert reply.headers["Repr-Digest"] == f"sha-256=:{digest}:"


def test_head_of_the_file_gives_the_headers_only(published):
    client, batch, data = published
    reply = client.request("HEAD", f"{LIST}/{batch.batch_id}")
    assert reply.status_code == 200
    assert reply.get_data() == b""
    assert reply.headers["Content-Length"] == str(len(data))
    reply.close()
