"""The rendered nftables ruleset: valid for nft, and in a namespace it lets through only the allowed flows."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from provisioning import render
from provisioning.apply import under
from tests.provisioning.conftest import (
    OTHER_HOST,
    SERVER_ADDRESS,
    base_settings,
    flags,
    invoke,
    need_root_tools,
    run,
)

LISTEN = """
import socket, sys
servers = []
for proto, host, port in [a.split(':') for a in sys.argv[1:]]:
    if proto == 'udp':
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((host, int(port)))
    else:
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port))); s.listen()
    servers.append(s)
print('ready', flush=True)
import select
while True:
    for r in select.select(servers, [], [])[0]:
        if r.type == socket.SOCK_DGRAM:
            data, peer = r.recvfrom(512); r.sendto(b'pong', peer)
        else:
            c, _ = r.accept(); c.sendall(b'hello'); c.close()
"""

#: What a dropped packet looks like to the sender: a local output drop may surface as EPERM, or
#: the SYN/datagram just vanishes (timeout).  A refusal (RST, ICMP) would mean it got through.
BLOCKED = {"blocked PermissionError", "blocked TimeoutError"}

CONNECT = """
import socket, sys
host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    if proto == 'tcp':
        print(socket.create_connection((host, port), timeout=0.5).recv(5).decode())
    else:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(0.5)
        u.sendto(b'ping', (host, port)); print(u.recv(5).decode())
except OSError as e:
    print('blocked', type(e).__name__)
"""


@pytest.fixture
def ruleset(tmp_path, runner):
    result = invoke(runner, "configure", "--root", str(tmp_path), *flags(base_settings()))
    assert result.exit_code == 0, result.output
    return under(tmp_path, render.NFTABLES_CONF)


def test_nft_accepts_the_ruleset(ruleset):
    need_root_tools("nft")
    result = run("nft", "-c", "-f", str(ruleset), check=False)
    assert result.returncode == 0, result.stderr


def test_nft_check_catches_a_broken_ruleset(tmp_path, ruleset):
    """Control: the check above can fail."""
    need_root_tools("nft")
    broken = tmp_path / "broken.nft"
    broken.write_text(ruleset.read_text().replace("policy drop;", "policy dorp;", 1))
    assert run("nft", "-c", "-f", str(broken), check=False).returncode != 0


def test_allowed_flows_pass_and_others_are_dropped(lgwan, ruleset):
    listener = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            lgwan.lgwan,
            sys.executable,
            "-c",
            LISTEN,
            f"tcp:{SERVER_ADDRESS}:8443",
            f"tcp:{SERVER_ADDRESS}:9000",
            f"tcp:{OTHER_HOST}:8443",
            f"tcp:{SERVER_ADDRESS}:25",
            f"udp:{SERVER_ADDRESS}:53",
            f"udp:{OTHER_HOST}:53",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"

        def attempt(host: str, port: int, proto: str = "tcp") -> str:
            return lgwan.exec_t(
                sys.executable, "-c", CONNECT, host, str(port), proto
            ).stdout.strip()

        # Before the ruleset everything is open: the probes themselves work.
        assert attempt(SERVER_ADDRESS, 9000) == "hello"
        assert attempt(OTHER_HOST, 8443) == "hello"
        assert attempt(OTHER_HOST, 53, "udp") == "pong"
        lgwan.exec_t("nft", "-f", str(ruleset))
        assert attempt(SERVER_ADDRESS, 8443) == "hello"  # the linkage server
        assert attempt(SERVER_ADDRESS, 25) == "hello"  # SMTP relay
        assert attempt(SERVER_ADDRESS, 53, "udp") == "pong"  # DNS
        assert attempt(SERVER_ADDRESS, 9000) in BLOCKED  # another port
        assert attempt(OTHER_HOST, 8443) in BLOCKED  # another host
        assert attempt(OTHER_HOST, 53, "udp") in BLOCKED
        # Inbound: nothing from the LGWAN may open a connection to the appliance.
        inbound = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                lgwan.terminal,
                sys.executable,
                "-c",
                LISTEN,
                "tcp:10.77.0.2:22",
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.3)
            assert (
                lgwan.exec_l(sys.executable, "-c", CONNECT, "10.77.0.2", "22", "tcp").stdout.strip()
                == "blocked TimeoutError"
            )
        finally:
            inbound.kill()
            inbound.wait()
    finally:
        listener.kill()
        listener.wait()
        if listener.stdout is not None:
            listener.stdout.close()
