"""The e2e suite's world: built once per test session (per xdist worker), torn down after.

Everything runs as root in network namespaces this suite creates (see
``network.py``); without root or one of the tools below the tests skip.
Debian packages: iproute2 (``ip``, ``tc``), nftables, util-linux (``unshare``,
``nsenter``, ``setpriv``, ``losetup``), systemd (``systemd-sysusers``,
``systemd-tmpfiles``), dnsmasq-base, chrony, e2fsprogs (``mkfs.ext4``).

At the end the fixture checks that no namespace of this run is left
(``ip netns list``), failed tests or not.  With ``--database=postgresql`` the
server's database is a new, empty database of the worker's throw-away cluster
(tests/conftest.py), set up by the operator's ``renkei-server init`` like a
real one.  The tables the scenarios print are
repeated in the terminal summary (``report.py``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from .network import netns_names
from .report import PROPERTY
from .world import World

TOOLS = (
    "ip",
    "tc",
    "nft",
    "unshare",
    "nsenter",
    "setpriv",
    "systemd-sysusers",
    "systemd-tmpfiles",
    "dnsmasq",
    "chronyd",
    "chronyc",
)


def _need_root_and_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("the e2e suite needs root (network namespaces, mounts)")
    for tool in TOOLS:
        if shutil.which(tool) is None and not any(
            os.path.exists(f"{d}/{tool}") for d in ("/usr/sbin", "/sbin")
        ):
            pytest.skip(f"{tool} is not installed (see tests/e2e/conftest.py for the packages)")


@pytest.fixture(scope="session")
def world(tmp_path_factory, request, database_kind) -> Iterator[World]:  # type: ignore[no-untyped-def]
    _need_root_and_tools()
    database_url = None
    if database_kind == "postgresql":
        cluster = request.getfixturevalue("pg_cluster")
        database_url = cluster.create_database(cluster.new_name("e2e"))
    built = World(tmp_path_factory.mktemp("world"), database_url=database_url)
    try:
        yield built.start()
    finally:
        built.close()
        left = [name for name in netns_names() if built.net.tag in name]
        assert not left, f"namespaces left behind: {left}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    tables = []
    for kind in ("passed", "failed"):
        for report in terminalreporter.stats.get(kind, []):
            if getattr(report, "when", "call") != "call":
                continue
            tables += [value for name, value in report.user_properties if name == PROPERTY]
    if tables:
        terminalreporter.section("e2e: what was checked")
        for text in tables:
            terminalreporter.write_line(text)
            terminalreporter.write_line("")
