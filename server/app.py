"""The Flask application factory of the linkage server (市町村連携サーバ).

``create_app(config)`` builds everything a request needs — the storage, the
blob store, the server's signing key and the clock — once, and keeps them in
``app.extensions["renkei"]``; nothing is configured at import time and there
is no module-level state, so a test builds as many independent apps as it
likes and gunicorn builds one per process (``server/wsgi.py``).

The clock is injected (``clock=``) because signature windows, nonces, token
expiry and batch acknowledgements all depend on "now": tests move it, the
server uses the system clock in UTC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask, current_app

from server.api import register_api
from server.blobs import BlobStore
from server.config import ServerConfig, load_config
from server.keys import load_signing_key
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
    register_api(app)
    return app
