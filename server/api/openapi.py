"""GET /api/v1/openapi.json — the OpenAPI 3.1 description of this API, served as written.

The document is a data file (``server/openapi.json``) maintained by hand next
to the code; a test checks that its paths and the app's routes are the same
set, so it cannot silently fall behind.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response

from server.api import API_PREFIX

DOCUMENT = Path(__file__).resolve().parent.parent / "openapi.json"

bp = Blueprint("openapi", __name__, url_prefix=API_PREFIX)


@bp.get("/openapi.json")
def openapi_document():
    return Response(
        DOCUMENT.read_bytes(), mimetype="application/json", headers={"Cache-Control": "no-cache"}
    )
