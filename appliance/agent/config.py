"""The agent's settings: typed, frozen dataclasses read from one TOML file.

The file is ``/etc/renkei/agent.toml`` unless the caller names another or the
environment variable ``RENKEI_AGENT_CONFIG`` does (an explicit path wins over
the variable).  ``appliance/rootfs/etc/renkei/agent.toml.example`` lists every
key with a comment.

Every value is checked when the file is read, not when it is first used: the
agent runs unattended after business hours, and a typo found then costs a
day's exchange.  So an unknown key is an error (with the nearest known key as
a hint), and every bad value is a :class:`ConfigError` whose message starts
with the file and the key, e.g. ``/etc/renkei/agent.toml: lasdec: check digit
does not match``.  Relative paths are taken relative to the file's folder, so
a configuration and its keys can be moved together.

Nothing is read at import time.
"""

from __future__ import annotations

import datetime as dt
import difflib
import ipaddress
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import lasdec as lasdec_codes
from common import statement

from .errors import ConfigError

__all__ = [
    "DEFAULT_PATH",
    "ENV_CONFIG",
    "AgentConfig",
    "CardConfig",
    "ConfigError",
    "RetryPolicy",
    "SmtpConfig",
    "UpdateConfig",
    "load_card_config",
    "load_config",
]

DEFAULT_PATH = Path("/etc/renkei/agent.toml")
ENV_CONFIG = "RENKEI_AGENT_CONFIG"


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait between upload attempts (seconds); see ``queue.backoff``.

    The n-th retry waits ``min(cap, base * 2**(n-1))`` shortened by a random
    fraction of at most ``jitter``; after ``give_up_after`` seconds of failing
    an upload is given up and a mail is sent.
    """

    base: float = 30.0
    cap: float = 3600.0
    jitter: float = 0.5
    give_up_after: float = 12 * 3600


@dataclass(frozen=True)
class SmtpConfig:
    """The relay for notices to staff after a failed run (spec §2.2.1 ④)."""

    host: str
    port: int = 25
    starttls: bool = False
    username: str | None = None
    password_file: Path | None = None
    sender: str = "renkei-agent@localhost"
    recipients: tuple[str, ...] = ()


@dataclass(frozen=True)
class CardConfig:
    """``[card]``: the residence-card reader-writer (docs/card.md, docs/card-write.md).

    ``key_provider`` names who holds the address-write keys: ``"none"``
    (writing refused), ``"test"`` (``test_key_file``; tests and development
    only), ``"pkcs11"`` (``pkcs11_module``, ``pkcs11_slot``,
    ``pkcs11_key_label``) or ``"sam"`` (``sam_reader``) — the last two are
    what a deployment must supply; this build has no driver for them.
    """

    reader: str | None = None
    trust_anchor_file: Path | None = None
    key_provider: str = "none"
    test_key_file: Path | None = None
    pkcs11_module: Path | None = None
    pkcs11_slot: int | None = None
    pkcs11_key_label: str | None = None
    sam_reader: str | None = None


@dataclass(frozen=True)
class UpdateConfig:
    """``[update]``: where ``renkei-agent update`` installs releases and keeps its TUF state.

    The defaults are the image's layout (docs/updates.md, "On the terminal");
    tests point them at temporary folders.  ``max_bundle_bytes`` refuses a
    release larger than that before it is downloaded (TUF knows its length),
    ``max_unpacked_bytes`` one that unpacks to more; ``self_test_timeout`` is
    per command of the new release's self-test.
    """

    install_root: Path = Path("/opt/renkei")
    state_dir: Path = Path("/var/lib/renkei-update")
    trusted_root: Path = Path("/usr/share/renkei/update-root.json")
    max_bundle_bytes: int = 256 * 1024 * 1024
    max_unpacked_bytes: int = 1024 * 1024 * 1024
    self_test_timeout: float = 300.0


@dataclass(frozen=True)
class AgentConfig:
    """Every setting of the agent; the example configuration describes each key."""

    server_url: str
    lasdec: str
    terminal_id: str
    key_path: Path
    server_key: str
    ca_file: Path | None
    folder_root: Path = Path("/srv/renkei")
    state_dir: Path = Path("/var/lib/renkei")
    dns_servers: tuple[str, ...] = ()
    ntp_servers: tuple[str, ...] = ()
    clock_warn: float = 1.0
    clock_refuse: float = 60.0
    business_end: str = "17:15"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    smtp: SmtpConfig | None = None
    max_file_bytes: int = 64 * 1024 * 1024
    settle_seconds: float = 5.0
    card: CardConfig = field(default_factory=CardConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)

    @property
    def queue_path(self) -> Path:
        """The local queue database."""
        return self.state_dir / "queue.sqlite3"


# --- value checks: each returns the converted value or raises _Bad(reason) -------------------


class _Bad(Exception):
    """A value is wrong; the reason is completed with the file and key by the caller."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOSTNAME = re.compile(r"(?=.{1,253}\.?$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")
_TERMINAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_HHMM = re.compile(r"([0-9]{2}):([0-9]{2})")
_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+")


def _kind(value: Any) -> str:
    return {bool: "true/false", int: "a number", float: "a number", str: "text"}.get(
        type(value), type(value).__name__
    )


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be text in quotes, got {_kind(value)} {value!r}")
    if not value.strip():
        raise _Bad("must not be empty")
    if _CONTROL.search(value):
        raise _Bad("must not contain control characters")
    return value.strip()


def _number(value: Any, *, strict: bool = False) -> float:
    """A finite, non-negative number; ``strict``: greater than 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"must be a number, got {_kind(value)} {value!r}")
    if not math.isfinite(value):
        raise _Bad(f"must be a finite number, got {value!r}")
    if value < 0:
        raise _Bad(f"must not be negative, got {value!r}")
    if strict and value == 0:
        raise _Bad("must be greater than 0")
    return float(value)


def _positive(value: Any) -> float:
    return _number(value, strict=True)


def _non_negative(value: Any) -> float:
    return _number(value)


def _integer(value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"must be a whole number, got {_kind(value)} {value!r}")
    if not low <= value <= high:
        raise _Bad(f"must be between {low} and {high}, got {value}")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, got {value!r}")
    return value


def _url(value: Any) -> str:
    text = _text(value)
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise _Bad(f"{text!r} is not a valid URL ({exc})") from None
    if parts.scheme.lower() != "https":
        raise _Bad(
            f"{text!r}: the scheme must be https (the server is only reached over TLS), "
            f"got {parts.scheme or 'none'!r}"
        )
    if not parts.hostname:
        raise _Bad(f"{text!r} names no host")
    if parts.username is not None or parts.password is not None:
        raise _Bad(f"{text!r}: no user name or password in the URL (the terminal key signs)")
    if parts.query or parts.fragment:
        raise _Bad(f"{text!r}: no query or fragment (…?… or …#…) in the server URL")
    host = parts.hostname
    if not _is_ip(host) and not _HOSTNAME.fullmatch(host):
        raise _Bad(f"{text!r}: {host!r} is not a valid host name")
    if port == 0:
        raise _Bad(f"{text!r}: port 0 is not a valid port")
    return f"https://{parts.netloc.lower()}{parts.path.rstrip('/')}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _lasdec(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        raise _Bad(
            f'write the code in quotes, e.g. lasdec = "{value:06d}" (as a number, a leading 0 is lost)'
        )
    text = _text(value)
    problems = lasdec_codes.validate(text)
    if "lasdec.format" in problems:
        raise _Bad(f"{text!r} is not six ASCII digits")
    if "lasdec.check_digit" in problems:
        raise _Bad(
            f"{text!r}: check digit does not match (for {text[:5]} it is "
            f"{lasdec_codes.check_digit(text[:5])}); check for a mistyped digit"
        )
    if "lasdec.unknown" in problems:
        raise _Bad(f"{text!r} names no municipality or ward in the local government code master")
    found = lasdec_codes.lookup(text)
    if found is not None and found.kind == "都道府県":
        raise _Bad(f"{text!r} is a prefecture's code; use the municipality's or ward's code")
    return text


def _terminal_id(value: Any) -> str:
    text = _text(value)
    if not _TERMINAL_ID.fullmatch(text):
        raise _Bad(f"{text!r}: use the id printed at enrollment (ASCII letters, digits, . _ : -)")
    return text


def _server_key(value: Any) -> str:
    text = _text(value)
    try:
        statement.public_key_from_text(text)
    except statement.StatementError as exc:
        raise _Bad(
            f"not the server's public key ({exc.message}); copy it from enrollment "
            "(base64 of 32 bytes)"
        ) from None
    return text


def _port(text: str, where: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise _Bad(f"{where!r}: port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise _Bad(f"{where!r}: port {port} is not between 1 and 65535")
    return port


def _split_host_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise _Bad(f"{text!r}: missing ']' after an IPv6 address")
        if rest and not rest.startswith(":"):
            raise _Bad(f"{text!r}: expected ':PORT' after ']'")
        return host, _port(rest[1:], text) if rest else None
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, _port(port, text)
    return text, None  # a bare host, or a bare IPv6 address


def _dns_server(value: Any) -> str:
    text = _text(value)
    host, _ = _split_host_port(text)
    if not _is_ip(host):
        raise _Bad(
            f"{text!r}: a DNS server must be an IP address, optionally with :PORT "
            "(e.g. 10.1.2.3 or 10.1.2.3:53) — copy it from the LGWAN terminal's settings"
        )
    return text


def _ntp_server(value: Any) -> str:
    text = _text(value)
    host, _ = _split_host_port(text)
    if not _is_ip(host) and not _HOSTNAME.fullmatch(host):
        raise _Bad(f"{text!r}: not an IP address or host name (optionally with :PORT)")
    return text


def _servers(check: Callable[[Any], str]) -> Callable[[Any], tuple[str, ...]]:
    def convert(value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise _Bad(f'must be a list of addresses, e.g. ["10.1.2.3"], got {value!r}')
        items = tuple(check(item) for item in value)
        if len(set(items)) != len(items):
            raise _Bad("lists an address twice")
        return items

    return convert


def _business_end(value: Any) -> str:
    if isinstance(value, dt.time):
        if value.second or value.microsecond or value.tzinfo:
            raise _Bad(f'{value!s}: give hours and minutes only, e.g. "17:15"')
        return f"{value.hour:02d}:{value.minute:02d}"
    text = _text(value)
    match = _HHMM.fullmatch(text)
    if not match:
        raise _Bad(f'{text!r} is not a time as HH:MM, e.g. "17:15"')
    hour, minute = int(match[1]), int(match[2])
    if hour > 23 or minute > 59:
        raise _Bad(f"{text!r} is not a time of day (00:00 to 23:59)")
    return text


def _address(value: Any) -> str:
    text = _text(value)
    if not _ADDRESS.fullmatch(text):
        raise _Bad(f"{text!r} is not a mail address")
    return text


def _addresses(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise _Bad(f"must be a list of mail addresses, got {value!r}")
    return tuple(_address(item) for item in value)


# --- reading ---------------------------------------------------------------------------------


class _Reader:
    """Converts one table of the file, naming the file and key in every error."""

    def __init__(self, source: Path, base: Path, prefix: str, data: Mapping[str, Any]):
        self.source = source
        self.base = base
        self.prefix = prefix
        self.data = data

    def error(self, key: str, reason: str) -> ConfigError:
        name = self.prefix + key
        return ConfigError(f"{self.source}: {name}: {reason}", key=name)

    def check_keys(self, known: set[str]) -> None:
        for key in self.data:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean {self.prefix + close[0]!r}?)" if close else ""
                where = f"[{self.prefix[:-1]}]" if self.prefix else "the top level"
                raise self.error(
                    key, f"unknown key{hint}; known keys in {where}: {', '.join(sorted(known))}"
                )

    def get(self, key: str, convert: Callable[[Any], Any], default: Any = None) -> Any:
        if key not in self.data:
            return default
        try:
            return convert(self.data[key])
        except _Bad as exc:
            raise self.error(key, str(exc)) from None

    def require(self, key: str, convert: Callable[[Any], Any]) -> Any:
        if key not in self.data:
            raise self.error(key, "missing (this key is required)")
        return self.get(key, convert)

    def path(
        self,
        key: str,
        *,
        must_exist: bool = False,
        required: bool = False,
        default: Path | None = None,
    ) -> Path | None:
        """A path; relative paths are relative to the configuration file's folder."""

        def convert(value: Any) -> Path:
            text = _text(value)
            path = Path(text).expanduser()
            path = path if path.is_absolute() else self.base / path
            if must_exist:
                if not path.exists():
                    raise _Bad(f"{path}: no such file")
                if not path.is_file():
                    raise _Bad(f"{path}: not a regular file")
            return path

        if required:
            return self.require(key, convert)
        return self.get(key, convert, default)


_TOP = {
    "server_url",
    "lasdec",
    "terminal_id",
    "key_path",
    "server_key",
    "ca_file",
    "folder_root",
    "state_dir",
    "dns_servers",
    "ntp_servers",
    "clock_warn",
    "clock_refuse",
    "business_end",
    "retry",
    "smtp",
    "max_file_bytes",
    "settle_seconds",
    "card",
    "update",
}
_RETRY = {"base", "cap", "jitter", "give_up_after"}
_SMTP = {"host", "port", "starttls", "username", "password_file", "sender", "recipients"}


def _table(reader: _Reader, key: str) -> Mapping[str, Any] | None:
    value = reader.data.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise reader.error(key, f"must be a table ([{key}]), got {value!r}")
    return value


def _retry(source: Path, base: Path, data: Mapping[str, Any]) -> RetryPolicy:
    reader = _Reader(source, base, "retry.", data)
    reader.check_keys(_RETRY)
    default = RetryPolicy()
    policy = RetryPolicy(
        base=reader.get("base", _positive, default.base),
        cap=reader.get("cap", _positive, default.cap),
        jitter=reader.get("jitter", _non_negative, default.jitter),
        give_up_after=reader.get("give_up_after", _non_negative, default.give_up_after),
    )
    if policy.jitter > 1:
        raise reader.error("jitter", f"must be between 0 and 1 (a fraction), got {policy.jitter}")
    if policy.cap < policy.base:
        raise reader.error(
            "cap", f"must be at least retry.base ({policy.base:g}), got {policy.cap:g}"
        )
    return policy


def _smtp(source: Path, base: Path, data: Mapping[str, Any]) -> SmtpConfig:
    reader = _Reader(source, base, "smtp.", data)
    reader.check_keys(_SMTP)
    default = SmtpConfig(host="")
    host = reader.require("host", _ntp_server)  # a host name or IP address, no port
    if ":" in host and not _is_ip(host):
        raise reader.error("host", f"{host!r}: give the port as smtp.port")
    config = SmtpConfig(
        host=host,
        port=reader.get("port", lambda v: _integer(v, 1, 65535), default.port),
        starttls=reader.get("starttls", _boolean, default.starttls),
        username=reader.get("username", _text),
        password_file=reader.path("password_file", must_exist=True),
        sender=reader.get("sender", _address, default.sender),
        recipients=reader.get("recipients", _addresses, default.recipients),
    )
    if (config.username is None) != (config.password_file is None):
        missing = "password_file" if config.password_file is None else "username"
        raise reader.error(missing, "smtp.username and smtp.password_file go together")
    return config


_CARD = {
    "reader",
    "trust_anchor_file",
    "key_provider",
    "test_key_file",
    "pkcs11_module",
    "pkcs11_slot",
    "pkcs11_key_label",
    "sam_reader",
}
# Which settings each key provider takes; every one of them is required for it.
_CARD_PROVIDERS = {
    "none": (),
    "test": ("test_key_file",),
    "pkcs11": ("pkcs11_module", "pkcs11_slot", "pkcs11_key_label"),
    "sam": ("sam_reader",),
}


def _key_provider(value: Any) -> str:
    text = _text(value)
    if text not in _CARD_PROVIDERS:
        raise _Bad(f"{text!r} is not one of {', '.join(map(repr, _CARD_PROVIDERS))}")
    return text


def _card(source: Path, base: Path, data: Mapping[str, Any]) -> CardConfig:
    reader = _Reader(source, base, "card.", data)
    reader.check_keys(_CARD)
    config = CardConfig(
        reader=reader.get("reader", _text),
        trust_anchor_file=reader.path("trust_anchor_file", must_exist=True),
        key_provider=reader.get("key_provider", _key_provider, "none"),
        test_key_file=reader.path("test_key_file", must_exist=True),
        pkcs11_module=reader.path("pkcs11_module", must_exist=True),
        pkcs11_slot=reader.get("pkcs11_slot", lambda v: _integer(v, 0, 1 << 32)),
        pkcs11_key_label=reader.get("pkcs11_key_label", _text),
        sam_reader=reader.get("sam_reader", _text),
    )
    wanted = _CARD_PROVIDERS[config.key_provider]
    for key in sorted(set(_CARD) - {"reader", "trust_anchor_file", "key_provider"}):
        given = key in data
        if key in wanted and not given:
            raise reader.error(key, f'missing: key_provider = "{config.key_provider}" needs it')
        if given and key not in wanted:
            raise reader.error(
                key, f'is not used with key_provider = "{config.key_provider}"; remove it'
            )
    return config


_UPDATE = {
    "install_root",
    "state_dir",
    "trusted_root",
    "max_bundle_bytes",
    "max_unpacked_bytes",
    "self_test_timeout",
}


def _update(source: Path, base: Path, data: Mapping[str, Any]) -> UpdateConfig:
    reader = _Reader(source, base, "update.", data)
    reader.check_keys(_UPDATE)
    default = UpdateConfig()
    return UpdateConfig(
        install_root=reader.path("install_root", default=default.install_root),
        state_dir=reader.path("state_dir", default=default.state_dir),
        trusted_root=reader.path("trusted_root", default=default.trusted_root),
        max_bundle_bytes=reader.get(
            "max_bundle_bytes", lambda v: _integer(v, 1, 1 << 40), default.max_bundle_bytes
        ),
        max_unpacked_bytes=reader.get(
            "max_unpacked_bytes", lambda v: _integer(v, 1, 1 << 42), default.max_unpacked_bytes
        ),
        self_test_timeout=reader.get("self_test_timeout", _positive, default.self_test_timeout),
    )


def load_card_config(
    path: Path | None = None, *, env: Mapping[str, str] | None = None
) -> CardConfig:
    """Read only ``[card]`` of the configuration (the card commands need nothing else).

    Same file choice as :func:`load_config`; when no path is given and the
    default file does not exist, the defaults (no reader name, no trust
    anchors, no key provider): a counter PC may read cards without the
    agent's server settings.
    """
    env = os.environ if env is None else env
    explicit = path is not None or bool(env.get(ENV_CONFIG))
    if path is None:
        path = Path(env[ENV_CONFIG]) if env.get(ENV_CONFIG) else DEFAULT_PATH
    path = Path(path)
    if not explicit and not path.exists():
        return CardConfig()
    data = _read_toml(path)
    table = _table(_Reader(path, path.absolute().parent, "", data), "card")
    return _card(path, path.absolute().parent, table) if table is not None else CardConfig()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: the configuration file does not exist (copy agent.toml.example, or set "
            f"{ENV_CONFIG})",
            code="config.missing",
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not valid TOML: the file is not UTF-8") from None


def load_config(path: Path | None = None, *, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read and check the configuration.

    ``path`` wins over ``env[RENKEI_AGENT_CONFIG]``, which wins over
    :data:`DEFAULT_PATH`; ``env`` defaults to ``os.environ``.  Raises
    :class:`ConfigError` naming the file and the key.
    """
    env = os.environ if env is None else env
    if path is None:
        path = Path(env[ENV_CONFIG]) if env.get(ENV_CONFIG) else DEFAULT_PATH
    path = Path(path)
    data = _read_toml(path)
    reader = _Reader(path, path.absolute().parent, "", data)
    reader.check_keys(_TOP)
    default = AgentConfig("", "", "", Path(), "", None)
    retry_table = _table(reader, "retry")
    smtp_table = _table(reader, "smtp")
    card_table = _table(reader, "card")
    update_table = _table(reader, "update")
    config = AgentConfig(
        server_url=reader.require("server_url", _url),
        lasdec=reader.require("lasdec", _lasdec),
        terminal_id=reader.require("terminal_id", _terminal_id),
        key_path=reader.path("key_path", must_exist=True, required=True),
        server_key=reader.require("server_key", _server_key),
        ca_file=reader.path("ca_file", must_exist=True),
        folder_root=reader.path("folder_root", default=default.folder_root),
        state_dir=reader.path("state_dir", default=default.state_dir),
        dns_servers=reader.get("dns_servers", _servers(_dns_server), ()),
        ntp_servers=reader.get("ntp_servers", _servers(_ntp_server), ()),
        clock_warn=reader.get("clock_warn", _positive, default.clock_warn),
        clock_refuse=reader.get("clock_refuse", _positive, default.clock_refuse),
        business_end=reader.get("business_end", _business_end, default.business_end),
        retry=_retry(path, reader.base, retry_table) if retry_table is not None else RetryPolicy(),
        smtp=_smtp(path, reader.base, smtp_table) if smtp_table is not None else None,
        max_file_bytes=reader.get(
            "max_file_bytes", lambda v: _integer(v, 1, 1 << 40), default.max_file_bytes
        ),
        settle_seconds=reader.get("settle_seconds", _non_negative, default.settle_seconds),
        card=_card(path, reader.base, card_table) if card_table is not None else CardConfig(),
        update=(
            _update(path, reader.base, update_table) if update_table is not None else UpdateConfig()
        ),
    )
    if config.clock_refuse <= config.clock_warn:
        # preflight.check_clock needs warn < refuse: an offset of at least clock_warn warns,
        # one of clock_refuse or more refuses the run, and a warning needs room between them.
        raise reader.error(
            "clock_refuse",
            f"must be greater than clock_warn ({config.clock_warn:g}), got "
            f"{config.clock_refuse:g}: a clock off by at least clock_warn is a warning, by "
            "clock_refuse or more the run is refused",
        )
    root, state = config.folder_root, config.state_dir
    if root == state or state.is_relative_to(root) or root.is_relative_to(state):
        raise reader.error(
            "state_dir",
            f"{state} and folder_root {root} must not contain each other (staff see folder_root; "
            "the queue and spool are not for them)",
        )
    return config
