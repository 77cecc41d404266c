"""The optional LAN drop: an SFTP-only account for staff on the municipality's internal LAN.

Pure rendering and validation; no files, no network.  Off unless
``configure`` is given ``--lan-drop-interface`` (then every ``lan_drop_*``
setting is checked here and :func:`render_files` adds its files).

Decisions (docs/staff-exchange.md explains them to staff, docs/provisioning.md
to the technician):

* **A dedicated sshd, not the system one.**  ``renkei-landrop-sshd.service``
  runs ``sshd -f /etc/renkei/landrop/sshd_config``, listening only on the LAN
  address; the whole daemon serves one account, so no ``Match`` block can be
  got wrong and the system sshd (if any) keeps its own settings.
* **Key-only, SFTP-only.**  ``ForceCommand internal-sftp``, no TTY, no
  forwarding of any kind (``DisableForwarding``, ``PermitTunnel no``,
  ``PermitListen/PermitOpen none``), ``AllowUsers`` with the allowed client
  prefixes, and every key line carries ``restrict,from="…"``.  Keys live in a
  root-owned file named after the user, so no other account has any key.
* **The chroot.**  sshd wants every component of ``ChrootDirectory`` owned by
  root and not group/world-writable; ``/srv/renkei`` is ``renkei-agent``'s
  (2750), so it cannot be the chroot.  The chroot is ``/srv/renkei-lan``
  (root:root 0755, from the tmpfiles file rendered here) holding empty mount
  points; the unit bind-mounts ``outbox`` read-write and ``inbox``, ``sent``,
  ``rejected`` read-only into it (``BindPaths=``, only inside the service).
  Staff may drop into outbox and copy out of the others, but cannot delete or
  alter what the agent keeps.
* **The account** ``renkei-lan`` (member of ``renkei-staff``) comes from a
  sysusers file rendered here; the unit sets its password field to ``*``
  (sshd without PAM refuses a locked ``!`` account even for keys).
* **Firewall.**  :func:`input_rules` adds one rule to ``inet renkei`` input:
  tcp/22 on the LAN interface, to the LAN address, from the allowed prefixes.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .settings import SettingsError

__all__ = [
    "CHROOT",
    "CONFIG_DIR",
    "FIELDS",
    "LAN_DROP_NETWORK",
    "SSHD_CONFIG",
    "SYSUSERS",
    "TMPFILES",
    "USER",
    "LanDrop",
    "input_rules",
    "is_key_line",
    "lan_drop_to_mapping",
    "parse_lan_drop",
    "parse_public_key",
    "render_authorized_keys",
    "render_files",
    "render_network",
    "render_sshd_config",
    "render_sysusers",
    "render_tmpfiles",
]

CONFIG_DIR = "/etc/renkei/landrop"
SSHD_CONFIG = f"{CONFIG_DIR}/sshd_config"
CHROOT = "/srv/renkei-lan"
USER = "renkei-lan"
LAN_DROP_NETWORK = "/etc/systemd/network/20-renkei-landrop.network"
SYSUSERS = "/etc/sysusers.d/renkei-landrop.conf"
TMPFILES = "/etc/tmpfiles.d/renkei-landrop.conf"
#: Folders in the chroot; the unit bind-mounts ``/srv/renkei/<name>`` on each.
FOLDERS = ("inbox", "outbox", "rejected", "sent")

FIELDS = (
    "lan_drop_interface",
    "lan_drop_address",
    "lan_drop_allow",
    "lan_drop_keys",
    "lan_drop_gateway",
)

_INTERFACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_KEY_TYPES = {
    "ssh-ed25519",
    "sk-ssh-ed25519@openssh.com",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-rsa",
}
_MIN_RSA_BITS = 3072
_HEADER = "# Written by renkei-provision configure; changes here are lost at the next run.\n"


@dataclass(frozen=True)
class LanDrop:
    """Validated LAN drop settings; build with :func:`parse_lan_drop`."""

    interface: str
    address: ipaddress.IPv4Interface
    allow: tuple[ipaddress.IPv4Network, ...]
    keys: tuple[str, ...]
    gateway: ipaddress.IPv4Address | None = None


def _list(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [part for part in re.split(r"[,\s]+", value) if part]
    if isinstance(value, list | tuple):
        return list(value)
    return []


def _read_ssh_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(blob):
        raise ValueError("truncated")
    (size,) = struct.unpack(">I", blob[offset : offset + 4])
    end = offset + 4 + size
    if end > len(blob):
        raise ValueError("truncated")
    return blob[offset + 4 : end], end


def parse_public_key(text: Any) -> str:
    """One OpenSSH public key line → ``"TYPE BASE64 [comment]"``; SettingsError otherwise.

    Options in the line are refused: this module adds its own
    (``restrict,from=…``), and a pasted ``command=`` or ``permitopen=`` would
    otherwise be taken on trust.  RSA keys under 3072 bits are refused.
    """
    name = "lan_drop_keys"
    if not isinstance(text, str) or not text.strip():
        raise SettingsError(name, f"must be a public key line (ssh-ed25519 AAAA…), got {text!r}")
    parts = text.strip().split(None, 2)
    if "\n" in text.strip() or parts[0] not in _KEY_TYPES:
        raise SettingsError(
            name,
            f"{text.strip()[:40]!r}…: give one public key per value, starting with its type "
            f"({', '.join(sorted(_KEY_TYPES))}) and no options — the content of id_ed25519.pub",
        )
    if len(parts) < 2:
        raise SettingsError(name, f"{parts[0]}: the key's base64 part is missing")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        kind, offset = _read_ssh_string(blob, 0)
        if kind.decode("ascii") != parts[0]:
            raise ValueError("type mismatch")
        if parts[0] == "ssh-rsa":
            _, offset = _read_ssh_string(blob, offset)  # e
            modulus, _ = _read_ssh_string(blob, offset)
            bits = int.from_bytes(modulus, "big").bit_length()
            if bits < _MIN_RSA_BITS:
                raise SettingsError(
                    name, f"an RSA key of {bits} bits is too weak; use ssh-keygen -t ed25519"
                )
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, SettingsError):
            raise
        raise SettingsError(
            name, f"{parts[0]} key is damaged ({exc}); copy the .pub file again"
        ) from None
    comment = parts[2].strip() if len(parts) > 2 else ""
    if any(ch in comment for ch in "\r\n\0"):
        raise SettingsError(name, "the key's comment contains a line break")
    return f"{parts[0]} {parts[1]}" + (f" {comment}" if comment else "")


def _address(name: str, text: Any) -> ipaddress.IPv4Address:
    try:
        address = ipaddress.IPv4Address(str(text).strip())
    except ValueError:
        raise SettingsError(name, f"{text!r} is not an IPv4 address, e.g. 192.168.10.1") from None
    return address


def parse_lan_drop(
    data: Mapping[str, Any], lgwan_interface: str, lgwan_network: ipaddress.IPv4Network | None
) -> LanDrop | None:
    """The ``lan_drop_*`` settings of ``data``, or None when the LAN drop is off.

    ``lgwan_*`` are the LGWAN port's, which the LAN drop must not share: the
    point of a second interface is that the LGWAN side never sees port 22.
    """
    if not data.get("lan_drop_interface"):
        extra = [key for key in FIELDS if data.get(key)]
        if extra:
            raise SettingsError(extra[0], "set lan_drop_interface too, or leave the LAN drop out")
        return None
    interface = str(data["lan_drop_interface"]).strip()
    if not _INTERFACE.fullmatch(interface):
        raise SettingsError("lan_drop_interface", f"{interface!r} is not an interface name")
    if interface == lgwan_interface:
        raise SettingsError(
            "lan_drop_interface",
            f"{interface} is the LGWAN port; the LAN drop needs the second interface",
        )
    text = str(data.get("lan_drop_address") or "").strip()
    if "/" not in text:
        raise SettingsError(
            "lan_drop_address", f"{text!r}: give address/prefix, e.g. 192.168.10.5/24"
        )
    try:
        address = ipaddress.IPv4Interface(text)
    except ValueError:
        raise SettingsError("lan_drop_address", f"{text!r} is not an IPv4 address/prefix") from None
    if not 8 <= address.network.prefixlen <= 30 or address.ip in (
        address.network.network_address,
        address.network.broadcast_address,
    ):
        raise SettingsError("lan_drop_address", f"{text}: not a host address in a /8…/30 subnet")
    if lgwan_network is not None and address.network.overlaps(lgwan_network):
        raise SettingsError(
            "lan_drop_address", f"{address.network} overlaps the LGWAN subnet {lgwan_network}"
        )
    gateway = None
    if data.get("lan_drop_gateway"):
        gateway = _address("lan_drop_gateway", data["lan_drop_gateway"])
        if gateway not in address.network or gateway == address.ip:
            raise SettingsError(
                "lan_drop_gateway", f"{gateway} must be another host in {address.network}"
            )
    allow: list[ipaddress.IPv4Network] = []
    for item in _list(data.get("lan_drop_allow")):
        try:
            network = ipaddress.IPv4Network(str(item).strip(), strict=True)
        except ValueError as exc:
            raise SettingsError(
                "lan_drop_allow", f"{item!r}: a staff PC's IPv4 address or prefix ({exc})"
            ) from None
        if network.prefixlen < 16:
            raise SettingsError("lan_drop_allow", f"{network}: wider than /16 opens too much")
        if address.ip in network:
            raise SettingsError("lan_drop_allow", f"{network} contains this appliance itself")
        if not network.subnet_of(address.network) and gateway is None:
            raise SettingsError(
                "lan_drop_allow",
                f"{network} is outside {address.network}: give lan_drop_gateway, the LAN router",
            )
        allow.append(network)
    if not allow:
        raise SettingsError("lan_drop_allow", "name the staff PCs' addresses or prefixes")
    keys = tuple(parse_public_key(key) for key in _list_keys(data.get("lan_drop_keys")))
    if not keys:
        raise SettingsError("lan_drop_keys", "give at least one staff public key")
    return LanDrop(interface, address, tuple(sorted(set(allow))), keys, gateway)


def _list_keys(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [line for line in value.splitlines() if line.strip() and not line.startswith("#")]
    return list(value) if isinstance(value, list | tuple) else []


def lan_drop_to_mapping(lan: LanDrop | None) -> dict[str, Any]:
    """The inverse of :func:`parse_lan_drop`: plain values for ``provision.toml``."""
    if lan is None:
        return {}
    data: dict[str, Any] = {
        "lan_drop_interface": lan.interface,
        "lan_drop_address": str(lan.address),
        "lan_drop_allow": [str(n) for n in lan.allow],
        "lan_drop_keys": list(lan.keys),
    }
    if lan.gateway is not None:
        data["lan_drop_gateway"] = str(lan.gateway)
    return data


def _sources(lan: LanDrop) -> str:
    return ",".join(str(n) for n in lan.allow)


def render_sshd_config(
    lan: LanDrop,
    *,
    config_dir: str = CONFIG_DIR,
    chroot: str = CHROOT,
    user: str = USER,
    port: int = 22,
) -> str:
    """The dedicated sshd's whole configuration (``sshd -f``); nothing from /etc/ssh is read.

    ``config_dir``, ``chroot``, ``user`` and ``port`` exist for the tests,
    which run this very text in a network namespace.
    """
    lines = [
        _HEADER.rstrip(),
        "# renkei LAN drop: SFTP only, one account, keys only, chrooted.  docs/staff-exchange.md",
        f"ListenAddress {lan.address.ip}:{port}",
        "AddressFamily inet",
        f"HostKey {config_dir}/ssh_host_ed25519_key",
        "PidFile none",
        "UsePAM no",
        "PermitRootLogin no",
        f"AllowUsers {' '.join(f'{user}@{n}' for n in lan.allow)}",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "HostbasedAuthentication no",
        "PermitEmptyPasswords no",
        f"AuthorizedKeysFile {config_dir}/%u.keys",
        "AuthorizedKeysCommand none",
        "AuthorizedPrincipalsFile none",
        "StrictModes yes",
        "DisableForwarding yes",
        "AllowTcpForwarding no",
        "AllowStreamLocalForwarding no",
        "AllowAgentForwarding no",
        "X11Forwarding no",
        "PermitTunnel no",
        "PermitListen none",
        "PermitOpen none",
        "GatewayPorts no",
        "PermitTTY no",
        "PermitUserRC no",
        "PermitUserEnvironment no",
        f"ChrootDirectory {chroot}",
        "Subsystem sftp internal-sftp",
        "ForceCommand internal-sftp -d /outbox -u 0027 -l INFO",
        "UseDNS no",
        "Compression no",
        "PrintMotd no",
        "PrintLastLog no",
        "LoginGraceTime 20",
        "MaxAuthTries 3",
        "MaxSessions 2",
        "MaxStartups 4:50:10",
        "ClientAliveInterval 60",
        "ClientAliveCountMax 3",
        "LogLevel VERBOSE",
    ]
    return "\n".join(lines) + "\n"


def render_authorized_keys(lan: LanDrop) -> str:
    """Each staff key restricted to SFTP use from the allowed addresses."""
    options = f'restrict,from="{_sources(lan)}"'
    return _HEADER + "".join(f"{options} {key}\n" for key in lan.keys)


def render_network(lan: LanDrop) -> str:
    """systemd-networkd ``.network`` for the LAN port: no default route, no DHCP."""
    lines = [_HEADER.rstrip(), "[Match]", f"Name={lan.interface}", "", "[Network]"]
    lines += [f"Address={lan.address}", "IPv6AcceptRA=no", "LinkLocalAddressing=no"]
    for network in lan.allow:
        if lan.gateway is not None and not network.subnet_of(lan.address.network):
            lines += ["", "[Route]", f"Destination={network}", f"Gateway={lan.gateway}"]
    return "\n".join(lines) + "\n"


def render_sysusers(user: str = USER) -> str:
    """The account sshd logs staff in as; a member of renkei-staff, no shell."""
    return (
        _HEADER + f'u {user} - "renkei LAN drop (SFTP only)" / /usr/sbin/nologin\n'
        f"m {user} renkei-staff\n"
    )


def render_tmpfiles(chroot: str = CHROOT) -> str:
    """The root-owned chroot and its empty mount points (the unit binds the folders on them)."""
    lines = [_HEADER.rstrip(), f"d {chroot} 0755 root root -"]
    lines += [f"d {chroot}/{name} 0755 root root -" for name in FOLDERS]
    return "\n".join(lines) + "\n"


def input_rules(lan: LanDrop | None) -> list[str]:
    """Rules for the ``inet renkei`` input chain: SSH only on the LAN port, from the allowed."""
    if lan is None:
        return []
    sources = [str(n) for n in lan.allow]
    source = sources[0] if len(sources) == 1 else "{ " + ", ".join(sources) + " }"
    return [
        f'iifname "{lan.interface}" ip saddr {source} ip daddr {lan.address.ip} '
        'tcp dport 22 ct state new accept comment "LAN drop SFTP"'
    ]


def render_files(lan: LanDrop | None) -> dict[str, tuple[str, int]]:
    """Path → (text, mode) of every LAN drop file; empty when the LAN drop is off."""
    if lan is None:
        return {}
    return {
        SSHD_CONFIG: (render_sshd_config(lan), 0o644),
        f"{CONFIG_DIR}/{USER}.keys": (render_authorized_keys(lan), 0o644),
        LAN_DROP_NETWORK: (render_network(lan), 0o644),
        SYSUSERS: (render_sysusers(), 0o644),
        TMPFILES: (render_tmpfiles(), 0o644),
    }


def is_key_line(text: str) -> bool:
    """Whether ``text`` looks like a public key line rather than a file name (the CLI asks)."""
    return text.strip().split(" ", 1)[0] in _KEY_TYPES
