"""A throw-away PostgreSQL cluster for a test run: ``initdb`` in a temporary folder, then gone.

Debian's server binaries (``/usr/lib/postgresql/<version>/bin``, the highest
version installed; ``RENKEI_TEST_PG_BINDIR`` overrides) make a new cluster
in a folder under the system's temporary directory.  It listens on a unix
socket in that folder and on no TCP port, so clusters of parallel test
workers (pytest-xdist) and other programs on the machine cannot meet.
``fsync`` stays on: the tests run against the durability a deployment has
(only ``initdb``'s own final sync is skipped).

PostgreSQL refuses to run as root, so when the tests run as root every
server command runs as the ``postgres`` system user (``runuser``) and the
folder belongs to it.  Authentication is ``trust`` on the socket, which only
this machine can reach; the superuser is ``postgres``.

A missing binary is an error, not a skip: ``make test`` installs the
packages, so a run without them would silently test less than it says.

Each cluster writes the pid of the process that made it into ``owner.pid``;
:meth:`PgCluster.start` first stops and removes clusters whose owner is gone
(a test run killed before its clean-up), never one whose owner is alive.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

__all__ = ["PgCluster", "PgClusterError", "find_bindir"]

BINDIR_ENV = "RENKEI_TEST_PG_BINDIR"
DEBIAN_ROOT = Path("/usr/lib/postgresql")
SUPERUSER = "postgres"
PREFIX = "renkei-pg-"
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

#: Written to postgresql.conf after initdb.  fsync and synchronous_commit keep their defaults (on).
SETTINGS = {
    "listen_addresses": "''",
    "max_connections": "300",
    "shared_buffers": "32MB",
    "dynamic_shared_memory_type": "mmap",
    "timezone": "'Asia/Tokyo'",  # as a ministry server in Japan would; catches UTC assumptions
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %d '",
    "deadlock_timeout": "200ms",
}


class PgClusterError(RuntimeError):
    """The cluster could not be made, started or used; the message says what to do."""


def find_bindir() -> Path:
    """The folder of ``initdb``, ``pg_ctl`` and ``postgres``; raises PgClusterError when absent."""
    configured = os.environ.get(BINDIR_ENV)
    candidates = [Path(configured)] if configured else []
    versions = sorted(
        (p for p in DEBIAN_ROOT.glob("*/bin") if p.parent.name.isdigit()),
        key=lambda p: int(p.parent.name),
        reverse=True,
    )
    candidates += versions
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    looked = ", ".join(str(c) for c in candidates) or f"{DEBIAN_ROOT}/*/bin (none exists)"
    raise PgClusterError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; looked in "
        f"{looked}. Install Debian's postgresql package (`make test` does: APT_TEST_PACKAGES) "
        f"or set {BINDIR_ENV}"
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PgCluster:
    """One cluster: :meth:`start`, :meth:`create_database` / :meth:`drop_database`, :meth:`stop`.

    ``url(name)`` is the SQLAlchemy URL of a database (psycopg 3 over the
    unix socket).  Usable as a context manager.
    """

    def __init__(self, bindir: Path | None = None, *, parent: Path | None = None):
        self.bindir = bindir or find_bindir()
        self.parent = Path(parent or tempfile.gettempdir())
        self.root: Path | None = None
        self._as_postgres = os.geteuid() == 0
        self._numbers = itertools.count(1)  # next() is atomic: names may be made from threads

    # -- paths ----------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "the cluster is not started"
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.root is not None, "the cluster is not started"
        return self.root

    @property
    def log_path(self) -> Path:
        assert self.root is not None, "the cluster is not started"
        return self.root / "postgres.log"

    def url(self, database: str) -> str:
        """``postgresql+psycopg://postgres@/<database>?host=<socket folder>``."""
        return f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self.socket_dir}"

    # -- running server programs ------------------------------------------------------------------

    def _run(self, tool: str, *args: str, timeout: float = 120.0) -> str:
        argv = [str(self.bindir / tool), *args]
        if self._as_postgres:
            argv = ["runuser", "-u", SUPERUSER, "--", *argv]
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=self.parent,
            )
        except FileNotFoundError as exc:
            raise PgClusterError(f"cannot run {argv[0]}: {exc.strerror}") from None
        if done.returncode != 0:
            raise PgClusterError(
                f"{tool} {' '.join(args)} exited {done.returncode}:\n"
                f"{done.stdout[-2000:]}{done.stderr[-2000:]}{self.log_tail()}"
            )
        return done.stdout

    def log_tail(self, size: int = 3000) -> str:
        if self.root is None:
            return ""
        try:
            return "\n--- postgres.log ---\n" + self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> PgCluster:
        """initdb in a new folder, write the settings, start, wait until it accepts connections."""
        sweep_stale(self.parent, self.bindir)
        self.root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=self.parent))
        try:
            (self.root / "owner.pid").write_text(f"{os.getpid()}\n")
            self.root.chmod(0o755)  # the socket must be reachable by whoever connects
            if self._as_postgres:
                shutil.chown(self.root, SUPERUSER, SUPERUSER)
            self._run(
                "initdb",
                "--pgdata",
                str(self.data_dir),
                "--username",
                SUPERUSER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C.UTF-8",
                # Not syncing initdb's own files saves seconds per worker on a busy disk and
                # risks nothing for a cluster thrown away after the run; the server itself
                # keeps fsync on (every commit waits for its WAL to reach the disk).
                "--no-sync",
            )
            with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
                conf.write("\n# renkei tests (tests/pgcluster.py)\n")
                conf.write(f"unix_socket_directories = '{self.socket_dir}'\n")
                for name, value in SETTINGS.items():
                    conf.write(f"{name} = {value}\n")
            self._run(
                "pg_ctl",
                "--pgdata",
                str(self.data_dir),
                "--log",
                str(self.log_path),
                "--wait",
                "--timeout",
                "60",
                "start",
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """``pg_ctl stop -m fast``, then remove the folder (also after a failed start)."""
        root, self.root = self.root, None
        if root is None:
            return
        _stop_and_remove(root, self.bindir, self._as_postgres, mode="fast")

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- databases --------------------------------------------------------------------------------

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        """An autocommit psycopg connection as the superuser (CREATE/DROP DATABASE need one)."""
        return psycopg.connect(
            host=str(self.socket_dir), dbname=database, user=SUPERUSER, autocommit=True
        )

    def new_name(self, prefix: str = "t") -> str:
        """A database name not used before by this cluster object."""
        return f"{prefix}_{os.getpid()}_{next(self._numbers)}"

    def create_database(self, name: str, template: str | None = None) -> str:
        """``CREATE DATABASE name [TEMPLATE template]``; returns its URL.

        A template must have no open connection while it is copied.
        """
        for value in (name, template):
            if value is not None and not _NAME.fullmatch(value):
                raise ValueError(f"not a plain database name: {value!r}")
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            statement += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with self.connect() as conn:
            conn.execute(statement)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop the database, closing any connection still open to it (``WITH (FORCE)``)."""
        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def databases(self) -> list[str]:
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE NOT datistemplate"
            ).fetchall()
        return sorted(row[0] for row in rows if row[0] != "postgres")


def _stop_and_remove(root: Path, bindir: Path, as_postgres: bool, *, mode: str) -> None:
    data = root / "data"
    if (data / "postmaster.pid").exists():
        argv = [str(bindir / "pg_ctl"), "--pgdata", str(data), "--mode", mode, "--wait", "stop"]
        if as_postgres:
            argv = ["runuser", "-u", SUPERUSER, "--", *argv]
        subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=False
        )
    shutil.rmtree(root, ignore_errors=True)


def sweep_stale(parent: Path, bindir: Path) -> list[Path]:
    """Stop and remove clusters in ``parent`` whose owner process is gone; return their folders."""
    removed = []
    for root in sorted(parent.glob(PREFIX + "*")):
        try:
            owner = int((root / "owner.pid").read_text().strip())
        except (OSError, ValueError):
            continue  # not ours, or still being made
        if _pid_alive(owner):
            continue
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _stop_and_remove(root, bindir, os.geteuid() == 0, mode="immediate")
            removed.append(root)
    return removed
