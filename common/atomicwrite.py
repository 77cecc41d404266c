"""Atomic file replacement: a reader sees the old file or the whole new one, never a part.

Write to a temporary name in the same folder, fsync the file, rename over the
target, fsync the folder.  If power fails at any line, the target is either
untouched or complete; a leftover temporary (``.NAME.tmp-*``) is never taken
for a finished file by anything in this project.

This is the one place in ``common`` that touches the file system: the server,
the agent and the CLIs all write their outputs through it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = "."
TEMP_MARK = ".tmp-"


def is_temporary(name: str) -> bool:
    """True for the names :func:`atomic_write` uses while a file is being written."""
    return name.startswith(TEMP_PREFIX) and TEMP_MARK in name


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike[str], *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file; on a clean exit it replaces ``target`` atomically.

    On an exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    folder = target.parent
    fd, temp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{target.name}{TEMP_MARK}", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(folder)


def write_bytes(target: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    with atomic_write(target, mode=mode) as handle:
        handle.write(data)
