"""Fixtures for the server tests: a real database, real keys, real blobs.

The database is the one ``--database`` names (tests/conftest.py): a SQLite
file in the test's data folder (the default), or a PostgreSQL database of
this worker's throw-away cluster, made for the test and dropped after it.

The core's fixtures are named ``core_*``.  Building the schema and loading the
~1,960-row municipality master takes a few tenths of a second, so it is done
once per session into a template database that each test copies (a file
copy on SQLite, ``CREATE DATABASE … TEMPLATE`` on PostgreSQL).

On PostgreSQL what finds the server by its data folder alone uses the same
database: :class:`tests.server.client.ServerProcess` looks the folder up
(:func:`tests.server.client.use_database`), and the test's first database is
put in the environment (``RENKEI_SERVER_DATABASE_URL``) for the CLI run
through click's runner.
"""

from __future__ import annotations

import io
import shutil
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import statement
from common.items import MINISTRY, MUNICIPALITY
from common.noticefile import encode_notice_file, records_to_jsonl
from common.records import Record
from common.synthetic import SampleFactory
from server.blobs import BlobStore
from server.config import ServerConfig, load_config
from server.enrollment import Terminal, enroll, issue_token
from server.municipalities import load_master
from server.storage import Storage
from tests.pgcluster import PgCluster
from tests.server.client import use_database

#: 2026-11-27 18:00 in Japan: after business hours, the business date is 2026-11-27.
CORE_NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
CHIYODA = "131016"  # 東京都千代田区: a special ward, a receiving unit
SAPPORO_CHUO = "011011"  # 札幌市中央区: a ward of a designated city
SAPPORO = "011002"  # 札幌市: a designated city, not a receiving unit
HOKKAIDO = "010006"  # a prefecture


class ServerDatabases:
    """PostgreSQL databases for the server tests: templates built once per worker, copies of them.

    A template is made the first time it is asked for (``build`` gets it
    migrated and loads a master) and is never connected to again, so
    ``CREATE DATABASE … TEMPLATE`` can copy it.  A copy made during a test is
    dropped after it; one made by a module- or session-scoped fixture (before
    any test's own fixtures run) lives until the end of the session.

    With fsync on, making and dropping a database costs a few tenths of a
    second on a busy machine, mostly waiting for the disk, and most tests take
    less.  So :data:`SPARES` copies of each template are made ahead by
    background threads while the tests run, and the drops happen there too.
    """

    SPARES = 2  # copies made ahead per template (and background threads)

    def __init__(self, cluster: PgCluster):
        self.cluster = cluster
        self._templates: dict[str, str] = {}
        self._spares: dict[str, deque[Future[str]]] = {}
        self._background = ThreadPoolExecutor(self.SPARES, thread_name_prefix="pg-databases")
        self._drops: list[Future[None]] = []
        self._test_copies: list[str] | None = None  # None: no test is running
        self._session_copies: list[str] = []
        self._monkeypatch: pytest.MonkeyPatch | None = None

    def template(self, name: str, build: Callable[[Storage], object]) -> str:
        if name not in self._templates:
            database = f"tmpl_{name}"
            storage = Storage(self.cluster.create_database(database))
            try:
                storage.migrate()
                build(storage)
            finally:
                storage.dispose()
            self._templates[name] = database
        return self._templates[name]

    def _create(self, template: str) -> str:
        database = self.cluster.new_name("t")
        self.cluster.create_database(database, template=template)
        return database

    def copy(self, name: str, build: Callable[[Storage], object]) -> str:
        """A new database copied from template ``name``; returns its URL."""
        template = self.template(name, build)
        spares = self._spares.setdefault(name, deque())
        database = spares.popleft().result() if spares else self._create(template)
        while len(spares) < self.SPARES:
            spares.append(self._background.submit(self._create, template))
        if self._test_copies is None:
            self._session_copies.append(database)
        else:
            self._test_copies.append(database)
            if self._monkeypatch is not None and len(self._test_copies) == 1:
                # For what finds the server by its data folder alone (the CLI via CliRunner).
                self._monkeypatch.setenv("RENKEI_SERVER_DATABASE_URL", self.cluster.url(database))
        return self.cluster.url(database)

    def begin_test(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._test_copies = []
        self._monkeypatch = monkeypatch

    def end_test(self) -> None:
        copies, self._test_copies, self._monkeypatch = self._test_copies or [], None, None
        self._drops += [self._background.submit(self.cluster.drop_database, d) for d in copies]

    def close(self) -> None:
        """Drop every copy and spare (the templates go with the cluster); raise a failed drop."""
        spares = [future.result() for queue in self._spares.values() for future in queue]
        self._background.shutdown(wait=True)
        for database in (*spares, *self._session_copies):
            self.cluster.drop_database(database)
        for future in self._drops:
            future.result()


#: This worker's databases on ``--database=postgresql`` (set by ``server_databases``).
_POSTGRESQL: ServerDatabases | None = None


@pytest.fixture(scope="session", autouse=True)
def server_databases(
    request: pytest.FixtureRequest, database_kind: str
) -> Iterable[ServerDatabases | None]:
    """This worker's :class:`ServerDatabases` on ``--database=postgresql``, else None.

    Autouse and session-scoped, so it is in place before any module-scoped
    fixture calls :func:`api_init_data`.
    """
    global _POSTGRESQL
    if database_kind != "postgresql":
        yield None
        return
    _POSTGRESQL = ServerDatabases(request.getfixturevalue("pg_cluster"))
    try:
        yield _POSTGRESQL
    finally:
        databases, _POSTGRESQL = _POSTGRESQL, None
        databases.close()


@pytest.fixture(autouse=True)
def _server_database(
    server_databases: ServerDatabases | None, monkeypatch: pytest.MonkeyPatch
) -> Iterable[None]:
    """Drop the PostgreSQL databases made during this test after it."""
    if server_databases is None:
        yield
        return
    server_databases.begin_test(monkeypatch)
    try:
        yield
    finally:
        server_databases.end_test()


def _full_master(storage: Storage) -> None:
    load_master(storage)


@pytest.fixture(scope="session")
def core_template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database with the municipality master loaded, copied by ``core_config``."""
    path = tmp_path_factory.mktemp("template") / "renkei.sqlite3"
    storage = Storage(f"sqlite:///{path}")
    storage.migrate()
    _full_master(storage)
    storage.dispose()
    return path


@pytest.fixture
def core_config(tmp_path: Path, request: pytest.FixtureRequest) -> ServerConfig:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if _POSTGRESQL is not None:
        url = _POSTGRESQL.copy("core", _full_master)
        use_database(data_dir, url)
        return load_config(env={}, data_dir=data_dir, database_url=url)
    shutil.copyfile(request.getfixturevalue("core_template_db"), data_dir / "renkei.sqlite3")
    return load_config(env={}, data_dir=data_dir)


@pytest.fixture
def core_storage(core_config: ServerConfig) -> Iterable[Storage]:
    storage = Storage(core_config.database_url)
    yield storage
    storage.dispose()


@pytest.fixture
def core_blobs(core_config: ServerConfig) -> BlobStore:
    return BlobStore(core_config.blob_dir)


@pytest.fixture(scope="session")
def core_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def core_now() -> datetime:
    return CORE_NOW


@pytest.fixture
def core_samples() -> SampleFactory:
    return SampleFactory(seed=7)


def ministry_jsonl(records: Iterable[Record]) -> bytes:
    out = io.StringIO()
    records_to_jsonl(MINISTRY, records, out)
    return out.getvalue().encode("utf-8")


@pytest.fixture
def core_jsonl() -> Callable[[Iterable[Record]], bytes]:
    """Ministry notices as the issuance system's UTF-8 JSON Lines."""
    return ministry_jsonl


@pytest.fixture
def core_juki() -> Callable[[Iterable[Record]], bytes]:
    """Municipality notices as a notice file in Juki code (what a terminal uploads)."""
    return lambda records: encode_notice_file(MUNICIPALITY, records)


@pytest.fixture
def core_enroll(core_storage: Storage) -> Callable[..., tuple[Terminal, Ed25519PrivateKey]]:
    """Enroll a fresh terminal key for a municipality; returns (terminal, private key)."""

    def make(lasdec: str = CHIYODA, *, now: datetime = CORE_NOW - timedelta(days=1)):
        key = Ed25519PrivateKey.generate()
        token = issue_token(core_storage, lasdec, now=now, ttl=3600)
        public = statement.public_key_to_text(key.public_key())
        return enroll(core_storage, token, public, now=now, agent_version="1.0.0"), key

    return make


# ================================================================================================
# HTTP layer fixtures (server/app.py, server/api/, server/auth.py) — named ``api_*``.
# A small municipality master (three receiving units) keeps close-day cheap; the
# Flask test client signs requests exactly as a terminal does, with a clock the
# test moves.
# ================================================================================================

import json  # noqa: E402

from werkzeug.test import EnvironBuilder  # noqa: E402
from werkzeug.wrappers import Request as BaseRequest  # noqa: E402

from common.httpsig import new_nonce, sign_request  # noqa: E402
from server.app import create_app  # noqa: E402
from server.closeday import close_day  # noqa: E402
from server.ingest import import_notices  # noqa: E402
from server.keys import load_or_create_signing_key  # noqa: E402
from server.municipalities import shipped_master  # noqa: E402
from server.storage import business_day  # noqa: E402
from server.tls import make_dev_ca, make_server_cert  # noqa: E402

API_BASE = "https://renkei.test"
API_AUTHORITY = "renkei.test"  # what API_BASE signs as @authority
API_A = "131016"  # 東京都千代田区
API_B = "131024"  # 東京都中央区
API_C = "131032"  # 東京都港区
API_MASTER = ("130001", API_A, API_B, API_C)


class ApiClock:
    """A clock the test moves; aware UTC."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _small_master(storage: Storage) -> None:
    load_master(storage, [m for m in shipped_master() if m.code in API_MASTER])


def api_init_data(data_dir: Path, *, tls: bool = False, **overrides) -> ServerConfig:
    """What ``renkei-server init`` makes, with the small master: database, signing key, TLS.

    The database is a file in ``data_dir``, or on ``--database=postgresql`` a new
    database (its URL in the returned config).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    if tls:
        ca_cert, ca_key = make_dev_ca(data_dir / "tls")
        make_server_cert(data_dir / "tls", ca_cert, ca_key)
    # The Flask test client addresses API_BASE; a signed request must name an authority the
    # server answers to (server.authorities).  None: derive it (TLS certificate, bind).
    overrides.setdefault("authorities", (API_AUTHORITY,))
    copied = _POSTGRESQL is not None and "database_url" not in overrides
    if copied:
        overrides["database_url"] = _POSTGRESQL.copy("api", _small_master)
        use_database(data_dir, overrides["database_url"])
    config = load_config(env={}, data_dir=data_dir, **overrides)
    config.blob_dir.mkdir(exist_ok=True)
    if not copied:
        storage = Storage(config.database_url)
        storage.migrate()
        _small_master(storage)
        storage.dispose()
    load_or_create_signing_key(config.signing_key_path)
    return config


def api_enroll(storage: Storage, lasdec: str, now: datetime) -> tuple[Terminal, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    token = issue_token(storage, lasdec, now=now, ttl=3600)
    terminal = enroll(storage, token, statement.public_key_to_text(key.public_key()), now=now)
    return terminal, key


def api_publish(
    storage: Storage,
    blobs: BlobStore,
    key: Ed25519PrivateKey,
    now: datetime,
    counts: dict[str, int],
    *,
    seed: int = 11,
) -> None:
    """Import ``counts[lasdec]`` ministry notices for the business day of ``now``, then close it."""
    day = business_day(now)
    samples = SampleFactory(seed=seed, day=day)
    records = [r for code, n in counts.items() for r in samples.day_of(MINISTRY, code, n)]
    result = import_notices(
        storage, ministry_jsonl(records), file_name="day.jsonl", business_date=day, now=now
    )
    assert result.ok, result.to_json()
    close_day(storage, blobs, key, day, now=now)


def api_municipality_file(lasdec: str, count: int, *, seed: int = 5) -> bytes:
    return encode_notice_file(
        MUNICIPALITY, SampleFactory(seed=seed).day_of(MUNICIPALITY, lasdec, count)
    )


class ApiTester:
    """The Flask test client, signing like a terminal (``as_terminal``) or not at all."""

    def __init__(self, app, clock: ApiClock):  # type: ignore[no-untyped-def]
        self.app = app
        self.client = app.test_client()
        self.clock = clock
        self.key: Ed25519PrivateKey | None = None
        self.key_id: str | None = None

    @property
    def services(self):  # type: ignore[no-untyped-def]
        return self.app.extensions["renkei"]

    def as_terminal(self, key: Ed25519PrivateKey, key_id: str) -> ApiTester:
        other = ApiTester.__new__(ApiTester)
        other.__dict__.update(self.__dict__, key=key, key_id=key_id)
        return other

    def signed_headers(self, method: str, path: str, body: bytes = b"", **options) -> dict:
        """Headers signing ``method path`` at ``base=`` (default :data:`API_BASE`)."""
        created = options.get("created")
        return sign_request(
            method,
            options.get("base", API_BASE) + path,
            {},
            body,
            key_id=options.get("key_id") or self.key_id,
            private_key=options.get("key") or self.key,
            created=int(self.clock().timestamp()) if created is None else created,
            nonce=options.get("nonce") or new_nonce(),
        )

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        sign: bool | None = None,
        headers: dict | None = None,
        remote_addr: str = "127.0.0.1",
        **options,
    ):  # type: ignore[no-untyped-def]
        """Signed when this tester has a key (or ``key=`` is given), unless ``sign=False``.

        ``base=`` is the origin the request is addressed (and signed) to;
        ``chunked=True`` sends the body as gunicorn hands a chunked one to the
        app: no Content-Length, the stream ended by the server
        (``wsgi.input_terminated``).
        """
        sent = {"Renkei-Agent-Version": "agent/2.1.0", **(headers or {})}
        if sign is None:
            sign = (options.get("key") or self.key) is not None
        if sign:
            sent.update(self.signed_headers(method, path, body, **options))
        builder = EnvironBuilder(
            path=path,
            method=method,
            data=body,
            headers=sent,
            base_url=options.get("base", API_BASE),
            environ_base={"REMOTE_ADDR": remote_addr},
        )
        environ = builder.get_environ()
        if options.get("chunked"):
            del environ["CONTENT_LENGTH"]  # the test client always computes one
            environ["HTTP_TRANSFER_ENCODING"] = "chunked"
            environ["wsgi.input_terminated"] = True
        return self.client.open(BaseRequest(environ))

    def get(self, path: str, **kwargs):  # type: ignore[no-untyped-def]
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: bytes = b"", **kwargs):  # type: ignore[no-untyped-def]
        return self.request("POST", path, body, **kwargs)

    def post_json(self, path: str, document, **kwargs):  # type: ignore[no-untyped-def]
        headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
        body = json.dumps(document).encode("utf-8")
        return self.request("POST", path, body, headers=headers, **kwargs)


@pytest.fixture
def api_clock() -> ApiClock:
    return ApiClock(CORE_NOW)


@pytest.fixture
def api_config(tmp_path: Path) -> ServerConfig:
    return api_init_data(tmp_path / "srv")


@pytest.fixture
def api_app(api_config: ServerConfig, api_clock: ApiClock):  # type: ignore[no-untyped-def]
    app = create_app(api_config, clock=api_clock)
    app.testing = True
    yield app
    app.extensions["renkei"].storage.dispose()


@pytest.fixture
def api(api_app, api_clock: ApiClock) -> ApiTester:  # type: ignore[no-untyped-def]
    """An unsigned tester; ``api.as_terminal(key, terminal_id)`` for a signing one."""
    return ApiTester(api_app, api_clock)


@pytest.fixture
def api_terminal(api: ApiTester) -> Callable[[str], tuple[Terminal, ApiTester]]:
    """Enroll a terminal for a municipality; returns it with a tester signing as it."""

    def make(lasdec: str = API_A) -> tuple[Terminal, ApiTester]:
        terminal, key = api_enroll(api.services.storage, lasdec, api.clock() - timedelta(hours=1))
        return terminal, api.as_terminal(key, terminal.terminal_id)

    return make
