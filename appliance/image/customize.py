"""The customize step, run by mmdebstrap inside its ``--customize-hook`` (``python -m …``).

Why inside the hook and not after mmdebstrap: the hook runs with the chroot's
``/dev``, ``/proc`` and ``/sys`` mounted and a ``policy-rc.d`` that keeps
services from starting, and mmdebstrap's own cleanup (package lists, caches,
``machine-id``) still runs after it.  mmdebstrap passes the chroot as the only
argument; the rest comes from a JSON plan (``RENKEI_IMAGE_PLAN``) written by
``build.py``.

Order: forget the build host → agent venv → overlay → ``setup-rootfs.sh``
(hardening, by its owner) → cleanup.  Each step prints ``I: renkei: …``;
a failure prints ``E: renkei: <code>: <message>`` and exits 1, which
``build.py`` turns into a :class:`BuildError` with that code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .rootfs import cleanup, copy_overlay, forget_build_host

__all__ = ["AGENT_COMMANDS", "OPT", "StepError", "install_agent", "main", "release_dir"]

OPT = "/opt/renkei"
AGENT_COMMANDS = ("renkei-agent", "renkei-provision")
STAGE = "/tmp/renkei-wheels"
PYCACHE = "/tmp/renkei-pycache"
SETUP_SCRIPT = "/tmp/renkei-setup-rootfs.sh"
# Build settings setup-rootfs.sh may read from the build's environment.
PASS_THROUGH = ("RENKEI_TECHNICIAN_PASSWORD_HASH",)
# pip check may report only these as missing (see wheels.EXCLUDED).
_ALLOWED_MISSING = re.compile(r"requires (pip|setuptools|wheel), which is not installed\.$")


class StepError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def say(text: str) -> None:
    print(f"I: renkei: {text}", flush=True)


def release_dir(version: str) -> str:
    return f"{OPT}/releases/{version}"


def _env(sde: int, *, pycache: bool = True, **extra: str) -> dict[str, str]:
    """A clean environment for commands in the chroot: nothing of the build host's leaks in.

    Byte code Python writes while the build runs goes to ``PYCACHE`` (removed
    at the end), never next to the sources: it would carry this build's file
    times.  ``pycache=False`` is for compileall, which writes the real ones.
    """
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LC_ALL": "C.UTF-8",
        "SOURCE_DATE_EPOCH": str(sde),
        "PYTHONHASHSEED": "0",
        "PIP_CONFIG_FILE": "/dev/null",
        **extra,
    }
    if pycache:
        env["PYTHONPYCACHEPREFIX"] = PYCACHE
    return env


def chroot(root: Path, argv: list[str], *, env: dict[str, str], code: str) -> str:
    result = subprocess.run(
        ["chroot", str(root), *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
    )
    output = (result.stdout + result.stderr).rstrip()
    for line in output.splitlines():
        print(f"  {line}", flush=True)
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-8:])
        raise StepError(code, f"{' '.join(argv)} exited with {result.returncode}: {tail}")
    return output


def install_agent(root: Path, plan: dict, *, sde: int) -> None:
    """Install the wheels offline into a venv under /opt/renkei/releases/<version>, then prove it runs.

    The venv has no pip (``--without-pip``); pip runs from Debian's pip wheel,
    unpacked into /tmp for the install and removed with it.  Byte code is compiled with checked hashes,
    so it does not depend on file times and stays valid on a read-only root.
    """
    version = plan["agent_version"]
    release = release_dir(version)
    stage = root / STAGE.lstrip("/")
    if stage.exists():
        shutil.rmtree(stage)
    shutil.copytree(plan["wheels"], stage)
    shutil.copytree(plan["pip_dir"], stage / "pip-src")
    env = _env(sde)
    pip_env = {**env, "PYTHONPATH": f"{STAGE}/pip-src"}
    python = f"{release}/bin/python"
    try:
        say(f"agent: venv {release}")
        chroot(
            root,
            ["/usr/bin/python3", "-m", "venv", "--without-pip", release],
            env=env,
            code="build.agent",
        )
        say("agent: installing wheels offline (hash-checked)")
        chroot(
            root,
            [python, "-m", "pip", "install", "--no-index", "--no-deps",
             "--require-hashes", "--no-compile", "--no-cache-dir", "--disable-pip-version-check",
             "--no-warn-script-location", "--find-links", STAGE, "-r", f"{STAGE}/install.txt"],
            env=pip_env,
            code="build.agent",
        )  # fmt: skip
        report = _pip_check(root, python, pip_env)
        say(f"agent: dependencies complete ({report})")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    say("agent: byte-compiling (checked-hash)")
    chroot(
        root,
        [python, "-m", "compileall", "-q", "--invalidation-mode", "checked-hash", f"{release}/lib"],
        env=_env(sde, pycache=False),
        code="build.agent",
    )
    current = root / OPT.lstrip("/") / "current"
    if current.is_symlink() or current.exists():
        current.unlink()
    current.symlink_to(f"releases/{version}")
    for name in AGENT_COMMANDS:
        link = root / "usr/bin" / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(f"{OPT}/current/bin/{name}")
    say("agent: checking it runs inside the image")
    shown = chroot(root, ["/usr/bin/renkei-agent", "--version"], env=env, code="build.agent")
    if version not in shown.split():
        raise StepError(
            "build.agent",
            f"renkei-agent --version says {shown!r}, but the wheel is {version}: "
            "make appliance/agent/__init__.py __version__ equal setup.cfg's version",
        )
    chroot(root, ["/usr/bin/renkei-provision", "--help"], env=env, code="build.agent")
    chroot(
        root,
        [python, "-c", "import common.juki._scan, smartcard.scard, cryptography.hazmat.primitives"],
        env=env,
        code="build.agent",
    )
    say(f"agent: {shown.strip()} runs from {release}")


def _pip_check(root: Path, python: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        ["chroot", str(root), python, "-m", "pip", "check", "--disable-pip-version-check"],
        env=env,
        capture_output=True,
        text=True,
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    bad = [line for line in lines if not _ALLOWED_MISSING.search(line) and "No broken" not in line]
    if bad:
        raise StepError("build.agent", "pip check: " + "; ".join(bad))
    return "; ".join(lines) or "ok"


def run_setup_script(root: Path, script: Path, plan: dict, *, sde: int) -> None:
    target = root / SETUP_SCRIPT.lstrip("/")
    shutil.copyfile(script, target)
    target.chmod(0o700)
    env = _env(
        sde,
        RENKEI_AGENT_VERSION=plan["agent_version"],
        RENKEI_RELEASE=release_dir(plan["agent_version"]),
        DEBIAN_FRONTEND="noninteractive",
        **{k: os.environ[k] for k in PASS_THROUGH if k in os.environ},
    )
    try:
        chroot(root, ["/bin/bash", SETUP_SCRIPT], env=env, code="build.setup_script")
    finally:
        target.unlink(missing_ok=True)


def run(root: Path, plan: dict) -> None:
    sde = int(plan["source_date_epoch"])
    changed = forget_build_host(root)
    say(f"forgot the build host: {', '.join(changed)}")
    install_agent(root, plan, sde=sde)
    copied = copy_overlay(Path(plan["overlay"]), root)
    say(f"overlay: {len(copied)} files from appliance/rootfs")
    script = plan.get("setup_script")
    if script and Path(script).exists():
        say("running appliance/image/setup-rootfs.sh in the chroot")
        run_setup_script(root, Path(script), plan, sde=sde)
    else:
        print(
            "W: renkei: appliance/image/setup-rootfs.sh does not exist yet: the image has the "
            "overlay but none of its hardening steps",
            flush=True,
        )
    # Once more after the hardening: it must not have broken the agent (modes, links, mounts).
    chroot(root, ["/usr/bin/renkei-agent", "--version"], env=_env(sde), code="build.agent")
    shutil.rmtree(root / PYCACHE.lstrip("/"), ignore_errors=True)
    removed = cleanup(root)
    say(f"cleanup: {len(removed)} build leftovers removed")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or "RENKEI_IMAGE_PLAN" not in os.environ:
        print(
            "usage: RENKEI_IMAGE_PLAN=plan.json python -m appliance.image.customize ROOT",
            file=sys.stderr,
        )
        return 2
    plan = json.loads(Path(os.environ["RENKEI_IMAGE_PLAN"]).read_text(encoding="utf-8"))
    try:
        run(Path(args[0]), plan)
    except StepError as exc:
        print(f"E: renkei: {exc.code}: {exc.message}", flush=True)
        return 1
    except OSError as exc:
        print(f"E: renkei: build.customize: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
