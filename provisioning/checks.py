"""The on-site diagnosis: every check a line pass/warn/fail, with a Japanese hint for the technician.

Why one function per check, all returning :class:`appliance.agent.preflight.Check`:
the report signs the same list, the CLI prints it, and a test can look at one
line.  Commands (``ip``, ``nft``, ``chronyc``, ``systemctl``) go through one
``run`` function, so a test can run them inside the network namespace it built
(``ip netns exec NS …``), and a missing tool becomes a warning, not a crash.
DNS and NTP use the agent's own queries (``appliance.agent.preflight``): they
ask exactly the configured servers, never the system resolver.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from appliance.agent.preflight import (
    FAIL,
    PASS,
    WARN,
    Check,
    DnsError,
    NtpError,
    dns_resolve,
    make_resolver,
    ntp_offset,
)
from appliance.agent.transport import HttpsTransport, TransportError, load_private_key

from .apply import under
from .render import TABLE, Enrollment, render_nftables
from .settings import Settings

__all__ = [
    "Context",
    "canonical_ruleset",
    "icmp_echo",
    "run_checks",
    "run_checks_timed",
    "summary_exit_code",
]

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=20)


@dataclass
class Context:
    """What the checks need: settings, enrollment, the root, and the I/O seams."""

    settings: Settings
    enrollment: Enrollment | None
    root: Path = Path("/")
    run: Runner = _run
    clock: Callable[[], float] = time.time
    timeout: float = 2.0
    resolved: list[str] = field(default_factory=list)


def _tool_missing(exc: OSError) -> bool:
    return isinstance(exc, FileNotFoundError)


def check_link(ctx: Context) -> Check:
    s = ctx.settings
    try:
        link = ctx.run(["ip", "-j", "addr", "show", "dev", s.interface])
    except OSError as exc:
        return Check("link", WARN, f"cannot run ip: {exc}", "iproute2 が必要です。")
    if link.returncode != 0:
        return Check(
            "link",
            FAIL,
            f"interface {s.interface} does not exist: {link.stderr.strip()}",
            f"インタフェース {s.interface} がありません。ip link で名前を確認してください。",
        )
    info = (json.loads(link.stdout) or [{}])[0]
    state = info.get("operstate", "UNKNOWN")
    addresses = [
        f"{a['local']}/{a['prefixlen']}"
        for a in info.get("addr_info", [])
        if a.get("family") == "inet"
    ]
    if "LOWER_UP" not in info.get("flags", []) or state == "DOWN":
        return Check(
            "link",
            FAIL,
            f"{s.interface} has no link (state {state})",
            "LANケーブルがLGWAN機器の空きポートに接続されているか確認してください。",
        )
    if s.address is not None and str(s.address) not in addresses:
        return Check(
            "link",
            FAIL,
            f"{s.interface} has {', '.join(addresses) or 'no address'}, not {s.address}",
            "設定したIPアドレスが付いていません。networkctl reload を実行してください。",
        )
    if not addresses:
        return Check(
            "link",
            FAIL,
            f"{s.interface} has no IPv4 address (DHCP gave none)",
            "DHCPでアドレスを取得できません。LGWAN機器の設定を確認してください。",
        )
    return Check("link", PASS, f"{s.interface} up, {', '.join(addresses)}", "")


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def icmp_echo(address: str, timeout: float) -> float:
    """Round-trip seconds of one ICMP echo to ``address`` (raw socket: root); OSError if none."""
    ident = os.getpid() & 0xFFFF
    header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    payload = b"renkei-provision"
    packet = struct.pack("!BBHHH", 8, 0, _checksum(header + payload), ident, 1) + payload
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.settimeout(timeout)
        start = time.monotonic()
        sock.sendto(packet, (address, 0))
        while True:
            data, peer = sock.recvfrom(1024)
            reply = data[(data[0] & 0x0F) * 4 :]
            if peer[0] == address and reply[0] == 0 and struct.unpack("!H", reply[4:6])[0] == ident:
                return time.monotonic() - start


def check_gateway(ctx: Context) -> Check:
    gateway = ctx.settings.gateway
    if gateway is None:
        return Check("gateway", WARN, "DHCP: the gateway is not known in advance", "")
    try:
        rtt = icmp_echo(str(gateway), ctx.timeout)
    except OSError as exc:
        return Check(
            "gateway",
            FAIL,
            f"no echo reply from gateway {gateway}: {exc}",
            "ゲートウェイから応答がありません。ゲートウェイのアドレスとケーブルを確認してください。",
        )
    return Check("gateway", PASS, f"gateway {gateway} answers in {rtt * 1000:.1f} ms", "")


def check_dns_servers(ctx: Context) -> list[Check]:
    s = ctx.settings
    out = []
    for server in s.dns_servers:
        name = f"dns {server}"
        try:
            found = dns_resolve(s.server_name, server.text(53), timeout=ctx.timeout)
        except (DnsError, ValueError) as exc:
            hint = (
                "DNSサーバがサーバ名を知りません。サーバ名を確認してください。"
                if getattr(exc, "code", "") == "dns.nxdomain"
                else f"DNSサーバ {server} から応答がありません。既存のLGWAN端末の設定を確認してください。"
            )
            out.append(Check(name, FAIL, str(exc), hint))
            continue
        v4 = [a for a in found if ":" not in a]
        outside = [a for a in v4 if ipaddress.ip_address(a) not in s.server_address]
        if not v4 or outside:
            out.append(
                Check(
                    name,
                    FAIL,
                    f"{s.server_name} is {', '.join(found)}, outside "
                    f"server_address {s.server_address}",
                    "DNSの答えがファイアウォールで許可した連携サーバのアドレスと違います。server_address を確認してください。",
                )
            )
            continue
        ctx.resolved[:] = ctx.resolved or v4
        out.append(Check(name, PASS, f"{s.server_name} is {', '.join(found)}", ""))
    return out


def check_ntp_servers(ctx: Context, warn: float = 1.0, refuse: float = 60.0) -> list[Check]:
    out = []
    for server in ctx.settings.ntp_servers:
        name = f"ntp {server}"
        try:
            offset = ntp_offset(server.text(123), timeout=ctx.timeout)
        except NtpError as exc:
            out.append(
                Check(
                    name,
                    FAIL,
                    str(exc),
                    f"NTPサーバ {server} から応答がありません。アドレスと通信許可を確認してください。",
                )
            )
            continue
        detail = f"offset {offset:+.3f} s"
        if abs(offset) >= refuse:
            out.append(
                Check(
                    name,
                    FAIL,
                    detail + f" (≥ {refuse:g} s)",
                    "時刻が大きくずれています。chrony の同期を待つか、NTPサーバを確認してください。",
                )
            )
        elif abs(offset) >= warn:
            out.append(
                Check(
                    name, WARN, detail, "時刻が少しずれています。chrony の同期を確認してください。"
                )
            )
        else:
            out.append(Check(name, PASS, detail, ""))
    return out


def check_chrony(ctx: Context) -> Check:
    try:
        result = ctx.run(["chronyc", "-n", "tracking"])
    except OSError:
        return Check(
            "chrony", WARN, "chronyc is not installed", "chrony をインストールしてください。"
        )
    if result.returncode != 0:
        return Check(
            "chrony",
            WARN,
            f"chronyd is not running ({result.stderr.strip()})",
            "chronyd が動いていません。systemctl restart chrony を実行してください。",
        )
    fields = dict(line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)
    leap = fields.get("Leap status ", "").strip()
    if leap != "Normal":
        return Check(
            "chrony",
            FAIL,
            f"chrony is not synchronised (leap status {leap or '?'})",
            "chrony が同期していません。NTPサーバへの通信を確認し、数分待って再実行してください。",
        )
    return Check("chrony", PASS, f"synchronised to {fields.get('Reference ID', '?').strip()}", "")


def _transport(ctx: Context) -> HttpsTransport:
    e = ctx.enrollment
    assert e is not None
    ca = under(ctx.root, e.ca_file) if e.ca_file else None
    lgwan_dns = make_resolver([d.text(53) for d in ctx.settings.dns_servers], timeout=ctx.timeout)

    def resolve(name: str) -> str:
        return ctx.resolved[0] if ctx.resolved else lgwan_dns(name) if lgwan_dns else name

    return HttpsTransport(
        ctx.settings.server_url,
        terminal_id=e.terminal_id,
        key=load_private_key(under(ctx.root, e.key_path)),
        ca_file=ca,
        resolve=resolve,
        timeout=10.0,
        agent_version="renkei-provision",
        clock=ctx.clock,
    )


def check_server(ctx: Context) -> list[Check]:
    """TLS with the pinned CA, a signed request accepted, the clock against the server's."""
    if ctx.enrollment is None:
        hint = "まだ登録されていません。renkei-provision enroll を実行してください。"
        return [
            Check(n, FAIL, "not enrolled", hint) for n in ("tls", "signed request", "server clock")
        ]
    try:
        transport = _transport(ctx)
    except (TransportError, ValueError, OSError) as exc:
        return [
            Check("tls", FAIL, str(exc), "端末鍵またはCAファイルを読めません。再登録してください。")
        ]
    out = []
    with transport:
        try:
            server_time = transport.server_time()
            local = ctx.clock()
            ca = ctx.enrollment.ca_file or "the system CA store"
            out.append(
                Check(
                    "tls", PASS, f"{ctx.settings.server_name}: certificate verified with {ca}", ""
                )
            )
        except TransportError as exc:
            hint = (
                "サーバ証明書を検証できません。CAファイルを確認してください。"
                if exc.code == "net.tls"
                else "連携サーバに接続できません。ファイアウォールとネットワークを確認してください。"
            )
            return out + [Check("tls", FAIL, str(exc), hint)]
        try:
            batches = transport.list_batches()
            out.append(
                Check("signed request", PASS, f"accepted; {len(batches)} batch(es) waiting", "")
            )
        except TransportError as exc:
            hint = {
                "auth.revoked": "この端末は失効しています。運用担当に新しいトークンを依頼し再登録してください。",
                "sig.stale": "時計がずれているため署名が拒否されました。時刻を合わせてください。",
            }.get(
                exc.code, "署名付き要求が拒否されました。再登録が必要か運用担当に確認してください。"
            )
            out.append(Check("signed request", FAIL, str(exc), hint))
    skew = server_time - local
    detail = f"this clock differs from the server's by {skew:+.3f} s"
    if abs(skew) >= 60:
        out.append(
            Check(
                "server clock",
                FAIL,
                detail,
                "時刻がサーバと大きくずれています。NTP設定を確認してください。",
            )
        )
    elif abs(skew) >= 1:
        out.append(
            Check(
                "server clock",
                WARN,
                detail,
                "時刻がサーバと少しずれています。chrony の同期を確認してください。",
            )
        )
    else:
        out.append(Check("server clock", PASS, detail, ""))
    return out


def canonical_ruleset(text: str, run: Runner = _run) -> str:
    """How ``nft list table`` prints ``text``: loaded into a fresh, empty network namespace."""
    with tempfile.NamedTemporaryFile("w", suffix=".nft") as handle:
        handle.write(text)
        handle.flush()
        result = run(
            [
                "unshare",
                "--net",
                "sh",
                "-c",
                f'nft -f "$1" && nft list table inet {TABLE}',
                "sh",
                handle.name,
            ]
        )
    if result.returncode != 0:
        raise OSError(result.stderr.strip() or "nft failed")
    return result.stdout


def check_firewall(ctx: Context) -> Check:
    try:
        live = ctx.run(["nft", "list", "table", "inet", TABLE])
    except OSError:
        return Check(
            "firewall", FAIL, "nft is not installed", "nftables をインストールしてください。"
        )
    if live.returncode != 0:
        return Check(
            "firewall",
            FAIL,
            f"table inet {TABLE} is not loaded",
            "ファイアウォールが読み込まれていません。systemctl restart nftables を実行してください。",
        )
    try:
        expected = canonical_ruleset(render_nftables(ctx.settings))
    except OSError as exc:
        return Check("firewall", WARN, f"cannot render the expected ruleset: {exc}", "")
    if live.stdout.strip() != expected.strip():
        return Check(
            "firewall",
            FAIL,
            "the loaded ruleset differs from the configuration",
            "ファイアウォールが設定と違います。nft -f /etc/nftables.conf を実行してください。",
        )
    return Check("firewall", PASS, f"table inet {TABLE} matches the configuration", "")


def check_timer(ctx: Context, booted: Path = Path("/run/systemd/system")) -> Check:
    if not booted.exists():  # sd_booted(): systemd is not running here
        return Check("timer", WARN, "systemd is not running: the agent timer was not checked", "")
    try:
        result = ctx.run(["systemctl", "is-enabled", "renkei-agent.timer"])
    except OSError:
        return Check("timer", WARN, "no systemd here: the agent timer was not checked", "")
    state = result.stdout.strip()
    if state == "enabled":
        return Check("timer", PASS, "renkei-agent.timer is enabled", "")
    return Check(
        "timer",
        FAIL,
        f"renkei-agent.timer is {state or 'unknown'}",
        "systemctl enable --now renkei-agent.timer を実行してください。",
    )


_STEPS: tuple[Callable[[Context], Check | list[Check]], ...] = (
    check_link,
    check_gateway,
    check_dns_servers,
    check_ntp_servers,
    check_chrony,
    check_server,
    check_firewall,
    check_timer,
)


def run_checks_timed(ctx: Context) -> list[tuple[Check, datetime]]:
    """Every check with the moment it finished (UTC), for the report."""
    out = []
    for step in _STEPS:
        result = step(ctx)
        at = datetime.fromtimestamp(ctx.clock(), UTC)
        out += [(item, at) for item in (result if isinstance(result, list) else [result])]
    return out


def run_checks(ctx: Context) -> list[Check]:
    """Every check, in the order a technician fixes things: wire, names, time, server, guards."""
    return [check for check, _ in run_checks_timed(ctx)]


def summary_exit_code(checks: Sequence[Check]) -> int:
    """0 all pass, 1 any failure, 2 warnings only."""
    statuses = {c.status for c in checks}
    return 1 if FAIL in statuses else 2 if WARN in statuses else 0
