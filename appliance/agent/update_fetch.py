"""python-tuf's fetcher over the agent's signed transport: the update repository only via the API.

Why not ngclient's own urllib3 fetcher: the repository is served to enrolled
terminals only (the same RFC 9421 signature as every other request), over the
pinned CA and the LGWAN DNS — exactly what :class:`~.transport.HttpsTransport`
already does.  So ngclient is given URLs under the transport's own API prefix
(:func:`base_urls`), and :class:`TransportFetcher` turns each back into an API
path and streams it through the transport.

Names are checked against the contract's patterns before anything is sent
(docs/updates.md): ngclient builds them from verified metadata, but a name we
never expect is never asked for.  A 403 or 404 becomes
``DownloadHTTPError`` (ngclient ends its walk through newer root versions on
those); every other failure is a ``DownloadError`` carrying the transport's
error as its cause.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import unquote

from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

from .transport import HttpsTransport, TransportError

__all__ = ["METADATA_NAME", "TARGET_NAME", "TransportFetcher", "base_urls"]

METADATA_NAME = re.compile(r"([1-9][0-9]{0,9}\.)?(root|timestamp|snapshot|targets)\.json")
TARGET_NAME = re.compile(r"[0-9a-f]{64}\.renkei-agent-[0-9A-Za-z.+-]{1,40}\.tar\.gz")
_KINDS = {"metadata": METADATA_NAME, "targets": TARGET_NAME}


def base_urls(transport: HttpsTransport) -> tuple[str, str]:
    """The metadata and target base URLs to give ngclient's ``Updater`` for ``transport``."""
    base = f"{transport.origin}{transport.prefix}/updates/"
    return base + "metadata/", base + "targets/"


class TransportFetcher(FetcherInterface):
    """Fetch ``…/updates/metadata/<name>`` and ``…/updates/targets/<name>`` through ``transport``."""

    def __init__(self, transport: HttpsTransport):
        self.transport = transport
        self._base = f"{transport.origin}{transport.prefix}"

    def api_path(self, url: str) -> str:
        """``https://host/…/api/v1/updates/metadata/1.root.json`` → ``/updates/metadata/1.root.json``.

        Raises ``DownloadError`` for any URL outside the two folders or a name
        the contract does not allow.
        """
        if not url.startswith(self._base + "/updates/"):
            raise exceptions.DownloadError(f"not an update repository URL: {url}")
        rest = url[len(self._base) + len("/updates/") :]
        kind, _, name = rest.partition("/")
        name = unquote(name)
        pattern = _KINDS.get(kind)
        if pattern is None or not pattern.fullmatch(name):
            raise exceptions.DownloadError(f"not a name the update repository serves: {rest!r}")
        return f"/updates/{kind}/{name}"

    def _fetch(self, url: str) -> Iterator[bytes]:
        path = self.api_path(url)
        try:
            chunks = self.transport.stream(path)
        except TransportError as exc:
            if exc.status in (403, 404):
                raise exceptions.DownloadHTTPError(str(exc), exc.status) from exc
            raise exceptions.DownloadError(f"{path}: {exc}") from exc
        return _reading(path, chunks)


def _reading(path: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The body's chunks; a line that breaks mid-body is a ``DownloadError`` too."""
    try:
        yield from chunks
    except TransportError as exc:
        raise exceptions.DownloadError(f"{path}: {exc}") from exc
