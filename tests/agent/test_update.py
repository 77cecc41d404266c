"""``renkei-agent update`` against a real update repository, served by real gunicorn over TLS.

The repository is made and published by the server's own code
(``server.update_keys``, ``server.update_repo``); the API serves it to the
enrolled terminal only; the agent runs as a child process (``renkei-agent
update --json``) with its own NTP (chronyd) and LGWAN DNS (dnsmasq).  The
releases are small bundles whose ``renkei-agent`` is this tree's agent under
another version (``update_support.fake_bundle``), so every self-test is
real: ``status --json`` and a signed ping the server answers with the
version it saw.  Attacks are made on the server's side, on its files: an old
timestamp put back (rollback), a timestamp left to expire (freeze), a byte
of a release changed (tampering), a root rotated (v1 → v2).
"""

from __future__ import annotations

import fcntl
import json
import os
import tarfile

import pytest

from appliance.agent.install import Releases
from tests.agent.update_support import (
    Terminal,
    UpdateWorld,
    expired,
    release_tree_ok,
    run_update,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def world(tmp_path):  # type: ignore[no-untyped-def]
    made = UpdateWorld(tmp_path).start()
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def terminal(world, ntp_server, lgwan_dns):  # type: ignore[no-untyped-def]
    def make(name: str = "t1", **options) -> Terminal:  # type: ignore[no-untyped-def]
        options.setdefault("ntp", ntp_server.address)
        return world.terminal(name, dns=lgwan_dns.address, **options)

    return make


def _state(term: Terminal) -> dict:
    """The update's state file; before anything was recorded, an empty state."""
    path = term.state_dir / "state.json"
    if not path.exists():
        return {"bad": {}, "pending": None, "history": []}
    return json.loads(path.read_text(encoding="utf-8"))


def _leftovers(releases: Releases) -> list[str]:
    return sorted(n for n in os.listdir(releases.releases) if n.startswith("."))


def test_a_newer_release_is_verified_installed_tested_and_made_current(world, terminal):
    term = terminal()
    world.publish_fake("0.2.0")
    code, report, err = run_update(term)
    assert code == 0, err
    assert report["status"] == "updated"
    assert (report["installed"], report["previous"], report["current"]) == (
        "0.2.0",
        "0.1.0",
        "0.2.0",
    )
    release_tree_ok(term.releases, "0.2.0")
    assert term.releases.installed() == ["0.1.0", "0.2.0"], "the previous release is kept"
    # The self-test was the new code: the server saw it say 0.2.0 in the signed ping.
    ping = report["self_test"][1]
    assert ping["ok"] and ping["answer"]["agent_version"] == "renkei-agent/0.2.0"
    assert ping["answer"]["terminal_id"] == term.site.terminal.terminal_id
    # The shipped root became the first trusted root in the state folder.
    kept = term.state_dir / "tuf" / "metadata" / "root.json"
    assert kept.read_bytes() == term.trusted_root.read_bytes()
    assert _state(term)["history"][-1]["version"] == "0.2.0"
    # Nothing more to do the next time.
    code, report, _ = run_update(term)
    assert (code, report["status"]) == (0, "up_to_date")


def test_check_says_what_is_available_with_status_100_and_changes_nothing(world, terminal):
    term = terminal()
    code, report, _ = run_update(term, "--check")
    assert (code, report["status"], report["available"]) == (0, "up_to_date", None)
    world.publish_fake("0.2.0")
    world.publish_fake("0.3.0")
    code, report, _ = run_update(term, "--check")
    assert (code, report["status"], report["available"]) == (100, "available", "0.3.0")
    assert term.releases.installed() == ["0.1.0"]
    assert term.releases.current_version() == "0.1.0"


def test_the_highest_release_is_installed_and_older_ones_pruned(world, terminal):
    term = terminal()
    world.publish_fake("0.2.0")
    assert run_update(term)[0] == 0
    world.publish_fake("0.3.0")
    world.publish_fake("0.4.0")
    code, report, err = run_update(term)
    assert code == 0, err
    assert (report["installed"], report["previous"], report["pruned"]) == (
        "0.4.0",
        "0.2.0",
        ["0.1.0"],
    )
    assert term.releases.installed() == ["0.2.0", "0.4.0"]
    release_tree_ok(term.releases, "0.4.0")


def test_a_downgrade_is_never_installed(world, terminal):
    term = terminal(version="0.3.0")
    world.publish_fake("0.2.0")
    code, report, _ = run_update(term)
    assert (code, report["status"]) == (0, "up_to_date")
    assert term.releases.installed() == ["0.3.0"]
    code, report, _ = run_update(term, "--check")
    assert (code, report["available"]) == (0, None)


def test_an_old_timestamp_served_again_is_refused_as_a_rollback(world, terminal):
    term = terminal()
    old = world.metadata("timestamp.json").read_bytes()
    world.publish_fake("0.2.0")
    assert run_update(term, "--check")[0] == 100  # the terminal now trusts the new timestamp
    world.metadata("timestamp.json").write_bytes(old)  # the attacker serves the old one
    code, report, _ = run_update(term)
    assert (code, report["status"], report["code"]) == (6, "rejected", "update.rollback")
    assert "改ざん" in report["message_ja"]
    assert term.releases.installed() == ["0.1.0"]


def test_an_expired_timestamp_is_refused_as_a_freeze(world, terminal):
    term = terminal()
    world.publish_fake("0.2.0")
    world.resign_timestamp(expired())  # signed properly, but its day is over
    code, report, _ = run_update(term)
    assert (code, report["status"], report["code"]) == (6, "rejected", "update.expired")
    assert term.releases.current_version() == "0.1.0"
    world.resign_timestamp(expired(0))  # the timer runs again
    assert run_update(term)[0] == 0
    release_tree_ok(term.releases, "0.2.0")


def test_a_tampered_release_is_refused_and_installed_once_it_is_whole_again(world, terminal):
    term = terminal()
    world.publish_fake("0.2.0")
    stored = world.target_file("0.2.0")
    good = stored.read_bytes()
    stored.write_bytes(good[:-1] + bytes([good[-1] ^ 0x01]))  # same length, one bit
    code, report, _ = run_update(term)
    assert (code, report["status"], report["code"]) == (6, "rejected", "update.tampered")
    assert term.releases.installed() == ["0.1.0"]
    assert _state(term)["bad"] == {}, "an attack in transit does not condemn the release"
    stored.write_bytes(good)
    code, report, _ = run_update(term)
    assert (code, report["installed"]) == (0, "0.2.0")


def test_after_a_root_and_targets_key_rotation_the_terminal_follows_and_updates(world, terminal):
    term = terminal()  # ships root v1
    world.rotate(["root", "targets", "timestamp"])
    assert world.metadata("2.root.json").exists()
    world.publish_fake("0.2.0")  # signed with the new targets key only
    code, report, err = run_update(term)
    assert code == 0, err
    assert report["installed"] == "0.2.0"
    kept = json.loads((term.state_dir / "tuf" / "metadata" / "root.json").read_text())
    assert kept["signed"]["version"] == 2


def test_a_release_failing_its_self_test_is_rolled_back_and_never_tried_again(world, terminal):
    term = terminal()
    world.publish_fake("0.2.0", broken=True)
    code, report, _ = run_update(term)
    assert (code, report["status"], report["code"]) == (5, "rolled_back", "update.self_test")
    assert "this release is broken on purpose" in report["self_test"][0]["error"]
    assert "0.2.0" in report["message_ja"]
    release_tree_ok(term.releases, "0.1.0")
    assert term.releases.installed() == ["0.1.0"]
    assert _state(term)["bad"]["0.2.0"]["code"] == "update.self_test"
    code, report, _ = run_update(term)
    assert (code, report["status"]) == (0, "up_to_date"), "a bad version is not tried again"
    world.publish_fake("0.3.0")
    code, report, _ = run_update(term)
    assert (code, report["installed"]) == (0, "0.3.0")


def test_a_signed_bundle_with_a_link_out_of_the_tree_is_refused_and_marked_bad(world, terminal):
    term = terminal()
    extra = [("release/lib/passwd", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, None)]
    world.publish_fake("0.2.0", extra=extra)  # the server lets absolute links through
    code, report, _ = run_update(term)
    assert (code, report["code"]) == (5, "bundle.unsafe")
    assert "/etc/passwd" in report["message"]
    assert term.releases.installed() == ["0.1.0"] and _leftovers(term.releases) == []


def test_an_unsynchronised_clock_refuses_the_update_before_any_request(
    world, terminal, ntp_server_ahead
):
    term = terminal(ntp=ntp_server_ahead.address)
    world.publish_fake("0.2.0")
    code, report, _ = run_update(term)
    assert (code, report["status"], report["code"]) == (3, "refused", "update.clock")
    assert report["message_ja"]
    assert not (term.state_dir / "tuf").exists(), "nothing was fetched"


def test_no_ntp_server_configured_refuses_too(world, terminal):
    term = terminal()
    text = term.config.read_text(encoding="utf-8")
    term.config.write_text(
        "\n".join(line for line in text.splitlines() if not line.startswith("ntp_servers")),
        encoding="utf-8",
    )
    code, report, _ = run_update(term)
    assert (code, report["code"]) == (3, "update.clock")
    assert "no NTP servers" in report["message"]


def test_the_repository_is_for_enrolled_terminals_only(world, terminal):
    term = terminal()
    world.publish_fake("0.2.0")
    world.server.revoke(term.site.terminal)
    code, report, _ = run_update(term)
    assert (code, report["status"], report["code"]) == (1, "failed", "auth.revoked")
    assert term.releases.installed() == ["0.1.0"]


def test_another_update_holding_the_lock_gives_status_4(terminal):
    term = terminal()
    term.state_dir.mkdir(parents=True)
    with open(term.state_dir / "update.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        code, report, err = run_update(term)
    assert (code, report) == (4, None)
    assert "別の更新処理が実行中" in err


def test_a_missing_trusted_root_is_a_configuration_error(terminal, tmp_path):
    term = terminal(trusted_root=tmp_path / "nowhere.json")
    code, report, err = run_update(term)
    assert (code, report) == (2, None)
    assert "update.trusted_root" in err and "nowhere.json" in err


# --- power loss -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "checkpoint",
    [
        "update.downloaded",
        "update.unpack:3",
        "update.unpacked",
        "update.testing",
        "update.tested",
        "update.switched",
        "update.done",
    ],
)
def test_a_run_killed_at_any_point_leaves_a_working_current_and_the_next_run_completes(
    world, terminal, checkpoint
):
    term = terminal()
    world.publish_fake("0.2.0")
    code, report, _ = run_update(term, crash=checkpoint)
    assert code == -9 and report is None, f"killed at {checkpoint}"
    working = term.releases.current_version()
    assert working in ("0.1.0", "0.2.0")
    release_tree_ok(term.releases, working)
    code, report, err = run_update(term)
    assert code == 0, err
    release_tree_ok(term.releases, "0.2.0")
    assert _leftovers(term.releases) == []
    assert term.releases.installed() == ["0.1.0", "0.2.0"]
    assert _state(term)["pending"] is None
    if checkpoint == "update.unpack:3":
        assert report["recovered"] == ["releases/.0.2.0.partial"]
    if checkpoint == "update.switched":
        assert "current back to 0.1.0 from 0.2.0" in report["recovered"]


def test_an_install_cut_short_three_times_marks_the_release_bad(world, terminal):
    term = terminal()
    world.publish_fake("0.2.0")
    for _ in range(3):
        assert run_update(term, crash="update.testing")[0] == -9
    code, report, _ = run_update(term)
    assert (code, report["status"]) == (0, "up_to_date")
    assert _state(term)["bad"]["0.2.0"]["code"] == "update.interrupted"
    release_tree_ok(term.releases, "0.1.0")
