"""The update repository's core, checked by python-tuf's own client reading the files.

Every verdict on a repository comes from ``tuf.ngclient.Updater`` — the
client the terminals run — never from the code under test.  The clock the
client checks expiry against is the real one, so the repository is signed
with real time unless a test means to sign in the past.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import tarfile
import traceback
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata

from common.atomicwrite import atomic_write
from server.update_bundle import BundleError, read_release
from server.update_keys import init_repository, renew_root, rotate_keys
from server.update_repo import RepositoryFiles, UpdateError, UpdateRepository, load_signer
from server.update_status import repository_status
from tests.server.update_support import (
    FolderFetcher,
    Repo,
    make_bundle,
    new_repo,
    release_json,
    updater,
    visible,
)


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def repo(tmp_path: Path, now: datetime) -> Repo:
    return new_repo(tmp_path / "data", tmp_path / "media" / "keys", now)


@pytest.fixture
def client(tmp_path: Path, repo: Repo):
    """A new terminal's client factory: each call is a fresh process with the same cache."""

    def make(cache: str = "terminal"):  # type: ignore[no-untyped-def]
        return updater(tmp_path / cache, FolderFetcher(repo.repo.files.root), repo.bootstrap())

    return make


# --- init ---------------------------------------------------------------------------------------


def test_init_writes_offline_keys_outside_and_online_keys_inside(tmp_path, repo):
    offline = sorted(p.name for p in repo.offline_dir.iterdir())
    assert [n.split("-")[0] for n in offline] == ["root", "targets"]
    for path in repo.offline_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    online = sorted(p.name.split("-")[0] for p in repo.repo.files.keys_dir.iterdir())
    assert online == ["snapshot", "timestamp"]
    for path in repo.repo.files.keys_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(repo.repo.files.keys_dir.stat().st_mode) == 0o700
    # no private key anywhere under the data folder but the two online ones
    pems = sorted(p.name.split("-")[0] for p in repo.data_dir.rglob("*.pem"))
    assert pems == ["snapshot", "timestamp"]
    names = sorted(p.name for p in repo.metadata.iterdir())
    assert names == ["1.root.json", "1.snapshot.json", "1.targets.json", "timestamp.json"]
    root = Metadata.from_bytes(repo.bootstrap()).signed
    assert root.consistent_snapshot is True
    assert {role: len(r.keyids) for role, r in root.roles.items()} == {
        "root": 1,
        "targets": 1,
        "snapshot": 1,
        "timestamp": 1,
    }
    for key in root.keys.values():
        assert (key.keytype, key.scheme) == ("ed25519", "ed25519")


def test_init_sets_the_expiry_policy(repo, now):
    def expires(name: str) -> datetime:
        return Metadata.from_bytes((repo.metadata / name).read_bytes()).signed.expires

    for name, days in [
        ("1.root.json", 365),
        ("1.targets.json", 90),
        ("1.snapshot.json", 7),
        ("timestamp.json", 1),
    ]:
        assert abs(expires(name) - (now + timedelta(days=days))) < timedelta(seconds=5), name


def test_a_fresh_repository_is_accepted_and_empty(client):
    assert visible(client(), "0.1.0") == set()


def test_init_twice_is_refused_and_changes_nothing(tmp_path, repo, now):
    before = {p.name: p.read_bytes() for p in repo.metadata.iterdir()}
    with pytest.raises(UpdateError) as raised:
        init_repository(repo.repo, data_dir=repo.data_dir, offline_dir=tmp_path / "k2", now=now)
    assert raised.value.code == "update.initialised"
    assert {p.name: p.read_bytes() for p in repo.metadata.iterdir()} == before


@pytest.mark.parametrize("inside", [".", "updates", "sub/keys"])
def test_offline_keys_are_never_written_under_the_data_folder(tmp_path, now, inside):
    data = tmp_path / "data"
    data.mkdir()
    repo = UpdateRepository.for_data_dir(data)
    with pytest.raises(UpdateError) as raised:
        init_repository(repo, data_dir=data, offline_dir=data / inside, now=now)
    assert raised.value.code == "update.offline_dir"
    assert str(data) in raised.value.message
    assert not list(data.rglob("*.pem"))
    assert not repo.initialised()


def test_threshold_of_several_root_keys(tmp_path, now):
    repo = UpdateRepository.for_data_dir(tmp_path / "data")
    result = init_repository(
        repo,
        data_dir=tmp_path / "data",
        offline_dir=tmp_path / "k",
        now=now,
        root_keys=3,
        threshold=2,
    )
    root = Metadata.from_bytes(result.root_path.read_bytes())
    assert root.signed.roles["root"].threshold == 2
    assert len(root.signatures) == 3
    keys = [load_signer(Path(p)) for p in result.key_files["root"]]
    with pytest.raises(UpdateError, match="needs 2 root keys"):
        renew_root(repo, keys[:1], now=now)
    renewed = renew_root(repo, keys[1:], now=now)
    cache = updater(tmp_path / "c", FolderFetcher(repo.files.root), root.to_bytes())
    cache.refresh()
    assert renewed.root_version == 2


def test_a_threshold_above_the_key_count_is_refused(tmp_path, now):
    repo = UpdateRepository.for_data_dir(tmp_path / "data")
    with pytest.raises(UpdateError) as raised:
        init_repository(
            repo, data_dir=tmp_path / "data", offline_dir=tmp_path / "k", now=now, threshold=2
        )
    assert raised.value.code == "update.threshold"


# --- publish ------------------------------------------------------------------------------------


def test_publish_then_the_client_downloads_the_same_bytes(tmp_path, repo, client, now):
    bundle = make_bundle(tmp_path / "dist", "0.2.0")
    result = repo.publish(bundle, now)
    assert result["version"] == "0.2.0"
    assert result["already_published"] is False
    terminal = client()
    assert visible(terminal, "0.2.0") == {"0.2.0"}
    info = terminal.get_targetinfo("renkei-agent-0.2.0.tar.gz")
    path = terminal.download_target(info, str(tmp_path / "got.tar.gz"))
    assert Path(path).read_bytes() == bundle.read_bytes()
    stored = repo.repo.files.targets_dir / f"{result['sha256']}.renkei-agent-0.2.0.tar.gz"
    assert stored.read_bytes() == bundle.read_bytes()


def test_versions_move_up_and_the_timestamp_is_written_last(tmp_path, repo, now):
    order: list[str] = []

    class Recording(RepositoryFiles):
        def write_metadata(self, name: str, data: bytes) -> None:
            order.append(name)
            super().write_metadata(name, data)

        def add_target(self, source: Path, name: str) -> str:
            order.append("target")
            return super().add_target(source, name)

    recording = UpdateRepository(Recording(repo.repo.files.root))
    recording.publish(make_bundle(tmp_path, "0.2.0"), repo.targets_signer(), now=now)
    signed = int(now.timestamp())  # versions follow the signing time (next_version)
    assert order == [
        "target",
        f"{signed}.targets.json",
        f"{signed}.snapshot.json",
        "timestamp.json",
    ]


def test_a_downgrade_or_equal_version_is_refused(tmp_path, repo, client, now):
    repo.publish(make_bundle(tmp_path / "a", "0.10.0"), now)
    before = {p.name: p.read_bytes() for p in repo.metadata.iterdir()}
    for version in ("0.9.0", "0.10.0rc1", "0.1.0"):
        with pytest.raises(UpdateError) as raised:
            repo.publish(make_bundle(tmp_path / "b", version), now)
        assert raised.value.code == "update.not_newer"
        assert version in raised.value.message and "0.10.0" in raised.value.message
    # the same version with other bytes is not a re-publication either
    with pytest.raises(UpdateError, match="not newer"):
        repo.publish(make_bundle(tmp_path / "c", "0.10.0", payload=b" other"), now)
    assert {p.name: p.read_bytes() for p in repo.metadata.iterdir()} == before
    assert visible(client(), "0.10.0", "0.9.0", "0.1.0") == {"0.10.0"}


def test_publishing_the_same_file_again_changes_nothing(tmp_path, repo, now):
    bundle = make_bundle(tmp_path, "0.2.0")
    repo.publish(bundle, now)
    before = {p.name: p.read_bytes() for p in repo.metadata.iterdir()}
    again = repo.publish(bundle, now)
    assert again["already_published"] is True
    assert {p.name: p.read_bytes() for p in repo.metadata.iterdir()} == before


def test_publish_with_a_key_that_is_not_the_targets_key_is_refused(tmp_path, repo, now):
    snapshot_key = next(repo.repo.files.keys_dir.glob("snapshot-*.pem"))
    before = sorted(p.name for p in repo.metadata.iterdir())
    for key in (snapshot_key, repo.root_key):
        with pytest.raises(UpdateError) as raised:
            repo.publish(make_bundle(tmp_path, "0.2.0"), now, key=key)
        assert raised.value.code == "update.key"
        assert "not a targets key" in raised.value.message
    assert sorted(p.name for p in repo.metadata.iterdir()) == before
    assert list(repo.repo.files.targets_dir.iterdir()) == []


def test_publish_before_init_says_what_to_do(tmp_path, now):
    repo = UpdateRepository.for_data_dir(tmp_path / "data")
    with pytest.raises(UpdateError) as raised:
        repo.refresh_timestamp(now=now)
    assert raised.value.code == "update.not_initialised"
    assert "update-keys init" in raised.value.message


# --- bundles ------------------------------------------------------------------------------------


def _member(kind: bytes, name: str, linkname: str = ""):  # type: ignore[no-untyped-def]
    def add(handle: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = linkname
        handle.addfile(info)

    return add


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"document": release_json("0.2.0", format=2)}, "format is 2"),
        ({"document": release_json("0.2.0", prefix="/opt/elsewhere")}, "prefix"),
        ({"document": release_json("0.2.0", python=None)}, "python"),
        ({"document": release_json("v0.2")}, "canonical"),
        ({"document": release_json("0.2.0-rc1")}, "canonical"),
        ({"document": release_json("latest")}, "PEP 440"),
        ({"document": release_json(None)}, "must be a string"),
        ({"name": "renkei-agent-0.3.0.tar.gz"}, "named for version 0.3.0"),
        ({"extra": _member(tarfile.REGTYPE, "etc/passwd")}, "'etc/passwd' is not inside"),
        ({"extra": _member(tarfile.REGTYPE, "release/../../x")}, "is not inside"),
        ({"extra": _member(tarfile.LNKTYPE, "release/h", "release/bin/renkei-agent")}, "regular"),
        ({"extra": _member(tarfile.FIFOTYPE, "release/fifo")}, "regular"),
        ({"extra": _member(tarfile.CHRTYPE, "release/dev")}, "regular"),
        ({"extra": _member(tarfile.SYMTYPE, "release/lib/x", "../../../etc")}, "out of the tree"),
    ],
)
def test_a_bundle_the_terminal_would_refuse_is_refused_by_name(tmp_path, kwargs, says):
    bundle = make_bundle(tmp_path, "0.2.0", **kwargs)
    with pytest.raises(BundleError) as raised:
        read_release(bundle)
    assert says in raised.value.message
    assert str(bundle) in raised.value.message


def test_not_a_tar_or_cut_short_or_without_release_json(tmp_path):
    text = tmp_path / "renkei-agent-0.2.0.tar.gz"
    text.write_text("hello")
    with pytest.raises(BundleError, match="not a complete gzip tar"):
        read_release(text)
    whole = make_bundle(tmp_path / "w", "0.2.0", payload=os.urandom(200_000))
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(BundleError, match="not a complete gzip tar"):
        read_release(cut)
    empty = tmp_path / "empty.tar.gz"
    with tarfile.open(empty, "w:gz") as handle:
        handle.addfile(tarfile.TarInfo("release/bin"), None)
    with pytest.raises(BundleError, match="no release/release.json"):
        read_release(empty)


def test_a_good_bundle_with_a_link_to_the_system_python(tmp_path):
    bundle = make_bundle(tmp_path, "1.0.0rc1", name="anything.tar.gz")
    release = read_release(bundle)
    assert (release.version, release.target_name) == ("1.0.0rc1", "renkei-agent-1.0.0rc1.tar.gz")
    assert release.length == bundle.stat().st_size


# --- the attacks the client must refuse ---------------------------------------------------------


def test_rollback_to_an_older_timestamp_is_refused(tmp_path, repo, client, now):
    repo.publish(make_bundle(tmp_path, "0.1.0"), now)
    old_timestamp = (repo.metadata / "timestamp.json").read_bytes()
    repo.publish(make_bundle(tmp_path, "0.2.0"), now)
    assert visible(client(), "0.1.0", "0.2.0") == {"0.1.0", "0.2.0"}
    (repo.metadata / "timestamp.json").write_bytes(old_timestamp)  # a stolen server replays it
    with pytest.raises(tuf_errors.BadVersionNumberError):
        client().refresh()
    # a terminal that never saw the newer one cannot tell (TUF's limit), but sees no newer release
    assert visible(client("new-terminal"), "0.1.0", "0.2.0") == {"0.1.0"}


def test_an_expired_timestamp_is_refused_until_it_is_signed_again(tmp_path, repo, client, now):
    past = now - timedelta(days=2)
    repo.publish(make_bundle(tmp_path, "0.2.0"), past)  # the timestamp expired a day ago
    with pytest.raises(tuf_errors.ExpiredMetadataError):
        client().refresh()
    repo.repo.refresh_timestamp(now=now)
    assert visible(client(), "0.2.0") == {"0.2.0"}


def test_a_tampered_target_is_refused(tmp_path, repo, client, now):
    result = repo.publish(make_bundle(tmp_path, "0.2.0"), now)
    stored = repo.repo.files.targets_dir / f"{result['sha256']}.renkei-agent-0.2.0.tar.gz"
    data = bytearray(stored.read_bytes())
    data[-10] ^= 0xFF
    stored.write_bytes(bytes(data))
    terminal = client()
    info = terminal.get_targetinfo("renkei-agent-0.2.0.tar.gz")
    with pytest.raises(tuf_errors.LengthOrHashMismatchError):
        terminal.download_target(info, str(tmp_path / "got"))
    assert not (tmp_path / "got").exists()


def test_tampered_targets_metadata_is_refused(tmp_path, repo, client, now):
    repo.publish(make_bundle(tmp_path, "0.2.0"), now)
    path = repo.metadata / f"{int(now.timestamp())}.targets.json"
    document = json.loads(path.read_text())
    document["signed"]["targets"]["renkei-agent-0.2.0.tar.gz"]["length"] += 1
    path.write_text(json.dumps(document))
    with pytest.raises(tuf_errors.RepositoryError):
        client().refresh()


# --- refresh and expiry --------------------------------------------------------------------------


def test_refresh_signs_a_new_timestamp_and_the_snapshot_only_when_due(repo, now):
    first = repo.repo.refresh_timestamp(now=now)
    assert first["snapshot_resigned"] is False
    assert first["roles"]["timestamp"]["version"] == int(now.timestamp())
    assert first["roles"]["snapshot"]["version"] == 1
    assert first["problems"] == []
    again = repo.repo.refresh_timestamp(now=now)  # within the same second: still one more
    assert again["roles"]["timestamp"]["version"] == int(now.timestamp()) + 1
    later_time = now + timedelta(days=4, hours=1)
    later = repo.repo.refresh_timestamp(now=later_time)
    assert later["snapshot_resigned"] is True
    assert later["roles"]["snapshot"]["version"] == int(later_time.timestamp())
    assert later["roles"]["timestamp"]["version"] == int(later_time.timestamp())


def test_refresh_reports_offline_metadata_that_expires_soon(repo, now):
    result = repo.repo.refresh_timestamp(now=now + timedelta(days=80))
    assert [(p["code"], p["role"]) for p in result["problems"]] == [("update.expiring", "targets")]
    result = repo.repo.refresh_timestamp(now=now + timedelta(days=400))
    assert {(p["code"], p["role"]) for p in result["problems"]} == {
        ("update.expired", "targets"),
        ("update.expired", "root"),
    }


def test_after_a_restore_from_backup_the_next_signing_is_accepted(tmp_path, repo, client, now):
    files = repo.repo.files.root
    backup = tmp_path / "backup"
    repo.publish(make_bundle(tmp_path, "0.1.0"), now - timedelta(hours=3))
    shutil.copytree(files, backup)  # last night's backup
    repo.repo.refresh_timestamp(now=now - timedelta(hours=2))
    repo.publish(make_bundle(tmp_path, "0.2.0"), now - timedelta(hours=1))
    assert visible(client(), "0.1.0", "0.2.0") == {"0.1.0", "0.2.0"}
    shutil.rmtree(files)
    shutil.copytree(backup, files)  # the disk died; the backup is restored
    repo.repo.refresh_timestamp(now=now)
    # the backup's snapshot and targets are older than the ones the terminal trusts
    with pytest.raises(tuf_errors.BadVersionNumberError):
        client().refresh()
    # docs/updates.md: after a restore, renew the targets (it signs all three anew)
    repo.repo.renew_targets(repo.targets_signer(), now=now)
    assert visible(client(), "0.1.0", "0.2.0") == {"0.1.0"}
    repo.publish(make_bundle(tmp_path, "0.2.0"), now)
    assert visible(client(), "0.1.0", "0.2.0") == {"0.1.0", "0.2.0"}


def test_renewing_targets_moves_its_expiry_and_the_client_follows(tmp_path, repo, client, now):
    repo.publish(make_bundle(tmp_path, "0.2.0"), now - timedelta(days=89))
    state = repo.repo.renew_targets(repo.targets_signer(), now=now)
    assert state.targets.signed.expires > now + timedelta(days=89)
    assert visible(client(), "0.2.0") == {"0.2.0"}


def test_status_reports_versions_releases_and_the_clients_verdict(tmp_path, repo, now):
    repo.publish(make_bundle(tmp_path, "0.2.0"), now)
    status = repository_status(repo.repo, now=now)
    assert status["latest"] == "0.2.0"
    assert status["client_check"] == {"ok": True, "error": None}
    assert status["problems"] == []
    assert status["roles"]["targets"]["version"] == int(now.timestamp())
    timestamp = json.loads((repo.metadata / "timestamp.json").read_text())
    timestamp["signed"]["version"] += 1  # changed without signing again
    (repo.metadata / "timestamp.json").write_text(json.dumps(timestamp))
    broken = repository_status(repo.repo, now=now)
    assert broken["client_check"]["ok"] is False
    assert [p["code"] for p in broken["problems"]] == ["update.client_refuses"]


def test_a_missing_online_key_is_named(repo, now):
    for path in repo.repo.files.keys_dir.glob("timestamp-*.pem"):
        path.unlink()
    with pytest.raises(UpdateError) as raised:
        repo.repo.refresh_timestamp(now=now)
    assert raised.value.code == "update.key"
    assert "online timestamp key is missing" in raised.value.message


# --- key rotation ------------------------------------------------------------------------------


def _forge_targets(repo: Repo, signer, version: str, now: datetime, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An attacker with the server's online keys and a revoked targets key adds a release."""
    bundle = make_bundle(tmp_path / "evil", version)
    release = read_release(bundle)
    from tuf.api.metadata import TargetFile

    from server.update_repo import sign

    state = repo.repo.load()
    repo.repo.files.add_target(bundle, f"{release.sha256}.{release.target_name}")
    targets = repo.repo.next_targets(state, now)
    targets.signed.targets[release.target_name] = TargetFile(
        release.length,
        {"sha256": release.sha256},
        release.target_name,
        {"custom": {"renkei": {"version": version, "format": 1}}},
    )
    sign(targets, [signer])
    repo.repo.write_chain(state, now=now, targets=targets)


def test_targets_key_rotation_then_update_and_the_revoked_key_is_refused(
    tmp_path, repo, client, now
):
    repo.publish(make_bundle(tmp_path, "0.1.0"), now)
    assert visible(client(), "0.1.0") == {"0.1.0"}  # the terminal trusts root v1
    old_key = repo.targets_signer()
    result = rotate_keys(
        repo.repo,
        ["targets"],
        [repo.root_signer()],
        data_dir=repo.data_dir,
        offline_dir=repo.offline_dir,
        old_targets_signer=old_key,
        now=now,
    )
    assert result.root_version == 2 and result.warnings == []
    new_key = Path(result.key_files["targets"][0])
    assert new_key.parent == repo.offline_dir.resolve()
    with pytest.raises(UpdateError, match="not a targets key of root version 2"):
        repo.publish(make_bundle(tmp_path, "0.2.0"), now)  # the old key
    repo.publish(make_bundle(tmp_path, "0.2.0"), now, key=new_key)
    terminal = client()
    assert visible(terminal, "0.1.0", "0.2.0") == {"0.1.0", "0.2.0"}
    assert (tmp_path / "terminal" / "root_history" / "2.root.json").is_file()
    # a stolen old targets key signs a release: the client, now on root v2, refuses it
    _forge_targets(repo, old_key, "0.3.0", now, tmp_path)
    with pytest.raises(tuf_errors.UnsignedMetadataError):
        client().refresh()
    with pytest.raises(tuf_errors.UnsignedMetadataError):
        client("new-terminal").refresh()  # from root v1, through v2


def test_root_key_rotation_and_a_root_signed_by_the_revoked_key_is_refused(
    tmp_path, repo, client, now
):
    old_root_key = repo.root_signer()
    result = rotate_keys(
        repo.repo,
        ["root"],
        [old_root_key],
        data_dir=repo.data_dir,
        offline_dir=repo.offline_dir,
        now=now,
    )
    new_root = Metadata.from_bytes(result.root_path.read_bytes())
    assert len(new_root.signatures) == 2  # the old and the new root key
    repo.publish(make_bundle(tmp_path, "0.2.0"), now)
    assert visible(client(), "0.2.0") == {"0.2.0"}
    # the revoked root key alone cannot make root v3
    forged = Metadata.from_bytes(result.root_path.read_bytes())
    forged.signed.version = 3
    forged.sign(old_root_key)
    (repo.metadata / "3.root.json").write_bytes(forged.to_bytes())
    with pytest.raises(tuf_errors.UnsignedMetadataError):
        client().refresh()
    # and the repository's own tools refuse the old key too
    with pytest.raises(UpdateError, match="not a root key"):
        renew_root(repo.repo, [old_root_key], now=now)


def test_timestamp_key_rotation_replaces_the_online_key(tmp_path, repo, client, now):
    repo.publish(make_bundle(tmp_path, "0.1.0"), now)
    visible(client(), "0.1.0")
    old = sorted(p.name for p in repo.repo.files.keys_dir.iterdir())
    result = rotate_keys(
        repo.repo, ["timestamp"], [repo.root_signer()], data_dir=repo.data_dir, now=now
    )
    new = sorted(p.name for p in repo.repo.files.keys_dir.iterdir())
    assert len(new) == 2 and [n for n in old if n.startswith("timestamp")] != [
        n for n in new if n.startswith("timestamp")
    ]
    assert Path(result.key_files["timestamp"][0]).name in new
    repo.repo.refresh_timestamp(now=now)
    timestamp = Metadata.from_bytes((repo.metadata / "timestamp.json").read_bytes())
    assert len(timestamp.signatures) == 1  # the new key only, once the rotation is done
    assert visible(client(), "0.1.0") == {"0.1.0"}
    assert visible(client("new-terminal"), "0.1.0") == {"0.1.0"}


def test_rotation_when_the_old_online_key_is_lost(tmp_path, repo, client, now):
    for path in repo.repo.files.keys_dir.glob("snapshot-*.pem"):
        path.unlink()
    result = rotate_keys(
        repo.repo, ["snapshot"], [repo.root_signer()], data_dir=repo.data_dir, now=now
    )
    assert "snapshot" in result.warnings[0]
    assert visible(client(), "0.1.0") == set()


def test_rotation_needs_the_current_root_key(tmp_path, repo, now):
    stranger = tmp_path / "other"
    other = new_repo(tmp_path / "data2", stranger, now)
    before = sorted(p.name for p in repo.metadata.iterdir())
    with pytest.raises(UpdateError, match="not a root key of root version 1"):
        rotate_keys(
            repo.repo, ["timestamp"], [other.root_signer()], data_dir=repo.data_dir, now=now
        )
    assert sorted(p.name for p in repo.metadata.iterdir()) == before


# --- crash safety: SIGKILL between (and inside) every write -------------------------------------


class KillingFiles(RepositoryFiles):
    """Kills its own process (SIGKILL) at the ``kill_at``-th file operation.

    ``during``: the file being written is half written first (its temporary
    file stays behind), as when the power fails inside a write.
    """

    def __init__(self, root: Path, kill_at: int, during: bool):
        super().__init__(root)
        self.kill_at = kill_at
        self.during = during
        self.count = 0

    def _step(self, target: Path | None = None, data: bytes = b"") -> None:
        if self.count == self.kill_at:
            if self.during and target is not None:
                with atomic_write(target) as handle:
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    os.fsync(handle.fileno())
                    os.kill(os.getpid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        self.count += 1

    def write_metadata(self, name: str, data: bytes) -> None:
        self._step(self.metadata_dir / name, data)
        super().write_metadata(name, data)

    def add_target(self, source: Path, name: str) -> str:
        self._step(self.targets_dir / name, source.read_bytes())
        return super().add_target(source, name)

    def write_key(self, name, signer):  # type: ignore[no-untyped-def]
        self._step(self.keys_dir / name, signer.private_bytes)
        return super().write_key(name, signer)

    def remove_key(self, path: Path) -> None:
        self._step()
        super().remove_key(path)


def _operation(name: str, work: Path, now: datetime):  # type: ignore[no-untyped-def]
    offline = work / "offline"
    root_key = load_signer(next(offline.glob("root-*.pem")))
    targets_key = load_signer(next(offline.glob("targets-*.pem")))
    bundle = work / "dist" / "renkei-agent-0.2.0.tar.gz"

    def run(repo: UpdateRepository) -> None:
        data_dir = work / "data"
        if name == "publish":
            repo.publish(bundle, targets_key, now=now)
        elif name == "refresh":
            repo.refresh_timestamp(now=now + timedelta(days=4, hours=1))
        elif name == "rotate-targets":
            rotate_keys(
                repo,
                ["targets"],
                [root_key],
                data_dir=data_dir,
                offline_dir=offline,
                old_targets_signer=targets_key,
                now=now,
            )
        else:
            role = name.removeprefix("rotate-")
            rotate_keys(repo, [role], [root_key], data_dir=data_dir, offline_dir=offline, now=now)

    return run


def _killed_at(run, root: Path, kill_at: int, during: bool) -> bool:  # type: ignore[no-untyped-def]
    """Run ``run`` in a child that SIGKILLs itself at that point; False if it finished first."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            run(UpdateRepository(KillingFiles(root, kill_at, during)))
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, "the operation failed in the child"
    return False


@pytest.mark.parametrize(
    ("operation", "steps", "after"),
    [
        ("publish", 4, {"0.1.0", "0.2.0"}),  # target, targets, snapshot, timestamp
        ("refresh", 2, {"0.1.0"}),  # snapshot, timestamp
        ("rotate-timestamp", 4, {"0.1.0"}),  # new key, timestamp, root, old key removed
        ("rotate-snapshot", 5, {"0.1.0"}),  # new key, snapshot, timestamp, root, old key removed
        ("rotate-targets", 4, {"0.1.0"}),  # targets, snapshot, timestamp, root
        ("rotate-root", 1, {"0.1.0"}),  # root
    ],
)
def test_a_kill_at_any_point_leaves_a_repository_clients_accept(
    tmp_path, now, operation, steps, after
):
    pristine = tmp_path / "pristine"
    base = new_repo(pristine / "data", pristine / "offline", now)
    base.publish(make_bundle(pristine / "tmp", "0.1.0"), now)
    make_bundle(pristine / "dist", "0.2.0")
    seen = updater(pristine / "terminal", FolderFetcher(base.repo.files.root), base.bootstrap())
    assert visible(seen, "0.1.0", "0.2.0") == {"0.1.0"}
    points = 0
    for kill_at in range(20):
        for during in (False, True):
            work = tmp_path / f"k{kill_at}{'d' if during else ''}"
            shutil.copytree(pristine, work, symlinks=True)
            root = work / "data" / "updates"
            run = _operation(operation, work, now)
            if not _killed_at(run, root, kill_at, during):
                break
            points += 1
            bootstrap = (root / "metadata" / "1.root.json").read_bytes()
            # the terminal that had refreshed before, and one that never had
            for cache in ("terminal", "fresh"):
                client = updater(work / cache, FolderFetcher(root), bootstrap)
                assert visible(client, "0.1.0", "0.2.0") in ({"0.1.0"}, after), (kill_at, cache)
            # running the command again finishes the job
            run(UpdateRepository(RepositoryFiles(root)))
            client = updater(work / "terminal", FolderFetcher(root), bootstrap)
            assert visible(client, "0.1.0", "0.2.0") == after
            shutil.rmtree(work)
        else:
            continue
        break
    assert points == 2 * steps  # before, and in the middle of, every step
