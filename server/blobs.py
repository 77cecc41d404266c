"""Content-addressed files: batch files and uploaded originals, kept so any delivery can be proved.

A blob's name is its SHA-256, so storing the same bytes twice stores them
once, and a file's integrity is checked by hashing it again.  Files are laid
out as ``root/ab/abcdef…`` (256 sub-folders keep directories small) and
written atomically (temporary file, fsync, rename), so a crash never leaves a
partial blob under a real name.  The HTTP layer serves them with
``send_file(store.path(sha256))``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from common.atomicwrite import write_bytes

__all__ = ["BlobStore"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


class BlobStore:
    """Files named by their SHA-256 under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def put(self, data: bytes) -> str:
        """Store ``data`` (once); return its SHA-256 in lowercase hex."""
        digest = hashlib.sha256(data).hexdigest()
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
