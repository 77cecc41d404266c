"""The technician's LGWAN settings, checked as a whole before anything is written.

Why a separate, strict step: everything ``configure`` writes (network, chrony,
resolver, firewall, agent configuration) is derived from these values, and a
typo found after half the files are written leaves the appliance neither in
the old state nor in the new.  So :func:`parse_settings` checks every value
and their relations (the gateway inside the subnet, the local government
code's check digit and its name) and raises :class:`SettingsError` naming the
field and what to do.  Nothing here touches the network or the files, except
:func:`interface_exists`, which the CLI calls only for the real root.

The LGWAN is IPv4 (spec §3.2: the municipality's LGWAN terminal settings), so
addresses are IPv4.  DNS and NTP servers may carry ``:PORT`` (tests, and the
occasional non-standard server); the firewall and ``IPAddressAllow=`` use the
address and that port.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import lasdec as lasdec_codes

if TYPE_CHECKING:
    from .landrop import LanDrop

__all__ = [
    "BUSINESS_END",
    "BUSINESS_END_RANGE",
    "Endpoint",
    "Settings",
    "SettingsError",
    "interface_exists",
    "parse_endpoint",
    "parse_settings",
    "read_settings_file",
    "settings_to_mapping",
]

_INTERFACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_MAIL = re.compile(r"[^@\s<>]+@[^@\s<>]+")
_HHMM = re.compile(r"([0-9]{1,2}):([0-9]{2})")
#: The agent's default business_end (appliance/agent/config.py) and the shipped timer's.
BUSINESS_END = "17:15"
#: business_end must lie in this range: the evening run and its retry stay on the same day.
BUSINESS_END_RANGE = ("12:00", "22:00")

FIELDS = (
    "interface",
    "dhcp",
    "address",
    "gateway",
    "dns_servers",
    "ntp_servers",
    "server_url",
    "server_address",
    "lasdec",
    "smtp_host",
    "smtp_port",
    "smtp_sender",
    "smtp_recipients",
    "business_end",
    # The optional LAN drop (provisioning/landrop.py checks these).
    "lan_drop_interface",
    "lan_drop_address",
    "lan_drop_allow",
    "lan_drop_keys",
    "lan_drop_gateway",
)


class SettingsError(ValueError):
    """A setting is wrong; ``field`` names it, the message says what to enter instead."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Endpoint:
    """An IPv4 address and a port: one DNS or NTP server."""

    address: ipaddress.IPv4Address
    port: int

    def __str__(self) -> str:
        return str(self.address) if self.port in (53, 123) else f"{self.address}:{self.port}"

    def text(self, default_port: int) -> str:
        """As the agent configuration writes it: the bare address for the standard port."""
        return str(self.address) if self.port == default_port else f"{self.address}:{self.port}"


@dataclass(frozen=True)
class Settings:
    """Validated settings; build with :func:`parse_settings`."""

    interface: str
    dhcp: bool
    address: ipaddress.IPv4Interface | None
    gateway: ipaddress.IPv4Address | None
    dns_servers: tuple[Endpoint, ...]
    ntp_servers: tuple[Endpoint, ...]
    server_url: str
    server_address: ipaddress.IPv4Network
    lasdec: str
    municipality: str
    smtp_host: ipaddress.IPv4Address | None = None
    smtp_port: int = 25
    smtp_sender: str | None = None
    smtp_recipients: tuple[str, ...] = field(default=())
    lan_drop: LanDrop | None = None
    #: When staff stop dropping files (HH:MM, Japan time); the agent timer follows it.
    business_end: str = BUSINESS_END

    @property
    def server_name(self) -> str:
        return urllib.parse.urlsplit(self.server_url).hostname or ""

    @property
    def server_port(self) -> int:
        return urllib.parse.urlsplit(self.server_url).port or 443


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SettingsError(name, f"must be text, got {value!r}")
    return value.strip()


def _ipv4(name: str, text: str, what: str) -> ipaddress.IPv4Address:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise SettingsError(
            name, f"{text!r} is not an IPv4 address (four numbers 0-255, e.g. 10.1.2.3) — {what}"
        ) from None
    if not isinstance(address, ipaddress.IPv4Address):
        raise SettingsError(name, f"{text!r}: the LGWAN is IPv4; give an IPv4 address")
    if (
        address.is_unspecified
        or address.is_multicast
        or address == ipaddress.IPv4Address("255.255.255.255")
    ):
        raise SettingsError(name, f"{text!r} cannot be a host's address")
    return address


def parse_endpoint(name: str, text: Any, default_port: int) -> Endpoint:
    """``"10.1.2.3"`` or ``"10.1.2.3:5353"`` → :class:`Endpoint`; SettingsError otherwise."""
    text = _text(name, text)
    host, port = text, default_port
    if text.count(":") == 1:
        host, _, number = text.partition(":")
        if not number.isascii() or not number.isdigit() or not 1 <= int(number) <= 65535:
            raise SettingsError(name, f"{text!r}: the port must be a number 1-65535")
        port = int(number)
    return Endpoint(_ipv4(name, host, "copy it from the LGWAN terminal's settings"), port)


def _endpoints(name: str, value: Any, default_port: int) -> tuple[Endpoint, ...]:
    if isinstance(value, str):
        value = [part for part in re.split(r"[,\s]+", value) if part]
    if not isinstance(value, list | tuple) or not value:
        raise SettingsError(name, "give at least one server address, e.g. 10.1.2.3")
    found = tuple(parse_endpoint(name, item, default_port) for item in value)
    if len(set(found)) != len(found):
        raise SettingsError(name, "lists the same server twice")
    return found


def _server_url(value: Any) -> str:
    text = _text("server_url", value)
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise SettingsError("server_url", f"{text!r} is not a URL ({exc})") from None
    if parts.scheme != "https" or not parts.hostname:
        raise SettingsError("server_url", f"{text!r}: write https://NAME (the server's name)")
    if parts.path.strip("/") or parts.query or parts.fragment or parts.username:
        raise SettingsError("server_url", f"{text!r}: only https://NAME[:PORT], nothing after it")
    if not _HOSTNAME.fullmatch(parts.hostname):
        raise SettingsError("server_url", f"{parts.hostname!r} is not a host name")
    if port == 0:
        raise SettingsError("server_url", "port 0 is not a port")
    return f"https://{parts.netloc.lower()}"


def _lasdec(value: Any) -> tuple[str, str]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"{value:06d}"
    text = _text("lasdec", value)
    problems = lasdec_codes.validate(text)
    if "lasdec.format" in problems:
        raise SettingsError("lasdec", f"{text!r} is not six digits (全国地方公共団体コード)")
    if "lasdec.check_digit" in problems:
        raise SettingsError(
            "lasdec",
            f"{text!r}: the check digit does not match (for {text[:5]} it is "
            f"{lasdec_codes.check_digit(text[:5])}); check for a mistyped digit",
        )
    found = lasdec_codes.lookup(text)
    if "lasdec.unknown" in problems or found is None:
        raise SettingsError("lasdec", f"{text!r} names no municipality or ward in the master")
    if found.kind == "都道府県":
        raise SettingsError("lasdec", f"{text!r} is a prefecture ({found.name}); give the city's")
    return text, found.full_name


def _boolean(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"yes", "true", "1", "dhcp", "y"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"no", "false", "0", "static", "n"}:
        return False
    raise SettingsError(name, f"must be yes or no, got {value!r}")


def _business_end(value: Any) -> str:
    """``"17:15"`` → ``"17:15"``; a TOML time (17:15:00) is accepted too."""
    if hasattr(value, "hour") and hasattr(value, "minute") and not isinstance(value, str):
        value = f"{value.hour:02d}:{value.minute:02d}"
    text = _text("business_end", value)
    match = _HHMM.fullmatch(text)
    if not match or int(match[1]) > 23 or int(match[2]) > 59:
        raise SettingsError("business_end", f"{text!r} is not a time of day as HH:MM, e.g. 17:15")
    text = f"{int(match[1]):02d}:{match[2]}"
    low, high = BUSINESS_END_RANGE
    if not low <= text <= high:
        raise SettingsError(
            "business_end",
            f"{text} is outside {low}-{high}: the agent runs 15 min after it and retries "
            "later the same evening",
        )
    return text


def parse_settings(data: Mapping[str, Any]) -> Settings:
    """Check every value and their relations; raise :class:`SettingsError` at the first problem.

    Keys are :data:`FIELDS`; an unknown key is an error (a typo would
    otherwise be silently ignored).
    """
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise SettingsError(unknown[0], f"unknown setting; known: {', '.join(FIELDS)}")
    interface = _text("interface", data.get("interface", ""))
    if not _INTERFACE.fullmatch(interface):
        raise SettingsError("interface", f"{interface!r} is not a network interface name")
    dhcp = _boolean("dhcp", data.get("dhcp", False))
    address = gateway = None
    if not dhcp:
        text = _text("address", data.get("address", ""))
        if "/" not in text:
            raise SettingsError("address", f"{text!r}: give the prefix too, e.g. 10.1.2.10/24")
        host, _, prefix = text.partition("/")
        _ipv4("address", host, "the address for this appliance")
        if not prefix.isdigit() or not 8 <= int(prefix) <= 30:
            raise SettingsError("address", f"prefix /{prefix} must be a number from 8 to 30")
        address = ipaddress.IPv4Interface(text)
        if address.ip in (address.network.network_address, address.network.broadcast_address):
            raise SettingsError(
                "address", f"{text}: that is the network's own or broadcast address"
            )
        gateway = _ipv4("gateway", _text("gateway", data.get("gateway", "")), "the router")
        if gateway not in address.network:
            raise SettingsError(
                "gateway",
                f"{gateway} is outside the subnet {address.network}; check the address, "
                "the prefix and the gateway",
            )
        if gateway == address.ip:
            raise SettingsError("gateway", f"{gateway} is this appliance's own address")
        if gateway in (address.network.network_address, address.network.broadcast_address):
            raise SettingsError("gateway", f"{gateway} is the network or broadcast address")
    elif data.get("address") or data.get("gateway"):
        raise SettingsError("address", "with DHCP, leave address and gateway out")
    dns_servers = _endpoints("dns_servers", data.get("dns_servers"), 53)
    ntp_servers = _endpoints("ntp_servers", data.get("ntp_servers"), 123)
    server_url = _server_url(data.get("server_url"))
    text = _text("server_address", data.get("server_address", ""))
    try:
        server_address = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise SettingsError(
            "server_address",
            f"{text!r}: the server's IPv4 address or prefix as published for the LGWAN ({exc})",
        ) from None
    if server_address.prefixlen < 16:
        raise SettingsError("server_address", f"{text}: a prefix wider than /16 opens too much")
    lasdec, municipality = _lasdec(data.get("lasdec"))
    smtp_host = None
    smtp_port = 25
    sender = None
    recipients: tuple[str, ...] = ()
    if data.get("smtp_host"):
        smtp_host = _ipv4("smtp_host", _text("smtp_host", data["smtp_host"]), "the mail relay")
        port = data.get("smtp_port", 25)
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise SettingsError("smtp_port", f"{port!r} is not a port 1-65535")
        smtp_port = port
        if data.get("smtp_sender"):
            sender = _text("smtp_sender", data["smtp_sender"])
            if not _MAIL.fullmatch(sender):
                raise SettingsError("smtp_sender", f"{sender!r} is not a mail address")
        value = data.get("smtp_recipients") or ()
        if isinstance(value, str):
            value = [part for part in re.split(r"[,\s]+", value) if part]
        for item in value:
            if not isinstance(item, str) or not _MAIL.fullmatch(item):
                raise SettingsError("smtp_recipients", f"{item!r} is not a mail address")
        recipients = tuple(value)
    from .landrop import parse_lan_drop  # here: landrop imports this module

    lan_drop = parse_lan_drop(data, interface, address.network if address else None)
    return Settings(
        interface=interface,
        dhcp=dhcp,
        address=address,
        gateway=gateway,
        dns_servers=dns_servers,
        ntp_servers=ntp_servers,
        server_url=server_url,
        server_address=server_address,
        lasdec=lasdec,
        municipality=municipality,
        smtp_host=smtp_host,
        smtp_port=smtp_port,
        smtp_sender=sender,
        smtp_recipients=recipients,
        business_end=_business_end(data.get("business_end", BUSINESS_END)),
        lan_drop=lan_drop,
    )


def settings_to_mapping(settings: Settings) -> dict[str, Any]:
    """The inverse of :func:`parse_settings`: plain values, as saved in ``provision.toml``."""
    data: dict[str, Any] = {
        "interface": settings.interface,
        "dhcp": settings.dhcp,
        "dns_servers": [s.text(53) for s in settings.dns_servers],
        "ntp_servers": [s.text(123) for s in settings.ntp_servers],
        "server_url": settings.server_url,
        "server_address": str(settings.server_address),
        "lasdec": settings.lasdec,
        "business_end": settings.business_end,
    }
    if settings.address is not None:
        data["address"] = str(settings.address)
        data["gateway"] = str(settings.gateway)
    if settings.smtp_host is not None:
        data["smtp_host"] = str(settings.smtp_host)
        data["smtp_port"] = settings.smtp_port
        if settings.smtp_sender:
            data["smtp_sender"] = settings.smtp_sender
        if settings.smtp_recipients:
            data["smtp_recipients"] = list(settings.smtp_recipients)
    from .landrop import lan_drop_to_mapping

    data.update(lan_drop_to_mapping(settings.lan_drop))
    return data


def read_settings_file(path: Path) -> dict[str, Any]:
    """A TOML file of settings (the keys of :data:`FIELDS`); SettingsError when unreadable."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError("file", f"{path}: cannot be read ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError("file", f"{path}: not valid TOML ({exc})") from None


def interface_exists(name: str, sys_root: Path = Path("/sys/class/net")) -> bool:
    """Whether the kernel knows interface ``name`` (only meaningful on the real appliance)."""
    return (sys_root / name).exists()
