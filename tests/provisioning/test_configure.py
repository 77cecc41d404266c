"""configure --root: rendered content, bad input refused with nothing written, dry run, rollback."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest

from provisioning import render
from provisioning.apply import under
from tests.provisioning.conftest import base_settings, flags, invoke


def written(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_configure_renders_every_file(tmp_path, runner):
    result = invoke(runner, "configure", "--root", str(tmp_path), *flags(base_settings()))
    assert result.exit_code == 0, result.output
    assert "東京都千代田区" in result.output
    network = under(tmp_path, render.NETWORK_FILE).read_text()
    assert "Name=eth1" in network and "Address=10.77.0.2/24" in network
    assert "Gateway=10.77.0.1" in network and "DHCP" not in network
    chrony = under(tmp_path, render.CHRONY_CONF).read_text()
    servers = [line for line in chrony.splitlines() if line.startswith(("server", "pool"))]
    assert servers == ["server 10.77.0.1 iburst"]
    assert "makestep 1 3" in chrony and "sourcedir" not in chrony
    resolv = under(tmp_path, render.RESOLV_CONF).read_text()
    assert [x for x in resolv.splitlines() if x.startswith("nameserver")] == [
        "nameserver 10.77.0.1"
    ]
    ruleset = under(tmp_path, render.NFTABLES_CONF).read_text()
    assert ruleset.count("policy drop;") == 3
    assert "ip daddr 10.77.0.1/32 tcp dport 8443 accept" in ruleset
    dropin = under(tmp_path, render.NETWORK_DROPIN).read_text()
    assert dropin.splitlines()[-1] == "IPAddressAllow=10.77.0.1"
    # The updater may reach the same addresses (it has no use for the mail relay).
    update_dropin = under(tmp_path, render.UPDATE_NETWORK_DROPIN).read_text()
    assert update_dropin.splitlines()[-1] == "IPAddressAllow=10.77.0.1"
    saved = tomllib.loads(under(tmp_path, render.PROVISION_TOML).read_text())
    assert saved["lasdec"] == "131016" and saved["dns_servers"] == ["10.77.0.1"]
    # Not enrolled yet: no agent configuration (it would make every timer run fail).
    assert not under(tmp_path, render.AGENT_TOML).exists()


def test_dhcp_and_ports(tmp_path, runner):
    data = base_settings(
        dhcp=True,
        address=None,
        gateway=None,
        dns_servers=["10.1.2.3", "10.1.2.4:5353"],
        ntp_servers=["10.1.2.5:1123"],
    )
    result = invoke(runner, "configure", "--root", str(tmp_path), *flags(data))
    assert result.exit_code == 0, result.output
    network = under(tmp_path, render.NETWORK_FILE).read_text()
    assert "DHCP=ipv4" in network and "UseDNS=no" in network and "Address=" not in network
    assert "server 10.1.2.5 port 1123 iburst" in under(tmp_path, render.CHRONY_CONF).read_text()
    resolv = under(tmp_path, render.RESOLV_CONF).read_text()
    assert "nameserver 10.1.2.3" in resolv and "nameserver 10.1.2.4" not in resolv
    ruleset = under(tmp_path, render.NFTABLES_CONF).read_text()
    assert "udp dport 5353" in ruleset and "udp sport 67 udp dport 68 accept" in ruleset


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"address": "10.77.0.300/24"}, "address"),
        ({"address": "10.77.0.2"}, "give the prefix"),
        ({"address": "10.77.0.2/33"}, "prefix /33"),
        ({"address": "10.77.0.0/24"}, "network's own"),
        ({"gateway": "10.78.0.1"}, "outside the subnet 10.77.0.0/24"),
        ({"gateway": "10.77.0.2"}, "own address"),
        ({"dns_servers": ["ns.example"]}, "dns_servers"),
        ({"ntp_servers": ["10.1.2.3:0"]}, "port"),
        ({"dns_servers": ["fd00::1"]}, "IPv4"),
        ({"lasdec": "131017"}, "check digit does not match (for 13101 it is 6)"),
        ({"lasdec": "999997"}, "no municipality"),
        ({"lasdec": "130001"}, "prefecture"),
        ({"lasdec": "13101"}, "six digits"),
        ({"server_url": "http://renkei.test"}, "https://NAME"),
        ({"server_address": "10.0.0.0/8"}, "wider than /16"),
        ({"server_address": "10.77.0.1/24"}, "server_address"),
        ({"smtp_host": "mail.example"}, "smtp_host"),
        ({"interface": "eth 1"}, "interface"),
    ],
)
def test_bad_input_writes_nothing(tmp_path, runner, override, message):
    result = invoke(runner, "configure", "--root", str(tmp_path), *flags(base_settings(**override)))
    assert result.exit_code == 1
    assert message in result.output and "nothing was written" in result.output
    assert written(tmp_path) == []


def test_settings_file_and_unknown_key(tmp_path, runner):
    good = tmp_path / "good.toml"
    good.write_text(render.toml_text(base_settings()))
    root = tmp_path / "root"
    assert (
        invoke(runner, "configure", "--root", str(root), "--yes", "--from", str(good)).exit_code
        == 0
    )
    bad = tmp_path / "bad.toml"
    bad.write_text(render.toml_text({**base_settings(), "dns_server": ["10.1.2.3"]}))
    result = invoke(
        runner, "configure", "--root", str(tmp_path / "r2"), "--yes", "--from", str(bad)
    )
    assert result.exit_code == 1 and "dns_server" in result.output


def test_interactive_prompts_re_ask_until_valid(tmp_path, runner):
    answers = [
        "eth1",
        "n",
        "10.77.0.2/24",
        "10.99.0.1",
        "10.77.0.1",  # first gateway outside the subnet: asked again
        "10.77.0.1",
        "10.77.0.1",
        "https://renkei.test:8443",
        "10.77.0.1/32",
        "131017",
        "131016",
        "y",  # wrong check digit, then confirm the name
        "n",
    ]
    result = invoke(runner, "configure", "--root", str(tmp_path), input="\n".join(answers) + "\n")
    assert result.exit_code == 0, result.output
    assert "outside the subnet" in result.output and "check digit" in result.output
    assert "131016 = 東京都千代田区" in result.output
    assert "Gateway=10.77.0.1" in under(tmp_path, render.NETWORK_FILE).read_text()


def test_dry_run_shows_diff_and_writes_nothing(tmp_path, runner):
    result = invoke(
        runner, "configure", "--root", str(tmp_path), "--dry-run", *flags(base_settings())
    )
    assert result.exit_code == 0
    assert (
        f"+++ {render.CHRONY_CONF}" in result.output and "+server 10.77.0.1 iburst" in result.output
    )
    assert written(tmp_path) == []
    invoke(runner, "configure", "--root", str(tmp_path), *flags(base_settings()))
    before = {p: p.read_bytes() for p in written(tmp_path)}
    result = invoke(
        runner,
        "configure",
        "--root",
        str(tmp_path),
        "--dry-run",
        *flags(base_settings(ntp_servers=["10.77.0.5"])),
    )
    assert (
        "-server 10.77.0.1 iburst" in result.output and "+server 10.77.0.5 iburst" in result.output
    )
    assert {p: p.read_bytes() for p in written(tmp_path)} == before


def test_rollback_restores_previous_files(tmp_path, runner):
    (tmp_path / "etc").mkdir()
    original = "nameserver 192.0.2.53\n"
    (tmp_path / "etc/resolv.conf").write_text(original)
    assert (
        invoke(runner, "configure", "--root", str(tmp_path), *flags(base_settings())).exit_code == 0
    )
    first = under(tmp_path, render.CHRONY_CONF).read_text()
    second = flags(base_settings(ntp_servers=["10.77.0.5"]))
    assert invoke(runner, "configure", "--root", str(tmp_path), *second).exit_code == 0
    assert "10.77.0.5" in under(tmp_path, render.CHRONY_CONF).read_text()
    result = invoke(runner, "rollback", "--root", str(tmp_path))
    assert result.exit_code == 0 and render.CHRONY_CONF in result.output
    assert under(tmp_path, render.CHRONY_CONF).read_text() == first
    result = invoke(runner, "rollback", "--root", str(tmp_path))
    assert result.exit_code == 1 and "no previous configuration" in result.output


def test_rollback_of_first_configure_removes_new_files(tmp_path, runner):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/resolv.conf").write_text("nameserver 192.0.2.53\n")
    invoke(runner, "configure", "--root", str(tmp_path), *flags(base_settings()))
    assert invoke(runner, "rollback", "--root", str(tmp_path)).exit_code == 0
    assert (tmp_path / "etc/resolv.conf").read_text() == "nameserver 192.0.2.53\n"
    assert not under(tmp_path, render.CHRONY_CONF).exists()
    assert not under(tmp_path, render.NFTABLES_CONF).exists()


def test_failed_write_puts_back_what_was_written(tmp_path, runner):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/chrony").write_text("a file where a folder must be")
    result = invoke(runner, "configure", "--root", str(tmp_path), *flags(base_settings()))
    assert result.exit_code == 1 and "nothing changed" in result.output
    # provision.toml and the .network file came before chrony.conf: both gone again.
    assert not under(tmp_path, render.PROVISION_TOML).exists()
    assert not under(tmp_path, render.NETWORK_FILE).exists()


def test_modes(tmp_path, runner):
    invoke(runner, "configure", "--root", str(tmp_path), *flags(base_settings()))
    mode = stat.S_IMODE(os.stat(under(tmp_path, render.NFTABLES_CONF)).st_mode)
    assert mode == 0o755
    assert stat.S_IMODE(os.stat(under(tmp_path, render.RESOLV_CONF)).st_mode) == 0o644


def test_missing_interface_on_the_real_root_is_refused(runner):
    """Only checked for the real root; --dry-run so that nothing could be written either way."""
    data = base_settings(interface="nosuch0")
    result = invoke(runner, "configure", "--root", "/", "--dry-run", *flags(data))
    assert result.exit_code == 1 and "'nosuch0' does not exist" in result.output


def test_every_command_has_help_with_an_example(runner):
    from provisioning.cli import main

    for name in main.commands:
        result = invoke(runner, name, "--help")
        assert result.exit_code == 0 and "Example" in result.output, name


def test_the_updater_may_reach_the_lgwan_but_not_the_mail_relay() -> None:
    from provisioning.settings import parse_settings

    settings = parse_settings(base_settings(smtp_host="10.77.0.25", ntp_servers=["10.77.0.123"]))
    agent = render.render_network_dropin(settings).splitlines()[-1]
    updater = render.render_network_dropin(settings, mail=False).splitlines()[-1]
    assert agent == "IPAddressAllow=10.77.0.1 10.77.0.123 10.77.0.25"
    assert updater == "IPAddressAllow=10.77.0.1 10.77.0.123"
    assert render.render_all(settings)[render.UPDATE_NETWORK_DROPIN].text.endswith(updater + "\n")
