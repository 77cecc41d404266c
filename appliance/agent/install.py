"""Releases side by side under one root, and an atomic switch between them.

Layout (the image makes the first release, docs/updates.md "On the terminal")::

    /opt/renkei/current -> releases/0.2.0          the release /usr/bin/renkei-agent runs
    /opt/renkei/releases/0.1.0/                     the previous one, kept for a rollback
    /opt/renkei/releases/0.2.0/release.json         {"format": 1, "version": …, "prefix": …}
    /opt/renkei/releases/.0.3.0.partial/            being unpacked (never run, removed if found)
    /opt/renkei/releases/.0.1.0.removing/           being pruned (removed if found)

Why it is safe to cut the power at any point:

* A release directory under its plain name is always complete: a bundle is
  unpacked into ``.<v>.partial``, its file system is synced (``syncfs``), and
  only then is it renamed to ``<v>`` (and the parent fsynced).  A release
  being pruned is renamed to ``.<v>.removing`` before anything in it is
  deleted.  :meth:`Releases.recover` removes both kinds of leftover.
* ``current`` is replaced by rename(2) of a new symlink made under a temporary
  name, never removed and re-created: it names the old or the new release,
  never nothing.

Why unpacking checks every member: a bundle comes from the server, and even
verified by TUF it is data, not a program, until it has passed its
self-test.  So a member must be a regular file, a directory or a symlink that
stays inside the tree — the one exception is the virtualenv's link to the
system interpreter (``bin/python*`` → ``/usr/bin/python3[.N]``); its path must
be relative, without ``..``, and appear once; no file is written through a
symlink (``O_NOFOLLOW``, and a path under a link is refused); sizes and
counts have limits; modes are reduced to 0755/0644 (no set-id bits, nothing
writable by others).  Anything else refuses the whole bundle
(:class:`InstallError` ``bundle.unsafe``).
"""

from __future__ import annotations

import ctypes
import json
import os
import posixpath
import re
import shutil
import stat
import sys
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.atomicwrite import fsync_dir

from .errors import AgentError

__all__ = [
    "BUNDLE_TOP",
    "INTERPRETER_LINKS",
    "PREFIX_ROOT",
    "RELEASE_FORMAT",
    "RELEASE_JSON",
    "InstallError",
    "Limits",
    "ReleaseInfo",
    "Releases",
    "read_release",
]

#: Where every release lives on the appliance (the contract; the bundle's scripts say so).
PREFIX_ROOT = "/opt/renkei/releases"
BUNDLE_TOP = "release"
RELEASE_JSON = "release.json"
RELEASE_FORMAT = 1
#: The only symlinks that may leave the tree: a virtualenv's interpreter links.
INTERPRETER_LINKS = re.compile(r"bin/python(3(\.[0-9]+)?)?")
_SYSTEM_PYTHON = re.compile(r"/usr/bin/python3(\.[0-9]+)?")
_PARTIAL = re.compile(r"\.(.+)\.partial")
_REMOVING = re.compile(r"\.(.+)\.removing")
_CURRENT_TMP = ".current.tmp-"
_BLOCK = 1 << 20


class InstallError(AgentError):
    """A bundle cannot be installed, or the release tree is not as expected.

    Codes: ``bundle.unsafe`` (a member that is not a plain file, directory or
    inside link, or a path that leaves the tree), ``bundle.too_large`` (over
    :class:`Limits`), ``bundle.corrupt`` (not a readable tar.gz),
    ``bundle.manifest`` (``release.json`` missing, malformed, or naming another
    version, Python or prefix), ``install.layout`` (the install root holds
    something it should not).
    """

    code = "install.error"


@dataclass(frozen=True)
class Limits:
    """What a bundle may hold once unpacked (the download itself is limited by TUF's length)."""

    max_bytes: int = 1 << 30
    max_members: int = 50_000
    max_path: int = 1024


@dataclass(frozen=True)
class ReleaseInfo:
    """A release's ``release.json``."""

    version: str
    python: str
    prefix: str
    format: int = RELEASE_FORMAT

    def to_json(self) -> dict:
        return {
            "format": self.format,
            "version": self.version,
            "python": self.python,
            "prefix": self.prefix,
        }


def running_python() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def parse_release_json(data: bytes) -> ReleaseInfo:
    """``release.json`` bytes → :class:`ReleaseInfo`; InstallError ``bundle.manifest`` if malformed."""
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InstallError(f"release.json is not JSON: {exc}", code="bundle.manifest") from None
    if not isinstance(document, dict):
        raise InstallError("release.json is not an object", code="bundle.manifest")
    if document.get("format") != RELEASE_FORMAT:
        raise InstallError(
            f"release.json format {document.get('format')!r}: this agent reads format "
            f"{RELEASE_FORMAT} only",
            code="bundle.manifest",
        )
    fields = {}
    for key in ("version", "python", "prefix"):
        value = document.get(key)
        if not isinstance(value, str) or not value:
            raise InstallError(f"release.json has no {key!r}", code="bundle.manifest")
        fields[key] = value
    return ReleaseInfo(**fields)


def read_release(path: Path) -> ReleaseInfo:
    """The ``release.json`` of an installed release folder."""
    try:
        return parse_release_json((path / RELEASE_JSON).read_bytes())
    except OSError as exc:
        raise InstallError(
            f"{path / RELEASE_JSON}: cannot be read ({exc.strerror})", code="bundle.manifest"
        ) from None


def _unsafe(message: str) -> InstallError:
    return InstallError(message, code="bundle.unsafe")


def _member_path(member: tarfile.TarInfo, limits: Limits) -> str | None:
    """The member's path inside the release (``""`` for the top itself); None for the top."""
    name = member.name
    if len(name) > limits.max_path:
        raise _unsafe(f"a member's name is longer than {limits.max_path} characters")
    if name.startswith("/") or "\\" in name or "\0" in name:
        raise _unsafe(f"{name!r}: absolute or unusual path")
    parts = name.rstrip("/").split("/") if member.isdir() else name.split("/")
    if parts[0] != BUNDLE_TOP:
        raise _unsafe(f"{name!r}: every member must be under {BUNDLE_TOP}/")
    rest = parts[1:]
    if any(part in ("", ".", "..") for part in rest):
        raise _unsafe(f"{name!r}: empty, '.' or '..' path component")
    if not rest:
        if not member.isdir():
            raise _unsafe(f"{name!r}: the top of the bundle must be a directory")
        return None
    return "/".join(rest)


def _check_link(rel: str, target: str) -> None:
    if target.startswith("/"):
        if INTERPRETER_LINKS.fullmatch(rel) and _SYSTEM_PYTHON.fullmatch(target):
            return
        raise _unsafe(f"{rel!r} links to {target!r}, outside the release")
    if not target or "\0" in target:
        raise _unsafe(f"{rel!r}: empty link target")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
        raise _unsafe(f"{rel!r} links to {target!r}, outside the release")


class Releases:
    """The releases under ``root`` (``/opt/renkei``): install, switch, recover, prune."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.releases = self.root / "releases"
        self.current = self.root / "current"

    def path(self, version: str) -> Path:
        return self.releases / version

    @staticmethod
    def prefix(version: str) -> str:
        """Where a bundle for ``version`` must say it lives: its scripts' ``#!`` lines.

        Always under :data:`PREFIX_ROOT`, also when ``root`` is elsewhere (tests):
        the agent runs a release as ``<release>/bin/python <release>/bin/renkei-agent``,
        which works wherever the folder is, and is what the ``#!`` line says on the
        appliance.
        """
        return f"{PREFIX_ROOT}/{version}"

    @staticmethod
    def command(release: Path, *args: str) -> list[str]:
        """How to run a release's ``renkei-agent`` (its own interpreter, its own script)."""
        return [str(release / "bin" / "python"), str(release / "bin" / "renkei-agent"), *args]

    # -- what is there -----------------------------------------------------------------------

    def current_version(self) -> str | None:
        """The version ``current`` names, or None when there is no ``current`` link."""
        try:
            target = os.readlink(self.current)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InstallError(
                f"{self.current} is not a symlink ({exc.strerror})", code="install.layout"
            ) from None
        parts = target.rstrip("/").split("/")
        if len(parts) < 2 or parts[-2] != "releases" or parts[-1].startswith("."):
            raise InstallError(
                f"{self.current} points to {target!r}, not to releases/<version>",
                code="install.layout",
            )
        return parts[-1]

    def installed(self) -> list[str]:
        """Complete release folders (plain names), sorted by name."""
        try:
            names = sorted(os.listdir(self.releases))
        except FileNotFoundError:
            return []
        return [n for n in names if not n.startswith(".") and (self.releases / n).is_dir()]

    def is_complete(self, version: str) -> bool:
        """A release folder for ``version`` whose release.json names it (see the module doc).

        An image built before releases carried a ``release.json`` has none in
        its own release: a folder under its plain name with an executable
        ``bin/renkei-agent`` counts too (only the image and :meth:`unpack`
        ever make plain-named folders, both complete), so it can still be
        switched back to.
        """
        path = self.path(version)
        if not (path / RELEASE_JSON).exists() and not version.startswith("."):
            return os.access(path / "bin" / "renkei-agent", os.X_OK)
        try:
            return read_release(path).version == version
        except InstallError:
            return False

    # -- recovering and pruning --------------------------------------------------------------

    def recover(self) -> list[str]:
        """Remove what a cut run left: partial unpacks, half-pruned releases, temporary links."""
        removed = []
        for name in self._dot_entries():
            if _PARTIAL.fullmatch(name) or _REMOVING.fullmatch(name):
                shutil.rmtree(self.releases / name, ignore_errors=False)
                removed.append(f"releases/{name}")
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            names = []
        for name in names:
            if name.startswith(_CURRENT_TMP):
                os.unlink(self.root / name)
                removed.append(name)
        if removed:
            fsync_dir(self.releases if self.releases.is_dir() else self.root)
            fsync_dir(self.root)
        return removed

    def _dot_entries(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.releases) if n.startswith("."))
        except FileNotFoundError:
            return []

    def remove(self, version: str) -> None:
        """Remove one release folder: renamed aside first, so it is never seen half-deleted."""
        if version == self.current_version():
            raise InstallError(
                f"release {version} is current and cannot be removed", code="install.layout"
            )
        path = self.path(version)
        if not path.exists():
            return
        aside = self.releases / f".{version}.removing"
        if aside.exists():
            shutil.rmtree(aside)
        os.rename(path, aside)
        fsync_dir(self.releases)
        shutil.rmtree(aside)

    def prune(self, keep: set[str]) -> list[str]:
        """Remove every release except ``keep`` and the current one; return the versions removed."""
        keep = set(keep)
        current = self.current_version()
        if current:
            keep.add(current)
        removed = []
        for version in self.installed():
            if version not in keep:
                self.remove(version)
                removed.append(version)
        return removed

    # -- switching ---------------------------------------------------------------------------

    def switch(self, version: str) -> str | None:
        """Point ``current`` at ``releases/<version>`` in one rename; return the version before."""
        if not self.is_complete(version):
            raise InstallError(
                f"release {version} is not installed completely; not switching to it",
                code="install.layout",
            )
        before = self.current_version()
        temporary = self.root / f"{_CURRENT_TMP}{os.getpid()}"
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        os.symlink(f"releases/{version}", temporary)
        os.replace(temporary, self.current)
        fsync_dir(self.root)
        return before

    # -- unpacking ---------------------------------------------------------------------------

    def unpack(
        self,
        bundle: Path,
        version: str,
        *,
        limits: Limits = Limits(),
        progress: Callable[[int], None] = lambda count: None,
    ) -> ReleaseInfo:
        """Unpack ``bundle`` as ``releases/<version>``: checked, fsynced, renamed into place.

        ``progress(n)`` is called after the n-th member is written (the crash
        tests cut the process there).  On any error the partial folder is
        removed and :class:`InstallError` (or ``OSError``: disk full) raised.
        """
        self.releases.mkdir(parents=True, exist_ok=True)
        partial = self.releases / f".{version}.partial"
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(mode=0o755)
        try:
            kinds = self._extract(bundle, partial, limits, progress)
            info = self._check_tree(partial, kinds, version)
            sync_tree(partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        final = self.path(version)
        if final.exists():  # a complete folder of the same version: replaced, never merged
            self.remove(version)
        os.rename(partial, final)
        fsync_dir(self.releases)
        return info

    def _extract(
        self, bundle: Path, dest: Path, limits: Limits, progress: Callable[[int], None]
    ) -> dict[str, str]:
        kinds: dict[str, str] = {}
        total = 0
        count = 0
        try:
            with tarfile.open(bundle, mode="r:gz") as tar:
                for member in tar:
                    count += 1
                    if count > limits.max_members:
                        raise InstallError(
                            f"the bundle has more than {limits.max_members} members",
                            code="bundle.too_large",
                        )
                    rel = _member_path(member, limits)
                    if rel is None:
                        continue
                    if rel in kinds:
                        raise _unsafe(f"{member.name!r} appears twice in the bundle")
                    self._check_parents(rel, kinds, dest)
                    target = dest / rel
                    if member.isdir():
                        os.mkdir(target, 0o755)
                        os.chmod(target, 0o755)
                        kinds[rel] = "dir"
                    elif member.issym():
                        _check_link(rel, member.linkname)
                        os.symlink(member.linkname, target)
                        kinds[rel] = "link"
                    elif member.isreg() and not member.issparse():
                        total += member.size
                        if total > limits.max_bytes:
                            raise InstallError(
                                f"the bundle unpacks to more than {limits.max_bytes} bytes",
                                code="bundle.too_large",
                            )
                        self._write(tar, member, target)
                        kinds[rel] = "file"
                    else:
                        raise _unsafe(
                            f"{member.name!r} is not a regular file, directory or symlink "
                            "(devices, FIFOs, hard links and sparse files are refused)"
                        )
                    if not member.issym():
                        os.utime(target, (member.mtime, member.mtime))
                    progress(count)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise InstallError(
                f"the bundle is not a readable tar.gz: {exc}", code="bundle.corrupt"
            ) from None
        return kinds

    @staticmethod
    def _check_parents(rel: str, kinds: dict[str, str], dest: Path) -> None:
        """Every parent of ``rel`` must be a directory of this bundle (made now if not listed)."""
        parts = rel.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            parent = "/".join(parts[:depth])
            kind = kinds.get(parent)
            if kind is None:
                os.mkdir(dest / parent, 0o755)
                kinds[parent] = "dir"
            elif kind != "dir":
                raise _unsafe(f"{rel!r} lies under {parent!r}, which is not a directory")

    @staticmethod
    def _write(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
        mode = 0o755 if member.mode & 0o111 else 0o644
        source = tar.extractfile(member)
        if source is None:
            raise InstallError(f"{member.name!r} cannot be read", code="bundle.corrupt")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            written = 0
            while True:
                block = source.read(_BLOCK)
                if not block:
                    break
                _write_all(fd, block)
                written += len(block)
            if written != member.size:
                raise InstallError(
                    f"{member.name!r}: {written} bytes instead of {member.size}",
                    code="bundle.corrupt",
                )
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def _check_tree(self, partial: Path, kinds: dict[str, str], version: str) -> ReleaseInfo:
        if kinds.get(RELEASE_JSON) != "file":
            raise InstallError(
                f"the bundle has no {BUNDLE_TOP}/{RELEASE_JSON}", code="bundle.manifest"
            )
        info = parse_release_json((partial / RELEASE_JSON).read_bytes())
        problems = []
        if info.version != version:
            problems.append(f"it is release {info.version!r}, the repository says {version!r}")
        if info.python != running_python():
            problems.append(f"it is built for Python {info.python}, this is {running_python()}")
        if info.prefix != self.prefix(version):
            problems.append(
                f"it is built for {info.prefix}, it would live in {self.prefix(version)}"
            )
        if problems:
            raise InstallError(
                "the bundle does not fit this appliance: " + "; ".join(problems),
                code="bundle.manifest",
            )
        agent = partial / "bin" / "renkei-agent"
        if kinds.get("bin/renkei-agent") != "file" or not os.stat(agent).st_mode & stat.S_IXUSR:
            raise InstallError(
                "the bundle has no executable bin/renkei-agent", code="bundle.manifest"
            )
        if kinds.get("bin/python") not in ("link", "file"):
            raise InstallError("the bundle has no bin/python", code="bundle.manifest")
        with agent.open("rb") as handle:
            first = handle.readline(4096).rstrip(b"\n")
        if first != f"#!{info.prefix}/bin/python".encode():
            raise InstallError(
                f"bin/renkei-agent starts {first[:80]!r}, not #!{info.prefix}/bin/python",
                code="bundle.manifest",
            )
        return info


def sync_tree(path: Path) -> None:
    """Make everything written under ``path`` durable before it is renamed into place.

    One ``syncfs(2)`` of its file system instead of an fsync per file: a
    release has thousands of files, and an fsync each took half a minute on
    a busy disk.  Where ``syncfs`` is missing, ``sync(2)``.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = getattr(libc, "syncfs", None)
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _write_all(fd: int, block: bytes) -> None:
    view = memoryview(block)
    while view:
        done = os.write(fd, view)
        view = view[done:]
