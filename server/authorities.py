"""Which names a signed request may address: the pin on the signature's ``@authority``.

A terminal signs the host and port it addressed (``@authority``, RFC 9421
§2.2.3), so a request signed for one server verifies at any server that
knows the terminal's key — a staging server, another service under the same
name on another port, or this server reached under a name it does not answer
to.  The signature proves what the terminal addressed; this module says
whether that is *this* server.

The accepted authorities are, in this order:

1. the ``authorities`` setting, when set: each ``host`` or ``host:port``
   (``[v6]:port`` for an IPv6 address);
2. otherwise the names of the server's TLS certificate (``tls_cert``: its
   subjectAltName DNS names and IP addresses; wildcard names are skipped, they
   cannot be pinned) at the port of ``bind``, where the front (nginx) listens
   for terminals;
3. otherwise nothing: every signed request is refused, and the refusal says
   what to configure.  A server behind a load balancer whose public name or
   port differs from the certificate and ``bind`` sets ``authorities`` to
   what terminals address (the balancer's name).

Authorities are compared as the signature base writes them: the host in lower
case (an IPv6 address in its compressed form, in brackets), the port without
leading zeros and left out when it is the scheme's default (443 for https;
for an entry, 443).  ``RENKEI.example:443`` and ``renkei.example`` are one
authority.  Pure: no request, no clock; the certificate is read once per app.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

__all__ = [
    "AuthorityPin",
    "canonical_authority",
    "certificate_names",
    "normalize_authority",
    "pin_for",
]

_DEFAULT_PORTS = {"https": 443, "http": 80}
# A host as the signature profile admits it (server.auth._URL): unreserved characters, or an
# IPv6 address in brackets; then an optional port.
_AUTHORITY = re.compile(
    r"(?P<host>[A-Za-z0-9._~-]+|\[(?P<ipv6>[0-9A-Fa-f:.]+)\])(?::(?P<port>[0-9]{1,5}))?"
)


def canonical_authority(host: str, port: int | None, *, scheme: str = "https") -> str:
    """``host[:port]`` as compared: lower case, IPv6 compressed in brackets, default port left out."""
    text = host.lower()
    if text.startswith("[") and text.endswith("]"):
        text = f"[{ipaddress.IPv6Address(text[1:-1]).compressed}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return text
    return f"{text}:{port}"


def normalize_authority(text: str, *, scheme: str = "https") -> str:
    """One authority (``host`` or ``host:port``) in canonical form; ValueError saying what is wrong."""
    found = _AUTHORITY.fullmatch(text.strip())
    if found is None:
        raise ValueError(
            f"{text!r} is not host or host:port (an IPv6 address goes in brackets: [::1]:8443)"
        )
    if found["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(found["ipv6"])
        except ValueError:
            raise ValueError(f"{text!r}: {found['ipv6']!r} is not an IPv6 address") from None
    port = int(found["port"]) if found["port"] is not None else None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{text!r}: port {port} is not 1-65535")
    return canonical_authority(found["host"], port, scheme=scheme)


def certificate_names(path: Path) -> tuple[str, ...]:
    """The DNS names and IP addresses a PEM certificate's subjectAltName lists (no wildcards).

    IPv6 addresses come in brackets, ready to be an authority's host.
    Raises OSError or ValueError when the file is not a readable certificate.
    """
    certificate = x509.load_pem_x509_certificate(Path(path).read_bytes())
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    names = [n for n in extension.value.get_values_for_type(x509.DNSName) if "*" not in n]
    for address in extension.value.get_values_for_type(x509.IPAddress):
        names.append(f"[{address}]" if address.version == 6 else str(address))
    return tuple(names)


def _bind_port(bind: str) -> int | None:
    """The TCP port of a ``ADDRESS:PORT`` bind, or None when it has none."""
    text = bind.rpartition(":")[2]
    return int(text) if text.isdigit() and int(text) > 0 else None


@dataclass(frozen=True)
class AuthorityPin:
    """The authorities this server accepts; when none, why (``code`` for the log, ``reason``
    for the operator — it may name a file, so it is never sent to a client)."""

    accepted: frozenset[str]
    code: str  # "pin.setting", "pin.certificate", or why it is empty: "pin.no_name", …
    reason: str

    def allows(self, authority: str) -> bool:
        return authority in self.accepted

    def describe(self) -> str:
        """What a refused client is told: the accepted names, or that there are none."""
        if not self.accepted:
            return "none — this server has no name configured; its operator must set authorities"
        return ", ".join(sorted(self.accepted))


def pin_for(authorities: Iterable[str], *, tls_cert: Path | None, bind: str) -> AuthorityPin:
    """The pin for a server's settings (see the module docstring for the order)."""
    configured = frozenset(authorities)
    if configured:
        return AuthorityPin(configured, "pin.setting", "the authorities setting")
    if tls_cert is None:
        return AuthorityPin(
            frozenset(),
            "pin.no_name",
            "no authorities setting and no tls_cert: set authorities to the host[:port] "
            "terminals address",
        )
    try:
        names = certificate_names(tls_cert)
    except (OSError, ValueError) as exc:
        return AuthorityPin(
            frozenset(), "pin.certificate_unreadable", f"{tls_cert} cannot be read ({exc})"
        )
    port = _bind_port(bind)
    if port is None:
        return AuthorityPin(
            frozenset(),
            "pin.no_port",
            f"bind {bind} has no TCP port; set authorities to the host[:port] terminals address",
        )
    if not names:
        return AuthorityPin(
            frozenset(),
            "pin.certificate_names_nothing",
            f"{tls_cert} names no host (or only wildcards); set authorities",
        )
    accepted = frozenset(canonical_authority(name, port) for name in names)
    return AuthorityPin(
        accepted, "pin.certificate", f"the names of {tls_cert} at the port of bind, {port}"
    )
