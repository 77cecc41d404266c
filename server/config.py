"""The server's settings: a typed, frozen dataclass with safe defaults.

Sources, each overriding the one before: the defaults below, a TOML file
(``path``, else the file named by ``RENKEI_SERVER_CONFIG``, else none), the
environment (``RENKEI_SERVER_<KEY>``, e.g. ``RENKEI_SERVER_DATA_DIR``), then
keyword overrides (tests, the CLI).  Paths that default to places inside
``data_dir`` follow a ``data_dir`` set by any source.  An unknown key or a
value of the wrong type is a :class:`ConfigError` that names the key, so a
typo never silently falls back to a default.

Some settings belong to one feature each and sit in their own TOML table
(``[mail]``, ``[dashboard]``, ``[metrics]``, ``[front]``, at the top level or under
``[server]``); in the environment their keys carry the table's name,
e.g. ``RENKEI_SERVER_MAIL_RELAY_HOST``; an override passes a mapping,
``load_config(mail={"relay_host": ...})``.  A list in the environment is
written comma-separated.

Nothing is read at import time; ``load_config`` is called by the app factory,
the WSGI module and the CLI.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .authorities import normalize_authority
from .errors import ConfigError

__all__ = [
    "ENV_FILE",
    "ENV_PREFIX",
    "ConfigError",
    "DashboardConfig",
    "FrontConfig",
    "MailConfig",
    "MetricsConfig",
    "ServerConfig",
    "load_config",
]

ENV_PREFIX = "RENKEI_SERVER_"
ENV_FILE = "RENKEI_SERVER_CONFIG"
DEFAULT_DATA_DIR = Path("/var/lib/renkei-server")
#: Where ``renkei-server init --dev-tls`` puts the demo certificate; used as the
#: TLS default when those files exist and no certificate is configured.
DEV_TLS_CERT = Path("tls") / "server.crt"
DEV_TLS_KEY = Path("tls") / "server.key"
#: gunicorn's socket in ``run_dir``; a socket's path has at most 107 bytes (sun_path).
APP_SOCKET = "app.sock"
MAX_SOCKET_PATH = 107
#: Failed-auth rows are kept a day (server.enrollment.AUTH_FAILURE_KEEP).
MAX_FAILED_AUTH_PERIOD = 86_400


@dataclass(frozen=True)
class MailConfig:
    """``[mail]``: the ministry's SMTP relay and who gets the morning report (server.mailreport)."""

    relay_host: str | None = None  # none: mail is off (``renkei-server report`` only spools)
    relay_port: int = 587
    starttls: bool = True
    ca_file: Path | None = None  # CA bundle for the relay's certificate (default: system store)
    username: str | None = None
    password_file: Path | None = None  # the password alone, mode 0600; read at send time
    sender: str | None = None  # From:
    operators: tuple[str, ...] = ()  # To: of the daily summary
    contacts_file: Path | None = None  # CSV "lasdec,address": each municipality's contact
    spool_dir: Path = Path()  # default: <data_dir>/mail-spool
    timeout: int = 30
    dashboard_url: str | None = None  # named in the mails, e.g. https://renkei.example/dashboard/


@dataclass(frozen=True)
class DashboardConfig:
    """``[dashboard]``: who may reach the operators' pages and how long a login lasts."""

    networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")  # client addresses allowed (CIDR)
    session_idle: int = 1800  # seconds without a request before a login ends
    session_lifetime: int = 12 * 3600  # seconds a login lasts at most
    lockout_failures: int = 5  # failed logins of one account name …
    lockout_window: int = 900  # … within this many seconds lock it until they age out


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: the ``/metrics`` endpoint (server.metrics)."""

    token_sha256: str | None = None  # SHA-256 (hex) of the scraper's bearer token; none: off
    multiprocess_dir: Path = Path()  # default: <data_dir>/metrics (emptied by ``serve``)
    cache_seconds: int = 30  # figures read from the database are reused this long


@dataclass(frozen=True)
class FrontConfig:
    """``[front]``: nginx in front of gunicorn (server.front) — TLS, deadlines, per-address limits.

    gunicorn's threads only ever see whole requests that nginx has read; a
    client that is slow, silent or lies about its length costs an nginx
    connection (a few kilobytes, no thread) until these deadlines end it.
    """

    nginx: Path = Path("/usr/sbin/nginx")
    workers: int | None = None  # nginx worker processes; none: one per CPU
    worker_connections: int = 4096  # per worker: terminals, slow clients and upstream links
    header_timeout: int = 10  # seconds to send the whole request head
    body_timeout: int = 10  # seconds between two reads of a request body
    send_timeout: int = 60  # seconds between two writes of an answer the client does not read
    keepalive_timeout: int = 15  # seconds an idle kept-alive connection stays open
    connections_per_address: int = 32  # requests in progress from one client address
    access_log: str = "syslog"  # "syslog" (/dev/log, the journal), "off" or an absolute path
    # Addresses of a load balancer in front that sends the client's address in
    # X-Forwarded-For (CIDR); none: the TCP peer is the client.
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServerConfig:
    """Every setting of the server; docs/operations.md describes each key."""

    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str = ""  # default: sqlite:///<data_dir>/renkei.sqlite3
    signing_key_path: Path = Path()  # default: <data_dir>/signing-key.pem
    tls_cert: Path | None = None
    tls_key: Path | None = None
    bind: str = "127.0.0.1:8443"  # where nginx listens for terminals (HTTPS)
    run_dir: Path = Path("/run/renkei-server")  # gunicorn's socket, nginx's state (server.front)
    # The host[:port] names a signed request may address (its @authority); empty: the TLS
    # certificate's names at the port of bind (server.authorities).
    authorities: tuple[str, ...] = ()
    clock_window: int = 300
    max_upload_bytes: int = 64 * 1024 * 1024
    max_records_per_file: int = 200_000
    token_ttl: int = 72 * 3600
    failed_auth_limit: int = 20
    failed_auth_period: int = 600
    retention_days: int = 3650
    operator_token_hash: str | None = None
    mail: MailConfig = dataclasses.field(default_factory=MailConfig)
    dashboard: DashboardConfig = dataclasses.field(default_factory=DashboardConfig)
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)
    front: FrontConfig = dataclasses.field(default_factory=FrontConfig)

    @property
    def blob_dir(self) -> Path:
        """Batch files and uploaded originals (content-addressed)."""
        return self.data_dir / "blobs"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def app_socket(self) -> Path:
        """gunicorn listens here, for nginx alone (server.front)."""
        return self.run_dir / APP_SOCKET


_SECTIONS: dict[str, type] = {
    "mail": MailConfig,
    "dashboard": DashboardConfig,
    "metrics": MetricsConfig,
    "front": FrontConfig,
}
_FIELDS = {f.name: f for f in dataclasses.fields(ServerConfig) if f.name not in _SECTIONS}
_PATHS = {"data_dir", "signing_key_path", "run_dir"}
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
_AUTHORITY_LIST = "authorities"
#: The databases the server runs on (server.storage.engine_url); the rest of the URL is theirs.
_DATABASE_URL = re.compile(r"(sqlite(\+pysqlite)?|postgresql\+psycopg|postgres(ql)?)://")


def _convert(key: str, value: Any, source: str) -> Any:
    """One value from a TOML file (typed) or the environment (text) -> the field's type."""
    if key not in _FIELDS:
        known = ", ".join(sorted(_FIELDS))
        raise ConfigError(f"{source}: unknown setting {key!r} (known: {known})")
    if key == _AUTHORITY_LIST:
        return _authorities(value, source)
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
    if key == "bind" and not _BIND.fullmatch(text):
        raise ConfigError(
            f"{source}: bind must be ADDRESS:PORT (e.g. 0.0.0.0:8443 or [::]:8443), got {text!r}"
        )
    if key == "database_url" and text and not _DATABASE_URL.match(text):
        scheme = text.split("://", 1)[0] if "://" in text else text[:20]
        raise ConfigError(
            f"{source}: database_url must be sqlite:///PATH or postgresql://USER@HOST/DATABASE "
            f"(psycopg 3), got a URL starting {scheme!r}"
        )
    return text


def _authorities(value: Any, source: str) -> tuple[str, ...]:
    """``authorities``: a list (TOML) or comma-separated text (environment) of host[:port]."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{source}: authorities must be a list of host[:port], got {value!r}")
    try:
        return tuple(dict.fromkeys(normalize_authority(text) for text in value))
    except ValueError as exc:
        raise ConfigError(f"{source}: authorities: {exc}") from None


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: nginx's listen address: an IPv4 address, ``*`` or a bracketed IPv6 address, and a port.
_BIND = re.compile(
    r"(?:\*|(?:[0-9]{1,3}\.){3}[0-9]{1,3}|\[[0-9A-Fa-f:.]+\]):"
    r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
)
#: A mail address as the relay will see it: no display name, no spaces or angle brackets.
_ADDRESS = re.compile(r"[^@\s<>,;\"]+@[^@\s<>,;\"]+")


def _section_kinds(cls: type) -> dict[str, str]:
    """Field name -> kind, from the annotations of a section's dataclass."""
    kinds = {}
    for f in dataclasses.fields(cls):
        text = str(f.type)
        if "tuple" in text:
            kinds[f.name] = "list"
        elif "bool" in text:
            kinds[f.name] = "bool"
        elif "int" in text:
            kinds[f.name] = "int"
        elif "Path" in text:
            kinds[f.name] = "path"
        else:
            kinds[f.name] = "str"
    return kinds


def _convert_section_value(section: str, key: str, value: Any, source: str) -> Any:
    """One value of a ``[section]`` table (typed TOML, or text from the environment)."""
    kinds = _section_kinds(_SECTIONS[section])
    name = f"{section}.{key}"
    if key not in kinds:
        known = ", ".join(sorted(kinds))
        raise ConfigError(f"{source}: unknown setting {name!r} (known in [{section}]: {known})")
    kind = kinds[key]
    if kind == "int":
        if isinstance(value, str):
            try:
                value = int(value.strip().replace("_", ""))
            except ValueError:
                raise ConfigError(f"{source}: {name} must be an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{source}: {name} must be a positive integer, got {value!r}")
        return value
    if kind == "bool":
        if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
            return False
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {name} must be true or false, got {value!r}")
        return value
    if kind == "list":
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{source}: {name} must be a list of strings, got {value!r}")
        return tuple(value)
    if value is None or value == "":
        return None
    if not isinstance(value, str | os.PathLike):
        raise ConfigError(f"{source}: {name} must be a string, got {value!r}")
    return Path(value).expanduser() if kind == "path" else str(value)


def _check_section(section: str, values: dict[str, Any]) -> None:
    """Rules between the values of one section; each error names the key."""
    if section == "mail":
        for key in ("sender",):
            if values.get(key) and not _ADDRESS.fullmatch(values[key]):
                raise ConfigError(f"mail.{key} is not a mail address: {values[key]!r}")
        for address in values.get("operators", ()):
            if not _ADDRESS.fullmatch(address):
                raise ConfigError(f"mail.operators: {address!r} is not a mail address")
        if values.get("username") and not values.get("password_file"):
            raise ConfigError("mail.username is set without mail.password_file")
        if values.get("username") and values.get("starttls") is False:
            raise ConfigError(
                "mail.username is set but mail.starttls is false: the password would cross the "
                "network in clear"
            )
        if values.get("relay_host") and not values.get("sender"):
            raise ConfigError("mail.relay_host is set without mail.sender (the From: address)")
    elif section == "dashboard":
        for network in values.get("networks", ()):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigError(
                    f"dashboard.networks: {network!r} is not an address or network (CIDR)"
                ) from None
    elif section == "front":
        for network in values.get("trusted_proxies", ()):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigError(
                    f"front.trusted_proxies: {network!r} is not an address or network (CIDR)"
                ) from None
    elif section == "metrics":
        token = values.get("token_sha256")
        if token is not None and not _SHA256_HEX.fullmatch(token):
            raise ConfigError(
                "metrics.token_sha256 must be the SHA-256 of the token, 64 lower-case hex digits"
            )


def _section_table(section: str, table: Any, source: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{section}] must be a table")
    return {
        key: _convert_section_value(section, key, value, source) for key, value in table.items()
    }


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(top-level settings, settings of each section) from a TOML file."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"configuration file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"configuration file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path}: not valid TOML: {exc}") from None
    # Settings may sit at the top level or under a [server] table (sections too).
    if isinstance(data.get("server"), dict):
        data = {**{k: v for k, v in data.items() if k != "server"}, **data["server"]}
    sections = {
        name: _section_table(name, data.pop(name), str(path)) for name in _SECTIONS if name in data
    }
    return {key: _convert(key, value, str(path)) for key, value in data.items()}, sections


def _check_bind_and_run_dir(values: Mapping[str, Any]) -> None:
    """The listen address is a real address, and the socket's path fits a socket address."""
    bind = values.get("bind")
    if bind is not None:
        host = bind.rpartition(":")[0].strip("[]")
        if host != "*":
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ConfigError(f"bind: {host!r} is not an IP address") from None
    run_dir = values.get("run_dir", ServerConfig.run_dir)
    if len(os.fsencode(run_dir / APP_SOCKET)) > MAX_SOCKET_PATH:
        raise ConfigError(
            f"run_dir: {run_dir} is too long for a socket path (at most "
            f"{MAX_SOCKET_PATH - len(APP_SOCKET) - 1} bytes)"
        )


def load_config(
    path: Path | str | None = None, *, env: Mapping[str, str] | None = None, **overrides: Any
) -> ServerConfig:
    """Build the configuration from defaults, a TOML file, the environment and ``overrides``.

    ``overrides`` of a section (``mail``, ``dashboard``, ``metrics``) are
    mappings of that section's keys.  Raises :class:`ConfigError` naming the
    key for an unknown key or a bad value.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    if path is None and env.get(ENV_FILE):
        path = env[ENV_FILE]
    if path is not None:
        top, from_file = _read_file(Path(path))
        values.update(top)
        for name, table in from_file.items():
            sections[name].update(table)
    for name, text in env.items():
        if name.startswith(ENV_PREFIX) and name != ENV_FILE:
            key = name[len(ENV_PREFIX) :].lower()
            section = next((s for s in _SECTIONS if key.startswith(s + "_")), None)
            source = f"environment {name}"
            if section is not None:
                sub = key[len(section) + 1 :]
                sections[section][sub] = _convert_section_value(section, sub, text, source)
            else:
                values[key] = _convert(key, text, source)
    for key, value in overrides.items():
        if key in _SECTIONS:
            sections[key].update(_section_table(key, dict(value or {}), "override"))
        else:
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
    _check_bind_and_run_dir(values)
    if not sections["mail"].get("spool_dir"):
        sections["mail"]["spool_dir"] = data_dir / "mail-spool"
    if not sections["metrics"].get("multiprocess_dir"):
        sections["metrics"]["multiprocess_dir"] = data_dir / "metrics"
    for name, cls in _SECTIONS.items():
        table = {k: v for k, v in sections[name].items() if v is not None}
        _check_section(name, {**dataclasses.asdict(cls()), **table})
        values[name] = cls(**table)
    return ServerConfig(**{k: v for k, v in values.items() if v is not None})
