"""The image build (issue 8): artefacts, contents, reproducibility, verification, clean failures.

Uses the session's ``built_image`` (tests/image/conftest.py).  Facts about the
image are checked with tools other than the code under test wherever one
exists: coreutils' ``sha256sum -c`` and OpenSSL for the signature, the host's
``dpkg-query --admindir`` for the package list, ``chroot`` for the agent.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.image.conftest import REPO, BuiltImage, image_cache, run_build, write_test_key

pytestmark = [pytest.mark.slow, pytest.mark.image]

VERSION = configparser.ConfigParser()
VERSION.read(REPO / "setup.cfg")
AGENT_VERSION = VERSION.get("metadata", "version")
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"


def verify(dist: Path, public_key: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance.image",
            "verify",
            str(dist),
            "--public-key",
            str(public_key),
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )


def in_image(image: BuiltImage, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run a program of the image in a chroot, writing nothing (the tree is shared)."""
    return subprocess.run(
        [CHROOT, str(image.rootfs_dir), *argv],
        env={
            "PATH": "/usr/bin:/bin",
            "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": "/nonexistent",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


# --- what is published ------------------------------------------------------------


def test_artefacts_are_published_hashed_and_signed(built_image: BuiltImage) -> None:
    names = sorted(p.name for p in built_image.dist.iterdir())
    base = f"renkei-appliance-{built_image.manifest['image']['version']}-amd64"
    assert names == sorted(
        [
            "SHA256SUMS",
            "SHA256SUMS.sig",
            "manifest.json",
            "manifest.txt",
            "sbom.cdx.json",
            f"{base}.rootfs.tar.zst",
            f"{base}.squashfs",
        ]
    )
    listed = [
        line.split()[1] for line in (built_image.dist / "SHA256SUMS").read_text().splitlines()
    ]
    assert sorted(listed) == sorted(set(names) - {"SHA256SUMS", "SHA256SUMS.sig"})
    # coreutils checks every hash; OpenSSL checks the Ed25519 signature.
    subprocess.run(
        ["sha256sum", "--check", "--strict", "SHA256SUMS"],
        cwd=built_image.dist,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(built_image.public_key), "-rawin",
         "-in", "SHA256SUMS", "-sigfile", "SHA256SUMS.sig"],
        cwd=built_image.dist,
        check=True,
        capture_output=True,
    )  # fmt: skip
    # The artefacts are what they say: zstd tar, SquashFS 4.0 dated SOURCE_DATE_EPOCH.
    subprocess.run(["zstd", "--test", "--quiet", str(built_image.rootfs_tar)], check=True)
    superblock = built_image.squashfs.read_bytes()[:12]
    assert superblock[:4] == b"hsqs"
    assert int.from_bytes(superblock[8:12], "little") == built_image.source_date_epoch


def test_manifest_lists_every_debian_package_with_its_version(built_image: BuiltImage) -> None:
    query = subprocess.run(
        ["dpkg-query", f"--admindir={built_image.rootfs_dir}/var/lib/dpkg", "--show",
         "--showformat=${db:Status-Abbrev}|${Package}|${Version}|${Architecture}\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout  # fmt: skip
    installed = {
        tuple(line.split("|")[1:]) for line in query.splitlines() if line.startswith("ii ")
    }
    listed = {
        (p["name"], p["version"], p["architecture"])
        for p in built_image.manifest["debian_packages"]
    }
    assert len(installed) > 100
    assert listed == installed
    assert all(p["source"] and p["source_version"] for p in built_image.manifest["debian_packages"])
    # Every package asked for in packages.txt is there, and the human-readable page lists them all.
    requested = set(built_image.manifest["build"]["requested_packages"])
    assert requested <= {name for name, _, _ in installed}
    text = (built_image.dist / "manifest.txt").read_text()
    for name, version, _ in installed:
        assert re.search(rf"^  {re.escape(name)} +{re.escape(version)} ", text, re.MULTILINE), name
    sbom = json.loads((built_image.dist / "sbom.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.5"
    purls = {c["purl"] for c in sbom["components"]}
    assert len(purls) == len(installed) + len(built_image.manifest["python_wheels"])


def test_manifest_lists_every_python_distribution_in_the_agent_venv(
    built_image: BuiltImage,
) -> None:
    manifest = built_image.manifest
    assert manifest["agent"]["version"] == AGENT_VERSION
    assert manifest["build"]["source_date_epoch"] == built_image.source_date_epoch
    site = next(
        (built_image.rootfs_dir / "opt/renkei/releases" / AGENT_VERSION / "lib").glob(
            "python3*/site-packages"
        )
    )
    installed = set()
    for info in site.glob("*.dist-info"):
        fields = dict(
            line.split(": ", 1)
            for line in (info / "METADATA").read_text().splitlines()
            if ": " in line and not line.startswith(" ")
        )
        installed.add((re.sub(r"[-_.]+", "-", fields["Name"]).lower(), fields["Version"]))
    listed = {(w["name"], w["version"]) for w in manifest["python_wheels"]}
    assert listed == installed
    assert ("renkei", AGENT_VERSION) in listed
    assert all(re.fullmatch(r"[0-9a-f]{64}", w["sha256"]) for w in manifest["python_wheels"])
    # Pinned direct dependencies are installed at exactly their setup.cfg versions.
    for line in VERSION.get("options", "install_requires").split():
        name, version = line.split("==")
        assert (re.sub(r"[-_.]+", "-", name).lower(), version) in installed, line


def test_no_compilers_package_manager_caches_or_build_host_secrets(built_image: BuiltImage) -> None:
    root = built_image.rootfs_dir
    names = {p["name"] for p in built_image.manifest["debian_packages"]}
    assert not {
        n
        for n in names
        if re.fullmatch(
            r"(gcc|g\+\+|cpp|clang|tcc|make|binutils|build-essential|apt|libc6-dev)(-[\d.]+)?", n
        )
    }
    for path in (
        "usr/bin/gcc",
        "usr/bin/cc",
        "usr/bin/c++",
        "usr/bin/make",
        "usr/bin/apt",
        "usr/bin/apt-get",
        "usr/bin/ld",
    ):
        assert not (root / path).exists() and not (root / path).is_symlink(), path
    assert not (root / "var/lib/apt").exists() and not (root / "var/cache/apt").exists()
    assert not list(root.glob("var/cache/**/*.deb"))
    assert not list(root.glob("opt/renkei/releases/*/lib/python3*/site-packages/pip"))
    assert not list(root.glob("etc/ssh/ssh_host_*")), (
        "SSH host keys made at build time would be shared"
    )
    assert (root / "etc/machine-id").read_bytes() == b""
    rules = (root / "etc/usbguard/rules.conf").read_text().splitlines()
    assert [r for r in rules if r.strip() and not r.lstrip().startswith("#")] == [], (
        "the build host's USB devices"
    )
    assert (root / "etc/hostname").read_text() == "renkei\n"
    assert "nameserver" not in (root / "etc/resolv.conf").read_text()
    logs = [p for p in (root / "var/log").rglob("*") if p.is_file() and p.stat().st_size]
    assert logs == []


def test_agent_is_installed_and_runs_inside_the_image(built_image: BuiltImage) -> None:
    root = built_image.rootfs_dir
    assert os.readlink(root / "opt/renkei/current") == f"releases/{AGENT_VERSION}"
    for command in ("renkei-agent", "renkei-provision"):
        assert os.readlink(root / "usr/bin" / command) == f"/opt/renkei/current/bin/{command}"
    version = in_image(built_image, "/usr/bin/renkei-agent", "--version")
    assert version.returncode == 0, version.stderr
    assert AGENT_VERSION in version.stdout
    python = f"/opt/renkei/releases/{AGENT_VERSION}/bin/python"
    probe = in_image(
        built_image,
        python,
        "-c",
        "import sys, common.juki._scan, smartcard.scard, appliance.agent.cli, provisioning.cli;"
        "print(sys.prefix, common.juki._scan.__file__)",
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.startswith(f"/opt/renkei/releases/{AGENT_VERSION} ")
    assert probe.stdout.strip().endswith(".so")  # the C extension, not the Python fallback
    assert in_image(built_image, "/usr/bin/renkei-provision", "--help").returncode == 0
    # Byte code is hash-based (PEP 552, flags 0b11): valid whatever the file times.
    pyc = next(
        (root / "opt/renkei/releases" / AGENT_VERSION).glob(
            "lib/python3*/site-packages/appliance/agent/__pycache__/cli.*.pyc"
        )
    )
    assert int.from_bytes(pyc.read_bytes()[4:8], "little") == 0b11


# --- reproducible -------------------------------------------------------------------


def test_a_second_build_is_byte_identical(built_image: BuiltImage, tmp_path: Path) -> None:
    dist = tmp_path / "dist" / "image"
    result = run_build(
        built_image.source,
        dist,
        key=built_image.key,
        sde=built_image.source_date_epoch,
        cache=built_image.cache,
        log=tmp_path / "build.log",
    )
    assert result.returncode == 0, (tmp_path / "build.log").read_text()[-3000:]
    first = (built_image.dist / "SHA256SUMS").read_text()
    second = (dist / "SHA256SUMS").read_text()
    assert second == first, f"artefacts differ between two builds:\n{first}\n{second}"
    assert (dist / "SHA256SUMS.sig").read_bytes() == (
        built_image.dist / "SHA256SUMS.sig"
    ).read_bytes()


# --- verify -------------------------------------------------------------------------


def _copy_dist(image: BuiltImage, dest: Path) -> Path:
    """A copy whose big files are hard links (never written: tampering replaces a file)."""
    dest.mkdir()
    for path in image.dist.iterdir():
        os.link(path, dest / path.name)
    return dest


def _replace(path: Path, data: bytes) -> None:
    path.unlink()  # break the hard link before writing
    path.write_bytes(data)


def test_verify_accepts_the_image_and_refuses_a_tampered_one(
    built_image: BuiltImage, tmp_path: Path
) -> None:
    good = verify(built_image.dist, built_image.public_key, "--json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["ok"] is True

    # One byte of the tarball flipped.
    flipped = _copy_dist(built_image, tmp_path / "flipped")
    tarball = flipped / built_image.rootfs_tar.name
    data = bytearray(tarball.read_bytes())
    data[len(data) // 2] ^= 0x01
    _replace(tarball, bytes(data))
    refused = verify(flipped, built_image.public_key)
    assert refused.returncode == 1
    assert built_image.rootfs_tar.name in refused.stderr and "verify.hash" in refused.stderr

    # SHA256SUMS altered to match the flipped tarball: the signature no longer holds.
    sums = flipped / "SHA256SUMS"
    text = sums.read_text()
    digest = subprocess.run(
        ["sha256sum", str(tarball)], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    line = next(line for line in text.splitlines() if line.endswith(tarball.name))
    _replace(sums, text.replace(line, f"{digest}  {tarball.name}").encode())
    altered = verify(flipped, built_image.public_key)
    assert altered.returncode == 1
    assert "verify.signature" in altered.stderr

    # The untouched image against another key.
    other = write_test_key(tmp_path / "other-key.pem")
    wrong_key = verify(built_image.dist, other)
    assert wrong_key.returncode == 1 and "verify.signature" in wrong_key.stderr

    # A listed file missing.
    missing = _copy_dist(built_image, tmp_path / "missing")
    (missing / built_image.squashfs.name).unlink()
    gone = verify(missing, built_image.public_key)
    assert gone.returncode == 1 and built_image.squashfs.name in gone.stderr


# --- clean failures -----------------------------------------------------------------


def _failed_build(
    tmp_path: Path, *, extra: tuple[str, ...] = (), netns: str | None = None
) -> tuple[int, str, Path]:
    key = tmp_path / "key.pem"
    write_test_key(key)
    dist = tmp_path / "dist" / "image"
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        [*(["ip", "netns", "exec", netns] if netns else []),
         sys.executable, "-m", "appliance.image", "build", "--quiet", "--source", str(REPO),
         "--dist", str(dist), "--key", str(key), "--source-date-epoch", "1700000000",
         "--cache", str(image_cache()), "--work-dir", str(work), *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(work)},
    )  # fmt: skip
    return result.returncode, result.stderr, tmp_path


def _nothing_left(tmp_path: Path) -> None:
    assert not (tmp_path / "dist").exists() or list((tmp_path / "dist").iterdir()) == []
    # The work folder is gone; only the failed build's log is kept (and named in the message).
    left = sorted(p.name for p in (tmp_path / "work").iterdir())
    assert all(name.endswith(".log") for name in left), left


def test_a_missing_package_fails_naming_it_and_publishes_nothing(tmp_path: Path) -> None:
    name = f"renkei-no-such-package-{uuid.uuid4().hex[:6]}"
    status, stderr, _ = _failed_build(tmp_path, extra=("--extra-package", name))
    assert status == 3, stderr
    assert "build.package_missing" in stderr and name in stderr
    _nothing_left(tmp_path)


def test_network_down_fails_clearly_and_publishes_nothing(tmp_path: Path) -> None:
    if not shutil.which("ip"):
        pytest.fail("ip (iproute2) is needed to make a network namespace")
    netns = f"renkei-img-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        status, stderr, _ = _failed_build(tmp_path, netns=netns)
    finally:
        subprocess.run(["ip", "netns", "delete", netns], check=False)
    assert status == 4, stderr
    assert "build.network" in stderr and "cannot reach" in stderr
    _nothing_left(tmp_path)
