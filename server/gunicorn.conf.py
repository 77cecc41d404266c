"""gunicorn settings for the linkage server: ``gunicorn -c server/gunicorn.conf.py``.

Everything server-specific (the run folder) comes from the same
configuration the app reads (``server.config.load_config``: the TOML file
named by ``RENKEI_SERVER_CONFIG``, then ``RENKEI_SERVER_*`` variables), so
the two cannot disagree.  gunicorn's own command-line flags still override
anything here.

Choices, and why:

* gunicorn listens on one Unix socket in ``run_dir`` (``app.sock``), for the
  front alone: nginx (``renkei-server front``, server/front/) terminates TLS,
  enforces the deadlines and limits, reads whole requests and buffers whole
  answers.  A thread here never waits on a slow client; the app trusts the
  client address nginx reports because nothing else can reach the socket
  (the folder is mode 0700).  There is no TCP listener and no TLS here.
* ``gthread`` workers, 2 × cores + 1 processes (``WEB_CONCURRENCY``
  overrides) of 4 threads (``RENKEI_GUNICORN_THREADS``): a request that
  waits on the database lock holds a thread, not a process.
* ``preload_app``: the app (config, signing key) is loaded once in the master,
  so a bad setting fails at start, and workers fork with it loaded.  No
  database connection is opened before the fork; :func:`post_fork` drops any
  pooled one anyway (a SQLite or PostgreSQL connection must not be shared
  across processes).
* The access log has no personal data: method, path without query string
  (ids only), status, size, duration, the verified terminal id and the agent
  version.  Bodies, file names and query strings are never logged.
* gunicorn's control socket is off.
"""

from __future__ import annotations

import multiprocessing
import os

from server.config import load_config

_config = load_config()

wsgi_app = "server.wsgi:app"
proc_name = "renkei-server"
bind = [f"unix:{_config.app_socket}"]
umask = 0o077  # the socket: this user only (nginx runs as this user too)

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
# nginx keeps up to 32 idle connections per worker open for 10 s (server/front/nginx.conf.in);
# closing them here later than that means nginx never reuses one gunicorn is closing.
keepalive = 30
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


def post_fork(server, worker):  # type: ignore[no-untyped-def]
    """Forget database connections inherited from the master (SQLAlchemy's fork recipe)."""
    app = server.app.wsgi() if server.cfg.preload_app else None
    services = getattr(app, "extensions", {}).get("renkei") if app is not None else None
    if services is not None:
        services.storage.engine.dispose(close=False)
