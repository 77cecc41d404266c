"""appliance/image/setup-rootfs.sh, run again on a copy of the built image.

* Idempotent: a second run with the same inputs (the technician's password
  hash and SOURCE_DATE_EPOCH the build used, read back from the image)
  leaves every file, mode, owner and link as the first run left it.
* Careful: it refuses to run in a root that is not renkei's image (no
  renkei ``/etc/nftables.conf``), so it can never lock root or rewrite PAM on
  the machine that builds the image.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.image.boot import REPO, image_root
from tests.image.nspawn import need

pytestmark = [pytest.mark.slow, pytest.mark.image]

SCRIPT = REPO / "appliance/image/setup-rootfs.sh"
#: Backups shadow's tools write next to the file they change (the previous version).
BACKUPS = {"etc/passwd-", "etc/shadow-", "etc/group-", "etc/gshadow-", "etc/subuid-", "etc/subgid-"}


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: type, mode, owner, and content hash or link target."""
    found: dict[str, tuple] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            rel = str(path.relative_to(root))
            if rel in BACKUPS:
                continue
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                detail: str = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                detail = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                detail = ""
            found[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                detail,
            )
    return found


def _inputs(root: Path) -> dict[str, str]:
    """The environment the build gave the script, read back from the image it made."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LC_ALL": "C.UTF-8"}
    for line in (root / "etc/shadow").read_text().splitlines():
        name, password, lastchg, *_ = line.split(":")
        if name == "renkei-tech" and password.startswith("$y$"):
            env["RENKEI_TECHNICIAN_PASSWORD_HASH"] = password
        if name == "renkei-agent" and lastchg:
            env["SOURCE_DATE_EPOCH"] = str(int(lastchg) * 86400)
    return env


def _run(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    with open(SCRIPT, encoding="utf-8") as script:
        return subprocess.run(
            ["chroot", str(root), "/bin/bash", "-s"],
            stdin=script, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip


@pytest.fixture(scope="module")
def copy(request, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    need("chroot", "cp")
    root = image_root(request)
    target = tmp_path_factory.mktemp("setup") / "root"
    subprocess.run(["cp", "-a", "--reflink=auto", str(root), str(target)], check=True)
    return target


def test_a_second_run_changes_nothing(copy) -> None:  # type: ignore[no-untyped-def]
    before = snapshot(copy)
    done = _run(copy, _inputs(copy))
    assert done.returncode == 0, done.stderr
    after = snapshot(copy)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    assert changed == []


def test_it_refuses_a_root_that_is_not_the_image(copy) -> None:  # type: ignore[no-untyped-def]
    (copy / "etc/nftables.conf").write_text("flush ruleset\n")
    shadow = (copy / "etc/shadow").read_bytes()
    done = _run(copy, _inputs(copy))
    assert done.returncode != 0
    assert "not renkei's" in done.stderr
    assert (copy / "etc/shadow").read_bytes() == shadow, "nothing was changed"
