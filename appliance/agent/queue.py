"""The agent's durable local queue: what was downloaded, what is to be uploaded, past runs.

One SQLite file (``<state_dir>/queue.sqlite3``) through sqlite-utils.  Every
connection sets ``journal_mode=WAL`` and ``synchronous=FULL``: in WAL mode
``FULL`` fsyncs the log at every commit, so a transaction that returned is on
disk when the power fails the next instant, and one that did not return is
not there at all.  Every state change is one ``BEGIN IMMEDIATE`` transaction
(immediate, so two processes never deadlock upgrading a read to a write).

The schema is built by versioned migrations: functions, applied in order,
each in its own transaction together with the row in ``_migrations`` that
records it.  Opening the queue runs those not yet recorded, so re-running
after a crash mid-migration is safe: the interrupted one left nothing.

States (``UploadRow.state``)::

    queued ──► sending ──► done
                │  ▲  └──► failed ──► sending (retry, when next_try has come)
                │  └─────── (a crash left it sending: resumed as is)
    queued/sending/failed ──► given_up ──► queued (requeue: staff's "send now")

Downloads (``DownloadRow.state``)::

    downloading ──► placed ──► acknowledged
         └────────► quarantined ──► downloading (fetched again)

A row may start in any state; a transition not drawn is a
:class:`QueueError` (``queue.transition``), because it means a bug that
could send a file twice or place a batch that failed verification.

At-least-once delivery: an upload left ``sending`` by a crash is returned by
:meth:`Queue.due_uploads` and sent again; the server's idempotency by file
hash makes the effect exactly once.

Two agent processes must not run a sync at once: :meth:`Queue.lock` takes an
exclusive ``flock`` on ``<queue file>.lock`` (non-blocking) and raises
:class:`BusyError` (``agent.busy``) when another process holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import sqlite_utils

from .config import RetryPolicy
from .errors import BusyError, QueueError

__all__ = [
    "DOWNLOAD_STATES",
    "DOWNLOAD_TRANSITIONS",
    "MIGRATIONS",
    "UPLOAD_STATES",
    "UPLOAD_TRANSITIONS",
    "DownloadRow",
    "Queue",
    "RunRow",
    "UploadRow",
    "backoff",
    "migrate",
]

DOWNLOAD_STATES = ("downloading", "placed", "acknowledged", "quarantined")
UPLOAD_STATES = ("queued", "sending", "done", "failed", "given_up")

#: state -> states it may move to (a row may be created in any state).
DOWNLOAD_TRANSITIONS: dict[str, frozenset[str]] = {
    "downloading": frozenset({"downloading", "placed", "quarantined"}),
    "placed": frozenset({"placed", "acknowledged"}),
    "acknowledged": frozenset({"acknowledged"}),
    "quarantined": frozenset({"quarantined", "downloading"}),
}
UPLOAD_TRANSITIONS: dict[str, frozenset[str]] = {
    "queued": frozenset({"sending", "given_up"}),
    "sending": frozenset({"sending", "done", "failed", "given_up"}),
    "failed": frozenset({"sending", "given_up", "queued"}),
    "given_up": frozenset({"queued"}),
    "done": frozenset(),
}

_SHA256 = re.compile(r"[0-9a-f]{64}")
_BUSY_TIMEOUT = 30.0  # seconds a writer waits for another's transaction


@dataclass
class DownloadRow:
    """One ministry batch, by the server's batch id."""

    batch_id: str
    sequence: int
    business_date: str
    sha256: str
    size: int
    state: str  # "downloading" | "placed" | "acknowledged" | "quarantined"
    path: str  # where the file is (partial/, inbox/ or quarantine/); "" when not yet known
    updated_at: float


@dataclass
class UploadRow:
    """One file accepted from the outbox into the spool.

    ``queued_at`` starts the retry window (``RetryPolicy.give_up_after``): set
    when the row is added and again when it is requeued.
    """

    upload_id: int
    file_name: str
    sha256: str
    spool_path: str
    state: str  # "queued" | "sending" | "done" | "failed" | "given_up"
    attempts: int  # how many times sending started
    next_try: float
    last_error: str | None
    receipt_json: str | None
    updated_at: float
    created_at: float | None = None
    queued_at: float | None = None


@dataclass
class RunRow:
    """One run of the agent; ``run_id`` is None until recorded.

    ``status`` is set by the caller ("running" while it runs, then e.g. "ok",
    "partial", "failed"); a row still "running" after the run means it was
    cut short.  ``summary_json`` is the run's report as JSON text.
    """

    started_at: float
    status: str
    kind: str = "sync"  # "sync" | "download" | "upload"
    finished_at: float | None = None
    summary_json: str = "{}"
    run_id: int | None = None


# --- migrations ------------------------------------------------------------------------------


def _m001_initial(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE downloads (
            batch_id      TEXT PRIMARY KEY,
            sequence      INTEGER NOT NULL,
            business_date TEXT NOT NULL,
            sha256        TEXT NOT NULL,
            size          INTEGER NOT NULL CHECK (size >= 0),
            state         TEXT NOT NULL CHECK (state IN
                              ('downloading', 'placed', 'acknowledged', 'quarantined')),
            path          TEXT NOT NULL DEFAULT '',
            updated_at    REAL NOT NULL
        )"""
    )
    # AUTOINCREMENT: an id is never reused, so a log line naming an upload stays true.
    db.execute(
        """
        CREATE TABLE uploads (
            upload_id    INTEGER PRIMARY KEY AUTOINCREMENT,
            file_name    TEXT NOT NULL,
            sha256       TEXT NOT NULL UNIQUE,
            spool_path   TEXT NOT NULL,
            state        TEXT NOT NULL CHECK (state IN
                             ('queued', 'sending', 'done', 'failed', 'given_up')),
            attempts     INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            next_try     REAL NOT NULL,
            last_error   TEXT,
            receipt_json TEXT,
            created_at   REAL NOT NULL,
            queued_at    REAL NOT NULL,
            updated_at   REAL NOT NULL,
            CHECK (state != 'done' OR receipt_json IS NOT NULL)
        )"""
    )
    db.execute("CREATE INDEX uploads_due ON uploads (state, next_try)")
    db.execute(
        """
        CREATE TABLE runs (
            run_id       INTEGER PRIMARY KEY AUTOINCREMENT,
            kind         TEXT NOT NULL,
            started_at   REAL NOT NULL,
            finished_at  REAL,
            status       TEXT NOT NULL,
            summary_json TEXT NOT NULL DEFAULT '{}'
        )"""
    )


def _m002_download_sequence_index(db: sqlite_utils.Database) -> None:
    db.execute("CREATE INDEX downloads_sequence ON downloads (sequence)")


#: (name, function) in the order they are applied.  Append; never edit or
#: reorder an entry that has shipped — its name is recorded in databases.
MIGRATIONS: tuple[tuple[str, Callable[[sqlite_utils.Database], None]], ...] = (
    ("001_initial", _m001_initial),
    ("002_download_sequence_index", _m002_download_sequence_index),
)


@contextlib.contextmanager
def _immediate(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """One write transaction; rolled back on any exception (including KeyboardInterrupt)."""
    conn = db.conn
    if conn.in_transaction:
        raise QueueError("a queue transaction is already open", code="queue.nested")
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise _io_error(exc, conn) from exc
    try:
        yield db
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError):
            raise _io_error(exc, conn) from exc
        raise


#: Below this many free bytes in the queue's folder, an I/O error of SQLite counts as a full
#: disk: SQLite says "database or disk is full" only when the database or its log cannot grow;
#: when it cannot size its shared-memory file (opening on a full disk) it says "disk I/O error".
_LOW_SPACE = 1 << 20


def _is_disk_full(exc: sqlite3.Error, folder: Path | None) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name == "SQLITE_FULL" or "disk is full" in str(exc):
        return True
    try:
        st = os.statvfs(folder) if folder and name.startswith("SQLITE_IOERR") else None
    except OSError:
        st = None
    return st is not None and st.f_bavail * st.f_frsize < _LOW_SPACE


def _disk_full_error(folder: Path | None, text: str) -> QueueError:
    where = str(folder or "the state folder")
    return QueueError(
        f"the queue database could not be written: the disk is full ({text}); free space in "
        f"{where}. Nothing was lost: the queue is unchanged, and the next run continues",
        code="queue.disk_full",
        message_ja=(
            f"端末のディスク（{where}）の空きが足りないため、連携の記録を書き込めませんでした。"
            "空きを作ってください。ファイルや記録は失われていません。次回の連携で続きから処理します。"
        ),
    )


def _io_error(exc: sqlite3.OperationalError, conn: sqlite3.Connection) -> QueueError:
    text = str(exc)
    try:  # the main database's folder; reading it needs no free space
        files = {row[1]: row[2] for row in conn.execute("PRAGMA database_list")}
        folder = Path(files["main"]).parent if files.get("main") else None
    except sqlite3.Error:
        folder = None
    if _is_disk_full(exc, folder):
        return _disk_full_error(folder, text)
    if "locked" in text or "busy" in text:
        return QueueError(
            f"the queue database is busy: {text}; another agent process is writing",
            code="queue.busy",
        )
    return QueueError(f"the queue database failed: {text}", code="queue.io")


def migrate(
    db: sqlite_utils.Database,
    migrations: Sequence[tuple[str, Callable[[sqlite_utils.Database], None]]] = MIGRATIONS,
) -> list[str]:
    """Apply the migrations not yet recorded, each in its own transaction; return their names.

    Raises QueueError ``queue.schema`` when the database records a migration
    this agent does not know (it was written by a newer agent: do not
    downgrade over it).
    """
    with _immediate(db):
        db.execute(
            "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
        )
    known = [name for name, _ in migrations]
    applied_now: list[str] = []
    for name, function in migrations:
        with _immediate(db):
            # Checked inside the transaction: another process may have just applied it.
            if db.execute("SELECT 1 FROM _migrations WHERE name = ?", [name]).fetchone():
                continue
            function(db)
            db["_migrations"].insert({"name": name, "applied_at": time.time()})
            applied_now.append(name)
    unknown = [
        row[0]
        for row in db.execute("SELECT name FROM _migrations ORDER BY name").fetchall()
        if row[0] not in known
    ]
    if unknown:
        raise QueueError(
            f"the queue database was written by a newer agent (migrations {', '.join(unknown)}); "
            "install that version again",
            code="queue.schema",
        )
    return applied_now


# --- the queue -------------------------------------------------------------------------------


def _sha256(value: str) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise QueueError(f"not a SHA-256 hex digest: {value!r}", code="queue.value")
    return value


class Queue:
    """The local queue.  Not thread-safe: one per thread (each opens its own connection)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT)
        except sqlite3.OperationalError as exc:
            raise QueueError(
                f"cannot open the queue database {self.path}: {exc}", code="queue.open"
            ) from exc
        try:
            self.db = sqlite_utils.Database(conn, execute_plugins=False)
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.enable_wal()
            if self.db.journal_mode != "wal":
                raise QueueError(
                    f"{self.path}: the file system does not support SQLite WAL mode",
                    code="queue.open",
                )
            migrate(self.db)
        except sqlite3.DatabaseError as exc:
            conn.close()
            if _is_disk_full(exc, self.path.parent):
                raise _disk_full_error(self.path.parent, str(exc)) from exc
            raise QueueError(
                f"cannot open the queue database {self.path}: {exc}", code="queue.open"
            ) from exc
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _transaction(self) -> contextlib.AbstractContextManager[sqlite_utils.Database]:
        return _immediate(self.db)

    # --- the process lock ------------------------------------------------------------------

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the agent's exclusive lock for the block; BusyError ``agent.busy`` if taken.

        The lock is an ``flock`` on :attr:`lock_path`: the kernel releases it
        when the holder exits or is killed, so a crash never leaves it stuck.
        The file holds the holder's pid, for the message; it is never deleted.
        """
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise BusyError(
                    f"another renkei-agent process{who} is running a sync; wait for it to finish",
                    message_ja="別の連携処理が実行中です。終了してからもう一度実行してください",
                ) from None
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            except OSError:
                pass  # a full disk: the pid is only for the "busy" message; the lock holds
            yield
        finally:
            os.close(fd)  # releases the lock

    # --- downloads -------------------------------------------------------------------------

    def download_state(self, batch_id: str) -> DownloadRow | None:
        row = self.db.execute(
            f"SELECT {_columns(DownloadRow)} FROM downloads WHERE batch_id = ?", [batch_id]
        ).fetchone()
        return DownloadRow(*row) if row else None

    def record_download(self, row: DownloadRow) -> None:
        """Insert or update the batch's row; the state change must be allowed.

        Once a batch is placed, its sequence, hash and size are fixed: a
        different value means a different file under the same batch id.
        """
        if row.state not in DOWNLOAD_STATES:
            raise QueueError(f"unknown download state {row.state!r}", code="queue.value")
        _sha256(row.sha256)
        with self._transaction() as db:
            current = self.download_state(row.batch_id)
            if current is not None:
                _check_transition(
                    "batch", row.batch_id, current.state, row.state, DOWNLOAD_TRANSITIONS
                )
                if current.state in ("placed", "acknowledged"):
                    for name in ("sequence", "sha256", "size"):
                        if getattr(current, name) != getattr(row, name):
                            raise QueueError(
                                f"batch {row.batch_id}: {name} changed after it was placed "
                                f"({getattr(current, name)!r} -> {getattr(row, name)!r})",
                                code="queue.value",
                            )
            db["downloads"].upsert(asdict(row), pk="batch_id")

    def placed_sequences(self) -> list[int]:
        """Sequence numbers of batches placed in the inbox (acknowledged or not), ascending."""
        rows = self.db.execute(
            "SELECT sequence FROM downloads WHERE state IN ('placed', 'acknowledged') "
            "ORDER BY sequence"
        ).fetchall()
        return [row[0] for row in rows]

    def downloads(self, states: Sequence[str] | None = None) -> list[DownloadRow]:
        """Download rows in sequence order, optionally only those in ``states``."""
        where, params = _in_states(states)
        rows = self.db.execute(
            f"SELECT {_columns(DownloadRow)} FROM downloads{where} ORDER BY sequence, batch_id",
            params,
        ).fetchall()
        return [DownloadRow(*row) for row in rows]

    # --- uploads ---------------------------------------------------------------------------

    def upload(self, upload_id: int) -> UploadRow | None:
        row = self.db.execute(
            f"SELECT {_columns(UploadRow)} FROM uploads WHERE upload_id = ?", [upload_id]
        ).fetchone()
        return UploadRow(*row) if row else None

    def uploads(self, states: Sequence[str] | None = None) -> list[UploadRow]:
        """Upload rows in the order they were accepted, optionally only those in ``states``."""
        where, params = _in_states(states)
        rows = self.db.execute(
            f"SELECT {_columns(UploadRow)} FROM uploads{where} ORDER BY upload_id", params
        ).fetchall()
        return [UploadRow(*row) for row in rows]

    def add_upload(self, file_name: str, sha256: str, spool_path: str, *, now: float) -> UploadRow:
        """Queue a file for upload; the same content (by SHA-256) is queued once.

        Returns the new row, or the existing row for this hash whatever its
        state and name (the same bytes dropped again under another name).
        """
        _sha256(sha256)
        with self._transaction() as db:
            found = db.execute(
                "SELECT upload_id FROM uploads WHERE sha256 = ?", [sha256]
            ).fetchone()
            if found is None:
                table = db["uploads"].insert(
                    {
                        "file_name": file_name,
                        "sha256": sha256,
                        "spool_path": str(spool_path),
                        "state": "queued",
                        "attempts": 0,
                        "next_try": now,
                        "last_error": None,
                        "receipt_json": None,
                        "created_at": now,
                        "queued_at": now,
                        "updated_at": now,
                    }
                )
                upload_id = table.last_pk
            else:
                upload_id = found[0]
        row = self.upload(upload_id)
        assert row is not None
        return row

    def due_uploads(self, *, now: float) -> list[UploadRow]:
        """Rows to send now: queued or failed with ``next_try <= now``, and every row left
        ``sending`` (by a crash: resume it), oldest first."""
        rows = self.db.execute(
            f"SELECT {_columns(UploadRow)} FROM uploads "
            "WHERE (state IN ('queued', 'failed') AND next_try <= ?) OR state = 'sending' "
            "ORDER BY upload_id",
            [now],
        ).fetchall()
        return [UploadRow(*row) for row in rows]

    def mark_sending(self, upload_id: int, *, now: float) -> None:
        """An attempt starts (counted in ``attempts``); allowed again on a row left sending."""
        self._move(upload_id, "sending", now, attempts_plus=1)

    def mark_done(self, upload_id: int, receipt_json: str, *, now: float) -> None:
        """The server receipted the file; ``receipt_json`` is the signed receipt as JSON text."""
        try:
            json.loads(receipt_json)
        except (TypeError, ValueError):
            raise QueueError(
                f"upload {upload_id}: the receipt is not JSON text", code="queue.value"
            ) from None
        self._move(upload_id, "done", now, receipt_json=receipt_json, last_error=None)

    def mark_failed(self, upload_id: int, error: str, *, now: float, next_try: float) -> None:
        """The attempt failed; try again at ``next_try`` (see :func:`backoff`)."""
        self._move(upload_id, "failed", now, last_error=error, next_try=next_try)

    def mark_given_up(self, upload_id: int, error: str, *, now: float) -> None:
        """Stop retrying (the retry window is over); staff are told, :meth:`requeue` restarts."""
        self._move(upload_id, "given_up", now, last_error=error)

    def requeue(self, upload_id: int, *, now: float) -> None:
        """Send a failed or given-up file again now, with a fresh retry window (staff's "send now")."""
        self._move(upload_id, "queued", now, next_try=now, queued_at=now)

    def _move(
        self, upload_id: int, state: str, now: float, *, attempts_plus: int = 0, **values: object
    ) -> None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT state, attempts FROM uploads WHERE upload_id = ?", [upload_id]
            ).fetchone()
            if row is None:
                raise QueueError(f"no upload with id {upload_id}", code="queue.not_found")
            _check_transition("upload", upload_id, row[0], state, UPLOAD_TRANSITIONS)
            db["uploads"].update(
                upload_id,
                {"state": state, "attempts": row[1] + attempts_plus, "updated_at": now, **values},
            )

    # --- runs ------------------------------------------------------------------------------

    def record_run(self, run: RunRow) -> int:
        """Insert the run (``run_id`` None) or update it; returns its id (set on ``run`` too)."""
        if not run.status or not run.kind:
            raise QueueError("a run needs a status and a kind", code="queue.value")
        values = asdict(run)
        with self._transaction() as db:
            if run.run_id is None:
                del values["run_id"]
                run.run_id = db["runs"].insert(values).last_pk
            else:
                if not db.execute("SELECT 1 FROM runs WHERE run_id = ?", [run.run_id]).fetchone():
                    raise QueueError(f"no run with id {run.run_id}", code="queue.not_found")
                db["runs"].update(run.run_id, values)
        return run.run_id

    def last_run(self, *, status: str | None = None) -> RunRow | None:
        """The latest run (optionally the latest with this ``status``, e.g. the last "ok")."""
        query = f"SELECT {_columns(RunRow)} FROM runs"
        params: list[object] = []
        if status is not None:
            query += " WHERE status = ?"
            params.append(status)
        row = self.db.execute(
            query + " ORDER BY started_at DESC, run_id DESC LIMIT 1", params
        ).fetchone()
        return RunRow(*row) if row else None

    # --- for status ------------------------------------------------------------------------

    def counts(self) -> dict[str, dict[str, int]]:
        """``{"uploads": {state: n}, "downloads": {state: n}}`` with every state present."""
        out: dict[str, dict[str, int]] = {
            "uploads": dict.fromkeys(UPLOAD_STATES, 0),
            "downloads": dict.fromkeys(DOWNLOAD_STATES, 0),
        }
        for table in out:
            for state, n in self.db.execute(f"SELECT state, count(*) FROM {table} GROUP BY state"):
                out[table][state] = n
        return out


def _columns(cls: type) -> str:
    return ", ".join(f.name for f in fields(cls))


def _in_states(states: Sequence[str] | None) -> tuple[str, list[object]]:
    if states is None:
        return "", []
    return f" WHERE state IN ({', '.join('?' * len(states))})", list(states)


def _check_transition(
    what: str, key: object, old: str, new: str, allowed: dict[str, frozenset[str]]
) -> None:
    if new not in allowed.get(old, frozenset()):
        raise QueueError(f"{what} {key}: cannot go from {old} to {new}", code="queue.transition")


# --- retry timing ----------------------------------------------------------------------------


def backoff(attempts: int, policy: RetryPolicy, *, rand: Callable[[], float]) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1, 2, …).

    The ceiling doubles from ``policy.base`` up to ``policy.cap``; the delay is
    the ceiling shortened by a random fraction of at most ``policy.jitter``,
    i.e. in ``[ceiling * (1 - jitter), ceiling]``.  Not "full jitter" (``[0,
    ceiling]``): a terminal must not retry within seconds after a long server
    outage, and 1,900 terminals are already spread by the timer's random
    delay; half the ceiling of spread is enough to keep them apart.  For a
    fixed ``rand`` value the delay never shrinks as ``attempts`` grows.

    ``rand`` returns a number in [0, 1] (``random.random``); tests inject it.
    """
    if attempts < 1:
        raise ValueError(f"attempts counts failures and starts at 1, got {attempts}")
    ceiling = min(policy.cap, policy.base * 2.0 ** min(attempts - 1, 64))
    fraction = rand()
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"rand() must return a number in [0, 1], got {fraction!r}")
    return ceiling * (1.0 - policy.jitter * fraction)
