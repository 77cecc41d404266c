"""Benchmark: the transition day — two million ministry notices imported, the day closed, batches cut.

On 9 July 2012 every foreign resident's record moved to the new system at
once.  The benchmark replays such a day at ``records`` notices (2,000,000 is
the full run; ``--records`` makes it smaller for a routine run, and the
report says which size it used), spread Zipf-like over the 1,892 receiving
units (:mod:`bench.workload`), handed over by the issuance system as UTF-8
files of ``per_file`` notices (JSON Lines by default).

Measured, each step in its own child process so its peak RSS is its own:

* ``import``: every file through :func:`server.ingest.import_notices`
  (validate each record, route it, load it; one transaction per file), into
  a SQLite database in WAL mode with ``synchronous=FULL``, as shipped.
  Baseline: the *same rows* (read back from our database) inserted with raw
  ``sqlite3`` ``executemany`` into a database with the same schema, indexes
  and pragmas, one transaction per file.  ``ratio`` = ours / raw records/s
  (target ≥ 0.2).
* ``close_day``: :func:`server.closeday.close_day` — one signed batch per
  receiving unit, every notice encoded to Juki code, files written
  durably.  Baseline: the least a close-day must do, raw — per unit select
  the pending rows, encode the batch's text with Python's ``utf-16-be``
  codec, write it (fsync, rename), set ``batch_id`` with ``executemany`` —
  in one transaction.
* ``encode``: the batch files' text encoded to Juki code vs Python's
  ``utf-16-be`` codec on the same text (throughput ratio; the codec's
  target is ≥ 0.5).

Run as ``python -m bench --only transition [--records N]``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect

from bench.procwatch import own_peak_rss_mb
from bench.workload import receiving_units, write_ministry_files, zipf_counts
from common import juki
from server.storage import metadata

__all__ = ["FULL_RECORDS", "IMPORT_TARGET", "run", "run_import", "run_close_day"]

FULL_RECORDS = 2_000_000
PER_FILE = 100_000
IMPORT_TARGET = 0.2
ENCODE_TARGET = 0.5
#: The transition day itself; any fixed date would do.
DAY = date(2012, 7, 9)
ROOT = Path(__file__).resolve().parent.parent


# --- the measured steps (run in child processes) -----------------------------------------------


def child_import(data_dir: str, files: list[str]) -> dict:
    """Import ``files`` in order into the server database of ``data_dir``; figures as JSON."""
    from server.config import load_config
    from server.ingest import import_notices
    from server.storage import Storage

    config = load_config(env={}, data_dir=Path(data_dir))
    storage = Storage(config.database_url)
    now = datetime.now(UTC)
    seconds: list[float] = []
    cpu = 0.0
    loaded = records = 0
    try:
        for name in files:
            data = Path(name).read_bytes()
            started, started_cpu = time.perf_counter(), time.process_time()
            result = import_notices(
                storage, data, file_name=Path(name).name, business_date=DAY, now=now
            )
            seconds.append(time.perf_counter() - started)
            cpu += time.process_time() - started_cpu
            del data
            if not result.ok:
                first = result.file_error or result.rejected[:1]
                raise RuntimeError(f"{name}: the import refused records: {first}")
            loaded += result.loaded
            records += result.records
    finally:
        storage.dispose()
    return {
        "records": records,
        "loaded": loaded,
        "seconds": sum(seconds),
        "cpu_seconds": cpu,
        "file_seconds": seconds,
        "peak_rss_mb": own_peak_rss_mb(),
    }


def child_close_day(data_dir: str) -> dict:
    """Close :data:`DAY` for the server database of ``data_dir``; figures as JSON."""
    from server.blobs import BlobStore
    from server.closeday import close_day
    from server.config import load_config
    from server.keys import load_or_create_signing_key
    from server.storage import Storage

    config = load_config(env={}, data_dir=Path(data_dir))
    storage = Storage(config.database_url)
    key = load_or_create_signing_key(config.signing_key_path)
    try:
        started, started_cpu = time.perf_counter(), time.process_time()
        result = close_day(storage, BlobStore(config.blob_dir), key, DAY, now=datetime.now(UTC))
        seconds = time.perf_counter() - started
        cpu = time.process_time() - started_cpu
    finally:
        storage.dispose()
    return {
        "records": result.records,
        "batches": result.created,
        "empty_batches": result.empty,
        "waiting": result.waiting,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_rss_mb": own_peak_rss_mb(),
    }


def _child(step: str, args: list[str], profiler, name: str) -> dict:  # type: ignore[no-untyped-def]
    argv = [sys.executable, "-m", "bench.transition", step, *args]
    if profiler is not None:
        argv = profiler.wrap(argv, name)
    done = subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=4 * 3600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"transition {step} failed: {done.stderr[-3000:]}")
    # The figures are the last JSON line (py-spy, when profiling, writes its own lines too).
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"transition {step} printed no figures: {done.stdout[-2000:]}")
    return json.loads(lines[-1])


# --- set-up ----------------------------------------------------------------------------------


def _server(data_dir: Path) -> None:
    """A server data folder: schema, the full master, a signing key (no TLS: nothing listens)."""
    from server.config import load_config
    from server.keys import load_or_create_signing_key
    from server.municipalities import load_master, shipped_master
    from server.storage import Storage

    config = load_config(env={}, data_dir=data_dir)
    config.blob_dir.mkdir(parents=True, exist_ok=True)
    storage = Storage(config.database_url)
    try:
        storage.migrate()
        load_master(storage, shipped_master())
        load_or_create_signing_key(config.signing_key_path)
    finally:
        storage.dispose()


def _blob_dir(data_dir: Path) -> Path:
    from server.config import load_config

    return load_config(env={}, data_dir=data_dir).blob_dir


def _database_path(data_dir: Path) -> Path:
    from server.config import load_config

    url = sa.engine.make_url(load_config(env={}, data_dir=data_dir).database_url)
    if url.get_backend_name() != "sqlite" or not url.database:
        raise RuntimeError(
            "the transition benchmark compares against SQLite: use the default database"
        )
    return Path(url.database)


# --- baselines -------------------------------------------------------------------------------


def _raw_connection(path: Path) -> sqlite3.Connection:
    """The same pragmas as ``server.storage`` sets; transactions are ours to begin."""
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "foreign_keys=ON", "busy_timeout=30000", "synchronous=FULL"):
        conn.execute(f"PRAGMA {pragma}")
    return conn


def _raw_schema(conn: sqlite3.Connection) -> None:
    dialect = sqlite_dialect.dialect()
    for table in metadata.sorted_tables:
        conn.execute(str(sa.schema.CreateTable(table).compile(dialect=dialect)))
        for index in table.indexes:
            conn.execute(str(sa.schema.CreateIndex(index).compile(dialect=dialect)))


_NOTICE_COLUMNS = (
    "record_id, lasdec, pattern, business_date, record, content_hash, substitutions, "
    "import_id, imported_at"
)


def raw_import_baseline(ours: Path, raw: Path) -> dict:
    """Insert the rows our import stored, import by import, with raw ``executemany``."""
    source = sqlite3.connect(ours)
    conn = _raw_connection(raw)
    _raw_schema(conn)
    conn.execute("BEGIN")
    master = source.execute("SELECT * FROM municipalities").fetchall()
    conn.executemany(
        f"INSERT INTO municipalities VALUES ({', '.join('?' * len(master[0]))})", master
    )
    conn.execute("COMMIT")
    seconds = cpu = 0.0
    rows = 0
    insert = f"INSERT INTO notices ({_NOTICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
    for import_row in source.execute("SELECT * FROM imports ORDER BY imported_at, rowid"):
        batch = source.execute(
            f"SELECT {_NOTICE_COLUMNS} FROM notices WHERE import_id = ? ORDER BY notice_id",
            (import_row[0],),
        ).fetchall()
        started, started_cpu = time.perf_counter(), time.process_time()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(f"INSERT INTO imports VALUES ({', '.join('?' * len(import_row))})", import_row)
        conn.executemany(insert, batch)
        conn.execute("COMMIT")
        seconds += time.perf_counter() - started
        cpu += time.process_time() - started_cpu
        rows += len(batch)
        del batch
    source.close()
    conn.close()
    return {"rows": rows, "seconds": seconds, "cpu_seconds": cpu}


def raw_close_day_baseline(ours: Path, raw: Path, blob_dir: Path, out_dir: Path) -> dict:
    """Per unit: select its rows, utf-16 encode the batch text, write it durably, set batch_id.

    Also times our Juki encoder on the same text (the ``encode`` comparison).
    Decoding our batch files to get "the same text" is not timed.
    """
    from server.blobs import BlobStore

    blobs = BlobStore(blob_dir)
    source = sqlite3.connect(ours)
    batches = source.execute(
        "SELECT * FROM batches WHERE business_date = ? ORDER BY lasdec", (DAY.isoformat(),)
    ).fetchall()
    columns = [d[0] for d in source.execute("SELECT * FROM batches LIMIT 0").description]
    lasdec_at, id_at, sha_at = (columns.index(c) for c in ("lasdec", "batch_id", "sha256"))
    insert_batch = f"INSERT INTO batches VALUES ({', '.join('?' * len(columns))})"
    source.close()
    conn = _raw_connection(raw)
    out_dir.mkdir(parents=True, exist_ok=True)
    timed = {"sql": 0.0, "utf16": 0.0, "juki": 0.0, "write": 0.0}
    chars = rows_total = 0
    wrote_empty = False
    started = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    timed["sql"] += time.perf_counter() - started
    for batch in batches:
        lasdec, batch_id, sha256 = batch[lasdec_at], batch[id_at], batch[sha_at]
        text = juki.decode(blobs.get(sha256))  # "the same text" (not timed)
        chars += len(text)
        started = time.perf_counter()
        rows = conn.execute(
            "SELECT notice_id, record FROM notices WHERE batch_id IS NULL AND lasdec = ? "
            "AND business_date <= ? ORDER BY notice_id",
            (lasdec, DAY.isoformat()),
        ).fetchall()
        timed["sql"] += time.perf_counter() - started
        started = time.perf_counter()
        data = text.encode("utf-16-be")
        timed["utf16"] += time.perf_counter() - started
        started = time.perf_counter()
        juki.encode(text)
        timed["juki"] += time.perf_counter() - started
        started = time.perf_counter()
        if rows or not wrote_empty:  # empty batches are one shared file, as ours are
            wrote_empty = wrote_empty or not rows
            path = out_dir / batch_id
            with open(f"{path}.tmp", "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(f"{path}.tmp", path)
        timed["write"] += time.perf_counter() - started
        started = time.perf_counter()
        conn.execute(insert_batch, batch)
        conn.executemany(
            "UPDATE notices SET batch_id = ? WHERE notice_id = ?",
            [(batch_id, notice_id) for notice_id, _record in rows],
        )
        timed["sql"] += time.perf_counter() - started
        rows_total += len(rows)
    started = time.perf_counter()
    conn.execute("COMMIT")
    timed["sql"] += time.perf_counter() - started
    conn.close()
    return {
        "rows": rows_total,
        "batches": len(batches),
        "seconds": timed["sql"] + timed["utf16"] + timed["write"],
        "sql_seconds": timed["sql"],
        "write_seconds": timed["write"],
        "utf16_seconds": timed["utf16"],
        "juki_seconds": timed["juki"],
        "bytes": 2 * chars,
    }


# --- the benchmark ---------------------------------------------------------------------------


def run_import(
    root: Path,
    records: int,
    *,
    per_file: int = PER_FILE,
    fmt: str = "jsonl",
    units: int | None = None,
    profiler=None,  # type: ignore[no-untyped-def]
) -> tuple[dict, dict]:
    """Make the day's files, a server, and import them (child process); (figures, set-up facts).

    ``units`` sends the notices to the first that many receiving units only
    (the smoke test's small day; every unit still gets its batch).
    """
    units_used = receiving_units()[:units] if units else receiving_units()
    counts = zipf_counts(records, len(units_used))
    started = time.perf_counter()
    files = write_ministry_files(
        root / "files", units_used, counts, day=DAY, per_file=per_file, fmt=fmt
    )
    generated = time.perf_counter() - started
    data_dir = root / "data"
    _server(data_dir)
    figures = _child("import", [str(data_dir), *map(str, files)], profiler, f"import-{records}")
    figures["files"] = len(files)
    figures["per_file"] = per_file
    figures["format"] = fmt
    figures["bytes"] = sum(path.stat().st_size for path in files)
    figures["records_per_s"] = figures["loaded"] / figures["seconds"]
    for path in files:
        path.unlink()
    return figures, {
        "data_dir": data_dir,
        "generate_seconds": generated,
        "largest_unit": max(counts),
    }


def run_close_day(data_dir: Path, *, profiler=None, name: str = "close-day") -> dict:  # type: ignore[no-untyped-def]
    figures = _child("close", [str(data_dir)], profiler, name)
    figures["records_per_s"] = figures["records"] / figures["seconds"]
    return figures


def run(
    records: int = FULL_RECORDS,
    *,
    per_file: int = PER_FILE,
    fmt: str = "jsonl",
    units: int | None = None,
    profiler=None,  # type: ignore[no-untyped-def]
) -> dict:
    with tempfile.TemporaryDirectory(prefix="renkei-bench-transition-") as temp:
        root = Path(temp)
        imported, facts = run_import(
            root, records, per_file=per_file, fmt=fmt, units=units, profiler=profiler
        )
        data_dir = facts["data_dir"]
        database = _database_path(data_dir)
        raw_db = root / "raw.sqlite"
        baseline = raw_import_baseline(database, raw_db)
        assert baseline["rows"] == imported["loaded"], (baseline, imported["loaded"])
        imported["baseline_raw_executemany_records_per_s"] = baseline["rows"] / baseline["seconds"]
        imported["ratio"] = (
            imported["records_per_s"] / imported["baseline_raw_executemany_records_per_s"]
        )
        imported["target"] = IMPORT_TARGET
        # The same comparison in CPU time: steadier on a machine shared with other work.
        imported["cpu_ratio"] = baseline["cpu_seconds"] / imported["cpu_seconds"]
        imported["generate_seconds"] = facts["generate_seconds"]

        closed = run_close_day(data_dir, profiler=profiler, name=f"close-day-{records}")
        raw_close = raw_close_day_baseline(
            database, raw_db, _blob_dir(data_dir), root / "raw-batches"
        )
        assert raw_close["rows"] == closed["records"], (raw_close["rows"], closed["records"])
        closed["largest_batch_records"] = facts["largest_unit"]
        closed["baseline_raw_records_per_s"] = raw_close["rows"] / raw_close["seconds"]
        closed["ratio"] = closed["records_per_s"] / closed["baseline_raw_records_per_s"]
        closed["baseline_breakdown_seconds"] = {
            "sql": raw_close["sql_seconds"],
            "utf16_encode": raw_close["utf16_seconds"],
            "write_fsync": raw_close["write_seconds"],
        }
        encode = {
            "bytes": raw_close["bytes"],
            "juki_mb_s": raw_close["bytes"] / raw_close["juki_seconds"] / 1e6,
            "utf16be_mb_s": raw_close["bytes"] / raw_close["utf16_seconds"] / 1e6,
        }
        encode["ratio"] = encode["juki_mb_s"] / encode["utf16be_mb_s"]
        encode["target"] = ENCODE_TARGET
    return {
        "size": {"records": records, "full_run_records": FULL_RECORDS},
        "import": imported,
        "close_day": closed,
        "encode": encode,
    }


def main(argv: list[str]) -> int:
    """Child entry points: ``import DATA_DIR FILE…`` and ``close DATA_DIR``."""
    step, data_dir, *files = argv
    figures = child_import(data_dir, files) if step == "import" else child_close_day(data_dir)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
