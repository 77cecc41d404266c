"""A release bundle of the terminal agent, read before it is published as a TUF target.

``make release`` builds ``renkei-agent-<version>.tar.gz``: a ``release.json``
(``{"format": 1, "version", "python", "prefix"}``) and the agent's complete
virtual environment for that prefix, every member under ``release/``.  The
terminal verifies the bundle with TUF and then refuses anything but regular
files, directories and symlinks inside the tree; the server checks the same
shape *before* signing, so that an operator who picked the wrong file hears
it at the desk, not from 1,900 terminals that each refuse it.

Versions are PEP 440 (``packaging.version``) and must be written in their
canonical form (``0.2.0rc1``, not ``v0.2.0`` or ``0.2.0-rc1``): the version is part
of the target name, and "never publish a downgrade" compares them.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from .errors import ServerError

__all__ = [
    "BUNDLE_FORMAT",
    "PREFIX_ROOT",
    "TARGET_NAME",
    "BundleError",
    "Release",
    "parse_version",
    "read_release",
    "target_name",
]

BUNDLE_FORMAT = 1
#: Where a release is installed on the terminal: ``/opt/renkei/releases/<version>``.
PREFIX_ROOT = "/opt/renkei/releases"
TOP = "release"
#: A target's name as published and served: ``renkei-agent-<version>.tar.gz`` (no folders).
TARGET_NAME = re.compile(r"renkei-agent-([0-9A-Za-z.+-]{1,40})\.tar\.gz")
#: release.json is a few lines; anything larger is not one.
MAX_RELEASE_JSON = 64 * 1024
_BLOCK = 1024 * 1024


class BundleError(ServerError):
    """The file is not a release bundle the terminals would install (``bundle.*``)."""

    code = "bundle.invalid"


@dataclass(frozen=True)
class Release:
    """What the repository needs to know about a bundle: its version and its bytes' identity."""

    version: str
    python: str
    prefix: str
    length: int
    sha256: str

    @property
    def target_name(self) -> str:
        return target_name(self.version)

    def to_json(self) -> dict[str, object]:
        return {
            "version": self.version,
            "target": self.target_name,
            "python": self.python,
            "prefix": self.prefix,
            "length": self.length,
            "sha256": self.sha256,
        }


def target_name(version: str) -> str:
    return f"renkei-agent-{version}.tar.gz"


def parse_version(text: object, *, where: str = "version") -> Version:
    """A PEP 440 version in canonical form; :class:`BundleError` ``bundle.version`` otherwise."""
    if not isinstance(text, str):
        raise BundleError(f"{where} must be a string, got {text!r}", code="bundle.version")
    try:
        version = Version(text)
    except InvalidVersion:
        raise BundleError(
            f"{where} {text!r} is not a PEP 440 version (e.g. 0.2.0)", code="bundle.version"
        ) from None
    if str(version) != text or not TARGET_NAME.fullmatch(target_name(text)):
        raise BundleError(
            f"{where} {text!r} is not written in canonical form; write {str(version)!r}",
            code="bundle.version",
        )
    return version


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why the terminal would refuse this member, or None."""
    name = member.name
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or (parts[0] != TOP):
        return "is not inside release/"
    if not (member.isreg() or member.isdir() or member.issym()):
        return "is not a regular file, folder or symlink"
    if member.issym() and not member.linkname.startswith("/"):
        # A relative link must stay inside the tree (a venv's python may point to /usr/bin).
        target = posixpath.normpath(posixpath.join(posixpath.dirname(name), member.linkname))
        if target != TOP and not target.startswith(TOP + "/"):
            return f"is a symlink out of the tree ({member.linkname})"
    return None


def _release_json(handle: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> dict:
    if not member.isreg() or member.size > MAX_RELEASE_JSON:
        raise BundleError(f"{path}: release/release.json is not a small regular file")
    extracted = handle.extractfile(member)
    assert extracted is not None  # a regular file
    try:
        document = json.loads(extracted.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{path}: release/release.json is not UTF-8 JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BundleError(f"{path}: release/release.json must be a JSON object")
    return document


def _sha256(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    length = 0
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
            length += len(block)
    return length, digest.hexdigest()


def read_release(path: Path) -> Release:
    """Check the bundle at ``path`` and return its release; :class:`BundleError` names the problem.

    Checks: a gzip tar; every member under ``release/`` and a regular file,
    folder or symlink (relative links staying inside); ``release/release.json``
    with ``format`` 1, a canonical PEP 440 ``version``, ``python`` and
    ``prefix`` = ``/opt/renkei/releases/<version>``; a file named
    ``renkei-agent-*.tar.gz`` must name that version.  Raises OSError when the
    file cannot be read at all.
    """
    path = Path(path)
    document: dict | None = None
    try:
        with tarfile.open(path, "r:gz") as handle:
            for member in handle:
                problem = _member_problem(member)
                if problem is not None:
                    raise BundleError(f"{path}: member {member.name!r} {problem}")
                if member.name == f"{TOP}/release.json":
                    document = _release_json(handle, member, path)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
            raise
        raise BundleError(f"{path}: not a complete gzip tar archive ({exc})") from None
    if document is None:
        raise BundleError(f"{path}: there is no release/release.json; build it with make release")
    if document.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"{path}: release.json format is {document.get('format')!r}; this server publishes "
            f"format {BUNDLE_FORMAT}",
            code="bundle.format",
        )
    version = document.get("version")
    parse_version(version, where=f"{path}: release.json version")
    assert isinstance(version, str)
    python = document.get("python")
    if not isinstance(python, str) or not re.fullmatch(r"3\.[0-9]{1,2}", python):
        raise BundleError(f'{path}: release.json python must be like "3.11", got {python!r}')
    prefix = f"{PREFIX_ROOT}/{version}"
    if document.get("prefix") != prefix:
        raise BundleError(
            f"{path}: release.json prefix is {document.get('prefix')!r}, expected {prefix!r}"
        )
    named = TARGET_NAME.fullmatch(path.name)
    if named and named.group(1) != version:
        raise BundleError(
            f"{path}: the file is named for version {named.group(1)} but release.json says "
            f"{version}; rebuild it or check you picked the right file",
            code="bundle.name",
        )
    length, sha256 = _sha256(path)
    return Release(version=version, python=python, prefix=prefix, length=length, sha256=sha256)
