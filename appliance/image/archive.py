"""The two forms of the root file system: a zstd tarball and a SquashFS, both byte-reproducible.

Tarball: GNU tar in POSIX format, entries sorted by name, numeric owners only,
no atime/ctime and no process id in the extended headers (tar's default
``PaxHeaders.<pid>`` name differs on every run), and only the
``security.capability`` xattr.  zstd with a fixed level and a fixed number of
workers (its output depends on both, not on the machine's cores).

SquashFS: mksquashfs is reproducible by default since 4.4 (entries sorted,
output independent of ``-processors``); the file system's own time is set to
``SOURCE_DATE_EPOCH`` with ``-mkfs-time``.  mksquashfs would also read
``SOURCE_DATE_EPOCH`` from the environment and then force *every* file's
time to it, which would make the two artefacts disagree; it is removed from
its environment.

Levels were measured on a 2-core machine: zstd -9 on the tar (~15 s) and
zstd 6 in SquashFS's 1 MiB blocks; higher levels cost minutes for a few
percent.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .buildlog import BuildLog, CommandFailed

__all__ = ["TAR_ZSTD_LEVEL", "write_squashfs", "write_tarball"]

TAR_ZSTD_LEVEL = 9
TAR_ZSTD_WORKERS = 2
SQUASHFS_ZSTD_LEVEL = 6
SQUASHFS_BLOCK = "1M"


def tar_argv(root: Path) -> list[str]:
    return [
        "tar",
        "--create",
        "--file=-",
        f"--directory={root}",
        "--sort=name",
        "--format=posix",
        "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
        "--numeric-owner",
        "--xattrs",
        "--xattrs-include=security.capability",
        "--one-file-system",
        ".",
    ]


def write_tarball(root: Path, out: Path, log: BuildLog) -> None:
    """``root`` → ``out`` (``.tar.zst``); raises :class:`CommandFailed` naming tar or zstd."""
    tar_cmd = tar_argv(root)
    zstd_cmd = [
        "zstd",
        "--quiet",
        "--no-progress",
        f"-{TAR_ZSTD_LEVEL}",
        f"-T{TAR_ZSTD_WORKERS}",
        "-o",
        str(out),
    ]
    log.write(f"$ {' '.join(tar_cmd)} | {' '.join(zstd_cmd)}")
    with subprocess.Popen(tar_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as tar:
        assert tar.stdout is not None
        zstd = subprocess.run(zstd_cmd, stdin=tar.stdout, capture_output=True, text=True)
        tar.stdout.close()
        tar_err = tar.stderr.read().decode(errors="replace") if tar.stderr else ""
    if tar.returncode != 0:
        raise CommandFailed(tar_cmd, tar.returncode, tar_err)
    if zstd.returncode != 0:
        raise CommandFailed(zstd_cmd, zstd.returncode, zstd.stdout + zstd.stderr)
    if tar_err.strip():
        log.write(tar_err)


def squashfs_argv(root: Path, out: Path, epoch: int) -> list[str]:
    return [
        "mksquashfs",
        str(root),
        str(out),
        "-noappend",
        "-reproducible",
        "-comp",
        "zstd",
        "-Xcompression-level",
        str(SQUASHFS_ZSTD_LEVEL),
        "-b",
        SQUASHFS_BLOCK,
        "-mkfs-time",
        str(epoch),
        "-no-progress",
        "-quiet",
        "-exit-on-error",
    ]


def write_squashfs(root: Path, out: Path, epoch: int, log: BuildLog) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    log.run(squashfs_argv(root, out, epoch), env=env)
