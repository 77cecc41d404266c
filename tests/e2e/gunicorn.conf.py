"""gunicorn settings for the e2e tests: the server's own, plus the fault middleware when asked.

Everything of ``server/gunicorn.conf.py`` is taken as it is (the socket, workers,
threads, timeouts, the access log).  With ``RENKEI_E2E_FAULTS=<control
file>`` in the environment, each worker wraps its app in
:class:`tests.e2e.faultwsgi.FaultMiddleware` after loading it; without it
nothing changes.  The production configuration has no such hook.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

_server = runpy.run_path(str(Path(__file__).resolve().parents[2] / "server" / "gunicorn.conf.py"))
globals().update({name: value for name, value in _server.items() if not name.startswith("__")})


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    control = os.environ.get("RENKEI_E2E_FAULTS")
    if control:
        from tests.e2e.faultwsgi import FaultMiddleware

        worker.wsgi = FaultMiddleware(worker.wsgi, Path(control))
