"""What the update tests share (no tests here): release bundles, a repository, real TUF clients.

The client is always python-tuf's own ``tuf.ngclient.Updater`` — what the
terminal runs — behind a small fetcher: straight from the repository folder
(:class:`FolderFetcher`, for the core), through the Flask test client signing
as a terminal (:class:`FlaskFetcher`), or over real HTTPS to gunicorn
(:class:`HttpsFetcher`).  Each answers an absent file with an HTTP 404 error,
as the server does, because that is how ngclient ends its walk over root
versions.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

from tuf.api.exceptions import DownloadHTTPError
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

from server.update_keys import init_repository
from server.update_repo import UpdateRepository, load_signer

METADATA_URL = "https://renkei.test/api/v1/updates/metadata/"
TARGETS_URL = "https://renkei.test/api/v1/updates/targets/"


def release_json(version: str, **changes: object) -> dict:
    document = {
        "format": 1,
        "version": version,
        "python": "3.11",
        "prefix": f"/opt/renkei/releases/{version}",
    }
    document.update(changes)
    return {k: v for k, v in document.items() if v is not None}


def make_bundle(
    folder: Path,
    version: str,
    *,
    name: str | None = None,
    document: dict | None = None,
    extra: Callable[[tarfile.TarFile], None] | None = None,
    payload: bytes = b"",
) -> Path:
    """A small ``renkei-agent-<version>.tar.gz`` shaped like ``make release``'s output."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"renkei-agent-{version}.tar.gz")

    def add(handle: tarfile.TarFile, member: str, data: bytes) -> None:
        info = tarfile.TarInfo(member)
        info.size = len(data)
        info.mode = 0o644
        handle.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w:gz") as handle:
        top = tarfile.TarInfo("release")
        top.type = tarfile.DIRTYPE
        top.mode = 0o755
        handle.addfile(top)
        body = json.dumps(document if document is not None else release_json(version))
        add(handle, "release/release.json", body.encode())
        add(handle, "release/bin/renkei-agent", b"#!/bin/sh\necho " + version.encode() + payload)
        link = tarfile.TarInfo("release/bin/python3")
        link.type = tarfile.SYMTYPE
        link.linkname = "/usr/bin/python3.11"  # as in a real venv
        handle.addfile(link)
        if extra is not None:
            extra(handle)
    return path


@dataclass
class Repo:
    """An initialised repository and the offline key files its ceremony wrote."""

    repo: UpdateRepository
    data_dir: Path
    offline_dir: Path
    root_key: Path
    targets_key: Path

    @property
    def metadata(self) -> Path:
        return self.repo.files.metadata_dir

    def bootstrap(self) -> bytes:
        return (self.metadata / "1.root.json").read_bytes()

    def targets_signer(self):  # type: ignore[no-untyped-def]
        return load_signer(self.targets_key)

    def root_signer(self):  # type: ignore[no-untyped-def]
        return load_signer(self.root_key)

    def publish(self, bundle: Path, now: datetime, key: Path | None = None) -> dict:
        return self.repo.publish(bundle, load_signer(key or self.targets_key), now=now)


def new_repo(data_dir: Path, offline_dir: Path, now: datetime) -> Repo:
    repo = UpdateRepository.for_data_dir(data_dir)
    result = init_repository(repo, data_dir=data_dir, offline_dir=offline_dir, now=now)
    return Repo(
        repo,
        data_dir,
        offline_dir,
        Path(result.key_files["root"][0]),
        Path(result.key_files["targets"][0]),
    )


class FolderFetcher(FetcherInterface):
    """Files straight from the repository folder, by the URL's last path segment."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.fetched: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = urlsplit(url).path
        kind, name = path.rstrip("/").split("/")[-2:]
        self.fetched.append(name)
        file = self.folder / ("metadata" if kind == "metadata" else "targets") / name
        if not file.is_file():
            raise DownloadHTTPError(f"{name}: 404", 404)
        return iter([file.read_bytes()])


class FlaskFetcher(FetcherInterface):
    """GET through the Flask test client, signed as a terminal (``tester`` is an ApiTester)."""

    def __init__(self, tester, *, sign: bool = True):  # type: ignore[no-untyped-def]
        self.tester = tester
        self.sign = sign
        self.statuses: list[tuple[str, int]] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = urlsplit(url).path
        reply = self.tester.get(path, sign=self.sign)
        data = reply.get_data()
        reply.close()  # the file the server opened
        self.statuses.append((path, reply.status_code))
        if reply.status_code != 200:
            raise DownloadHTTPError(f"{path}: {reply.status_code}", reply.status_code)
        return iter([data])


class HttpsFetcher(FetcherInterface):
    """GET over real HTTPS to gunicorn with tests.server.client.SigningClient."""

    def __init__(self, client):  # type: ignore[no-untyped-def]
        self.client = client

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = urlsplit(url).path
        reply = self.client.get(path)
        if reply.status != 200:
            raise DownloadHTTPError(f"{path}: {reply.status}", reply.status)
        return iter([reply.body])


def updater(
    cache: Path, fetcher: FetcherInterface, bootstrap: bytes, *, base: str = "https://renkei.test"
) -> Updater:
    """A terminal's TUF client with its own metadata cache folder."""
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "targets").mkdir(exist_ok=True)
    return Updater(
        str(cache),
        f"{base}/api/v1/updates/metadata/",
        str(cache / "targets"),
        f"{base}/api/v1/updates/targets/",
        fetcher=fetcher,
        bootstrap=bootstrap,
    )


def visible(client: Updater, *versions: str) -> set[str]:
    """Which of ``versions`` the client finds in the trusted targets (after a refresh)."""
    client.refresh()
    found = set()
    for version in versions:
        info = client.get_targetinfo(f"renkei-agent-{version}.tar.gz")
        if info is not None:
            assert info.custom == {"renkei": {"version": version, "format": 1}}
            found.add(version)
    return found
