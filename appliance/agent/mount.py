"""The medium's one edge: ``mount``, ``umount`` and ``udevadm`` (see ``media.py``).

Only FAT, exFAT and ext4 are tried, always with nosuid,nodev,noexec,noatime,
the options of the shipped ``media-renkei.mount``; a medium found mounted
without nosuid, nodev or noexec is refused rather than used.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .media import (
    DEVICE_LINK,
    MOUNT_OPTIONS,
    MOUNT_POINT,
    MOUNT_TYPES,
    DeviceId,
    MediaError,
    missing_options,
)

__all__ = ["Mounted", "Mounter", "find_mount"]


@dataclass(frozen=True)
class Mounted:
    source: str
    where: Path
    fstype: str
    options: tuple[str, ...]


def _unescape(field_text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field_text)


def find_mount(where: Path, mountinfo: str | None = None) -> Mounted | None:
    """The mount at ``where`` from /proc/self/mountinfo (the last, i.e. topmost), or None."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    found = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        parts, rest = left.split(), right.split()
        if len(parts) < 6 or len(rest) < 3:
            continue
        if Path(_unescape(parts[4])) == Path(where):
            options = tuple(parts[5].split(",")) + tuple(rest[2].split(","))
            found = Mounted(_unescape(rest[1]), Path(where), rest[0], options)
    return found


class Mounter:
    """Runs mount, umount and udevadm; everything else in this module is plain file access."""

    def __init__(self, *, mountinfo: Callable[[], str] | None = None):
        self._mountinfo = mountinfo

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    def current(self, where: Path) -> Mounted | None:
        return find_mount(where, self._mountinfo() if self._mountinfo else None)

    def attach(self, device: Path = DEVICE_LINK, where: Path = MOUNT_POINT) -> Mounted:
        """The medium mounted at ``where`` with nosuid,nodev,noexec: found, or mounted now.

        Raises MediaError ``media.absent``, ``media.mount`` or ``media.options``.
        """
        mounted = self.current(where)
        if mounted is None:
            if not os.path.exists(device):
                raise MediaError(
                    f"{device}: no registered medium is plugged in",
                    code="media.absent",
                    message_ja="登録済みの媒体が差し込まれていません（未登録の媒体は使えません）。",
                )
            where.mkdir(parents=True, exist_ok=True)
            done = self._run(
                ["mount", "-t", ",".join(MOUNT_TYPES), "-o", ",".join(MOUNT_OPTIONS)]
                + [str(device), str(where)]
            )
            mounted = self.current(where)
            if done.returncode != 0 or mounted is None:
                raise MediaError(
                    f"{device}: cannot be mounted ({(done.stderr or done.stdout).strip()}); "
                    "the file system is broken or not FAT/exFAT/ext4 — format it again on a PC",
                    code="media.mount",
                    message_ja="媒体を読み取れません。ファイルシステムが壊れているか、"
                    "対応していない形式です（FAT/exFAT で初期化し直してください）。",
                )
        lacking = missing_options(mounted.options)
        if lacking:
            raise MediaError(
                f"{where} is mounted without {','.join(lacking)}; refusing to use it",
                code="media.options",
                message_ja="媒体が安全でない設定で接続されています。ヘルプデスクへ連絡してください。",
            )
        return mounted

    def eject(self, where: Path = MOUNT_POINT) -> bool:
        """Sync and unmount; False when nothing was mounted there.  Raises MediaError."""
        os.sync()
        if self.current(where) is None:
            return False
        done = self._run(["umount", str(where)])
        if done.returncode != 0:
            raise MediaError(
                f"{where}: cannot unmount ({done.stderr.strip()}); close files open on it",
                code="media.io",
                message_ja="媒体を取り外せる状態にできません。開いているファイルを閉じてください。",
            )
        return True

    def identify(self, device: str) -> DeviceId:
        """USB vendor, product and serial of ``device`` from udev (empty where udev has none)."""
        udevadm = shutil.which("udevadm")
        props: dict[str, str] = {}
        if udevadm:
            done = self._run([udevadm, "info", "--query=property", f"--name={device}"])
            if done.returncode == 0:
                for line in done.stdout.splitlines():
                    key, _, value = line.partition("=")
                    props[key] = value
        return DeviceId(
            props.get("ID_VENDOR_ID", ""),
            props.get("ID_MODEL_ID", ""),
            props.get("ID_SERIAL_SHORT", ""),
            os.path.realpath(device),
        )
