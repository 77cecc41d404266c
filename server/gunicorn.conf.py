"""gunicorn settings for the linkage server: ``gunicorn -c server/gunicorn.conf.py``.

Everything server-specific (where to listen, the TLS certificate) comes from
the same configuration the app reads (``server.config.load_config``: the TOML
file named by ``RENKEI_SERVER_CONFIG``, then ``RENKEI_SERVER_*`` variables,
e.g. ``RENKEI_SERVER_BIND=0.0.0.0:8443``), so the two cannot disagree.
gunicorn's own command-line flags still override anything here.

Choices, and why:

* ``gthread`` workers, 2 × cores + 1 processes (``WEB_CONCURRENCY``
  overrides) of 4 threads (``RENKEI_GUNICORN_THREADS``): a batch download
  over a slow LGWAN line holds one thread, not a whole process, and keep-alive
  works.  Sync workers would need a buffering proxy in front, which we do not
  assume.
* ``sendfile``: used for downloads when gunicorn serves plain HTTP behind a
  TLS-terminating load balancer.  With TLS in gunicorn (the default here)
  the kernel cannot encrypt, so gunicorn writes the file in chunks instead.
* ``preload_app``: the app (config, signing key) is loaded once in the master,
  so a bad setting fails at start, and workers fork with it loaded.  No
  database connection is opened before the fork; :func:`post_fork` drops any
  pooled one anyway (a SQLite or PostgreSQL connection must not be shared
  across processes).
* The access log has no personal data: method, path without query string
  (ids only), status, size, duration, the verified terminal id and the agent
  version.  Bodies, file names and query strings are never logged.
* TLS 1.2 at least; gunicorn's control socket is off.
"""

from __future__ import annotations

import multiprocessing
import os
import ssl

from server.config import load_config

_config = load_config()

wsgi_app = "server.wsgi:app"
proc_name = "renkei-server"
bind = [_config.bind]
if _config.tls_cert is not None and _config.tls_key is not None:
    certfile = str(_config.tls_cert)
    keyfile = str(_config.tls_key)

worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY") or 2 * multiprocessing.cpu_count() + 1)
threads = int(os.environ.get("RENKEI_GUNICORN_THREADS") or 4)
preload_app = True
# No runtime control socket (gunicornc): one less interface, and several servers
# on one host would otherwise share its default path in $HOME.
control_socket_disable = True

# A worker that does not check in for this long is restarted (gthread workers
# check in from their main loop, so a long download does not count as silence).
timeout = 60
graceful_timeout = 30
keepalive = 5
# Headers are small in this API (the signature fields are a few hundred bytes).
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190

accesslog = "-"
errorlog = "-"
access_log_format = (
    '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms '
    "terminal=%({renkei.terminal}e)s agent=%({renkei-agent-version}i)s"
)


def ssl_context(conf, default_ssl_context_factory):  # type: ignore[no-untyped-def]
    context = default_ssl_context_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def post_fork(server, worker):  # type: ignore[no-untyped-def]
    """Forget database connections inherited from the master (SQLAlchemy's fork recipe)."""
    app = server.app.wsgi() if server.cfg.preload_app else None
    services = getattr(app, "extensions", {}).get("renkei") if app is not None else None
    if services is not None:
        services.storage.engine.dispose(close=False)
