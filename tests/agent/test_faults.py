"""Faults around the appliance, through a whole real run: a full disk, DNS failure, the server down.

**Disk full, for real.**  The folder root and the state folder are each a
small tmpfs, mounted in a private mount namespace that a helper process
holds (``unshare --mount``): nothing is mounted where the rest of the
machine sees it, and the mounts vanish with the helper, even if pytest is
killed (the helper waits on a pipe from this process).  The agent runs as
a real ``renkei-agent sync`` subprocess inside that namespace
(``nsenter``), against the module's server under gunicorn; the test reads
the same files through ``/proc/<helper>/root`` (and the queue database
from inside, see :meth:`PrivateTmpfs.python`).  The file systems are filled
with a filler file to a chosen number of free bytes, so that exactly the
intended writes hit ENOSPC; then the filler goes and the next run must
finish everything, exactly once.  Skipped only when not root or when tmpfs
cannot be mounted (a container without CAP_SYS_ADMIN).

**DNS and the server.**  The same cycle with the LGWAN DNS (dnsmasq) stopped
or not knowing the server's name, and with gunicorn stopped: every problem
named in English and Japanese, nothing lost, and the run still does what
needs no server (outbox files checked: good ones queued, bad ones rejected).
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from appliance.agent.cli import main
from common.atomicwrite import is_temporary
from tests.agent.conftest import LOOPBACK, SERVER_NAME
from tests.agent.helpers import (
    Site,
    drop,
    expected_name,
    notice_file,
    pending,
    publish_days,
    sha,
    stored_records,
    uploads_of,
)
from tests.server.conftest import API_A, API_B, API_C

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- tmpfs in a private mount namespace ----------------------------------------------------------


class PrivateTmpfs:
    """Small tmpfs mounts that only a helper process's private mount namespace sees.

    ``sizes`` maps mount points (existing, empty folders) to tmpfs sizes in
    bytes.  :meth:`view` is a path to the same file as the namespace sees it;
    :meth:`run` runs a program inside the namespace.
    """

    def __init__(self, sizes: Mapping[Path, int]):
        self.sizes = dict(sizes)
        self.process: subprocess.Popen | None = None

    def start(self) -> PrivateTmpfs:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        unshare, nsenter = shutil.which("unshare"), shutil.which("nsenter")
        if unshare is None or nsenter is None:
            pytest.skip("unshare/nsenter are not installed (Debian: util-linux)")
        self.nsenter = nsenter
        mounts = "".join(
            f"mount -t tmpfs -o size={size},mode=0700 renkei-test {shlex.quote(str(point))}\n"
            for point, size in self.sizes.items()
        )
        # After "ready" the helper only waits for its stdin to close: when this process
        # closes it, or dies, the helper ends and its namespace with the mounts goes too.
        script = f"set -e\n{mounts}echo ready\nexec cat >/dev/null\n"
        self.process = subprocess.Popen(
            [unshare, "--mount", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        if self.process.stdout.readline().strip() != b"ready":
            self.process.wait(timeout=10)
            error = self.process.stderr.read().decode("utf-8", "replace").strip()
            self.stop()
            pytest.skip(f"cannot mount a tmpfs here: {error}")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def view(self, path: Path) -> Path:
        """``path`` as the namespace sees it, from outside."""
        return Path(f"/proc/{self.pid}/root") / Path(path).relative_to("/")

    def run(self, argv: list[str], **options) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
        """Run ``argv`` inside the namespace, with this repository importable."""
        env = {k: v for k, v in os.environ.items() if k != "RENKEI_AGENT_CRASH_AT"}
        env["PYTHONPATH"] = str(ROOT)
        return subprocess.run(
            [self.nsenter, f"--target={self.pid}", "--mount", f"--wd={ROOT}", "--", *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            **options,
        )

    def python(self, code: str, *args: str) -> Any:
        """Run Python ``code`` inside the namespace; what it printed last, as JSON.

        SQLite must be opened from inside: it resolves symbolic links in a database's
        path, and ``/proc/<pid>/root`` is one — to this process's own root.
        """
        result = self.run([sys.executable, "-c", code, *args])
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])

    def free(self, point: Path) -> int:
        st = os.statvfs(self.view(point))
        return st.f_bavail * st.f_frsize

    def fill(self, point: Path, *, leave: int) -> None:
        """Grow the filler file at the mount's top until ``leave`` bytes (± a page) are free."""
        filler = self.view(point) / "filler"
        with filler.open("ab") as handle:
            want = self.free(point) - leave
            while want >= PAGE:
                try:
                    handle.write(b"\0" * min(want, 1 << 20))
                    handle.flush()
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
                want = self.free(point) - leave
        assert abs(self.free(point) - leave) <= PAGE or leave == 0, (self.free(point), leave)

    def unfill(self, point: Path) -> None:
        (self.view(point) / "filler").unlink(missing_ok=True)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.stdin is not None and not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


MIB = 1 << 20


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[tuple[PrivateTmpfs, Path, Path]]:  # type: ignore[no-untyped-def]
    """(mounts, folder root, state folder): a 1 MiB and a 2 MiB tmpfs, seen only by the agent."""
    srv, state = tmp_path / "srv", tmp_path / "state"
    srv.mkdir()
    state.mkdir()
    mounts = PrivateTmpfs({srv: MIB, state: 2 * MIB}).start()
    try:
        yield mounts, srv, state
    finally:
        mounts.stop()


@pytest.fixture
def tmpfs_site(agent_server, lgwan_dns, ntp_server, tmp_path, tmpfs):  # type: ignore[no-untyped-def]
    """``make(lasdec)`` → (site, agent.toml, mounts, srv, state): an appliance on the tmpfs mounts.

    The site's paths (for the test) go through ``/proc/<helper>/root``; agent.toml has the
    real paths, which only the agent, inside the namespace, sees as the tmpfs.
    """
    mounts, srv, state = tmpfs

    def make(lasdec: str):  # type: ignore[no-untyped-def]
        site = Site(
            agent_server,
            tmp_path / "site",
            lasdec,
            open_queue=False,
            folder_root=mounts.view(srv),
            state_dir=mounts.view(state),
        )
        config = site.write_config(
            tmp_path / "agent.toml",
            folder_root=str(srv),
            state_dir=str(state),
            dns_servers=[lgwan_dns.address],
            ntp_servers=[ntp_server.address],
        )
        return site, config, mounts, srv, state

    return make


def agent(mounts: PrivateTmpfs, config: Path, *args: str) -> tuple[int, dict, str]:
    """``renkei-agent sync --json`` inside the namespace: (exit status, report or {}, stderr)."""
    argv = [sys.executable, "-m", "appliance.agent.cli", "sync", "--json", "--config", str(config)]
    result = mounts.run([*argv, *args])
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    assert "Traceback" not in result.stderr, result.stderr  # a full disk is no crash
    return result.returncode, report, result.stderr


QUEUE_STATE = """
import json, sys
from appliance.agent.queue import Queue
with Queue(sys.argv[1]) as queue:
    check = queue.db.execute("PRAGMA integrity_check").fetchone()[0]
    downloads = [[row.batch_id, row.state] for row in queue.downloads()]
    uploads = [[row.file_name, row.state] for row in queue.uploads()]
print(json.dumps([check, downloads, uploads]))
"""


def queue_state(mounts: PrivateTmpfs, state: Path) -> list:
    """[integrity check, downloads [[batch, state]], uploads [[name, state]]] of the queue."""
    return mounts.python(QUEUE_STATE, str(state / "queue.sqlite3"))


def visible(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def codes(report: dict) -> list[str]:
    return [problem["code"] for problem in report["problems"]]


def assert_bilingual(problem: dict, *english: str) -> None:
    """The problem names the cause in English and tells staff, in Japanese, to free space."""
    for needle in english:
        assert needle in problem["message"], problem
    assert "ディスクの空き" in problem["message_ja"], problem


# --- disk full ---------------------------------------------------------------------------------


def test_a_full_disk_stops_placing_and_spooling_loses_nothing_and_the_next_run_finishes(
    agent_server, tmpfs_site
):
    site, config, mounts, srv, state = tmpfs_site(API_A)
    (batch,) = pending(agent_server, API_A)
    data = notice_file(API_A, 1000, "full")
    (site.folders.outbox / "big.csv").write_bytes(data)
    # The inbox cannot take the batch; the state folder takes the download (partial/) and
    # the queue's writes, but not a copy of the outbox file into the spool.
    mounts.fill(srv, leave=4 * PAGE)
    mounts.fill(state, leave=batch.size + 200 * 1024)
    assert mounts.free(state) - batch.size < len(data)

    status, report, stderr = agent(mounts, config)

    assert status == 1, stderr
    assert report["status"] == "failed" and report["exit_code"] == 1
    assert codes(report) == ["disk.full", "disk.full"]
    placing, spooling = report["problems"]
    assert placing["subject"] == batch.batch_id
    assert_bilingual(placing, "No space left on device", "nothing was placed")
    assert_bilingual(spooling, "upload phase stopped", "disk is full", "nothing was lost")
    # nothing lost, nothing half-done where staff look
    assert site.files("outbox") == {"big.csv": data}
    assert visible(site.folders.inbox) == []
    assert visible(site.folders.spool) == []
    assert visible(site.folders.partial) == [batch.batch_id]  # whole, resumable
    assert [b.batch_id for b in pending(agent_server, API_A)] == [batch.batch_id]
    assert uploads_of(site, data) == 0

    # Still full, and now the queue database cannot grow either.
    mounts.fill(state, leave=0)
    status, report, stderr = agent(mounts, config)

    assert status == 1 and report == {}, stderr
    assert "disk is full" in stderr and "ディスク" in stderr, stderr
    assert str(state) in stderr  # names where to free space

    mounts.unfill(srv)
    mounts.unfill(state)
    assert queue_state(mounts, state) == ["ok", [[batch.batch_id, "downloading"]], []]

    status, report, stderr = agent(mounts, config)

    assert status == 0 and report["status"] == "ok", stderr
    inbox = site.files("inbox")
    assert (
        list(inbox) == [expected_name(batch)] and sha(inbox[expected_name(batch)]) == batch.sha256
    )
    assert pending(agent_server, API_A) == []
    sent = site.files("sent")
    assert sorted(sent) == ["big.csv", "big.csv.receipt.json"] and sent["big.csv"] == data
    assert uploads_of(site, data) == 1
    assert stored_records(site, "full") == [f"C-full-{i:05d}" for i in range(1000)]
    assert visible(site.folders.outbox) == visible(site.folders.spool) == []
    assert visible(site.folders.partial) == []

    status, again, stderr = agent(mounts, config)
    assert status == 0 and again["batches"] == [] and again["files"] == [], stderr
    assert site.files("inbox") == inbox and site.files("sent") == sent
    assert uploads_of(site, data) == 1
    assert queue_state(mounts, state) == [
        "ok",
        [[batch.batch_id, "acknowledged"]],
        [["big.csv", "done"]],
    ]


def test_a_file_sent_but_not_filed_for_lack_of_space_is_filed_once_by_the_next_run(
    agent_server, tmpfs_site
):
    site, config, mounts, srv, _state = tmpfs_site(API_B)
    (batch,) = pending(agent_server, API_B)
    data = notice_file(API_B, 40, "filed")
    (site.folders.outbox / "notice.csv").write_bytes(data)
    mounts.fill(srv, leave=0)  # only the staff folders are full

    status, report, stderr = agent(mounts, config)

    # The batch could not be placed; the file went into the spool and to the server,
    # but there was no room to file it (and its receipt) in sent/.
    assert status == 1 and report["status"] == "failed", stderr
    assert codes(report) == ["disk.full", "disk.full"]
    assert report["problems"][0]["subject"] == batch.batch_id
    for problem in report["problems"]:
        assert_bilingual(problem, "No space left on device")
    assert uploads_of(site, data) == 1
    assert "notice.csv" not in site.files("sent")
    assert visible(site.folders.inbox) == [] and visible(site.folders.outbox) == []
    assert len(visible(site.folders.spool)) == 1  # the original, with its receipt in the queue
    assert [n for n in visible(site.folders.sent) if is_temporary(n)] == []

    mounts.unfill(srv)
    status, report, stderr = agent(mounts, config)

    assert status == 0 and report["status"] == "ok", stderr
    assert [e["outcome"] for e in report["files"]] == ["sent"]
    sent = site.files("sent")
    assert sorted(sent) == ["notice.csv", "notice.csv.receipt.json"] and sent["notice.csv"] == data
    assert json.loads(sent["notice.csv.receipt.json"])["statement"]["sha256"] == sha(data)
    assert uploads_of(site, data) == 1
    assert stored_records(site, "filed") == [f"C-filed-{i:05d}" for i in range(40)]
    assert sha(site.files("inbox")[expected_name(batch)]) == batch.sha256
    assert visible(site.folders.spool) == [] and pending(agent_server, API_B) == []


#: Inside the namespace: writes to the queue on a full disk, then opening it, then again with room.
QUEUE_ON_A_FULL_DISK = """
import errno, hashlib, json, sys
from pathlib import Path
from appliance.agent.errors import QueueError
from appliance.agent.queue import Queue, RunRow

path = Path(sys.argv[1])
sha = lambda text: hashlib.sha256(text.encode()).hexdigest()
def fill():
    with open(path.parent / "filler", "ab", buffering=0) as handle:
        while True:
            try:
                handle.write(bytes(64 << 10))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
        while True:  # and the last bytes, down to nothing
            try:
                handle.write(b"x")
            except OSError:
                return
def refused(write):
    try:
        write()
    except QueueError as exc:
        return [exc.code, exc.message, exc.message_ja]
    return None
def rows(queue):
    return [[row.file_name, row.state] for row in queue.uploads()], queue.last_run().run_id

queue = Queue(path)
for number in range(20):
    queue.add_upload(f"f{number}.csv", sha(str(number)), f"/spool/{number}", now=1.0)
queue.record_run(RunRow(started_at=1.0, status="ok", summary_json="{}"))
queue.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every later write must grow the log
before = rows(queue)
fill()
writes = [
    refused(lambda: queue.add_upload("new.csv", sha("new"), "/spool/new", now=2.0)),
    refused(lambda: queue.record_run(RunRow(started_at=2.0, status="ok", summary_json="x" * 99999))),
    refused(lambda: queue.mark_sending(1, now=2.0)),
]
unchanged = rows(queue) == before
queue.close()  # removes the log and the shared memory: fill their room too
fill()
opening = refused(lambda: Queue(path))
(path.parent / "filler").unlink()
with Queue(path) as queue:
    check = queue.db.execute("PRAGMA integrity_check").fetchone()[0]
    after = rows(queue) == before
    added = queue.add_upload("new.csv", sha("new"), "/spool/new", now=3.0)
print(json.dumps({"writes": writes, "unchanged": unchanged, "opening": opening,
                  "check": check, "after": after, "added": [added.upload_id, added.state]}))
"""


def test_the_queue_on_a_full_disk_refuses_writes_clearly_and_stays_whole(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    mounts = PrivateTmpfs({state: MIB}).start()
    try:
        got = mounts.python(QUEUE_ON_A_FULL_DISK, str(state / "queue.sqlite3"))
    finally:
        mounts.stop()

    assert len(got["writes"]) == 3
    for refused in got["writes"]:
        assert refused is not None, "a write succeeded on a full disk"
        code, message, japanese = refused
        assert code == "queue.disk_full"
        assert "database or disk is full" in message and str(state) in message
        assert "ディスク" in japanese and "失われていません" in japanese
    assert got["unchanged"], "a refused write left something behind"
    code, message, japanese = got["opening"]  # opening needs room for its shared memory
    assert code == "queue.disk_full" and str(state) in message and "ディスク" in japanese
    assert got["check"] == "ok" and got["after"]
    assert got["added"] == [21, "queued"]


# --- DNS failure and the server down, through the whole cycle ---------------------------------


def invoke(config: Path, *args: str) -> tuple[int, dict]:
    """``renkei-agent sync --json`` in this process (the CLI as the timer runs it)."""
    result = CliRunner().invoke(
        main, ["sync", "--json", "--config", str(config), *args], catch_exceptions=False
    )
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else {}


def network_day(server, site: Site, tag: str) -> tuple[list, bytes, bytes]:  # type: ignore[no-untyped-def]
    """A new business day at the server and two files in the outbox: one good, one not."""
    publish_days(server, {site.lasdec: 2})
    good = notice_file(site.lasdec, 3, tag)
    bad = notice_file(site.lasdec, 3, f"{tag}bad", bad=(1,))
    drop(site, "good.csv", good)
    drop(site, "bad.csv", bad)
    return pending(server, site.lasdec), good, bad


def assert_nothing_lost_and_outbox_handled(site: Site, report: dict, waiting, good, bad):  # type: ignore[no-untyped-def]
    """The server got nothing; the outbox was still checked: good queued, bad rejected."""
    assert report["status"] == "failed" and report["exit_code"] == 1
    for problem in report["problems"]:
        assert problem["message"] and problem["message_ja"], problem
    outcomes = {(event["name"], event["outcome"]) for event in report["files"]}
    assert {("good.csv", "queued"), ("good.csv", "failed"), ("bad.csv", "rejected")} <= outcomes
    assert site.files("outbox") == {} and site.files("inbox") == {}
    assert site.files("rejected")["bad.csv"] == bad
    assert "送信していません" in site.files("rejected")["bad.csv.report.txt"].decode("utf-8-sig")
    ((name, state, error),) = [(r.file_name, r.state, r.last_error) for r in site.queue.uploads()]
    assert (name, state) == ("good.csv", "failed")
    assert [p.read_bytes() for p in site.folders.spool.iterdir()] == [good]
    assert pending(site.server, site.lasdec) == waiting
    assert uploads_of(site, good) == 0 and uploads_of(site, bad) == 0
    return error


def assert_all_done_once(site: Site, report: dict, waiting, good, tag: str) -> None:  # type: ignore[no-untyped-def]
    assert report["status"] == "ok", report["problems"]
    inbox = site.files("inbox")
    assert sorted(inbox) == sorted(expected_name(batch) for batch in waiting)
    assert all(sha(inbox[expected_name(batch)]) == batch.sha256 for batch in waiting)
    assert pending(site.server, site.lasdec) == []
    assert site.files("sent")["good.csv"] == good and uploads_of(site, good) == 1
    assert stored_records(site, tag) == [f"C-{tag}-{i:05d}" for i in range(3)]
    assert site.files("outbox") == {} and list(site.folders.spool.iterdir()) == []


@pytest.mark.parametrize("fault", ["dns-down", "name-unknown"])
def test_a_dns_failure_is_reported_loses_nothing_and_the_outbox_is_still_checked(
    agent_server, lgwan_dns, dns_server_factory, ntp_server, tmp_path, fault
):
    site = Site(agent_server, tmp_path / "site", API_C)
    try:
        waiting, good, bad = network_day(agent_server, site, f"d{fault[:4]}")
        healthy = {"dns_servers": [lgwan_dns.address], "ntp_servers": [ntp_server.address]}
        if fault == "dns-down":
            down = dns_server_factory({SERVER_NAME: [LOOPBACK]})
            down.stop()  # its port now answers nothing
            broken = {**healthy, "dns_servers": [down.address]}
        else:  # the LGWAN DNS answers, but does not know this name (NXDOMAIN)
            broken = {**healthy, "server_url": f"https://elsewhere.test:{agent_server.port}"}
        config = site.write_config(tmp_path / "agent.toml", **broken)

        status, report = invoke(config)

        assert status == 1, report
        checks = {check["name"]: check for check in report["checks"]}
        assert checks["clock"]["status"] == "pass"
        assert checks["dns"]["status"] == "fail" and checks["dns"]["hint"]
        problems = [(p["code"], p["subject"]) for p in report["problems"]]
        assert problems[:2] == [("preflight.dns", ""), ("net.dns", "")]  # listing the batches
        assert ("net.dns", "good.csv") in problems
        error = assert_nothing_lost_and_outbox_handled(site, report, waiting, good, bad)
        assert error.startswith("net.dns")

        config = site.write_config(tmp_path / "agent.toml", **healthy)
        status, report = invoke(config, "--retry-failed")  # staff's "send now"

        assert status == 0, report
        assert_all_done_once(site, report, waiting, good, f"d{fault[:4]}")
    finally:
        site.close()


def test_the_server_down_is_reported_loses_nothing_and_the_outbox_is_still_checked(
    agent_server, lgwan_dns, ntp_server, tmp_path
):
    site = Site(agent_server, tmp_path / "site", API_B)
    port = agent_server.port
    try:
        waiting, good, bad = network_day(agent_server, site, "down")
        config = site.write_config(
            tmp_path / "agent.toml",
            dns_servers=[lgwan_dns.address],
            ntp_servers=[ntp_server.address],
        )
        agent_server.gunicorn.stop()
        try:
            status, report = invoke(config)
        finally:
            agent_server.gunicorn.start(port=port)

        assert status == 1, report
        assert {check["status"] for check in report["checks"]} == {"pass"}
        problems = [(p["code"], p["subject"]) for p in report["problems"]]
        assert problems[0] == ("net.refused", "")
        assert ("net.refused", "good.csv") in problems
        assert "サーバとの通信に失敗しました" in report["problems"][0]["message_ja"]
        error = assert_nothing_lost_and_outbox_handled(site, report, waiting, good, bad)
        assert error.startswith("net.refused")

        status, report = invoke(config, "--retry-failed")

        assert status == 0, report
        assert_all_done_once(site, report, waiting, good, "down")
    finally:
        site.close()
