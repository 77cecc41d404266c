"""GET /healthz — for the load balancer: 200 when this process can serve, 503 when not.

"Can serve" means the database answers and has the schema (``renkei-server
init`` has run).  Nothing else is said: the
answer is unauthenticated, so it carries no counts, versions or paths.
"""

from __future__ import annotations

import logging

from flask import Blueprint
from sqlalchemy.exc import SQLAlchemyError

from server.api import error_response
from server.app import services

bp = Blueprint("health", __name__)

_log = logging.getLogger("renkei.server.health")


@bp.get("/healthz")
def healthz():
    ctx = services()
    try:
        version = ctx.storage.schema_version()
    except SQLAlchemyError as exc:
        _log.error("health check: database unavailable: %s", exc)
        return error_response(503, "health.database", "the database does not answer")
    if version < 1:
        return error_response(503, "health.schema", "the database has no schema; run init")
    return {"status": "ok"}, 200, {"Cache-Control": "no-store"}
