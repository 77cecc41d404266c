"""The unsigned part of the API and the app as a whole: time, health, OpenAPI, error shape."""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest
import sqlalchemy as sa

from server.api import server_error_status
from server.api.openapi import DOCUMENT
from server.app import create_app
from server.config import load_config
from server.errors import (
    AckError,
    ConfigError,
    EnrollmentError,
    NotFoundError,
    ServerError,
    UploadError,
)

API_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}


def test_time_is_the_injected_clock(api, api_clock):
    api_clock.advance(0.25)
    reply = api.get("/api/v1/time")
    assert reply.status_code == 200
    body = reply.get_json()
    assert body["epoch"] == api_clock().timestamp()
    assert datetime.fromisoformat(body["time"]) == api_clock()
    assert reply.headers["Cache-Control"] == "no-store"


def test_health_ok(api):
    reply = api.get("/healthz")
    assert (reply.status_code, reply.get_json()) == (200, {"status": "ok"})


def test_health_without_schema_is_503(tmp_path, api_config):
    empty = load_config(
        env={}, data_dir=api_config.data_dir, database_url=f"sqlite:///{tmp_path}/empty.sqlite3"
    )
    app = create_app(empty)
    reply = app.test_client().get("/healthz")
    app.extensions["renkei"].storage.dispose()
    assert reply.status_code == 503
    assert reply.get_json()["error"]["code"] == "health.schema"


def test_health_with_broken_database_is_503(api, monkeypatch):
    def broken():
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("disk I/O error"))

    monkeypatch.setattr(api.services.storage, "schema_version", broken)
    reply = api.get("/healthz")
    assert reply.status_code == 503
    assert reply.get_json()["error"]["code"] == "health.database"


def test_missing_signing_key_stops_the_app_at_start(api_config):
    api_config.signing_key_path.unlink()
    with pytest.raises(ServerError) as caught:
        create_app(api_config)
    assert caught.value.code == "key.missing"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/api/v1/nothing-here", 404, "not_found"),
        ("GET", "/", 404, "not_found"),
        ("DELETE", "/api/v1/batches", 405, "request.method"),
        ("GET", "/api/v1/enroll", 405, "request.method"),
        ("POST", "/api/v1/time", 405, "request.method"),
    ],
)
def test_http_errors_are_json(api, method, path, status, code):
    reply = api.request(method, path)
    assert reply.status_code == status
    assert reply.is_json
    assert reply.get_json()["error"]["code"] == code
    assert reply.get_json()["error"]["message"]


def test_unexpected_exception_is_a_json_500_without_details(api, api_terminal, monkeypatch):
    import server.api.batches as batches_api

    def explode(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(batches_api, "list_batches", explode)
    _, terminal = api_terminal()
    reply = terminal.get("/api/v1/batches")
    assert reply.status_code == 500
    assert reply.get_json() == {
        "error": {"code": "internal", "message": "the server could not complete the request"}
    }


def test_openapi_is_served_as_written(api):
    reply = api.get("/api/v1/openapi.json")
    assert reply.status_code == 200
    assert reply.mimetype == "application/json"
    assert reply.get_json() == json.loads(DOCUMENT.read_text(encoding="utf-8"))
    assert reply.get_json()["openapi"].startswith("3.1")


def _documented(document: dict) -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, operations in document["paths"].items()
        for method in operations
        if method.upper() in API_METHODS
    }


def _routed(app) -> set[tuple[str, str]]:
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        found |= {(path, method) for method in rule.methods & API_METHODS}
    return found


def test_every_route_is_documented_and_every_documented_path_is_routed(api_app):
    document = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    documented = _documented(document)
    routed = _routed(api_app)
    under_api = {entry for entry in routed if entry[0].startswith("/api/v1")}
    assert under_api, "no routes under /api/v1"
    assert under_api - documented == set(), "routes missing from openapi.json"
    assert {e for e in documented if e[0].startswith("/api/v1")} - routed == set(), (
        "documented but not routed"
    )
    assert ("/healthz", "GET") in documented & routed


def test_openapi_references_resolve():
    document = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    refs = re.findall(r'"\$ref": "#/([^"]+)"', json.dumps(document))
    assert refs
    for ref in refs:
        node = document
        for part in ref.split("/"):
            assert part in node, f"#/{ref} does not resolve"
            node = node[part]


def test_openapi_path_parameters_match_the_template():
    document = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    params = document["components"]["parameters"]
    for path, operations in document["paths"].items():
        wanted = set(re.findall(r"{([^}]+)}", path))
        for method, operation in operations.items():
            declared = set()
            for param in operation.get("parameters", []):
                if "$ref" in param:
                    param = params[param["$ref"].rsplit("/", 1)[1]]
                if param["in"] == "path":
                    declared.add(param["name"])
            assert declared == wanted, (path, method)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (EnrollmentError("x", code="token.invalid"), 401),
        (EnrollmentError("x", code="token.used"), 401),
        (EnrollmentError("x", code="token.expired"), 401),
        (EnrollmentError("x", code="key.invalid"), 400),
        (EnrollmentError("x", code="key.duplicate"), 409),
        (EnrollmentError("x", code="enrollment.other"), 400),
        (NotFoundError("x", code="batch.not_found"), 404),
        (NotFoundError("x"), 404),
        (AckError("x", code="ack.hash_mismatch"), 409),
        (UploadError("x", code="upload.concurrent"), 409),
        (UploadError("x"), 400),
        (ConfigError("x"), 500),
        (ServerError("x", code="key.missing"), 500),
    ],
)
def test_core_errors_map_to_statuses(error, status):
    assert server_error_status(error) == status


def test_a_core_error_inside_a_view_is_answered_as_json(api, api_terminal, monkeypatch):
    import server.api.batches as batches_api

    def refuse(*args, **kwargs):
        raise AckError("the SHA-256 does not match", code="ack.hash_mismatch")

    monkeypatch.setattr(batches_api, "acknowledge", refuse)
    _, terminal = api_terminal()
    reply = terminal.post_json("/api/v1/batches/b/ack", {"sha256": "0" * 64})
    assert reply.status_code == 409
    assert reply.get_json() == {
        "error": {"code": "ack.hash_mismatch", "message": "the SHA-256 does not match"}
    }


def test_a_server_side_core_error_hides_its_message(api, api_terminal, monkeypatch):
    import server.api.batches as batches_api

    def broken(*args, **kwargs):
        raise ServerError("/var/lib/renkei-server/signing-key.pem unreadable", code="key.missing")

    monkeypatch.setattr(batches_api, "list_batches", broken)
    _, terminal = api_terminal()
    reply = terminal.get("/api/v1/batches")
    assert reply.status_code == 500
    assert reply.get_json()["error"]["code"] == "key.missing"
    assert "/var/lib" not in reply.get_json()["error"]["message"]
