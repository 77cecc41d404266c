"""The WSGI entry point for gunicorn: ``gunicorn -c server/gunicorn.conf.py server.wsgi:app``.

The configuration comes from ``RENKEI_SERVER_CONFIG`` (a TOML file) and
``RENKEI_SERVER_*`` variables (see docs/operations.md).  With ``preload_app``
this runs once in the gunicorn master, so a bad configuration or an
unreadable signing key stops the server at start with a clear message.

gunicorn listens only on the run folder's socket, which only the front
(nginx, server/front/) can reach; the front sets ``X-Forwarded-For`` to the
client's address and ``X-Forwarded-Proto`` to ``https``, replacing whatever
the client sent, so one hop of each is trusted here.  The Host header is
the client's own (the signature covers it) and is left alone.
"""

from __future__ import annotations

from werkzeug.middleware.proxy_fix import ProxyFix

from server.app import create_app
from server.config import load_config

app = create_app(load_config())
app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=0, x_port=0, x_prefix=0)  # type: ignore[method-assign]
