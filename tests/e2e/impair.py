"""A bad line in user space: loss and delay between two interfaces, for kernels without sch_netem.

``tc qdisc … netem loss 30% delay 500ms`` is the tool for this, but
``sch_netem`` is a module some kernels do not have (``CONFIG_NET_SCH_NETEM``
unset).  Then the harness (``network.Lgwan.impair``) takes the terminal's
port out of its bridge on the router and runs this relay between the port
and a spare veth whose other end is in the bridge: every Ethernet frame
crossing the wire passes through here, in both directions, and is dropped
with probability ``loss`` or sent on after ``delay`` seconds — what netem
does on the router's port (frames towards the terminal), or in both
directions with ``--both-ways``; order kept.

Frames must be wire-sized and carry their checksums for a raw socket to
pass them on, so the transmitting interfaces are told to segment and
checksum in software (``offloads IFACE off``: the ``SIOCETHTOOL`` ioctl,
no ``ethtool`` binary needed).

Run inside the router's namespace::

    python -m tests.e2e.impair relay PORT SPARE --loss 0.3 --delay 0.5 --seed 7 [--both-ways]
    python -m tests.e2e.impair offloads IFACE off

The relay prints ``ready`` once both sockets are bound and runs until killed.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import heapq
import random
import select
import socket
import struct
import sys
import time

__all__ = ["main", "relay", "set_offloads"]

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SIOCETHTOOL = 0x8946
#: Legacy ethtool "set" commands, each taking ``struct ethtool_value {u32 cmd; u32 data;}``.
_OFFLOADS = {
    "tx-checksum": 0x17,  # ETHTOOL_STXCSUM
    "scatter-gather": 0x19,  # ETHTOOL_SSG
    "tso": 0x1F,  # ETHTOOL_STSO
    "gso": 0x24,  # ETHTOOL_SGSO
    "gro": 0x2C,  # ETHTOOL_SGRO
}


def set_offloads(ifname: str, enabled: bool) -> None:
    """Turn segmentation, receive coalescing and checksum offload of ``ifname`` on or off."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for command in _OFFLOADS.values():
            value = ctypes.create_string_buffer(struct.pack("II", command, int(enabled)), 8)
            request = struct.pack("16sP16x", ifname.encode(), ctypes.addressof(value))
            fcntl.ioctl(sock.fileno(), SIOCETHTOOL, request)


def _bound(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))
    sock.setblocking(False)
    return sock


def relay(
    port: str, spare: str, *, loss: float, delay: float, seed: int, both_ways: bool = False
) -> None:
    """Forward frames between ``port`` and ``spare`` until killed, dropping and delaying them:
    those going out of ``port`` (towards the terminal), or, ``both_ways``, all of them."""
    chance = random.Random(seed)
    impaired = {spare, port} if both_ways else {spare}
    ends = {name: _bound(name) for name in (port, spare)}
    other = {port: ends[spare], spare: ends[port]}
    by_fd = {sock.fileno(): name for name, sock in ends.items()}
    due: list[tuple[float, int, socket.socket, bytes]] = []
    order = 0
    print("ready", flush=True)
    while True:
        now = time.monotonic()
        while due and due[0][0] <= now:
            _when, _n, out, frame = heapq.heappop(due)
            try:
                out.send(frame)
            except OSError:
                pass  # the interface went down: the frame is lost, as on a wire
        wait = max(0.0, due[0][0] - now) if due else 1.0
        readable, _, _ = select.select(list(ends.values()), [], [], wait)
        for sock in readable:
            name = by_fd[sock.fileno()]
            while True:
                try:
                    frame, address = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                if address[2] == PACKET_OUTGOING:
                    continue  # our own send, seen on the way out
                if name not in impaired:
                    other[name].send(frame)
                    continue
                if chance.random() < loss:
                    continue
                order += 1
                heapq.heappush(due, (time.monotonic() + delay, order, other[name], frame))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.e2e.impair")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("relay")
    run.add_argument("port")
    run.add_argument("spare")
    run.add_argument("--loss", type=float, default=0.0)
    run.add_argument("--delay", type=float, default=0.0)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--both-ways", action="store_true")
    off = sub.add_parser("offloads")
    off.add_argument("ifname")
    off.add_argument("state", choices=["on", "off"])
    args = parser.parse_args(argv)
    if args.command == "offloads":
        set_offloads(args.ifname, args.state == "on")
        return 0
    relay(
        args.port,
        args.spare,
        loss=args.loss,
        delay=args.delay,
        seed=args.seed,
        both_ways=args.both_ways,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
