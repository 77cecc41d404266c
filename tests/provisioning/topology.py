"""The LGWAN of issue 6, built from real parts in network namespaces.

Two namespaces on one veth wire (:class:`tests.provisioning.conftest.Lgwan`):
the appliance (``terminal``, 10.77.0.2, port ``eth1``) and the LGWAN side
(10.77.0.1) where dnsmasq, chronyd (as an NTP server) and the linkage server
(gunicorn behind its nginx front) run, each started with ``ip netns exec LGWAN …``.  Because the
namespace is the test's own, the services use their standard ports (53, 123,
443): no port is shared with another test, and ``configure`` renders exactly
what it would on site.

The agent tests' classes bind 127.0.0.1 of the host, so these are small
namespace-aware variants of them (same :class:`Daemon`, same readiness
wait).  A readiness probe runs in a short-lived thread that has entered the
namespace (``setns``: a network namespace belongs to a thread, so the test
process itself stays where it is).  :meth:`Topology.close` stops every
daemon and deletes both namespaces, killing whatever still runs in them.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import dns.resolver
import ntplib
import pytest

from tests.agent.conftest import SERVER_NAME, AgentServer, Chronyd, Daemon, _wait, need
from tests.provisioning.conftest import OTHER_HOST, SERVER_ADDRESS, TERMINAL_ADDRESS, Lgwan
from tests.server.client import ROOT, app_argv, front_argv, spawn, stop_process_group
from tests.server.conftest import API_A

__all__ = [
    "NsChronyd",
    "NsDnsmasq",
    "NsServer",
    "Topology",
    "in_netns",
]

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(namespace: str, function: Callable[[], T], timeout: float = 20.0) -> T:
    """``function()`` run in a fresh thread inside network namespace ``namespace``."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            with open(f"/run/netns/{namespace}", "rb") as handle:
                if _libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns {namespace}: {os.strerror(errno)}")
            outcome["value"] = function()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{namespace}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no result from namespace {namespace} within {timeout} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class NsDnsmasq:
    """dnsmasq on ADDRESS:53 in ``namespace``, answering ``records``; NXDOMAIN inside ``local``."""

    def __init__(
        self,
        namespace: str,
        folder: Path,
        address: str,
        records: Mapping[str, Sequence[str]],
        *,
        local: Sequence[str] = (),
    ):
        self.namespace = namespace
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.address = address
        self.records = {name: list(addresses) for name, addresses in records.items()}
        self.local = list(local)
        self.dnsmasq = need("dnsmasq")
        self.daemon: Daemon | None = None

    def start(self) -> NsDnsmasq:
        argv = [
            *("ip", "netns", "exec", self.namespace),
            self.dnsmasq,
            "-k",
            "--port=53",
            f"--listen-address={self.address}",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            f"--pid-file={self.folder / 'dnsmasq.pid'}",
            "--log-facility=-",
        ]
        argv += [f"--address=/{n}/{a}" for n, addrs in self.records.items() for a in addrs]
        argv += [f"--local=/{domain}/" for domain in self.local]
        self.daemon = Daemon(argv, self.folder / "dnsmasq.log")
        if not _wait(self._answers, self.daemon, "dnsmasq", timeout=15.0):
            raise RuntimeError(f"dnsmasq exited:\n{self.daemon.log()}")
        return self

    def _answers(self) -> bool:
        def probe() -> bool:
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = [self.address]
            resolver.lifetime = 0.5
            resolver.resolve(next(iter(self.records)), "A", search=False)
            return True

        return in_netns(self.namespace, probe)

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None


class NsChronyd(Chronyd):
    """chronyd serving NTP on ADDRESS:123 in ``namespace``; ``-x``: the host clock is untouched.

    :meth:`Chronyd.set_ahead` works unchanged: ``chronyc`` talks to the
    command socket, a file, not the network.
    """

    def __init__(self, namespace: str, folder: Path, address: str, allow: str):
        super().__init__(folder)
        self.namespace = namespace
        self.listen = address
        self.allow = allow
        self.port = 123

    @property
    def address(self) -> str:
        return self.listen

    def start(self) -> NsChronyd:
        conf = self.folder / "chrony.conf"
        conf.write_text(
            "\n".join(
                [
                    "port 123",
                    f"bindaddress {self.listen}",
                    "local stratum 8",
                    f"allow {self.allow}",
                    "cmdport 0",
                    f"bindcmdaddress {self.socket}",
                    "manual",
                    f"pidfile {self.folder / 'chronyd.pid'}",
                    f"driftfile {self.folder / 'chrony.drift'}",
                    "",
                ]
            )
        )
        argv = [
            *("ip", "netns", "exec", self.namespace),
            self.chronyd,
            *("-d", "-x", "-u", "root", "-f", str(conf)),
        ]
        self.daemon = Daemon(argv, self.folder / "chronyd.log")
        if not _wait(self._answers, self.daemon, "chronyd", timeout=15.0):
            raise RuntimeError(f"chronyd exited:\n{self.daemon.log()}")
        return self

    def _request(self, timeout: float) -> ntplib.NTPStats:
        def probe() -> ntplib.NTPStats:
            return ntplib.NTPClient().request(self.listen, version=4, port=123, timeout=timeout)

        return in_netns(self.namespace, probe)

    def _answers(self) -> bool:
        self._request(0.3)
        return True

    def offset(self) -> float:
        return self._request(2.0).offset


class NsServer:
    """The linkage server — gunicorn (``server/gunicorn.conf.py``) behind the front
    (``renkei-server front``) on ADDRESS:443 — inside ``namespace``."""

    def __init__(self, namespace: str, data_dir: Path, address: str, *, log_path: Path):
        self.namespace = namespace
        self.data_dir = Path(data_dir)
        self.address = address
        self.log_path = log_path
        self.front_log_path = log_path.with_name(log_path.stem + "-front.log")
        self.process: subprocess.Popen | None = None  # gunicorn
        self.front: subprocess.Popen | None = None  # nginx
        # gunicorn's socket and nginx's state: a short path (a socket's has at most 107 bytes).
        self.run_dir = Path(tempfile.mkdtemp(prefix="rk-ns-", dir="/tmp"))

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "tls" / "ca.crt"

    def start(self, timeout: float = 30.0) -> NsServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RENKEI_SERVER_")}
        env.update(
            RENKEI_SERVER_DATA_DIR=str(self.data_dir),
            RENKEI_SERVER_BIND=f"{self.address}:443",
            RENKEI_SERVER_RUN_DIR=str(self.run_dir),
            RENKEI_SERVER_FRONT_ACCESS_LOG="off",
            RENKEI_SERVER_FRONT_WORKERS="1",
            WEB_CONCURRENCY="1",
            RENKEI_GUNICORN_THREADS="4",
            PYTHONPATH=str(ROOT),
        )
        prefix = ["ip", "netns", "exec", self.namespace]
        self.process = spawn(app_argv(), env, log_path=self.log_path, prefix=prefix)
        self.front = spawn(front_argv(), env, log_path=self.front_log_path, prefix=prefix)
        try:
            for process, log, what in (
                (self.process, self.log_path, "gunicorn"),
                (self.front, self.front_log_path, "the front (nginx)"),
            ):
                daemon = _Adopted(process, log)
                if not _wait(self._healthy, daemon, what, timeout=timeout):
                    raise RuntimeError(f"{what} exited:\n{daemon.log()}")
        except BaseException:
            self.stop()
            raise
        return self

    def _healthy(self) -> bool:
        def probe() -> bool:
            context = ssl.create_default_context(cafile=str(self.ca_file))
            with socket.create_connection((self.address, 443), timeout=2) as raw:
                with context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
                    conn = http.client.HTTPSConnection(SERVER_NAME, 443, timeout=2)
                    conn.sock = tls
                    conn.request("GET", "/healthz")
                    return conn.getresponse().status == 200

        return in_netns(self.namespace, probe)

    def stop(self) -> None:
        for name in ("front", "process"):
            process = getattr(self, name)
            setattr(self, name, None)
            if process is not None:
                stop_process_group(process)
        shutil.rmtree(self.run_dir, ignore_errors=True)


class _Adopted(Daemon):
    """A :class:`Daemon` view of a process started elsewhere (for :func:`_wait`)."""

    def __init__(self, process: subprocess.Popen, log_path: Path):  # no super(): nothing to start
        self.process = process
        self.log_path = log_path
        self.argv = list(process.args)  # type: ignore[arg-type]


def provision_command() -> list[str]:
    """``renkei-provision`` of this virtualenv."""
    script = Path(sys.executable).parent / "renkei-provision"
    if not script.exists():
        pytest.skip("renkei-provision is not installed in this virtualenv (pip install -e .)")
    return [str(script)]


class Topology:
    """The namespaces, the three LGWAN services, and ``renkei-provision`` run in ``terminal``."""

    SERVER = SERVER_ADDRESS
    TERMINAL = TERMINAL_ADDRESS
    OTHER_HOST = OTHER_HOST

    def __init__(self, folder: Path):
        self.folder = folder
        self.net = Lgwan()
        self.server: AgentServer | None = None
        self.ns_server: NsServer | None = None
        self.dns: NsDnsmasq | None = None
        self.ntp: NsChronyd | None = None
        self.command = provision_command()

    def start(self) -> Topology:
        try:
            self.net.up()
            self.server = AgentServer(self.folder / "server", batches={API_A: 3})
            self.ns_server = NsServer(
                self.net.lgwan,
                self.server.config.data_dir,
                self.SERVER,
                log_path=self.folder / "gunicorn.log",
            ).start()
            self.dns = NsDnsmasq(
                self.net.lgwan,
                self.folder / "dnsmasq",
                self.SERVER,
                {SERVER_NAME: [self.SERVER]},
                local=["test"],
            ).start()
            self.ntp = NsChronyd(
                self.net.lgwan, self.folder / "chrony", self.SERVER, f"{self.TERMINAL}/24"
            ).start()
        except BaseException:
            self.close()
            raise
        return self

    def settings(self, **overrides: object) -> dict[str, object]:
        """The technician's settings for this LGWAN (standard ports: the namespace is ours)."""
        data: dict[str, object] = {
            "interface": "eth1",
            "dhcp": False,
            "address": f"{self.TERMINAL}/24",
            "gateway": self.SERVER,
            "dns_servers": [self.SERVER],
            "ntp_servers": [self.SERVER],
            "server_url": f"https://{SERVER_NAME}",
            "server_address": f"{self.SERVER}/32",
            "lasdec": "131016",
        }
        data.update(overrides)
        return data

    def provision(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """``renkei-provision ARGS`` inside the terminal namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.net.terminal, *self.command, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )

    def load_ruleset(self, path: Path) -> None:
        """``nft -c`` (check only) and then ``nft -f`` in the terminal namespace."""
        self.net.exec_t("nft", "-c", "-f", str(path))
        self.net.exec_t("nft", "-f", str(path))

    def close(self) -> None:
        for part in (self.ntp, self.dns, self.ns_server):
            if part is not None:
                try:
                    part.stop()
                except (OSError, subprocess.SubprocessError):
                    pass
        if self.server is not None:
            self.server.close()
        self.net.down()
