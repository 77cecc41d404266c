"""The server's settings: a typed, frozen dataclass with safe defaults.

Sources, each overriding the one before: the defaults below, a TOML file
(``path``, else the file named by ``RENKEI_SERVER_CONFIG``, else none), the
environment (``RENKEI_SERVER_<KEY>``, e.g. ``RENKEI_SERVER_DATA_DIR``), then
keyword overrides (tests, the CLI).  Paths that default to places inside
``data_dir`` follow a ``data_dir`` set by any source.  An unknown key or a
value of the wrong type is a :class:`ConfigError` that names the key, so a
typo never silently falls back to a default.

Nothing is read at import time; ``load_config`` is called by the app factory,
the WSGI module and the CLI.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["ENV_FILE", "ENV_PREFIX", "ConfigError", "ServerConfig", "load_config"]

ENV_PREFIX = "RENKEI_SERVER_"
ENV_FILE = "RENKEI_SERVER_CONFIG"
DEFAULT_DATA_DIR = Path("/var/lib/renkei-server")
#: Where ``renkei-server init --dev-tls`` puts the demo certificate; used as the
#: TLS default when those files exist and no certificate is configured.
DEV_TLS_CERT = Path("tls") / "server.crt"
DEV_TLS_KEY = Path("tls") / "server.key"
#: Failed-auth rows are kept a day (server.enrollment.AUTH_FAILURE_KEEP).
MAX_FAILED_AUTH_PERIOD = 86_400


@dataclass(frozen=True)
class ServerConfig:
    """Every setting of the server; docs/operations.md describes each key."""

    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str = ""  # default: sqlite:///<data_dir>/renkei.sqlite3
    signing_key_path: Path = Path()  # default: <data_dir>/signing-key.pem
    tls_cert: Path | None = None
    tls_key: Path | None = None
    bind: str = "127.0.0.1:8443"
    clock_window: int = 300
    max_upload_bytes: int = 64 * 1024 * 1024
    max_records_per_file: int = 200_000
    token_ttl: int = 72 * 3600
    failed_auth_limit: int = 20
    failed_auth_period: int = 600
    retention_days: int = 3650
    operator_token_hash: str | None = None

    @property
    def blob_dir(self) -> Path:
        """Batch files and uploaded originals (content-addressed)."""
        return self.data_dir / "blobs"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"


_FIELDS = {f.name: f for f in dataclasses.fields(ServerConfig)}
_PATHS = {"data_dir", "signing_key_path"}
_OPTIONAL_PATHS = {"tls_cert", "tls_key"}
_INTS = {
    "clock_window",
    "max_upload_bytes",
    "max_records_per_file",
    "token_ttl",
    "failed_auth_limit",
    "failed_auth_period",
    "retention_days",
}
_OPTIONAL_STRS = {"operator_token_hash"}


def _convert(key: str, value: Any, source: str) -> Any:
    """One value from a TOML file (typed) or the environment (text) -> the field's type."""
    if key not in _FIELDS:
        known = ", ".join(sorted(_FIELDS))
        raise ConfigError(f"{source}: unknown setting {key!r} (known: {known})")
    if key in _INTS:
        if isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        if isinstance(value, str):
            try:
                value = int(value.strip().replace("_", ""))
            except ValueError:
                raise ConfigError(f"{source}: {key} must be an integer, got {value!r}") from None
        if not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        if value <= 0:
            raise ConfigError(f"{source}: {key} must be positive, got {value}")
        return value
    if key in _OPTIONAL_PATHS or key in _OPTIONAL_STRS:
        if value is None or value == "":
            return None
    if not isinstance(value, str | os.PathLike):
        raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
    if key in _PATHS or key in _OPTIONAL_PATHS:
        return Path(value).expanduser()
    text = str(value)
    if key == "bind" and ":" not in text and not text.startswith("unix:"):
        raise ConfigError(f"{source}: bind must be HOST:PORT or unix:PATH, got {text!r}")
    return text


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"configuration file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path}: not valid TOML: {exc}") from None
    # Settings may sit at the top level or under a [server] table.
    if set(data) == {"server"} and isinstance(data["server"], dict):
        data = data["server"]
    return {key: _convert(key, value, str(path)) for key, value in data.items()}


def load_config(
    path: Path | str | None = None, *, env: Mapping[str, str] | None = None, **overrides: Any
) -> ServerConfig:
    """Build the configuration from defaults, a TOML file, the environment and ``overrides``.

    Raises :class:`ConfigError` naming the key for an unknown key or a bad value.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if path is None and env.get(ENV_FILE):
        path = env[ENV_FILE]
    if path is not None:
        values.update(_read_file(Path(path)))
    for name, text in env.items():
        if name.startswith(ENV_PREFIX) and name != ENV_FILE:
            key = name[len(ENV_PREFIX) :].lower()
            values[key] = _convert(key, text, f"environment {name}")
    for key, value in overrides.items():
        values[key] = _convert(key, value, "override") if value is not None else None
    data_dir = values.setdefault("data_dir", DEFAULT_DATA_DIR)
    if not values.get("database_url"):
        values["database_url"] = f"sqlite:///{data_dir}/renkei.sqlite3"
    if not values.get("signing_key_path") or values["signing_key_path"] == Path():
        values["signing_key_path"] = data_dir / "signing-key.pem"
    if values.get("tls_cert") is None and values.get("tls_key") is None:
        cert, key = data_dir / DEV_TLS_CERT, data_dir / DEV_TLS_KEY
        if cert.is_file() and key.is_file():
            values["tls_cert"], values["tls_key"] = cert, key
    if values.get("failed_auth_period", 0) >= MAX_FAILED_AUTH_PERIOD:
        raise ConfigError(
            f"failed_auth_period must be under {MAX_FAILED_AUTH_PERIOD} seconds (failed "
            "requests are kept for a day)"
        )
    if (values.get("tls_cert") is None) != (values.get("tls_key") is None):
        raise ConfigError("tls_cert and tls_key must be set together")
    return ServerConfig(**{k: v for k, v in values.items() if v is not None})
