"""configure → enroll → check, run in a "terminal" namespace against a real LGWAN namespace.

The LGWAN namespace runs dnsmasq, chronyd (NTP server) and the linkage server
under gunicorn (tests/provisioning/topology.py).  ``renkei-provision`` runs
inside the terminal namespace with the ruleset ``configure`` rendered loaded
there, as on site.  One topology per module; a test that breaks a part (DNS
down, NTP far off, a ruleset without NTP) puts it back in ``finally``.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from provisioning import render
from provisioning.apply import under
from server.enrollment import issue_token
from tests.provisioning.conftest import flags, need_root_tools
from tests.provisioning.topology import Topology
from tests.server.conftest import API_A

#: The checks that prove the network path; chrony (the appliance's own chronyd)
#: and timer (systemd) do not run in a test namespace and only warn there.
NETWORK = ("link", "gateway", "tls", "signed request", "server clock", "firewall")


@pytest.fixture(scope="module")
def topology(tmp_path_factory) -> Iterator[Topology]:  # type: ignore[no-untyped-def]
    need_root_tools("ip", "nft")
    net = Topology(tmp_path_factory.mktemp("topology"))
    try:
        yield net.start()
    finally:
        net.close()


@pytest.fixture(scope="module")
def site(topology, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The appliance configured, its ruleset loaded, and enrolled — all from the terminal."""
    root = tmp_path_factory.mktemp("appliance")
    done = topology.provision("configure", "--root", str(root), *flags(topology.settings()))
    assert done.returncode == 0, done.stdout + done.stderr
    topology.load_ruleset(under(root, render.NFTABLES_CONF))
    assert topology.server is not None and topology.ns_server is not None
    token = issue_token(topology.server.storage, API_A, now=datetime.now(UTC), ttl=3600)
    enrolled = topology.provision(
        "enroll",
        "--root",
        str(root),
        "--token",
        token,
        "--ca-file",
        str(topology.ns_server.ca_file),
        "--json",
    )
    assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr
    root.joinpath("used-token").write_text(token)
    return root


def check(topology: Topology, root) -> tuple[int, dict[str, dict]]:  # type: ignore[no-untyped-def]
    result = topology.provision("check", "--root", str(root), "--json")
    assert result.returncode in (0, 1, 2), result.stderr
    return result.returncode, {c["name"]: c for c in json.loads(result.stdout)}


def network_lines(results: dict[str, dict]) -> dict[str, dict]:
    return {n: c for n, c in results.items() if n in NETWORK or n.startswith(("dns ", "ntp "))}


def test_every_network_check_passes(topology, site):
    code, results = check(topology, site)
    lines = network_lines(results)
    assert set(NETWORK) <= set(lines)
    assert {"dns 10.77.0.1", "ntp 10.77.0.1"} <= set(lines)
    failing = {n: c for n, c in lines.items() if c["status"] != "pass"}
    assert not failing, failing
    assert "renkei.test is 10.77.0.1" in lines["dns 10.77.0.1"]["detail"]
    others = {c["status"] for n, c in results.items() if n not in lines}
    assert code == (0 if others <= {"pass"} else 2 if "fail" not in others else 1)
    # The configuration and the agent timer agree on business_end.
    agent = tomllib.loads(under(site, render.AGENT_TOML).read_text())
    dropin = under(site, render.SCHEDULE_DROPIN).read_text()
    assert agent["business_end"] == "17:15" and "OnCalendar=Mon..Fri 17:30 Asia/Tokyo" in dropin
    assert agent["server_url"] == "https://renkei.test" and agent["ca_file"] == render.CA_PATH


def test_dns_server_down(topology, site):
    assert topology.dns is not None
    topology.dns.stop()
    try:
        code, results = check(topology, site)
    finally:
        topology.dns.start()
    assert code == 1
    line = results["dns 10.77.0.1"]
    assert line["status"] == "fail" and "応答がありません" in line["hint"]
    # Without the name the server cannot be reached either; the wire still works.
    assert results["tls"]["status"] == "fail"
    assert results["link"]["status"] == "pass" and results["gateway"]["status"] == "pass"


def test_ntp_server_far_off(topology, site):
    assert topology.ntp is not None
    topology.ntp.set_ahead(120)
    try:
        code, results = check(topology, site)
    finally:  # a fresh chronyd serves the right time again (settime back is refused)
        topology.ntp.stop()
        topology.ntp.start()
    assert code == 1
    line = results["ntp 10.77.0.1"]
    assert line["status"] == "fail" and "時刻が大きくずれています" in line["hint"]
    assert 118 < float(line["detail"].split()[1]) < 122  # "offset +120.0 s (≥ 60 s)"
    # The server's clock is right: only the NTP server is wrong.
    assert results["server clock"]["status"] == "pass"


def test_firewall_without_the_ntp_allowance(topology, site, tmp_path):
    rendered = under(site, render.NFTABLES_CONF)
    lines = rendered.read_text().splitlines()
    blocked = [line for line in lines if 'comment "NTP"' not in line]
    assert len(blocked) == len(lines) - 1
    (tmp_path / "no-ntp.nft").write_text("\n".join(blocked) + "\n")
    topology.load_ruleset(tmp_path / "no-ntp.nft")
    try:
        code, results = check(topology, site)
    finally:
        topology.load_ruleset(rendered)
    assert code == 1
    assert results["ntp 10.77.0.1"]["status"] == "fail"
    assert "通信許可" in results["ntp 10.77.0.1"]["hint"]
    assert results["firewall"]["status"] == "fail"
    # DNS and the server are still allowed.
    assert results["dns 10.77.0.1"]["status"] == "pass"
    assert results["signed request"]["status"] == "pass"


@pytest.mark.parametrize("which", ["wrong", "used"])
def test_enroll_refuses_a_bad_token(topology, site, tmp_path, which):
    root = tmp_path / "appliance"
    done = topology.provision("configure", "--root", str(root), *flags(topology.settings()))
    assert done.returncode == 0, done.stderr
    token = (site / "used-token").read_text() if which == "used" else "AAAAA-BBBBB-CCCCC-DDDDD"
    assert topology.ns_server is not None
    result = topology.provision(
        "enroll",
        "--root",
        str(root),
        "--token",
        token,
        "--ca-file",
        str(topology.ns_server.ca_file),
    )
    assert result.returncode == 1
    assert "token." in result.stderr and "nothing was written" in result.stderr
    assert "トークン" in result.stderr  # the technician's hint
    assert not under(root, render.KEY_PATH).exists()
    assert not under(root, render.AGENT_TOML).exists()
