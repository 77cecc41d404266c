"""Content-addressed files: batch files and uploaded originals, kept so any delivery can be proved.

A blob's name is its SHA-256, so storing the same bytes twice stores them
once, and a file's integrity is checked by hashing it again.  Files are laid
out as ``root/ab/abcdef…`` (256 sub-folders keep directories small) and
written atomically (temporary file, fsync, rename), so a crash never leaves a
partial blob under a real name.  The HTTP layer serves them with
``send_file(store.path(sha256))``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.atomicwrite import TEMP_MARK, TEMP_PREFIX, fsync_dir, write_bytes

__all__ = ["BlobStore", "BlobWriter"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


class BlobStore:
    """Files named by their SHA-256 under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def put(self, data: bytes, *, sha256: str | None = None) -> str:
        """Store ``data`` (once); return its SHA-256 in lowercase hex.

        ``sha256``: the caller already hashed ``data`` (it must be right: it names the file).
        """
        digest = hashlib.sha256(data).hexdigest() if sha256 is None else sha256
        target = self.path(digest)
        if not target.exists():
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_bytes(target, data, mode=0o640)
        return digest

    def path(self, sha256: str) -> Path:
        """Where the blob with this hash lives (it may not exist).  Raises ValueError for a non-hash."""
        if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a SHA-256 in lowercase hex: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def get(self, sha256: str) -> bytes:
        """The blob's bytes.  Raises FileNotFoundError when absent."""
        return self.path(sha256).read_bytes()


class BlobWriter:
    """Stores many blobs for one caller: each written as it comes, all made durable at the end.

    Close-day writes one file per receiving unit (1,892), each made durable
    with two fsyncs; one after the other, the fsyncs take as long as encoding
    every batch.  Here :meth:`put` hashes the data and writes it to a
    temporary file beside its final name (the page cache: fast), and
    :meth:`wait` then fsyncs every file on a few threads at once (fsync
    releases the GIL, and concurrent fsyncs share the file system's journal
    commits), renames each into place and fsyncs each folder once — the same
    steps, in the same order per file, as :func:`common.atomicwrite.write_bytes`.
    Nothing runs beside the caller while it works, so its own work is not
    slowed by threads competing for the GIL.  Leaving the ``with`` block
    without :meth:`wait` (an exception) removes the temporary files.
    """

    def __init__(self, store: BlobStore, *, threads: int = 8):
        self.store = store
        self.threads = threads
        self._pending: dict[str, Path] = {}  # sha256 -> temporary file

    def put(self, data: bytes) -> str:
        """Write ``data`` unless stored already; return its SHA-256 (durable after :meth:`wait`)."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.store.path(digest)
        if digest in self._pending or target.exists():
            return digest
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(
            prefix=f"{TEMP_PREFIX}{target.name}{TEMP_MARK}", dir=target.parent
        )
        self._pending[digest] = Path(temp)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), 0o640)
        return digest

    def wait(self) -> None:
        """Make every file written so far durable under its final name; raises the first OSError."""
        pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            with ThreadPoolExecutor(self.threads, thread_name_prefix="blob-fsync") as pool:
                list(pool.map(_fsync_path, pending.values()))
        except BaseException:
            self._pending = pending
            raise
        for digest, temp in pending.items():
            os.replace(temp, self.store.path(digest))
        with ThreadPoolExecutor(self.threads, thread_name_prefix="blob-fsync") as pool:
            list(pool.map(fsync_dir, {temp.parent for temp in pending.values()}))

    def discard(self) -> None:
        """Remove the temporary files not yet made durable."""
        pending, self._pending = self._pending, {}
        for temp in pending.values():
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.wait()
        self.discard()


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
