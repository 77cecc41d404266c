"""Starting the front: the run folder, the rendered configuration, nginx's command line.

The run folder (``run_dir``) holds gunicorn's socket, nginx's pid file and
its buffers for request and answer bodies.  It is created mode 0700: the
socket's only protection is that nobody but the server's user can reach it,
which is what lets the app believe the ``X-Forwarded-For`` nginx sets.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from common.atomicwrite import write_bytes
from server.api import API_PREFIX, JSON_BODY_LIMIT
from server.auth import ACCEPT_SIGNATURE
from server.config import ConfigError, ServerConfig
from server.front.nginx import nginx_config

__all__ = [
    "CONFIG_NAME",
    "front_config_text",
    "nginx_argv",
    "prepare_front",
    "prepare_run_dir",
]

CONFIG_NAME = "nginx.conf"
UPLOAD_PATH = f"{API_PREFIX}/uploads"
_SUBFOLDERS = ("body", "proxy", "unused")


def prepare_run_dir(config: ServerConfig) -> Path:
    """Create ``run_dir`` (mode 0700) or check an existing one is private; return it."""
    run_dir = config.run_dir
    try:
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = run_dir.lstat()
    except OSError as exc:
        raise ConfigError(f"run_dir: {run_dir}: {exc.strerror}") from None
    if not run_dir.is_dir() or run_dir.is_symlink():
        raise ConfigError(f"run_dir: {run_dir} is not a folder")
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise ConfigError(
            f"run_dir: {run_dir} must belong to this user and be private (mode 0700); "
            f"it is mode {info.st_mode & 0o777:04o}, owner {info.st_uid}"
        )
    return run_dir


def front_config_text(config: ServerConfig) -> str:
    """The nginx configuration this server runs with (what ``front --print`` shows)."""
    return nginx_config(
        config,
        upload_path=UPLOAD_PATH,
        json_body_limit=JSON_BODY_LIMIT,
        accept_signature=ACCEPT_SIGNATURE,
        root_user="root" if os.geteuid() == 0 else None,
    )


def prepare_front(config: ServerConfig) -> Path:
    """Write ``run_dir/nginx.conf`` for ``config`` (atomically) and return its path."""
    text = front_config_text(config)
    for name, path in (("tls_cert", config.tls_cert), ("tls_key", config.tls_key)):
        if path is None or not os.access(path, os.R_OK):
            raise ConfigError(f"{name}: {path} cannot be read")
    run_dir = prepare_run_dir(config)
    for name in _SUBFOLDERS:
        (run_dir / name).mkdir(mode=0o700, exist_ok=True)
    target = run_dir / CONFIG_NAME
    write_bytes(target, text.encode("utf-8"), mode=0o600)
    return target


def nginx_argv(config: ServerConfig, conf: Path) -> list[str]:
    """nginx in the foreground with ``conf``; errors to stderr from the first line on."""
    binary = config.front.nginx
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        found = shutil.which(binary.name)
        hint = f" (there is one at {found})" if found else " (Debian package nginx)"
        raise ConfigError(f"front.nginx: {binary} is not an executable{hint}")
    return [str(binary), "-c", str(conf), "-p", str(config.run_dir), "-e", "stderr"]
