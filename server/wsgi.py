"""The WSGI entry point for gunicorn: ``gunicorn -c server/gunicorn.conf.py server.wsgi:app``.

The configuration comes from ``RENKEI_SERVER_CONFIG`` (a TOML file) and
``RENKEI_SERVER_*`` variables (see docs/operations.md).  With ``preload_app``
this runs once in the gunicorn master, so a bad configuration or an
unreadable signing key stops the server at start with a clear message.
"""

from __future__ import annotations

from server.app import create_app
from server.config import load_config

app = create_app(load_config())
