"""``GET /metrics``: the server's figures in Prometheus text format (prometheus-client).

Two kinds of figure, kept apart on purpose:

* **What only a process sees** — requests by route template, method and
  status, their durations, terminal requests refused by the signature check
  (by error code), operator logins (by outcome).  These are counters in the
  process that answered.  gunicorn runs several worker processes and a scrape
  reaches one of them, so they use prometheus-client's *multiprocess mode*:
  each process writes its counters to memory-mapped files in one folder
  (``PROMETHEUS_MULTIPROC_DIR``) and a scrape adds up every file.
  ``renkei-server serve`` sets that variable to ``metrics.multiprocess_dir``
  and empties the folder before gunicorn starts (the variable must be set
  before prometheus-client is first imported, so the app cannot set it
  itself).  Only counters and histograms are kept this way — no gauges — so
  nothing needs cleaning when a worker exits: a dead worker's counts still
  belong to the total.  Without the variable (one process, e.g. tests of the
  app) the counters live in the app's own registry.
* **What the database knows** — municipalities by dashboard state, terminals
  by state, batches pending and acknowledged, uploads and their records by
  outcome, imports, mails not yet delivered.  These are read from the
  database when scraped (cached ``metrics.cache_seconds``), so every worker
  and every application server answers the same, a restart loses nothing,
  and the work of the CLI commands (import, close-day, report) is counted
  too.  With several application servers on one PostgreSQL, aggregate these
  with ``max``, not ``sum``.

The endpoint is protected by a bearer token: ``metrics.token_sha256`` is the
SHA-256 of the token Prometheus sends (``authorization: {credentials_file:
…}``); without it the endpoint does not exist (404).  A token, rather than a
separate listening address, because gunicorn serves one application on all
its addresses and the load balancer decides what reaches them; a token holds
wherever the server is deployed.  Only the hash is in the configuration.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from datetime import time as day_start
from pathlib import Path

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector

from .config import MetricsConfig
from .storage import TOKYO, Storage, imports, mail_outbox, terminals, uploads

__all__ = ["ENV_MULTIPROC", "EXTENSION", "Metrics", "bp", "prepare_multiprocess_dir"]

#: prometheus-client's switch to multiprocess mode (read when it is first imported).
ENV_MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"
#: Where the app keeps its :class:`Metrics` (``app.extensions``).
EXTENSION = "renkei.metrics"
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def prepare_multiprocess_dir(path: Path) -> Path:
    """Create the folder and remove counter files of an earlier run (call before gunicorn starts)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    return path


def _multiprocess_active() -> bool:
    """Whether prometheus-client was imported in multiprocess mode (values in mmap files)."""
    from prometheus_client import values

    return bool(getattr(values.ValueClass, "_multiprocess", False))


class DatabaseCollector:
    """The figures the database holds, read at scrape time and cached (module docstring)."""

    def __init__(self, storage: Storage, clock: Callable[[], datetime], cache_seconds: int):
        self.storage = storage
        self.clock = clock
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.cache_seconds:
                self._cached = (now, self._read())
            families = self._cached[1]
        yield from families

    def _read(self) -> list[Metric]:
        # Imported here: the dashboard's state rules need the app's modules, which import this one.
        from .dashboard.states import STATES, fleet_state
        from .status import SILENCE, SKEW_LIMIT, server_status

        now = self.clock().astimezone(UTC)
        status = server_status(self.storage, now=now)
        states = dict.fromkeys(STATES, 0)
        for row in status.municipalities:
            states[fleet_state(row)] += 1
        fleet = GaugeMetricFamily(
            "renkei_municipalities",
            "Receiving units (municipalities and wards) by their state on the dashboard",
            labels=["state"],
        )
        for state, count in states.items():
            fleet.add_metric([state], count)

        batches = GaugeMetricFamily(
            "renkei_batches", "Batches by delivery state (receiving units)", labels=["state"]
        )
        batches.add_metric(["pending"], sum(m.pending for m in status.municipalities))
        batches.add_metric(["acknowledged"], sum(m.acknowledged for m in status.municipalities))
        overdue = GaugeMetricFamily(
            "renkei_municipalities_overdue",
            "Enrolled units with a batch older than the latest closed day not acknowledged",
        )
        overdue.add_metric(
            [],
            sum(
                1 for m in status.municipalities if m.terminals and m.overdue(status.latest_closed)
            ),
        )
        closed = GaugeMetricFamily(
            "renkei_latest_closed_day_timestamp_seconds",
            "Midnight (Japan) of the latest business day closed, as Unix time; 0 before any",
        )
        day = status.latest_closed
        closed.add_metric(
            [], datetime.combine(day, day_start(0), tzinfo=TOKYO).timestamp() if day else 0
        )

        by_state = dict.fromkeys(("active", "revoked", "silent", "clock_skewed"), 0)
        with self.storage.read() as conn:
            for t in conn.execute(
                sa.select(terminals.c.revoked_at, terminals.c.last_seen_at, terminals.c.clock_skew)
            ):
                if t.revoked_at is not None:
                    by_state["revoked"] += 1
                    continue
                by_state["active"] += 1
                if t.last_seen_at is None or now - t.last_seen_at > SILENCE:
                    by_state["silent"] += 1
                if t.clock_skew is not None and abs(t.clock_skew) > SKEW_LIMIT:
                    by_state["clock_skewed"] += 1
            up = conn.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.sum(uploads.c.accepted),
                    sa.func.sum(uploads.c.duplicates),
                    sa.func.sum(uploads.c.rejected),
                    sa.func.sum(sa.case((uploads.c.file_error.is_not(None), 1), else_=0)),
                )
            ).one()
            imp = conn.execute(
                sa.select(
                    sa.func.count(), sa.func.sum(imports.c.loaded), sa.func.sum(imports.c.rejected)
                )
            ).one()
            unsent = conn.execute(
                sa.select(sa.func.count())
                .select_from(mail_outbox)
                .where(mail_outbox.c.sent_at.is_(None))
            ).scalar_one()
        terminal_family = GaugeMetricFamily(
            "renkei_terminals",
            "Terminals: active (enrolled, not revoked), revoked; of the active ones, silent "
            f"(no request for {SILENCE.total_seconds() / 3600:g} h) and clock_skewed "
            f"(> {SKEW_LIMIT:g} s)",
            labels=["state"],
        )
        for state, count in by_state.items():
            terminal_family.add_metric([state], count)
        uploads_total = CounterMetricFamily(
            "renkei_uploads", "Municipality notice files received (each stored once)"
        )
        uploads_total.add_metric([], int(up[0] or 0))
        file_errors = CounterMetricFamily(
            "renkei_upload_file_errors", "Uploaded files refused as a whole (file_error)"
        )
        file_errors.add_metric([], int(up[4] or 0))
        records = CounterMetricFamily(
            "renkei_upload_records",
            "Records of uploaded files by outcome (rejected: refused, listed in the receipt)",
            labels=["outcome"],
        )
        records.add_metric(["accepted"], int(up[1] or 0))
        records.add_metric(["duplicate"], int(up[2] or 0))
        records.add_metric(["rejected"], int(up[3] or 0))
        import_files = CounterMetricFamily("renkei_imports", "Ministry notice files imported")
        import_files.add_metric([], int(imp[0] or 0))
        import_records = CounterMetricFamily(
            "renkei_import_records", "Imported ministry notices by outcome", labels=["outcome"]
        )
        import_records.add_metric(["loaded"], int(imp[1] or 0))
        import_records.add_metric(["rejected"], int(imp[2] or 0))
        mail = GaugeMetricFamily(
            "renkei_mail_unsent", "Report mails spooled and not yet accepted by the relay"
        )
        mail.add_metric([], unsent)
        return [
            fleet,
            overdue,
            closed,
            batches,
            terminal_family,
            uploads_total,
            file_errors,
            records,
            import_files,
            import_records,
            mail,
        ]


class Metrics:
    """The app's counters and the database collector; :meth:`render` is one scrape."""

    def __init__(self, storage: Storage, config: MetricsConfig, clock: Callable[[], datetime]):
        self.config = config
        directory = os.environ.get(ENV_MULTIPROC)
        self.multiprocess_dir = Path(directory) if directory else None
        if self.multiprocess_dir is not None:
            if not _multiprocess_active():
                raise RuntimeError(
                    f"{ENV_MULTIPROC} was set after prometheus-client was imported; set it "
                    "before the server starts (renkei-server serve does)"
                )
            self.multiprocess_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # In multiprocess mode the counters belong to no registry: the files are the registry.
        registry = None if self.multiprocess_dir is not None else CollectorRegistry()
        self.registry = registry
        self.requests = Counter(
            "renkei_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "renkei_http_request_duration_seconds",
            "Time to answer an HTTP request (until the body starts), by route template",
            ["route"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.auth_failures = Counter(
            "renkei_auth_failures",
            "Terminal requests refused by the signature check or enrollment, by error code",
            ["code"],
            registry=registry,
        )
        self.operator_logins = Counter(
            "renkei_operator_logins",
            "Dashboard logins by outcome (success, invalid, locked)",
            ["outcome"],
            registry=registry,
        )
        # The labelled children of each (route, method, status) seen, so a request does not pay
        # labels()'s validation and lock every time (issue 10).  As many entries as the
        # registry keeps children: one per label set, for the life of the process.
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self.database = DatabaseCollector(storage, clock, config.cache_seconds)
        if registry is not None:
            registry.register(self.database)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (
                self.requests.labels(route, method, str(status)),
                self.duration.labels(route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            assert self.registry is not None
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.multiprocess_dir))
        registry.register(self.database)
        return generate_latest(registry)


def authorized(config: MetricsConfig, header: str | None) -> bool:
    """Whether an ``Authorization`` header carries the token whose SHA-256 is configured."""
    if config.token_sha256 is None or not header:
        return False
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    digest = hashlib.sha256(token.strip().encode("utf-8", "replace")).hexdigest()
    return hmac.compare_digest(digest, config.token_sha256)


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape():
    metrics: Metrics = current_app.extensions[EXTENSION]
    headers = {"Cache-Control": "no-store"}
    if metrics.config.token_sha256 is None:
        return Response("not found\n", 404, headers, mimetype="text/plain")
    if not authorized(metrics.config, request.headers.get("Authorization")):
        headers["WWW-Authenticate"] = 'Bearer realm="renkei-metrics"'
        return Response("a bearer token is required\n", 401, headers, mimetype="text/plain")
    return Response(metrics.render(), 200, headers, content_type=CONTENT_TYPE_PLAIN_0_0_4)
