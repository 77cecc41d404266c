"""Booting the built renkei image for a test module, and the tools the boot tests share.

* :func:`boot_appliance` — the built tree (the ``built_image`` fixture of
  tests/image/conftest.py, or ``RENKEI_IMAGE_ROOTFS=/path/to/tree`` to boot a
  tree made elsewhere) booted with :class:`tests.image.nspawn.Container`, and
  waited on until systemd has no job left.
* Test-only additions, all under ``/run`` (nothing in the image changes):
  a drop-in for ``usbguard.service`` that gives the daemon an empty USB device
  list — this machine has no USB bus at all (``/sys/bus/usb`` is absent), and
  a container must never change the authorization of the host's devices
  anyway; lynis (Debian's, from the host), read-only; an output folder.
* :func:`run_lynis` runs lynis inside with Debian's profile plus
  ``lynis-container.prf`` and returns its report; :func:`pty_session` runs a
  program on a fresh pseudo-terminal inside and returns what it printed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.image.nspawn import Container, ContainerError, need, stage_lynis

__all__ = [
    "LYNIS_PROFILE",
    "REPO",
    "boot_appliance",
    "image_root",
    "lynis_findings",
    "pty_session",
    "run_lynis",
    "settle",
]

REPO = Path(__file__).resolve().parents[2]
LYNIS_PROFILE = Path(__file__).with_name("lynis-container.prf")
INSIDE = "/run/renkei-test"

USBGUARD_DROPIN = """\
# Test only (tests/image/boot.py): no USB bus here; the daemon sees an empty one.
[Service]
TemporaryFileSystem=/sys/bus
BindReadOnlyPaths=/run/renkei-test/empty:/sys/bus/usb/devices
"""


def image_root(request: pytest.FixtureRequest) -> Path:
    """The tree to boot: ``$RENKEI_IMAGE_ROOTFS``, else the session's built image."""
    override = os.environ.get("RENKEI_IMAGE_ROOTFS")
    if override:
        root = Path(override)
        if not (root / "usr/lib/os-release").exists() and not (root / "etc/os-release").exists():
            pytest.fail(f"RENKEI_IMAGE_ROOTFS={override} is not a root file system tree")
        return root
    return Path(request.getfixturevalue("built_image").rootfs_dir)


def settle(container: Container, timeout: float = 90.0) -> None:
    """Wait until systemd has no queued job (restart loops included) for two checks in a row."""
    deadline = time.monotonic() + timeout
    quiet = 0
    while quiet < 2:
        jobs = container.systemctl("list-jobs", "--no-legend", "--plain").stdout.strip()
        quiet = quiet + 1 if not jobs else 0
        if time.monotonic() > deadline:
            raise ContainerError(f"systemd still busy after {timeout} s:\n{jobs}")
        time.sleep(0.5)


@contextmanager
def boot_appliance(
    request: pytest.FixtureRequest, workdir: Path, lynis: bool = True
) -> Iterator[Container]:
    """Boot the image once; yield the running container; power it off afterwards."""
    need("systemd-nspawn", "nsenter", "ip")
    root = image_root(request)
    test_dir = workdir / "run-renkei-test"
    (test_dir / "empty").mkdir(parents=True)
    (test_dir / "out").mkdir()
    dropins = workdir / "usbguard.service.d"
    dropins.mkdir()
    (dropins / "renkei-test-no-usb-bus.conf").write_text(USBGUARD_DROPIN, encoding="utf-8")
    binds_ro = {
        test_dir / "empty": f"{INSIDE}/empty",
        dropins: "/run/systemd/system/usbguard.service.d",
    }
    if lynis and shutil.which("lynis"):  # else the lynis test itself fails (run_lynis)
        staged = stage_lynis(workdir / "lynis")
        shutil.copy2(LYNIS_PROFILE, staged / "custom.prf")
        os.chown(staged / "custom.prf", 0, 0)
        binds_ro[staged] = f"{INSIDE}/lynis"
    container = Container(
        root, workdir, binds={test_dir / "out": f"{INSIDE}/out"}, binds_ro=binds_ro
    )
    container.start()
    try:
        settle(container)
        yield container
    finally:
        container.stop()


def run_lynis(container: Container, timeout: float = 600.0) -> dict[str, list[str]]:
    """``lynis audit system`` inside; the report (key → values, ``[]`` keys as lists)."""
    need("lynis")
    out = f"{INSIDE}/out"
    done = container.sh(
        f"cd {INSIDE}/lynis && sh ./lynis audit system --usecwd --quick --no-colors "
        f"--logfile {out}/lynis.log --report-file {out}/lynis-report.dat",
        check=False,
        timeout=timeout,
    )
    report_text = container.run("cat", f"{out}/lynis-report.dat", check=False).stdout
    if "hardening_index=" not in report_text:
        raise ContainerError(
            f"lynis wrote no report:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    report: dict[str, list[str]] = {}
    for line in report_text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            report.setdefault(key.removesuffix("[]"), []).append(value)
    return report


def lynis_findings(report: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(test id, message) of every warning and suggestion, without duplicates."""
    found = []
    for kind in ("warning", "suggestion"):
        for value in report.get(kind, []):
            test_id, _, rest = value.partition("|")
            message = rest.split("|")[0]
            if (test_id, message) not in found:
                found.append((test_id, message))
    return found


_PTY_PROGRAM = r"""
import os, pty, select, signal, sys, time
until, timeout, argv = sys.argv[1].encode(), float(sys.argv[2]), sys.argv[3:]
master, slave = pty.openpty()
name = os.ttyname(slave)
argv = [a.replace("{tty}", name[len("/dev/"):]) for a in argv]
pid = os.fork()
if pid == 0:
    os.close(master)
    os.setsid()
    os.close(slave)
    os.execv(argv[0], argv)
# The slave stays open here: until the program has opened it, reading the master
# would otherwise fail (EIO) and end the session before it began.
out, end = b"", time.time() + timeout
while until not in out and time.time() < end:
    ready, _, _ = select.select([master], [], [], 0.2)
    if ready:
        try:
            out += os.read(master, 65536)
        except OSError:
            time.sleep(0.1)
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
"""


def pty_session(
    container: Container, argv: Sequence[str], until: str, timeout: float = 20.0
) -> str:
    """Run ``argv`` (``{tty}`` → the new terminal's name, e.g. ``pts/3``) on a pseudo-terminal
    inside the container until ``until`` appears on it; return the screen's text."""
    done = container.run(
        "python3", "-c", _PTY_PROGRAM, until, str(timeout), *argv, timeout=timeout + 30
    )
    return done.stdout


def sftp(
    netns: str, key: Path, user: str, host: str, batch: str
) -> subprocess.CompletedProcess[str]:
    """The host's OpenSSH sftp client, run in network namespace ``netns``."""
    return subprocess.run(
        [
            "ip", "netns", "exec", netns, "sftp", "-b", "-",
            "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
            f"{user}@{host}",
        ],
        input=batch, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
