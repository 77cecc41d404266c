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
from .wheels import IMAGE_PYTHON

__all__ = [
    "AGENT_COMMANDS",
    "OPT",
    "UPDATE_ROOT",
    "StepError",
    "check_pip_report",
    "clean_env",
    "compile_argv",
    "install_agent",
    "main",
    "pip_install_argv",
    "release_dir",
    "release_json",
    "venv_argv",
]

OPT = "/opt/renkei"
#: The update repository's trusted root, shipped read-only (docs/updates.md).
UPDATE_ROOT = "/usr/share/renkei/update-root.json"
#: Format of release.json, the first line of every release (the update contract).
RELEASE_FORMAT = 1
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


def release_json(version: str) -> bytes:
    """The release's ``release.json``: what the updater checks before it runs a release."""
    document = {
        "format": RELEASE_FORMAT,
        "version": version,
        "python": IMAGE_PYTHON,
        "prefix": release_dir(version),
    }
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")


# The steps that make a release's venv, shared by the image (in the chroot) and
# `python -m appliance.image release` (on the build host, relocated afterwards).


def venv_argv(release: str) -> list[str]:
    return ["/usr/bin/python3", "-m", "venv", "--without-pip", release]


def pip_install_argv(python: str, wheels: str) -> list[str]:
    """Install exactly install.txt's wheels, offline and hash-checked (pip runs from pip-src)."""
    return [
        python, "-m", "pip", "install", "--no-index", "--no-deps", "--require-hashes",
        "--no-compile", "--no-cache-dir", "--disable-pip-version-check",
        "--no-warn-script-location", "--find-links", wheels, "-r", f"{wheels}/install.txt",
    ]  # fmt: skip


def pip_check_argv(python: str) -> list[str]:
    return [python, "-m", "pip", "check", "--disable-pip-version-check"]


def check_pip_report(output: str) -> str:
    """``pip check``'s output: allowed lines only (see wheels.EXCLUDED), else :class:`StepError`."""
    lines = [line for line in output.splitlines() if line.strip()]
    bad = [line for line in lines if not _ALLOWED_MISSING.search(line) and "No broken" not in line]
    if bad:
        raise StepError("build.agent", "pip check: " + "; ".join(bad))
    return "; ".join(lines) or "ok"


def compile_argv(
    python: str, lib: str, *, strip: str | None = None, prepend: str | None = None
) -> list[str]:
    """Byte code with checked hashes (valid on a read-only tree, independent of file times).

    ``strip``/``prepend``: the folder the byte code names as its source's, when the
    tree was built elsewhere than where it will live (a relocated release).
    """
    argv = [python, "-m", "compileall", "-q", "--invalidation-mode", "checked-hash"]
    if strip is not None and prepend is not None:
        argv += ["-s", strip, "-p", prepend]
    return [*argv, lib]


def clean_env(sde: int, *, pycache: bool = True, **extra: str) -> dict[str, str]:
    """A clean environment for the install commands: nothing of the build host's leaks in.

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
    env = clean_env(sde)
    pip_env = {**env, "PYTHONPATH": f"{STAGE}/pip-src"}
    python = f"{release}/bin/python"
    try:
        say(f"agent: venv {release}")
        chroot(root, venv_argv(release), env=env, code="build.agent")
        say("agent: installing wheels offline (hash-checked)")
        chroot(root, pip_install_argv(python, STAGE), env=pip_env, code="build.agent")
        report = _pip_check(root, python, pip_env)
        say(f"agent: dependencies complete ({report})")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    say("agent: byte-compiling (checked-hash)")
    chroot(
        root,
        compile_argv(python, f"{release}/lib"),
        env=clean_env(sde, pycache=False),
        code="build.agent",
    )
    (root / release.lstrip("/") / "release.json").write_bytes(release_json(version))
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
        ["chroot", str(root), *pip_check_argv(python)], env=env, capture_output=True, text=True
    )
    return check_pip_report(result.stdout)


def install_update_root(root: Path, source: str | None) -> None:
    """Ship the update repository's trusted root, read-only (docs/updates.md, "On the terminal")."""
    if not source:
        return
    target = root / UPDATE_ROOT.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(0o444)
    say(f"update: trusted root {UPDATE_ROOT}")


def run_setup_script(root: Path, script: Path, plan: dict, *, sde: int) -> None:
    target = root / SETUP_SCRIPT.lstrip("/")
    shutil.copyfile(script, target)
    target.chmod(0o700)
    env = clean_env(
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
    install_update_root(root, plan.get("update_root"))
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
    chroot(root, ["/usr/bin/renkei-agent", "--version"], env=clean_env(sde), code="build.agent")
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
