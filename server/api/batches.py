"""Ministry-notice batches of the calling terminal's municipality (spec §5.1).

* ``GET /api/v1/batches`` — pending batches (``?all=1``: acknowledged ones too,
  for the manual re-fetch);
* ``GET /api/v1/batches/<id>`` — the file, resumable: ``Range`` /
  ``If-Range`` against the strong ETag, which is the file's SHA-256, and the
  whole file's digest in ``Repr-Digest`` (RFC 9530); ``410 batch.purged``
  once the file was removed after the retention period (server.retention);
* ``GET /api/v1/batches/<id>/manifest`` — the statement the server signed
  for it (batch id, sequence, date, record count, SHA-256, size);
* ``POST /api/v1/batches/<id>/ack`` ``{"sha256"}`` — the terminal has the
  whole file and its hash matches: only now is the batch delivered.

Every lookup is scoped by the caller's municipality, so another
municipality's batch id answers 404 exactly like an id that does not exist.
"""

from __future__ import annotations

import base64
import logging
import re
from pathlib import Path

from flask import Blueprint, Response, current_app, g, request, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.http import http_date, quote_etag
from werkzeug.wsgi import FileWrapper

from server.api import API_PREFIX, ApiError, json_body, limit_json_body, text_field
from server.app import services
from server.auth import authenticate
from server.batches import Batch, acknowledge, get_batch, list_batches, note_download
from server.storage import iso_utc

bp = Blueprint("batches", __name__, url_prefix=f"{API_PREFIX}/batches")
bp.before_request(limit_json_body)
bp.before_request(authenticate)

_log = logging.getLogger("renkei.server.api")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_TRUE = {"1", "true", "yes"}
#: Bytes per write of a batch file (see :func:`_send_batch_file`).
BLOCK = 256 * 1024


def _summary(batch: Batch) -> dict:
    return {
        **batch.to_json(),
        "file": url_for("batches.download", batch_id=batch.batch_id),
        "manifest": url_for("batches.manifest", batch_id=batch.batch_id),
    }


def _batch(batch_id: str) -> Batch:
    batch = get_batch(services().storage, g.terminal.lasdec, batch_id)
    if batch is None:
        raise ApiError(404, "batch.not_found", f"no batch {batch_id!r} for this municipality")
    return batch


@bp.get("")
def index():
    everything = request.args.get("all", "").lower() in _TRUE
    found = list_batches(services().storage, g.terminal.lasdec, pending_only=not everything)
    return {"batches": [_summary(batch) for batch in found]}


@bp.get("/<batch_id>")
def download(batch_id: str):
    ctx = services()
    batch = _batch(batch_id)
    if batch.purged_at is not None:
        raise ApiError(
            410,
            "batch.purged",
            f"the file of batch {batch.batch_id} was removed on {iso_utc(batch.purged_at)} after "
            "the retention period (it was acknowledged on "
            f"{iso_utc(batch.acknowledged_at) if batch.acknowledged_at else '-'}); "
            "its signed manifest is still available",
        )
    path = ctx.blobs.path(batch.sha256)
    if not path.is_file():
        _log.error("batch %s: blob %s is missing", batch.batch_id, batch.sha256)
        raise ApiError(500, "batch.file_missing", "the batch file is missing on the server")
    if batch.first_downloaded_at is None:  # only the first fetch is recorded: skip the write
        note_download(ctx.storage, g.terminal.lasdec, batch.batch_id, now=ctx.now())
    return _send_batch_file(path, batch)


def _send_batch_file(path: Path, batch: Batch) -> Response:
    """The file with ETag = SHA-256 and Range/If-Range/If-None-Match, like ``flask.send_file``.

    Written out rather than calling ``send_file`` for one reason: the block
    size.  ``send_file`` hands the server 8 KiB blocks; over TLS (where the
    kernel's sendfile cannot be used) each block is a Python-level write, and
    :data:`BLOCK` bytes per write roughly doubles the download throughput.
    A whole-file answer uses the server's own ``wsgi.file_wrapper`` (gunicorn
    then uses sendfile when it serves plain HTTP behind a TLS-terminating load
    balancer); a range uses Werkzeug's, which is seekable, so resuming at the
    middle seeks instead of reading the first half.

    A request without Range or any If-* header (nearly every download) skips
    ``make_conditional``, which would only add Date and Accept-Ranges to it.
    """
    environ = request.environ
    handle = path.open("rb")
    server_wrapper = environ.get("wsgi.file_wrapper")
    if server_wrapper is not None and "HTTP_RANGE" not in environ:
        body = server_wrapper(handle, BLOCK)
    else:
        body = FileWrapper(handle, BLOCK)
    response = current_app.response_class(
        body, headers=_file_headers(batch), direct_passthrough=True
    )
    if environ["REQUEST_METHOD"] in ("GET", "HEAD") and _CONDITIONAL.isdisjoint(environ):
        # Nothing to compare or cut: exactly what make_conditional adds to a 200, without
        # parsing absent headers (issue 10: a third of the view's time on every download).
        response.headers["Date"] = http_date()
        response.headers["Accept-Ranges"] = "bytes"
        return response
    try:
        return response.make_conditional(
            request.environ, accept_ranges=True, complete_length=batch.size
        )
    except HTTPException:  # 416: the file is not going to be sent
        response.close()
        raise


#: The request headers (as WSGI keys) that can change a download's answer from a plain 200.
_CONDITIONAL = frozenset(
    {
        "HTTP_RANGE",
        "HTTP_IF_RANGE",
        "HTTP_IF_MATCH",
        "HTTP_IF_NONE_MATCH",
        "HTTP_IF_MODIFIED_SINCE",
        "HTTP_IF_UNMODIFIED_SINCE",
    }
)


def _file_headers(batch: Batch) -> list[tuple[str, str]]:
    """The headers of a batch file's answer that depend only on the (immutable) batch.

    Written as strings rather than through Werkzeug's ``cache_control``,
    ``last_modified`` and ``set_etag`` setters, which parse and re-serialise
    the header on each assignment.
    """
    # RFC 9530: the digest of the whole file, also on a 206 partial answer.
    digest = base64.b64encode(bytes.fromhex(batch.sha256)).decode("ascii")
    return [
        ("Content-Type", "application/octet-stream"),
        ("Content-Length", str(batch.size)),
        ("Content-Disposition", f'attachment; filename="{batch.batch_id}.csv"'),
        ("Last-Modified", http_date(batch.created_at)),
        ("Cache-Control", "private, no-cache"),
        ("ETag", quote_etag(batch.sha256)),
        ("Repr-Digest", f"sha-256=:{digest}:"),
    ]


@bp.get("/<batch_id>/manifest")
def manifest(batch_id: str):
    return _batch(batch_id).manifest


@bp.post("/<batch_id>/ack")
def ack(batch_id: str):
    ctx = services()
    body = json_body("sha256")
    sha256 = text_field(body, "sha256", max_length=64, pattern=_SHA256)
    batch = acknowledge(
        ctx.storage,
        g.terminal.lasdec,
        batch_id,
        sha256.lower(),
        g.terminal.terminal_id,
        now=ctx.now(),
    )
    return _summary(batch)
