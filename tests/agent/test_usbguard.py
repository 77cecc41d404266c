"""The USBGuard allow-list: rules we write are read by usbguard's own parser, and back by ours.

Needs ``usbguard-rule-parser`` (Debian: usbguard); the daemon is not run.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.agent import usbguard as ug
from appliance.agent.cli import main

ROOT = Path(__file__).resolve().parents[2]
BASE_RULES = ROOT / "appliance/rootfs/etc/usbguard/rules.d/90-renkei-base.conf"

MEDIA = [
    ug.Medium("0781", "5583", "4C530001234567890123", "Ultra Fit"),
    ug.Medium("090c", "1000", 'Q"uo\\te', "日本語の名前"),
    ug.Medium("abcd", "ef01", "X1"),
]


def _parser() -> str:
    path = shutil.which("usbguard-rule-parser")
    if path is None:
        pytest.skip("usbguard-rule-parser is not installed (Debian: usbguard)")
    return path


def _parse(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([_parser(), *args], capture_output=True, text=True)


@pytest.mark.parametrize("medium", MEDIA, ids=[m.serial for m in MEDIA])
def test_usbguard_reads_our_rule_and_we_read_its_output(medium):
    rule = ug.rule_for(medium)
    done = _parse(rule)
    assert done.returncode == 0, done.stderr
    output = next(line for line in done.stdout.splitlines() if line.startswith("OUTPUT: "))
    (parsed,) = ug.parse_rules(output.removeprefix("OUTPUT: "))
    assert parsed.key == medium.key and parsed.name == medium.name
    assert parsed.interfaces == ("08:*:*",)


def test_the_allow_list_file_and_the_shipped_base_rules_parse(tmp_path):
    path = tmp_path / "10-renkei-media.conf"
    ug.write_allow_list([*MEDIA, MEDIA[0]], path)
    assert path.stat().st_mode & 0o777 == 0o600
    for rules in (path, BASE_RULES):
        done = _parse("-f", str(rules))
        assert done.returncode == 0, done.stderr
    assert sorted(m.key for m in ug.read_allow_list(path)) == sorted(m.key for m in MEDIA)
    # The base file allows no device by serial, and blocks storage.
    assert ug.parse_rules(BASE_RULES.read_text()) == []
    assert "block with-interface one-of { 08:*:* }" in BASE_RULES.read_text()


@pytest.mark.parametrize("serial", ["", "has space", "\u65e5\u672c"])
def test_a_device_without_a_usable_serial_cannot_be_registered(serial):
    with pytest.raises(ug.UsbguardError) as caught:
        ug.rule_for(ug.Medium("0781", "5583", serial))
    assert caught.value.code == "media.serial"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            '7: block id 0781:5583 serial "4C53000123" name "Ultra Fit" hash "abc=" '
            'parent-hash "def=" via-port "1-1" with-interface 08:06:50 with-connect-type "hotplug"',
            (7, "block", ug.Medium("0781", "5583", "4C53000123", "Ultra Fit", ("08:06:50",))),
        ),
        (
            '2: allow id 046d:c31c serial "" name "Keyboard" with-interface { 03:01:01 03:00:00 }',
            (2, "allow", ug.Medium("046d", "c31c", "", "Keyboard", ("03:01:01", "03:00:00"))),
        ),
    ],
)
def test_device_lines_of_usbguard_list_devices(line, expected):
    assert ug.parse_device_line(line) == expected


def test_bad_rule_text_is_refused():
    with pytest.raises(ug.UsbguardError):
        ug.parse_rules('allow id 0781:5583 serial "unterminated')
    with pytest.raises(ug.UsbguardError):
        ug.parse_rules("permit everything")


def test_register_list_revoke_through_the_cli(tmp_path):
    rules = str(tmp_path / "media.conf")
    runner = CliRunner()
    add = ["media", "register", "--vendor", "0781", "--product", "5583", "--serial", "S1"]
    for args in (add, add, [*add[:-1], "S2"]):
        result = runner.invoke(main, [*args, "--rules-file", rules])
        assert result.exit_code == 0, result.output
    listed = runner.invoke(main, ["media", "list", "--rules-file", rules, "--json"])
    assert [m["serial"] for m in json.loads(listed.output)] == ["S1", "S2"]
    assert _parse("-f", rules).returncode == 0
    result = runner.invoke(main, ["media", "revoke", "--serial", "S1", "--rules-file", rules])
    assert result.exit_code == 0, result.output
    assert [m.serial for m in ug.read_allow_list(Path(rules))] == ["S2"]
    result = runner.invoke(main, ["media", "revoke", "--serial", "S1", "--rules-file", rules])
    assert result.exit_code == 2 and "no registered medium" in result.output


@pytest.mark.parametrize("command", ["register", "list", "revoke", "export", "import", "eject"])
def test_media_commands_refuse_without_root(monkeypatch, tmp_path, command):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    args = ["media", command]
    if command == "revoke":
        args += ["--serial", "S1"]
    if command in ("register", "list", "revoke"):
        args += ["--rules-file", str(tmp_path / "r.conf")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "root" in result.output and not (tmp_path / "r.conf").exists()
