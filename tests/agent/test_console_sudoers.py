"""The console's sudoers rule: valid for sudo, and it allows the media commands and nothing else."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULE = Path(__file__).resolve().parents[2] / "appliance/rootfs/etc/sudoers.d/renkei-console"


def test_sudo_accepts_the_rule():
    visudo = shutil.which("visudo") or "/usr/sbin/visudo"
    if not Path(visudo).exists():
        pytest.skip("visudo is not installed (Debian: sudo)")
    result = subprocess.run([visudo, "-c", "-f", str(RULE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_the_media_commands_are_allowed():
    lines = [line for line in RULE.read_text().splitlines() if line and not line.startswith("#")]
    assert len(lines) == 1
    user, _, commands = lines[0].partition(" ALL=(root) NOPASSWD: ")
    assert user == "renkei-agent"
    assert [c.strip() for c in commands.split(",")] == [
        f"/usr/bin/renkei-agent media {action}" for action in ("export", "import", "eject")
    ]
