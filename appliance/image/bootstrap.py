"""The Debian part of the build: mmdebstrap's command line, and what its failures mean.

Why ``--variant=essential`` and not ``minbase``: minbase adds apt and its
dependencies (gpgv, the archive keyring, libapt).  The appliance is never
upgraded package by package — a new image or a new agent release (issue 12)
replaces what is there — so apt would only be a way to install software on
a terminal that must not get any.  mmdebstrap resolves and installs the
``--include`` packages with the *host's* apt, so none is needed inside.

Why the ``merged-usr`` hook: without it, bookworm's init-system-helpers pulls
``usrmerge``, which pulls perl (≈ 50 MB) just to convert a layout mmdebstrap
can create merged in the first place.

Why a simulated run first (``--simulate``, in parallel with the wheel build):
a misspelt or vanished package is reported in seconds, before anything is
downloaded, and the mirror's reachability is known at the same time.

Downloaded .deb files are kept in ``<cache>/debs`` between builds (copied in
by a setup hook, out by a customize hook, under ``flock``): apt still checks
every one against the signed Release/Packages files, so the cache saves
downloads without weakening anything or changing the result.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from .errors import EXIT_NETWORK, EXIT_PACKAGE, BuildError

__all__ = [
    "MIRROR",
    "SECURITY_MIRROR",
    "SUITE",
    "classify_failure",
    "mmdebstrap_argv",
    "shows_progress",
    "sources",
]

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
MERGED_USR_HOOKS = "/usr/share/mmdebstrap/hooks/merged-usr"
# dpkg without fsync while the tree is built (the tree is packed afterwards, and a
# crash means a new build anyway): halves the install time.  The hook fetches
# eatmydata from the mirror into the chroot and removes it again.
EATMYDATA_HOOKS = "/usr/share/mmdebstrap/hooks/eatmydata"
# Documentation and translations nobody reads on the appliance; copyright files stay.
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
)


def sources(suite: str = SUITE, mirror: str = MIRROR, security: str = SECURITY_MIRROR) -> list[str]:
    """The release, its stable updates and its security updates (one-line sources.list entries)."""
    return [
        f"deb {mirror} {suite} main",
        f"deb {mirror} {suite}-updates main",
        f"deb {security} {suite}-security main",
    ]


def mmdebstrap_argv(
    *,
    root: Path,
    packages: Sequence[str],
    mirrors: Sequence[str],
    suite: str = SUITE,
    deb_cache: Path | None = None,
    customize: str | None = None,
    simulate: bool = False,
) -> list[str]:
    """The mmdebstrap command line (root mode, directory output).

    ``customize`` is a shell command run as the last customize hook, with the
    chroot as ``$1``; it must not be given with ``simulate``.
    """
    argv = [
        "mmdebstrap",
        "--mode=root",
        "--format=directory",
        "--variant=essential",
        "--architectures=amd64",
        f"--include={','.join(packages)}",
        f"--hook-dir={MERGED_USR_HOOKS}",
        *(() if simulate else (f"--hook-dir={EATMYDATA_HOOKS}",)),
        '--aptopt=Acquire::Retries "1"',
        '--aptopt=Acquire::http::Timeout "30"',
        '--aptopt=Acquire::Languages "none"',
        *(f"--dpkgopt={option}" for option in DPKG_EXCLUDES),
    ]
    if simulate:
        argv.append("--simulate")
    elif deb_cache is not None:
        cache = shlex.quote(str(deb_cache))
        lock = shlex.quote(str(deb_cache / ".lock"))
        argv += [
            "--skip=essential/unlink",
            '--setup-hook=mkdir -p "$1/var/cache/apt/archives"',
            f'--setup-hook=flock --shared {lock} find {cache} -maxdepth 1 -name "*.deb" '
            f'-exec cp --reflink=auto -t "$1/var/cache/apt/archives/" {{}} +',
            f'--customize-hook=flock {lock} find "$1/var/cache/apt/archives" -maxdepth 1 '
            f'-name "*.deb" -exec cp --reflink=auto --update -t {cache} {{}} +',
        ]
    if customize is not None:
        if simulate:
            raise ValueError("customize hook with simulate")
        argv.append(f"--customize-hook={customize}")
    return [*argv, suite, str(root), *mirrors]


def shows_progress(line: str) -> bool:
    """Lines worth showing on the terminal: mmdebstrap's and our own I:/W:/E: lines."""
    return line.startswith(("I: ", "W: ", "E: "))


def classify_failure(output: str) -> BuildError:
    """Turn mmdebstrap's output into a :class:`BuildError` that names the cause.

    Checked in this order: our customize step's own error line, a missing
    package (named), the network (the mirror named), anything else (the last
    lines of the log).
    """
    ours = re.search(r"^E: renkei: ([a-z_.]+): (.*(?:\n  .*)*)", output, re.MULTILINE)
    if ours:
        return BuildError(f"customizing the image: {ours[2].strip()}", code=ours[1])
    missing = re.findall(
        r"(?:Unable to locate package |Package ')([a-z0-9][a-z0-9+.-]+)",
        "\n".join(line for line in output.splitlines() if line.startswith("E: ")),
    )
    missing = sorted(set(missing))
    if missing:
        return BuildError(
            f"Debian package not found in bookworm: {', '.join(missing)}. Check the spelling in "
            "appliance/image/packages.txt (or --extra-package); nothing was built",
            code="build.package_missing",
            exit_status=EXIT_PACKAGE,
        )
    network = re.search(
        r"(Temporary failure resolving '[^']+'|Could not resolve '[^']+'|Unable to connect to \S+"
        r"|Could not connect to \S+|Network is unreachable|Connection timed out|Connection failed"
        r"|Failed to fetch \S+)",
        output,
    )
    if network:
        return BuildError(
            f"cannot reach the Debian mirror ({network[1]}); check the network or the "
            "proxy, then build again; nothing was built",
            code="build.network",
            exit_status=EXIT_NETWORK,
        )
    tail = "\n".join(output.rstrip().splitlines()[-15:])
    return BuildError(f"mmdebstrap failed:\n{tail}", code="build.mmdebstrap")
