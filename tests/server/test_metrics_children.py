"""``Metrics.observe_request`` keeps each label set's counter and histogram child (issue 10):
every (route, method, status) must still be counted apart, and counts must accumulate."""

from __future__ import annotations

import hashlib

from server.app import create_app
from server.metrics import EXTENSION
from tests.server.conftest import api_init_data
from tests.server.test_metrics import samples

TOKEN = "metrics-children-token-0123456789"


def test_each_label_set_is_counted_apart_and_accumulates(tmp_path, api_clock):  # type: ignore[no-untyped-def]
    config = api_init_data(
        tmp_path / "srv", metrics={"token_sha256": hashlib.sha256(TOKEN.encode()).hexdigest()}
    )
    app = create_app(config, clock=api_clock)
    try:
        metrics = app.extensions[EXTENSION]
        route = "/api/v1/batches/<batch_id>"
        for _ in range(3):
            metrics.observe_request(route, "GET", 200, 0.002)
        metrics.observe_request(route, "GET", 304, 0.002)
        metrics.observe_request(route, "HEAD", 200, 0.002)
        metrics.observe_request("/api/v1/time", "GET", 200, 2.0)
        found = samples(metrics.render().decode())
    finally:
        app.extensions["renkei"].storage.dispose()

    def value(name: str, **labels: str) -> float:
        return found[(name, tuple(sorted(labels.items())))]

    requests = "renkei_http_requests_total"
    assert value(requests, route=route, method="GET", status="200") == 3
    assert value(requests, route=route, method="GET", status="304") == 1
    assert value(requests, route=route, method="HEAD", status="200") == 1
    assert value(requests, route="/api/v1/time", method="GET", status="200") == 1
    durations = "renkei_http_request_duration_seconds"
    assert value(f"{durations}_count", route=route) == 5
    assert value(f"{durations}_bucket", route=route, le="0.005") == 5
    assert value(f"{durations}_count", route="/api/v1/time") == 1
    assert value(f"{durations}_bucket", route="/api/v1/time", le="1.0") == 0
    assert value(f"{durations}_bucket", route="/api/v1/time", le="2.5") == 1
