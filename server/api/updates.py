"""The TUF repository of agent releases, served to enrolled terminals only (docs/updates.md).

* ``GET /api/v1/updates/metadata/<name>`` — ``[N.]root|timestamp|snapshot|targets.json``;
* ``GET /api/v1/updates/targets/<name>`` — ``<sha256>.renkei-agent-<version>.tar.gz``;
* ``GET /api/v1/updates/ping`` — the signed ping a new release's self-test sends.

The files are written by ``renkei-server publish-update`` and
``update-timestamp`` (server.update_repo) and are sent as they are: TUF
metadata carries its own signatures, so the server only has to hand out
bytes.  Why behind the terminal signature anyway: the releases are the
ministry's software, not for anyone who reaches the server on LGWAN, and
each fetch then counts as the terminal's contact (with the agent version it
reports).  A name outside the two patterns is never looked up on disk (no
path can reach the keys folder); an absent file is ``404 update.not_found``,
which is how a TUF client learns that the root it has is the newest.
``Cache-Control: no-store`` everywhere: a cache in between must never serve
an old timestamp.
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Blueprint, Response, current_app, g, request
from werkzeug.wsgi import FileWrapper

from server.api import API_PREFIX, ApiError, limit_json_body
from server.app import services
from server.auth import AGENT_HEADER, authenticate
from server.update_repo import METADATA_NAME, TARGET_FILE_NAME, RepositoryFiles, updates_dir

bp = Blueprint("updates", __name__, url_prefix=f"{API_PREFIX}/updates")
bp.before_request(limit_json_body)
bp.before_request(authenticate)

#: Bytes per write when sending a release (as for batch files).
BLOCK = 256 * 1024


def _files() -> RepositoryFiles:
    return RepositoryFiles(updates_dir(services().config.data_dir))


def _not_found(kind: str, name: str) -> ApiError:
    return ApiError(404, "update.not_found", f"no update {kind} {name!r} on this server")


def _send(path: Path, mimetype: str, kind: str, name: str) -> Response:
    """The file with its length; opened first, so a file replaced meanwhile is sent whole."""
    try:
        handle = path.open("rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise _not_found(kind, name) from None
    size = os.fstat(handle.fileno()).st_size
    wrapper = request.environ.get("wsgi.file_wrapper")
    body = wrapper(handle, BLOCK) if wrapper is not None else FileWrapper(handle, BLOCK)
    response = current_app.response_class(body, mimetype=mimetype, direct_passthrough=True)
    response.content_length = size
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/metadata/<name>")
def metadata(name: str):
    if not METADATA_NAME.fullmatch(name):
        raise _not_found("metadata", name)
    return _send(_files().metadata_dir / name, "application/json", "metadata", name)


@bp.get("/targets/<name>")
def target(name: str):
    if not TARGET_FILE_NAME.fullmatch(name):
        raise _not_found("target", name)
    return _send(_files().target_path(name), "application/gzip", "target", name)


@bp.get("/ping")
def ping():
    response = current_app.json.response(
        {
            "terminal_id": g.terminal.terminal_id,
            "agent_version": request.headers.get(AGENT_HEADER) or None,
        }
    )
    response.headers["Cache-Control"] = "no-store"
    return response
