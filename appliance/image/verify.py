"""Verifying a built image: the signature over ``SHA256SUMS``, then every listed file's hash.

Order matters: the list of hashes is trusted only once its signature holds,
so a wrong key or an edited ``SHA256SUMS`` stops verification before any file
is looked at.  Then every file is checked (not just the first bad one), so the
message names everything that was altered, missing or damaged.  Files in the
folder that the list does not name are reported too: nothing vouches for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .checksums import SIGNATURE, SUMS, file_sha256, parse_sums
from .errors import VerifyError
from .signing import fingerprint, signature_valid

__all__ = ["Verified", "verify_dist"]


@dataclass(frozen=True)
class Verified:
    """A folder whose signature and hashes all hold."""

    dist: Path
    key: str
    files: dict[str, str]
    unlisted: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "ok": True,
            "dist": str(self.dist),
            "key": self.key,
            "files": self.files,
            "unlisted": self.unlisted,
        }


def verify_dist(dist: Path, public: Ed25519PublicKey) -> Verified:
    """Check ``dist``; return what was verified or raise :class:`VerifyError` saying what failed."""
    key = fingerprint(public)
    if not dist.is_dir():
        raise VerifyError(f"{dist} is not a folder", code="verify.missing")
    try:
        sums = (dist / SUMS).read_bytes()
        signature = (dist / SIGNATURE).read_bytes()
    except FileNotFoundError as exc:
        raise VerifyError(
            f"{Path(exc.filename).name} is missing from {dist}: cannot verify anything",
            code="verify.missing",
        ) from None
    if len(signature) != 64 or not signature_valid(public, sums, signature):
        raise VerifyError(
            f"the signature {SIGNATURE} does not match {SUMS} for key {key}: the list was "
            "altered, or the image was signed with another key — do not use these files",
            code="verify.signature",
        )
    listed = parse_sums(sums)
    problems = []
    for name, expected in sorted(listed.items()):
        path = dist / name
        if not path.is_file() or path.is_symlink():
            problems.append(f"{name}: missing")
        elif file_sha256(path) != expected:
            problems.append(f"{name}: SHA-256 differs from {SUMS} (altered or damaged)")
    if problems:
        raise VerifyError(
            "refused, do not use these files: " + "; ".join(problems),
            code="verify.hash" if all("differs" in p for p in problems) else "verify.missing",
        )
    unlisted = sorted(
        p.name for p in dist.iterdir() if p.name not in listed and p.name not in (SUMS, SIGNATURE)
    )
    return Verified(dist, key, listed, unlisted)
