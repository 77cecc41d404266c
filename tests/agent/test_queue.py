"""The local queue: real SQLite files, real child processes killed with SIGKILL."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from appliance.agent.config import RetryPolicy
from appliance.agent.errors import AgentError, BusyError, QueueError
from appliance.agent.queue import (
    DOWNLOAD_TRANSITIONS,
    MIGRATIONS,
    UPLOAD_TRANSITIONS,
    DownloadRow,
    Queue,
    RunRow,
    UploadRow,
    backoff,
    migrate,
)

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000.0


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def queue(tmp_path: Path) -> Queue:
    q = Queue(tmp_path / "queue.sqlite3")
    yield q
    q.close()


def child(script: str, path: Path) -> subprocess.Popen[str]:
    """A Python child running ``script`` with ``PATH`` (the queue file) defined."""
    code = f"import sys\nPATH = {str(path)!r}\n" + textwrap.dedent(script)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )


def wait_for(proc: subprocess.Popen[str], word: str) -> list[str]:
    lines = []
    while True:
        line = proc.stdout.readline()
        assert line, f"child ended before {word!r}: {lines}"
        lines.append(line.strip())
        if line.strip() == word:
            return lines


def kill(proc: subprocess.Popen[str]) -> list[str]:
    """SIGKILL the child; the whole lines it printed before it died (a line the kill cut short
    is no report: its end, and so the commit it names, may be missing)."""
    proc.send_signal(signal.SIGKILL)
    rest = proc.stdout.read().split("\n")[:-1]
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    return rest


def integrity(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


# --- connection and migrations ---------------------------------------------------------------


def test_every_connection_is_wal_and_synchronous_full(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    for _ in range(2):  # a new file, then an existing one
        with Queue(path) as q:
            assert q.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert q.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_migrations_are_recorded_and_not_rerun(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    with Queue(path) as q:
        names = [row["name"] for row in q.db["_migrations"].rows]
        assert names == [name for name, _ in MIGRATIONS]
        assert migrate(q.db) == []
        q.add_upload("a.csv", sha("a"), "spool/a.csv", now=T0)
    with Queue(path) as q:  # reopening applies nothing and keeps the data
        assert migrate(q.db) == []
        assert [u.file_name for u in q.uploads()] == ["a.csv"]
        assert {"downloads", "uploads", "runs", "_migrations"} <= set(q.db.table_names())


def test_a_failing_migration_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    Queue(path).close()

    def half(db):
        db.execute("CREATE TABLE half_done (x)")
        db.execute("INSERT INTO half_done VALUES (1)")
        raise RuntimeError("power cut")

    with Queue(path) as q:
        with pytest.raises(RuntimeError):
            migrate(q.db, [*MIGRATIONS, ("003_half", half)])
        assert "half_done" not in q.db.table_names()
        assert "003_half" not in [row["name"] for row in q.db["_migrations"].rows]
        applied = migrate(
            q.db, [*MIGRATIONS, ("003_half", lambda db: db.execute("CREATE TABLE half_done (x)"))]
        )
        assert applied == ["003_half"]


def test_a_database_from_a_newer_agent_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    with Queue(path) as q:
        q.db["_migrations"].insert({"name": "999_future", "applied_at": T0})
    with pytest.raises(QueueError) as caught:
        Queue(path)
    assert caught.value.code == "queue.schema"
    assert "999_future" in caught.value.message


@pytest.mark.parametrize("content", [None, b"this is not a database" * 100])
def test_unopenable_database(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "queue.sqlite3"
    if content is None:
        path = tmp_path / "missing-folder" / "queue.sqlite3"
    else:
        path.write_bytes(content)
    with pytest.raises(QueueError) as caught:
        Queue(path)
    assert caught.value.code == "queue.open"
    assert str(path) in caught.value.message


# --- uploads ---------------------------------------------------------------------------------


def test_upload_lifecycle(queue: Queue) -> None:
    row = queue.add_upload("notice.csv", sha("n"), "/spool/notice.csv", now=T0)
    assert isinstance(row, UploadRow)
    assert (row.state, row.attempts, row.next_try, row.created_at, row.queued_at) == (
        "queued",
        0,
        T0,
        T0,
        T0,
    )
    assert queue.due_uploads(now=T0 - 1) == []
    assert [u.upload_id for u in queue.due_uploads(now=T0)] == [row.upload_id]

    queue.mark_sending(row.upload_id, now=T0 + 1)
    queue.mark_failed(row.upload_id, "net.timeout: no answer", now=T0 + 2, next_try=T0 + 60)
    failed = queue.upload(row.upload_id)
    assert (failed.state, failed.attempts, failed.last_error, failed.next_try) == (
        "failed",
        1,
        "net.timeout: no answer",
        T0 + 60,
    )
    assert queue.due_uploads(now=T0 + 59) == []
    assert [u.upload_id for u in queue.due_uploads(now=T0 + 60)] == [row.upload_id]

    queue.mark_sending(row.upload_id, now=T0 + 61)
    receipt = json.dumps({"statement": {"accepted": ["r1"]}, "signature": {}})
    queue.mark_done(row.upload_id, receipt, now=T0 + 62)
    done = queue.upload(row.upload_id)
    assert (done.state, done.attempts, done.receipt_json, done.last_error, done.updated_at) == (
        "done",
        2,
        receipt,
        None,
        T0 + 62,
    )
    assert queue.due_uploads(now=T0 + 10_000) == []


def test_add_upload_is_idempotent_by_content(queue: Queue) -> None:
    first = queue.add_upload("a.csv", sha("same"), "/spool/a.csv", now=T0)
    again = queue.add_upload("b.csv", sha("same"), "/spool/b.csv", now=T0 + 5)
    assert again == first
    other = queue.add_upload("c.csv", sha("other"), "/spool/c.csv", now=T0 + 5)
    assert other.upload_id > first.upload_id
    assert len(queue.uploads()) == 2


def test_uploads_left_sending_by_a_crash_are_due(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    with Queue(path) as q:
        a = q.add_upload("a.csv", sha("a"), "/s/a", now=T0)
        b = q.add_upload("b.csv", sha("b"), "/s/b", now=T0)
        q.mark_sending(b.upload_id, now=T0)
        q.mark_failed(b.upload_id, "x", now=T0, next_try=T0 + 3600)
        q.mark_sending(a.upload_id, now=T0)
    with Queue(path) as q:  # "after the crash"
        due = q.due_uploads(now=T0 - 100)  # even before its next_try
        assert [(u.upload_id, u.state) for u in due] == [(a.upload_id, "sending")]
        q.mark_sending(a.upload_id, now=T0 + 1)  # resumed: a new attempt
        assert q.upload(a.upload_id).attempts == 2


def test_due_uploads_are_oldest_first(queue: Queue) -> None:
    ids = [
        queue.add_upload(f"{n}.csv", sha(str(n)), f"/s/{n}", now=T0 + 10 - n).upload_id
        for n in range(5)
    ]
    assert [u.upload_id for u in queue.due_uploads(now=T0 + 100)] == ids


def test_give_up_and_requeue(queue: Queue) -> None:
    row = queue.add_upload("a.csv", sha("a"), "/s/a", now=T0)
    queue.mark_sending(row.upload_id, now=T0)
    queue.mark_failed(row.upload_id, "http.5xx", now=T0, next_try=T0 + 10)
    queue.mark_given_up(row.upload_id, "gave up after 12 h: http.5xx", now=T0 + 43_200)
    assert queue.due_uploads(now=T0 + 10**9) == []
    assert queue.upload(row.upload_id).last_error == "gave up after 12 h: http.5xx"
    queue.requeue(row.upload_id, now=T0 + 50_000)
    again = queue.upload(row.upload_id)
    assert (again.state, again.next_try, again.queued_at, again.created_at) == (
        "queued",
        T0 + 50_000,
        T0 + 50_000,
        T0,
    )
    assert [u.upload_id for u in queue.due_uploads(now=T0 + 50_000)] == [row.upload_id]


def _reach(queue: Queue, state: str) -> int:
    """A new upload row brought to ``state`` through allowed steps."""
    row = queue.add_upload(state, sha(state + str(random.random())), "/s", now=T0)
    i = row.upload_id
    if state in ("sending", "done", "failed", "given_up"):
        queue.mark_sending(i, now=T0)
    if state == "done":
        queue.mark_done(i, "{}", now=T0)
    if state == "failed":
        queue.mark_failed(i, "e", now=T0, next_try=T0)
    if state == "given_up":
        queue.mark_given_up(i, "e", now=T0)
    assert queue.upload(i).state == state
    return i


_MOVES = {
    "sending": lambda q, i: q.mark_sending(i, now=T0),
    "done": lambda q, i: q.mark_done(i, "{}", now=T0),
    "failed": lambda q, i: q.mark_failed(i, "e", now=T0, next_try=T0),
    "given_up": lambda q, i: q.mark_given_up(i, "e", now=T0),
    "queued": lambda q, i: q.requeue(i, now=T0),
}


@pytest.mark.parametrize("old", list(UPLOAD_TRANSITIONS))
@pytest.mark.parametrize("new", list(_MOVES))
def test_upload_transitions(queue: Queue, old: str, new: str) -> None:
    i = _reach(queue, old)
    allowed = {
        ("queued", "sending"), ("queued", "given_up"),
        ("sending", "sending"), ("sending", "done"), ("sending", "failed"), ("sending", "given_up"),
        ("failed", "sending"), ("failed", "given_up"), ("failed", "queued"),
        ("given_up", "queued"),
    }  # fmt: skip
    if (old, new) in allowed:
        _MOVES[new](queue, i)
        assert queue.upload(i).state == new
    else:
        before = queue.upload(i)
        with pytest.raises(QueueError) as caught:
            _MOVES[new](queue, i)
        assert caught.value.code == "queue.transition"
        assert queue.upload(i) == before


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda q: q.add_upload("a", "ABC", "/s", now=T0), "queue.value"),
        (lambda q: q.add_upload("a", sha("a").upper(), "/s", now=T0), "queue.value"),
        (lambda q: q.mark_sending(999, now=T0), "queue.not_found"),
        (lambda q: q.mark_done(_reach(q, "sending"), "not json", now=T0), "queue.value"),
        (lambda q: q.record_run(RunRow(started_at=T0, status="")), "queue.value"),
        (lambda q: q.record_run(RunRow(started_at=T0, status="ok", run_id=42)), "queue.not_found"),
    ],
)
def test_bad_calls(queue: Queue, call, code: str) -> None:
    with pytest.raises(QueueError) as caught:
        call(queue)
    assert caught.value.code == code
    assert isinstance(caught.value, AgentError)


# --- downloads -------------------------------------------------------------------------------


def batch(state: str, n: int = 1, **changes) -> DownloadRow:
    values = dict(
        batch_id=f"b_{n:04d}",
        sequence=n,
        business_date="2026-11-27",
        sha256=sha(f"batch{n}"),
        size=100 * n,
        state=state,
        path=f"/srv/renkei/inbox/ministry-131016-20261127-{n:06d}.csv",
        updated_at=T0 + n,
    )
    values.update(changes)
    return DownloadRow(**values)


def test_download_rows_round_trip_and_sequences(queue: Queue) -> None:
    assert queue.download_state("b_0001") is None
    for n, state in [
        (3, "placed"),
        (1, "acknowledged"),
        (2, "downloading"),
        (4, "quarantined"),
        (5, "placed"),
    ]:
        queue.record_download(batch(state, n))
    assert queue.download_state("b_0003") == batch("placed", 3)
    assert queue.placed_sequences() == [1, 3, 5]
    assert [d.batch_id for d in queue.downloads(["placed"])] == ["b_0003", "b_0005"]
    queue.record_download(batch("placed", 2))
    queue.record_download(batch("acknowledged", 2, updated_at=T0 + 99))
    assert queue.download_state("b_0002").updated_at == T0 + 99
    assert queue.placed_sequences() == [1, 2, 3, 5]


@pytest.mark.parametrize("old", list(DOWNLOAD_TRANSITIONS))
@pytest.mark.parametrize("new", list(DOWNLOAD_TRANSITIONS))
def test_download_transitions(queue: Queue, old: str, new: str) -> None:
    queue.record_download(batch(old))
    allowed = {
        ("downloading", "downloading"), ("downloading", "placed"), ("downloading", "quarantined"),
        ("placed", "placed"), ("placed", "acknowledged"),
        ("acknowledged", "acknowledged"),
        ("quarantined", "quarantined"), ("quarantined", "downloading"),
    }  # fmt: skip
    if (old, new) in allowed:
        queue.record_download(batch(new))
        assert queue.download_state("b_0001").state == new
    else:
        with pytest.raises(QueueError) as caught:
            queue.record_download(batch(new))
        assert caught.value.code == "queue.transition"
        assert queue.download_state("b_0001") == batch(old)


@pytest.mark.parametrize("change", [{"sha256": sha("other")}, {"size": 1}, {"sequence": 9}])
def test_a_placed_batch_cannot_change_content(queue: Queue, change: dict) -> None:
    queue.record_download(batch("placed"))
    with pytest.raises(QueueError) as caught:
        queue.record_download(batch("acknowledged", **change))
    assert caught.value.code == "queue.value"
    # while downloading the row may still change (a new manifest)
    queue.record_download(batch("downloading", 2))
    queue.record_download(batch("downloading", 2, **change))


@pytest.mark.parametrize("bad", [{"state": "done"}, {"sha256": "xyz"}])
def test_bad_download_rows(queue: Queue, bad: dict) -> None:
    with pytest.raises(QueueError) as caught:
        queue.record_download(dataclasses.replace(batch("placed"), **bad))
    assert caught.value.code == "queue.value"
    assert queue.download_state("b_0001") is None


# --- runs and counts -------------------------------------------------------------------------


def test_runs(queue: Queue) -> None:
    assert queue.last_run() is None
    first = RunRow(started_at=T0, status="running")
    run_id = queue.record_run(first)
    assert first.run_id == run_id
    first.status, first.finished_at, first.summary_json = "ok", T0 + 30, '{"uploaded": 1}'
    assert queue.record_run(first) == run_id
    second = RunRow(started_at=T0 + 86_400, status="failed", kind="upload", finished_at=T0 + 86_500)
    queue.record_run(second)
    assert queue.last_run() == second
    assert queue.last_run(status="ok") == RunRow(
        started_at=T0, status="ok", kind="sync", finished_at=T0 + 30,
        summary_json='{"uploaded": 1}', run_id=run_id,
    )  # fmt: skip
    assert queue.last_run(status="partial") is None


def test_counts(queue: Queue) -> None:
    _reach(queue, "done")
    _reach(queue, "queued")
    _reach(queue, "queued")
    queue.record_download(batch("placed"))
    counts = queue.counts()
    assert counts["uploads"] == {"queued": 2, "sending": 0, "done": 1, "failed": 0, "given_up": 0}
    assert counts["downloads"] == {
        "downloading": 0,
        "placed": 1,
        "acknowledged": 0,
        "quarantined": 0,
    }


# --- backoff ---------------------------------------------------------------------------------

POLICY = RetryPolicy(base=30.0, cap=3600.0, jitter=0.5)


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_backoff_grows_monotonically_to_the_cap(fraction: float) -> None:
    delays = [backoff(n, POLICY, rand=lambda: fraction) for n in range(1, 40)]
    assert delays == sorted(delays)
    scale = 1 - 0.5 * fraction
    assert delays[0] == pytest.approx(30.0 * scale)
    assert delays[1] == pytest.approx(60.0 * scale)
    assert delays[2] == pytest.approx(120.0 * scale)
    assert delays[7] == pytest.approx(3600.0 * scale)  # 30 * 2**7 = 3840 > cap
    assert delays[7:] == [pytest.approx(3600.0 * scale)] * len(delays[7:])


def test_backoff_jitter_stays_in_bounds() -> None:
    rng = random.Random(7)
    for attempts in range(1, 30):
        ceiling = min(POLICY.cap, POLICY.base * 2 ** (attempts - 1))
        for _ in range(50):
            delay = backoff(attempts, POLICY, rand=rng.random)
            assert ceiling * (1 - POLICY.jitter) <= delay <= ceiling


def test_backoff_spreads_terminals() -> None:
    rng = random.Random(1)
    delays = {round(backoff(3, POLICY, rand=rng.random), 3) for _ in range(200)}
    assert len(delays) > 150  # not all the same second
    assert min(delays) < 120 * 0.6 and max(delays) > 120 * 0.9


def test_backoff_without_jitter_and_with_huge_attempts() -> None:
    policy = RetryPolicy(base=10, cap=100, jitter=0.0)
    assert backoff(1, policy, rand=lambda: 0.9) == 10
    assert backoff(10_000, policy, rand=lambda: 0.9) == 100


@pytest.mark.parametrize(("attempts", "fraction"), [(0, 0.5), (-1, 0.5), (1, 1.5), (1, -0.1)])
def test_backoff_refuses_bad_input(attempts: int, fraction: float) -> None:
    with pytest.raises(ValueError):
        backoff(attempts, POLICY, rand=lambda: fraction)


# --- the process lock ------------------------------------------------------------------------


def test_lock_is_exclusive_within_a_process(queue: Queue) -> None:
    with queue.lock():
        with pytest.raises(BusyError) as caught:
            with queue.lock():
                pass
        assert caught.value.code == "agent.busy"
        assert f"pid {os.getpid()}" in caught.value.message
    with queue.lock():  # released
        pass


def test_lock_between_two_processes(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    Queue(path).close()
    proc = child(
        """
        import time
        from appliance.agent.queue import Queue
        q = Queue(PATH)
        with q.lock():
            print("locked", flush=True)
            time.sleep(60)
        """,
        path,
    )
    try:
        wait_for(proc, "locked")
        with Queue(path) as q:
            with pytest.raises(BusyError) as caught:
                with q.lock():
                    pass
            assert f"pid {proc.pid}" in caught.value.message
            assert caught.value.code == "agent.busy"
    finally:
        kill(proc)
    with Queue(path) as q, q.lock():  # the kernel released the dead holder's lock
        pass


# --- crash safety ----------------------------------------------------------------------------


def test_sigkill_inside_a_transaction_leaves_nothing_half_written(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    with Queue(path) as q:
        q.add_upload("kept.csv", sha("kept"), "/s/kept", now=T0)
    proc = child(
        """
        import hashlib, time
        from appliance.agent.queue import Queue
        q = Queue(PATH)
        with q._transaction() as db:
            for n in range(500):
                db["uploads"].insert({
                    "file_name": f"{n}.csv", "sha256": hashlib.sha256(str(n).encode()).hexdigest(),
                    "spool_path": "/s", "state": "queued", "attempts": 0, "next_try": 0,
                    "created_at": 0, "queued_at": 0, "updated_at": 0})
            db.execute("UPDATE uploads SET state = 'given_up' WHERE file_name = 'kept.csv'")
            print("inside", flush=True)
            time.sleep(60)
        """,
        path,
    )
    wait_for(proc, "inside")
    kill(proc)
    assert integrity(path) == "ok"
    with Queue(path) as q:
        assert [(u.file_name, u.state) for u in q.uploads()] == [("kept.csv", "queued")]


@pytest.mark.parametrize("where", ["first", "later"])
def test_sigkill_during_a_migration_then_reopen(tmp_path: Path, where: str) -> None:
    path = tmp_path / "queue.sqlite3"
    if where == "later":
        Queue(path).close()
    proc = child(
        f"""
        import time, sqlite3, sqlite_utils
        from appliance.agent.queue import MIGRATIONS, migrate

        def slow(db):
            MIGRATIONS[0][1](db) if {where!r} == "first" else db.execute("CREATE TABLE extra (x)")
            print("inside", flush=True)
            time.sleep(60)

        db = sqlite_utils.Database(sqlite3.connect(PATH))
        db.execute("PRAGMA synchronous=FULL")
        db.enable_wal()
        migrate(db, [("{"001_initial" if where == "first" else "003_extra"}", slow)])
        """,
        path,
    )
    wait_for(proc, "inside")
    kill(proc)
    assert integrity(path) == "ok"
    with Queue(path) as q:
        names = [row["name"] for row in q.db["_migrations"].rows]
        assert names == [name for name, _ in MIGRATIONS]
        assert "extra" not in q.db.table_names()
        q.add_upload("a.csv", sha("a"), "/s/a", now=T0)  # the schema works
        assert len(q.uploads()) == 1


UPLOADS = 300  # more than the children below can finish before they are killed

WORKER = (
    f"UPLOADS = {UPLOADS}\n"
    + """
import hashlib, json
from appliance.agent.queue import Queue
q = Queue(PATH)
print("ready", flush=True)
for row in q.due_uploads(now=10**10):
    q.mark_sending(row.upload_id, now=1)
    q.mark_done(row.upload_id, json.dumps({"id": row.file_name}), now=2)
    print("done", row.file_name, flush=True)
for n in range(UPLOADS):
    digest = hashlib.sha256(str(n).encode()).hexdigest()
    row = q.add_upload(f"{n}.csv", digest, f"/s/{n}", now=0)
    if row.state == "done":
        continue
    q.mark_sending(row.upload_id, now=1)
    q.mark_done(row.upload_id, json.dumps({"id": row.file_name}), now=2)
    print("done", row.file_name, flush=True)
print("finished", flush=True)
"""
)


def test_sigkill_at_random_points_loses_nothing_committed(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    rng = random.Random(4)
    reported: list[str] = []
    for _ in range(5):
        proc = child(WORKER, path)
        wait_for(proc, "ready")
        # Kill after a random number of commits, then a random instant later (inside the
        # next transaction or between two): progress-driven, so a fast machine cannot finish.
        for _ in range(rng.randint(3, 20)):
            line = proc.stdout.readline()
            assert line.startswith("done"), line
            reported.append(line.split()[1])
        time.sleep(rng.uniform(0, 0.005))
        lines = kill(proc)
        reported += [line.split()[1] for line in lines if line.startswith("done")]
        assert integrity(path) == "ok"
        with Queue(path) as q:
            rows = {u.file_name: u for u in q.uploads()}
        for name in reported:  # every commit a child reported survived its death
            assert rows[name].state == "done"
            assert json.loads(rows[name].receipt_json) == {"id": name}
        assert all(u.state in ("queued", "sending", "done") for u in rows.values())
        assert len(rows) < UPLOADS, "the child finished before it was killed"
    proc = child(WORKER, path)
    assert proc.stdout.read().splitlines()[-1] == "finished"
    proc.wait()
    proc.stdout.close()
    with Queue(path) as q:
        rows = q.uploads()
    assert sorted(u.file_name for u in rows) == sorted(f"{n}.csv" for n in range(UPLOADS))
    assert {u.state for u in rows} == {"done"}
    assert sum(u.attempts for u in rows) >= UPLOADS  # a resumed row has two attempts
