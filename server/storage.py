"""The server's database: schema, migrations and transactions (SQLAlchemy Core 2.x).

One module holds every table so the whole data model reads in one place.  The
SQL is portable — SQLite (the embedded default) and PostgreSQL (several app
servers sharing one database) run the same statements; only the connection
set-up below differs.  Everything that must happen once is a database
constraint, not a check in Python: a record id is loaded once
(``UNIQUE(record_id)``), a municipality gets one batch per business day and
one per sequence number, an upload is stored once per (municipality, file
hash), a nonce is seen once per terminal, and a token is used once
(``UPDATE … WHERE used_at IS NULL``).

Where a transaction reads, decides and then writes (close-day numbering
batches, an upload comparing its records with earlier ones, an import, the
migrations), concurrent runs take turns: :func:`serialize`.  On SQLite every
write transaction already holds the database's single write lock (``BEGIN
IMMEDIATE``); on PostgreSQL, whose writers run side by side, it is a
transaction-scoped advisory lock, released at commit or rollback (so it also
works behind a transaction-pooling proxy).  The constraints stay as the last
line of defence either way.  Reads (:meth:`Storage.read`) are one snapshot on
both: a deferred transaction on SQLite, ``REPEATABLE READ READ ONLY`` on
PostgreSQL.

Times are stored as UTC; the column type turns them back into aware UTC
datetimes on both databases.  Business dates (Japan's calendar day) are plain
dates.

Migrations are functions recorded in ``schema_migrations``, each applied in
its own transaction; ``migrate()`` is safe to run again, also on two hosts at
once (each step takes the ``schema`` lock, then checks it is still to do).
The table definitions below are the *current* schema; a change to them comes
with a new migration function that brings an existing database to it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from .errors import ConfigError

__all__ = [
    "TOKYO",
    "Storage",
    "business_day",
    "engine_url",
    "iso_utc",
    "lock_key",
    "metadata",
    "serialize",
]

TOKYO = ZoneInfo("Asia/Tokyo")


def business_day(instant: datetime) -> date:
    """The business date (Japan's calendar day) of an aware instant."""
    return instant.astimezone(TOKYO).date()


def iso_utc(instant: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, to the second: the form every statement and export uses."""
    return instant.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class UTCDateTime(sa.types.TypeDecorator):
    """Aware UTC datetimes in and out; naive UTC on SQLite, ``timestamptz`` on PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use aware UTC datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

LASDEC = sa.String(6)
HASH = sa.String(64)
ID = sa.String(64)

schema_migrations = sa.Table(
    "schema_migrations",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
)

municipalities = sa.Table(
    "municipalities",
    metadata,
    sa.Column("lasdec", LASDEC, primary_key=True),
    sa.Column("prefecture", sa.String(10), nullable=False),
    sa.Column("name", sa.String(60), nullable=False),
    sa.Column("kana", sa.String(120), nullable=False),
    sa.Column("kind", sa.String(10), nullable=False),
    sa.Column("parent", LASDEC, nullable=True),
    # True for the units that receive batches and upload notices: every
    # municipality without designated-city wards, and each such ward.
    sa.Column("receiving", sa.Boolean, nullable=False),
    sa.Column("in_master", sa.Boolean, nullable=False),
)

imports = sa.Table(
    "imports",
    metadata,
    sa.Column("import_id", ID, primary_key=True),
    sa.Column("file_name", sa.String(500), nullable=False),
    sa.Column("sha256", HASH, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("business_date", sa.Date, nullable=False),
    sa.Column("imported_at", UTCDateTime, nullable=False),
    sa.Column("records", sa.Integer, nullable=False),
    sa.Column("loaded", sa.Integer, nullable=False),
    sa.Column("duplicates", sa.Integer, nullable=False),
    sa.Column("rejected", sa.Integer, nullable=False),
    sa.Column("report", sa.Text, nullable=False),  # JSON: the ImportResult
)

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("batch_id", ID, primary_key=True),
    sa.Column("lasdec", LASDEC, sa.ForeignKey("municipalities.lasdec"), nullable=False),
    sa.Column("sequence", sa.Integer, nullable=False),
    sa.Column("business_date", sa.Date, nullable=False),
    sa.Column("records", sa.Integer, nullable=False),
    sa.Column("sha256", HASH, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("manifest", sa.Text, nullable=False),  # JSON: the signed statement
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("first_downloaded_at", UTCDateTime, nullable=True),
    sa.Column("acknowledged_at", UTCDateTime, nullable=True),
    sa.Column("acknowledged_by", ID, nullable=True),
    # Set when the batch file was removed from the blob store after the
    # retention period (server.retention); the row and its manifest stay.
    sa.Column("purged_at", UTCDateTime, nullable=True),
    sa.UniqueConstraint("lasdec", "sequence", name="uq_batches_lasdec_sequence"),
    sa.UniqueConstraint("lasdec", "business_date", name="uq_batches_lasdec_business_date"),
)
# Blobs are shared (every empty batch is the same file): retention counts references by hash.
sa.Index("ix_batches_sha256", batches.c.sha256)
sa.Index("ix_batches_created_at", batches.c.created_at)

notices = sa.Table(
    "notices",
    metadata,
    sa.Column("notice_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("record_id", ID, nullable=False),
    sa.Column("lasdec", LASDEC, sa.ForeignKey("municipalities.lasdec"), nullable=False),
    sa.Column("pattern", sa.String(4), nullable=False),
    sa.Column("business_date", sa.Date, nullable=False),
    sa.Column("record", sa.Text, nullable=False),  # JSON: the decoded Unicode record delivered
    sa.Column("content_hash", HASH, nullable=False),
    sa.Column("substitutions", sa.Text, nullable=True),  # JSON list, when degenerated
    sa.Column("import_id", ID, sa.ForeignKey("imports.import_id"), nullable=False),
    sa.Column("imported_at", UTCDateTime, nullable=False),
    sa.Column("batch_id", ID, sa.ForeignKey("batches.batch_id"), nullable=True),
    sa.UniqueConstraint("record_id", name="uq_notices_record_id"),
)
sa.Index("ix_notices_pending", notices.c.batch_id, notices.c.lasdec, notices.c.business_date)

enrollment_tokens = sa.Table(
    "enrollment_tokens",
    metadata,
    sa.Column("token_id", ID, primary_key=True),
    sa.Column("token_hash", HASH, nullable=False, unique=True),
    sa.Column("lasdec", LASDEC, sa.ForeignKey("municipalities.lasdec"), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("used_at", UTCDateTime, nullable=True),
    sa.Column("terminal_id", ID, nullable=True),
)

terminals = sa.Table(
    "terminals",
    metadata,
    sa.Column("terminal_id", ID, primary_key=True),
    sa.Column("lasdec", LASDEC, sa.ForeignKey("municipalities.lasdec"), nullable=False),
    sa.Column("public_key", sa.String(64), nullable=False, unique=True),
    sa.Column("key_id", sa.String(40), nullable=False, unique=True),
    sa.Column("enrolled_at", UTCDateTime, nullable=False),
    sa.Column("revoked_at", UTCDateTime, nullable=True),
    sa.Column("last_seen_at", UTCDateTime, nullable=True),
    sa.Column("agent_version", sa.String(64), nullable=True),
    sa.Column("clock_skew", sa.Float, nullable=True),
)
sa.Index("ix_terminals_lasdec", terminals.c.lasdec)

nonces = sa.Table(
    "nonces",
    metadata,
    sa.Column("terminal_id", ID, primary_key=True),
    sa.Column("nonce", sa.String(128), primary_key=True),
    sa.Column("seen_at", UTCDateTime, nullable=False),
)
sa.Index("ix_nonces_seen_at", nonces.c.seen_at)

auth_failures = sa.Table(
    "auth_failures",
    metadata,
    sa.Column("failure_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key_id", sa.String(128), nullable=False),
    sa.Column("failed_at", UTCDateTime, nullable=False),
    # The client address the failure came from (migration 4): a lockout holds
    # only for that address, so bad signatures sent from elsewhere under a
    # terminal's key id cannot lock the real terminal out.
    sa.Column("source", sa.String(64), nullable=True),
)
sa.Index("ix_auth_failures_key", auth_failures.c.key_id, auth_failures.c.failed_at)

uploads = sa.Table(
    "uploads",
    metadata,
    sa.Column("upload_id", ID, primary_key=True),
    sa.Column("lasdec", LASDEC, sa.ForeignKey("municipalities.lasdec"), nullable=False),
    sa.Column("terminal_id", ID, nullable=False),
    sa.Column("file_name", sa.String(500), nullable=False),
    sa.Column("sha256", HASH, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("records", sa.Integer, nullable=False),
    sa.Column("accepted", sa.Integer, nullable=False),
    sa.Column("duplicates", sa.Integer, nullable=False),
    sa.Column("rejected", sa.Integer, nullable=False),
    sa.Column("file_error", sa.String(64), nullable=True),  # the file error's code
    sa.Column("receipt", sa.Text, nullable=False),  # JSON: the signed statement
    # Set when the uploaded original was removed after the retention period; the receipt stays.
    sa.Column("purged_at", UTCDateTime, nullable=True),
    sa.UniqueConstraint("lasdec", "sha256", name="uq_uploads_lasdec_sha256"),
)
sa.Index("ix_uploads_received_at", uploads.c.received_at)
sa.Index("ix_uploads_sha256", uploads.c.sha256)

received_notices = sa.Table(
    "received_notices",
    metadata,
    sa.Column("received_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("lasdec", LASDEC, sa.ForeignKey("municipalities.lasdec"), nullable=False),
    sa.Column("record_id", ID, nullable=False),
    sa.Column("pattern", sa.String(4), nullable=False),
    sa.Column("upload_id", ID, sa.ForeignKey("uploads.upload_id"), nullable=False),
    sa.Column("record", sa.Text, nullable=False),  # JSON: the decoded Unicode record
    sa.Column("content_hash", HASH, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("lasdec", "record_id", name="uq_received_lasdec_record_id"),
)
sa.Index("ix_received_notices_received_at", received_notices.c.received_at)


# --- operations: the ministry operators' dashboard and the morning report (migration 3) ----------

operators = sa.Table(
    "operators",
    metadata,
    sa.Column("operator_id", ID, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    # "scrypt$<n>$<r>$<p>$<salt>$<hash>" (server.operators): the parameters travel with the hash.
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("password_changed_at", UTCDateTime, nullable=False),
    sa.Column("disabled_at", UTCDateTime, nullable=True),
    sa.Column("last_login_at", UTCDateTime, nullable=True),
)

login_failures = sa.Table(
    "login_failures",
    metadata,
    sa.Column("failure_id", sa.Integer, primary_key=True, autoincrement=True),
    # SHA-256 of the account name as typed (normalised): never the text itself.
    sa.Column("name_key", HASH, nullable=False),
    sa.Column("failed_at", UTCDateTime, nullable=False),
)
sa.Index("ix_login_failures_key", login_failures.c.name_key, login_failures.c.failed_at)

operator_sessions = sa.Table(
    "operator_sessions",
    metadata,
    # SHA-256 of the cookie's random value: a copy of the database opens no session.
    sa.Column("session_hash", HASH, primary_key=True),
    sa.Column("operator_id", ID, sa.ForeignKey("operators.operator_id"), nullable=False),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("last_seen_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)
sa.Index("ix_operator_sessions_operator", operator_sessions.c.operator_id)

mail_outbox = sa.Table(
    "mail_outbox",
    metadata,
    # "<business date>/summary" or "<business date>/<lasdec>": one mail of each per day.
    sa.Column("mail_key", sa.String(40), primary_key=True),
    sa.Column("business_date", sa.Date, nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),  # summary | municipality
    sa.Column("lasdec", LASDEC, nullable=True),
    sa.Column("message_id", sa.String(200), nullable=False),
    sa.Column("spool_name", sa.String(100), nullable=False),  # the file in mail.spool_dir
    sa.Column("recipients", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_attempt_at", UTCDateTime, nullable=True),
    sa.Column("last_error", sa.String(40), nullable=True),  # a stable code, never a message
    sa.Column("sent_at", UTCDateTime, nullable=True),
)
sa.Index("ix_mail_outbox_unsent", mail_outbox.c.sent_at, mail_outbox.c.created_at)


# --- migrations ---------------------------------------------------------------------------------


def _m001_initial(conn: Connection) -> None:
    """The first schema: every table above."""
    metadata.create_all(
        conn, tables=[t for t in metadata.sorted_tables if t is not schema_migrations]
    )


def _m002_retention(conn: Connection) -> None:
    """``purged_at`` on batches and uploads, and indexes to count a blob's references.

    Migration 1 creates the *current* tables, so on a database made by it
    these already exist: each step checks first and adds only what is missing.
    ``ALTER TABLE … ADD COLUMN`` of a nullable column is the form SQLite and
    PostgreSQL both accept.
    """
    inspector = sa.inspect(conn)
    for table in (batches, uploads):
        present = {column["name"] for column in inspector.get_columns(table.name)}
        if "purged_at" not in present:
            kind = table.c.purged_at.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN purged_at {kind}")
    for table, names in (
        (batches, ("ix_batches_sha256", "ix_batches_created_at")),
        (uploads, ("ix_uploads_sha256",)),
    ):
        for index in table.indexes:
            if index.name in names:
                index.create(conn, checkfirst=True)


def _m003_operations(conn: Connection) -> None:
    """Operators, their failed logins and sessions, and the morning report's mail outbox.

    New tables only; migration 1 makes them too on a new database (it creates
    the current schema), so each is created only when missing.
    """
    for table in (operators, login_failures, operator_sessions, mail_outbox):
        table.create(conn, checkfirst=True)
        for index in table.indexes:
            index.create(conn, checkfirst=True)


def _m004_auth_failure_source(conn: Connection) -> None:
    """``source`` on ``auth_failures``: failed-auth lockout per key id *and* client address."""
    present = {column["name"] for column in sa.inspect(conn).get_columns(auth_failures.name)}
    if "source" not in present:
        kind = auth_failures.c.source.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {auth_failures.name} ADD COLUMN source {kind}")


#: (version, name, function); append only, never edit an applied one.
MIGRATIONS: tuple[tuple[int, str, Callable[[Connection], None]], ...] = (
    (1, "initial", _m001_initial),
    (2, "retention", _m002_retention),
    (3, "operations", _m003_operations),
    (4, "auth_failure_source", _m004_auth_failure_source),
)


# --- the storage object -------------------------------------------------------------------------

#: The database URLs the server accepts (``database_url``); libpq's own schemes mean psycopg 3.
BACKENDS = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
}


def engine_url(url: str) -> sa.URL:
    """The SQLAlchemy URL for a ``database_url``: ``postgresql://`` and ``postgres://`` use psycopg 3.

    Raises ConfigError for a URL that is not SQLite or PostgreSQL (the only
    databases the server is tested on).
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigError(f"database_url is not a database URL: {url[:40]!r}") from None
    driver = BACKENDS.get(parsed.drivername)
    if driver is None:
        raise ConfigError(
            f"database URL {parsed.render_as_string(hide_password=True)!r}: the server runs on "
            "SQLite (sqlite:///PATH) or PostgreSQL (postgresql://USER@HOST/DATABASE)"
        )
    return parsed.set(drivername=driver)


def lock_key(*scope: str) -> int:
    """The signed 64-bit PostgreSQL advisory lock key of a :func:`serialize` scope.

    The same on every host and version (SHA-256 of the scope), so an operator
    can find who holds or waits for a lock in ``pg_locks`` (``classid`` and
    ``objid`` are its high and low 32 bits).
    """
    digest = hashlib.sha256(b"renkei\x1f" + "\x1f".join(scope).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def serialize(conn: Connection, *scope: str) -> None:
    """Make transactions with the same ``scope`` take turns, from here until this one ends.

    Call it first in a write transaction that reads, decides and then writes.
    SQLite: nothing to do, the write transaction holds the database's write
    lock.  PostgreSQL: ``pg_advisory_xact_lock`` on a key derived from the
    scope (e.g. ``("close-day",)``, ``("upload", lasdec)``), held to commit or
    rollback.  Statements after it see what the previous holder committed
    (READ COMMITTED takes a new snapshot per statement).
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_key(*scope))))


def _sqlite_setup(engine: Engine) -> None:
    """SQLite pragmas, and transactions SQLAlchemy controls (BEGIN IMMEDIATE for writes).

    Python's sqlite3 module starts transactions lazily, which lets two writers
    both read and then fail to upgrade; taking the write lock at BEGIN makes
    concurrent writers queue on ``busy_timeout`` instead.  Read-only work uses
    :meth:`Storage.read`, a deferred transaction that never blocks writers in
    WAL mode.
    """

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # autocommit: we send BEGIN ourselves
        cursor = dbapi_connection.cursor()
        # The wait first: switching a new database to WAL needs its lock, which another
        # process setting the same database up (two inits at once) may hold for seconds.
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _postgresql_engine(url: sa.URL) -> Engine:
    """psycopg 3 with a connection check on checkout.

    ``pool_pre_ping``: after a failover to the standby (or a restart) every
    pooled connection is dead; the check costs one round trip per
    transaction and spares the next request on each of them a 500.  Writes
    run in READ COMMITTED (PostgreSQL's default) and rely on constraints,
    conditional updates and :func:`serialize`, never on a snapshot.
    """
    named = "application_name" in url.query  # else pg_stat_activity shows who is connected
    try:
        return sa.create_engine(
            url,
            pool_pre_ping=True,
            connect_args={} if named else {"application_name": "renkei-server"},
        )
    except ImportError:
        raise ConfigError(
            "database_url names PostgreSQL but psycopg 3 is not installed: install the "
            "server with its postgresql extra (pip install 'renkei[postgresql]')"
        ) from None


class Storage:
    """The database behind one URL.  Create one per process; :meth:`dispose` after a fork."""

    def __init__(self, url: str):
        self.url = url
        target = engine_url(url)
        if target.get_backend_name() == "postgresql":
            self.engine: Engine = _postgresql_engine(target)
            self._reader = self.engine.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
        else:
            # timeout: the wait for the lock before the pragmas above can set busy_timeout.
            self.engine = sa.create_engine(target, connect_args={"timeout": 30})
            _sqlite_setup(self.engine)
            self._reader = self.engine.execution_options(sqlite_begin="DEFERRED")

    @property
    def safe_url(self) -> str:
        """The URL to show in messages and logs: any password replaced by ``***``."""
        return self.engine.url.render_as_string(hide_password=True)

    def migrate(self) -> list[str]:
        """Apply the migrations not yet applied; return their names (empty when up to date).

        Safe while another host migrates the same database: each step takes
        the ``schema`` lock, then checks whether it is still to do.
        """
        with self.begin() as conn:
            serialize(conn, "schema")
            schema_migrations.create(conn, checkfirst=True)
        applied: list[str] = []
        for version, name, function in MIGRATIONS:
            with self.begin() as conn:
                serialize(conn, "schema")
                done = conn.execute(
                    sa.select(schema_migrations.c.version).where(
                        schema_migrations.c.version == version
                    )
                ).first()
                if done is not None:
                    continue
                function(conn)
                conn.execute(
                    schema_migrations.insert().values(
                        version=version, name=name, applied_at=datetime.now(UTC)
                    )
                )
                applied.append(f"{version:03d}_{name}")
        return applied

    def schema_version(self) -> int:
        """The highest applied migration, 0 for an empty database."""
        with self.read() as conn:
            if not sa.inspect(conn).has_table("schema_migrations"):
                return 0
            return conn.execute(sa.select(sa.func.max(schema_migrations.c.version))).scalar() or 0

    def begin(self, *, durable: bool = True) -> contextlib.AbstractContextManager[Connection]:
        """One read-write transaction: committed on a clean exit, rolled back on an exception.

        ``durable=False``: the commit does not wait for the disk (SQLite in WAL mode:
        ``synchronous=NORMAL`` for this transaction only; PostgreSQL: ``SET LOCAL
        synchronous_commit TO OFF``).  Atomicity, isolation and every constraint hold as
        before, and both databases write their log in order, so the next durable commit
        makes it durable too; a power cut or OS crash (not a process crash) can lose the
        last such transactions.  Only for records whose loss is harmless: the caller says
        why (``server.enrollment.record_request``).
        """
        if durable:
            return self.engine.begin()

        @contextlib.contextmanager
        def relaxed() -> Iterator[Connection]:
            with self.engine.connect() as conn:
                if conn.dialect.name != "sqlite":
                    with conn.begin():
                        conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                        yield conn
                    return
                # SQLite refuses to change the level inside a transaction: set it before
                # BEGIN, put it back after COMMIT or ROLLBACK, on this connection only.
                raw = conn.connection.driver_connection
                (level,) = raw.execute("PRAGMA synchronous").fetchone()
                raw.execute("PRAGMA synchronous=NORMAL")
                try:
                    with conn.begin():
                        yield conn
                finally:
                    try:
                        raw.execute(f"PRAGMA synchronous={int(level)}")
                    except BaseException:
                        conn.invalidate()  # never pool a connection left at NORMAL
                        raise

        return relaxed()

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """One read-only transaction: a consistent snapshot that takes no write lock."""
        with self._reader.begin() as conn:
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()
