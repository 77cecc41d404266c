"""Real parts for the agent tests, all on 127.0.0.1: the server, an NTP server, DNS servers.

* :class:`AgentServer` — the linkage server under gunicorn with TLS
  (``tests.server.client.ServerProcess``), its certificate naming
  :data:`SERVER_NAME` (``renkei.test``), batches published for two
  municipalities, terminals enrolled through ``server.enrollment``.
* :class:`Chronyd` — ``chronyd -d -x`` serving its local clock over NTP on a
  free UDP port; ``-x`` so it never touches the system clock.  Its clock can
  be set *ahead* with ``chronyc settime``: with ``-x`` chronyd keeps that
  offset to itself and serves it, which is how the tests get an NTP server
  that is really wrong.  chronyd refuses to start unless it is root; as
  another user it runs in a user namespace (``unshare -r``) where it is.
* :class:`Dnsmasq` — ``dnsmasq -k`` answering fixed names (``--address``),
  NXDOMAIN inside ``--local`` domains, REFUSED for everything else.

Every daemon runs in its own session and is stopped with its whole process
group.  Ports are ones the kernel reported free a moment before (UDP and TCP
both); a daemon that loses that race is restarted on another port.  Tests
skip only when a binary is missing (CI installs ``chrony`` and
``dnsmasq-base``) or when chronyd can get root neither way.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dns.exception
import dns.resolver
import ntplib
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.agent.transport import HttpsTransport
from server.blobs import BlobStore
from server.enrollment import revoke_terminal
from server.keys import load_signing_key
from server.storage import Storage
from server.tls import make_dev_ca, make_server_cert
from tests.server.client import ServerProcess, stop_process_group
from tests.server.conftest import API_A, API_B, API_C, api_enroll, api_init_data, api_publish

#: The server's name in the tests: in its certificate, and what dnsmasq answers for.
SERVER_NAME = "renkei.test"
LOOPBACK = "127.0.0.1"
AGENT_VERSION = "renkei-agent-test/1"


def free_port() -> int:
    """A port free on 127.0.0.1 for both UDP and TCP (DNS uses both) at this moment."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((LOOPBACK, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((LOOPBACK, port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no free port on 127.0.0.1")


def need(binary: str) -> str:
    path = shutil.which(binary) or next(
        (str(p) for p in (Path("/usr/sbin") / binary, Path("/sbin") / binary) if p.exists()), None
    )
    if path is None:
        pytest.skip(f"{binary} is not installed (Debian: chrony / dnsmasq-base)")
    return path


def as_root() -> list[str]:
    """The command prefix that makes a program root enough for chronyd: none, or ``unshare -r``."""
    if os.geteuid() == 0:
        return []
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-r", "true"], capture_output=True).returncode == 0:
        return [unshare, "-r"]
    pytest.skip("chronyd must start as root, and user namespaces (unshare -r) are not available")


class Daemon:
    """A process in its own session, logging to a file, stopped with its process group."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None):
        self.argv = list(argv)
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                env=None if env is None else {**os.environ, **env},
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]

    def stop(self) -> None:
        stop_process_group(self.process, timeout=5)


def _wait(ready, daemon: Daemon, what: str, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``ready()`` until True; False if the daemon died (lost the port race)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not daemon.alive():
            return False
        try:
            if ready():
                return True
        except (OSError, ntplib.NTPException, dns.exception.DNSException):
            pass
        time.sleep(0.05)
    daemon.stop()
    raise TimeoutError(f"{what} did not answer within {timeout} s:\n{daemon.log()}")


class Chronyd:
    """chronyd serving NTP on 127.0.0.1:<free port>, never touching the system clock."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket = folder / "cmd" / "chronyd.sock"
        self.prefix = as_root()
        self.chronyd = need("chronyd")
        self.daemon: Daemon | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> Chronyd:
        for _ in range(3):
            self.port = free_port()
            conf = self.folder / "chrony.conf"
            conf.write_text(
                "\n".join(
                    [
                        f"port {self.port}",
                        f"bindaddress {LOOPBACK}",
                        "local stratum 8",
                        f"allow {LOOPBACK}",
                        "cmdport 0",
                        f"bindcmdaddress {self.socket}",
                        "manual",
                        f"pidfile {self.folder / 'chronyd.pid'}",
                        f"driftfile {self.folder / 'chrony.drift'}",
                        "",
                    ]
                )
            )
            # -d: foreground, log to stderr; -x: do not control the system clock;
            # -u root: stay the (namespace's) root, no switch to _chrony.
            argv = [*self.prefix, self.chronyd, "-d", "-x", "-u", "root", "-f", str(conf)]
            self.daemon = Daemon(argv, self.folder / "chronyd.log")
            if _wait(self._answers, self.daemon, "chronyd"):
                return self
            self.daemon.stop()
        raise RuntimeError(f"chronyd would not start:\n{self.daemon.log() if self.daemon else ''}")

    def _answers(self) -> bool:
        ntplib.NTPClient().request(LOOPBACK, version=4, port=self.port, timeout=0.2)
        return True

    def offset(self) -> float:
        """What an NTP client sees: server time − local time, seconds."""
        return ntplib.NTPClient().request(LOOPBACK, version=4, port=self.port, timeout=2).offset

    def set_ahead(self, seconds: float) -> None:
        """Make chronyd's clock (only its own: ``-x``) run ``seconds`` ahead, via ``chronyc settime``.

        settime takes whole seconds, so the result is within a second of the request.
        """
        target = datetime.fromtimestamp(time.time() + seconds, tz=UTC)
        chronyc = need("chronyc")
        result = subprocess.run(
            [
                *self.prefix,
                chronyc,
                "-h",
                str(self.socket),
                "settime",
                target.strftime("%b %d, %Y %H:%M:%S"),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "TZ": "UTC"},
            timeout=10,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert abs(self.offset() - seconds) < 2, (self.offset(), seconds)

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None


class Dnsmasq:
    """dnsmasq answering ``records`` (name → addresses, subdomains included) on a free port."""

    def __init__(
        self,
        folder: Path,
        records: Mapping[str, Sequence[str]],
        *,
        local: Sequence[str] = (),
    ):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.records = {name: list(addresses) for name, addresses in records.items()}
        self.local = list(local)
        self.dnsmasq = need("dnsmasq")
        self.daemon: Daemon | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> Dnsmasq:
        for _ in range(3):
            self.port = free_port()
            argv = [
                self.dnsmasq,
                "-k",
                f"--port={self.port}",
                f"--listen-address={LOOPBACK}",
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
            if _wait(self._answers, self.daemon, "dnsmasq"):
                return self
            self.daemon.stop()
        raise RuntimeError(f"dnsmasq would not start:\n{self.daemon.log() if self.daemon else ''}")

    def _answers(self) -> bool:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [LOOPBACK]
        resolver.port = self.port
        resolver.lifetime = 0.3
        name = next(iter(self.records), "probe.invalid")
        try:
            resolver.resolve(name, "A", search=False, raise_on_no_answer=False)
        except (dns.resolver.NoNameservers, dns.resolver.NXDOMAIN):
            pass  # an answer all the same
        return True

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
            self.daemon = None


# --- the server ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Enrolled:
    terminal_id: str
    key: Ed25519PrivateKey
    lasdec: str


class AgentServer:
    """The linkage server under gunicorn (TLS for :data:`SERVER_NAME`), with published batches.

    ``batches`` maps a municipality code to the number of ministry notices
    published for today's business day (one batch each).
    """

    def __init__(
        self,
        root: Path,
        *,
        batches: Mapping[str, int],
        env: Mapping[str, str] | None = None,
    ):
        data = root / "srv"
        ca_cert, ca_key = make_dev_ca(data / "tls")
        make_server_cert(data / "tls", ca_cert, ca_key, hostnames=[SERVER_NAME])
        self.config = api_init_data(data)
        self.storage = Storage(self.config.database_url)
        self.server_key = load_signing_key(self.config.signing_key_path)
        self.blobs = BlobStore(self.config.blob_dir)
        api_publish(self.storage, self.blobs, self.server_key, datetime.now(UTC), dict(batches))
        self.gunicorn = ServerProcess(
            self.config.data_dir, log_path=root / "gunicorn.log", env=env, workers=1, threads=4
        )

    @property
    def port(self) -> int:
        assert self.gunicorn.port is not None, "the server is not running"
        return self.gunicorn.port

    @property
    def url(self) -> str:
        return f"https://{SERVER_NAME}:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.gunicorn.ca_file

    @property
    def tls_dir(self) -> Path:
        return self.config.data_dir / "tls"

    def enroll(self, lasdec: str = API_A) -> Enrolled:
        terminal, key = api_enroll(self.storage, lasdec, datetime.now(UTC))
        return Enrolled(terminal.terminal_id, key, lasdec)

    def revoke(self, terminal: Enrolled) -> None:
        assert revoke_terminal(self.storage, terminal.terminal_id, now=datetime.now(UTC))

    def transport(self, terminal: Enrolled, **options) -> HttpsTransport:  # type: ignore[no-untyped-def]
        """A transport for ``terminal``; the name resolves to 127.0.0.1 unless ``resolve`` is given."""
        settings = {
            "terminal_id": terminal.terminal_id,
            "key": terminal.key,
            "ca_file": self.ca_file,
            "resolve": lambda name: LOOPBACK,
            "timeout": 10.0,
            "agent_version": AGENT_VERSION,
        }
        settings.update(options)
        url = settings.pop("url", self.url)
        return HttpsTransport(url, **settings)

    def start(self) -> AgentServer:
        self.gunicorn.start()
        return self

    def close(self) -> None:
        self.gunicorn.stop()
        self.storage.dispose()


@pytest.fixture(scope="module")
def agent_server_env() -> dict[str, str]:
    """``RENKEI_SERVER_*`` settings for :func:`agent_server`; a test module may override this."""
    return {}


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory, agent_server_env) -> Iterator[AgentServer]:  # type: ignore[no-untyped-def]
    """One server per test module: batches of 200 notices for API_A, 3 for API_B, 2 for API_C."""
    server = AgentServer(
        tmp_path_factory.mktemp("server"),
        batches={API_A: 200, API_B: 3, API_C: 2},
        env=agent_server_env,
    )
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def ntp_server(tmp_path_factory) -> Iterator[Chronyd]:  # type: ignore[no-untyped-def]
    """chronyd serving the machine's own clock: an NTP server in sync."""
    server = Chronyd(tmp_path_factory.mktemp("chrony"))
    try:
        yield server.start()
    finally:
        server.stop()


#: How far ahead :func:`ntp_server_ahead` runs, seconds.
AHEAD = 120.0


@pytest.fixture(scope="module")
def ntp_server_ahead(tmp_path_factory) -> Iterator[Chronyd]:  # type: ignore[no-untyped-def]
    """chronyd whose own clock was set :data:`AHEAD` seconds ahead (``chronyc settime``)."""
    server = Chronyd(tmp_path_factory.mktemp("chrony-ahead"))
    try:
        server.start()
        server.set_ahead(AHEAD)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def dns_server_factory(tmp_path_factory) -> Iterator:  # type: ignore[no-untyped-def]
    """Start dnsmasq instances: ``start(records, local=())`` → :class:`Dnsmasq`; all stopped at the end."""
    started: list[Dnsmasq] = []

    def start(records: Mapping[str, Sequence[str]], *, local: Sequence[str] = ()) -> Dnsmasq:
        server = Dnsmasq(tmp_path_factory.mktemp("dnsmasq"), records, local=local)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture(scope="module")
def lgwan_dns(dns_server_factory) -> Dnsmasq:  # type: ignore[no-untyped-def]
    """The LGWAN DNS: knows :data:`SERVER_NAME` (A 127.0.0.1, AAAA ::1); NXDOMAIN for other *.test."""
    return dns_server_factory({SERVER_NAME: [LOOPBACK, "::1"]}, local=["test"])
