"""Is the update repository healthy?  Versions, expiries, releases, and a real TUF client's verdict.

The strongest check of a repository is the one the terminals make, so
:func:`client_check` runs python-tuf's own client (``tuf.ngclient.Updater``)
from ``1.root.json`` — the root a new terminal ships with — over the files on
disk, as the API would serve them.  It walks every root version, then
timestamp, snapshot and targets, checking signatures, thresholds, versions,
hashes and expiry against the real clock: if it refuses, so will the fleet.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from packaging.version import Version
from tuf.api.exceptions import DownloadError, DownloadHTTPError, RepositoryError
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

from .update_repo import (
    METADATA_NAME,
    RepositoryFiles,
    UpdateError,
    UpdateRepository,
    published_versions,
)

__all__ = ["client_check", "repository_status"]


class LocalFetcher(FetcherInterface):
    """Serves the repository folder to an ngclient Updater as the API does (404 when absent)."""

    def __init__(self, files: RepositoryFiles):
        self.files = files

    def _fetch(self, url: str) -> Iterator[bytes]:
        name = url.rsplit("/", 1)[-1]
        if not METADATA_NAME.fullmatch(name) or not (self.files.metadata_dir / name).is_file():
            raise DownloadHTTPError(f"{name} not found", 404)
        return iter([self.files.read_metadata(name)])


def client_check(repo: UpdateRepository) -> str | None:
    """None when a fresh TUF client accepts the repository, else why it refuses.

    Target files are checked for presence and length only (hashing every
    release would make a status slow); the terminal checks the hash.
    """
    files = repo.files
    try:
        bootstrap = files.read_metadata("1.root.json")
    except OSError as exc:
        return f"1.root.json: {exc.strerror}"
    with tempfile.TemporaryDirectory(prefix="renkei-update-check-") as cache:
        try:
            updater = Updater(
                cache,
                "local:///metadata/",
                cache,
                "local:///targets/",
                fetcher=LocalFetcher(files),
                bootstrap=bootstrap,
            )
            updater.refresh()
            for name in repo.load().targets.signed.targets:
                info = updater.get_targetinfo(name)
                if info is None:
                    return f"{name}: not found by the client"
                path = files.target_path(f"{info.hashes.get('sha256')}.{name}")
                if not path.is_file() or path.stat().st_size != info.length:
                    return f"{path}: missing, or not {info.length} bytes"
        except (RepositoryError, DownloadError, UpdateError, ValueError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
    return None


def repository_status(
    repo: UpdateRepository, *, now: datetime, check: bool = True
) -> dict[str, Any]:
    """Versions, expiries and keys of each role, the releases, problems, the client's verdict.

    Raises :class:`~server.update_repo.UpdateError` when there is no
    repository (``update.not_initialised``) or a file cannot be read.
    """
    state = repo.load()
    versions = published_versions(state.targets.signed)
    releases = [
        {
            "name": name,
            "version": str(versions[name]) if name in versions else None,
            "length": info.length,
            "sha256": info.hashes.get("sha256"),
        }
        for name, info in state.targets.signed.targets.items()
    ]
    releases.sort(key=lambda r: versions.get(str(r["name"]), Version("0")))
    problems = repo.problems(state, now)
    result: dict[str, Any] = {
        "repository": str(repo.files.root),
        "roles": repo.role_summary(state),
        "releases": releases,
        "latest": releases[-1]["version"] if releases else None,
        "problems": problems,
    }
    if check:
        error = client_check(repo)
        result["client_check"] = {"ok": error is None, "error": error}
        if error is not None:
            problems.append(
                {
                    "code": "update.client_refuses",
                    "role": "-",
                    "message": f"a TUF client refuses this repository: {error}",
                }
            )
    return result
