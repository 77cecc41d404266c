"""The appliance image booted, then provisioned as a technician would, checked from the inside.

One boot for the module.  The fixture gives the container two ports — ``eth1``
to an "LGWAN" namespace and ``eth2`` to a staff PC's namespace (veth pairs) —
then runs the image's own ``renkei-provision configure`` with the LAN drop on,
places an ``agent.toml`` and terminal key as ``enroll`` would, and restarts
the firewall, as docs/provisioning.md tells the technician to.

Then, under the real systemd: provisioning's ruleset replaced the shipped one
cleanly (provisioning's own ``check`` says so); ``renkei-agent status`` runs
as its own user inside the unit's sandbox, and the sandbox really needs
``ExecPaths=/opt/renkei`` (a control without it fails); the staff console
runs on a terminal as renkei-agent (the container has no tty1: a drop-in
points ``TTYPath=`` at a pty and leaves out fbterm, which needs a frame
buffer); the LAN drop's sshd serves SFTP to the allowed PC only while the
system's ssh.service stays masked; registering a medium rewrites the
USBGuard allow-list and restarts the daemon, which then lists the new rule.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import statement
from provisioning.render import Enrollment, render_agent_toml
from provisioning.settings import parse_settings
from tests.image.boot import boot_appliance, sftp
from tests.image.nspawn import Container, Pty, listeners, need
from tests.provisioning.conftest import base_settings, flags

pytestmark = [pytest.mark.slow, pytest.mark.image]

APPLIANCE = "10.77.0.2"
LGWAN_PEER = "10.77.0.1"
LAN_ADDRESS = "192.168.77.5"
STAFF_PC = "192.168.77.21"
RUNTIME_UNITS = "/run/systemd/system"


def _settings() -> dict[str, object]:
    return base_settings(
        lan_drop_interface="eth2",
        lan_drop_address=f"{LAN_ADDRESS}/24",
        lan_drop_allow=[f"{STAFF_PC}/32"],
    )


class Provisioned:
    """The booted, provisioned container and the namespaces on its two ports."""

    def __init__(self, container: Container, lgwan: str, lan: str, staff_key: Path):
        self.container = container
        self.lgwan = lgwan
        self.lan = lan
        self.staff_key = staff_key


@pytest.fixture(scope="module")
def provisioned(request, tmp_path_factory) -> Provisioned:  # type: ignore[no-untyped-def]
    need("ssh-keygen", "sftp")
    work = tmp_path_factory.mktemp("provisioned")
    key = work / "staff"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "staff-pc", "-f", str(key)],
        check=True,
    )
    with boot_appliance(request, work, lynis=False) as c:
        lgwan = c.add_veth("eth1", f"{APPLIANCE}/24", f"{LGWAN_PEER}/24")
        lan = c.add_veth("eth2", f"{LAN_ADDRESS}/24", f"{STAFF_PC}/24")
        c.write("/run/renkei-test/staff.pub", key.with_suffix(".pub").read_text())
        data = _settings()
        c.run(
            "renkei-provision", "configure",
            *flags({k: v for k, v in data.items() if not k.startswith("lan_drop")}),
            "--lan-drop-interface", "eth2", "--lan-drop-address", f"{LAN_ADDRESS}/24",
            "--lan-drop-allow", f"{STAFF_PC}/32", "--lan-drop-key", "/run/renkei-test/staff.pub",
        )  # fmt: skip
        # What `enroll` writes once the server has accepted the terminal's key.
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        c.write("/var/lib/renkei/terminal-key.pem", pem, 0o600, "renkei-agent:renkei-agent")
        server_key = statement.public_key_to_text(Ed25519PrivateKey.generate().public_key())
        enrollment = Enrollment(terminal_id="t_0123456789abcdef", server_key=server_key)
        toml = render_agent_toml(parse_settings(base_settings()), enrollment)
        c.write("/etc/renkei/agent.toml", toml, 0o640, "root:renkei-agent")
        c.run("networkctl", "reload")
        c.systemctl("daemon-reload")
        c.systemctl("restart", "nftables.service")
        yield Provisioned(c, lgwan, lan, key)


def _dropin(container: Container, unit: str, name: str, text: str) -> None:
    container.write(f"{RUNTIME_UNITS}/{unit}.d/{name}.conf", text)
    container.systemctl("daemon-reload")


def _remove_dropin(container: Container, unit: str, name: str) -> None:
    container.run("rm", "-f", f"{RUNTIME_UNITS}/{unit}.d/{name}.conf")
    container.systemctl("daemon-reload")


# --- provisioning's firewall replaces the shipped one ------------------------------------------


def test_provisioning_replaced_the_firewall_cleanly(provisioned) -> None:  # type: ignore[no-untyped-def]
    c = provisioned.container
    ruleset = json.loads(c.run("nft", "-j", "list", "ruleset").stdout)["nftables"]
    tables = [(i["table"]["family"], i["table"]["name"]) for i in ruleset if "table" in i]
    assert tables == [("inet", "renkei")], "the shipped table is replaced, not doubled"
    rules = c.run("nft", "list", "chain", "inet", "renkei", "output").stdout
    assert f"ip daddr {LGWAN_PEER} tcp dport 8443 accept" in rules
    done = c.run("renkei-provision", "check", "--json", check=False, timeout=180)
    checks = {item["name"]: item for item in json.loads(done.stdout)}
    assert checks["firewall"]["status"] == "pass", checks["firewall"]
    assert checks["timer"]["status"] == "pass", checks["timer"]


# --- the agent under its unit -----------------------------------------------------------------

STATUS = """\
# Test only: the unit's sandbox, `renkei-agent status --json` instead of `sync`.
[Service]
ExecStart=
ExecStart=/usr/bin/renkei-agent status --json
"""
NO_OPT = """\
# Test only (control): the sandbox as it was before the agent moved to /opt/renkei.
[Service]
ExecPaths=
ExecPaths=/usr
"""


def _start_agent(c: Container) -> dict[str, str]:
    c.systemctl("reset-failed", "renkei-agent.service", check=False)
    c.systemctl("start", "renkei-agent.service", check=False)
    return c.show("renkei-agent.service", "Result", "ExecMainStatus", "ExecMainCode")


def test_agent_status_runs_as_its_own_user_in_the_sandbox(provisioned) -> None:  # type: ignore[no-untyped-def]
    c = provisioned.container
    uid = c.run("id", "-u", "renkei-agent").stdout.strip()
    _dropin(c, "renkei-agent.service", "zz-test-status", STATUS)
    try:
        c.run("journalctl", "--rotate", check=False)
        state = _start_agent(c)
        lines = c.journal(
            "-u", "renkei-agent.service", "-o", "json", "--output-fields=MESSAGE,_UID"
        )
        entries = [json.loads(line) for line in lines.splitlines() if line.startswith("{")]
        printed = "\n".join(str(e.get("MESSAGE", "")) for e in entries if e.get("_UID") == uid)
        assert state["Result"] == "success", f"{state}\n{c.journal('-u', 'renkei-agent.service')}"
        assert '"lasdec": "131016"' in printed, printed
        assert '"terminal_id": "t_0123456789abcdef"' in printed
        # Control: without ExecPaths=/opt/renkei, NoExecPaths=/ stops the agent's own files.
        _dropin(c, "renkei-agent.service", "zz-test-no-opt", NO_OPT)
        refused = _start_agent(c)
        assert refused["Result"] != "success", refused
    finally:
        _remove_dropin(c, "renkei-agent.service", "zz-test-no-opt")
        _remove_dropin(c, "renkei-agent.service", "zz-test-status")
        c.systemctl("reset-failed", "renkei-agent.service", check=False)


def test_agent_sandbox_score_with_the_provisioned_allow_list(provisioned) -> None:  # type: ignore[no-untyped-def]
    c = provisioned.container
    out = c.run("systemd-analyze", "security", "--no-pager", "renkei-agent.service").stdout
    assert "non-localhost" in out, "provisioning's IPAddressAllow= drop-in is loaded"
    score = float(re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)[1])  # type: ignore[index]
    assert score <= 2.0, out


# --- the updater under its unit -----------------------------------------------------------------

UPDATE_PROBE = """\
# Test only: what the updater's sandbox shows it, then its signed ping (no server: exit 1).
[Service]
ExecStart=
ExecStart=/usr/bin/test -r /var/lib/renkei/terminal-key.pem
ExecStart=/usr/bin/test -r /etc/renkei/agent.toml
ExecStart=/usr/bin/test ! -e /var/lib/renkei/queue.sqlite3
ExecStart=/usr/bin/test ! -e /srv/renkei/outbox
ExecStart=/usr/bin/test -w /opt/renkei/releases
ExecStart=/usr/bin/test -w /var/lib/renkei-update
ExecStart=/usr/bin/test ! -w /usr/share/renkei/update-root.json
ExecStart=/usr/bin/renkei-agent update self-test --json
# 1: the ping found no server (expected here); 2 would be an unreadable agent.toml or key.
SuccessExitStatus=1
"""
UPDATE_CONTROL = """\
# Test only (control): the agent's queue must be out of sight; this probe must fail.
[Service]
ExecStart=
ExecStart=/usr/bin/test -e /var/lib/renkei/queue.sqlite3
"""


def _start_update(c: Container) -> dict[str, str]:
    c.systemctl("reset-failed", "renkei-update.service", check=False)
    c.systemctl("start", "renkei-update.service", check=False)
    return c.show("renkei-update.service", "Result", "ExecMainStatus", "ExecMainCode")


def test_the_updater_reads_the_key_and_config_and_sees_nothing_else_of_the_agent(
    provisioned,
) -> None:  # type: ignore[no-untyped-def]
    c = provisioned.container
    c.write("/var/lib/renkei/queue.sqlite3", "the agent's", 0o600, "renkei-agent:renkei-agent")
    _dropin(c, "renkei-update.service", "zz-test-probe", UPDATE_PROBE)
    try:
        state = _start_update(c)
        journal = c.journal("-u", "renkei-update.service")
        assert state["Result"] == "success", f"{state}\n{journal}"
        assert state["ExecMainStatus"] == "1", f"the ping ran and found no server: {state}"
        _dropin(c, "renkei-update.service", "zz-test-probe", UPDATE_CONTROL)
        refused = _start_update(c)
        assert refused["Result"] != "success", refused
    finally:
        _remove_dropin(c, "renkei-update.service", "zz-test-probe")
        c.systemctl("reset-failed", "renkei-update.service", check=False)
        c.run("rm", "-f", "/var/lib/renkei/queue.sqlite3")


# --- the staff console ---------------------------------------------------------------------------


def test_console_runs_on_a_terminal_as_renkei_agent(provisioned) -> None:  # type: ignore[no-untyped-def]
    c = provisioned.container
    assert c.run("test", "-x", "/usr/bin/fbterm", check=False).returncode == 0
    shipped = c.show("renkei-console.service", "Conflicts", "UnitFileState")
    assert "getty@tty1.service" in shipped["Conflicts"] and shipped["UnitFileState"] == "enabled"
    pty = Pty(c, "/run/renkei-test/console.screen")
    try:
        _dropin(
            c,
            "renkei-console.service",
            "zz-test-pty",
            "# Test only: no tty1 and no frame buffer in a container.\n"
            f"[Service]\nTTYPath={pty.path}\nExecStart=\nExecStart=/usr/bin/renkei-agent console\n",
        )
        c.systemctl("start", "renkei-console.service")
        c.wait_for(f"grep -q 'メニュー' {pty.log}", timeout=30)
        state = c.show("renkei-console.service", "ActiveState", "MainPID")
        assert state["ActiveState"] == "active"
        uid = c.run("stat", "-c", "%u", f"/proc/{state['MainPID']}").stdout.strip()
        assert uid == c.run("id", "-u", "renkei-agent").stdout.strip()
        assert "今すぐ送受信" in pty.screen()
        getty = c.show("getty@tty1.service", "ActiveState")["ActiveState"]
        assert getty != "active", "the console took tty1's place"
    finally:
        c.systemctl("stop", "renkei-console.service", check=False)
        _remove_dropin(c, "renkei-console.service", "zz-test-pty")
        pty.close()


# --- the LAN drop ----------------------------------------------------------------------------------


def test_lan_drop_serves_sftp_to_the_allowed_pc_only(provisioned) -> None:  # type: ignore[no-untyped-def]
    c = provisioned.container
    started = c.systemctl("enable", "--now", "renkei-landrop-sshd.service", check=False)
    try:
        assert started.returncode == 0, c.journal("-u", "renkei-landrop-sshd.service")
        c.wait_for("systemctl is-active renkei-landrop-sshd.service | grep -qx active", timeout=60)
        ssh22 = {entry for entry in listeners(c) if entry[2] == 22}
        assert ssh22 == {("tcp", LAN_ADDRESS, 22)}, "port 22 on the LAN address only"
        put = sftp(
            provisioned.lan, provisioned.staff_key, "renkei-lan", LAN_ADDRESS,
            "ls /\nput /etc/hostname from-staff.csv\n",
        )  # fmt: skip
        assert put.returncode == 0, put.stderr
        assert {"/inbox", "/outbox", "/sent", "/rejected"} <= set(put.stdout.split())
        assert c.run("test", "-f", "/srv/renkei/outbox/from-staff.csv", check=False).returncode == 0
        # The same service from the LGWAN side: the firewall drops it.
        blocked = sftp(provisioned.lgwan, provisioned.staff_key, "renkei-lan", APPLIANCE, "ls /\n")
        assert blocked.returncode != 0
        assert c.systemctl("is-enabled", "ssh.service", check=False).stdout.strip() == "masked"
        assert c.systemctl("is-active", "ssh.service", check=False).stdout.strip() != "active"
    finally:
        c.systemctl("disable", "--now", "renkei-landrop-sshd.service", check=False)


# --- registered media --------------------------------------------------------------------------


def _rules(c: Container) -> list[str]:
    out = c.run("usbguard", "list-rules").stdout
    return [re.sub(r"^\d+: ", "", line) for line in out.splitlines()]


def test_registering_a_medium_reloads_usbguard(provisioned) -> None:  # type: ignore[no-untyped-def]
    """No USB device can exist here: the rule, the file and the daemon's restart are proved."""
    c = provisioned.container
    base = _rules(c)
    before = c.show("usbguard.service", "MainPID")["MainPID"]
    c.run(
        "renkei-agent", "media", "register",
        "--vendor", "0781", "--product", "5583", "--serial", "4C530001", "--name", "Cruzer",
    )  # fmt: skip
    try:
        c.wait_for("systemctl is-active usbguard.service | grep -qx active", timeout=30)
        after = c.show("usbguard.service", "MainPID")["MainPID"]
        assert after != before, "usbguard-daemon was restarted to read the new file"
        rules = _rules(c)
        assert rules[0].startswith('allow id 0781:5583 serial "4C530001" name "Cruzer"')
        assert rules[0].endswith("with-interface match-all { 08:*:* }")
        assert rules[1:] == base
        mode = c.run("stat", "-c", "%a", "/etc/usbguard/rules.d/10-renkei-media.conf").stdout
        assert mode.strip() == "600"
        listed = json.loads(c.run("renkei-agent", "media", "list", "--json").stdout)
        assert [m["serial"] for m in listed] == ["4C530001"]
    finally:
        c.run("renkei-agent", "media", "revoke", "--serial", "4C530001", check=False)
    c.wait_for("systemctl is-active usbguard.service | grep -qx active", timeout=30)
    assert _rules(c) == base
