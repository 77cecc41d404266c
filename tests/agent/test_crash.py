"""SIGKILL the real ``renkei-agent sync`` at every checkpoint of a run, then let it finish.

The agent kills itself (``RENKEI_AGENT_CRASH_AT=<checkpoint>[:<n>]``, see
``appliance.agent.sync``) at the n-th arrival at a named step boundary: no
``finally``, no flush, no cleanup — as close to a power cut as a process
can get while its kernel keeps running.  One appliance goes through a chain
of runs, each cut at the next checkpoint, with new work before each (a new
business day closed at the server, new files in the outbox), so each cut
also lands in the middle of recovering from the previous one.  At the end a
run without the hook finishes everything, and then:

* every batch of the municipality is in the inbox exactly once, whole (its
  SHA-256), and acknowledged at the server; no half-written file in the inbox;
* every record of every good outbox file is at the server exactly once, and
  every upload exactly once per content; every good file is in sent/ with its
  receipt, every bad one in rejected/ with its report — none lost, none twice;
* the spool and partial/ are empty.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from appliance.agent.download import inbox_name
from appliance.agent.sync import CHECKPOINTS, CRASH_ENV
from common.atomicwrite import is_temporary
from server.batches import list_batches
from server.storage import received_notices, uploads
from tests.agent.helpers import Site, notice_file, publish_days, sha
from tests.server.conftest import API_A, API_B

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent.parent

#: The chain: each run is cut at one of these (``name:n`` = the n-th arrival).
#: Every checkpoint of both phases appears at least once.
CHAIN = (
    "run.started",
    "download.recorded",
    "download.write",
    "download.write:2",
    "download.fetched",
    "download.placed_file",
    "download.placed",
    "download.acked",
    "download.done",
    "download.done:2",
    "download.quarantined",
    "upload.rejected_report",
    "upload.spooled",
    "upload.queued",
    "upload.sending",
    "upload.sent",
    "upload.sent:2",
    "upload.done",
    "upload.sidecars",
    "upload.filed",
    "run.finished",
)


def test_the_chain_names_every_checkpoint():
    assert {step.partition(":")[0] for step in CHAIN} == set(CHECKPOINTS)


def _agent(config: Path, crash: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    env["PYTHONPATH"] = str(ROOT)
    if crash:
        env[CRASH_ENV] = crash
    return subprocess.run(
        [sys.executable, "-m", "appliance.agent.cli", "sync", "--json", "--config", str(config)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _no_temporaries(site: Site) -> None:
    for folder in (site.folders.inbox, site.folders.sent, site.folders.rejected):
        visible = [name for name in os.listdir(folder) if is_temporary(name)]
        assert visible == [], f"half-written files in {folder}: {visible}"
    inbox = os.listdir(site.folders.inbox)
    assert all(name.startswith("ministry-") and name.endswith(".csv") for name in inbox), inbox


def test_sigkill_at_every_checkpoint_then_rerun_loses_and_doubles_nothing(
    agent_server, lgwan_dns, ntp_server, tmp_path
):
    site = Site(agent_server, tmp_path / "site", API_A)
    config = site.write_config(
        tmp_path / "agent.toml", dns_servers=[lgwan_dns.address], ntp_servers=[ntp_server.address]
    )
    good: dict[str, bytes] = {}
    bad: dict[str, bytes] = {}
    try:
        for number, step in enumerate(CHAIN):
            publish_days(agent_server, {API_A: 3, API_B: 1})
            for copy in range(2):
                name = f"day{number:02d}-{copy}.csv"
                good[name] = notice_file(API_A, 3, f"k{number}x{copy}")
                (site.folders.outbox / name).write_bytes(good[name])
            if step == "upload.sent:2":  # the same bytes as an earlier file, under a new name
                good[f"day{number:02d}-again.csv"] = good["day01-0.csv"]
                (site.folders.outbox / f"day{number:02d}-again.csv").write_bytes(
                    good["day01-0.csv"]
                )
            if step == "upload.rejected_report":
                bad["broken.csv"] = notice_file(API_A, 3, "broken", bad=(1,))
                (site.folders.outbox / "broken.csv").write_bytes(bad["broken.csv"])
            blob = None
            if step == "download.quarantined":
                newest = list_batches(agent_server.storage, API_A, pending_only=True)[-1]
                blob = agent_server.blobs.path(newest.sha256)
                original = blob.read_bytes()
                blob.write_bytes(original[:-3] + bytes(b ^ 1 for b in original[-3:]))
            try:
                result = _agent(config, step)
            finally:
                if blob is not None:
                    blob.write_bytes(original)
            assert result.returncode == -signal.SIGKILL, (step, result.returncode, result.stderr)
            _no_temporaries(site)

        final = _agent(config, None)
        assert final.returncode in (0, 1), final.stderr
        again = _agent(config, None)
        assert again.returncode == 0, again.stdout + again.stderr
        assert json.loads(again.stdout)["status"] == "ok"
    finally:
        site.close()

    _no_temporaries(site)
    # every batch: in the inbox exactly once, whole, acknowledged
    batches = list_batches(agent_server.storage, API_A, pending_only=False)
    inbox = site.files("inbox")
    expected = {inbox_name(API_A, b.business_date.isoformat(), b.sequence): b for b in batches}
    assert sorted(inbox) == sorted(expected)
    for name, batch in expected.items():
        assert sha(inbox[name]) == batch.sha256, name
        assert batch.acknowledged_by == site.terminal.terminal_id, name

    # every good file: in sent/ with its receipt; every record at the server exactly once
    sent = site.files("sent")
    assert sorted(n for n in sent if n.endswith(".csv")) == sorted(good)
    for name, data in good.items():
        assert sent[name] == data
        receipt = json.loads(sent[name + ".receipt.json"])
        assert receipt["statement"]["sha256"] == sha(data)
    with agent_server.storage.read() as conn:
        counts = dict(
            conn.execute(
                sa.select(received_notices.c.record_id, sa.func.count())
                .where(
                    received_notices.c.lasdec == API_A, received_notices.c.record_id.like("C-k%")
                )
                .group_by(received_notices.c.record_id)
            ).all()
        )
        per_upload = conn.execute(
            sa.select(uploads.c.sha256, sa.func.count())
            .where(uploads.c.lasdec == API_A)
            .group_by(uploads.c.sha256)
        ).all()
    expected_ids = {
        f"C-k{n}x{c}-{i:05d}" for n in range(len(CHAIN)) for c in range(2) for i in range(3)
    }
    assert set(counts) == expected_ids
    assert set(counts.values()) == {1}
    assert all(count == 1 for _sha, count in per_upload)
    assert {sha(data) for data in good.values()} <= {digest for digest, _ in per_upload}
    assert sha(bad["broken.csv"]) not in {digest for digest, _ in per_upload}

    # every bad file: in rejected/ with its report, once
    rejected = site.files("rejected")
    assert sorted(rejected) == ["broken.csv", "broken.csv.report.txt"]
    assert rejected["broken.csv"] == bad["broken.csv"]

    assert os.listdir(site.folders.outbox) == []
    assert os.listdir(site.folders.spool) == []
    assert os.listdir(site.folders.partial) == []
