"""``/api/v1/updates``: the TUF repository served to enrolled terminals, fetched by a real TUF client.

The client is ``tuf.ngclient.Updater`` with a fetcher that signs each GET as
a terminal and sends it through the Flask test client (the server's clock is
the test's; the TUF expiry checks use the real clock, so the repository is
signed with real time).  One test does the same over real HTTPS to gunicorn.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tuf.api import exceptions as tuf_errors

from server.enrollment import find_terminal, revoke_terminal
from server.storage import Storage
from server.update_keys import rotate_keys
from server.update_repo import RepositoryFiles, updates_dir
from tests.server.client import ServerProcess
from tests.server.conftest import API_A, api_enroll, api_init_data
from tests.server.update_support import (
    FlaskFetcher,
    HttpsFetcher,
    Repo,
    make_bundle,
    new_repo,
    updater,
    visible,
)

META = "/api/v1/updates/metadata"
TARGETS = "/api/v1/updates/targets"


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def repo(api_config, tmp_path: Path, now: datetime) -> Repo:
    return new_repo(api_config.data_dir, tmp_path / "media", now)


@pytest.fixture
def terminal(api_terminal):  # type: ignore[no-untyped-def]
    """A tester signing as an enrolled terminal of municipality A."""
    return api_terminal(API_A)[1]


def fetch(tester, path: str, **kwargs):  # type: ignore[no-untyped-def]
    """GET, read the body, close the answer (it holds the file the server opened)."""
    reply = tester.get(path, **kwargs)
    reply.get_data()
    reply.close()
    return reply


def _client(tmp_path: Path, tester, repo: Repo, cache: str = "terminal", **kwargs):  # type: ignore[no-untyped-def]
    return updater(tmp_path / cache, FlaskFetcher(tester, **kwargs), repo.bootstrap())


def test_a_terminal_finds_and_downloads_a_published_release(tmp_path, repo, terminal, now):
    bundle = make_bundle(tmp_path / "dist", "0.2.0")
    repo.publish(bundle, now)
    client = _client(tmp_path, terminal, repo)
    assert visible(client, "0.1.0", "0.2.0") == {"0.2.0"}
    info = client.get_targetinfo("renkei-agent-0.2.0.tar.gz")
    path = client.download_target(info, str(tmp_path / "got.tar.gz"))
    assert Path(path).read_bytes() == bundle.read_bytes()
    # what went over the wire: the root walk ended on a 404, consistent-snapshot names
    statuses = client._fetcher.statuses
    assert (f"{META}/2.root.json", 404) in statuses
    assert (f"{META}/timestamp.json", 200) in statuses
    version = int(now.timestamp())  # the signing time (server.update_repo.next_version)
    assert (f"{META}/{version}.snapshot.json", 200) in statuses
    assert (f"{META}/{version}.targets.json", 200) in statuses
    sha256 = info.hashes["sha256"]
    assert (f"{TARGETS}/{sha256}.renkei-agent-0.2.0.tar.gz", 200) in statuses


def test_answers_are_files_with_their_length_and_never_cached(tmp_path, repo, terminal, now):
    result = repo.publish(make_bundle(tmp_path, "0.2.0"), now)
    files = RepositoryFiles(updates_dir(repo.data_dir))
    reply = fetch(terminal, f"{META}/timestamp.json")
    assert reply.status_code == 200
    assert reply.mimetype == "application/json"
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.data == (files.metadata_dir / "timestamp.json").read_bytes()
    assert int(reply.headers["Content-Length"]) == len(reply.data)
    name = f"{result['sha256']}.renkei-agent-0.2.0.tar.gz"
    reply = fetch(terminal, f"{TARGETS}/{name}")
    assert reply.status_code == 200
    assert reply.mimetype == "application/gzip"
    assert reply.headers["Cache-Control"] == "no-store"
    assert int(reply.headers["Content-Length"]) == result["length"] == len(reply.data)
    assert reply.data == files.target_path(name).read_bytes()


@pytest.mark.parametrize(
    "path",
    [
        f"{META}/2.root.json",  # not (yet) there
        f"{META}/0.root.json",
        f"{META}/root.json.bak",
        f"{META}/mirrors.json",
        f"{META}/.timestamp.json.tmp-abc123",  # a write in progress
        f"{META}/1.root.JSON",
        f"{TARGETS}/{'0' * 64}.renkei-agent-9.9.9.tar.gz",
        f"{TARGETS}/{'A' * 64}.renkei-agent-0.2.0.tar.gz",
        f"{TARGETS}/renkei-agent-0.2.0.tar.gz",
        f"{TARGETS}/{'0' * 64}.other.tar.gz",
    ],
)
def test_names_outside_the_contract_or_absent_are_404(repo, terminal, path):
    reply = fetch(terminal, path)
    assert reply.status_code == 404
    assert reply.get_json()["error"]["code"] == "update.not_found"
    assert reply.headers["Cache-Control"] == "no-store"


def test_the_online_keys_cannot_be_reached(repo, terminal):
    key = next(repo.repo.files.keys_dir.glob("timestamp-*.pem"))
    pem = key.read_bytes()
    for path in (
        f"{META}/..%2Fkeys%2F{key.name}",
        f"{META}/../keys/{key.name}",
        f"/api/v1/updates/keys/{key.name}",
        f"{TARGETS}/..%2Fkeys%2F{key.name}",
    ):
        reply = fetch(terminal, path)
        assert reply.status_code == 404, path
        assert pem not in reply.data


def test_before_init_everything_is_404(terminal):
    reply = fetch(terminal, f"{META}/timestamp.json")
    assert reply.status_code == 404
    assert reply.get_json()["error"]["code"] == "update.not_found"


def test_an_unsigned_request_is_refused_and_the_client_stops(tmp_path, api, repo):
    reply = fetch(api, f"{META}/1.root.json", sign=False)
    assert reply.status_code == 401
    assert reply.get_json()["error"]["code"] == "sig.missing"
    client = _client(tmp_path, api, repo, sign=False)
    with pytest.raises(tuf_errors.DownloadHTTPError) as raised:
        client.refresh()
    assert raised.value.status_code == 401


def test_an_unenrolled_key_is_refused(api, repo):
    stranger = api.as_terminal(Ed25519PrivateKey.generate(), "t_00000000deadbeef")
    reply = fetch(stranger, f"{META}/timestamp.json")
    assert reply.status_code == 401
    assert reply.get_json()["error"]["code"] == "sig.unknown_key"


def test_a_revoked_terminal_is_refused(api, api_terminal, repo):
    record, tester = api_terminal(API_A)
    assert fetch(tester, f"{META}/timestamp.json").status_code == 200
    revoke_terminal(api.services.storage, record.terminal_id, now=api.clock())
    reply = fetch(tester, f"{META}/timestamp.json")
    assert reply.status_code == 401
    assert reply.get_json()["error"]["code"] == "auth.revoked"


def test_ping_answers_who_called_and_the_version_it_reports(api, api_terminal):
    record, tester = api_terminal(API_A)
    api.clock.advance(120)  # past the "last seen" resolution, so the contact is written
    reply = fetch(tester, "/api/v1/updates/ping", headers={"Renkei-Agent-Version": "0.2.0"})
    assert reply.status_code == 200
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.get_json() == {"terminal_id": record.terminal_id, "agent_version": "0.2.0"}
    assert find_terminal(api.services.storage, record.terminal_id).agent_version == "0.2.0"
    assert fetch(api, "/api/v1/updates/ping", sign=False).status_code == 401


# --- what a terminal must refuse, through the API -----------------------------------------------


def test_rollback_freeze_and_tampering_are_refused_by_the_client(tmp_path, repo, terminal, now):
    repo.publish(make_bundle(tmp_path, "0.1.0"), now - timedelta(days=2))
    with pytest.raises(tuf_errors.ExpiredMetadataError):  # frozen: the timestamp is a day old
        _client(tmp_path, terminal, repo).refresh()
    old_timestamp = (repo.metadata / "timestamp.json").read_bytes()
    repo.repo.refresh_timestamp(now=now)
    result = repo.publish(make_bundle(tmp_path, "0.2.0"), now)
    assert visible(_client(tmp_path, terminal, repo), "0.1.0", "0.2.0") == {"0.1.0", "0.2.0"}
    stored = repo.repo.files.target_path(f"{result['sha256']}.renkei-agent-0.2.0.tar.gz")
    good = stored.read_bytes()
    stored.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    client = _client(tmp_path, terminal, repo)
    info = client.get_targetinfo("renkei-agent-0.2.0.tar.gz")
    with pytest.raises(tuf_errors.LengthOrHashMismatchError):
        client.download_target(info, str(tmp_path / "got"))
    (repo.metadata / "timestamp.json").write_bytes(old_timestamp)  # replayed
    with pytest.raises(tuf_errors.BadVersionNumberError):
        _client(tmp_path, terminal, repo).refresh()


def test_root_rotation_then_update_through_the_api(tmp_path, repo, terminal, now):
    repo.publish(make_bundle(tmp_path, "0.1.0"), now)
    assert visible(_client(tmp_path, terminal, repo), "0.1.0") == {"0.1.0"}
    result = rotate_keys(
        repo.repo,
        ["root", "targets"],
        [repo.root_signer()],
        data_dir=repo.data_dir,
        offline_dir=repo.offline_dir,
        old_targets_signer=repo.targets_signer(),
        now=now,
    )
    assert result.root_version == 2
    repo.publish(make_bundle(tmp_path, "0.2.0"), now, key=Path(result.key_files["targets"][0]))
    client = _client(tmp_path, terminal, repo)
    assert visible(client, "0.1.0", "0.2.0") == {"0.1.0", "0.2.0"}
    trusted = json.loads((tmp_path / "terminal" / "root.json").read_text())
    assert trusted["signed"]["version"] == 2


# --- real HTTPS -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_update_over_https_from_gunicorn(tmp_path, now):
    config = api_init_data(tmp_path / "srv", tls=True)
    storage = Storage(config.database_url)
    record, key = api_enroll(storage, API_A, now)
    storage.dispose()
    repo = new_repo(config.data_dir, tmp_path / "media", now)
    bundle = make_bundle(tmp_path / "dist", "0.2.0", payload=os.urandom(300_000))
    repo.publish(bundle, now)
    with ServerProcess(config.data_dir, log_path=tmp_path / "gunicorn.log") as server:
        with server.client(key=key, key_id=record.terminal_id, agent_version="0.1.0") as https:
            client = updater(
                tmp_path / "terminal",
                HttpsFetcher(https),
                repo.bootstrap(),
                base=https.origin,
            )
            assert visible(client, "0.2.0") == {"0.2.0"}
            info = client.get_targetinfo("renkei-agent-0.2.0.tar.gz")
            path = client.download_target(info, str(tmp_path / "got.tar.gz"))
            assert Path(path).read_bytes() == bundle.read_bytes()
            reply = https.get("/api/v1/updates/ping")
            assert reply.json() == {"terminal_id": record.terminal_id, "agent_version": "0.1.0"}
            assert https.get(f"{META}/timestamp.json", sign=False).status == 401
