"""Municipality notice files (市町村通知) sent by the calling terminal, and their receipts.

* ``POST /api/v1/uploads`` — the body is the file itself
  (``application/octet-stream``), its name in ``Renkei-File-Name``
  (percent-encoded UTF-8).  The answer is the receipt the server signed:
  ``201`` when this request stored the file, ``200`` with the same receipt
  when these exact bytes were received before (so a terminal that lost the
  answer simply sends again).  The body limit is ``max_upload_bytes`` (413).
* ``GET /api/v1/uploads/<id>/receipt`` — that receipt again.

Parsing, validation, storage and signing are the core's
(:func:`server.uploads.receive_upload`); this module is the HTTP shell.
"""

from __future__ import annotations

from urllib.parse import unquote

from flask import Blueprint, g, request, url_for

from server.api import API_PREFIX, ApiError, limit_json_body
from server.app import services
from server.auth import authenticate
from server.uploads import file_name_problem, get_receipt, receive_upload

bp = Blueprint("uploads", __name__, url_prefix=f"{API_PREFIX}/uploads")


@bp.before_request
def _small_body_unless_uploading() -> None:
    """Only the upload itself may be large; registered before the signature check reads it."""
    if request.endpoint != "uploads.upload":
        limit_json_body()


bp.before_request(authenticate)

FILE_NAME_HEADER = "Renkei-File-Name"
_ACCEPTED_TYPES = {"", "application/octet-stream"}


def file_name(header: str | None) -> str:
    """The uploaded file's base name from its percent-encoded UTF-8 header; 400 when unusable.

    The rule is the core's (:func:`server.uploads.file_name_problem`): a plain
    name without control, format or bidirectional characters, at most 255
    bytes; checked here so that a bad name is refused before the body is used.
    """
    if not header:
        raise ApiError(
            400, "upload.file_name", f"the {FILE_NAME_HEADER} header (the file's name) is missing"
        )
    if not header.isascii():
        raise ApiError(
            400, "upload.file_name", f"{FILE_NAME_HEADER} must be percent-encoded UTF-8 (ASCII)"
        )
    try:
        name = unquote(header, encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise ApiError(
            400, "upload.file_name", f"{FILE_NAME_HEADER} must be percent-encoded UTF-8"
        ) from None
    problem = file_name_problem(name)
    if problem is not None:
        raise ApiError(
            400,
            "upload.file_name",
            f"{FILE_NAME_HEADER} must be a plain file name (no folders, no control, format or "
            f"bidirectional characters, at most 255 bytes): {problem}",
        )
    return name


@bp.post("")
def upload():
    ctx = services()
    if request.mimetype not in _ACCEPTED_TYPES:
        raise ApiError(
            415, "request.media_type", "send the file as the body, application/octet-stream"
        )
    name = file_name(request.headers.get(FILE_NAME_HEADER))
    receipt, created = receive_upload(
        ctx.storage,
        ctx.blobs,
        ctx.signing_key,
        g.terminal,
        request.get_data(cache=True),
        file_name=name,
        now=ctx.now(),
        max_records=ctx.config.max_records_per_file,
    )
    location = url_for("uploads.receipt", upload_id=receipt["statement"]["upload_id"])
    return receipt, 201 if created else 200, {"Location": location}


@bp.get("/<upload_id>/receipt")
def receipt(upload_id: str):
    found = get_receipt(services().storage, g.terminal.lasdec, upload_id)
    if found is None:
        raise ApiError(404, "upload.not_found", f"no upload {upload_id!r} for this municipality")
    return found
