"""Checks before the agent talks to the server: is the clock right, does the LGWAN DNS know the server?

Why these two: every request is signed with the appliance's clock
(``created``), and the server refuses one more than its window (300 s) off,
with an error that says "signature" when the cause is the clock.  And the
server's name must come from the municipality's LGWAN DNS servers, which
the technician copies from an existing LGWAN terminal: a typo there looks
like "the server is down".  Checking both first turns those into a sentence
a technician can act on, with a Japanese hint
(「NTPサーバ 10.1.2.4 から応答がありません …」).

The checks (:func:`check_clock`, :func:`check_dns`) take the query function as
an argument and do no I/O of their own, so their decisions are tested
without a network; the queries (:func:`ntp_offset` with ntplib,
:func:`dns_resolve` with dnspython) ask exactly the server given — never the
system resolver — and turn every failure into :class:`NtpError` or
:class:`DnsError` (both ``OSError``: "the network did not give an answer").

Both queries are UDP, so each is **tried up to** :data:`ATTEMPTS` **times**
(``timeout`` is per try): on a lossy LGWAN line a single lost datagram would
otherwise refuse the whole run (no NTP answer) or fail it (no address for the
server), while the TCP connections that follow cope with the same loss.  The
e2e tests measured it: at 30 % loss and 500 ms delay each way, one try fails
about half the time.

Servers are written ``"10.1.2.3"``, ``"10.1.2.3:5353"``, ``"[fd00::1]:53"``
or a bare IPv6 address.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import statistics
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import dns.exception
import dns.rdatatype
import dns.resolver
import ntplib

__all__ = [
    "ATTEMPTS",
    "Check",
    "DnsError",
    "NtpError",
    "check_clock",
    "check_dns",
    "dns_resolve",
    "make_resolver",
    "ntp_offset",
    "split_server",
]

NTP_PORT = 123
DNS_PORT = 53
#: Tries of one UDP query before a server counts as silent (see the module docstring).
ATTEMPTS = 3
PASS, WARN, FAIL = "pass", "warn", "fail"

_LGWAN = "既存のLGWAN端末の設定を確認してください"


@dataclass(frozen=True)
class Check:
    """One check's verdict: ``status`` pass/warn/fail, ``detail`` in English, ``hint`` in Japanese.

    ``detail`` says what was found (with numbers and server addresses);
    ``hint`` tells the technician on site what to look at.  A pass has an
    empty hint.
    """

    name: str
    status: str
    detail: str
    hint: str

    def to_json(self) -> dict:
        return asdict(self)


class NtpError(OSError):
    """An NTP server gave no usable answer; ``code``: ``ntp.no_answer``, ``ntp.bad_answer``,
    ``ntp.unsynchronised``, ``ntp.name``, ``ntp.network``."""

    def __init__(self, message: str, *, code: str):
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return str(self.args[0])


class DnsError(OSError):
    """A DNS server gave no usable answer; ``code``: ``dns.timeout``, ``dns.nxdomain``,
    ``dns.no_address``, ``dns.refused`` (or another rcode), ``dns.network``, ``dns.error``."""

    def __init__(self, message: str, *, code: str):
        super().__init__(message)
        self.code = code

    def __str__(self) -> str:
        return str(self.args[0])


def split_server(text: str, default_port: int) -> tuple[str, int]:
    """``"host"``, ``"host:port"``, ``"[v6]:port"`` or a bare IPv6 address → (host, port)."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"not a server address: {text!r}")
        if rest:
            port = _port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = _port(number, text)
    if not host:
        raise ValueError(f"not a server address: {text!r}")
    return host, port


def _port(number: str, text: str) -> int:
    if not number.isdigit() or not 0 < int(number) < 65536:
        raise ValueError(f"bad port in server address {text!r}")
    return int(number)


# -- NTP ------------------------------------------------------------------------------------------


def ntp_offset(server: str, *, timeout: float = 2.0, attempts: int = ATTEMPTS) -> float:
    """Seconds to add to this machine's clock to match ``server`` (ntplib, NTPv4).

    Positive: this clock is behind.  A server that says it is not
    synchronised itself (leap indicator 3, stratum 0 or ≥ 16) is an error:
    its time proves nothing.  A request without an answer within ``timeout``
    is sent again, up to ``attempts`` times in all.
    """
    host, port = split_server(server, NTP_PORT)
    for attempt in range(1, max(1, attempts) + 1):
        try:
            stats = ntplib.NTPClient().request(host, version=4, port=port, timeout=timeout)
            break
        except ntplib.NTPException as exc:
            if "No response" in str(exc):
                if attempt < attempts:
                    continue
                raise NtpError(
                    f"no answer from NTP server {server} within {timeout:g} s ({attempts} tries)",
                    code="ntp.no_answer",
                ) from None
            raise NtpError(
                f"NTP server {server} sent a bad answer: {exc}", code="ntp.bad_answer"
            ) from None
        except socket.gaierror as exc:
            raise NtpError(
                f"cannot resolve the NTP server name {host}: {exc.strerror}", code="ntp.name"
            ) from None
        except OSError as exc:
            raise NtpError(
                f"cannot reach NTP server {server}: {exc.strerror or exc}", code="ntp.network"
            ) from None
    if stats.leap == 3 or not 1 <= stats.stratum <= 15:
        raise NtpError(
            f"NTP server {server} is not synchronised itself "
            f"(stratum {stats.stratum}, leap indicator {stats.leap})",
            code="ntp.unsynchronised",
        )
    return float(stats.offset)


def _seconds(value: float) -> str:
    return f"{value:+.3f} s"


def check_clock(
    servers: Iterable[str],
    *,
    query: Callable[[str], float],
    warn: float = 1.0,
    refuse: float = 60.0,
) -> Check:
    """Ask every NTP server; the median offset decides: |m| < warn pass, < refuse warn, else fail.

    ``query(server)`` returns the offset in seconds (:func:`ntp_offset` in
    production) and raises ``OSError`` (:class:`NtpError`) when the server
    does not answer.  A server that does not answer is named; if none
    answers the check fails; if some do, it is at least a warning.  No
    server configured is a warning: the clock was not checked.
    """
    if not 0 < warn < refuse:
        raise ValueError("clock thresholds must satisfy 0 < warn < refuse")
    servers = list(servers)
    if not servers:
        return Check(
            "clock",
            WARN,
            "no NTP servers are configured, so the clock was not checked",
            f"NTPサーバが設定されていません。時刻を確認できません。{_LGWAN}",
        )
    offsets: dict[str, float] = {}
    silent: dict[str, str] = {}
    for server in servers:
        try:
            offsets[server] = float(query(server))
        except OSError as exc:
            silent[server] = str(exc)
    silent_names = "、".join(silent)
    if not offsets:
        reasons = "; ".join(silent.values())
        return Check(
            "clock",
            FAIL,
            f"none of the NTP servers answered, so the clock cannot be trusted: {reasons}",
            f"NTPサーバ {silent_names} から応答がありません。{_LGWAN}"
            "（NTPサーバのアドレスと、UDP 123番ポートへの通信が許可されているか）",
        )
    median = statistics.median(offsets.values())
    size = abs(median)
    way = "behind" if median > 0 else "ahead of"
    way_ja = "遅れて" if median > 0 else "進んで"
    each = ", ".join(f"{server} {_seconds(value)}" for server, value in offsets.items())
    detail = (
        f"this appliance's clock is {size:.3f} s {way} NTP time (median of {len(offsets)}: {each})"
    )
    if silent:
        detail += f"; no answer from {', '.join(silent)} ({'; '.join(silent.values())})"
    if size >= refuse:
        return Check(
            "clock",
            FAIL,
            detail + f"; {refuse:g} s or more: the server would refuse the agent's signatures",
            f"この端末の時計が {size:.0f} 秒{way_ja}います。このままではサーバが通信を拒否します。"
            "時刻同期（chrony）の設定と動作を確認し、時刻を合わせてから再実行してください。",
        )
    if size >= warn:
        hint = (
            f"この端末の時計が {size:.1f} 秒{way_ja}います。時刻同期（chrony）が動いているか"
            "確認してください。"
        )
        if silent:
            hint += f"また、NTPサーバ {silent_names} から応答がありません。{_LGWAN}"
        return Check("clock", WARN, detail, hint)
    if silent:
        return Check(
            "clock",
            WARN,
            detail,
            f"NTPサーバ {silent_names} から応答がありません。{_LGWAN}"
            "（時刻は他のNTPサーバで確認できました）",
        )
    return Check("clock", PASS, detail, "")


# -- DNS ------------------------------------------------------------------------------------------


def _resolver(server: str, timeout: float, attempts: int) -> dns.resolver.Resolver:
    host, port = split_server(server, DNS_PORT)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"a DNS server must be given by its address: {server!r}") from None
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [host]
    resolver.port = port
    # dnspython asks again after a timeout (not after an error) until the lifetime is over.
    resolver.timeout = timeout
    resolver.lifetime = timeout * max(1, attempts)
    resolver.retry_servfail = False
    resolver.cache = None
    return resolver


def _query(resolver: dns.resolver.Resolver, name: str, rdtype: str, server: str) -> list[str]:
    try:
        answer = resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        raise DnsError(
            f"DNS server {server} says {name} does not exist", code="dns.nxdomain"
        ) from None
    except dns.exception.Timeout:
        raise DnsError(
            f"no answer from DNS server {server} within {resolver.lifetime:g} s", code="dns.timeout"
        ) from None
    except dns.resolver.NoNameservers as exc:
        found = re.search(r"answered (\w+)", str(exc))
        rcode = found.group(1) if found else "an error"
        raise DnsError(
            f"DNS server {server} answered {rcode} for {name} {rdtype}",
            code=f"dns.{rcode.lower()}" if found else "dns.error",
        ) from None
    except dns.exception.DNSException as exc:
        raise DnsError(f"DNS server {server}: {exc}", code="dns.error") from None
    except OSError as exc:
        raise DnsError(
            f"cannot reach DNS server {server}: {exc.strerror or exc}", code="dns.network"
        ) from None
    return [record.to_text() for record in answer]


def dns_resolve(
    name: str, server: str, *, timeout: float = 2.0, attempts: int = ATTEMPTS
) -> list[str]:
    """The addresses of ``name`` (A, then AAAA) according to exactly ``server``.

    Each query waits ``timeout`` seconds per try, ``attempts`` tries at most.

    The AAAA answer is optional when A gave addresses: some DNS servers
    refuse or mishandle AAAA, and the LGWAN is IPv4.  Raises
    :class:`DnsError` when the server does not answer, says the name does not
    exist, or has no address for it.
    """
    resolver = _resolver(server, timeout, attempts)
    addresses = _query(resolver, name, "A", server)
    try:
        addresses += _query(resolver, name, "AAAA", server)
    except DnsError:
        if not addresses:
            raise
    if not addresses:
        raise DnsError(
            f"DNS server {server} knows {name} but has no address for it", code="dns.no_address"
        )
    return list(dict.fromkeys(addresses))


def check_dns(
    name: str,
    servers: Iterable[str],
    *,
    resolve: Callable[[str, str], list[str]],
) -> tuple[Check, list[str]]:
    """Ask every LGWAN DNS server for ``name``; each must answer, and all must agree.

    ``resolve(name, server)`` is :func:`dns_resolve` in production and raises
    ``OSError`` (:class:`DnsError`) for no answer.  Returns the check and the
    addresses: those the servers agreed on (empty when they disagree or
    none answered; those of the servers that answered when some did not).
    No server configured passes with an empty list: the system resolver is
    used, as the configuration says.
    """
    servers = list(servers)
    if not servers:
        return (
            Check(
                "dns",
                PASS,
                f"no LGWAN DNS servers are configured; {name} is resolved by the system",
                "",
            ),
            [],
        )
    answers: dict[str, list[str]] = {}
    failed: dict[str, OSError] = {}
    for server in servers:
        try:
            found = list(resolve(name, server))
        except OSError as exc:
            failed[server] = exc
            continue
        if found:
            answers[server] = found
        else:
            failed[server] = DnsError(
                f"DNS server {server} has no address for {name}", code="dns.no_address"
            )
    distinct = {frozenset(found) for found in answers.values()}
    if len(distinct) > 1:
        each = "; ".join(f"{server} → {', '.join(found)}" for server, found in answers.items())
        return (
            Check(
                "dns",
                FAIL,
                f"the DNS servers disagree about {name}: {each}",
                f"DNSサーバによって {name} のアドレスが異なります。"
                f"DNSサーバの設定が正しいか、{_LGWAN}",
            ),
            [],
        )
    addresses = next(iter(answers.values()), [])
    if failed:
        reasons = "; ".join(str(exc) for exc in failed.values())
        silent = "、".join(failed)
        if all(getattr(exc, "code", "") == "dns.nxdomain" for exc in failed.values()):
            hint = (
                f"DNSサーバ {silent} は {name} を知りません。"
                f"設定したサーバ名（server_url）とDNSサーバのアドレスを確認してください。{_LGWAN}"
            )
        else:
            hint = f"DNSサーバ {silent} から応答がありません。{_LGWAN}"
        answered = f"; {', '.join(answers)} answered {', '.join(addresses)}" if answers else ""
        return Check("dns", FAIL, f"{reasons}{answered}", hint), addresses
    return (
        Check(
            "dns",
            PASS,
            f"{name} is {', '.join(addresses)} according to {', '.join(servers)}",
            "",
        ),
        addresses,
    )


def make_resolver(
    servers: Iterable[str],
    *,
    timeout: float = 2.0,
    attempts: int = ATTEMPTS,
    resolve: Callable[[str, str], list[str]] | None = None,
) -> Callable[[str], str] | None:
    """A ``resolve(name) -> address`` for :class:`~appliance.agent.transport.HttpsTransport`.

    Asks the servers in order and returns the first address the first
    answering one gives (IPv4 first); ``resolve(name, server)`` defaults to
    :func:`dns_resolve` with ``timeout`` and ``attempts``.  None when no servers are configured:
    the transport then uses the system resolver.  Raises :class:`DnsError`
    naming every server when none answers.
    """
    servers = list(servers)
    if not servers:
        return None
    ask = resolve or (
        lambda name, server: dns_resolve(name, server, timeout=timeout, attempts=attempts)
    )

    def address_of(name: str) -> str:
        problems = []
        for server in servers:
            try:
                found = ask(name, server)
            except OSError as exc:
                problems.append(str(exc))
                continue
            if found:
                return found[0]
            problems.append(f"DNS server {server} has no address for {name}")
        raise DnsError("; ".join(problems), code="dns.failed")

    return address_of
