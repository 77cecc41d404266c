"""``SHA256SUMS``: the one file that is signed, listing every artefact's hash.

The format is GNU coreutils' (``<64 hex>  <name>``), sorted by name, so
``sha256sum -c SHA256SUMS`` works on any machine without our code.  Parsing is
strict: a name with a slash could make a verifier read a file outside the
folder, so it is refused, as is a name listed twice.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

from .errors import VerifyError

__all__ = ["SUMS", "SIGNATURE", "file_sha256", "parse_sums", "render_sums"]

SUMS = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.sig"
_LINE = re.compile(r"([0-9a-f]{64}) [ *]([A-Za-z0-9._+-]+)")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def render_sums(entries: Mapping[str, str]) -> bytes:
    """``{name: sha256}`` → the file's bytes (sorted by name, one line each)."""
    for name, digest in entries.items():
        if not _LINE.fullmatch(f"{digest}  {name}"):
            raise ValueError(f"cannot list {name!r} with hash {digest!r}")
    return "".join(f"{entries[name]}  {name}\n" for name in sorted(entries)).encode("ascii")


def parse_sums(data: bytes) -> dict[str, str]:
    """The file's bytes → ``{name: sha256}``; :class:`VerifyError` (``verify.format``) if malformed."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise VerifyError(f"{SUMS} is not ASCII text", code="verify.format") from None
    entries: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = _LINE.fullmatch(line)
        if match is None:
            raise VerifyError(
                f"{SUMS} line {number} is not '<sha256>  <file name>': {line[:80]!r}",
                code="verify.format",
            )
        digest, name = match.groups()
        if name in (".", "..") or name in entries:
            raise VerifyError(
                f"{SUMS} line {number}: {name!r} is listed twice or not a file name",
                code="verify.format",
            )
        entries[name] = digest
    if not entries:
        raise VerifyError(f"{SUMS} lists no file", code="verify.format")
    return entries
