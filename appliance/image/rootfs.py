"""Operations on the image's tree that need no chroot: overlay, forgetting the build host, cleanup.

A root file system built on one machine must carry nothing of that machine
(its resolv.conf, host name, USB devices, SSH host keys) and nothing that
differs from one build to the next (logs, caches, generated IDs, times).
Every such file is listed here with the reason, so a reviewer can see what the
image resets and a test can check it stays reset.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "FORBIDDEN",
    "HOSTNAME",
    "HOSTS",
    "RESOLV_CONF",
    "clamp_mtimes",
    "cleanup",
    "copy_overlay",
    "find_forbidden",
    "forget_build_host",
]

HOSTNAME = "renkei\n"
HOSTS = (
    "127.0.0.1\tlocalhost\n"
    "127.0.1.1\trenkei\n"
    "::1\t\tlocalhost ip6-localhost ip6-loopback\n"
    "ff02::1\t\tip6-allnodes\n"
    "ff02::2\t\tip6-allrouters\n"
)
RESOLV_CONF = "# The LGWAN DNS servers are written here by `renkei-provision configure`.\n"

# Generated at build time, unique per machine or per run: removed (or emptied).
_PER_MACHINE = (
    "etc/ssh/ssh_host_*",  # openssh-server's postinst makes host keys: every appliance would share them
    "var/lib/systemd/random-seed",
    "var/lib/systemd/credential.secret",
    "var/lib/dbus/machine-id",
)
# Different in every build, useless in the image.
_BUILD_LEFTOVERS = (
    "var/cache/fontconfig/*",  # fc-cache stores directory mtimes of this build; rebuilt in memory
    "var/cache/debconf/*-old",
    "var/lib/dpkg/*-old",
    "etc/passwd-",
    "etc/group-",
    "etc/shadow-",
    "etc/gshadow-",
    "etc/subuid-",
    "etc/subgid-",
    "var/lib/sudo/*",
    "root/.bash_history",
    "root/.cache",
)
# No apt in the image: the mirrors it was built from and apt's state have no use.
# Removed after mmdebstrap has finished (its own cleanup still works in these
# folders).  /etc/apt itself stays: the overlay may put settings there.
_APT = (
    "etc/apt/sources.list",
    "etc/apt/sources.list.d/*",
    "var/lib/apt",
    "var/cache/apt",
    "var/log/apt",
)

# What must never be in the image: compilers, package manager state, build-host secrets.
FORBIDDEN = {
    "usr/bin/gcc": "a compiler",
    "usr/bin/cc": "a compiler",
    "usr/bin/c++": "a compiler",
    "usr/bin/make": "a build tool",
    "usr/bin/apt-get": "a package manager (the image is replaced, not upgraded in place)",
    "var/lib/apt/lists": "apt package lists",
    "var/cache/apt/archives": "a package cache",
    "opt/renkei/current/bin/pip": "pip in the agent's venv",
}
_FORBIDDEN_GLOBS = {
    "etc/ssh/ssh_host_*": "an SSH host key made at build time (shared by every appliance)",
    "usr/bin/x86_64-linux-gnu-gcc*": "a compiler",
    "opt/renkei/releases/*/lib/python3*/site-packages/pip": "pip in the agent's venv",
}


def _matches(root: Path, pattern: str) -> Iterator[Path]:
    yield from sorted(root.glob(pattern))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def forget_build_host(root: Path) -> list[str]:
    """Replace what mmdebstrap and postinst scripts took from the build host; return what changed.

    - ``/etc/hostname``, ``/etc/hosts``: the appliance's name, not the builder's.
    - ``/etc/resolv.conf``: empty until provisioning writes the LGWAN servers.
    - ``/etc/usbguard/rules.conf``: usbguard's postinst fills it with the USB
      devices plugged into the *build host*; the appliance's rules live in
      ``rules.d/`` (overlay) and are added by registration.
    - SSH host keys: made by openssh-server's postinst; a shared key would let
      one appliance impersonate all the others.  The LAN drop makes its own.
    """
    changed = []
    for name, text in (
        ("etc/hostname", HOSTNAME),
        ("etc/hosts", HOSTS),
        ("etc/resolv.conf", RESOLV_CONF),
    ):
        path = root / name
        if path.is_symlink() or path.exists():
            path.unlink()
        path.write_text(text, encoding="utf-8")
        path.chmod(0o644)
        changed.append(name)
    rules = root / "etc/usbguard/rules.conf"
    if rules.exists():
        rules.write_bytes(b"")
        rules.chmod(0o600)
        changed.append("etc/usbguard/rules.conf")
    for pattern in _PER_MACHINE:
        for path in _matches(root, pattern):
            _remove(path)
            changed.append(str(path.relative_to(root)))
    return changed


def copy_overlay(overlay: Path, root: Path) -> list[str]:
    """Copy the overlay tree into ``root``: files root-owned, modes kept minus group/other write.

    Existing directories keep their mode and owner (``/etc`` stays ``/etc``);
    new ones get the overlay's.  Git records only the executable bit, so a
    mode that matters beyond 0644/0755 (sudoers' 0440) is also set by
    ``setup-rootfs.sh``; stripping group/other write makes the copy
    independent of the umask of the checkout.
    """
    copied = []
    for folder, dirs, files in os.walk(overlay):
        dirs.sort()
        rel = Path(folder).relative_to(overlay)
        target_dir = root / rel
        if not target_dir.exists():
            target_dir.mkdir(parents=True)
            os.chown(target_dir, 0, 0)
            target_dir.chmod(stat.S_IMODE(os.stat(folder).st_mode) & ~0o022)
        for name in sorted(files):
            src, dst = Path(folder) / name, target_dir / name
            if dst.is_symlink() or dst.exists():
                _remove(dst)
            if src.is_symlink():
                os.symlink(os.readlink(src), dst)
                os.lchown(dst, 0, 0)
            else:
                shutil.copyfile(src, dst)
                os.chown(dst, 0, 0)
                dst.chmod(stat.S_IMODE(os.stat(src).st_mode) & ~0o022)
            copied.append(str(rel / name))
    return copied


def cleanup(root: Path, *, apt: bool = False) -> list[str]:
    """Remove build leftovers and per-machine files; truncate logs. Returns what was removed.

    Log files are emptied, not removed: some (``btmp``, ``wtmp``, ``lastlog``)
    are expected to exist with their owners and modes.  ``apt=True`` (once
    mmdebstrap is done) also removes apt's folders.
    """
    removed = []
    for pattern in (*_PER_MACHINE, *_BUILD_LEFTOVERS, *(_APT if apt else ())):
        for path in _matches(root, pattern):
            _remove(path)
            removed.append(str(path.relative_to(root)))
    for folder, _dirs, files in os.walk(root / "var/log"):
        for name in files:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink() and path.stat().st_size:
                path.write_bytes(b"")
                removed.append(f"{path.relative_to(root)} (emptied)")
    machine_id = root / "etc/machine-id"
    if machine_id.exists():
        machine_id.write_bytes(b"")  # systemd makes a fresh one on each appliance's first boot
    return removed


def find_forbidden(root: Path) -> list[str]:
    """Paths in ``root`` that must not be in the image, each with why (empty when clean)."""
    found = []
    for name, why in FORBIDDEN.items():
        path = root / name
        if path.is_symlink() or path.exists():
            if path.is_dir() and not any(path.iterdir()) and name.startswith("var/"):
                found.append(f"/{name}: {why} (empty)")
            else:
                found.append(f"/{name}: {why}")
    for pattern, why in _FORBIDDEN_GLOBS.items():
        found += [f"/{p.relative_to(root)}: {why}" for p in _matches(root, pattern)]
    bins = root / "usr/bin"
    for name in sorted(os.listdir(bins)) if bins.is_dir() else ():
        if re.fullmatch(r"(gcc|g\+\+|clang|tcc|cc)(-\d+)?", name):
            found.append(f"/usr/bin/{name}: a compiler")
    return sorted(set(found))


def clamp_mtimes(root: Path, epoch: int) -> int:
    """Set every mtime later than ``epoch`` to ``epoch`` (symlinks too); return how many.

    Files from .deb packages keep their packaged times; everything made during
    the build gets ``SOURCE_DATE_EPOCH``, so the tarball and the SquashFS do
    not depend on when the build ran.
    """
    count = 0
    for folder, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = os.path.join(folder, name)
            if os.lstat(path).st_mtime > epoch:
                os.utime(path, (epoch, epoch), follow_symlinks=False)
                count += 1
    if os.lstat(root).st_mtime > epoch:
        os.utime(root, (epoch, epoch), follow_symlinks=False)
        count += 1
    return count
