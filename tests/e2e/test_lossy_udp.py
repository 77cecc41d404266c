"""The preflight's NTP and DNS queries survive a lost datagram (what the netem fault showed).

A relay on 127.0.0.1 in front of the real chronyd and dnsmasq of the agent
tests drops the first datagram it is given and passes the rest on: the line
lost one packet.  With one try (the agent before this suite) the query
fails; with the agent's :data:`~appliance.agent.preflight.ATTEMPTS` tries it
gets its answer.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from appliance.agent.preflight import ATTEMPTS, DnsError, NtpError, dns_resolve, ntp_offset
from tests.agent.conftest import (  # noqa: F401 — fixtures: the real chronyd and dnsmasq
    LOOPBACK,
    SERVER_NAME,
    dns_server_factory,
    lgwan_dns,
    ntp_server,
)

pytestmark = pytest.mark.e2e

TRY = 0.5  # seconds per try


class DropFirst:
    """A UDP relay to ``target`` that drops the first ``drop`` datagrams from clients."""

    def __init__(self, target: tuple[str, int], drop: int = 1):
        self.target = target
        self.drop = drop
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(0.2)
        self.address = f"{LOOPBACK}:{self.sock.getsockname()[1]}"
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        upstream.settimeout(2)
        with upstream:
            while self.running:
                try:
                    data, client = self.sock.recvfrom(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if self.drop > 0:
                    self.drop -= 1
                    continue
                upstream.sendto(data, self.target)
                try:
                    answer, _ = upstream.recvfrom(4096)
                except TimeoutError:
                    continue
                self.sock.sendto(answer, client)

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=5)
        self.sock.close()


def _target(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


@pytest.fixture
def lossy() -> Iterator:
    relays: list[DropFirst] = []

    def make(address: str) -> DropFirst:
        relay = DropFirst(_target(address))
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        relay.close()


def test_ntp_one_try_fails_on_a_lost_datagram_and_the_retries_get_through(ntp_server, lossy):  # noqa: F811
    assert ATTEMPTS >= 2
    with pytest.raises(NtpError):
        ntp_offset(lossy(ntp_server.address).address, timeout=TRY, attempts=1)
    assert abs(ntp_offset(lossy(ntp_server.address).address, timeout=TRY)) < 1.0


def test_dns_one_try_fails_on_a_lost_datagram_and_the_retries_get_through(lgwan_dns, lossy):  # noqa: F811
    with pytest.raises(DnsError) as caught:
        dns_resolve(SERVER_NAME, lossy(lgwan_dns.address).address, timeout=TRY, attempts=1)
    assert caught.value.code == "dns.timeout"
    assert dns_resolve(SERVER_NAME, lossy(lgwan_dns.address).address, timeout=TRY)[0] == LOOPBACK
