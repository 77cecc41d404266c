"""The attacker's tools for scenario 4, each run from inside a namespace of the simulated LGWAN.

* :func:`send` — one HTTPS request to the server, signed as the caller
  chooses (any key, key id, nonce, time) or sent exactly as recorded (a
  replay); from whichever namespace the attacker sits in.
* :func:`connect` / :func:`scan` — TCP connection attempts (one, or a
  thousand at once with non-blocking sockets) and what came back: an
  answer, a refusal (RST), a local drop (EPERM) or nothing (timeout).
* :func:`udp` — a datagram and what came back (an answer, ICMP
  unreachable, a local drop, nothing).
* :class:`Listener` — sockets listening in a namespace, so that "nothing
  answers" is the firewall's doing, not an empty port.
* :class:`Mitm` — ``mitm.py`` on the router, and the nftables rule that
  redirects one terminal's HTTPS to it.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import select
import socket
import ssl
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.httpsig import new_nonce, sign_request
from server.tls import make_dev_ca, make_server_cert
from tests.provisioning.topology import in_netns

from .ministry import SERVER_NAME
from .network import SERVER_ADDRESS, Lgwan, Link, run

__all__ = ["Listener", "Mitm", "connect", "error_code", "scan", "send", "udp"]


def send(
    namespace: str,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    ca_file: Path,
    key: Ed25519PrivateKey | None = None,
    key_id: str | None = None,
    nonce: str | None = None,
    created: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any]:
    """Send one request from ``namespace``; sign it when ``key`` is given.  (status, JSON or None)."""
    sent = {"Host": SERVER_NAME, "Renkei-Agent-Version": "attacker/1", **(headers or {})}
    if body or method == "POST":
        sent.setdefault("Content-Length", str(len(body)))
    if key is not None:
        sent.update(
            sign_request(
                method,
                f"https://{SERVER_NAME}{path}",
                {},
                body,
                key_id=key_id or "unknown",
                private_key=key,
                created=int(time.time()) if created is None else created,
                nonce=nonce or new_nonce(),
            )
        )

    def send() -> tuple[int, Any]:
        context = ssl.create_default_context(cafile=str(ca_file))
        raw = socket.create_connection((SERVER_ADDRESS, 443), timeout=10)
        conn = http.client.HTTPSConnection(SERVER_NAME, 443, timeout=10)
        conn.sock = context.wrap_socket(raw, server_hostname=SERVER_NAME)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in sent.items():
                conn.putheader(name, value)
            conn.endheaders(body or None)
            answer = conn.getresponse()
            data = answer.read()
        finally:
            conn.close()
        try:
            return answer.status, json.loads(data)
        except ValueError:
            return answer.status, None

    return in_netns(namespace, send)


def error_code(answer: Any) -> str | None:
    try:
        return answer["error"]["code"]
    except (TypeError, KeyError):
        return None


def connect(namespace: str, host: str, port: int, timeout: float = 1.0) -> str:
    """``open``, ``refused`` (RST), ``dropped here`` (EPERM: this side's firewall) or ``no answer``."""

    def attempt() -> str:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return "open"
        except ConnectionRefusedError:
            return "refused"
        except PermissionError:
            return "dropped here"
        except TimeoutError:
            return "no answer"
        except OSError as exc:
            return f"error {errno.errorcode.get(exc.errno or 0, exc.errno)}"

    return in_netns(namespace, attempt, timeout=timeout + 10)


def udp(namespace: str, host: str, port: int, payload: bytes, timeout: float = 1.0) -> str:
    """``answered``, ``unreachable`` (ICMP), ``dropped here`` (EPERM) or ``no answer``."""

    def attempt() -> str:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect((host, port))
                sock.send(payload)
                sock.recv(2048)
                return "answered"
            except ConnectionRefusedError:
                return "unreachable"
            except PermissionError:
                return "dropped here"
            except TimeoutError:
                return "no answer"

    return in_netns(namespace, attempt, timeout=timeout + 10)


def scan(namespace: str, host: str, ports: Iterable[int], timeout: float = 2.0) -> dict[int, str]:
    """Connect to the ports, 256 at a time (non-blocking); each: open, refused or no answer."""

    def batch(chunk: list[int]) -> dict[int, str]:
        pending: dict[int, tuple[socket.socket, int]] = {}
        found: dict[int, str] = {}
        for port in chunk:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            code = sock.connect_ex((host, port))
            if code in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                pending[sock.fileno()] = (sock, port)
            else:
                found[port] = "open" if code == 0 else errno.errorcode.get(code, str(code))
                sock.close()
        deadline = time.monotonic() + timeout
        while pending and (left := deadline - time.monotonic()) > 0:
            _, ready, _ = select.select([], [s for s, _ in pending.values()], [], left)
            for sock in ready:
                _, port = pending.pop(sock.fileno())
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                found[port] = (
                    "open"
                    if error == 0
                    else "refused"
                    if error == errno.ECONNREFUSED
                    else str(error)
                )
                sock.close()
        for sock, port in pending.values():
            found[port] = "no answer"
            sock.close()
        return found

    def attempt() -> dict[int, str]:
        wanted = list(ports)
        found: dict[int, str] = {}
        for start in range(0, len(wanted), 256):
            found.update(batch(wanted[start : start + 256]))
        return found

    return in_netns(namespace, attempt, timeout=timeout * 8 + 20)


_LISTEN = """
import select, socket, sys
servers = []
for spec in sys.argv[1:]:
    proto, host, port = spec.split(":")
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    s = socket.socket(socket.AF_INET, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    if kind == socket.SOCK_STREAM:
        s.listen(64)
    servers.append(s)
print("ready", flush=True)
while True:
    for r in select.select(servers, [], [])[0]:
        if r.type == socket.SOCK_DGRAM:
            data, peer = r.recvfrom(2048)
            r.sendto(b"pong", peer)
        else:
            c, _ = r.accept()
            c.close()
"""


class Listener:
    """Sockets listening in a namespace (``tcp:HOST:PORT``, ``udp:HOST:PORT``) until closed."""

    def __init__(self, net: Lgwan, namespace: str, specs: list[str]):
        self.process = subprocess.Popen(
            net.exec_argv(namespace, "python3", "-c", _LISTEN, *specs),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError(f"listener did not start: {specs}")

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.communicate(timeout=10)


class Mitm:
    """``mitm.py`` on the router, with a certificate from ``ca`` (cert, key) or a CA of its own."""

    def __init__(self, net: Lgwan, link: Link, folder: Path, *, server_ca: Path, forge: str):
        self.net = net
        self.link = link
        self.folder = folder
        self.server_ca = server_ca
        self.forge = forge
        self.record = folder / f"mitm-{forge}.jsonl"
        self.process: subprocess.Popen | None = None

    def certificate(self, trusted: bool) -> tuple[Path, Path]:
        """A certificate for the server's name: from the server's CA (trusted) or a stranger's."""
        folder = self.folder / ("trusted" if trusted else "stranger")
        if trusted:
            ca = (self.server_ca, self.server_ca.with_name("ca.key"))
        else:
            ca = make_dev_ca(folder / "ca")
        return make_server_cert(folder, *ca, hostnames=[SERVER_NAME])

    @contextlib.contextmanager
    def running(self, *, trusted: bool = True) -> Iterator[Mitm]:
        cert, key = self.certificate(trusted)
        listen = f"{self.link.gateway}:8443"
        self.process = subprocess.Popen(
            self.net.python(
                self.net.router,
                *("-m", "tests.e2e.mitm", "--listen", listen, "--cert", str(cert)),
                *("--key", str(key), "--upstream", f"{SERVER_ADDRESS}:443"),
                *("--name", SERVER_NAME, "--ca", str(self.server_ca)),
                *("--forge", self.forge, "--record", str(self.record)),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        table = f"e2e_mitm_{self.link.lasdec}"
        try:
            assert self.process.stdout is not None
            if self.process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"mitm did not start: {self.process.stderr}")
            rules = self.folder / f"{table}.nft"
            rules.write_text(
                f"table ip {table} {{\n"
                "  chain pre {\n"
                "    type nat hook prerouting priority dstnat;\n"
                f'    iifname "{self.link.bridge}" ip daddr {SERVER_ADDRESS} tcp dport 443 '
                "redirect to :8443\n"
                "  }\n"
                "}\n"
            )
            run("ip", "netns", "exec", self.net.router, "nft", "-f", str(rules))
            yield self
        finally:
            run(
                "ip",
                "netns",
                "exec",
                self.net.router,
                "nft",
                "delete",
                "table",
                "ip",
                table,
                check=False,
            )
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.communicate(timeout=10)
            self.process = None

    def recorded(self) -> list[dict]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]
