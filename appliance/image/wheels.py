"""The agent's wheels: renkei and every dependency at the versions and hashes in the lock.

Why a lock with hashes (``requirements.lock``): setup.cfg pins the direct
dependencies, but the image must also pin theirs (cffi, werkzeug, …), and an
index or a mirror that serves other bytes under the same version must make the
build fail, not ship.  ``pip download --require-hashes`` checks every file.

Why wheels are built here and not taken from the developer's venv: the image
gets exactly the source tree being built (``git ls-files``, no stray build
products), compiled with a pinned setuptools in a fresh build venv, with
``SOURCE_DATE_EPOCH`` and ``-g0`` so two builds give the same bytes (no build
path in debug info, no wall-clock time in the zip).  pyscard has no Linux
wheel on PyPI and is built from its sdist the same way (swig and
libpcsclite-dev come from Debian, see the Makefile).

Downloads are cached (``<cache>/pypi``) and tried offline first, so a second
build needs no network for its wheels.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable
from configparser import ConfigParser
from dataclasses import dataclass
from pathlib import Path

from .buildlog import BuildLog, CommandFailed
from .errors import EXIT_NETWORK, EXIT_PACKAGE, EXIT_SETUP, EXIT_USAGE, BuildError

__all__ = [
    "BUILD_LOCK",
    "BUILD_REQUIREMENTS",
    "HOST_PYTHON",
    "RUNTIME_LOCK",
    "PIP_WHEEL_GLOB",
    "LockedRequirement",
    "Wheel",
    "build_wheels",
    "classify_pip_failure",
    "copy_source",
    "find_pip_wheel",
    "install_requires",
    "parse_lock",
    "render_lock",
    "unpack_pip",
    "wheel_name_version",
    "write_locks",
]

RUNTIME_LOCK = Path(__file__).with_name("requirements.lock")
BUILD_LOCK = Path(__file__).with_name("build-requirements.lock")
BUILD_REQUIREMENTS = ("setuptools==80.9.0", "wheel==0.45.1")
# Installed by a dependency's metadata but not wanted in the image: sqlite-utils
# depends on pip for its `sqlite-utils install` command, which the agent never runs.
EXCLUDED = frozenset({"pip", "setuptools", "wheel"})
# The interpreter that builds the wheels must be the image's (bookworm: 3.11).
HOST_PYTHON = "/usr/bin/python3"
IMAGE_PYTHON = "3.11"
# pip runs from Debian's wheel (python3-pip-whl), never installed where it installs.
PIP_WHEEL_GLOB = "/usr/share/python-wheels/pip-*-py3-none-any.whl"
# What never goes into the image from a source tree.
_SKIP_PARTS = frozenset(
    {".git", ".venv", "__pycache__", "build", "dist", ".pytest_cache", ".ruff_cache", ".hypothesis"}
)
_SKIP_SUFFIXES = (".so", ".pyc", ".egg-info")


@dataclass(frozen=True)
class LockedRequirement:
    name: str
    version: str
    hashes: tuple[str, ...]

    def line(self) -> str:
        hashes = " ".join(f"--hash=sha256:{h}" for h in self.hashes)
        return f"{self.name}=={self.version} {hashes}"


@dataclass(frozen=True)
class Wheel:
    """One wheel installed into the image (``origin``: ``pypi``, ``sdist`` or ``source``)."""

    name: str
    version: str
    filename: str
    sha256: str
    origin: str

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "version": self.version,
            "filename": self.filename,
            "sha256": self.sha256,
            "origin": self.origin,
        }


# --- pure: lock files, names ------------------------------------------------------


def normalize(name: str) -> str:
    """PEP 503 normalised project name (``Flask_SQLAlchemy`` → ``flask-sqlalchemy``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str, *, source: str = "requirements.lock") -> list[LockedRequirement]:
    """``name==version --hash=sha256:…`` entries (backslash continuations allowed)."""
    logical: list[tuple[int, str]] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if pending.strip():
            logical.append((start, pending.strip()))
        pending = ""
    result: list[LockedRequirement] = []
    for number, line in logical:
        words = line.split()
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s=]+)", words[0])
        hashes = tuple(w.removeprefix("--hash=sha256:") for w in words[1:])
        if (
            match is None
            or not hashes
            or any(not re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)
            or any(not w.startswith("--hash=sha256:") for w in words[1:])
        ):
            raise BuildError(
                f"{source} line {number}: expected 'name==version --hash=sha256:<64 hex>', "
                f"got {line!r}",
                code="build.config",
                exit_status=EXIT_USAGE,
            )
        result.append(LockedRequirement(normalize(match[1]), match[2], hashes))
    return result


def render_lock(requirements: Iterable[LockedRequirement], *, header: str) -> str:
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for req in sorted(requirements, key=lambda r: r.name):
        hashes = " \\\n".join(f"    --hash=sha256:{h}" for h in req.hashes)
        lines.append(f"{req.name}=={req.version} \\\n{hashes}")
    return "\n".join(lines) + "\n"


def install_requires(setup_cfg: Path) -> list[str]:
    """The ``[options] install_requires`` lines of setup.cfg (the pinned direct dependencies)."""
    parser = ConfigParser()
    parser.read(setup_cfg, encoding="utf-8")
    raw = parser.get("options", "install_requires", fallback="")
    return [line.strip() for line in raw.splitlines() if line.strip()]


def wheel_name_version(filename: str) -> tuple[str, str]:
    """``cryptography-50.0.2-cp311-abi3-….whl`` → ``("cryptography", "50.0.2")``."""
    parts = filename.removesuffix(".whl").split("-")
    if len(parts) < 5 or not filename.endswith(".whl"):
        raise ValueError(f"not a wheel file name: {filename}")
    return normalize(parts[0]), parts[1]


def classify_pip_failure(output: str, *, what: str) -> BuildError:
    """Turn pip's output into a :class:`BuildError` that names the cause.

    The network (no route, no name resolution, refused, timed out) is told
    apart from a requirement that does not exist, and both from a file whose
    hash does not match the lock (never retried: that is an integrity failure).
    """
    network = re.search(
        r"(NewConnectionError|Temporary failure in name resolution|Name or service not known"
        r"|Network is unreachable|Failed to establish a new connection|ConnectTimeout"
        r"|Connection refused|ProxyError|Could not fetch URL|Read timed out)",
        output,
    )
    mismatch = "DO NOT MATCH THE HASHES" in output
    missing = re.search(r"No matching distribution found for ([^\s]+)", output)
    if mismatch:
        return BuildError(
            f"{what}: a downloaded file does not match the hash in the lock; nothing was "
            "installed. Check the mirror, then regenerate the lock only if the change is "
            "expected (python -m appliance.image lock)",
            code="build.wheels",
        )
    if network:
        return BuildError(
            f"{what}: cannot reach the Python package index ({network[1]}); check the "
            "network or the proxy, then build again",
            code="build.network",
            exit_status=EXIT_NETWORK,
        )
    if missing:
        return BuildError(
            f"{what}: no distribution found for {missing[1]} on the index; check the "
            "version in setup.cfg and the lock (python -m appliance.image lock)",
            code="build.package_missing",
            exit_status=EXIT_PACKAGE,
        )
    tail = "\n".join(output.rstrip().splitlines()[-12:])
    return BuildError(f"{what} failed:\n{tail}", code="build.wheels")


# --- the source tree ----------------------------------------------------------------


def _source_files(source: Path) -> list[str]:
    if (source / ".git").exists():
        listed = subprocess.run(
            [
                "git",
                "-C",
                str(source),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            check=True,
        ).stdout.split(b"\0")
        names = sorted({os.fsdecode(n) for n in listed if n})
        return [n for n in names if (source / n).is_file() or (source / n).is_symlink()]
    names = []
    for folder, dirs, files in os.walk(source):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_PARTS and not d.endswith(_SKIP_SUFFIXES))
        rel = Path(folder).relative_to(source)
        names += [str(rel / f) for f in sorted(files) if not f.endswith(_SKIP_SUFFIXES)]
    return [os.path.normpath(n) for n in names]


def copy_source(source: Path, dest: Path) -> int:
    """Copy the tree's own files (git-tracked and new, not ignored) to ``dest``; return the count.

    Modes are normalised to 0644/0755 (git records only the executable bit),
    so the wheel does not depend on the umask of whoever checked it out.
    A tree without ``.git`` (a copy made by this function) is copied whole,
    minus build products.
    """
    names = _source_files(source)
    for name in names:
        src, dst = source / name, dest / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
            continue
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o755 if os.stat(src).st_mode & 0o111 else 0o644)
    return len(names)


# --- the build --------------------------------------------------------------------


def find_pip_wheel() -> Path:
    """Debian's pip wheel (the newest if several); :class:`BuildError` when it is missing."""
    wheels = sorted(Path("/").glob(PIP_WHEEL_GLOB.lstrip("/")))
    if not wheels:
        raise BuildError(
            f"no pip wheel at {PIP_WHEEL_GLOB} (Debian package python3-pip-whl)",
            code="build.setup",
            exit_status=EXIT_SETUP,
        )
    return wheels[-1]


def unpack_pip(wheel: Path, dest: Path) -> None:
    """Unpack the pip wheel to run it from a folder (a zip import recompiles every time)."""
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(dest)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip_env(pip_dir: Path, pycache: Path) -> dict[str, str]:
    """How pip runs from its unpacked wheel; byte code of this build kept in the work folder."""
    return {"PYTHONPATH": str(pip_dir), "PYTHONPYCACHEPREFIX": str(pycache)}


def _offline_env(sde: int, run: dict[str, str]) -> dict[str, str]:
    """pip without the machine's config (index, find-links, constraints): only what we pass."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(run)
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        SOURCE_DATE_EPOCH=str(sde),
        CFLAGS="-g0",
        LC_ALL="C.UTF-8",
        PYTHONHASHSEED="0",
    )
    return env


def _fetch(
    pip: list[str], lock: Path, cache: Path, log: BuildLog, *, what: str, run: dict[str, str]
) -> None:
    """Make sure every file of ``lock`` is in ``cache``: offline check first, then download.

    ``--no-build-isolation``: pip reads an sdist's metadata with the build
    venv's pinned setuptools instead of fetching unpinned build tools.
    """
    cache.mkdir(parents=True, exist_ok=True)
    common = ["download", "--no-deps", "--require-hashes", "--no-build-isolation", "--dest", cache]
    try:
        log.run(
            [*pip, *common, "--quiet", "--no-index", "--find-links", cache, "-r", lock],
            env=_offline_env(0, run),
        )
        log.detail(f"{what}: every file is in the cache")
        return
    except CommandFailed:
        log.detail(f"{what}: downloading what the cache lacks")
    env = {k: v for k, v in os.environ.items()}
    env.update(run)
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    try:
        log.run([*pip, *common, "--retries", "2", "--timeout", "20", "-r", lock], env=env)
    except CommandFailed as exc:
        raise classify_pip_failure(exc.output, what=what) from None


def _check_host_python() -> None:
    if not Path(HOST_PYTHON).exists():
        raise BuildError(f"{HOST_PYTHON} is missing", code="build.setup", exit_status=EXIT_SETUP)
    found = subprocess.run(
        [HOST_PYTHON, "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if found != IMAGE_PYTHON:
        raise BuildError(
            f"{HOST_PYTHON} is Python {found}; the image's is {IMAGE_PYTHON}: build on "
            "Debian bookworm so the compiled wheels match the image",
            code="build.setup",
            exit_status=EXIT_SETUP,
        )


def build_wheels(
    source: Path,
    work: Path,
    cache: Path,
    log: BuildLog,
    *,
    sde: int,
    pip_dir: Path,
    between: Callable[[], None] = lambda: None,
) -> tuple[list[Wheel], Path]:
    """Build every wheel the image installs into ``work/wheels``.

    The build venv has no pip of its own (ensurepip costs ten seconds): pip
    runs from ``pip_dir``, Debian's pip wheel unpacked, as it does in the chroot.

    ``between()`` is called between the steps: the build passes a check that
    raises as soon as the Debian resolution running beside it has failed.

    Returns the wheels (sorted by name) and the path of ``install.txt``: one
    ``name==version --hash=`` line per wheel, so the offline install inside
    the image checks it gets exactly these files.
    """
    _check_host_python()
    run = _pip_env(pip_dir, work / "pycache")
    wheels_dir = work / "wheels"
    wheels_dir.mkdir(parents=True)
    buildenv = work / "buildenv"
    log.run([HOST_PYTHON, "-m", "venv", "--without-pip", buildenv])
    pip = [str(buildenv / "bin" / "python"), "-m", "pip"]
    runtime_lock = source / "appliance" / "image" / RUNTIME_LOCK.name
    build_lock = source / "appliance" / "image" / BUILD_LOCK.name
    pypi = cache / "pypi"
    offline = _offline_env(sde, run)
    find = ["--no-index", "--find-links", str(pypi)]
    _fetch(pip, build_lock, pypi, log, what="build tools (setuptools, wheel)", run=run)
    between()
    try:
        log.run(
            [*pip, "install", "--quiet", "--require-hashes", *find, "-r", build_lock], env=offline
        )
    except CommandFailed as exc:
        raise classify_pip_failure(exc.output, what="installing the build tools") from None
    between()
    _fetch(pip, runtime_lock, pypi, log, what="the agent's dependencies", run=run)
    between()
    try:
        log.detail("building dependency wheels (pyscard from its sdist)")
        log.run(
            [*pip, "wheel", "--no-deps", "--require-hashes", "--no-build-isolation",
             *find, "--wheel-dir", wheels_dir, "-r", runtime_lock],
            env=offline,
        )  # fmt: skip
        between()
        log.detail("building the renkei wheel (with the common.juki._scan C extension)")
        log.run(
            [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index",
             "--wheel-dir", wheels_dir, source],
            env=offline,
            cwd=work,
        )  # fmt: skip
    except CommandFailed as exc:
        raise classify_pip_failure(exc.output, what="building the wheels") from None
    locked = {r.name: r for r in parse_lock(runtime_lock.read_text(encoding="utf-8"))}
    wheels = []
    for path in sorted(wheels_dir.glob("*.whl")):
        name, version = wheel_name_version(path.name)
        digest = _sha256(path)
        if name == "renkei":
            origin = "source"
            _check_extension(path)
        elif name in locked and digest in locked[name].hashes:
            origin = "pypi"
        else:
            origin = "sdist"
        wheels.append(Wheel(name, version, path.name, digest, origin))
    missing = sorted(set(locked) - {w.name for w in wheels})
    if missing or not any(w.name == "renkei" for w in wheels):
        raise BuildError(
            f"wheels missing after the build: {missing or ['renkei']}", code="build.wheels"
        )
    install = wheels_dir / "install.txt"
    install.write_text(
        "".join(f"{w.name}=={w.version} --hash=sha256:{w.sha256}\n" for w in wheels),
        encoding="utf-8",
    )
    return sorted(wheels, key=lambda w: w.name), install


def _check_extension(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        if not any(re.fullmatch(r"common/juki/_scan\..*\.so", n) for n in archive.namelist()):
            raise BuildError(
                "the renkei wheel has no common/juki/_scan C extension (it is optional in "
                "setup.py, so its compile error was only a warning): install python3-dev and "
                "build-essential, then see the log",
                code="build.wheels",
            )


# --- the lock -------------------------------------------------------------------


def _resolve_env() -> dict[str, str]:
    """pip as on a fresh machine: PyPI (or PIP_INDEX_URL), no local config, find-links or constraints.

    A hash taken from a local wheel folder would not match what CI downloads.
    """
    keep = ("PIP_INDEX_URL", "PIP_CERT", "PIP_PROXY", "PIP_DEFAULT_TIMEOUT")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in keep}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _resolve(
    requirements: list[str], python: str, *, exclude: frozenset[str] = frozenset()
) -> list[LockedRequirement]:
    """Ask pip which files it would install (``--dry-run --report``), with their hashes."""
    result = subprocess.run(
        [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--report", "-", *requirements],
        capture_output=True,
        text=True,
        env=_resolve_env(),
    )  # fmt: skip
    if result.returncode != 0:
        raise classify_pip_failure(result.stderr + result.stdout, what="resolving the lock")
    report = json.loads(result.stdout)
    locked = []
    for item in report["install"]:
        name = normalize(item["metadata"]["name"])
        if name in exclude:
            continue
        info = item["download_info"]
        hashes = info.get("archive_info", {}).get("hashes", {})
        digest = hashes.get("sha256") or info.get("archive_info", {}).get("hash", "=").split("=")[1]
        locked.append(LockedRequirement(name, item["metadata"]["version"], (digest,)))
    return locked


def write_locks(source: Path, *, python: str = sys.executable) -> tuple[Path, Path]:
    """Regenerate ``requirements.lock`` (from setup.cfg) and ``build-requirements.lock``."""
    runtime = _resolve(install_requires(source / "setup.cfg"), python, exclude=EXCLUDED)
    build = _resolve(list(BUILD_REQUIREMENTS), python)
    folder = source / "appliance" / "image"
    header = (
        "Generated by `python -m appliance.image lock`; do not edit.\n"
        "{what}\n"
        "Every file is checked against its hash when the image is built."
    )
    runtime_text = render_lock(
        runtime,
        header=header.format(
            what="The agent's runtime: setup.cfg install_requires and everything they need.\n"
            "Left out: pip (sqlite-utils lists it for its `install` command; the agent never runs it)."
        ),
    )
    build_text = render_lock(
        build,
        header=header.format(what="Build tools of the wheels: " + ", ".join(BUILD_REQUIREMENTS)),
    )
    (folder / RUNTIME_LOCK.name).write_text(runtime_text, encoding="utf-8")
    (folder / BUILD_LOCK.name).write_text(build_text, encoding="utf-8")
    return folder / RUNTIME_LOCK.name, folder / BUILD_LOCK.name
