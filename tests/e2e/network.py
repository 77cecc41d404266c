"""The simulated LGWAN: network namespaces, veth wires, a router, and the faults of a wire.

Layout (one per test session and xdist worker; every name carries a tag
with this process's pid, so two workers never meet and a run killed
before its teardown is swept by the next one — :func:`sweep_stale`)::

    ministry-<tag>            lgwan-<tag> (router)                 terminal-<lasdec>-<tag>
    m0 10.20.0.10 (server)    wan0 10.20.0.1                        eth1 10.1.<i>.10/24
       10.20.0.25 (SMTP) ──── lo   10.30.0.53 (DNS) 10.30.0.123 (NTP)    gateway 10.1.<i>.1
                              b-<lasdec> 10.1.<i>.1/24 ── t-<lasdec> ──── eth1

Each terminal's wire ends on the router in a bridge with one port: the
bridge holds the gateway address, so the user-space impairment
(``impair.py``) can be slipped in between the port and the bridge without
the terminal noticing anything but the line getting worse.

Faults of the wire: :meth:`Lgwan.link_down` / :meth:`Lgwan.link_up` (the
router's end of the terminal's veth), :meth:`Lgwan.impair` (loss and delay on
what the router sends to the terminal, or both ways: ``tc netem`` where the
kernel has ``sch_netem``, else the relay).  Everything is undone by :meth:`Lgwan.close`, which also kills
whatever still runs in the namespaces and deletes them.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DNS_ADDRESS",
    "NTP_ADDRESS",
    "SERVER_ADDRESS",
    "SMTP_ADDRESS",
    "Lgwan",
    "Link",
    "netns_names",
    "run",
    "sweep_stale",
]

ROOT = Path(__file__).resolve().parents[2]
SERVER_ADDRESS = "10.20.0.10"
SMTP_ADDRESS = "10.20.0.25"
ROUTER_MINISTRY = "10.20.0.1"
DNS_ADDRESS = "10.30.0.53"
NTP_ADDRESS = "10.30.0.123"
#: Namespace names this harness makes: ``<role>-e2e<pid>x<random>``.
_OURS = re.compile(r"^(?:ministry|lgwan|terminal-\d{6})-e2e(\d+)x[0-9a-f]+$")


def run(*argv: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run a command, capturing its output; raise with the output when ``check`` and it failed."""
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result


def netns_names() -> list[str]:
    """What ``ip netns list`` shows (names only)."""
    return [line.split()[0] for line in run("ip", "netns", "list").stdout.splitlines() if line]


def _kill_and_delete(name: str) -> None:
    for pid in run("ip", "netns", "pids", name, check=False).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
    run("ip", "netns", "delete", name, check=False)


def sweep_stale() -> list[str]:
    """Delete namespaces a killed earlier run of this harness left (its pid is gone)."""
    removed = []
    for name in netns_names():
        found = _OURS.match(name)
        if found and not Path(f"/proc/{found.group(1)}").exists():
            _kill_and_delete(name)
            removed.append(name)
    return removed


@dataclass(frozen=True)
class Link:
    """One terminal's wire: its namespace, address and gateway, and the router's end."""

    lasdec: str
    index: int
    namespace: str
    port: str  # the router's end of the veth (t-<lasdec>)
    bridge: str  # b-<lasdec>, holding the gateway address

    @property
    def address(self) -> str:
        return f"10.1.{self.index}.10"

    @property
    def gateway(self) -> str:
        return f"10.1.{self.index}.1"

    @property
    def prefix(self) -> str:
        return f"10.1.{self.index}.0/24"


class Lgwan:
    """The namespaces and wires; services are started by others with :meth:`exec_argv`."""

    def __init__(self) -> None:
        self.tag = f"e2e{os.getpid()}x{secrets.token_hex(2)}"
        self.ministry = f"ministry-{self.tag}"
        self.router = f"lgwan-{self.tag}"
        self.links: dict[str, Link] = {}
        self.created: list[str] = []
        self._relays: dict[str, subprocess.Popen] = {}
        self._netem: bool | None = None

    # -- building ---------------------------------------------------------------------------

    def _add(self, name: str) -> None:
        run("ip", "netns", "add", name)
        self.created.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")

    def up(self) -> Lgwan:
        self._add(self.ministry)
        self._add(self.router)
        run(
            *("ip", "link", "add", "m0", "netns", self.ministry, "type", "veth"),
            *("peer", "name", "wan0", "netns", self.router),
        )
        for address in (SERVER_ADDRESS, SMTP_ADDRESS):
            run("ip", "-n", self.ministry, "addr", "add", f"{address}/24", "dev", "m0")
        run("ip", "-n", self.ministry, "link", "set", "m0", "up")
        run("ip", "-n", self.ministry, "route", "add", "default", "via", ROUTER_MINISTRY)
        run("ip", "-n", self.router, "addr", "add", f"{ROUTER_MINISTRY}/24", "dev", "wan0")
        run("ip", "-n", self.router, "link", "set", "wan0", "up")
        for address in (DNS_ADDRESS, NTP_ADDRESS):
            run("ip", "-n", self.router, "addr", "add", f"{address}/32", "dev", "lo")
        self.exec(self.router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        return self

    def add_terminal(self, lasdec: str) -> Link:
        index = len(self.links) + 1
        link = Link(lasdec, index, f"terminal-{lasdec}-{self.tag}", f"t-{lasdec}", f"b-{lasdec}")
        self._add(link.namespace)
        run(
            *("ip", "link", "add", "eth1", "netns", link.namespace, "type", "veth"),
            *("peer", "name", link.port, "netns", self.router),
        )
        run("ip", "-n", link.namespace, "addr", "add", f"{link.address}/24", "dev", "eth1")
        run("ip", "-n", link.namespace, "link", "set", "eth1", "up")
        run("ip", "-n", link.namespace, "route", "add", "default", "via", link.gateway)
        # A fixed address: a bridge otherwise takes its ports' lowest one, and would change it
        # when the impairment swaps its port (the terminal's ARP entry would then be wrong).
        run(
            *("ip", "-n", self.router, "link", "add", link.bridge),
            *("address", f"02:00:0a:01:{index:02x}:01", "type", "bridge"),
        )
        run("ip", "-n", self.router, "link", "set", link.port, "master", link.bridge)
        run("ip", "-n", self.router, "addr", "add", f"{link.gateway}/24", "dev", link.bridge)
        run("ip", "-n", self.router, "link", "set", link.bridge, "up")
        run("ip", "-n", self.router, "link", "set", link.port, "up")
        self.links[lasdec] = link
        return link

    # -- running things inside -------------------------------------------------------------

    @staticmethod
    def exec_argv(namespace: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", namespace, *argv]

    def exec(self, namespace: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(*self.exec_argv(namespace, *argv), check=check)

    def python(self, namespace: str, *args: str) -> list[str]:
        """``python …`` in ``namespace`` with this repository importable (argv for Popen/run)."""
        return self.exec_argv(namespace, "env", f"PYTHONPATH={ROOT}", sys.executable, *args)

    # -- faults of the wire ----------------------------------------------------------------

    def link_down(self, link: Link) -> None:
        """Cut the wire: the router's end of the terminal's veth goes down (no carrier)."""
        run("ip", "-n", self.router, "link", "set", link.port, "down")

    def link_up(self, link: Link) -> None:
        run("ip", "-n", self.router, "link", "set", link.port, "up")

    def netem_available(self) -> bool:
        """Whether the kernel has ``sch_netem`` (tried once on the router's loopback)."""
        if self._netem is None:
            tried = run(
                *("tc", "-n", self.router, "qdisc", "add", "dev", "lo", "root"),
                *("netem", "delay", "1ms"),
                check=False,
            )
            self._netem = tried.returncode == 0
            if self._netem:
                run("tc", "-n", self.router, "qdisc", "del", "dev", "lo", "root", check=False)
        return self._netem

    @contextlib.contextmanager
    def impair(
        self, link: Link, *, loss: float, delay: float, seed: int = 1, both_ways: bool = False
    ) -> Iterator[str]:
        """Loss (0..1) and delay (s) on ``link`` while inside: on what the router sends to the
        terminal (``tc qdisc add dev <port> root netem …``), or ``both_ways``.  Yields how."""
        if self.netem_available():
            spec = ["netem", "loss", f"{loss * 100:g}%", "delay", f"{delay * 1000:g}ms"]
            ends = [(self.router, link.port)] + ([(link.namespace, "eth1")] if both_ways else [])
            for namespace, device in ends:
                run("tc", "-n", namespace, "qdisc", "add", "dev", device, "root", *spec)
            try:
                yield f"tc netem loss {loss:.0%} delay {delay * 1000:g}ms"
            finally:
                for namespace, device in ends:
                    run("tc", "-n", namespace, "qdisc", "del", "dev", device, "root", check=False)
            return
        self._relay_in(link, loss=loss, delay=delay, seed=seed, both_ways=both_ways)
        try:
            yield (
                f"user-space relay, loss {loss:.0%} delay {delay * 1000:g} ms "
                "(this kernel has no sch_netem)"
            )
        finally:
            self._relay_out(link)

    def _relay_in(
        self, link: Link, *, loss: float, delay: float, seed: int, both_ways: bool
    ) -> None:
        spare, inner = f"i-{link.lasdec}", f"j-{link.lasdec}"
        router = ("ip", "-n", self.router)
        run(*router, "link", "add", spare, "type", "veth", "peer", "name", inner)
        run(*router, "link", "set", spare, "master", link.bridge)
        for device in (spare, inner):
            run(*router, "link", "set", device, "up")
        # The transmitting ends must hand over wire-sized frames with their checksums.
        for namespace, device in ((link.namespace, "eth1"), (self.router, spare)):
            run(*self.python(namespace, "-m", "tests.e2e.impair", "offloads", device, "off"))
        run(*router, "link", "set", link.port, "nomaster")
        process = subprocess.Popen(
            self.python(
                self.router,
                *("-m", "tests.e2e.impair", "relay", link.port, inner),
                *("--loss", str(loss), "--delay", str(delay), "--seed", str(seed)),
                *(["--both-ways"] if both_ways else []),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._relays[link.lasdec] = process
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            self._relay_out(link)
            raise RuntimeError(f"the impairment relay did not start: {process.stderr}")

    def _relay_out(self, link: Link) -> None:
        process = self._relays.pop(link.lasdec, None)
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait(timeout=10)
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
        router = ("ip", "-n", self.router)
        run(*router, "link", "set", link.port, "master", link.bridge, check=False)
        run(*router, "link", "del", f"i-{link.lasdec}", check=False)

    # -- the end -----------------------------------------------------------------------------

    def close(self) -> None:
        for lasdec in list(self._relays):
            self._relay_out(self.links[lasdec])
        for name in reversed(self.created):
            _kill_and_delete(name)
        self.created.clear()
