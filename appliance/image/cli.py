"""``python -m appliance.image``: build, verify, lock and release (a thin shell over build/verify/wheels/release).

Exit codes:

====  ============================================================================
0     built / verified / locked
1     the build failed at a stage (the message names it), or verification refused
      the artefacts (signature, hash, missing file)
2     usage: bad option, unreadable key, bad package list or lock
3     a Debian package or pinned wheel does not exist
4     the network: the Debian mirror or the Python package index cannot be reached
5     this machine cannot build: not root, or a tool is missing
====  ============================================================================
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from .build import BuildOptions, build_image, default_cache
from .errors import EXIT_USAGE, BuildError, ImageError, VerifyError
from .release import ReleaseOptions, build_release
from .signing import dev_key_path, fingerprint, load_public_key
from .verify import verify_dist
from .wheels import write_locks

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[2]


def _fail(exc: ImageError, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"ok": False, **exc.to_json()}, ensure_ascii=False))
    click.echo(f"appliance.image: {exc.code}: {exc.message}", err=True)
    sys.exit(exc.exit_status)


@click.group()
def main() -> None:
    """Build and verify the renkei appliance image (docs/image.md).

    Example:

        python -m appliance.image build && python -m appliance.image verify dist/image
    """


@main.command()
@click.option(
    "--dist",
    type=click.Path(path_type=Path),
    default=ROOT / "dist" / "image",
    show_default=True,
    help="Folder the artefacts are published to (replaced as a whole).",
)
@click.option(
    "--source",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=ROOT,
    show_default=True,
    help="Source tree to build from.",
)
@click.option(
    "--key",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Ed25519 private key (PEM) to sign with; default RENKEI_IMAGE_KEY, else the dev key.",
)
@click.option(
    "--source-date-epoch",
    type=int,
    default=None,
    help="Build time; default SOURCE_DATE_EPOCH, else HEAD's commit time.",
)
@click.option(
    "--image-version",
    default=None,
    help="Image version; default <agent version>-<YYYYMMDDhhmm of the build time>.",
)
@click.option(
    "--cache",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Download cache (.deb, PyPI files); default RENKEI_IMAGE_CACHE or /var/cache/renkei-image.",
)
@click.option(
    "--extra-package",
    "extra_packages",
    multiple=True,
    help="Add a Debian package to packages.txt's list (repeatable; for trials).",
)
@click.option(
    "--mirror", default=None, help="Debian mirror URL (default http://deb.debian.org/debian)."
)
@click.option("--security-mirror", default=None, help="Debian security mirror URL.")
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Parent of the temporary work folder (default TMPDIR); needs ~1.5 GB.",
)
@click.option(
    "--keep-work", is_flag=True, help="Keep the work folder (rootfs, wheels, log) for debugging."
)
@click.option(
    "--verbose/--quiet",
    "verbose",
    default=None,
    help="Show mmdebstrap's and each step's lines (default: when stderr is a terminal).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def build(
    dist: Path,
    source: Path,
    key: Path | None,
    source_date_epoch: int | None,
    image_version: str | None,
    cache: Path | None,
    extra_packages: tuple[str, ...],
    mirror: str | None,
    security_mirror: str | None,
    work_dir: Path | None,
    keep_work: bool,
    verbose: bool | None,
    as_json: bool,
) -> None:
    """Build the image as root with mmdebstrap; publish it to DIST only if every step worked.

    Progress goes to stderr.  Nothing is written to DIST on failure; the log of
    a failed build is kept in TMPDIR and named in the message.

    Example:

        sudo python -m appliance.image build --dist dist/image

        SOURCE_DATE_EPOCH=1700000000 RENKEI_IMAGE_KEY=/secure/image-key.pem \\
            python -m appliance.image build --json
    """
    if source_date_epoch is None and os.environ.get("SOURCE_DATE_EPOCH"):
        try:
            source_date_epoch = int(os.environ["SOURCE_DATE_EPOCH"])
        except ValueError:
            _fail(
                BuildError(
                    "SOURCE_DATE_EPOCH is not an integer",
                    code="build.config",
                    exit_status=EXIT_USAGE,
                ),
                as_json,
            )
    defaults = BuildOptions(source=source, dist=dist)
    options = BuildOptions(
        source=source.resolve(),
        dist=dist.resolve(),
        key=key,
        source_date_epoch=source_date_epoch,
        image_version=image_version,
        cache=cache or default_cache(),
        extra_packages=extra_packages,
        mirror=mirror or defaults.mirror,
        security_mirror=security_mirror or defaults.security_mirror,
        work_parent=work_dir,
        keep_work=keep_work,
        verbose=verbose,
    )
    try:
        result = build_image(options)
    except ImageError as exc:
        _fail(exc, as_json)
    except OSError as exc:
        _fail(BuildError(f"{exc.filename or ''}: {exc.strerror or exc}", code="build.io"), as_json)
    for warning in result.warnings:
        click.echo(f"W: {warning}", err=True)
    if result.dev_key:
        click.echo(
            "W: ******** signed with the DEVELOPMENT key — not for distribution ********", err=True
        )
    if as_json:
        click.echo(json.dumps({"ok": True, **result.to_json()}, ensure_ascii=False))
        return
    click.echo(f"built {result.image_version} in {result.seconds:.0f} s → {result.dist}")
    for name, digest in sorted(result.files.items()):
        click.echo(f"  {digest}  {name}")
    click.echo(f"signed by {result.key_fingerprint}")


def _default_public_key() -> Path:
    """RENKEI_IMAGE_PUBLIC_KEY, else the public half of this machine's signing key (warned)."""
    if os.environ.get("RENKEI_IMAGE_PUBLIC_KEY"):
        return Path(os.environ["RENKEI_IMAGE_PUBLIC_KEY"])
    local = Path(os.environ["RENKEI_IMAGE_KEY"]) if os.environ.get("RENKEI_IMAGE_KEY") else None
    local = local or dev_key_path()
    if not local.exists():
        raise VerifyError(
            "no key: give --public-key (the release's Ed25519 public key, PEM)",
            code="verify.key",
            exit_status=EXIT_USAGE,
        )
    what = "signing key" if os.environ.get("RENKEI_IMAGE_KEY") else "DEVELOPMENT key"
    click.echo(f"W: no --public-key: verifying against this machine's {what} {local}", err=True)
    return local


@main.command()
@click.argument("dist", type=click.Path(path_type=Path))
@click.option(
    "--public-key",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Ed25519 public key (PEM) the image must be signed with; default RENKEI_IMAGE_PUBLIC_KEY, else this machine's signing key (RENKEI_IMAGE_KEY or the dev key).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def verify(dist: Path, public_key: Path | None, as_json: bool) -> None:
    """Check SHA256SUMS.sig against the key, then every file listed in SHA256SUMS.

    Exit 0 when all hold; 1 (and what failed) when the signature, a hash or a
    file is wrong; 2 when the key cannot be read.  Get the public key from the
    ministry's release notice, never from the folder being checked.

    Example:

        python -m appliance.image verify dist/image --public-key renkei-image-key.pub.pem
    """
    try:
        public_key = public_key or _default_public_key()
        key = load_public_key(public_key)
        result = verify_dist(dist, key)
    except VerifyError as exc:
        if exc.code == "verify.key":
            exc.exit_status = EXIT_USAGE
        _fail(exc, as_json)
    if as_json:
        click.echo(json.dumps(result.to_json(), ensure_ascii=False))
        return
    click.echo(f"OK: {len(result.files)} files match SHA256SUMS, signed by {fingerprint(key)}")
    for name in result.unlisted:
        click.echo(f"W: {name} is not listed in SHA256SUMS: nothing vouches for it", err=True)


@main.command()
@click.option(
    "--source",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=ROOT,
    show_default=True,
)
def lock(source: Path) -> None:
    """Regenerate appliance/image/requirements.lock and build-requirements.lock (needs PyPI).

    Run after changing install_requires in setup.cfg; review the diff (every
    new hash is a new file the image will trust).

    Example:

        python -m appliance.image lock && git diff appliance/image/*.lock
    """
    try:
        runtime, build_lock = write_locks(source)
    except ImageError as exc:
        _fail(exc, False)
    click.echo(f"wrote {runtime} and {build_lock}")


@main.command()
@click.option(
    "--version",
    "version",
    default=None,
    help="Release version instead of setup.cfg's (test releases; e.g. 0.2.0).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=ROOT / "dist",
    show_default=True,
    help="Folder the bundle is written to (renkei-agent-<version>.tar.gz).",
)
@click.option(
    "--source",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=ROOT,
    show_default=True,
    help="Source tree to build from.",
)
@click.option(
    "--source-date-epoch",
    type=int,
    default=None,
    help="Build time; default SOURCE_DATE_EPOCH, else HEAD's commit time.",
)
@click.option(
    "--cache",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Download cache (PyPI files); default RENKEI_IMAGE_CACHE or /var/cache/renkei-image.",
)
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Parent of the temporary work folder (default TMPDIR).",
)
@click.option("--keep-work", is_flag=True, help="Keep the work folder for debugging.")
@click.option(
    "--verbose/--quiet",
    "verbose",
    default=None,
    help="Show each step's lines (default: when stderr is a terminal).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def release(
    version: str | None,
    out: Path,
    source: Path,
    source_date_epoch: int | None,
    cache: Path | None,
    work_dir: Path | None,
    keep_work: bool,
    verbose: bool | None,
    as_json: bool,
) -> None:
    """Build the agent's release bundle for the update server (docs/updates.md).

    The bundle is renkei-agent-<version>.tar.gz: release.json and the agent's
    virtual environment for /opt/renkei/releases/<version>, built from the
    same hash-checked wheels as the image.  Publish it with `renkei-server
    publish-update`.  Needs Debian bookworm's python3 (3.11), python3-pip-whl
    and the wheels' build tools; no root.  Nothing is written to OUT on failure.

    Example:

        python -m appliance.image release                    # make release

        python -m appliance.image release --version 0.2.0 --out /tmp/rel --json
    """
    if source_date_epoch is None and os.environ.get("SOURCE_DATE_EPOCH"):
        try:
            source_date_epoch = int(os.environ["SOURCE_DATE_EPOCH"])
        except ValueError:
            _fail(
                BuildError(
                    "SOURCE_DATE_EPOCH is not an integer",
                    code="build.config",
                    exit_status=EXIT_USAGE,
                ),
                as_json,
            )
    options = ReleaseOptions(
        source=source.resolve(),
        out=out.resolve(),
        cache=cache or default_cache(),
        version=version,
        source_date_epoch=source_date_epoch,
        work_parent=work_dir,
        keep_work=keep_work,
        verbose=verbose,
    )
    try:
        result = build_release(options)
    except ImageError as exc:
        _fail(exc, as_json)
    except OSError as exc:
        _fail(BuildError(f"{exc.filename or ''}: {exc.strerror or exc}", code="build.io"), as_json)
    if as_json:
        click.echo(json.dumps({"ok": True, **result.to_json()}, ensure_ascii=False))
        return
    click.echo(f"built renkei-agent {result.version} in {result.seconds:.0f} s → {result.bundle}")
    click.echo(f"  {result.sha256}  {result.bundle.name} ({result.length} bytes)")
