"""``renkei-server serve`` and ``renkei-server front``: the two long-running processes.

``serve`` is gunicorn with the app, on the run folder's socket; ``front`` is
nginx, rendered from the same configuration, on ``bind`` with TLS.  Each
replaces itself with its process (``execve``), so a service manager
supervises gunicorn and nginx directly (docs/operations.md has the units).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .cli_options import Failure, config_option, echo
from .cli_options import load as _config
from .config import ConfigError
from .front import front_config_text, nginx_argv, prepare_front, prepare_run_dir

__all__ = ["SERVE_COMMANDS"]

GUNICORN_CONF = Path(__file__).with_name("gunicorn.conf.py")


@click.command("serve")
@config_option
@click.option("--dry-run", is_flag=True, help="Print the gunicorn command instead of running it.")
def serve_command(config_path: Path | None, dry_run: bool) -> None:
    """Run the app under gunicorn on the run folder's socket, for the front (renkei-server front).

    There is no development server and no TCP listener: terminals reach the
    app through the front only.

    \b
    Example:
      renkei-server serve --config /etc/renkei-server/server.toml
    """
    config = _config(config_path)  # fail early on a bad configuration
    if not GUNICORN_CONF.exists():
        raise Failure(f"{GUNICORN_CONF} is missing")
    argv = [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF), "server.wsgi:app"]
    env = dict(os.environ)
    if config_path is not None:
        env["RENKEI_SERVER_CONFIG"] = str(config_path.resolve())
    # prometheus-client's multiprocess mode: the folder is set before gunicorn imports anything
    # and emptied of an earlier run's counters (server/metrics.py).
    metrics_dir = config.metrics.multiprocess_dir
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    if dry_run:
        echo(" ".join(argv))
        echo(f"socket {config.app_socket}; metrics {metrics_dir}", err=True)
        return
    from .metrics import prepare_multiprocess_dir

    try:
        prepare_run_dir(config)
        prepare_multiprocess_dir(metrics_dir)
    except ConfigError as exc:
        raise Failure(exc.message) from None
    except OSError as exc:
        raise Failure(f"{metrics_dir}: {exc.strerror}") from None
    os.execve(sys.executable, argv, env)  # pragma: no cover


@click.command("front")
@config_option
@click.option(
    "--print",
    "print_only",
    is_flag=True,
    help="Print the nginx configuration instead of starting nginx.",
)
def front_command(config_path: Path | None, print_only: bool) -> None:
    """Run nginx in front of the app: TLS on `bind`, deadlines and limits, whole requests only.

    The configuration is rendered from the server's own (run_dir/nginx.conf)
    at every start; keys under [front] tune it.

    \b
    Example:
      renkei-server front --config /etc/renkei-server/server.toml
      renkei-server front --print | less
    """
    config = _config(config_path)
    try:
        if print_only:
            echo(front_config_text(config).rstrip("\n"))
            return
        conf = prepare_front(config)
        argv = nginx_argv(config, conf)
    except ConfigError as exc:
        raise Failure(exc.message) from None
    os.execv(argv[0], argv)  # pragma: no cover


SERVE_COMMANDS = (serve_command, front_command)
