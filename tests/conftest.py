"""Options and fixtures every suite shares: which database the server's tests run on.

``pytest --database=sqlite`` (the default) gives each test's server a SQLite
file in its data folder, as a single-host deployment has.
``pytest --database=postgresql`` gives it a PostgreSQL database of a
throw-away cluster (:mod:`tests.pgcluster`), one cluster per xdist worker,
started at the first test that needs it and removed at the end of the run.
``make test`` runs the server and end-to-end suites both ways.

A test about SQLite itself (its pragmas, its file) carries
``@pytest.mark.sqlite_only`` and is skipped, with that reason, on PostgreSQL.
Test modules that cannot carry the marker yet are listed in
:data:`SQLITE_ONLY` with the reason.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pgcluster import PgCluster, PgClusterError

DATABASES = ("sqlite", "postgresql")

#: node id (or its prefix) -> why the test holds on SQLite only.
SQLITE_ONLY: dict[str, str] = {
    "tests/server/test_storage.py::test_sqlite_runs_in_wal_with_foreign_keys": (
        "checks SQLite's pragmas (WAL, foreign keys, synchronous=FULL)"
    ),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--database",
        choices=DATABASES,
        default="sqlite",
        help="the server database of the server and e2e tests: sqlite (default) or postgresql "
        "(a throw-away cluster from Debian's postgresql packages)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only: about SQLite itself; skipped with --database=postgresql"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--database") == "sqlite":
        return
    for item in items:
        reason = next(
            (why for prefix, why in SQLITE_ONLY.items() if item.nodeid.startswith(prefix)), None
        )
        if reason is None and item.get_closest_marker("sqlite_only") is not None:
            marker = item.get_closest_marker("sqlite_only")
            reason = (marker.args[0] if marker.args else None) or "about SQLite itself"
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"SQLite only: {reason}"))


@pytest.fixture(scope="session")
def database_kind(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgresql``: the ``--database`` option."""
    return request.config.getoption("--database")


@pytest.fixture(scope="session")
def pg_cluster(database_kind: str) -> Iterator[PgCluster]:
    """This worker's PostgreSQL cluster (``--database=postgresql`` only); stopped at the end.

    Missing server binaries fail the test (they are a declared test dependency), they do not
    skip it.
    """
    if database_kind != "postgresql":
        pytest.fail("pg_cluster is for --database=postgresql runs", pytrace=False)
    try:
        cluster = PgCluster().start()
    except PgClusterError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
