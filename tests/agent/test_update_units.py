"""The update's systemd units, user and folders, checked with systemd's own tools as files.

* ``systemd-analyze verify`` on renkei-update.service and .timer in a scratch
  root (systemd's stock units, ours, a stub ``/usr/bin/renkei-agent``).
* ``systemd-analyze security --offline=true``: the update service is exposed
  no more than the agent's own service, also with provisioning's address
  drop-in.
* ``systemd-sysusers --root`` builds the users: renkei-update exists, is in
  none of the agent's groups, and adding it left the other users' ids alone.
* ``systemd-tmpfiles --root --create``: /opt/renkei belongs to renkei-update.

The sandbox itself (credentials bound where agent.toml names them, the
agent's state hidden) is checked in the booted image
(tests/image/test_boot_provisioned.py).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTFS = REPO / "appliance" / "rootfs"
UNITS = ROOTFS / "etc/systemd/system"
SERVICE = UNITS / "renkei-update.service"
TIMER = UNITS / "renkei-update.timer"
AGENT_SERVICE = UNITS / "renkei-agent.service"
AGENT_TIMER = UNITS / "renkei-agent.timer"
SYSUSERS = ROOTFS / "usr/lib/sysusers.d/renkei.conf"
TMPFILES = ROOTFS / "usr/lib/tmpfiles.d/renkei-update.conf"
PRESET = ROOTFS / "usr/lib/systemd/system-preset/10-renkei.preset"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: systemd)")
    return path


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60)


def settings(path: Path) -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        found.setdefault((section, key.strip()), []).append(value.strip())
    return found


# --- verify --------------------------------------------------------------------------------------


def _scratch(tmp_path: Path, service: str) -> Path:
    root = tmp_path / "root"
    stock = next(
        (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
        None,
    )
    if stock is None:
        pytest.skip("systemd's unit folder is missing")
    shutil.copytree(stock, root / "usr/lib/systemd/system", symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / SERVICE.name).write_text(service, encoding="utf-8")
    shutil.copy(TIMER, units / TIMER.name)
    stub = root / "usr/bin/renkei-agent"
    stub.parent.mkdir(parents=True, exist_ok=True)
    stub.write_text("#!/bin/sh\n", encoding="utf-8")
    stub.chmod(0o755)
    return root


def _verify(tmp_path: Path, service: str) -> subprocess.CompletedProcess[str]:
    root = _scratch(tmp_path, service)
    return run(
        tool("systemd-analyze"), "verify", "--man=no", f"--root={root}", SERVICE.name, TIMER.name
    )


def test_the_update_units_verify_cleanly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = _verify(tmp_path, SERVICE.read_text("utf-8"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_verify_notices_a_broken_update_unit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    service = SERVICE.read_text("utf-8").replace("ProtectSystem=strict", "ProtectSytem=strict")
    result = _verify(tmp_path, service)
    assert result.returncode != 0 or result.stderr.strip()


# --- exposure ------------------------------------------------------------------------------------

_OVERALL = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)")


def exposure(unit: Path) -> float:
    result = run(tool("systemd-analyze"), "security", "--offline=true", "--no-pager", unit)
    match = _OVERALL.search(result.stdout)
    assert match, result.stdout + result.stderr
    return float(match[1])


def _with_drop_in(tmp_path: Path, unit: Path) -> Path:
    folder = tmp_path / unit.stem
    folder.mkdir()
    copy = folder / unit.name
    shutil.copy(unit, copy)
    drop_in = folder / f"{unit.name}.d"
    drop_in.mkdir()
    (drop_in / "network.conf").write_text(
        "[Service]\nIPAddressAllow=10.1.2.3 10.1.2.4 10.1.2.5\n", encoding="utf-8"
    )
    return copy


def test_the_update_service_is_exposed_no_more_than_the_agent(tmp_path) -> None:  # type: ignore[no-untyped-def]
    update, agent = exposure(SERVICE), exposure(AGENT_SERVICE)
    print(f"\nexposure: renkei-update.service {update}, renkei-agent.service {agent}")
    assert update <= agent
    provisioned = exposure(_with_drop_in(tmp_path, SERVICE))
    assert provisioned <= exposure(_with_drop_in(tmp_path, AGENT_SERVICE))


# --- what the units say --------------------------------------------------------------------------


def test_the_update_runs_as_its_own_user_writing_only_releases_and_its_state() -> None:
    service = settings(SERVICE)
    assert service[("Service", "ExecStart")] == ["/usr/bin/renkei-agent update"]
    assert service[("Service", "User")] == ["renkei-update"]
    assert service[("Service", "ReadWritePaths")] == ["/opt/renkei"]
    assert service[("Service", "StateDirectory")] == ["renkei-update"]
    assert service[("Service", "ProtectSystem")] == ["strict"]
    # The agent's key and configuration reach it only as systemd's private copies.
    assert service[("Service", "LoadCredential")] == [
        "agent.toml:/etc/renkei/agent.toml",
        "terminal-key.pem:/var/lib/renkei/terminal-key.pem",
    ]
    hidden = " ".join(service[("Service", "TemporaryFileSystem")]).split()
    assert {"/var/lib/renkei:ro", "/srv:ro"} <= set(hidden)
    # The agent's own service cannot write the releases.
    agent = settings(AGENT_SERVICE)
    writable = " ".join(agent[("Service", "ReadWritePaths")]).split()
    assert not any(path == "/opt" or path.startswith("/opt/") for path in writable)


def _hour(calendar: str) -> float:
    hours, minutes = re.search(r"(\d{1,2}):(\d{2})", calendar).groups()  # type: ignore[union-attr]
    return int(hours) + int(minutes) / 60


def _span_hours(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)\s*(h|min)", value).groups()  # type: ignore[union-attr]
    return int(number) / (60 if unit == "min" else 1)


def test_the_timer_runs_daily_randomised_not_at_boot_and_before_the_evening_exchange() -> None:
    timer = settings(TIMER)
    (calendar,) = timer[("Timer", "OnCalendar")]
    assert calendar.startswith("*-*-* ") and calendar.endswith("Asia/Tokyo"), "every day, JST"
    assert _span_hours(timer[("Timer", "RandomizedDelaySec")][0]) >= 1
    assert timer[("Timer", "Persistent")] == ["false"]
    assert not any(key.startswith("OnBoot") or key == "OnStartupSec" for _, key in timer)
    latest = _hour(calendar) + _span_hours(timer[("Timer", "RandomizedDelaySec")][0])
    earliest_exchange = min(_hour(c) for c in settings(AGENT_TIMER)[("Timer", "OnCalendar")])
    assert latest <= earliest_exchange, "the evening run already finds the new release"
    assert timer[("Install", "WantedBy")] == ["timers.target"]
    assert "enable renkei-update.timer" in PRESET.read_text(encoding="utf-8").splitlines()


# --- users and folders ---------------------------------------------------------------------------


def _entries(path: Path) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines() if line}


def _sysusers(root: Path, text: str) -> tuple[dict, dict]:
    (root / "etc").mkdir(parents=True)
    conf = root / "renkei.conf"
    conf.write_text(text, encoding="utf-8")
    result = run(tool("systemd-sysusers"), f"--root={root}", conf)
    assert result.returncode == 0, result.stderr
    return _entries(root / "etc/passwd"), _entries(root / "etc/group")


def test_the_updater_user_is_in_no_group_of_the_agent_and_moves_no_other_id(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = SYSUSERS.read_text(encoding="utf-8")
    users, groups = _sysusers(tmp_path / "with", text)
    without = "\n".join(line for line in text.splitlines() if "renkei-update" not in line)
    users_before, groups_before = _sysusers(tmp_path / "without", without)
    _, _, uid, gid, _, home, shell = users["renkei-update"]
    assert int(uid) < 1000 and shell == "/usr/sbin/nologin"
    assert home == "/var/lib/renkei-update"
    assert groups["renkei-update"][2] == gid
    for group in ("renkei-agent", "renkei-staff"):
        assert "renkei-update" not in groups[group][3].split(",")
    for name in users_before:
        assert users[name][2:4] == users_before[name][2:4], f"{name}'s ids moved"
    for name in groups_before:
        assert groups[name][2] == groups_before[name][2], f"group {name}'s id moved"


def test_tmpfiles_gives_the_releases_to_the_updater(tmp_path) -> None:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles --create chowns: needs root")
    root = tmp_path / "root"
    users, groups = _sysusers(root, SYSUSERS.read_text(encoding="utf-8"))
    result = run(tool("systemd-tmpfiles"), f"--root={root}", "--create", TMPFILES)
    assert result.returncode == 0, result.stderr
    uid, gid = int(users["renkei-update"][2]), int(groups["renkei-update"][2])
    for path in ("opt/renkei", "opt/renkei/releases"):
        st = (root / path).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o755), path
    lines = [line.split() for line in TMPFILES.read_text().splitlines() if line[:1] not in "#"]
    assert all(fields[-1] == "-" for fields in lines if fields), "never cleaned automatically"
