"""The image build's pure parts, without building: lists, locks, checksums, verification, errors.

Fast (no mmdebstrap, no network): they run in every ``pytest`` and catch a bad
package list, a stale lock or a verifier that accepts too much long before the
slow build tests do.  Real mmdebstrap and pip messages are quoted as they were
printed on bookworm.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.image import bootstrap, rootfs
from appliance.image.checksums import file_sha256, parse_sums, render_sums
from appliance.image.errors import BuildError, VerifyError
from appliance.image.manifest import parse_dpkg_status
from appliance.image.packages import PACKAGES_FILE, load_packages, parse_packages
from appliance.image.signing import load_public_key
from appliance.image.verify import verify_dist
from appliance.image.wheels import (
    BUILD_LOCK,
    RUNTIME_LOCK,
    classify_pip_failure,
    install_requires,
    parse_lock,
    wheel_name_version,
)

REPO = Path(__file__).resolve().parents[2]

# --- the package list ------------------------------------------------------------------


def test_the_package_list_gives_a_reason_for_every_package() -> None:
    packages = load_packages(PACKAGES_FILE)
    names = [p.name for p in packages]
    assert len(names) == len(set(names))
    assert all(len(p.reason) > 10 for p in packages)
    for needed in (
        "systemd",
        "systemd-sysv",
        "chrony",
        "nftables",
        "pcscd",
        "libccid",
        "python3",
        "ca-certificates",
        "usbguard",
        "tzdata",
    ):
        assert needed in names
    for never in ("apt", "gcc", "make", "build-essential", "systemd-resolved", "systemd-timesyncd"):
        assert never not in names


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("systemd\n", "line 1: systemd has no reason"),
        ("chrony # time\nchrony # again\n", "line 2: chrony is already listed on line 1"),
        ("Systemd # capital\n", "not a Debian package name"),
        ("systemd udev # two\n", "one package per line"),
        ("# only comments\n\n", "lists no package"),
    ],
)
def test_a_bad_package_list_is_refused_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(BuildError, match=message) as caught:
        parse_packages(text)
    assert caught.value.exit_status == 2


def test_package_lines_may_carry_comments_and_blank_lines() -> None:
    parsed = parse_packages("# header\n\nchrony   # NTP client\n  nftables # firewall\n")
    assert [(p.name, p.reason, p.line) for p in parsed] == [
        ("chrony", "NTP client", 3),
        ("nftables", "firewall", 4),
    ]


# --- the wheel locks -------------------------------------------------------------------


def test_the_lock_pins_setup_cfg_dependencies_at_their_versions() -> None:
    locked = {r.name: r for r in parse_lock(RUNTIME_LOCK.read_text())}
    for line in install_requires(REPO / "setup.cfg"):
        name, version = line.split("==")
        key = name.lower().replace("_", "-")
        assert key in locked, (
            f"{name} missing from requirements.lock: run python -m appliance.image lock"
        )
        assert locked[key].version == version, name
    assert "pip" not in locked and "setuptools" not in locked
    assert {r.name for r in parse_lock(BUILD_LOCK.read_text())} == {"setuptools", "wheel"}


@pytest.mark.parametrize(
    "text",
    [
        "click==8.5.1\n",  # no hash
        "click>=8 --hash=sha256:" + "a" * 64 + "\n",
        "click==8.5.1 --hash=sha256:" + "a" * 63 + "\n",
        "click==8.5.1 --hash=md5:" + "a" * 32 + "\n",
    ],
)
def test_a_lock_line_without_an_exact_pin_and_a_sha256_is_refused(text: str) -> None:
    with pytest.raises(BuildError, match="line 1"):
        parse_lock(text)


def test_lock_lines_may_continue_with_backslashes() -> None:
    text = (
        "# c\nclick==8.5.1 \\\n    --hash=sha256:"
        + "a" * 64
        + " \\\n    --hash=sha256:"
        + "b" * 64
        + "\n"
    )
    (req,) = parse_lock(text)
    assert (req.name, req.version, req.hashes) == ("click", "8.5.1", ("a" * 64, "b" * 64))


def test_wheel_file_names() -> None:
    assert wheel_name_version("cryptography-50.0.2-cp311-abi3-manylinux_2_34_x86_64.whl") == (
        "cryptography",
        "50.0.2",
    )
    assert wheel_name_version("click_default_group-1.2.4-py2.py3-none-any.whl") == (
        "click-default-group",
        "1.2.4",
    )
    with pytest.raises(ValueError):
        wheel_name_version("pyscard-2.3.1.tar.gz")


# --- SHA256SUMS and verification ----------------------------------------------------------


def test_sums_round_trip_in_coreutils_format() -> None:
    entries = {"b.squashfs": "1" * 64, "a.tar.zst": "2" * 64}
    data = render_sums(entries)
    assert data == f"{'2' * 64}  a.tar.zst\n{'1' * 64}  b.squashfs\n".encode()
    assert parse_sums(data) == entries


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"zz  a\n",
        ("a" * 64 + "  ../etc/passwd\n").encode(),
        ("a" * 64 + "  sub/file\n").encode(),
        ("a" * 64 + "  x\n" + "b" * 64 + "  x\n").encode(),
        "ä".encode(),
    ],
)
def test_malformed_sums_are_refused(data: bytes) -> None:
    with pytest.raises(VerifyError) as caught:
        parse_sums(data)
    assert caught.value.code == "verify.format"


def _signed_dist(folder: Path, key: Ed25519PrivateKey) -> Path:
    folder.mkdir()
    (folder / "rootfs.tar.zst").write_bytes(os.urandom(4096))
    (folder / "manifest.json").write_text('{"image": 1}\n')
    sums = render_sums({p.name: file_sha256(p) for p in folder.iterdir()})
    (folder / "SHA256SUMS").write_bytes(sums)
    (folder / "SHA256SUMS.sig").write_bytes(key.sign(sums))
    return folder


def test_verify_accepts_a_signed_folder_and_reports_unlisted_files(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    dist = _signed_dist(tmp_path / "d", key)
    (dist / "notes.txt").write_text("added later")
    result = verify_dist(dist, key.public_key())
    assert set(result.files) == {"rootfs.tar.zst", "manifest.json"}
    assert result.unlisted == ["notes.txt"]


def test_verify_refuses_tampering_of_any_kind(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    dist = _signed_dist(tmp_path / "d", key)
    tarball = dist / "rootfs.tar.zst"
    data = bytearray(tarball.read_bytes())
    data[100] ^= 0x80
    tarball.write_bytes(bytes(data))
    with pytest.raises(VerifyError, match="rootfs.tar.zst: SHA-256 differs") as caught:
        verify_dist(dist, key.public_key())
    assert caught.value.code == "verify.hash"
    # Fixing SHA256SUMS to match breaks the signature.
    sums = render_sums({p.name: file_sha256(p) for p in (tarball, dist / "manifest.json")})
    (dist / "SHA256SUMS").write_bytes(sums)
    with pytest.raises(VerifyError) as caught:
        verify_dist(dist, key.public_key())
    assert caught.value.code == "verify.signature"
    # The original folder, another key.
    fresh = _signed_dist(tmp_path / "e", key)
    with pytest.raises(VerifyError) as caught:
        verify_dist(fresh, Ed25519PrivateKey.generate().public_key())
    assert caught.value.code == "verify.signature"
    # A truncated signature, and a missing one.
    (fresh / "SHA256SUMS.sig").write_bytes((fresh / "SHA256SUMS.sig").read_bytes()[:63])
    with pytest.raises(VerifyError, match="signature"):
        verify_dist(fresh, key.public_key())
    (fresh / "SHA256SUMS.sig").unlink()
    with pytest.raises(VerifyError, match="SHA256SUMS.sig is missing") as caught:
        verify_dist(fresh, key.public_key())
    assert caught.value.code == "verify.missing"
    # A listed file removed.
    other = _signed_dist(tmp_path / "f", key)
    (other / "manifest.json").unlink()
    with pytest.raises(VerifyError, match="manifest.json: missing"):
        verify_dist(other, key.public_key())


# --- what failures mean --------------------------------------------------------------------

MISSING = """\
I: installing remaining packages inside the chroot...
Reading package lists...
Building dependency tree...
E: Unable to locate package renkei-no-such-package
E: setup failed: E: apt-get --yes -oAPT::Get::Simulate=true install systemd renkei-no-such-package failed
E: mmdebstrap failed to run
"""
OFFLINE = """\
I: running apt-get update...
Err:1 http://deb.debian.org/debian bookworm InRelease
  Temporary failure resolving 'deb.debian.org'
E: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  Temporary failure resolving 'deb.debian.org'
E: Some index files failed to download. They have been ignored, or old ones used instead.
E: mmdebstrap failed to run
"""
CUSTOMIZE = """\
I: renkei: agent: checking it runs inside the image
E: renkei: build.agent: /usr/bin/renkei-agent --version exited with 1: ModuleNotFoundError: No module named 'x'
E: mmdebstrap failed to run
"""


@pytest.mark.parametrize(
    ("output", "code", "status", "named"),
    [
        (MISSING, "build.package_missing", 3, "renkei-no-such-package"),
        (OFFLINE, "build.network", 4, "deb.debian.org"),
        (CUSTOMIZE, "build.agent", 1, "No module named 'x'"),
        ("E: something else entirely\n", "build.mmdebstrap", 1, "something else entirely"),
    ],
)
def test_mmdebstrap_failures_are_named(output: str, code: str, status: int, named: str) -> None:
    error = bootstrap.classify_failure(output)
    assert (error.code, error.exit_status) == (code, status)
    assert named in error.message


@pytest.mark.parametrize(
    ("output", "code", "status"),
    [
        (
            "WARNING: Retrying (Retry(total=1...)) after connection broken by 'NewConnectionError(...: Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')'\nERROR: No matching distribution found for click==8.5.1\n",
            "build.network",
            4,
        ),
        (
            "ERROR: Could not find a version that satisfies the requirement clack==1 (from versions: none)\nERROR: No matching distribution found for clack==1\n",
            "build.package_missing",
            3,
        ),
        (
            "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n    click==8.5.1 from https://…\n",
            "build.wheels",
            1,
        ),
    ],
)
def test_pip_failures_are_named(output: str, code: str, status: int) -> None:
    error = classify_pip_failure(output, what="fetching")
    assert (error.code, error.exit_status) == (code, status)


def test_mmdebstrap_command_line() -> None:
    argv = bootstrap.mmdebstrap_argv(
        root=Path("/w/root"),
        packages=["systemd", "chrony"],
        mirrors=bootstrap.sources(),
        deb_cache=Path("/c"),
        customize="true",
    )
    assert argv[1:4] == ["--mode=root", "--format=directory", "--variant=essential"]
    assert "--include=systemd,chrony" in argv
    assert (
        f"--hook-dir={bootstrap.MERGED_USR_HOOKS}" in argv
        and f"--hook-dir={bootstrap.EATMYDATA_HOOKS}" in argv
    )
    assert argv[-5:] == ["bookworm", "/w/root", *bootstrap.sources()]
    assert argv.index("--customize-hook=true") > max(
        i for i, a in enumerate(argv) if "/c/.lock" in a
    )
    simulated = bootstrap.mmdebstrap_argv(
        root=Path("/w/s"), packages=["systemd"], mirrors=[], simulate=True
    )
    assert "--simulate" in simulated and not any(
        "hook" in a and "merged" not in a for a in simulated
    )


# --- the manifest ------------------------------------------------------------------------

STATUS = """\
Package: bash
Essential: yes
Status: install ok installed
Priority: required
Architecture: amd64
Source: bash (5.2.15-2)
Version: 5.2.15-2+b7
Description: GNU Bourne Again SHell
 Bash is an sh-compatible command language interpreter.
 .
 Package: not-a-field

Package: removed-thing
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: chrony
Status: install ok installed
Architecture: amd64
Version: 4.3-2+deb12u1
"""


def test_dpkg_status_to_packages() -> None:
    packages = parse_dpkg_status(STATUS)
    assert [p.to_json() for p in packages] == [
        {
            "name": "bash",
            "version": "5.2.15-2+b7",
            "architecture": "amd64",
            "source": "bash",
            "source_version": "5.2.15-2",
        },
        {
            "name": "chrony",
            "version": "4.3-2+deb12u1",
            "architecture": "amd64",
            "source": "chrony",
            "source_version": "4.3-2+deb12u1",
        },
    ]


# --- the tree ----------------------------------------------------------------------------


def test_forgetting_the_build_host_and_cleaning_up(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for name, text in {
        "etc/hostname": "buildhost\n",
        "etc/resolv.conf": "nameserver 192.0.2.1\n",
        "etc/usbguard/rules.conf": 'allow id 1d6b:0002 serial "host"\n',
        "etc/ssh/ssh_host_ed25519_key": "secret",
        "etc/ssh/sshd_config": "keep",
        "var/log/dpkg.log": "log",
        "var/cache/fontconfig/x.cache-8": "cache",
        "etc/passwd-": "backup",
        "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
        "etc/apt/sources.list": "deb …",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    rootfs.forget_build_host(root)
    rootfs.cleanup(root)
    assert (root / "etc/hostname").read_text() == "renkei\n"
    assert "192.0.2.1" not in (root / "etc/resolv.conf").read_text()
    assert (root / "etc/usbguard/rules.conf").read_bytes() == b""
    assert (
        not (root / "etc/ssh/ssh_host_ed25519_key").exists()
        and (root / "etc/ssh/sshd_config").exists()
    )
    assert (root / "var/log/dpkg.log").read_bytes() == b"" and not (root / "etc/passwd-").exists()
    assert not list((root / "var/cache/fontconfig").iterdir())
    assert (root / "etc/machine-id").read_bytes() == b""
    assert (root / "etc/apt/sources.list").exists()  # apt's files go only once mmdebstrap is done
    rootfs.cleanup(root, apt=True)
    assert not (root / "etc/apt/sources.list").exists()


def test_forbidden_paths_are_found(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    assert rootfs.find_forbidden(root) == []
    (root / "usr/bin/gcc-12").write_text("")
    (root / "etc/ssh").mkdir(parents=True)
    (root / "etc/ssh/ssh_host_rsa_key").write_text("")
    found = rootfs.find_forbidden(root)
    assert any(f.startswith("/usr/bin/gcc-12") for f in found)
    assert any(f.startswith("/etc/ssh/ssh_host_rsa_key") for f in found)


@pytest.mark.skipif(os.geteuid() != 0, reason="the overlay is copied root-owned")
def test_overlay_keeps_modes_minus_group_and_other_write(tmp_path: Path) -> None:
    overlay, root = tmp_path / "overlay", tmp_path / "root"
    (overlay / "etc/sudoers.d").mkdir(parents=True)
    (overlay / "etc/sudoers.d/rule").write_text("x")
    (overlay / "etc/sudoers.d/rule").chmod(0o440)
    (overlay / "usr/bin").mkdir(parents=True)
    (overlay / "usr/bin/tool").write_text("#!/bin/sh\n")
    (overlay / "usr/bin/tool").chmod(0o775)
    (root / "etc").mkdir(parents=True)
    (root / "etc").chmod(0o755)
    rootfs.copy_overlay(overlay, root)
    assert stat.S_IMODE((root / "etc/sudoers.d/rule").stat().st_mode) == 0o440
    assert stat.S_IMODE((root / "usr/bin/tool").stat().st_mode) == 0o755
    assert (root / "usr/bin/tool").stat().st_uid == 0
    assert stat.S_IMODE((root / "etc").stat().st_mode) == 0o755


def test_clamping_times(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.write_text("")
    new.write_text("")
    os.utime(old, (1_000, 1_000))
    (tmp_path / "link").symlink_to("missing-target")
    rootfs.clamp_mtimes(tmp_path, 2_000)
    assert old.stat().st_mtime == 1_000
    assert new.stat().st_mtime == 2_000
    assert os.lstat(tmp_path / "link").st_mtime == 2_000
    assert tmp_path.stat().st_mtime == 2_000


def test_every_image_command_has_help_with_an_example() -> None:
    from appliance.image.cli import main

    assert main.help and "Example" in main.help
    for name, command in main.commands.items():
        assert command.help and "Example" in command.help, name


def test_a_public_key_of_small_order_is_refused(tmp_path: Path) -> None:
    """Issue #18: under the identity point one fixed signature fits any SHA256SUMS."""
    identity = Ed25519PublicKey.from_public_bytes(bytes([1]) + bytes(31))
    pem = tmp_path / "identity.pub.pem"
    pem.write_bytes(identity.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(VerifyError, match="small order") as caught:
        load_public_key(pem)
    assert caught.value.code == "verify.key"
