"""The agent timer's drop-in follows business_end, and agent.toml says the same business_end.

``systemd-analyze calendar`` (the parser systemd itself uses) reads the
rendered ``OnCalendar=`` lines: the times must be valid, on weekdays, Japan
time, after business_end, and the retry later than the run.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import tomllib
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from provisioning import render
from provisioning.apply import under
from provisioning.render import Enrollment, render_all, render_schedule, schedule_times
from provisioning.settings import SettingsError, parse_settings
from tests.provisioning.conftest import base_settings, invoke

ROOTFS_TIMER = "appliance/rootfs/etc/systemd/system/renkei-agent.timer"


def calendars(text: str) -> list[str]:
    """The ``OnCalendar=`` values of a timer file or drop-in, in order (empty ones included)."""
    return re.findall(r"^OnCalendar=(.*)$", text, flags=re.MULTILINE)


def analyze(spec: str) -> dict[str, str]:
    """``systemd-analyze calendar SPEC`` as a dict (Normalized form, Next elapse …)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd)")
    result = subprocess.run(
        [tool, "calendar", "--iterations=5", spec], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0, result.stderr
    fields: dict[str, str] = {}
    for line in result.stdout.splitlines():
        name, sep, value = line.strip().partition(": ")
        if sep:
            fields.setdefault(name, value)
    return fields


def minutes(hhmm: str) -> int:
    hour, minute = hhmm.split(":")
    return int(hour) * 60 + int(minute)


def test_the_default_matches_the_shipped_timer():
    shipped = calendars((Path(__file__).parents[2] / ROOTFS_TIMER).read_text())
    dropin = calendars(render_schedule(parse_settings(base_settings())))
    assert dropin[0] == "" and dropin[1:] == shipped


@pytest.mark.parametrize(
    "business_end, run, retry",
    [
        ("17:15", "17:30", "21:00"),  # the shipped times
        ("17:45", "18:00", "21:30"),  # the timer file's example
        ("18:15", "18:30", "21:30"),  # docs/terminal-units.md's example
        ("12:00", "12:15", "15:45"),
        ("20:00", "20:15", "21:45"),  # still 1 h 30 after the run
        ("22:00", "22:15", "23:45"),  # the latest: the retry stays on the same day
    ],
)
def test_schedule_times(business_end, run, retry):
    assert schedule_times(business_end) == (run, retry)


@pytest.mark.parametrize("business_end", ["17:15", "18:15", "20:00", "22:00"])
def test_rendered_calendar_is_valid_and_after_business_end(business_end):
    text = render_schedule(parse_settings(base_settings(business_end=business_end)))
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(text)
    assert parser.sections() == ["Timer"]
    empty, *specs = calendars(text)
    assert empty == "" and len(specs) == 2  # the shipped times cleared first
    times = []
    for spec in specs:
        parsed = analyze(spec)
        normalized = parsed["Normalized form"]
        assert normalized.startswith("Mon..Fri ") and normalized.endswith(" Asia/Tokyo")
        hhmm = normalized.split()[2][:5]
        times.append(hhmm)
        # Every elapse systemd computes is a weekday, at that time.
        elapses = [parsed.get("Next elapse", "")] + [
            v for k, v in parsed.items() if k.startswith("Iteration #")
        ]
        assert all(e.split()[0] in {"Mon", "Tue", "Wed", "Thu", "Fri"} for e in elapses if e)
    run, retry = times
    assert minutes(run) == minutes(business_end) + 15
    assert minutes(retry) - minutes(run) >= 90  # retry.cap 1 h + the 30 min random delay


def test_configure_writes_the_dropin_and_agent_toml_agrees(tmp_path, runner):
    # business_end from a settings file, like every setting can be (the flag is tested below).
    source = tmp_path / "settings.toml"
    source.write_text(render.toml_text(base_settings(business_end="18:15")))
    root = tmp_path / "root"
    result = invoke(runner, "configure", "--root", str(root), "--yes", "--from", str(source))
    assert result.exit_code == 0, result.output
    dropin = under(root, render.SCHEDULE_DROPIN).read_text()
    assert calendars(dropin)[1:] == ["Mon..Fri 18:30 Asia/Tokyo", "Mon..Fri 21:30 Asia/Tokyo"]
    saved = tomllib.loads(under(root, render.PROVISION_TOML).read_text())
    assert saved["business_end"] == "18:15"
    # Once enrolled, agent.toml carries the business_end the timer was made from.
    settings = parse_settings(saved)
    agent = render_all(settings, Enrollment("T-1", "ed25519:x"))[render.AGENT_TOML]
    agent_end = tomllib.loads(agent.text)["business_end"]
    run = calendars(dropin)[1].split()[1]
    assert agent_end == "18:15"
    end = datetime.strptime(agent_end, "%H:%M")
    assert datetime.strptime(run, "%H:%M") - end == timedelta(minutes=15)


def test_business_end_flag_overrides_the_settings_file(tmp_path, runner):
    source = tmp_path / "settings.toml"
    source.write_text(render.toml_text(base_settings()))
    root = tmp_path / "root"
    result = invoke(
        runner,
        "configure",
        "--root",
        str(root),
        "--yes",
        "--from",
        str(source),
        "--business-end",
        "17:45",
    )
    assert result.exit_code == 0, result.output
    dropin = under(root, render.SCHEDULE_DROPIN).read_text()
    assert calendars(dropin)[1] == "Mon..Fri 18:00 Asia/Tokyo"
    assert tomllib.loads(under(root, render.PROVISION_TOML).read_text())["business_end"] == "17:45"


def test_business_end_reaches_the_agent_config_reader(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from appliance.agent.config import load_config
    from common import statement

    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "terminal-key.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_key = statement.public_key_to_text(Ed25519PrivateKey.generate().public_key())
    settings = parse_settings(base_settings(business_end="19:00"))
    text = render.render_agent_toml(settings, Enrollment("T-1", server_key, str(key_file)))
    path = tmp_path / "agent.toml"
    path.write_text(text)
    assert load_config(path).business_end == "19:00"


@pytest.mark.parametrize(
    "value, words",
    [
        ("25:00", "HH:MM"),
        ("17.15", "HH:MM"),
        ("1715", "HH:MM"),
        ("08:30", "outside"),
        ("22:30", "outside"),
        ("", "text"),
    ],
)
def test_bad_business_end_is_refused(value, words):
    with pytest.raises(SettingsError) as caught:
        parse_settings(base_settings(business_end=value))
    assert caught.value.field == "business_end" and words in caught.value.message
