"""The update's pure and file-system parts: unpacking checks, the switch, recovery, versions, state.

Bundles are written here with ``tarfile`` (``update_support.fake_bundle``
plus hand-made members); every refusal must leave no partial folder and no
release behind.
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tuf.api import exceptions as tuf_errors

from appliance.agent.config import ConfigError, UpdateConfig, load_config
from appliance.agent.errors import BusyError
from appliance.agent.install import InstallError, Limits, Releases
from appliance.agent.update_fetch import TransportFetcher
from appliance.agent.update_state import StateStore, UpdateState, lock
from appliance.agent.update_version import Version, target_name, version_of_target
from common import statement
from tests.agent.update_support import fake_bundle

PREFIX = "/opt/renkei/releases/0.2.0"


def _unpack(tmp_path: Path, bundle: Path, version: str = "0.2.0", **limits) -> Releases:  # type: ignore[no-untyped-def]
    releases = Releases(tmp_path / "opt")
    releases.unpack(bundle, version, limits=Limits(**limits))
    return releases


def _refused(tmp_path: Path, bundle: Path, code: str, needle: str, **limits) -> None:  # type: ignore[no-untyped-def]
    releases = Releases(tmp_path / "opt")
    with pytest.raises(InstallError) as caught:
        releases.unpack(bundle, "0.2.0", limits=Limits(**limits))
    assert caught.value.code == code, caught.value.message
    assert needle in caught.value.message
    assert os.listdir(releases.releases) == [], "nothing left behind"


# --- unpacking -------------------------------------------------------------------------------


def test_a_good_bundle_is_unpacked_with_plain_modes_and_its_links(tmp_path):
    setuid = [("release/lib/tool", {"mode": 0o6777}, b"#!/bin/sh\n")]
    releases = _unpack(tmp_path, fake_bundle(tmp_path, "0.2.0", extra=setuid))
    tree = releases.path("0.2.0")
    assert releases.is_complete("0.2.0")
    assert json.loads((tree / "release.json").read_text())["prefix"] == PREFIX
    assert os.readlink(tree / "bin/python") == "/usr/bin/python3"
    assert os.readlink(tree / "bin/python3") == "python"
    assert stat.S_IMODE((tree / "bin/renkei-agent").stat().st_mode) == 0o755
    assert stat.S_IMODE((tree / "lib/module0.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((tree / "lib/tool").stat().st_mode) == 0o755, "no set-id, no others' write"
    assert stat.S_IMODE((tree / "lib").stat().st_mode) == 0o755
    assert os.listdir(releases.releases) == ["0.2.0"]


def _bundle(tmp_path: Path, members: list[tuple[str, dict, bytes | None]]) -> Path:
    """fake_bundle plus ``members`` (name, TarInfo attributes, data)."""
    return fake_bundle(tmp_path / "b", "0.2.0", extra=members)


@pytest.mark.parametrize(
    ("members", "needle"),
    [
        ([("/etc/cron.d/x", {}, b"x")], "absolute"),
        ([("release/../../x", {}, b"x")], "'..'"),
        ([("release/./x", {}, b"x")], "'.'"),
        ([("elsewhere/x", {}, b"x")], "under release/"),
        (
            [
                (
                    "release/lib/h",
                    {"type": tarfile.LNKTYPE, "linkname": "release/lib/module0.py"},
                    None,
                )
            ],
            "hard links",
        ),
        (
            [("release/dev", {"type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, None)],
            "devices",
        ),
        ([("release/fifo", {"type": tarfile.FIFOTYPE}, None)], "FIFOs"),
        (
            [("release/lib/p", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, None)],
            "/etc/passwd",
        ),
        ([("release/lib/p", {"type": tarfile.SYMTYPE, "linkname": "../../x"}, None)], "outside"),
        (
            [
                (
                    "release/lib/python",
                    {"type": tarfile.SYMTYPE, "linkname": "/usr/bin/python3"},
                    None,
                )
            ],
            "outside",
        ),
        (
            [("release/bin/python3.11", {"type": tarfile.SYMTYPE, "linkname": "/bin/sh"}, None)],
            "outside",
        ),
        ([("release/lib/module0.py", {}, b"again")], "twice"),
        ([("release/bin/python/evil", {}, b"x")], "not a directory"),
        ([("release/bin/renkei-agent/x", {}, b"x")], "not a directory"),
    ],
)
def test_unsafe_members_refuse_the_whole_bundle(tmp_path, members, needle):
    _refused(tmp_path, _bundle(tmp_path, members), "bundle.unsafe", needle)


def test_nothing_is_written_through_a_link_even_one_inside_the_tree(tmp_path):
    # lib/alias -> module0.py (inside), then a regular file at lib/alias: O_NOFOLLOW|O_EXCL.
    members = [
        ("release/lib/alias", {"type": tarfile.SYMTYPE, "linkname": "module0.py"}, None),
        ("release/lib/alias", {}, b"overwrite"),
    ]
    _refused(tmp_path, _bundle(tmp_path, members), "bundle.unsafe", "twice")


@pytest.mark.parametrize(
    ("limits", "needle"),
    [({"max_bytes": 50_000}, "more than 50000 bytes"), ({"max_members": 5}, "more than 5")],
)
def test_limits_refuse_a_bundle_that_unpacks_too_large(tmp_path, limits, needle):
    _refused(tmp_path, fake_bundle(tmp_path, "0.2.0"), "bundle.too_large", needle, **limits)


def test_a_truncated_bundle_is_corrupt(tmp_path):
    bundle = fake_bundle(tmp_path, "0.2.0")
    data = bundle.read_bytes()
    bundle.write_bytes(data[: len(data) // 2])
    _refused(tmp_path, bundle, "bundle.corrupt", "tar.gz")


@pytest.mark.parametrize(
    ("document", "needle"),
    [
        ({"format": 1, "version": "0.3.0", "python": "3.11", "prefix": PREFIX}, "release '0.3.0'"),
        ({"format": 1, "version": "0.2.0", "python": "3.9", "prefix": PREFIX}, "Python 3.9"),
        ({"format": 1, "version": "0.2.0", "python": "3.11", "prefix": "/usr/local"}, "/usr/local"),
        ({"format": 2, "version": "0.2.0", "python": "3.11", "prefix": PREFIX}, "format 2"),
        ({"format": 1, "python": "3.11", "prefix": PREFIX}, "'version'"),
    ],
)
def test_release_json_must_describe_this_release_for_this_appliance(tmp_path, document, needle):
    bundle = fake_bundle(tmp_path, "0.2.0", release_json=document)
    _refused(tmp_path, bundle, "bundle.manifest", needle)


def test_a_bundle_without_its_agent_or_with_a_foreign_interpreter_line_is_refused(tmp_path):
    path = tmp_path / "b.tar.gz"
    document = {"format": 1, "version": "0.2.0", "python": "3.11", "prefix": PREFIX}
    with tarfile.open(path, "w:gz") as tar:
        data = json.dumps(document).encode()
        info = tarfile.TarInfo("release/release.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    _refused(tmp_path, path, "bundle.manifest", "bin/renkei-agent")
    script = b"#!/usr/bin/python3\nprint('hi')\n"
    with tarfile.open(path, "w:gz") as tar:
        for name, content, mode in (
            ("release/release.json", json.dumps(document).encode(), 0o644),
            ("release/bin/renkei-agent", script, 0o755),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), mode
            tar.addfile(info, io.BytesIO(content))
        link = tarfile.TarInfo("release/bin/python")
        link.type, link.linkname = tarfile.SYMTYPE, "/usr/bin/python3"
        tar.addfile(link)
    _refused(tmp_path, path, "bundle.manifest", f"#!{PREFIX}/bin/python")


def test_unpacking_again_replaces_a_release_never_merges(tmp_path):
    releases = _unpack(tmp_path, fake_bundle(tmp_path / "a", "0.2.0"))
    (releases.path("0.2.0") / "stray").write_text("left from before")
    releases.unpack(fake_bundle(tmp_path / "b", "0.2.0"), "0.2.0")
    assert not (releases.path("0.2.0") / "stray").exists()


# --- switch, recover, prune ------------------------------------------------------------------


def _installed(tmp_path: Path, *versions: str) -> Releases:
    releases = Releases(tmp_path / "opt")
    for version in versions:
        releases.unpack(fake_bundle(tmp_path / version, version), version)
    return releases


def test_switching_replaces_current_in_one_rename_and_returns_the_one_before(tmp_path):
    releases = _installed(tmp_path, "0.1.0", "0.2.0")
    assert releases.current_version() is None
    assert releases.switch("0.1.0") is None
    assert os.readlink(releases.current) == "releases/0.1.0"
    assert releases.switch("0.2.0") == "0.1.0"
    assert releases.current_version() == "0.2.0"
    assert sorted(os.listdir(releases.root)) == ["current", "releases"], "no temporary link left"


def test_an_image_release_without_release_json_can_still_be_switched_back_to(tmp_path):
    releases = _installed(tmp_path, "0.1.0", "0.2.0")
    (releases.path("0.1.0") / "release.json").unlink()  # as images before the updater made it
    releases.switch("0.2.0")
    assert releases.is_complete("0.1.0")
    assert releases.switch("0.1.0") == "0.2.0"


def test_switching_to_an_incomplete_release_is_refused(tmp_path):
    releases = _installed(tmp_path, "0.1.0")
    releases.switch("0.1.0")
    (releases.releases / "0.2.0").mkdir()
    with pytest.raises(InstallError) as caught:
        releases.switch("0.2.0")
    assert caught.value.code == "install.layout"
    assert releases.current_version() == "0.1.0"


def test_recover_removes_partials_half_removed_releases_and_temporary_links(tmp_path):
    releases = _installed(tmp_path, "0.1.0")
    releases.switch("0.1.0")
    (releases.releases / ".0.2.0.partial" / "lib").mkdir(parents=True)
    (releases.releases / ".0.0.9.removing").mkdir()
    os.symlink("releases/0.2.0", releases.root / ".current.tmp-4242")
    removed = releases.recover()
    assert sorted(removed) == [
        ".current.tmp-4242",
        "releases/.0.0.9.removing",
        "releases/.0.2.0.partial",
    ]
    assert os.listdir(releases.releases) == ["0.1.0"]
    assert releases.recover() == []


def test_prune_keeps_current_and_what_is_asked_for(tmp_path):
    releases = _installed(tmp_path, "0.1.0", "0.2.0", "0.3.0", "0.4.0")
    releases.switch("0.4.0")
    assert releases.prune({"0.3.0"}) == ["0.1.0", "0.2.0"]
    assert releases.installed() == ["0.3.0", "0.4.0"]
    with pytest.raises(InstallError):
        releases.remove("0.4.0")


@pytest.mark.parametrize("target", ["/opt/renkei/elsewhere", "releases/.0.2.0.partial", "x"])
def test_a_current_link_that_names_no_release_is_a_layout_error(tmp_path, target):
    releases = Releases(tmp_path / "opt")
    releases.root.mkdir()
    os.symlink(target, releases.current)
    with pytest.raises(InstallError) as caught:
        releases.current_version()
    assert caught.value.code == "install.layout"


# --- versions --------------------------------------------------------------------------------

_ORDERED = [
    "0.1.0.dev1",
    "0.1.0a1",
    "0.1.0a2",
    "0.1.0b1",
    "0.1.0rc1",
    "0.1.0",
    "0.1.0+local.1",
    "0.1.0.post1",
    "0.1.1",
    "0.2.0",
    "0.10.0",
    "1.0.0",
]


def test_versions_order_as_pep_440_says():
    parsed = [Version.parse(text) for text in reversed(_ORDERED)]
    assert [v.text for v in sorted(parsed)] == _ORDERED
    assert Version.parse("1.0") == Version.parse("1.0.0")
    assert Version.parse("0.2.0") > Version.parse("0.1.9")


@pytest.mark.parametrize("text", ["v0.2", "0.2-beta", "", "latest", "0.2.0.dev", "1.0+Local"])
def test_other_versions_are_not_releases(text):
    with pytest.raises(ValueError):
        Version.parse(text)


def test_target_names():
    assert target_name("0.2.0") == "renkei-agent-0.2.0.tar.gz"
    assert version_of_target("renkei-agent-0.2.0.tar.gz") == "0.2.0"
    for name in ("renkei-agent-0.2.0.tgz", "other-0.2.0.tar.gz", "renkei-agent-a/b.tar.gz"):
        assert version_of_target(name) is None


# --- state and lock --------------------------------------------------------------------------


def test_the_state_survives_a_round_trip_and_keeps_a_short_history(tmp_path):
    store = StateStore(tmp_path)
    state = store.load()
    assert state == UpdateState()
    state.mark_bad("0.2.0", "update.self_test", "broken", "2026-11-27T00:00:00Z")
    state.pending = {"version": "0.3.0", "previous": "0.1.0", "phase": "testing"}
    for n in range(30):
        state.record({"version": f"0.0.{n}"})
    store.save(state)
    again = store.load()
    assert again.bad["0.2.0"]["code"] == "update.self_test"
    assert again.pending == state.pending
    assert len(again.history) == 20 and again.history[-1] == {"version": "0.0.29"}
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_a_damaged_state_file_is_named(tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    with pytest.raises(Exception) as caught:
        StateStore(tmp_path).load()
    assert caught.value.code == "update.state" and "state.json" in caught.value.message


def test_the_lock_admits_one_run_at_a_time(tmp_path):
    with lock(tmp_path):
        with pytest.raises(BusyError) as caught:
            with lock(tmp_path):
                pass
    assert caught.value.code == "update.busy"
    with lock(tmp_path):  # released with the first holder
        pass


# --- the fetcher's names ---------------------------------------------------------------------


class _Transport:
    origin = "https://renkei.test:8443"
    prefix = "/api/v1"


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("metadata/1.root.json", "/updates/metadata/1.root.json"),
        ("metadata/timestamp.json", "/updates/metadata/timestamp.json"),
        ("metadata/12.snapshot.json", "/updates/metadata/12.snapshot.json"),
        (
            f"targets/{'a' * 64}.renkei-agent-0.2.0.tar.gz",
            f"/updates/targets/{'a' * 64}.renkei-agent-0.2.0.tar.gz",
        ),
        ("metadata/..%2Fkeys%2Ftimestamp.pem", None),
        ("metadata/0.root.json", None),
        ("keys/timestamp.pem", None),
        ("targets/renkei-agent-0.2.0.tar.gz", None),
    ],
)
def test_the_fetcher_asks_only_for_names_the_contract_allows(url, path):
    fetcher = TransportFetcher(_Transport())  # type: ignore[arg-type]
    full = f"{_Transport.origin}{_Transport.prefix}/updates/{url}"
    if path is None:
        with pytest.raises(tuf_errors.DownloadError):
            fetcher.api_path(full)
    else:
        assert fetcher.api_path(full) == path
    with pytest.raises(tuf_errors.DownloadError):
        fetcher.api_path("https://elsewhere.test/api/v1/updates/metadata/1.root.json")


# --- [update] in agent.toml ------------------------------------------------------------------


#: A real public key: the configuration refuses points of small order such as 32 zero bytes.
_SERVER_KEY = statement.public_key_to_text(Ed25519PrivateKey.generate().public_key())


def _config(tmp_path: Path, update: str) -> Path:
    key = tmp_path / "key.pem"
    key.write_text("not read here")
    path = tmp_path / "agent.toml"
    path.write_text(
        'server_url = "https://renkei.test"\nlasdec = "131016"\nterminal_id = "t_1"\n'
        f'key_path = "{key}"\nserver_key = "{_SERVER_KEY}"\n' + update,
        encoding="utf-8",
    )
    return path


def test_update_settings_default_to_the_image_layout(tmp_path):
    config = load_config(_config(tmp_path, ""))
    assert config.update == UpdateConfig()
    assert config.update.install_root == Path("/opt/renkei")
    assert config.update.trusted_root == Path("/usr/share/renkei/update-root.json")


def test_update_settings_are_read_relative_to_the_file(tmp_path):
    text = '[update]\ninstall_root = "opt"\nstate_dir = "/var/lib/x"\nmax_bundle_bytes = 1000\n'
    config = load_config(_config(tmp_path, text))
    assert config.update.install_root == tmp_path / "opt"
    assert config.update.state_dir == Path("/var/lib/x")
    assert config.update.max_bundle_bytes == 1000


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[update]\ninstal_root = '/x'\n", "did you mean 'update.install_root'"),
        ("[update]\nmax_bundle_bytes = 0\n", "update.max_bundle_bytes"),
        ("[update]\nself_test_timeout = -1\n", "update.self_test_timeout"),
        ("update = 1\n", "must be a table"),
    ],
)
def test_bad_update_settings_are_named(tmp_path, text, needle):
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, text))
    assert needle in caught.value.message
