"""The TUF side of the update: the trust anchor, ngclient over the signed transport, the releases offered.

Why the trust anchor is "the newer of two": the image ships a root
(``update.trusted_root``), and ngclient keeps every newer root it verified in
the state folder (``tuf/metadata/root.json``).  On the first run the shipped
one is all there is (ngclient copies it into the state folder); afterwards the
kept one is newer and is used, so a terminal follows key rotations; a newer
image's root wins over an old state folder.

Why the offered releases are read from ``targets.json`` on disk: ngclient has
no public way to list targets, and the file is what it stored after verifying
it in this run's refresh (top-level targets only: the repository has no
delegations).  :func:`classify` turns ngclient's errors into the update's
codes: verification (``update.rollback``, ``update.expired``,
``update.tampered``, ``update.signature``, ``update.verification``) or
transport.
"""

from __future__ import annotations

from pathlib import Path

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, Targets
from tuf.ngclient import Updater, UpdaterConfig

from .config import AgentConfig
from .errors import ConfigError
from .transport import HttpsTransport, TransportError
from .update_fetch import TransportFetcher, base_urls
from .update_version import Version, version_of_target

__all__ = ["classify", "open_repository", "releases_offered", "trusted_root"]


def _root_version(data: bytes) -> int:
    return Metadata[Root].from_bytes(data).signed.version


def trusted_root(shipped: Path, metadata_dir: Path) -> bytes:
    """The trust anchor: the newer of the shipped root and the one ngclient keeps (``root.json``).

    Raises :class:`ConfigError` when the shipped root is missing or is not
    root metadata: without it nothing can be trusted.
    """
    try:
        shipped_bytes = shipped.read_bytes()
        shipped_version = _root_version(shipped_bytes)
    except OSError as exc:
        raise ConfigError(
            f"update.trusted_root: {shipped}: cannot be read ({exc.strerror})",
            key="update.trusted_root",
        ) from None
    except (ValueError, TypeError, KeyError, tuf_errors.RepositoryError) as exc:
        raise ConfigError(
            f"update.trusted_root: {shipped}: not TUF root metadata ({exc})",
            key="update.trusted_root",
        ) from None
    try:
        kept = (metadata_dir / "root.json").read_bytes()
        if _root_version(kept) > shipped_version:
            return kept
    except (OSError, ValueError, TypeError, KeyError, tuf_errors.RepositoryError):
        pass  # none yet (first run), or unreadable: the shipped root is the anchor
    return shipped_bytes


def open_repository(config: AgentConfig, transport: HttpsTransport) -> Updater:
    """ngclient's Updater over ``transport``, its metadata kept in ``<state_dir>/tuf``."""
    metadata_dir = config.update.state_dir / "tuf" / "metadata"
    download_dir = config.update.state_dir / "tuf" / "download"
    metadata_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    download_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    bootstrap = trusted_root(config.update.trusted_root, metadata_dir)
    metadata_url, targets_url = base_urls(transport)
    return Updater(
        str(metadata_dir),
        metadata_url,
        str(download_dir),
        targets_url,
        fetcher=TransportFetcher(transport),
        config=UpdaterConfig(),
        bootstrap=bootstrap,
    )


def releases_offered(metadata_dir: Path, ignored: list[dict[str, str]]) -> dict[Version, str]:
    """Version → target name of every release in the verified top-level targets.

    Read from ``targets.json`` as ngclient stored it after verifying it in this
    run's refresh.  A target not of the contract's form (name, the custom
    ``renkei`` field naming the same version, format 1) is listed in
    ``ignored``, never installed.
    """
    targets = Metadata[Targets].from_bytes((metadata_dir / "targets.json").read_bytes()).signed
    offered: dict[Version, str] = {}
    for name, target in sorted(targets.targets.items()):
        version = version_of_target(name)
        custom = target.custom.get("renkei") if isinstance(target.custom, dict) else None
        reason = None
        if version is None:
            reason = "not a renkei-agent-<version>.tar.gz target"
        elif not isinstance(custom, dict) or custom.get("version") != version:
            reason = "its custom field does not name the same version"
        elif custom.get("format") != 1:
            reason = f"bundle format {custom.get('format')!r} is not 1"
        if reason is None:
            try:
                offered[Version.parse(version)] = name
                continue
            except ValueError as exc:
                reason = str(exc)
        ignored.append({"target": name, "reason": reason})
    return offered


def classify(exc: Exception) -> tuple[str, str, str]:
    """A refresh or download failure → (status, code, message): ``rejected`` or ``failed``."""
    codes = (
        (tuf_errors.ExpiredMetadataError, "update.expired"),
        (tuf_errors.BadVersionNumberError, "update.rollback"),
        (tuf_errors.LengthOrHashMismatchError, "update.tampered"),
        (tuf_errors.DownloadLengthMismatchError, "update.tampered"),
        (tuf_errors.UnsignedMetadataError, "update.signature"),
        (tuf_errors.RepositoryError, "update.verification"),
    )
    for kind, code in codes:
        if isinstance(exc, kind):
            return "rejected", code, f"the update repository failed verification: {exc}"
    cause = exc.__cause__ if isinstance(exc.__cause__, TransportError) else exc
    code = cause.code if isinstance(cause, TransportError) else "update.download"
    return "failed", code, f"the update repository could not be read: {cause}"
