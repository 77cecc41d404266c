"""Two app servers, one database: what must happen once happens once, under load.

Two servers (each gunicorn, 2 workers × 4 threads, behind its own nginx
front) listen on their own ports and share one database — the run's ``--database``: on PostgreSQL the
several-hosts deployment (docs/operations.md), on SQLite two servers on one
file, the most the embedded default allows — and one data folder (signing
key, blob store: on several hosts that folder is shared storage).  Every
terminal signs for one authority, the load balancer's name, so one signed
request is valid at both servers, as behind a balancer.

While each test runs, a load generator sprays the terminals' signed requests
across both servers (list, download, acknowledge, upload files that overlap
one another).  The tests fire the races themselves, each pair of requests
released together by a barrier over warm connections:

* one signed request sent to both servers (a replay): one accepted;
* the same file uploaded to both: stored once, one receipt; two files sharing
  records: each record stored once;
* the same batch acknowledged at both: one acknowledgement, both told it;
* two ``renkei-server close-day`` processes for the same day (as two hosts'
  timers would): each municipality gets one batch, sequence numbers gapless;
  on PostgreSQL the test holds the close-day lock until both runs wait for it,
  so they really meet;
* one enrollment token presented at both servers: one terminal.

After each test: no answer was a 5xx or a refusal the scenario cannot
explain, and the database's invariants hold (:func:`check_invariants`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import statement
from common.items import MINISTRY, MUNICIPALITY
from common.noticefile import encode_notice_file
from common.synthetic import SampleFactory
from server.blobs import BlobStore
from server.closeday import close_day
from server.enrollment import issue_token
from server.ingest import import_notices
from server.keys import load_signing_key
from server.storage import (
    Storage,
    batches,
    enrollment_tokens,
    lock_key,
    municipalities,
    notices,
    received_notices,
    schema_migrations,
    serialize,
    terminals,
    uploads,
)
from tests.server.client import ROOT, Reply, ServerProcess, SigningClient
from tests.server.conftest import (
    API_A,
    API_B,
    API_C,
    api_enroll,
    api_init_data,
    api_publish,
    ministry_jsonl,
)

pytestmark = pytest.mark.slow

AUTHORITY = "renkei.test"  # the load balancer's name, which every request is signed for
UNITS = (API_A, API_B, API_C)
LIST = "/api/v1/batches"
UPLOADS = "/api/v1/uploads"
ENROLL = "/api/v1/enroll"
MIN_OPERATIONS = 60  # the load's requests per test, at least
SERVER_ENV = {
    "RENKEI_SERVER_FAILED_AUTH_LIMIT": "1000000",  # replays count as failures
    "RENKEI_SERVER_AUTHORITIES": AUTHORITY,  # the balancer's name, not the servers' own
}


def municipality_file(lasdec: str, count: int, day: date) -> bytes:
    """``count`` municipality notices of ``day``; the same day and a larger count share records."""
    return encode_notice_file(
        MUNICIPALITY, SampleFactory(seed=5, day=day).day_of(MUNICIPALITY, lasdec, count)
    )


@dataclass
class Terminal:
    terminal_id: str
    lasdec: str
    key: Ed25519PrivateKey


class Pair:
    """Two app servers on one database and one data folder, and the terminals using them."""

    def __init__(self, root: Path):
        self.root = root
        self.config = api_init_data(root / "srv", tls=True)
        self.storage = Storage(self.config.database_url)
        self.blobs = BlobStore(self.config.blob_dir)
        self.public_key = load_signing_key(self.config.signing_key_path).public_key()
        self.servers: list[ServerProcess] = []
        self.terminals: list[Terminal] = []
        #: Every signed receipt a client was given: checked against the database afterwards.
        self.receipts: list[dict] = []
        self.lock = threading.Lock()

    def start(self) -> Pair:
        key = load_signing_key(self.config.signing_key_path)
        api_publish(self.storage, self.blobs, key, datetime.now(UTC), {API_A: 40, API_B: 5})
        for lasdec in UNITS:
            for _ in range(2):
                terminal, private = api_enroll(self.storage, lasdec, datetime.now(UTC))
                self.terminals.append(Terminal(terminal.terminal_id, lasdec, private))
        for number in (1, 2):
            server = ServerProcess(
                self.config.data_dir,
                log_path=self.root / f"gunicorn-{number}.log",
                env=SERVER_ENV,
                database_url=self.config.database_url,
            )
            self.servers.append(server)
            server.start()
        return self

    def close(self) -> None:
        for server in self.servers:
            server.stop()
        self.storage.dispose()

    def client(self, server: int, terminal: Terminal | None = None) -> SigningClient:
        kwargs = {"key": terminal.key, "key_id": terminal.terminal_id} if terminal else {}
        return self.servers[server].client(authority=AUTHORITY, **kwargs)

    def of(self, lasdec: str) -> list[Terminal]:
        return [t for t in self.terminals if t.lasdec == lasdec]

    def keep_receipt(self, reply: Reply) -> dict:
        body = statement.verify(reply.json(), self.public_key)
        with self.lock:
            self.receipts.append(reply.json())
        return body

    def next_day(self) -> date:
        """The business day after the latest one closed."""
        with self.storage.read() as conn:
            latest = conn.execute(sa.select(sa.func.max(batches.c.business_date))).scalar()
        return latest + timedelta(days=1)

    def import_day(self, day: date, counts: dict[str, int]) -> None:
        samples = SampleFactory(seed=17, day=day)
        records = [r for code, n in counts.items() for r in samples.day_of(MINISTRY, code, n)]
        data = ministry_jsonl(records)
        result = import_notices(
            self.storage, data, file_name="day.jsonl", business_date=day, now=datetime.now(UTC)
        )
        assert result.ok, result.to_json()


def upload(client: SigningClient, data: bytes, name: str = "notice.csv", **kwargs) -> Reply:
    headers = {"Content-Type": "application/octet-stream", "Renkei-File-Name": quote(name)}
    return client.post(UPLOADS, data, headers=headers, **kwargs)


def race(*calls: Callable[[], Reply]) -> list[Reply]:
    """Run the calls in threads released together by a barrier; their replies in order."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], Reply]) -> Reply:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def warm(*clients: SigningClient) -> None:
    """Open each client's TLS connection, so a race is not decided by handshakes."""
    for client in clients:
        assert client.get("/healthz", sign=False).status == 200


# --- the load generator ---------------------------------------------------------------------------


class Load:
    """Threads sending the terminals' signed requests to random servers until stopped.

    Operations: list pending batches; fetch a batch (from one server) and
    acknowledge it (at either); upload one of a few files per municipality
    that share records with one another.  Every answer that is not the
    expected one is kept in :attr:`problems`.
    """

    def __init__(self, pair: Pair, *, threads: int = 3, seed: int = 1):
        self.pair = pair
        self.stop_event = threading.Event()
        self.problems: list[str] = []
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        day = date(2026, 11, 27)
        self.files = {
            lasdec: [municipality_file(lasdec, n, day) for n in (3, 5, 8)] for lasdec in UNITS
        }
        self.threads = [
            threading.Thread(target=self._run, args=(seed + n,), name=f"load-{n}", daemon=True)
            for n in range(threads)
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # However quick the test's races were, the load overlaps them with some real traffic.
        deadline = time.monotonic() + 120
        while self.done() < MIN_OPERATIONS and not self.problems:
            if time.monotonic() > deadline or not any(t.is_alive() for t in self.threads):
                break
            time.sleep(0.05)
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in self.threads), "load threads hung"

    def done(self) -> int:
        """Requests sent so far."""
        with self.lock:
            return sum(self.counts.values())

    def _problem(self, what: str, reply: Reply) -> None:
        self.problems.append(f"{what}: {reply.status} {reply.error_code} {reply.body[:200]!r}")

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        clients: dict[tuple[str, int], SigningClient] = {}
        try:
            while not self.stop_event.is_set():
                terminal = rng.choice(self.pair.terminals)
                server = rng.randrange(2)
                key = (terminal.terminal_id, server)
                if key not in clients:
                    clients[key] = self.pair.client(server, terminal)
                other = (terminal.terminal_id, 1 - server)
                if other not in clients:
                    clients[other] = self.pair.client(1 - server, terminal)
                operation = rng.choice(("list", "fetch-ack", "upload"))
                with self.lock:
                    self.counts[operation] += 1
                if operation == "list":
                    reply = clients[key].get(LIST)
                    if reply.status != 200:
                        self._problem("list", reply)
                elif operation == "fetch-ack":
                    self._fetch_ack(rng, clients[key], clients[other])
                else:
                    data = rng.choice(self.files[terminal.lasdec])
                    reply = upload(clients[key], data)
                    if reply.status not in (200, 201):
                        self._problem("upload", reply)
                    else:
                        self.pair.keep_receipt(reply)
        except Exception as exc:
            self.problems.append(f"load thread failed: {exc!r}")
        finally:
            for client in clients.values():
                client.close()

    def _fetch_ack(self, rng: random.Random, here: SigningClient, there: SigningClient) -> None:
        listed = here.get(LIST + "?all=1")
        if listed.status != 200:
            self._problem("list all", listed)
            return
        found = listed.json()["batches"]
        if not found:
            return
        batch = rng.choice(found)
        fetched = here.get(batch["file"])
        if fetched.status != 200 or hashlib.sha256(fetched.body).hexdigest() != batch["sha256"]:
            self._problem("download", fetched)
            return
        acked = there.post_json(f"{LIST}/{batch['batch_id']}/ack", {"sha256": batch["sha256"]})
        if acked.status != 200 or acked.json()["acknowledged_at"] is None:
            self._problem("ack", acked)


# --- invariants -------------------------------------------------------------------------------------


def check_invariants(pair: Pair) -> None:
    """What must hold in the database whatever the interleaving, checked from scratch."""
    with pair.storage.read() as conn:
        rows = conn.execute(
            sa.select(
                batches.c.batch_id,
                batches.c.lasdec,
                batches.c.sequence,
                batches.c.business_date,
                batches.c.records,
                batches.c.sha256,
                batches.c.acknowledged_by,
            )
        ).all()
        assigned = dict(
            conn.execute(
                sa.select(notices.c.batch_id, sa.func.count())
                .where(notices.c.batch_id.is_not(None))
                .group_by(notices.c.batch_id)
            ).all()
        )
        owners = dict(conn.execute(sa.select(terminals.c.terminal_id, terminals.c.lasdec)).all())
        used_tokens = (
            conn.execute(
                sa.select(enrollment_tokens.c.terminal_id).where(
                    enrollment_tokens.c.used_at.is_not(None)
                )
            )
            .scalars()
            .all()
        )
        stored_uploads = conn.execute(
            sa.select(uploads.c.upload_id, uploads.c.lasdec, uploads.c.sha256, uploads.c.receipt)
        ).all()
        received = conn.execute(
            sa.select(
                received_notices.c.lasdec,
                received_notices.c.record_id,
                received_notices.c.upload_id,
            )
        ).all()

    by_unit: dict[str, list] = {}
    for row in rows:
        by_unit.setdefault(row.lasdec, []).append(row)
    assert set(by_unit) == set(UNITS), "every receiving unit has batches"
    for lasdec, found in by_unit.items():
        found.sort(key=lambda r: r.sequence)
        assert [r.sequence for r in found] == list(range(1, len(found) + 1)), (
            f"{lasdec}: sequence numbers gapless and unique"
        )
        days = [r.business_date for r in found]
        assert days == sorted(set(days)), f"{lasdec}: one batch per business day, in day order"
    for row in rows:
        assert assigned.get(row.batch_id, 0) == row.records, f"{row.batch_id}: record count"
        assert pair.blobs.path(row.sha256).is_file(), f"{row.batch_id}: file present"
        if row.acknowledged_by is not None:
            assert owners[row.acknowledged_by] == row.lasdec, "acknowledged by its own municipality"
    for sha256 in {row.sha256 for row in rows}:
        data = pair.blobs.path(sha256).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha256

    assert len(used_tokens) == len(set(used_tokens)) == len(owners), "one terminal per used token"
    assert set(used_tokens) == set(owners)

    files = Counter((row.lasdec, row.sha256) for row in stored_uploads)
    assert max(files.values(), default=1) == 1, "each file stored once per municipality"
    stored_receipts = {}
    accepted_by_unit: dict[str, Counter[str]] = {}
    for row in stored_uploads:
        body = statement.verify(json.loads(row.receipt), pair.public_key)
        stored_receipts[(row.lasdec, row.sha256)] = json.loads(row.receipt)
        accepted_by_unit.setdefault(row.lasdec, Counter()).update(body["accepted"])
    received_by_unit: dict[str, Counter[str]] = {}
    for row in received:
        received_by_unit.setdefault(row.lasdec, Counter())[row.record_id] += 1
    for lasdec in set(accepted_by_unit) | set(received_by_unit):
        accepted = accepted_by_unit.get(lasdec, Counter())
        stored = received_by_unit.get(lasdec, Counter())
        assert max(accepted.values(), default=1) == 1, f"{lasdec}: a record accepted twice"
        assert max(stored.values(), default=1) == 1, f"{lasdec}: a record stored twice"
        assert set(accepted) == set(stored), f"{lasdec}: accepted records are the stored ones"
    with pair.lock:
        given = list(pair.receipts)
    for receipt in given:
        body = receipt["statement"]
        assert stored_receipts[(body["lasdec"], body["sha256"])] == receipt, (
            "every client got the stored receipt of its file"
        )


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Iterator[Pair]:  # type: ignore[no-untyped-def]
    started = Pair(tmp_path_factory.mktemp("pair"))
    try:
        yield started.start()
    finally:
        started.close()


@pytest.fixture
def load(pair: Pair) -> Iterator[Load]:
    with Load(pair) as running:
        yield running
    assert not running.problems, running.problems[:10]
    assert running.done() >= MIN_OPERATIONS, running.counts
    check_invariants(pair)


# --- the races -----------------------------------------------------------------------------------


def test_a_request_replayed_to_both_servers_is_accepted_once(pair: Pair, load: Load):
    for terminal in pair.terminals:
        clients = [pair.client(0, terminal), pair.client(1, terminal)]
        warm(*clients)
        for _ in range(4):
            signed = clients[0].signed_headers("GET", LIST)
            replies = race(
                *(partial(c.request, "GET", LIST, headers=signed, sign=False) for c in clients)
            )
            outcomes = sorted((r.status, r.error_code) for r in replies)
            assert outcomes == [(200, None), (401, "auth.replay")], outcomes
        data = municipality_file(terminal.lasdec, 2, date(2026, 12, 1))
        headers = {"Content-Type": "application/octet-stream", "Renkei-File-Name": "replay.csv"}
        signed = clients[0].signed_headers("POST", UPLOADS, data)
        replies = race(
            *(
                partial(c.request, "POST", UPLOADS, data, headers={**headers, **signed}, sign=False)
                for c in clients
            )
        )
        statuses = sorted(r.status for r in replies)
        assert statuses in ([200, 401], [201, 401]), [(r.status, r.error_code) for r in replies]
        for reply in replies:
            if reply.status != 401:
                pair.keep_receipt(reply)
            else:
                assert reply.error_code == "auth.replay"
        for client in clients:
            client.close()


def test_the_same_file_sent_to_both_servers_is_stored_once(pair: Pair, load: Load):
    for number, lasdec in enumerate(UNITS):
        first, second = pair.of(lasdec)
        clients = [pair.client(0, first), pair.client(1, second)]
        warm(*clients)
        data = municipality_file(lasdec, 6, date(2026, 12, 2))
        replies = race(*(partial(upload, c, data, f"same-{number}.csv") for c in clients))
        assert sorted(r.status for r in replies) == [200, 201], replies
        bodies = [pair.keep_receipt(r) for r in replies]
        assert bodies[0] == bodies[1], "both servers answer with the one stored receipt"
        assert len(bodies[0]["accepted"]) == 6 and not bodies[0]["duplicates"]

        # Two files sharing four records, one at each server: each record is stored once.
        small = municipality_file(lasdec, 4, date(2026, 12, 3))
        large = municipality_file(lasdec, 7, date(2026, 12, 3))
        replies = race(
            partial(upload, clients[0], small, "small.csv"),
            partial(upload, clients[1], large, "large.csv"),
        )
        assert [r.status for r in replies] == [201, 201], [
            (r.status, r.error_code) for r in replies
        ]
        small_body, large_body = (pair.keep_receipt(r) for r in replies)
        accepted = small_body["accepted"] + large_body["accepted"]
        assert len(accepted) == len(set(accepted)) == 7
        assert not small_body["rejected"] and not large_body["rejected"]
        for client in clients:
            client.close()


def test_racing_acknowledgements_keep_one(pair: Pair, load: Load):
    day = pair.next_day()
    pair.import_day(day, {API_A: 3, API_B: 2})
    key = load_signing_key(pair.config.signing_key_path)
    close_day(pair.storage, pair.blobs, key, day, now=datetime.now(UTC))
    for lasdec in (API_A, API_B, API_C):
        first, second = pair.of(lasdec)
        clients = [pair.client(0, first), pair.client(1, second)]
        warm(*clients)
        listed = clients[0].get(LIST + "?all=1").json()["batches"]
        (batch,) = [b for b in listed if b["business_date"] == day.isoformat()]
        path = f"{LIST}/{batch['batch_id']}/ack"
        replies = race(*(partial(c.post_json, path, {"sha256": batch["sha256"]}) for c in clients))
        assert [r.status for r in replies] == [200, 200]
        answers = {(r.json()["acknowledged_at"], r.json()["acknowledged_by"]) for r in replies}
        assert len(answers) == 1, f"both told the same acknowledgement: {answers}"
        with pair.storage.read() as conn:
            row = conn.execute(
                sa.select(batches.c.acknowledged_by).where(batches.c.batch_id == batch["batch_id"])
            ).one()
        assert row.acknowledged_by == answers.pop()[1]
        for client in clients:
            client.close()


def _cli_process(data_dir: Path, database_url: str, *args: str) -> subprocess.Popen:
    """``renkei-server ARGS`` as its own process, as an operator or a host's timer runs it."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "RENKEI_SERVER_DATA_DIR": str(data_dir),
        "RENKEI_SERVER_DATABASE_URL": database_url,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _waiting_for(storage: Storage, scope: tuple[str, ...]) -> int:
    """How many PostgreSQL sessions wait for the advisory lock of ``scope``."""
    unsigned = lock_key(*scope) & 0xFFFF_FFFF_FFFF_FFFF
    with storage.read() as conn:
        return conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND objsubid = 1 AND classid::bigint = :high AND objid::bigint = :low"
            ),
            {"high": unsigned >> 32, "low": unsigned & 0xFFFF_FFFF},
        ).scalar_one()


def at_once(storage: Storage, scope: str, starters: list[Callable[[], subprocess.Popen]]) -> list:
    """Start the processes so that they meet at the lock of ``scope``; their JSON outputs.

    PostgreSQL: the test holds the lock until every process waits for it, so
    they really run at the same moment.  SQLite: they are simply started
    together (its write lock lets one writer in at a time in any case).
    """
    if storage.engine.dialect.name == "postgresql":
        with storage.begin() as conn:
            serialize(conn, scope)
            runs = [start() for start in starters]
            deadline = time.monotonic() + 90
            while _waiting_for(storage, (scope,)) < len(runs):
                if time.monotonic() > deadline or any(run.poll() is not None for run in runs):
                    outputs = [run.communicate(timeout=60) for run in runs]
                    raise AssertionError(f"the runs never met at the {scope} lock: {outputs}")
                time.sleep(0.05)
    else:
        runs = [start() for start in starters]
    results = []
    for run in runs:
        out, err = run.communicate(timeout=180)
        assert run.returncode == 0, err
        results.append(json.loads(out))
    return results


def test_two_close_days_at_once_cut_each_day_once(pair: Pair, load: Load):
    for _ in range(2):
        day = pair.next_day()
        pair.import_day(day, {API_A: 4, API_C: 1})
        args = ("close-day", "--date", day.isoformat(), "--json")
        run = partial(_cli_process, pair.config.data_dir, pair.config.database_url, *args)
        results = at_once(pair.storage, "close-day", [run, run])
        assert sorted(r["created"] for r in results) == [0, len(UNITS)], results
        assert sum(r["records"] for r in results) == 5
        with pair.storage.read() as conn:
            cut = conn.execute(
                sa.select(batches.c.lasdec, batches.c.records).where(batches.c.business_date == day)
            ).all()
        assert sorted(cut) == sorted([(API_A, 4), (API_B, 0), (API_C, 1)])


def test_two_inits_at_once_migrate_and_load_the_master_once(tmp_path, request, database_kind):
    """Two hosts set up at the same moment against one new database (their own data folders)."""
    if database_kind == "postgresql":
        cluster = request.getfixturevalue("pg_cluster")
        name = cluster.new_name("init")
        url = cluster.create_database(name)
        request.addfinalizer(lambda: cluster.drop_database(name))
    else:
        url = f"sqlite:///{tmp_path}/shared.sqlite3"
    storage = Storage(url)
    try:
        hosts = [partial(_cli_process, tmp_path / h, url, "init", "--json") for h in "ab"]
        results = at_once(storage, "schema", hosts)
        applied = [name for r in results for name in r["migrations_applied"]]
        assert sorted(applied) == [
            "001_initial",
            "002_retention",
            "003_operations",
            "004_auth_failure_source",
        ], "each migration applied by exactly one of the two"
        added = sorted(r["municipalities"]["added"] for r in results)
        assert added[0] == 0 and added[1] > 1900, results
        with storage.read() as conn:
            versions = conn.execute(sa.select(schema_migrations.c.version)).scalars().all()
            count = conn.execute(sa.select(sa.func.count()).select_from(municipalities)).scalar()
        assert sorted(versions) == [1, 2, 3, 4]
        assert count == added[1]
    finally:
        storage.dispose()


def test_one_enrollment_token_at_both_servers_enrolls_one_terminal(pair: Pair, load: Load):
    clients = [pair.client(0), pair.client(1)]
    warm(*clients)
    for _ in range(4):
        token = issue_token(pair.storage, API_B, now=datetime.now(UTC), ttl=600)
        calls = []
        for client in clients:
            key = Ed25519PrivateKey.generate()
            document = {
                "token": token,
                "public_key": statement.public_key_to_text(key.public_key()),
            }
            body = json.dumps(document).encode("utf-8")
            signed = client.signed_headers("POST", ENROLL, body, key=key, key_id="enroll")
            headers = {"Content-Type": "application/json", **signed}
            calls.append(partial(client.request, "POST", ENROLL, body, headers=headers, sign=False))
        replies = race(*calls)
        outcomes = sorted((r.status, r.error_code) for r in replies)
        assert outcomes == [(201, None), (401, "token.used")], outcomes
        winner = next(r for r in replies if r.status == 201).json()["terminal_id"]
        with pair.storage.read() as conn:
            used_by = (
                conn.execute(
                    sa.select(enrollment_tokens.c.terminal_id).where(
                        enrollment_tokens.c.terminal_id == winner
                    )
                )
                .scalars()
                .all()
            )
        assert used_by == [winner]
    for client in clients:
        client.close()
