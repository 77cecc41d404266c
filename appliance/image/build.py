"""``make image``: build, sign and publish the appliance image, or change nothing.

Everything is built in a private work folder (``$TMPDIR/renkei-image-*``);
``dist/image`` is replaced in one step (``renameat2(RENAME_EXCHANGE)``) only
after every artefact is written, hashed and signed.  A failure at any stage —
a missing package, no network, a broken agent — leaves the previous
``dist/image`` (or none) untouched and says which stage failed and why.

Stages: prepare → Debian packages resolved (in parallel with the wheels) →
mmdebstrap with the customize hook (agent, overlay, setup-rootfs.sh) →
finishing the tree → tarball → SquashFS → manifest → checksums, signature and
publication.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from . import archive, bootstrap, customize, manifest, rootfs
from .buildlog import BuildLog, CommandFailed
from .checksums import SIGNATURE, SUMS, file_sha256, render_sums
from .errors import EXIT_SETUP, EXIT_USAGE, BuildError
from .packages import check_name, load_packages
from .signing import SigningKey, fingerprint, load_signing_key
from .wheels import PIP_WHEEL_GLOB, build_wheels, copy_source, find_pip_wheel, unpack_pip

__all__ = [
    "PIP_WHEEL_GLOB",
    "TOOLS",
    "BuildOptions",
    "BuildResult",
    "build_image",
    "default_cache",
    "git_info",
    "publish",
    "update_root",
]

TOOLS = ("mmdebstrap", "mksquashfs", "zstd", "tar", "chroot", "flock", "git")
STAGES = 8
NAME = "renkei-appliance"


@dataclass(frozen=True)
class BuildOptions:
    """What to build and where; defaults are what ``make image`` uses."""

    source: Path
    dist: Path
    key: Path | None = None
    source_date_epoch: int | None = None
    image_version: str | None = None
    cache: Path | None = None
    extra_packages: tuple[str, ...] = ()
    mirror: str = bootstrap.MIRROR
    security_mirror: str = bootstrap.SECURITY_MIRROR
    work_parent: Path | None = None
    keep_work: bool = False
    verbose: bool | None = None


@dataclass(frozen=True)
class BuildResult:
    dist: Path
    image_version: str
    agent_version: str
    source_date_epoch: int
    files: dict[str, str]
    rootfs_tar: Path
    squashfs: Path
    seconds: float
    key_fingerprint: str
    dev_key: bool
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "dist": str(self.dist),
            "image_version": self.image_version,
            "agent_version": self.agent_version,
            "source_date_epoch": self.source_date_epoch,
            "files": self.files,
            "seconds": round(self.seconds, 1),
            "key": self.key_fingerprint,
            "dev_key": self.dev_key,
            "warnings": self.warnings,
        }


def default_cache() -> Path:
    return Path(os.environ.get("RENKEI_IMAGE_CACHE") or "/var/cache/renkei-image")


def git_info(source: Path) -> dict[str, object]:
    """Commit, its time and whether the tree has changes (all None outside a git checkout)."""
    info: dict[str, object] = {"commit": None, "time": None, "dirty": False}
    if not (source / ".git").exists():
        return info
    out = subprocess.run(
        ["git", "-C", str(source), "log", "-1", "--format=%H %ct"],
        capture_output=True,
        text=True,
    ).stdout.split()
    if len(out) == 2:
        info["commit"], info["time"] = out[0], int(out[1])
    status = subprocess.run(
        ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=normal"],
        capture_output=True,
        text=True,
    ).stdout
    info["dirty"] = bool(status.strip())
    return info


def dev_update_dir() -> Path:
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "renkei" / "update-dev"


def update_root() -> tuple[Path, bool]:
    """The update repository's trusted root the image ships, and whether it is a development one.

    ``RENKEI_UPDATE_ROOT`` names the ``1.root.json`` of the ministry's key
    ceremony (docs/updates.md).  Without it, the root of a development
    repository made on first use under ``~/.config/renkei/update-dev/``
    (``repository/updates/`` for a development server's data folder,
    ``offline/`` for its root and targets keys), like the image's
    development signing key: an image with it installs only what that
    repository publishes.
    """
    named = os.environ.get("RENKEI_UPDATE_ROOT")
    if named:
        path = Path(named)
        if not path.is_file():
            raise BuildError(
                f"RENKEI_UPDATE_ROOT={named}: no such file (the 1.root.json that "
                "`renkei-server update-keys init` printed)",
                code="build.config",
                exit_status=EXIT_USAGE,
            )
        return path, False
    folder = dev_update_dir()
    root = folder / "repository" / "updates" / "metadata" / "1.root.json"
    if not root.exists():
        from datetime import UTC, datetime

        from server.update_keys import init_repository
        from server.update_repo import UpdateRepository

        data = folder / "repository"
        init_repository(
            UpdateRepository.for_data_dir(data),
            data_dir=data,
            offline_dir=folder / "offline",
            now=datetime.now(UTC),
        )
    return root, True


def _check_machine() -> Path:
    if os.geteuid() != 0:
        raise BuildError(
            "the image is built as root (mmdebstrap --mode=root, chroot, device nodes): "
            "run `sudo make image`",
            code="build.setup",
            exit_status=EXIT_SETUP,
        )
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise BuildError(
            f"missing tools: {', '.join(missing)}; `make image` installs them "
            "(Debian packages in APT_IMAGE_PACKAGES)",
            code="build.setup",
            exit_status=EXIT_SETUP,
        )
    if not Path(bootstrap.MERGED_USR_HOOKS).is_dir():
        raise BuildError(
            f"{bootstrap.MERGED_USR_HOOKS} is missing: mmdebstrap ≥ 1.3 is needed",
            code="build.setup",
            exit_status=EXIT_SETUP,
        )
    return find_pip_wheel()


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def remove_work(work: Path) -> None:
    """Remove the work folder, never crossing into a mount mmdebstrap may have left behind."""
    for point in _mounts_under(work):
        subprocess.run(["umount", "--lazy", point], capture_output=True)
    left = _mounts_under(work)
    if left:
        raise BuildError(
            f"{work} still has mounts ({', '.join(left)}); unmount them and remove it by hand",
            code="build.cleanup",
        )
    subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def publish(staged: Path, dist: Path) -> None:
    """Put the folder ``staged`` at ``dist`` in one step; the old ``dist`` is removed after.

    ``staged`` must be on the same file system as ``dist`` (a sibling).
    """
    if dist.exists() and _exchange(staged, dist):
        shutil.rmtree(staged)
        return
    if dist.exists():  # no renameat2: the old folder is gone for a moment
        old = dist.with_name(f".{dist.name}.old-{os.getpid()}")
        os.rename(dist, old)
        os.rename(staged, dist)
        shutil.rmtree(old)
    else:
        os.rename(staged, dist)
    fd = os.open(dist.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Build:
    """One build: the work folder, the log and the stages, in order."""

    def __init__(self, options: BuildOptions, stream: TextIO | None):
        self.options = options
        self.stream = stream
        self.warnings: list[str] = []

    def run(self) -> BuildResult:
        o = self.options
        pip_wheel = _check_machine()
        packages = [
            p.name for p in load_packages(o.source / "appliance" / "image" / "packages.txt")
        ]
        packages += [check_name(name) for name in o.extra_packages if name not in packages]
        git = git_info(o.source)
        sde = o.source_date_epoch if o.source_date_epoch is not None else git["time"]
        if sde is None:
            raise BuildError(
                f"{o.source} is not a git checkout: give --source-date-epoch (or SOURCE_DATE_EPOCH)",
                code="build.config",
                exit_status=EXIT_USAGE,
            )
        key, created = load_signing_key(o.key)
        self.update_root, self.update_root_dev = update_root()
        cache = o.cache or default_cache()
        (cache / "debs").mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="renkei-image-", dir=o.work_parent))
        log = BuildLog(work / "build.log", stream=self.stream, verbose=o.verbose, stages=STAGES)
        self.log = log
        try:
            result = self._stages(work, log, packages, git, int(sde), key, cache, pip_wheel)
        except (Exception, KeyboardInterrupt) as exc:
            if not isinstance(exc, BuildError):  # a bug or ^C: the traceback goes to the log
                log.write("".join(traceback.format_exception(exc)))
            log.close()
            kept = Path(tempfile.gettempdir()) / f"{work.name}.log"
            shutil.copyfile(work / "build.log", kept)
            self._failed_log = kept
            if not o.keep_work:
                remove_work(work)
            if isinstance(exc, BuildError | KeyboardInterrupt):
                raise
            raise BuildError(
                f"internal error: {type(exc).__name__}: {exc}", code="build.internal"
            ) from exc
        log.close()
        if not o.keep_work:
            remove_work(work)
        if created:
            result.warnings.append(f"made a new DEVELOPMENT signing key at {key.path}")
        return result

    def _stages(
        self,
        work: Path,
        log: BuildLog,
        packages: list[str],
        git: dict[str, object],
        sde: int,
        key: SigningKey,
        cache: Path,
        pip_wheel: Path,
    ) -> BuildResult:
        o = self.options
        if key.dev:
            log.warn(
                f"signing with the DEVELOPMENT key {key.path} ({fingerprint(key.public)}); "
                "set RENKEI_IMAGE_KEY for a release"
            )
        log.stage(f"prepare: source {o.source}, SOURCE_DATE_EPOCH={sde}, {len(packages)} packages")
        src = work / "src"
        count = copy_source(o.source, src)
        pip_dir = work / "pip"
        unpack_pip(pip_wheel, pip_dir)
        log.detail(f"copied {count} source files")
        mirrors = bootstrap.sources(mirror=o.mirror, security=o.security_mirror)

        log.stage("resolve Debian packages (simulated) while building the wheels")
        simulate_argv = bootstrap.mmdebstrap_argv(
            root=work / "simulate", packages=packages, mirrors=mirrors, simulate=True
        )
        simulate_log = (work / "simulate.log").open("w+", encoding="utf-8")
        log.write(f"$ {' '.join(simulate_argv)}  (output: simulate.log)")
        simulation = subprocess.Popen(
            simulate_argv, stdin=subprocess.DEVNULL, stdout=simulate_log, stderr=subprocess.STDOUT
        )

        def stop_if_resolution_failed() -> None:
            if simulation.poll() not in (None, 0):
                raise bootstrap.classify_failure(
                    (work / "simulate.log").read_text(encoding="utf-8")
                )

        try:
            wheels, install = build_wheels(
                src, work, cache, log, sde=sde, pip_dir=pip_dir, between=stop_if_resolution_failed
            )
        except BaseException:
            simulation.terminate()
            raise
        finally:
            simulation.wait()
            simulate_log.seek(0)
            simulated = simulate_log.read()
            simulate_log.close()
            log.write(simulated)
        if simulation.returncode != 0:
            raise bootstrap.classify_failure(simulated)
        agent_version = next(w.version for w in wheels if w.name == "renkei")
        log.detail(f"{len(wheels)} wheels; renkei {agent_version}")
        image_version = (
            o.image_version or f"{agent_version}-{time.strftime('%Y%m%d%H%M', time.gmtime(sde))}"
        )

        log.stage(f"rootfs: mmdebstrap {bootstrap.SUITE} + agent + overlay (the long stage)")
        setup_script = src / "appliance" / "image" / "setup-rootfs.sh"
        plan = {
            "agent_version": agent_version,
            "wheels": str(install.parent),
            "pip_dir": str(pip_dir),
            "overlay": str(src / "appliance" / "rootfs"),
            "setup_script": str(setup_script) if setup_script.exists() else None,
            "source_date_epoch": sde,
            "update_root": str(self.update_root),
        }
        if self.update_root_dev:
            self._warn(
                f"the image trusts the DEVELOPMENT update repository {self.update_root}; "
                "set RENKEI_UPDATE_ROOT for a release"
            )
        if not setup_script.exists():
            self._warn("appliance/image/setup-rootfs.sh does not exist yet: no hardening step ran")
        (work / "plan.json").write_text(json.dumps(plan, indent=2), encoding="utf-8")
        root = work / "rootfs"
        hook = f'"{sys.executable}" -m appliance.image.customize "$1"'
        env = {
            **os.environ,
            "SOURCE_DATE_EPOCH": str(sde),
            "RENKEI_IMAGE_PLAN": str(work / "plan.json"),
            "PYTHONPATH": str(src),
            "LC_ALL": "C.UTF-8",
        }
        argv = bootstrap.mmdebstrap_argv(
            root=root, packages=packages, mirrors=mirrors, deb_cache=cache / "debs", customize=hook
        )
        try:
            output = log.run(argv, env=env, show=bootstrap.shows_progress)
        except CommandFailed as exc:
            raise bootstrap.classify_failure(exc.output) from None
        for line in output.splitlines():
            if line.startswith("W: renkei:"):
                log.write(line)

        log.stage("finish the tree: remove apt, check policy, clamp times")
        rootfs.cleanup(root, apt=True)
        forbidden = rootfs.find_forbidden(root)
        if forbidden:
            raise BuildError(
                "the image contains what it must not: " + "; ".join(forbidden),
                code="build.policy",
            )
        clamped = rootfs.clamp_mtimes(root, sde)
        log.detail(f"{clamped} file times clamped to {manifest.iso_time(sde)}")
        debs = manifest.parse_dpkg_status(
            (root / "var/lib/dpkg/status").read_text(encoding="utf-8")
        )

        out = work / "out"
        out.mkdir()
        base = f"{NAME}-{image_version}-amd64"
        tarball, squashfs = out / f"{base}.rootfs.tar.zst", out / f"{base}.squashfs"
        log.stage(f"tarball: {tarball.name}")
        try:
            archive.write_tarball(root, tarball, log)
            log.stage(f"SquashFS: {squashfs.name}")
            archive.write_squashfs(root, squashfs, sde, log)
        except CommandFailed as exc:
            raise BuildError(f"{exc}: {exc.tail()}", code="build.archive") from None

        log.stage("manifest and SBOM")
        artefacts = [
            {"name": p.name, "size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in (tarball, squashfs)
        ]
        document = {
            "format": manifest.FORMAT,
            "image": {
                "name": NAME,
                "version": image_version,
                "suite": bootstrap.SUITE,
                "architecture": "amd64",
                "variant": "essential",
            },
            "agent": {
                "name": "renkei",
                "version": agent_version,
                "release_dir": customize.release_dir(agent_version),
                "commands": [f"/usr/bin/{c}" for c in customize.AGENT_COMMANDS],
                "update_root": customize.UPDATE_ROOT,
                "update_root_sha256": file_sha256(self.update_root),
                "update_root_dev": self.update_root_dev,
            },
            "build": {
                "source_date_epoch": sde,
                "time": manifest.iso_time(sde),
                "git_commit": git["commit"],
                "git_dirty": git["dirty"],
                "mirrors": mirrors,
                "requested_packages": sorted(packages),
                "setup_script": plan["setup_script"] is not None,
            },
            "signing_key": {
                "algorithm": "Ed25519",
                "fingerprint": fingerprint(key.public),
                "dev": key.dev,
            },
            "artefacts": artefacts,
            "debian_packages": [p.to_json() for p in debs],
            "python_wheels": [w.to_json() for w in wheels],
        }
        (out / "manifest.json").write_bytes(manifest.render_json(document))
        (out / "manifest.txt").write_bytes(manifest.render_text(document))
        (out / "sbom.cdx.json").write_bytes(manifest.cyclonedx(document))

        log.stage("checksums, signature, publish")
        files = {p.name: file_sha256(p) for p in sorted(out.iterdir())}
        sums = render_sums(files)
        (out / SUMS).write_bytes(sums)
        (out / SIGNATURE).write_bytes(key.sign(sums))
        o.dist.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{o.dist.name}.new-", dir=o.dist.parent))
        try:
            for p in sorted(out.iterdir()):
                shutil.copyfile(p, staged / p.name)
                with open(staged / p.name, "rb") as handle:
                    os.fsync(handle.fileno())
            staged.chmod(0o755)
            publish(staged, o.dist)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        return BuildResult(
            dist=o.dist,
            image_version=image_version,
            agent_version=agent_version,
            source_date_epoch=sde,
            files=files,
            rootfs_tar=o.dist / tarball.name,
            squashfs=o.dist / squashfs.name,
            seconds=log.elapsed(),
            key_fingerprint=fingerprint(key.public),
            dev_key=key.dev,
            warnings=list(self.warnings),
        )

    def _warn(self, text: str) -> None:
        self.warnings.append(text)
        self.log.warn(text)


def build_image(options: BuildOptions, *, stream: TextIO | None = None) -> BuildResult:
    """Build, sign and publish to ``options.dist``; :class:`BuildError` leaves it untouched.

    A failed build's log is kept at ``$TMPDIR/renkei-image-*.log`` (named in
    the error's message).
    """
    build = _Build(options, stream)
    try:
        return build.run()
    except BuildError as exc:
        failed_log = getattr(build, "_failed_log", None)
        if failed_log is not None:
            exc.message = f"{exc.message}\n(full log: {failed_log})"
            exc.args = (exc.message,)
        raise
