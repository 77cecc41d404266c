"""Settings → the contents of every file ``configure`` writes.  Pure: no files, no network.

Keeping rendering pure lets ``--dry-run`` show exactly what would change,
lets ``check`` compare the live firewall with what the settings imply, and
lets tests assert on content without a machine to configure.

Decisions (docs/provisioning.md explains them to the technician):

* **Resolver: a plain ``/etc/resolv.conf``.**  The bookworm image has no
  systemd-resolved (it is a separate package there), and a static file with
  only the LGWAN DNS servers is the smallest thing that works; networkd is
  told not to take DNS or NTP from DHCP, so nothing overwrites it.  A server
  given with a non-standard port cannot be expressed in resolv.conf and is
  left out of it (the agent asks the servers directly, ports included).
* **chrony: the whole ``/etc/chrony/chrony.conf``.**  Debian's file carries
  a public pool and a ``sourcedir``; "only the LGWAN NTP servers" means
  replacing it.  ``makestep 1 3`` lets the first syncs step a clock that is
  far off (an appliance that sat in a store room).
* **nftables: one table ``inet renkei``, policy drop on input, output and
  forward.**  Output allows exactly: DNS (UDP and TCP) to the DNS servers,
  NTP to the NTP servers, HTTPS to the server's address or prefix, SMTP to
  the relay, ICMP echo to the gateway (the technician's reachability check)
  and DHCP when used; input allows only replies (established/related) and
  loopback.  IPv6 leaves nowhere.
* **The agent timer follows ``business_end``.**  A drop-in replaces the
  shipped ``OnCalendar=`` times (appliance/rootfs/…/renkei-agent.timer) with
  the evening run 15 minutes after ``business_end`` and the retry run 3 h 30
  after it, as shipped (17:15 → 17:30 and 21:00), but no later than 21:30
  while that still leaves 1 h 30 (the queue's ``retry.cap`` plus the timer's
  30-minute random delay).  The same ``business_end`` goes into agent.toml,
  so the configuration and the timer cannot disagree.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from . import landrop
from .settings import Endpoint, Settings, settings_to_mapping

__all__ = [
    "AGENT_TOML",
    "CHRONY_CONF",
    "NETWORK_DROPIN",
    "UPDATE_NETWORK_DROPIN",
    "NETWORK_FILE",
    "NFTABLES_CONF",
    "PROVISION_TOML",
    "RESOLV_CONF",
    "SCHEDULE_DROPIN",
    "TABLE",
    "Enrollment",
    "FileContent",
    "render_all",
    "render_agent_toml",
    "render_chrony",
    "render_network",
    "render_network_dropin",
    "render_nftables",
    "render_resolv",
    "render_schedule",
    "schedule_times",
    "toml_text",
]

NETWORK_FILE = "/etc/systemd/network/10-renkei-lgwan.network"
CHRONY_CONF = "/etc/chrony/chrony.conf"
RESOLV_CONF = "/etc/resolv.conf"
NFTABLES_CONF = "/etc/nftables.conf"
AGENT_TOML = "/etc/renkei/agent.toml"
PROVISION_TOML = "/etc/renkei/provision.toml"
NETWORK_DROPIN = "/etc/systemd/system/renkei-agent.service.d/network.conf"
UPDATE_NETWORK_DROPIN = "/etc/systemd/system/renkei-update.service.d/network.conf"
SCHEDULE_DROPIN = "/etc/systemd/system/renkei-agent.timer.d/schedule.conf"
#: The nftables table provisioning owns.
TABLE = "renkei"
KEY_PATH = "/var/lib/renkei/terminal-key.pem"
CA_PATH = "/etc/renkei/server-ca.pem"

_HEADER = "# Written by renkei-provision configure; changes here are lost at the next run.\n"


@dataclass(frozen=True)
class FileContent:
    """One file to write: text, mode, and the group that may read it (None: root's)."""

    text: str
    mode: int = 0o644
    group: str | None = None


@dataclass(frozen=True)
class Enrollment:
    """What enrollment adds to the agent configuration."""

    terminal_id: str
    server_key: str
    key_path: str = KEY_PATH
    ca_file: str | None = None


def render_network(settings: Settings) -> str:
    """systemd-networkd ``.network`` for the LGWAN port."""
    lines = [_HEADER.rstrip(), "[Match]", f"Name={settings.interface}", "", "[Network]"]
    if settings.dhcp:
        lines.append("DHCP=ipv4")
    else:
        lines += [f"Address={settings.address}", f"Gateway={settings.gateway}"]
    lines += [f"DNS={server.address}" for server in settings.dns_servers]
    lines += [f"NTP={server.address}" for server in settings.ntp_servers]
    lines += ["IPv6AcceptRA=no", "LinkLocalAddressing=no"]
    if settings.dhcp:
        lines += ["", "[DHCPv4]", "UseDNS=no", "UseNTP=no", "UseDomains=no"]
    return "\n".join(lines) + "\n"


def render_chrony(settings: Settings) -> str:
    """chrony.conf with the LGWAN NTP servers only."""
    lines = [_HEADER.rstrip()]
    for server in settings.ntp_servers:
        port = f" port {server.port}" if server.port != 123 else ""
        lines.append(f"server {server.address}{port} iburst")
    lines += [
        "# Step the clock during the first three updates if it is more than 1 s off.",
        "makestep 1 3",
        "driftfile /var/lib/chrony/chrony.drift",
        "rtcsync",
        "leapsectz right/UTC",
        "logdir /var/log/chrony",
    ]
    return "\n".join(lines) + "\n"


def render_resolv(settings: Settings) -> str:
    """resolv.conf naming only the LGWAN DNS servers (standard port only, see module doc)."""
    lines = [_HEADER.rstrip()]
    for server in settings.dns_servers:
        if server.port == 53:
            lines.append(f"nameserver {server.address}")
        else:
            lines.append(f"# {server}: not on port 53, asked only by the agent")
    lines.append("options timeout:2 attempts:2")
    return "\n".join(lines) + "\n"


def _set(addresses: Iterable[object]) -> str:
    items = sorted({str(a) for a in addresses}, key=lambda t: ipaddress.ip_network(t, strict=False))
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _by_port(endpoints: Iterable[Endpoint]) -> dict[int, list[str]]:
    ports: dict[int, list[str]] = {}
    for endpoint in endpoints:
        ports.setdefault(endpoint.port, []).append(str(endpoint.address))
    return dict(sorted(ports.items()))


def render_nftables(settings: Settings) -> str:
    """The allow-list ruleset (``nft -f``): default deny in, out and forward."""
    out = [
        'oifname "lo" accept',
        "ct state established,related accept",
        "ct state invalid drop",
    ]
    for port, addresses in _by_port(settings.dns_servers).items():
        out.append(f'ip daddr {_set(addresses)} udp dport {port} accept comment "DNS"')
        out.append(f'ip daddr {_set(addresses)} tcp dport {port} accept comment "DNS"')
    for port, addresses in _by_port(settings.ntp_servers).items():
        out.append(f'ip daddr {_set(addresses)} udp dport {port} accept comment "NTP"')
    out.append(
        f"ip daddr {settings.server_address} tcp dport {settings.server_port} "
        'accept comment "linkage server"'
    )
    if settings.smtp_host is not None:
        out.append(
            f'ip daddr {settings.smtp_host} tcp dport {settings.smtp_port} accept comment "SMTP"'
        )
    if settings.gateway is not None:
        out.append(f'ip daddr {settings.gateway} icmp type echo-request accept comment "gateway"')
    inp = ['iifname "lo" accept', "ct state established,related accept"]
    if settings.dhcp:
        out.append('udp sport 68 udp dport 67 accept comment "DHCP"')
        inp.append('udp sport 67 udp dport 68 accept comment "DHCP"')
    inp += landrop.input_rules(settings.lan_drop)

    def chain(name: str, rules: list[str]) -> list[str]:
        return [
            f"\tchain {name} {{",
            f"\t\ttype filter hook {name} priority filter; policy drop;",
            *(f"\t\t{rule}" for rule in rules),
            "\t}",
        ]

    lines = [
        "#!/usr/sbin/nft -f",
        _HEADER.rstrip(),
        "flush ruleset",
        "",
        f"table inet {TABLE} {{",
        *chain("input", inp),
        *chain("forward", []),
        *chain("output", out),
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_network_dropin(settings: Settings, *, mail: bool = True) -> str:
    """A unit's ``IPAddressAllow=`` drop-in (docs/terminal-units.md).

    The agent's: DNS, NTP, the SMTP relay and the server.  The updater's
    (``mail=False``): the same without the relay, which it never uses.
    """
    allowed = [str(s.address) for s in settings.dns_servers]
    allowed += [str(s.address) for s in settings.ntp_servers]
    if mail and settings.smtp_host is not None:
        allowed.append(str(settings.smtp_host))
    server = settings.server_address
    allowed.append(str(server.network_address) if server.prefixlen == 32 else str(server))
    unique = list(dict.fromkeys(allowed))
    return f"{_HEADER}[Service]\nIPAddressAllow={' '.join(unique)}\n"


def _minutes(hhmm: str) -> int:
    hour, minute = hhmm.split(":")
    return int(hour) * 60 + int(minute)


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def schedule_times(business_end: str) -> tuple[str, str]:
    """The evening run and the retry run (HH:MM, Japan time) for ``business_end``.

    Run: 15 min after business_end.  Retry: 3 h 30 after the run as shipped,
    capped at 21:30 (appliances switched off at night), but never less than
    1 h 30 after the run.  ``business_end`` ≤ 22:00 keeps both on the same day.
    """
    run = _minutes(business_end) + 15
    retry = min(run + 210, max(21 * 60 + 30, run + 90))
    if retry >= 24 * 60:
        raise ValueError(f"business_end {business_end}: the retry run would fall after midnight")
    return _hhmm(run), _hhmm(retry)


def render_schedule(settings: Settings) -> str:
    """The agent timer's drop-in: the shipped times cleared, the ones for business_end set."""
    run, retry = schedule_times(settings.business_end)
    return (
        f"{_HEADER}# business_end {settings.business_end} (agent.toml): the run 15 min after it,\n"
        "# the retry later the same evening (docs/provisioning.md).\n"
        "[Timer]\n"
        "OnCalendar=\n"
        f"OnCalendar=Mon..Fri {run} Asia/Tokyo\n"
        f"OnCalendar=Mon..Fri {retry} Asia/Tokyo\n"
    )


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def toml_text(
    data: Mapping[str, object], tables: Mapping[str, Mapping[str, object]] | None = None
) -> str:
    """A flat TOML document (strings, numbers, booleans, lists; one level of tables)."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in data.items()]
    for name, table in (tables or {}).items():
        lines += ["", f"[{name}]", *(f"{k} = {_toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def render_agent_toml(settings: Settings, enrollment: Enrollment) -> str:
    """The agent configuration (``appliance/agent/config.py`` reads it)."""
    data: dict[str, object] = {
        "server_url": settings.server_url,
        "lasdec": settings.lasdec,
        "terminal_id": enrollment.terminal_id,
        "key_path": enrollment.key_path,
        "server_key": enrollment.server_key,
    }
    if enrollment.ca_file:
        data["ca_file"] = enrollment.ca_file
    data["dns_servers"] = [s.text(53) for s in settings.dns_servers]
    data["ntp_servers"] = [s.text(123) for s in settings.ntp_servers]
    data["business_end"] = settings.business_end
    tables: dict[str, dict[str, object]] = {}
    if settings.smtp_host is not None:
        smtp: dict[str, object] = {"host": str(settings.smtp_host), "port": settings.smtp_port}
        if settings.smtp_sender:
            smtp["sender"] = settings.smtp_sender
        if settings.smtp_recipients:
            smtp["recipients"] = list(settings.smtp_recipients)
        tables["smtp"] = smtp
    return _HEADER + f"# {settings.municipality}\n" + toml_text(data, tables)


def render_all(settings: Settings, enrollment: Enrollment | None = None) -> dict[str, FileContent]:
    """Every file, keyed by its absolute path on the appliance.

    The agent configuration is included only once the terminal is enrolled:
    without a terminal id it would make every timer run fail.
    """
    files = {
        PROVISION_TOML: FileContent(_HEADER + toml_text(settings_to_mapping(settings))),
        NETWORK_FILE: FileContent(render_network(settings)),
        CHRONY_CONF: FileContent(render_chrony(settings)),
        RESOLV_CONF: FileContent(render_resolv(settings)),
        NFTABLES_CONF: FileContent(render_nftables(settings), mode=0o755),
        NETWORK_DROPIN: FileContent(render_network_dropin(settings)),
        UPDATE_NETWORK_DROPIN: FileContent(render_network_dropin(settings, mail=False)),
        SCHEDULE_DROPIN: FileContent(render_schedule(settings)),
    }
    for path, (text, mode) in landrop.render_files(settings.lan_drop).items():
        files[path] = FileContent(text, mode=mode)
    if enrollment is not None:
        files[AGENT_TOML] = FileContent(
            render_agent_toml(settings, enrollment), mode=0o640, group="renkei-agent"
        )
    return files
