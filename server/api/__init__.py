"""The HTTP API: one blueprint per resource, JSON errors, and the request helpers they share.

Every error a client can get is JSON of one shape::

    {"error": {"code": "sig.stale", "message": "created … is +612 s from the server clock …"}}

``code`` is stable (clients and tests branch on it); ``message`` says what
happened and what to do.  docs/api.md lists every code with its status.

The blueprint modules are imported inside :func:`register_api`, not at the top
of this package, so that ``server.app`` (which they use) can import this
package without a cycle.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from server.errors import (
    AckError,
    ConfigError,
    EnrollmentError,
    NotFoundError,
    ServerError,
    UploadError,
)

__all__ = [
    "API_PREFIX",
    "JSON_BODY_LIMIT",
    "ApiError",
    "error_response",
    "json_body",
    "limit_json_body",
    "register_api",
    "server_error_status",
    "text_field",
]

API_PREFIX = "/api/v1"
#: Largest JSON request body (enrollment, acknowledgement); uploads have their own limit.
JSON_BODY_LIMIT = 64 * 1024

_log = logging.getLogger("renkei.server.api")

#: Status for a server error code, where it differs from the class default below.
_STATUS_BY_CODE = {
    "token.invalid": 401,
    "token.used": 401,
    "token.expired": 401,
    "key.invalid": 400,
    "key.duplicate": 409,
    "ack.hash_mismatch": 409,
    "upload.concurrent": 409,
}
_STATUS_BY_CLASS: tuple[tuple[type[ServerError], int], ...] = (
    (NotFoundError, 404),
    (EnrollmentError, 400),
    (AckError, 409),
    (UploadError, 400),
    (ConfigError, 500),
)

#: Codes for the HTTP errors Flask and Werkzeug raise themselves.
_HTTP_CODES = {
    400: "request.bad",
    404: "not_found",
    405: "request.method",
    413: "request.too_large",
    415: "request.media_type",
    500: "internal",
}


class ApiError(Exception):
    """An answer other than success: status, stable code, message, extra headers."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def server_error_status(error: ServerError) -> int:
    """The HTTP status for a core error: by code first, then by class, else 500."""
    if error.code in _STATUS_BY_CODE:
        return _STATUS_BY_CODE[error.code]
    for cls, status in _STATUS_BY_CLASS:
        if isinstance(error, cls):
            return status
    return 500


def _on_api_error(error: ApiError) -> Response:
    return error_response(error.status, error.code, error.message, error.headers)


def _on_server_error(error: ServerError) -> Response:
    status = server_error_status(error)
    if status >= 500:
        _log.error("server error %s: %s", error.code, error.message)
        return error_response(status, error.code, "the server could not complete the request")
    return error_response(status, error.code, error.message)


def _on_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    code = _HTTP_CODES.get(status, f"http.{status}")
    headers = {}
    if status == 413:
        # The rest of the body is not read; the connection cannot be reused.
        headers["Connection"] = "close"
    if status == 405 and error.valid_methods:
        headers["Allow"] = ", ".join(error.valid_methods)
    message = error.description or error.name
    if status == 413:
        message = "the request body is larger than this server accepts; send a smaller file"
    return error_response(status, code, message, headers)


def _on_unexpected(error: Exception) -> Response:
    _log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal", "the server could not complete the request")


def limit_json_body() -> None:
    """``before_request`` for blueprints that take only JSON: a small body limit, set before
    anything reads the body (the signature check reads it to verify the Content-Digest)."""
    request.max_content_length = JSON_BODY_LIMIT


def json_body(*required: str) -> dict[str, Any]:
    """The request body as a JSON object; 400 for malformed JSON or a missing member.

    Reads the body as bytes whatever the Content-Type says, because the
    signature covers those bytes (the Content-Digest) and nothing else.
    """
    request.max_content_length = min(JSON_BODY_LIMIT, request.max_content_length or JSON_BODY_LIMIT)
    data = request.get_data(cache=True)
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(
            400, "request.malformed_json", f"the body is not UTF-8 JSON: {exc}"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(400, "request.malformed_json", "the body must be a JSON object")
    missing = [name for name in required if name not in body]
    if missing:
        raise ApiError(400, "request.missing_field", f"missing member(s): {', '.join(missing)}")
    return body


def text_field(
    body: Mapping[str, Any],
    name: str,
    *,
    max_length: int = 200,
    pattern: re.Pattern[str] | None = None,
    optional: bool = False,
) -> str | None:
    """A string member of a JSON body, checked; 400 ``request.bad_field`` otherwise."""
    value = body.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        raise ApiError(
            400, "request.bad_field", f"{name} must be a string of 1 to {max_length} characters"
        )
    if pattern is not None and not pattern.fullmatch(value):
        raise ApiError(400, "request.bad_field", f"{name} is not in the expected form")
    return value


def register_api(app: Flask) -> None:
    """Register every blueprint and the JSON error handlers on ``app``."""
    from server.api import batches, clock, enroll, health, openapi, precheck, updates, uploads

    for module in (enroll, clock, batches, uploads, updates, health, openapi, precheck):
        app.register_blueprint(module.bp)
    app.register_error_handler(ApiError, _on_api_error)
    app.register_error_handler(ServerError, _on_server_error)
    app.register_error_handler(HTTPException, _on_http_exception)
    app.register_error_handler(Exception, _on_unexpected)
