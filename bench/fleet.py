"""Benchmark: the whole fleet's evening run against one server — gunicorn, TLS, SQLite, two cores.

Set-up (not measured): a server data folder with the full municipality
master, the day's ministry notices imported (``notices_per_unit`` on average,
spread Zipf-like, see :mod:`bench.workload`) and the day closed, so every
receiving unit has a signed batch; ``terminals`` enrolled terminals — written
straight into the terminals table, with keys made here, because enrolling
thousands one token at a time measures nothing of interest — and for each a
municipality notice file of ``upload_records`` records.  Terminal *i*
belongs to receiving unit *i* mod 1,892, so the default 1,900 has eight
municipalities with a second terminal (and 5,000 has two or three each).

Measured (``run``):

* ``burst``: every terminal does its cycle (:mod:`bench.loadgen`: connect,
  list, download, ack, upload, receipt) starting at a random instant in the
  agent timer's randomized window.  The real window is
  ``RandomizedDelaySec=30min``; the benchmark compresses it by
  ``compression`` (default 30: the fleet starts within 60 s, an arrival rate
  30 times the real one).  Whole-fleet completion time (target < 5 min),
  p50/p99 per request kind, errors (must be 0), server CPU and memory
  (:mod:`bench.procwatch`) and the generator's own CPU.
* ``all_at_once``: the same fleet on a fresh server with no window at all —
  every terminal queued at t0, as many in flight as the generator has
  threads: the server's capacity in terminals/s, and so the fleet's shortest
  possible completion time and the headroom against the real window.
* ``floor``: the same connections and the same number of requests, all to
  the unsigned ``GET /api/v1/time`` (TLS, gunicorn, Flask routing and a JSON
  answer — nothing of ours): the stack's own cost for this traffic.
  ``ratio`` = floor seconds / all-at-once seconds: the share of the fleet's
  time that is the framework's, not our code's.

Run as ``python -m bench --only fleet``.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.loadgen import FleetRun, SimTerminal, run_fleet
from bench.procwatch import GroupWatch
from bench.workload import (
    Unit,
    encode_municipality_file,
    ministry_lines,
    receiving_units,
    zipf_counts,
)
from common import statement
from server.blobs import BlobStore
from server.closeday import close_day
from server.config import ServerConfig, load_config
from server.ingest import import_notices
from server.keys import load_or_create_signing_key
from server.municipalities import load_master, shipped_master
from server.storage import Storage, business_day, terminals
from server.tls import make_dev_ca, make_server_cert
from tests.server.client import ServerProcess

__all__ = ["REAL_WINDOW", "TARGET_SECONDS", "burst", "run", "setup_fleet"]

#: The agent timer's RandomizedDelaySec (appliance/rootfs/.../renkei-agent.timer).
REAL_WINDOW = 30 * 60
TARGET_SECONDS = 300.0
NOTICES_PER_UNIT = 20
UPLOAD_RECORDS = 10
CLIENT_PROCESSES = 2
CLIENT_THREADS = 16


@dataclass
class Fleet:
    """A prepared server data folder and the terminals that will call it."""

    config: ServerConfig
    terminals: list[SimTerminal]
    notices: int
    upload_records: int
    setup_seconds: float


def _config(data_dir: Path, database_url: str | None) -> ServerConfig:
    """The server configuration of a benchmark data folder: its SQLite file, or ``database_url``."""
    env = {"RENKEI_SERVER_DATABASE_URL": database_url} if database_url else {}
    return load_config(env=env, data_dir=data_dir)


def prepare_day(
    folder: Path,
    *,
    database_url: str | None = None,
    notices_per_unit: int = NOTICES_PER_UNIT,
    units: Sequence[Unit] | None = None,
    seed: int = 11,
) -> int:
    """A server data folder with TLS, the master and today's batches; the notice count.

    Made once per benchmark and copied for each burst (:func:`setup_fleet`),
    so every burst starts from the same day without importing it again.
    ``units`` (default: every receiving unit) limits the master to those
    units — the smoke test's small world.  ``database_url`` (PostgreSQL) puts
    the day in that database instead of the folder's SQLite file; the caller
    copies it (``CREATE DATABASE … TEMPLATE``) for each burst.
    """
    ca_cert, ca_key = make_dev_ca(folder / "tls")
    make_server_cert(folder / "tls", ca_cert, ca_key)
    config = _config(folder, database_url)
    config.blob_dir.mkdir(parents=True, exist_ok=True)
    master = shipped_master()
    if units is None:
        units = receiving_units()
    else:
        codes = {unit.code for unit in units}
        master = tuple(m for m in master if m.code in codes)
    now = datetime.now(UTC)
    day = business_day(now)
    storage = Storage(config.database_url)
    try:
        storage.migrate()
        load_master(storage, master)
        key = load_or_create_signing_key(config.signing_key_path)
        counts = zipf_counts(notices_per_unit * len(units), len(units), seed=seed)
        data = "".join(ministry_lines(units, counts, day=day, seed=seed)).encode("utf-8")
        result = import_notices(storage, data, file_name="day.jsonl", business_date=day, now=now)
        if not result.ok:
            raise RuntimeError(f"fleet set-up: import refused records: {result.rejected[:1]}")
        close_day(storage, BlobStore(config.blob_dir), key, day, now=now)
    finally:
        storage.dispose()  # the last connection closes: the WAL is checkpointed, the copy is whole
    return sum(counts)


def setup_fleet(
    root: Path,
    count: int,
    *,
    day: Path,
    notices: int,
    database_url: str | None = None,
    upload_records: int = UPLOAD_RECORDS,
    window: float = 0.0,
    units: Sequence[Unit] | None = None,
    seed: int = 11,
) -> Fleet:
    """A copy of the prepared ``day``, ``count`` enrolled terminals and their upload files.

    ``database_url``: the day's database already copied there (PostgreSQL).
    """
    started = time.perf_counter()
    data_dir = root / "data"
    shutil.copytree(day, data_dir)
    config = _config(data_dir, database_url)
    storage = Storage(config.database_url)
    try:
        sims = _enroll(
            storage,
            root / "uploads",
            list(units) if units is not None else receiving_units(),
            count,
            upload_records,
            window,
            seed,
            datetime.now(UTC),
        )
    finally:
        storage.dispose()
    return Fleet(config, sims, notices, upload_records, time.perf_counter() - started)


def _enroll(
    storage: Storage,
    folder: Path,
    units: list[Unit],
    count: int,
    upload_records: int,
    window: float,
    seed: int,
    now: datetime,
) -> list[SimTerminal]:
    """Terminal rows written in one transaction (what ``server.enrollment.enroll`` stores)."""
    folder.mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    rows: list[dict] = []
    sims: list[SimTerminal] = []
    day = business_day(now)
    for index in range(count):
        unit = units[index % len(units)]
        sibling = index // len(units)
        key = Ed25519PrivateKey.generate()
        public = key.public_key()
        terminal_id = f"t_{rnd.getrandbits(64):016x}"
        rows.append(
            {
                "terminal_id": terminal_id,
                "lasdec": unit.code,
                "public_key": statement.public_key_to_text(public),
                "key_id": statement.key_id(public),
                "enrolled_at": now - timedelta(days=30),
                # Seen at yesterday's run, as a real fleet is: the first request records contact.
                "last_seen_at": now - timedelta(days=1),
                "agent_version": "renkei-bench/1",
            }
        )
        path = folder / f"{unit.code}-{sibling}.csv"
        path.write_bytes(
            encode_municipality_file(unit, upload_records, day=day, seed=seed, tag=f"T{sibling}")
        )
        raw = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        sims.append(
            SimTerminal(terminal_id, raw, str(path), upload_records, rnd.uniform(0, window))
        )
    with storage.begin() as conn:
        conn.execute(terminals.insert(), rows)
    return sims


def _server_figures(run: FleetRun, watch: GroupWatch) -> dict:
    figures = run.summary()
    assert watch.result is not None
    figures["server"] = watch.result.to_json()
    figures["terminals_per_s"] = run.terminals / run.seconds if run.seconds else 0.0
    return figures


def burst(
    count: int,
    *,
    window: float,
    day: tuple[Path, int] | None = None,
    notices_per_unit: int = NOTICES_PER_UNIT,
    upload_records: int = UPLOAD_RECORDS,
    units: Sequence[Unit] | None = None,
    processes: int = CLIENT_PROCESSES,
    threads: int = CLIENT_THREADS,
    floor: bool = False,
    profiler=None,  # type: ignore[no-untyped-def]
) -> dict:
    """One fresh server, ``count`` terminals started over ``window`` seconds; the figures.

    ``day`` is a folder made by :func:`prepare_day` and its notice count
    (made here when None).  With ``floor``, the floor baseline runs afterwards on the same server.
    ``profiler`` (a :class:`bench.profiling.Profiler`) samples the server's
    processes during the burst.
    """
    with tempfile.TemporaryDirectory(prefix="renkei-bench-fleet-") as temp:
        root = Path(temp)
        if day is None:
            notices = prepare_day(root / "day", notices_per_unit=notices_per_unit, units=units)
            day = (root / "day", notices)
        fleet = setup_fleet(
            root,
            count,
            day=day[0],
            notices=day[1],
            upload_records=upload_records,
            window=window,
            units=units,
        )
        cpus = os.cpu_count() or 1
        gunicorn = ServerProcess(  # as shipped: nginx one worker per CPU, gunicorn 2 × CPUs + 1
            fleet.config.data_dir,
            log_path=root / "gunicorn.log",
            workers=2 * cpus + 1,
            threads=4,
            front_workers=cpus,
        )
        gunicorn.start()
        try:
            assert gunicorn.process is not None and gunicorn.port is not None
            pgid = gunicorn.process.pid
            spy = profiler.attach(pgid, f"fleet-{count}") if profiler is not None else None
            groups = gunicorn.process_groups  # the app and its front: the server's whole CPU
            try:
                with GroupWatch(groups) as watch:
                    run = run_fleet(
                        "127.0.0.1",
                        gunicorn.port,
                        gunicorn.ca_file,
                        fleet.terminals,
                        processes=processes,
                        threads=threads,
                    )
            finally:
                if spy is not None:
                    spy.stop()
            figures = _server_figures(run, watch)
            figures["window_seconds"] = window
            figures["notices_in_batches"] = fleet.notices
            figures["upload_records_each"] = fleet.upload_records
            figures["setup_seconds"] = fleet.setup_seconds
            if floor:
                with GroupWatch(groups) as floor_watch:
                    floor_run = run_fleet(
                        "127.0.0.1",
                        gunicorn.port,
                        gunicorn.ca_file,
                        [
                            SimTerminal(t.terminal_id, t.private_key, "", 0, 0.0)
                            for t in fleet.terminals
                        ],
                        processes=processes,
                        threads=threads,
                        mode="floor",
                    )
                figures["floor"] = _server_figures(floor_run, floor_watch)
        finally:
            gunicorn.stop()
    return figures


def run(
    terminals: int = 1900,
    *,
    compression: float = 30.0,
    notices_per_unit: int = NOTICES_PER_UNIT,
    upload_records: int = UPLOAD_RECORDS,
    units: Sequence[Unit] | None = None,
    processes: int = CLIENT_PROCESSES,
    threads: int = CLIENT_THREADS,
    profiler=None,  # type: ignore[no-untyped-def]
) -> dict:
    """The fleet section of the report: the windowed burst, all at once, and the floor."""
    window = REAL_WINDOW / compression
    with tempfile.TemporaryDirectory(prefix="renkei-bench-day-") as temp:
        started = time.perf_counter()
        notices = prepare_day(Path(temp) / "day", notices_per_unit=notices_per_unit, units=units)
        prepared = time.perf_counter() - started
        common = {
            "day": (Path(temp) / "day", notices),
            "upload_records": upload_records,
            "units": units,
            "processes": processes,
            "threads": threads,
        }
        windowed = burst(terminals, window=window, **common)
        at_once = burst(terminals, window=0.0, floor=True, profiler=profiler, **common)
    windowed["day_setup_seconds"] = prepared
    windowed["compression"] = compression
    windowed["real_window_seconds"] = REAL_WINDOW
    windowed["target_seconds"] = TARGET_SECONDS
    windowed["target_errors"] = 0
    floor = at_once.pop("floor")
    at_once["target_seconds"] = TARGET_SECONDS
    at_once["target_errors"] = 0
    capacity = at_once["terminals_per_s"]
    at_once["fleet_headroom_in_real_window"] = (
        capacity * REAL_WINDOW / terminals if terminals else 0.0
    )
    at_once["fleet_headroom_in_target"] = (
        capacity * TARGET_SECONDS / terminals if terminals else 0.0
    )
    floor_figures = {
        "terminals": floor["terminals"],
        "requests": floor["requests"],
        "floor_seconds": floor["completion_seconds"],
        "fleet_seconds": at_once["completion_seconds"],
        "errors": floor["errors"],
        "server_cpu_seconds": floor["server"]["cpu_seconds"],
        "fleet_server_cpu_seconds": at_once["server"]["cpu_seconds"],
        "ratio": floor["completion_seconds"] / at_once["completion_seconds"]
        if at_once["completion_seconds"]
        else 0.0,
    }
    return {"burst": windowed, "all_at_once": at_once, "floor": floor_figures}
