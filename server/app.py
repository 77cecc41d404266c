"""The Flask application factory of the linkage server (市町村連携サーバ).

``create_app(config)`` builds everything a request needs — the storage, the
blob store, the server's signing key and the clock — once, and keeps them in
``app.extensions["renkei"]``; nothing is configured at import time and there
is no module-level state, so a test builds as many independent apps as it
likes and gunicorn builds one per process (``server/wsgi.py``).

The clock is injected (``clock=``) because signature windows, nonces, token
expiry and batch acknowledgements all depend on "now": tests move it, the
server uses the system clock in UTC.

Around every request: a request id (the load balancer's ``X-Request-Id`` when
it is a plain token, else a new one) is put in ``g.request_id``, returned in
``X-Request-Id`` and carried by every log line of the request
(``server.eventlog``); when the answer is ready it is counted
(``server.metrics``) and logged as one ``http.request`` event.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask, Response, current_app, g, request

from server import eventlog, metrics
from server.api import register_api
from server.blobs import BlobStore
from server.config import ServerConfig, load_config
from server.keys import load_signing_key
from server.request_body import LimitedRequest
from server.storage import Storage

__all__ = ["EXTENSION", "Services", "create_app", "services"]

#: The key under ``app.extensions`` where :class:`Services` lives.
EXTENSION = "renkei"


def system_clock() -> datetime:
    """The real clock, aware UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Services:
    """What the blueprints work with; one per app, shared by its requests (all thread-safe)."""

    config: ServerConfig
    storage: Storage
    blobs: BlobStore
    signing_key: Ed25519PrivateKey
    clock: Callable[[], datetime]

    def now(self) -> datetime:
        """The injected clock's time; must be aware (a naive clock is a programming error)."""
        instant = self.clock()
        if instant.tzinfo is None:
            raise ValueError("the clock returned a naive datetime; it must return aware UTC")
        return instant.astimezone(UTC)


def services() -> Services:
    """The current app's :class:`Services` (inside a request or app context)."""
    return current_app.extensions[EXTENSION]


def create_app(
    config: ServerConfig | None = None, *, clock: Callable[[], datetime] | None = None
) -> Flask:
    """Build the WSGI app for ``config`` (default: :func:`server.config.load_config`).

    The database must already exist (``renkei-server init``): the app never
    migrates on its own, so a half-upgraded server cannot start writing.
    Raises ServerError ``key.missing``/``key.invalid`` when the signing key
    cannot be read, so a misconfigured server fails at start, not at the first
    upload.
    """
    config = load_config() if config is None else config
    app = Flask("server")
    app.request_class = LimitedRequest  # the body limit holds for chunked bodies too (413)
    # The largest body any request may have; the upload limit.  JSON endpoints
    # lower it per request (server.api.JSON_BODY_LIMIT).
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes
    app.json.sort_keys = False  # keep documents in the order the code builds them
    app.json.ensure_ascii = False  # Japanese messages stay readable
    app.extensions[EXTENSION] = Services(
        config=config,
        storage=Storage(config.database_url),
        blobs=BlobStore(config.blob_dir),
        signing_key=load_signing_key(config.signing_key_path),
        clock=clock or system_clock,
    )
    app.extensions[metrics.EXTENSION] = metrics.Metrics(
        app.extensions[EXTENSION].storage, config.metrics, app.extensions[EXTENSION].now
    )
    eventlog.setup_logging()
    app.before_request(_start_request)
    app.after_request(_finish_request)
    register_api(app)
    app.register_blueprint(metrics.bp)
    from server.dashboard import register_dashboard  # uses server.app: imported here

    register_dashboard(app)
    return app


#: Blueprints whose 401/429 answers are refused terminal requests (counted as auth failures).
_TERMINAL_BLUEPRINTS = frozenset({"batches", "uploads", "enroll", "updates"})


def _start_request() -> None:
    g.request_id = eventlog.request_id_from(request.headers.get("X-Request-Id"))
    g.request_started = time.perf_counter()


def _finish_request(response: Response) -> Response:
    """Request id header, metrics and the one ``http.request`` event of every answer."""
    seconds = time.perf_counter() - g.get("request_started", time.perf_counter())
    request_id = g.get("request_id") or eventlog.new_request_id()
    response.headers["X-Request-Id"] = request_id
    route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
    status = response.status_code
    counters = current_app.extensions[metrics.EXTENSION]
    counters.observe_request(route, request.method, status, seconds)
    code = None
    if status in (401, 429) and request.blueprint in _TERMINAL_BLUEPRINTS:
        body = response.get_json(silent=True) if response.is_json else None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            code = body["error"].get("code")
        counters.auth_failures.labels(str(code or f"http.{status}")).inc()
    terminal = g.get("terminal")
    session = g.get("session")
    eventlog.event(
        "http.request",
        method=request.method,
        route=route,
        path=request.path if request.url_rule is not None else None,
        status=status,
        duration_ms=round(seconds * 1000, 1),
        bytes=response.content_length,
        terminal_id=terminal.terminal_id if terminal is not None else None,
        operator_id=session.operator.operator_id if session is not None else None,
        code=code,
    )
    return response
