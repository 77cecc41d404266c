"""Shared pieces for the provisioning tests: settings, the CLI runner, network namespaces.

:class:`Lgwan` builds two namespaces joined by a veth pair: ``terminal``
(10.77.0.2/24, where the appliance's ruleset is loaded) and ``lgwan``
(10.77.0.1/24 and 10.77.0.3/24, a second "host" on the same wire).  Both are
deleted at the end, whatever happened; processes started inside are stopped
by the test that started them.  Needs root and ``ip``/``nft``; skips otherwise.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from provisioning.cli import main

TERMINAL_ADDRESS = "10.77.0.2"
SERVER_ADDRESS = "10.77.0.1"
OTHER_HOST = "10.77.0.3"


def base_settings(**overrides: object) -> dict[str, object]:
    """Valid settings for 131016 (東京都千代田区) on the test LGWAN."""
    data: dict[str, object] = {
        "interface": "eth1",
        "dhcp": False,
        "address": f"{TERMINAL_ADDRESS}/24",
        "gateway": SERVER_ADDRESS,
        "dns_servers": [SERVER_ADDRESS],
        "ntp_servers": [SERVER_ADDRESS],
        "server_url": "https://renkei.test:8443",
        "server_address": f"{SERVER_ADDRESS}/32",
        "lasdec": "131016",
        "smtp_host": SERVER_ADDRESS,
        "smtp_port": 25,
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def flags(data: dict[str, object]) -> list[str]:
    """``configure`` command-line flags for a settings mapping."""
    out = ["--yes"]
    for key, value in data.items():
        name = "--" + {"dns_servers": "dns", "ntp_servers": "ntp"}.get(key, key).replace("_", "-")
        if key == "dhcp":
            out.append("--dhcp" if value else "--static")
        elif isinstance(value, list):
            for item in value:
                out += [name, str(item)]
        else:
            out += [name, str(value)]
    return out


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str, input: str | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(main, list(args), input=input, catch_exceptions=False)


def need_root_tools(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: nftables, iproute2)")


def run(*argv: str, check: bool = True, **options) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, **options)


class Lgwan:
    """Two namespaces on one veth wire: the appliance (``terminal``) and the LGWAN side."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.terminal = f"rkt-{tag}"
        self.lgwan = f"rkl-{tag}"
        self.created: list[str] = []

    def up(self) -> Lgwan:
        for name in (self.terminal, self.lgwan):
            run("ip", "netns", "add", name)
            self.created.append(name)
        run(
            "ip",
            "link",
            "add",
            "eth1",
            "netns",
            self.terminal,
            "type",
            "veth",
            "peer",
            "name",
            "lg0",
            "netns",
            self.lgwan,
        )
        self.exec_t("ip", "addr", "add", f"{TERMINAL_ADDRESS}/24", "dev", "eth1")
        self.exec_l("ip", "addr", "add", f"{SERVER_ADDRESS}/24", "dev", "lg0")
        self.exec_l("ip", "addr", "add", f"{OTHER_HOST}/24", "dev", "lg0")
        for ns, dev in ((self.terminal, "eth1"), (self.lgwan, "lg0")):
            run("ip", "-n", ns, "link", "set", dev, "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
        return self

    def exec_t(self, *argv: str, **options) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
        return run("ip", "netns", "exec", self.terminal, *argv, **options)

    def exec_l(self, *argv: str, **options) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
        return run("ip", "netns", "exec", self.lgwan, *argv, **options)

    def down(self) -> None:
        for name in self.created:
            for pid in run("ip", "netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
            run("ip", "netns", "delete", name, check=False)
        self.created.clear()


@pytest.fixture
def lgwan() -> Iterator[Lgwan]:
    need_root_tools("ip", "nft")
    net = Lgwan()
    try:
        yield net.up()
    finally:
        net.down()


# The real server, DNS and NTP of the agent tests (gunicorn with TLS, dnsmasq, chronyd).
from tests.agent.conftest import (  # noqa: E402, F401
    SERVER_NAME,
    agent_server,
    agent_server_env,
    dns_server_factory,
    lgwan_dns,
    ntp_server,
)


@pytest.fixture
def enrolled_root(tmp_path, runner, agent_server, lgwan_dns, ntp_server):  # type: ignore[no-untyped-def]  # noqa: F811
    """A root configured for the 127.0.0.1 services (port ``lo``) and enrolled with the server."""
    from datetime import UTC, datetime

    from provisioning.cli import load_saved_settings
    from provisioning.enroll import enroll
    from server.enrollment import issue_token
    from tests.server.conftest import API_A

    data = base_settings(
        interface="lo",
        address="127.0.0.1/8",
        gateway="127.0.0.2",
        server_url=agent_server.url,
        server_address="127.0.0.1/32",
        dns_servers=[lgwan_dns.address],
        ntp_servers=[ntp_server.address],
        smtp_host=None,
    )
    assert invoke(runner, "configure", "--root", str(tmp_path), *flags(data)).exit_code == 0
    token = issue_token(agent_server.storage, API_A, now=datetime.now(UTC), ttl=3600)
    enroll(load_saved_settings(tmp_path), tmp_path, token, ca_file=agent_server.ca_file)
    return tmp_path
