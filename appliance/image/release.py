"""``make release``: the agent's release bundle ``renkei-agent-<version>.tar.gz`` for the update server.

The bundle (the contract in docs/updates.md) is ``release/release.json`` plus
the agent's complete virtual environment for ``/opt/renkei/releases/<version>``,
built as the image builds its own release: the same wheels (``wheels.py``:
this source tree and the hash-checked ``requirements.lock``, built with
``SOURCE_DATE_EPOCH``), installed offline with the same commands
(``customize.venv_argv``, ``pip_install_argv``, ``pip check``,
``compile_argv``) — only not in a chroot.

Why it is built elsewhere and then *relocated*: the build host must not need
(or be changed at) ``/opt/renkei``.  The venv is made in the work folder,
then the three things that name its folder are rewritten to the prefix: the
``#!`` lines of its scripts (and their hashes in the ``RECORD`` files), the
``activate`` scripts and ``pyvenv.cfg``; byte code is compiled naming the
prefix (``compileall -s/-p``).  A final scan refuses the bundle if the work
folder's path is still written in any file.  The venv's ``bin/python`` links
to ``/usr/bin/python3``: the appliance's own interpreter, which the updater
accepts as the one link out of the tree.

The tarball is reproducible: members sorted, owner 0/0, times clamped to
``SOURCE_DATE_EPOCH``, modes 0755/0644, gzip without a name or time.  It is
written to a temporary name and renamed into ``--out`` when complete.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import re
import shutil
import stat
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from common.atomicwrite import atomic_write

from . import customize
from .buildlog import BuildLog, CommandFailed
from .errors import EXIT_USAGE, BuildError
from .wheels import (
    HOST_PYTHON,
    IMAGE_PYTHON,
    build_wheels,
    classify_pip_failure,
    copy_source,
    find_pip_wheel,
    unpack_pip,
)

__all__ = ["ReleaseOptions", "ReleaseResult", "build_release", "relocate", "write_bundle"]

STAGES = 5
TOP = "release"
_VERSION = re.compile(r"[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?")
_SETUP_VERSION = re.compile(r"^version\s*=\s*.*$", re.MULTILINE)
_AGENT_VERSION = re.compile(r'^__version__\s*=\s*".*"$', re.MULTILINE)


@dataclass(frozen=True)
class ReleaseOptions:
    source: Path
    out: Path
    cache: Path
    version: str | None = None
    source_date_epoch: int | None = None
    work_parent: Path | None = None
    keep_work: bool = False
    verbose: bool | None = None


@dataclass
class ReleaseResult:
    version: str
    bundle: Path
    sha256: str
    length: int
    source_date_epoch: int
    seconds: float
    wheels: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "version": self.version,
            "bundle": str(self.bundle),
            "target": self.bundle.name,
            "sha256": self.sha256,
            "length": self.length,
            "prefix": customize.release_dir(self.version),
            "source_date_epoch": self.source_date_epoch,
            "seconds": round(self.seconds, 1),
            "wheels": self.wheels,
        }


# --- the version -------------------------------------------------------------------------------


def check_version(version: str) -> None:
    if not _VERSION.fullmatch(version):
        raise BuildError(
            f"--version {version!r} is not a release version (e.g. 0.2.0, 1.0.0rc1)",
            code="build.config",
            exit_status=EXIT_USAGE,
        )


def set_version(source: Path, version: str) -> None:
    """Make the copied tree ``version``: setup.cfg's and the agent's ``__version__``."""
    check_version(version)
    for path, pattern, line in (
        (source / "setup.cfg", _SETUP_VERSION, f"version = {version}"),
        (
            source / "appliance" / "agent" / "__init__.py",
            _AGENT_VERSION,
            f'__version__ = "{version}"',
        ),
    ):
        text = path.read_text(encoding="utf-8")
        new, count = pattern.subn(line, text, count=1)
        if count != 1:
            raise BuildError(f"{path}: no version line to set", code="build.config")
        path.write_text(new, encoding="utf-8")


# --- relocation --------------------------------------------------------------------------------


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def _fix_records(venv: Path, changed: dict[Path, bytes]) -> None:
    """Update the hash and size of rewritten files in every ``*.dist-info/RECORD``."""
    for record in venv.glob("lib/python*/site-packages/*.dist-info/RECORD"):
        base = record.parent.parent
        lines = record.read_text(encoding="utf-8").splitlines()
        out = []
        for line in lines:
            name, _, rest = line.partition(",")
            target = (base / name).resolve() if name else None
            if target in changed:
                data = changed[target]
                line = f"{name},{_record_hash(data)},{len(data)}"
            out.append(line)
        record.write_text("\n".join(out) + "\n", encoding="utf-8")


def relocate(venv: Path, prefix: str) -> list[str]:
    """Rewrite the venv built at ``venv`` to live at ``prefix``; return the files changed."""
    old = str(venv).encode()
    new = prefix.encode()
    changed: dict[Path, bytes] = {}
    candidates = [venv / "pyvenv.cfg", *sorted((venv / "bin").iterdir())]
    for path in candidates:
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if old not in data:
            continue
        data = data.replace(old, new)
        path.write_bytes(data)
        changed[path.resolve()] = data
    _fix_records(venv, changed)
    return sorted(str(p.relative_to(venv.resolve())) for p in changed)


def find_build_path(tree: Path, build_path: str) -> list[str]:
    """Files in ``tree`` that still contain ``build_path`` (relocation must leave none)."""
    needle = build_path.encode()
    found = []
    for folder, _dirs, files in os.walk(tree):
        for name in files:
            path = Path(folder) / name
            if path.is_symlink():
                if needle in os.fsencode(os.readlink(path)):
                    found.append(str(path.relative_to(tree)))
                continue
            with path.open("rb") as handle:
                if needle in handle.read():
                    found.append(str(path.relative_to(tree)))
    return sorted(found)


# --- the bundle --------------------------------------------------------------------------------


def _members(tree: Path) -> list[Path]:
    paths = []
    for folder, dirs, files in os.walk(tree):
        dirs.sort()
        for name in sorted(dirs + files):
            paths.append(Path(folder) / name)
    return sorted(paths, key=lambda p: p.relative_to(tree).as_posix())


def write_bundle(tree: Path, out: Path, sde: int) -> None:
    """``tree`` as ``release/…`` in a reproducible ``.tar.gz`` at ``out`` (written atomically)."""

    def info(path: Path, name: str) -> tarfile.TarInfo:
        st = path.lstat()
        member = tarfile.TarInfo(name)
        member.uid = member.gid = 0
        member.uname = member.gname = "root"
        member.mtime = min(int(st.st_mtime), sde)
        if stat.S_ISLNK(st.st_mode):
            member.type, member.linkname, member.mode = tarfile.SYMTYPE, os.readlink(path), 0o777
        elif stat.S_ISDIR(st.st_mode):
            member.type, member.mode = tarfile.DIRTYPE, 0o755
        elif stat.S_ISREG(st.st_mode):
            member.size = st.st_size
            member.mode = 0o755 if st.st_mode & 0o111 else 0o644
        else:
            raise BuildError(f"{path}: not a file, folder or link", code="build.release")
        return member

    with atomic_write(out) as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.addfile(info(tree, TOP))
                for path in _members(tree):
                    member = info(path, f"{TOP}/{path.relative_to(tree).as_posix()}")
                    if member.isreg():
                        with path.open("rb") as handle:
                            tar.addfile(member, handle)
                    else:
                        tar.addfile(member)


def _sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest(), path.stat().st_size


# --- the build ---------------------------------------------------------------------------------


def _install(venv: Path, wheels: Path, pip_dir: Path, prefix: str, sde: int, log: BuildLog) -> None:
    """The image's install steps (customize.py), on the build host, then relocated to ``prefix``."""
    # Byte code of the build's own runs goes to the work folder, never into the tree.
    env = {
        **customize.clean_env(sde, pycache=False),
        "PYTHONPYCACHEPREFIX": str(venv.parent / "pycache"),
    }
    pip_env = {**env, "PYTHONPATH": str(pip_dir)}
    python = str(venv / "bin" / "python")
    try:
        log.run(customize.venv_argv(str(venv)), env=env)
        log.run(customize.pip_install_argv(python, str(wheels)), env=pip_env)
        report = customize.check_pip_report(log.run(customize.pip_check_argv(python), env=pip_env))
        log.detail(f"pip check: {report}")
        changed = relocate(venv, prefix)
        log.detail(f"relocated to {prefix}: {', '.join(changed)}")
        lib = str(venv / "lib")
        log.run(
            customize.compile_argv(python, lib, strip=str(venv), prepend=prefix),
            env=customize.clean_env(sde, pycache=False),
        )
    except CommandFailed as exc:
        raise classify_pip_failure(exc.output, what="installing the release") from None
    except customize.StepError as exc:
        raise BuildError(exc.message, code=exc.code) from None


def build_release(options: ReleaseOptions, *, stream: TextIO | None = None) -> ReleaseResult:
    """Build the bundle into ``options.out``; :class:`BuildError` leaves ``out`` as it was."""
    o = options
    if o.version:
        check_version(o.version)
    pip_wheel = find_pip_wheel()
    if not Path(HOST_PYTHON).exists():
        raise BuildError(f"{HOST_PYTHON} is missing", code="build.setup")
    work = Path(tempfile.mkdtemp(prefix="renkei-release-", dir=o.work_parent))
    log = BuildLog(work / "build.log", stream=stream, verbose=o.verbose, stages=STAGES)
    try:
        return _build(o, work, log, pip_wheel)
    except BuildError as exc:
        kept = Path(tempfile.gettempdir()) / f"{work.name}.log"
        log.close()
        shutil.copyfile(work / "build.log", kept)
        exc.message = f"{exc.message}\n(full log: {kept})"
        exc.args = (exc.message,)
        raise
    finally:
        log.close()
        if not o.keep_work:
            shutil.rmtree(work, ignore_errors=True)


def _build(o: ReleaseOptions, work: Path, log: BuildLog, pip_wheel: Path) -> ReleaseResult:
    from .build import git_info  # the image build's own notion of "the build time"

    git = git_info(o.source)
    sde = o.source_date_epoch if o.source_date_epoch is not None else git["time"]
    if sde is None:
        raise BuildError(
            f"{o.source} is not a git checkout: give --source-date-epoch (or SOURCE_DATE_EPOCH)",
            code="build.config",
            exit_status=EXIT_USAGE,
        )
    sde = int(sde)  # type: ignore[call-overload]
    log.stage(f"prepare: source {o.source}, SOURCE_DATE_EPOCH={sde}")
    src = work / "src"
    count = copy_source(o.source, src)
    if o.version:
        set_version(src, o.version)
    log.detail(f"copied {count} source files")
    pip_dir = work / "pip"
    unpack_pip(pip_wheel, pip_dir)

    log.stage("wheels: this tree and requirements.lock (hash-checked)")
    wheels, install = build_wheels(src, work, o.cache, log, sde=sde, pip_dir=pip_dir)
    version = next(w.version for w in wheels if w.name == "renkei")
    if o.version and version != o.version:
        raise BuildError(
            f"the wheel says {version}, --version said {o.version}: give the version in its "
            "normal form",
            code="build.config",
            exit_status=EXIT_USAGE,
        )
    prefix = customize.release_dir(version)

    log.stage(f"venv for {prefix} (Python {IMAGE_PYTHON}), installed offline")
    venv = work / "venv" / "r"
    venv.parent.mkdir()
    _install(venv, install.parent, pip_dir, prefix, sde, log)
    (venv / "release.json").write_bytes(customize.release_json(version))
    left = find_build_path(venv, str(venv))
    if left:
        raise BuildError(
            f"the release still names its build folder in: {', '.join(left[:10])}",
            code="build.release",
        )

    log.stage(f"bundle renkei-agent-{version}.tar.gz")
    o.out.mkdir(parents=True, exist_ok=True)
    bundle = o.out / f"renkei-agent-{version}.tar.gz"
    write_bundle(venv, bundle, sde)
    sha256, length = _sha256(bundle)
    log.stage(f"done: {length} bytes, sha256 {sha256}")
    return ReleaseResult(
        version=version,
        bundle=bundle,
        sha256=sha256,
        length=length,
        source_date_epoch=sde,
        seconds=log.elapsed(),
        wheels=[w.to_json() for w in wheels],
    )
