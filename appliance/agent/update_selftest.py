"""The new release proves itself before it becomes current: its own code, its own interpreter.

Two commands of the new release (``<release>/bin/python <release>/bin/renkei-agent``,
exactly what its ``#!`` line would run): ``status --json`` must name this
terminal (it imported, read agent.toml, ran its checks), and ``update
self-test --json`` must report the new version and that the server saw that
version in its signed ping (the key, the CA, the DNS, the clock and the
signature all work in the new code).  They run with no ``PYTHONPATH`` and
from ``/``, so nothing of the running release leaks into the test.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import AgentConfig
from .install import Releases

__all__ = ["CHILD_ENV_DROP", "run_self_test", "version_through"]

#: Variables the new release never inherits (the crash hooks are the running run's).
CHILD_ENV_DROP = frozenset(
    {"PYTHONPATH", "PYTHONHOME", "RENKEI_UPDATE_CRASH_AT", "RENKEI_AGENT_CRASH_AT"}
)


def _child_env(config_path: Path) -> dict[str, str]:
    """The new release runs with its own code only: no PYTHONPATH, no crash hooks."""
    env = {k: v for k, v in os.environ.items() if k not in CHILD_ENV_DROP}
    env["RENKEI_AGENT_CONFIG"] = str(config_path)
    return env


def _run_step(
    argv: list[str], *, env: Mapping[str, str], timeout: float
) -> tuple[dict[str, Any], Any]:
    step: dict[str, Any] = {"command": " ".join(argv[1:]), "ok": False}
    try:
        result = subprocess.run(
            argv,
            env=dict(env),
            cwd="/",  # nothing of the caller's working folder on the new code's path
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        step["error"] = f"no answer within {timeout:g} s"
        return step, None
    except OSError as exc:
        step["error"] = f"cannot be started: {exc.strerror or exc}"
        return step, None
    step["exit_code"] = result.returncode
    if result.returncode != 0:
        step["error"] = (result.stderr or result.stdout).strip()[-2000:] or "no output"
        return step, None
    try:
        return step, json.loads(result.stdout)
    except ValueError:
        step["error"] = "its output is not JSON"
        return step, None


def run_self_test(
    release: Path, version: str, config: AgentConfig, config_path: Path
) -> tuple[bool, list[dict[str, Any]]]:
    """Run the release's ``status --json`` and ``update self-test --json``; all must hold."""
    env = _child_env(config_path)
    timeout = config.update.self_test_timeout
    steps = []
    step, status = _run_step(
        Releases.command(release, "status", "--json", "--config", str(config_path)),
        env=env,
        timeout=timeout,
    )
    if status is not None:
        if not isinstance(status, dict) or status.get("terminal_id") != config.terminal_id:
            step["error"] = "its status does not name this terminal"
        else:
            step["ok"] = True
    steps.append(step)
    step, ping = _run_step(
        Releases.command(release, "update", "self-test", "--json", "--config", str(config_path)),
        env=env,
        timeout=timeout,
    )
    if ping is not None:
        answer = ping.get("answer") if isinstance(ping, dict) else None
        seen = answer.get("agent_version") if isinstance(answer, dict) else None
        said = ping.get("version") if isinstance(ping, dict) else None
        if said != version:
            step["error"] = f"the new code says it is {said!r}, not {version!r}"
        elif seen != f"renkei-agent/{version}":
            step["error"] = f"the server saw {seen!r}, not renkei-agent/{version}"
        else:
            step["ok"] = True
            step["answer"] = answer
    steps.append(step)
    return all(s["ok"] for s in steps), steps


def version_through(releases: Releases, timeout: float) -> str | None:
    """What ``current``'s ``renkei-agent --version`` says (the path /usr/bin/renkei-agent takes)."""
    try:
        result = subprocess.run(
            Releases.command(releases.current, "--version"),
            env=_child_env(Path(os.devnull)),
            cwd="/",
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    words = result.stdout.split()
    return words[-1] if result.returncode == 0 and words else None
