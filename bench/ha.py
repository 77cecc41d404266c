"""Benchmark: the fleet on PostgreSQL with one app server, then with two behind a balancer.

The ministry runs several app servers on one PostgreSQL for availability
(docs/operations.md, "Several app servers").  This measures what the second
server costs or gives: the same day (one template database copied for each
run), the same fleet all at once (no window: the capacity figure), first
against one gunicorn, then against two gunicorn instances on one shared data
folder and one database, the load generator's workers split between them as
a TCP balancer splits connections.

``ratio`` = one-server seconds / two-server seconds (> 1: the second server
finishes the fleet sooner).  On this benchmark machine both servers and the
database share the same two cores, so the second server cannot add CPU: the
ratio shows the cost of coordinating through the database (row locks,
constraint checks between servers), and stays near 1 when that cost is
small.  On separate hosts the capacity would add up to what the database
allows; the database CPU figure says how far that is.

Run as ``python -m bench --only ha``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from bench.fleet import CLIENT_THREADS, NOTICES_PER_UNIT, UPLOAD_RECORDS, prepare_day, setup_fleet
from bench.loadgen import run_fleet
from bench.procwatch import GroupWatch
from bench.workload import Unit
from tests.pgcluster import PgCluster
from tests.server.client import ServerProcess

__all__ = ["TARGET_RATIO", "run"]

#: Two app servers must not make the fleet slower than one (within the noise of a shared machine).
TARGET_RATIO = 0.9
#: Two load-generator processes: one per server in the two-server run.
CLIENT_PROCESSES = 2


def _postmaster_pid(cluster: PgCluster) -> int:
    """The postmaster's pid (its backends are its children, each in a session of its own)."""
    return int((cluster.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])


def _burst(
    cluster: PgCluster,
    root: Path,
    servers: int,
    terminals: int,
    *,
    day: tuple[Path, int],
    upload_records: int,
    units: Sequence[Unit] | None,
    threads: int,
) -> dict:
    """One copy of the day, ``servers`` gunicorn instances, the whole fleet at once; the figures."""
    url = cluster.create_database(cluster.new_name("fleet"), template="renkei_day")
    fleet = setup_fleet(
        root,
        terminals,
        day=day[0],
        notices=day[1],
        database_url=url,
        upload_records=upload_records,
        units=units,
    )
    cpus = os.cpu_count() or 1
    with ExitStack() as stack:
        gunicorns = []
        for number in range(servers):
            gunicorn = ServerProcess(
                fleet.config.data_dir,
                log_path=root / f"gunicorn-{number}.log",
                workers=2 * cpus + 1,  # each as shipped: a second host would run the same
                threads=4,
                front_workers=cpus,
                database_url=url,
            )
            gunicorn.start()
            stack.callback(gunicorn.stop)
            gunicorns.append(gunicorn)
        watches = [stack.enter_context(GroupWatch(g.process_groups)) for g in gunicorns]
        database_watch = stack.enter_context(GroupWatch(_postmaster_pid(cluster), tree=True))
        run = run_fleet(
            "127.0.0.1",
            [g.port for g in gunicorns],  # type: ignore[misc]
            gunicorns[0].ca_file,
            fleet.terminals,
            processes=CLIENT_PROCESSES,
            threads=threads,
        )
    figures = run.summary()
    app = [w.result.to_json() for w in watches]  # type: ignore[union-attr]
    figures["servers"] = servers
    figures["app_cpu_seconds"] = sum(a["cpu_seconds"] for a in app)
    figures["app_peak_rss_mb"] = sum(a["peak_rss_mb"] for a in app)
    figures["database_cpu_seconds"] = database_watch.result.cpu_seconds  # type: ignore[union-attr]
    figures["terminals_per_s"] = run.terminals / run.seconds if run.seconds else 0.0
    return figures


def run(
    terminals: int = 1900,
    *,
    notices_per_unit: int = NOTICES_PER_UNIT,
    upload_records: int = UPLOAD_RECORDS,
    units: Sequence[Unit] | None = None,
    threads: int = CLIENT_THREADS,
) -> dict:
    """The ha section of the report: one server, two servers, and their ratio."""
    with tempfile.TemporaryDirectory(prefix="renkei-bench-ha-") as temp, PgCluster() as cluster:
        root = Path(temp)
        notices = prepare_day(
            root / "day",
            database_url=cluster.create_database("renkei_day"),
            notices_per_unit=notices_per_unit,
            units=units,
        )
        day = (root / "day", notices)
        common = {"day": day, "upload_records": upload_records, "units": units, "threads": threads}
        one = _burst(cluster, root / "one", 1, terminals, **common)
        two = _burst(cluster, root / "two", 2, terminals, **common)
    errors = one["errors"] + two["errors"]
    return {
        "one_server": one,
        "two_servers": two,
        "comparison": {
            "terminals": terminals,
            "one_server_seconds": one["completion_seconds"],
            "two_servers_seconds": two["completion_seconds"],
            "ratio": one["completion_seconds"] / two["completion_seconds"]
            if two["completion_seconds"]
            else 0.0,
            "target": TARGET_RATIO,
            "errors": errors,
            "target_errors": 0,
        },
    }
