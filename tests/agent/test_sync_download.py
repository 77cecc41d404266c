"""The download phase of ``run_sync`` against the real server under gunicorn (spec §5.1).

Every test enrolls its own terminal; batches belong to a municipality, so
tests that share one assert relative to what the server lists as pending
before the run.  :class:`~tests.agent.helpers.Site` is one appliance
(config, folders, queue).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.agent.preflight import Check
from common import statement
from tests.agent.helpers import Site, batch_row, expected_name, pending, publish_days, sha
from tests.server.conftest import API_A, API_B, API_C

pytestmark = pytest.mark.slow


@pytest.fixture
def site_factory(agent_server, tmp_path):  # type: ignore[no-untyped-def]
    sites: list[Site] = []

    def make(lasdec: str, **overrides: Any) -> Site:
        site = Site(agent_server, tmp_path / f"site{len(sites)}", lasdec, **overrides)
        sites.append(site)
        return site

    yield make
    for site in sites:
        site.close()


# --- the tests -----------------------------------------------------------------------------------


def test_a_normal_day_places_every_batch_once_and_acknowledges_it(agent_server, site_factory):
    site = site_factory(API_B)
    waiting = pending(agent_server, API_B)
    assert waiting, "the fixture publishes a batch for API_B"
    lines: list[str] = []

    report = site.sync(progress=lines.append)

    assert report.status == "ok" and report.exit_code == 0, report.to_json()
    inbox = site.files("inbox")
    assert sorted(inbox) == sorted(expected_name(b) for b in waiting)
    for batch in waiting:
        assert sha(inbox[expected_name(batch)]) == batch.sha256
        acked = batch_row(agent_server, API_B, batch.batch_id)
        assert acked.acknowledged_by == site.terminal.terminal_id
        assert site.queue.download_state(batch.batch_id).state == "acknowledged"
    assert pending(agent_server, API_B) == []
    assert list(site.folders.partial.iterdir()) == []
    assert report.counts()["downloads"]["placed"] == len(waiting)
    assert any("placed as" in line for line in lines)
    assert site.queue.last_run().status == "ok"

    again = site.sync()
    assert again.status == "ok" and again.batches == []
    assert site.files("inbox") == inbox


def test_three_days_offline_then_one_sync_places_them_in_order(agent_server, site_factory):
    site = site_factory(API_C)
    site.sync()  # today's batch
    publish_days(agent_server, {API_A: 2, API_B: 1, API_C: 3}, days=3)
    waiting = pending(agent_server, API_C)
    assert len(waiting) == 3

    report = site.sync()

    placed = [e for e in report.batches if e["outcome"] == "placed"]
    assert [e["sequence"] for e in placed] == sorted(b.sequence for b in waiting)
    assert [e["batch_id"] for e in placed] == [b.batch_id for b in waiting]
    inbox = site.files("inbox")
    for batch in waiting:
        assert sha(inbox[expected_name(batch)]) == batch.sha256
    assert pending(agent_server, API_C) == []
    assert report.gaps == [] and report.status == "ok"
    sequences = site.queue.placed_sequences()
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))


def test_a_batch_taken_by_another_terminal_is_reported_as_a_gap(agent_server, site_factory):
    site = site_factory(API_B)
    site.sync()
    publish_days(agent_server, {API_B: 1})
    (taken,) = pending(agent_server, API_B)
    other = agent_server.enroll(API_B)
    with agent_server.transport(other) as transport:
        transport.acknowledge(taken.batch_id, taken.sha256)
    publish_days(agent_server, {API_B: 1})

    report = site.sync()

    assert report.gaps == [taken.sequence]
    assert [p.code for p in report.problems] == ["batch.gap"]
    assert report.status == "partial" and report.exit_code == 1
    assert str(taken.sequence) in report.problems[0].message
    assert "連番" in report.problems[0].message_ja


def _corrupt(path: Path) -> bytes:
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    return original


def test_a_tampered_batch_is_quarantined_never_placed_nor_acknowledged(agent_server, site_factory):
    site = site_factory(API_A)
    site.sync()
    publish_days(agent_server, {API_A: 3, API_B: 1}, days=3)
    first, bad, last = pending(agent_server, API_A)
    blob = agent_server.blobs.path(bad.sha256)
    original = _corrupt(blob)
    try:
        report = site.sync()
    finally:
        blob.write_bytes(original)

    assert report.status == "partial" and report.exit_code == 1
    assert [p.code for p in report.problems] == ["batch.hash_mismatch", "batch.gap"]
    assert report.gaps == [bad.sequence]
    inbox = site.files("inbox")
    assert expected_name(bad) not in inbox
    assert sha(inbox[expected_name(first)]) == first.sha256
    assert sha(inbox[expected_name(last)]) == last.sha256
    assert [b.batch_id for b in pending(agent_server, API_A)] == [bad.batch_id]
    row = site.queue.download_state(bad.batch_id)
    assert row.state == "quarantined"
    kept = Path(row.path)
    assert kept.parent == site.folders.quarantine and sha(kept.read_bytes()) != bad.sha256
    text = (kept.parent / (kept.name + ".report.txt")).read_bytes().decode("utf-8-sig")
    assert "batch.hash_mismatch" in text and "inbox フォルダに置いていません" in text
    assert list(site.folders.partial.iterdir()) == []

    # The server's file is whole again: the next run fetches it afresh and places it.
    healed = site.sync()
    assert healed.status == "ok", healed.to_json()
    assert sha(site.files("inbox")[expected_name(bad)]) == bad.sha256
    assert pending(agent_server, API_A) == []


@pytest.mark.parametrize(
    "start",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="first-half"),
        pytest.param(lambda data: b"\xff" * (len(data) // 2), id="garbage-prefix"),
        pytest.param(lambda data: data + b"extra", id="longer-than-the-file"),
        pytest.param(lambda data: data, id="already-complete"),
    ],
)
def test_a_partial_download_is_resumed_or_restarted_and_placed_whole(
    agent_server, site_factory, start
):
    site = site_factory(API_C)
    site.sync()
    publish_days(agent_server, {API_C: 4})
    (batch,) = pending(agent_server, API_C)
    data = agent_server.blobs.get(batch.sha256)
    (site.folders.partial / batch.batch_id).write_bytes(start(data))

    report = site.sync()

    assert report.status == "ok", report.to_json()
    assert site.files("inbox")[expected_name(batch)] == data
    assert list(site.folders.partial.iterdir()) == []


def test_a_server_error_leaves_the_batch_for_the_next_run(agent_server, site_factory):
    site = site_factory(API_B)
    site.sync()
    publish_days(agent_server, {API_B: 2}, days=2)
    first, second = pending(agent_server, API_B)
    blob = agent_server.blobs.path(first.sha256)
    hidden = blob.with_name(blob.name + ".away")
    os.rename(blob, hidden)
    try:
        report = site.sync()
    finally:
        os.rename(hidden, blob)

    assert report.status == "failed" and report.exit_code == 1
    assert [p.code for p in report.problems] == ["batch.file_missing"]  # the server's 500
    assert site.files("inbox").keys().isdisjoint({expected_name(first), expected_name(second)})
    assert site.queue.download_state(first.batch_id).state == "downloading"
    assert site.queue.download_state(second.batch_id) is None  # not before the first

    again = site.sync()
    assert again.status == "ok"
    assert [e["sequence"] for e in again.batches if e["outcome"] == "placed"] == [
        first.sequence,
        second.sequence,
    ]


def test_a_manifest_not_signed_by_the_pinned_key_is_quarantined(agent_server, site_factory):
    other_key = statement.public_key_to_text(Ed25519PrivateKey.generate().public_key())
    site = site_factory(API_A, server_key=other_key)
    publish_days(agent_server, {API_A: 1})
    waiting = pending(agent_server, API_A)

    report = site.sync()

    assert {p.code for p in report.problems} == {"batch.signature"}
    assert site.files("inbox") == {}
    assert [b.batch_id for b in pending(agent_server, API_A)] == [b.batch_id for b in waiting]
    reports = sorted(p.name for p in site.folders.quarantine.iterdir())
    assert reports == sorted(f"{b.batch_id}.csv.report.txt" for b in waiting)
    # a second run writes no second copy of the same report
    site.sync()
    assert sorted(p.name for p in site.folders.quarantine.iterdir()) == reports


def test_a_clock_too_far_off_refuses_the_run_before_any_request(site_factory):
    site = site_factory(API_A)

    class NoServer:
        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            raise AssertionError(f"the transport was used: {name}")

    checks = [
        Check("clock", "fail", "this appliance's clock is 120.000 s ahead", "時計が進んでいます"),
        Check("dns", "pass", "ok", ""),
    ]
    report = site.sync(transport=NoServer(), preflight=lambda: checks)

    assert report.refused and report.status == "refused" and report.exit_code == 3
    assert report.problems[0].code == "preflight.clock"
    assert report.problems[0].message_ja == "時計が進んでいます"
    assert site.queue.last_run().status == "refused"


def test_preflight_warnings_and_a_dns_failure_are_reported_not_fatal(agent_server, site_factory):
    site = site_factory(API_C)
    checks = [
        Check("clock", "warn", "1.5 s behind", "遅れています"),
        Check("dns", "fail", "no answer from 10.0.0.1", "DNSサーバ 10.0.0.1 から応答がありません"),
    ]
    report = site.sync(preflight=lambda: checks)
    assert not report.refused
    assert [w.code for w in report.warnings] == ["preflight.clock"]
    assert [p.code for p in report.problems] == ["preflight.dns"]
    assert report.status == "partial"


def test_a_full_disk_stops_the_downloads_and_the_next_run_finishes(
    agent_server, site_factory, monkeypatch
):
    import errno

    from appliance.agent import download

    site = site_factory(API_B)
    site.sync()
    publish_days(agent_server, {API_B: 1})
    (batch,) = pending(agent_server, API_B)

    def full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(download, "place_atomically", full)
        report = site.sync()

    assert [p.code for p in report.problems] == ["disk.full"]
    assert report.status == "failed" and "ディスク" in report.problems[0].message_ja
    assert site.files("inbox").get(expected_name(batch)) is None
    assert [b.batch_id for b in pending(agent_server, API_B)] == [batch.batch_id]
    assert site.queue.download_state(batch.batch_id).state == "downloading"

    assert site.sync().status == "ok"
    assert sha(site.files("inbox")[expected_name(batch)]) == batch.sha256


def test_half_written_files_a_power_cut_left_are_swept_but_staff_files_are_not(site_factory):
    site = site_factory(API_C)
    leftovers = [
        site.folders.inbox / ".ministry-131032-20261127-000001.csv.tmp-abc123",
        site.folders.sent / ".a.csv.receipt.json.tmp-x",
        site.folders.partial / ".x.tmp-y",
    ]
    for path in leftovers:
        path.write_bytes(b"half")
    staff = site.folders.outbox / ".draft.csv.tmp-1"
    staff.write_bytes(b"the staff's own")
    kept = site.folders.inbox / "notes.txt"
    kept.write_bytes(b"not ours to remove")

    site.sync(transport=None, download=False)

    assert not any(path.exists() for path in leftovers)
    assert staff.read_bytes() == b"the staff's own" and kept.exists()
