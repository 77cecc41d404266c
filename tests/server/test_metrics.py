"""``/metrics``: the bearer token, the counters, the database figures — in-process, and under a
real two-worker gunicorn in prometheus-client's multiprocess mode, where the counts of both
workers must add up whichever worker answers the scrape.
"""

from __future__ import annotations

import hashlib
import threading
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.app import create_app
from tests.server.client import ServerProcess
from tests.server.conftest import api_init_data
from tests.server.test_dashboard import make_day

TOKEN = "prometheus-scrape-token-0123456789"
TOKEN_SHA256 = hashlib.sha256(TOKEN.encode()).hexdigest()
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) -> value, from Prometheus text format."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


@pytest.fixture
def metered(tmp_path, api_clock):  # type: ignore[no-untyped-def]
    config = api_init_data(tmp_path / "srv", metrics={"token_sha256": TOKEN_SHA256})
    app = create_app(config, clock=api_clock)
    yield app
    app.extensions["renkei"].storage.dispose()


def test_metrics_need_the_token(metered, api_app):  # type: ignore[no-untyped-def]
    client = metered.test_client()
    assert client.get("/metrics").status_code == 401
    wrong = client.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.get("/metrics", headers=AUTH).status_code == 200
    # Without a configured token the endpoint does not exist.
    assert api_app.test_client().get("/metrics", headers=AUTH).status_code == 404


def test_counters_and_database_figures(metered, api_clock):  # type: ignore[no-untyped-def]
    services = metered.extensions["renkei"]
    make_day(services, api_clock())
    client = metered.test_client()
    for _ in range(3):
        assert client.get("/api/v1/time").status_code == 200
    assert client.get("/api/v1/batches").status_code == 401  # unsigned: sig.missing
    assert client.get("/no/such/path").status_code == 404
    found = samples(client.get("/metrics", headers=AUTH).text)

    def value(name: str, **labels: str) -> float:
        return found[(name, tuple(sorted(labels.items())))]

    assert (
        value("renkei_http_requests_total", route="/api/v1/time", method="GET", status="200") == 3
    )
    assert value("renkei_http_requests_total", route="<unmatched>", method="GET", status="404") == 1
    assert value("renkei_http_request_duration_seconds_count", route="/api/v1/time") == 3
    assert value("renkei_auth_failures_total", code="sig.missing") == 1
    # The database: A rejected, B not fetched, C never contacted (test_dashboard's day).
    assert value("renkei_municipalities", state="rejected") == 1
    assert value("renkei_municipalities", state="not_fetched") == 1
    assert value("renkei_municipalities", state="never") == 1
    assert value("renkei_municipalities", state="fetched") == 0
    assert value("renkei_terminals", state="active") == 2
    assert value("renkei_terminals", state="revoked") == 0
    assert value("renkei_batches", state="acknowledged") == 1
    assert value("renkei_batches", state="pending") == 2
    assert value("renkei_uploads_total") == 1
    assert value("renkei_upload_records_total", outcome="accepted") == 2
    assert value("renkei_upload_records_total", outcome="rejected") == 1
    assert value("renkei_import_records_total", outcome="loaded") == 5
    assert value("renkei_mail_unsent") == 0
    assert value("renkei_latest_closed_day_timestamp_seconds") == 1795705200  # 2026-11-27 00:00 JST


def test_database_figures_are_cached_briefly(metered, api_clock):  # type: ignore[no-untyped-def]
    services = metered.extensions["renkei"]
    client = metered.test_client()
    before = samples(client.get("/metrics", headers=AUTH).text)
    assert before[("renkei_terminals", (("state", "active"),))] == 0
    make_day(services, api_clock())
    cached = samples(client.get("/metrics", headers=AUTH).text)
    assert cached[("renkei_terminals", (("state", "active"),))] == 0
    metered.extensions["renkei.metrics"].database.cache_seconds = 0
    fresh = samples(client.get("/metrics", headers=AUTH).text)
    assert fresh[("renkei_terminals", (("state", "active"),))] == 2


def test_operator_logins_are_counted(metered, api_clock):  # type: ignore[no-untyped-def]
    from server.operators import add_operator
    from tests.server.test_dashboard import TEST_KDF, Browser

    add_operator(
        metered.extensions["renkei"].storage,
        "tanaka",
        "a long enough pass",
        now=api_clock(),
        kdf=TEST_KDF,
    )
    browser = Browser(metered)
    assert browser.login("tanaka", "wrong password!!").status_code == 401
    assert browser.login("tanaka", "a long enough pass").status_code == 303
    found = samples(metered.test_client().get("/metrics", headers=AUTH).text)
    assert found[("renkei_operator_logins_total", (("outcome", "invalid"),))] == 1
    assert found[("renkei_operator_logins_total", (("outcome", "success"),))] == 1


@pytest.mark.slow
def test_two_gunicorn_workers_add_up(tmp_path):  # type: ignore[no-untyped-def]
    config = api_init_data(tmp_path / "srv", tls=True)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    server = ServerProcess(
        config.data_dir,
        log_path=tmp_path / "gunicorn.log",
        workers=2,
        threads=2,
        env={
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "RENKEI_SERVER_METRICS_TOKEN_SHA256": TOKEN_SHA256,
            "RENKEI_SERVER_METRICS_CACHE_SECONDS": "1",
        },
    )
    server.start()
    try:
        per_thread, threads = 15, 4
        errors: list[BaseException] = []

        def hammer() -> None:
            try:
                for _ in range(per_thread):
                    with server.client(timeout=10) as client:  # a new connection each time
                        assert client.get("/api/v1/time", sign=False).status == 200
                with server.client(timeout=10) as client:
                    assert client.get("/api/v1/batches", sign=False).status == 401
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        workers = [threading.Thread(target=hammer) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert errors == []
        for _ in range(4):  # whichever worker answers, the totals are the same
            with server.client(timeout=10) as client:
                reply = client.get("/metrics", sign=False, headers=AUTH)
            assert reply.status == 200, reply.body
            found = samples(reply.body.decode())
            key = (
                "renkei_http_requests_total",
                (("method", "GET"), ("route", "/api/v1/time"), ("status", "200")),
            )
            assert found[key] == per_thread * threads
            assert found[("renkei_auth_failures_total", (("code", "sig.missing"),))] == threads
            assert found[("renkei_municipalities", (("state", "never"),))] == 3
        assert list(metrics_dir.glob("counter_*.db")), "counters live in the shared folder"
    finally:
        server.stop()


def test_serve_sets_the_multiprocess_folder(tmp_path):  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from server.cli import main

    result = CliRunner().invoke(
        main, ["serve", "--dry-run"], env={"RENKEI_SERVER_DATA_DIR": str(tmp_path)}
    )
    assert result.exit_code == 0
    assert f"metrics {tmp_path / 'metrics'}" in result.stderr


def test_the_dashboard_state_is_per_unit(metered, api_clock):  # type: ignore[no-untyped-def]
    """千代田区's only terminal revoked: the unit counts as 未接続 again."""
    from server.enrollment import revoke_terminal

    services = metered.extensions["renkei"]
    day = make_day(services, api_clock())
    revoke_terminal(services.storage, day.a_terminal, now=api_clock() + timedelta(minutes=1))
    metered.extensions["renkei.metrics"].database.cache_seconds = 0
    found = samples(metered.test_client().get("/metrics", headers=AUTH).text)
    assert found[("renkei_municipalities", (("state", "never"),))] == 2
    assert found[("renkei_terminals", (("state", "revoked"),))] == 1
