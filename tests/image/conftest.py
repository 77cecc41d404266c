"""The ``built_image`` fixture: the appliance image, built once per test run and shared.

Every test that needs the image asks for ``built_image`` and gets a
:class:`BuiltImage`::

    def test_something(built_image):
        built_image.dist          # folder: SHA256SUMS, SHA256SUMS.sig, manifest.json/.txt,
                                  #         sbom.cdx.json, the tarball and the SquashFS
        built_image.rootfs_tar    # …-amd64.rootfs.tar.zst
        built_image.squashfs      # …-amd64.squashfs
        built_image.rootfs_dir    # the tarball extracted (owners, modes, xattrs kept)
        built_image.manifest      # manifest.json, parsed
        built_image.public_key    # PEM public key it was signed with (a throw-away test key)

**Treat every path as read-only.**  ``rootfs_dir`` is shared by all tests of
the run (both xdist workers): boot it with ``systemd-nspawn --volatile=overlay``
(or ``--read-only``), or copy it; never write into it.

**One build per test run**, whatever the number of xdist workers: the first
worker to ask builds (holding a file lock), the others wait on the lock and
reuse the result; a failed build is recorded and fails every later request at
once with the same message.  The run's folder is
``$RENKEI_IMAGE_TEST_DIR/<run id>`` (default ``/var/tmp/renkei-image-tests``),
and folders of finished runs are removed by the next run.  To work on a test
against an image built before, set ``RENKEI_IMAGE_TEST_RUN`` to that run's
folder name: it is reused as long as no run removed it.  The image is built
from a snapshot of the source tree taken when the build starts
(``built_image.source``), so edits made while the tests run do not change it;
tests that build again (reproducibility) use the same snapshot, the same
``SOURCE_DATE_EPOCH`` and the same download cache.

Downloads (.deb files, PyPI files) are cached in ``$RENKEI_IMAGE_CACHE``
(default ``/var/cache/renkei-image``) across runs.  The build needs root,
mmdebstrap and the network (deb.debian.org, PyPI): when they are missing the
tests FAIL (``make test`` installs the tools) — set ``RENKEI_SKIP_IMAGE=1`` to
skip every image test instead.  A cold build takes about 4 minutes on two
cores, a warm one about 3.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

REPO = Path(__file__).resolve().parents[2]
BASE = Path(os.environ.get("RENKEI_IMAGE_TEST_DIR") or "/var/tmp/renkei-image-tests")
BUILD_TIMEOUT = 1800
_RUN_ID = (
    os.environ.get("RENKEI_IMAGE_TEST_RUN")
    or os.environ.get("PYTEST_XDIST_TESTRUNUID")
    or f"solo-{uuid.uuid4().hex[:12]}"
)
STALE_AFTER = 600  # seconds: a run folder nobody holds and older than this is removed


@dataclass(frozen=True)
class BuiltImage:
    dist: Path
    rootfs_tar: Path
    squashfs: Path
    rootfs_dir: Path
    manifest: dict
    public_key: Path
    key: Path
    source: Path
    source_date_epoch: int
    cache: Path
    run_dir: Path
    seconds: float


def skip_or_require() -> None:
    """Skip when ``RENKEI_SKIP_IMAGE=1``; otherwise fail loudly if this machine cannot build."""
    if os.environ.get("RENKEI_SKIP_IMAGE") == "1":
        pytest.skip("RENKEI_SKIP_IMAGE=1")
    if os.geteuid() != 0:
        pytest.fail("the image build needs root (or set RENKEI_SKIP_IMAGE=1)")
    missing = [
        t for t in ("mmdebstrap", "mksquashfs", "zstd", "chroot", "flock") if not shutil.which(t)
    ]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `make test` (or set RENKEI_SKIP_IMAGE=1)")


def image_cache() -> Path:
    return Path(os.environ.get("RENKEI_IMAGE_CACHE") or "/var/cache/renkei-image")


def source_date_epoch() -> int:
    """HEAD's commit time, as the build uses by default (the snapshot has no .git)."""
    out = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%ct"], capture_output=True, text=True
    ).stdout.strip()
    return int(out) if out.isdigit() else 1700000000


def write_test_key(path: Path) -> Path:
    """A throw-away Ed25519 key (PEM private at ``path``, public at ``path.pub.pem``)."""
    key = Ed25519PrivateKey.generate()
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    public = path.with_name(path.name + ".pub.pem")
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return public


def run_build(
    source: Path,
    dist: Path,
    *,
    key: Path,
    sde: int,
    cache: Path,
    log: Path,
    extra: tuple[str, ...] = (),
    netns: str | None = None,
    timeout: float = BUILD_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """``python -m appliance.image build --json …`` as a child process; its stderr goes to ``log``."""
    argv = [
        sys.executable, "-m", "appliance.image", "build", "--json", "--quiet",
        "--source", str(source), "--dist", str(dist), "--key", str(key),
        "--source-date-epoch", str(sde), "--cache", str(cache), *extra,
    ]  # fmt: skip
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    with log.open("w", encoding="utf-8") as err:
        return subprocess.run(
            argv,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )


def _remove_stale_runs(keep: Path) -> None:
    if not BASE.is_dir():
        return
    for folder in BASE.iterdir():
        if folder == keep or not folder.is_dir():
            continue
        if time.time() - folder.stat().st_mtime < STALE_AFTER:
            continue
        alive = folder / "alive"
        try:
            with alive.open("a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a test run still uses it
        except OSError:
            pass
        subprocess.run(["rm", "-rf", "--one-file-system", str(folder)], check=False)


def _build_once(run_dir: Path) -> BuiltImage:
    done, failed = run_dir / "done.json", run_dir / "failed.txt"
    if failed.exists():
        pytest.fail(f"the image build of this run failed (see {run_dir}):\n{failed.read_text()}")
    if not done.exists():
        _remove_stale_runs(run_dir)
        source = run_dir / "source"
        if source.exists():
            shutil.rmtree(source)
        from appliance.image.wheels import copy_source

        copy_source(REPO, source)
        key = run_dir / "test-key.pem"
        public = write_test_key(key)
        sde = source_date_epoch()
        dist = run_dir / "dist" / "image"
        started = time.monotonic()
        result = run_build(
            source, dist, key=key, sde=sde, cache=image_cache(), log=run_dir / "build.log"
        )
        seconds = time.monotonic() - started
        if result.returncode != 0:
            tail = "\n".join((run_dir / "build.log").read_text().splitlines()[-25:])
            failed.write_text(f"exit {result.returncode}\n{tail}\n")
            pytest.fail(f"the image build failed (exit {result.returncode}):\n{tail}")
        built = json.loads(result.stdout)
        rootfs = run_dir / "rootfs"
        rootfs.mkdir()
        tarball = next(dist.glob("*.rootfs.tar.zst"))
        subprocess.run(
            ["tar", "--zstd", "-xpf", str(tarball), "-C", str(rootfs), "--numeric-owner",
             "--xattrs", "--xattrs-include=security.capability"],
            check=True,
        )  # fmt: skip
        done.write_text(
            json.dumps(
                {
                    "sde": sde,
                    "seconds": seconds,
                    "key": str(key),
                    "public_key": str(public),
                    "build": built,
                }
            )
        )
    info = json.loads(done.read_text())
    dist = run_dir / "dist" / "image"
    return BuiltImage(
        dist=dist,
        rootfs_tar=next(dist.glob("*.rootfs.tar.zst")),
        squashfs=next(dist.glob("*.squashfs")),
        rootfs_dir=run_dir / "rootfs",
        manifest=json.loads((dist / "manifest.json").read_text()),
        public_key=Path(info["public_key"]),
        key=Path(info["key"]),
        source=run_dir / "source",
        source_date_epoch=info["sde"],
        cache=image_cache(),
        run_dir=run_dir,
        seconds=info["seconds"],
    )


@pytest.fixture(scope="session")
def built_image() -> Iterator[BuiltImage]:
    """The image of this test run (see the module docstring): built by the first worker that asks."""
    skip_or_require()
    run_dir = BASE / _RUN_ID
    run_dir.mkdir(parents=True, exist_ok=True)
    alive = (run_dir / "alive").open("a")
    fcntl.flock(alive, fcntl.LOCK_SH)  # held for the session: this run's folder is in use
    try:
        with (run_dir / "build.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                image = _build_once(run_dir)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        yield image
    finally:
        alive.close()
