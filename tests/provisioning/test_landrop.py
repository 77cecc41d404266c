"""The LAN drop: settings checked, files rendered, and a real sshd + sftp in network namespaces.

Namespaces: the appliance (``terminal``: eth1 on the LGWAN, eth2 on the LAN),
``lgwan`` (from conftest) and a staff ``lan`` side (an allowed PC and a
disallowed one).  sshd runs the config ``configure`` wrote, with only its
paths and user name swapped for the test's, inside a private mount namespace
whose ``/run`` is a fresh tmpfs (root-owned, as the chroot check demands), so
nothing is left behind.  The SFTP user is created for the test and removed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioning import landrop, render
from provisioning.apply import under
from provisioning.settings import SettingsError, parse_settings
from tests.provisioning.conftest import (
    SERVER_ADDRESS,
    base_settings,
    flags,
    invoke,
    need_root_tools,
    run,
)

LAN_ADDRESS = "192.168.77.10"
STAFF_PC = "192.168.77.20"
OTHER_PC = "192.168.77.21"
SSH_OPTIONS = [
    "-F",
    "/dev/null",
    "-o",
    "ConnectTimeout=3",
    "-o",
    "BatchMode=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "LogLevel=ERROR",
]

PROBE = """
import socket, sys
source, host = sys.argv[1], sys.argv[2]
try:
    s = socket.socket(); s.settimeout(0.5); s.bind((source, 0)); s.connect((host, 22))
    print(s.recv(7).decode())
except OSError as e:
    print('blocked', type(e).__name__)
"""


def _key(tmp_path: Path, name: str) -> tuple[Path, str]:
    path = tmp_path / name
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path))
    return path, path.with_suffix(".pub").read_text().strip()


ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMOLoYmHRFX5ZBg9i44BDS+J9EjyaWydJvBKTHgY7lOb a@pc"


def lan_settings(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "lan_drop_interface": "eth2",
        "lan_drop_address": f"{LAN_ADDRESS}/24",
        "lan_drop_allow": [f"{STAFF_PC}/32"],
        "lan_drop_keys": [ED25519],
    }
    data.update(overrides)
    return base_settings(**data)


# --- settings ---------------------------------------------------------------------------


def test_off_by_default_renders_no_file_and_no_rule():
    settings = parse_settings(base_settings())
    assert settings.lan_drop is None
    files = render.render_all(settings)
    assert not set(files) & {landrop.SSHD_CONFIG, landrop.SYSUSERS, landrop.LAN_DROP_NETWORK}
    assert "dport 22" not in files[render.NFTABLES_CONF].text


def test_on_renders_rule_and_files_and_round_trips():
    settings = parse_settings(
        lan_settings(
            lan_drop_allow=["192.168.77.32/28", "10.9.0.0/16"], lan_drop_gateway="192.168.77.1"
        )
    )
    assert settings.lan_drop is not None
    nft = render.render_nftables(settings)
    assert 'iifname "eth2" ip saddr { 10.9.0.0/16, 192.168.77.32/28 }' in nft
    files = render.render_all(settings)
    assert "ChrootDirectory /srv/renkei-lan" in files[landrop.SSHD_CONFIG].text
    assert "Destination=10.9.0.0/16" in files[landrop.LAN_DROP_NETWORK].text
    assert "Destination=192.168.77.32/28" not in files[landrop.LAN_DROP_NETWORK].text
    keys = files[f"{landrop.CONFIG_DIR}/{landrop.USER}.keys"].text
    assert f'restrict,from="10.9.0.0/16,192.168.77.32/28" {ED25519}\n' in keys
    again = parse_settings(render.settings_to_mapping(settings))
    assert again == settings


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"lan_drop_interface": "eth1"}, "lan_drop_interface"),  # the LGWAN port itself
        ({"lan_drop_interface": "eth 2"}, "lan_drop_interface"),
        ({"lan_drop_address": LAN_ADDRESS}, "lan_drop_address"),  # no prefix
        ({"lan_drop_address": "10.77.0.50/24"}, "lan_drop_address"),  # overlaps the LGWAN
        ({"lan_drop_address": "192.168.77.0/24"}, "lan_drop_address"),  # network address
        ({"lan_drop_allow": []}, "lan_drop_allow"),
        ({"lan_drop_allow": ["0.0.0.0/0"]}, "lan_drop_allow"),
        ({"lan_drop_allow": ["192.168.77.0/24"]}, "lan_drop_allow"),  # contains itself
        ({"lan_drop_allow": ["10.9.0.0/16"]}, "lan_drop_allow"),  # off-link, no gateway
        ({"lan_drop_allow": ["192.168.77.20/24"]}, "lan_drop_allow"),  # host bits set
        ({"lan_drop_gateway": "10.1.1.1"}, "lan_drop_gateway"),
        ({"lan_drop_keys": []}, "lan_drop_keys"),
        ({"lan_drop_keys": ['command="sh" ' + ED25519]}, "lan_drop_keys"),
        ({"lan_drop_keys": [ED25519.replace("AAAAC3", "AAAAB3")]}, "lan_drop_keys"),
        ({"lan_drop_keys": ["ssh-dss AAAAB3NzaC1kc3M="]}, "lan_drop_keys"),
        ({"lan_drop_interface": None}, "lan_drop_address"),  # the rest without the switch
    ],
)
def test_bad_lan_drop_settings_are_refused(overrides, field):
    with pytest.raises(SettingsError) as caught:
        parse_settings(lan_settings(**overrides))
    assert caught.value.field == field


def test_short_rsa_key_is_refused(tmp_path):
    need_root_tools("ssh-keygen")
    path = tmp_path / "rsa"
    run("ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(path))
    with pytest.raises(SettingsError, match="2048 bits"):
        landrop.parse_public_key(path.with_suffix(".pub").read_text())


SSHD_TEST = (
    "mount -t tmpfs -o mode=0755 tmpfs /run && mkdir /run/sshd && exec /usr/sbin/sshd -t -f $1"
)


def _sshd_t(config: Path) -> subprocess.CompletedProcess:
    """``sshd -t`` with its /run/sshd in a private /run (nothing created on the host)."""
    return run("unshare", "-m", "--propagation", "private", "sh", "-c", SSHD_TEST, "sh",
               str(config), check=False)  # fmt: skip


def test_sshd_accepts_the_rendered_config(tmp_path):
    """``sshd -t`` on the very text (paths swapped: sshd -t opens the host key)."""
    need_root_tools("/usr/sbin/sshd", "ssh-keygen", "unshare")
    lan = parse_settings(lan_settings()).lan_drop
    assert lan is not None
    _key(tmp_path, "ssh_host_ed25519_key")
    config = tmp_path / "sshd_config"
    config.write_text(landrop.render_sshd_config(lan, config_dir=str(tmp_path), user="root"))
    result = _sshd_t(config)
    assert result.returncode == 0, result.stderr
    config.write_text(config.read_text().replace("PermitTTY no", "PermitTTY perhaps"))
    assert _sshd_t(config).returncode != 0


# --- a real sshd in namespaces ------------------------------------------------------------

SSHD_SCRIPT = """
set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -m 0755 /run/sshd /run/rk /run/rk/etc /run/rk/root /run/rk/root/inbox /run/rk/root/outbox
install -m 0600 "$1/ssh_host_ed25519_key" /run/rk/etc/ssh_host_ed25519_key
install -m 0644 "$1/sshd_config" /run/rk/etc/sshd_config
install -m 0644 "$1/keys" "/run/rk/etc/$2.keys"
mount --bind "$1/srv/outbox" /run/rk/root/outbox
mount --bind "$1/srv/inbox" /run/rk/root/inbox
mount -o remount,bind,ro /run/rk/root/inbox
exec /usr/sbin/sshd -D -e -f /run/rk/etc/sshd_config
"""


class Drop:
    """The running LAN drop: names, paths and a way to run clients on the staff side."""

    def __init__(self, lgwan, lan_ns: str, user: str, tmp_path: Path, key: Path, other_key: Path):  # type: ignore[no-untyped-def]
        self.lgwan, self.lan_ns, self.user, self.tmp = lgwan, lan_ns, user, tmp_path
        self.key, self.other_key = key, other_key
        self.srv = tmp_path / "srv"

    def client(self, *argv: str, timeout: float = 15) -> subprocess.CompletedProcess:
        return run(
            "ip",
            "netns",
            "exec",
            self.lan_ns,
            *argv,
            check=False,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def sftp(self, batch: str, user: str | None = None, key: Path | None = None):  # type: ignore[no-untyped-def]
        path = self.tmp / f"batch-{secrets.token_hex(3)}"
        path.write_text(batch)
        return self.client(
            "sftp",
            *SSH_OPTIONS,
            "-i",
            str(key or self.key),
            "-b",
            str(path),
            f"{user or self.user}@{LAN_ADDRESS}",
        )

    def ssh(self, *argv: str, user: str | None = None):  # type: ignore[no-untyped-def]
        return self.client(
            "ssh", *SSH_OPTIONS, "-i", str(self.key), *argv, f"{user or self.user}@{LAN_ADDRESS}"
        )


def _wait_for(path: Path, text: str, process: subprocess.Popen, deadline: float = 10) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"sshd did not start:\n{path.read_text(errors='replace')}")


@pytest.fixture
def sftp_user():
    need_root_tools("useradd", "userdel")
    name = f"rkl{secrets.token_hex(4)}"
    run("useradd", "--system", "-M", "-U", "-d", "/", "-s", "/usr/sbin/nologin", "-p", "*", name)
    try:
        yield name
    finally:
        run("userdel", name, check=False)
        run("groupdel", name, check=False)


@pytest.fixture
def drop(lgwan, sftp_user, tmp_path, runner):  # type: ignore[no-untyped-def]
    need_root_tools("/usr/sbin/sshd", "sftp", "ssh", "ssh-keygen", "unshare", "mount", "install")
    key, public = _key(tmp_path, "staff")
    other_key, _ = _key(tmp_path, "stranger")
    _key(tmp_path, "ssh_host_ed25519_key")
    (tmp_path / "keys.pub").write_text(public + "\n")
    root = tmp_path / "root"
    data = lan_settings(lan_drop_keys=None)
    args = [*flags(data), "--lan-drop-key", str(tmp_path / "keys.pub")]
    result = invoke(runner, "configure", "--root", str(root), *args)
    assert result.exit_code == 0, result.output
    # The files configure wrote, with only the paths and the user swapped for the test's.
    config = under(root, landrop.SSHD_CONFIG).read_text()
    assert f"AllowUsers {landrop.USER}@{STAFF_PC}/32" in config
    config = (
        config.replace(landrop.CONFIG_DIR, "/run/rk/etc")
        .replace(landrop.CHROOT, "/run/rk/root")
        .replace(f"{landrop.USER}@", f"{sftp_user}@")
    )
    (tmp_path / "sshd_config").write_text(config)
    shutil.copy(under(root, f"{landrop.CONFIG_DIR}/{landrop.USER}.keys"), tmp_path / "keys")
    # The exchange folders as tmpfiles makes them (the user's group standing in for renkei-staff).
    srv = tmp_path / "srv"
    for name, mode in (("inbox", 0o2750), ("outbox", 0o2770)):
        (srv / name).mkdir(parents=True)
        shutil.chown(srv / name, "root", sftp_user)
        os.chmod(srv / name, mode)
    notice = srv / "inbox" / "ministry-131016-20250401-1.csv"
    notice.write_text("ministry notice\n")
    shutil.chown(notice, "root", sftp_user)
    os.chmod(notice, 0o640)
    # Network: eth2 on the appliance <-> the staff LAN; the LGWAN side routes to the LAN address.
    lan_ns = lgwan.terminal.replace("rkt-", "rkn-")
    run("ip", "netns", "add", lan_ns)
    lgwan.created.append(lan_ns)
    run("ip", "link", "add", "eth2", "netns", lgwan.terminal, "type", "veth",
        "peer", "name", "ln0", "netns", lan_ns)  # fmt: skip
    lgwan.exec_t("ip", "addr", "add", f"{LAN_ADDRESS}/24", "dev", "eth2")
    for address in (STAFF_PC, OTHER_PC):
        run("ip", "-n", lan_ns, "addr", "add", f"{address}/24", "dev", "ln0")
    for ns, dev in ((lgwan.terminal, "eth2"), (lan_ns, "ln0"), (lan_ns, "lo")):
        run("ip", "-n", ns, "link", "set", dev, "up")
    lgwan.exec_l("ip", "route", "add", "192.168.77.0/24", "via", "10.77.0.2")
    log = tmp_path / "sshd.log"
    with log.open("w") as sink:
        sshd = subprocess.Popen(
            ["ip", "netns", "exec", lgwan.terminal, "unshare", "-m", "--propagation", "private",
             "sh", "-c", SSHD_SCRIPT, "sshd", str(tmp_path), sftp_user],
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        _wait_for(log, f"Server listening on {LAN_ADDRESS} port 22", sshd)
        yield Drop(lgwan, lan_ns, sftp_user, tmp_path, key, other_key), root, log
    finally:
        sshd.kill()
        sshd.wait()


def _probe(drop: Drop, ns_exec, source: str) -> str:  # type: ignore[no-untyped-def]
    return ns_exec(sys.executable, "-c", PROBE, source, LAN_ADDRESS, check=False).stdout.strip()


def test_lan_drop_end_to_end(drop):
    drop, root, log = drop
    lgwan = drop.lgwan

    def from_lan(source: str) -> str:
        return run("ip", "netns", "exec", drop.lan_ns, sys.executable, "-c", PROBE, source,
                   LAN_ADDRESS, check=False).stdout.strip()  # fmt: skip

    def from_lgwan() -> str:
        return lgwan.exec_l(sys.executable, "-c", PROBE, SERVER_ADDRESS, LAN_ADDRESS,
                            check=False).stdout.strip()  # fmt: skip

    # Control, before the firewall: every side reaches sshd, so a later drop is nftables'.
    assert from_lgwan() == "SSH-2.0"
    assert from_lan(OTHER_PC) == "SSH-2.0"
    lgwan.exec_t("nft", "-f", str(under(root, render.NFTABLES_CONF)))
    assert from_lgwan() == "blocked TimeoutError"
    assert from_lan(OTHER_PC) == "blocked TimeoutError"
    assert from_lan(STAFF_PC) == "SSH-2.0"

    # Put into outbox (the start folder), get from inbox.
    local = drop.tmp / "municipality-131016-20250401-1.csv"
    local.write_text("municipality notice\n")
    fetched = drop.tmp / "fetched.csv"
    result = drop.sftp(f"put {local}\nget /inbox/ministry-131016-20250401-1.csv {fetched}\nls /\n")
    assert result.returncode == 0, result.stderr + log.read_text()
    assert (drop.srv / "outbox" / local.name).read_text() == "municipality notice\n"
    assert fetched.read_text() == "ministry notice\n"
    assert set(result.stdout.split()) >= {"/inbox", "/outbox"}
    assert "/etc" not in result.stdout

    # Nothing outside the chroot; the inbox is read-only.
    for batch in (
        f"get /etc/passwd {drop.tmp / 'p1'}",
        f"get ../../../etc/passwd {drop.tmp / 'p2'}",
        "cd /etc",
        f"put {local} /inbox/x.csv",
        "rm /inbox/ministry-131016-20250401-1.csv",
    ):
        assert drop.sftp(batch + "\n").returncode != 0, batch
    assert not (drop.tmp / "p1").exists() and not (drop.tmp / "p2").exists()
    assert (drop.srv / "inbox" / "ministry-131016-20250401-1.csv").exists()

    # No shell, no TTY, no forwarding of any kind.
    marker = secrets.token_hex(8)
    result = drop.ssh("echo", marker)
    assert marker not in result.stdout
    result = drop.ssh("-tt", "echo", marker)
    assert marker not in result.stdout
    result = drop.ssh("-W", f"{LAN_ADDRESS}:22")  # a direct-tcpip channel, as -L opens
    assert result.returncode != 0 and "SSH-2.0" not in result.stdout
    result = drop.ssh("-N", "-o", "ExitOnForwardFailure=yes", "-R", "2222:127.0.0.1:22")
    assert result.returncode != 0

    # Another account with the right key, or the right account with another key: refused.
    for user, key in (("root", drop.key), (drop.user, drop.other_key)):
        result = drop.sftp("ls\n", user=user, key=key)
        assert result.returncode != 0
        assert "Permission denied" in result.stderr
