"""Structured logs: one JSON object per line, request ids, and no personal data — checked on a
whole day run through the real server.

The day: ``renkei-server import`` and ``close-day`` (subprocesses), then gunicorn with TLS: a
terminal enrolls over HTTPS, lists, downloads, acknowledges, uploads a file whose name and
records carry personal data and some of whose records are rejected (the receipt quotes the bad
values), fetches the receipt; an operator logs in and opens the municipality page (which shows
them); ``renkei-server report --dry-run`` prints the mails.  Then every line of the server log
and of the commands' output is searched for every name, birth date, card number and address
the day used.
"""

from __future__ import annotations

import dataclasses
import http.client
import io
import json
import logging
import re
import ssl
import subprocess
import sys
from datetime import UTC, datetime
from urllib.parse import quote, urlencode

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common import statement
from common.items import MINISTRY, MUNICIPALITY
from common.noticefile import encode_notice_file, records_to_jsonl
from common.synthetic import SampleFactory
from server import eventlog
from server.config import ServerConfig
from server.storage import business_day
from tests.server.client import ROOT, ServerProcess
from tests.server.conftest import API_A, API_B, api_init_data

PERSONAL_KEYS = ("name", "birth_date", "card_number", "address")


def personal_values(records) -> set[str]:  # type: ignore[no-untyped-def]
    """Every name, birth date (both spellings), card number and address in ``records``."""
    found: set[str] = set()
    for record in records:
        for column, value in record.values.items():
            bare = column.removeprefix("old_")
            coded = bare.endswith(("_code", "_kind"))  # a local government code, a name kind
            if value and any(bare.startswith(key) for key in PERSONAL_KEYS) and not coded:
                found.add(value)
                if bare == "birth_date" and re.fullmatch(r"[0-9]{8}", value):
                    found.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
                if bare.startswith("name_"):
                    found.update(part for part in value.split() if len(part) >= 3)
    return found


# --- units ---------------------------------------------------------------------------------------


def test_event_keeps_only_known_fields_with_safe_values(capsys):  # type: ignore[no-untyped-def]
    eventlog.setup_logging()
    eventlog.event(
        "unit.test",
        status=200,
        lasdec="131016",
        route="/api/v1/batches/<batch_id>",
        path="/dashboard/m/131016 金旼俊",  # a space and kanji: not an id
        code="x" * 201,  # too long
        name="KIM MINJUN",  # not a known field
        terminal_id=None,  # left out
    )
    [line] = capsys.readouterr().err.splitlines()
    data = json.loads(line)
    assert data["event"] == "unit.test" and data["level"] == "info"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["ts"])
    assert data["status"] == 200 and data["lasdec"] == "131016"
    assert data["route"] == "/api/v1/batches/<batch_id>"
    assert data["path"] == data["code"] == data["name"] == "[dropped]"
    assert "terminal_id" not in data
    assert "KIM" not in line and "金" not in line


def test_exceptions_are_logged_without_their_message(capsys):  # type: ignore[no-untyped-def]
    eventlog.setup_logging()
    try:
        raise ValueError("birth date 19590721 of KIM MINJUN is wrong")
    except ValueError:
        logging.getLogger("renkei.server.unit").exception("failed on %s", "up_0123")
    [line] = capsys.readouterr().err.splitlines()
    data = json.loads(line)
    assert data["exception"] == "ValueError" and data["message"] == "failed on up_0123"
    assert data["frames"] and data["frames"][-1].startswith("test_eventlog.py:")
    assert "19590721" not in line and "KIM" not in line


def test_setting_up_twice_adds_one_handler():
    eventlog.setup_logging()
    eventlog.setup_logging()
    logger = logging.getLogger(eventlog.LOGGER)
    assert sum(1 for h in logger.handlers if isinstance(h.formatter, eventlog.JsonFormatter)) == 1
    assert logger.propagate is False


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("lb-0123456789abcdef", True),
        ("short", False),
        ("has space in it", False),
        ("x" * 65, False),
    ],
)
def test_request_id_joins_the_answer_and_the_log(api, capsys, sent, kept):  # type: ignore[no-untyped-def]
    reply = api.get("/api/v1/time", headers={"X-Request-Id": sent})
    answered = reply.headers["X-Request-Id"]
    assert (answered == sent) is kept
    assert re.fullmatch(r"[A-Za-z0-9._-]{8,64}", answered)
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.startswith("{")]
    [request] = [x for x in lines if x["event"] == "http.request"]
    assert request["request_id"] == answered
    assert (request["method"], request["route"], request["status"]) == ("GET", "/api/v1/time", 200)
    assert request["duration_ms"] >= 0


# --- a whole day through the real server ----------------------------------------------------------


class Web:
    """Just enough of a browser for the dashboard: cookies and url-encoded forms over HTTPS."""

    def __init__(self, server: ServerProcess):
        self.port = server.port
        self.context = ssl.create_default_context(cafile=str(server.ca_file))
        self.cookies: dict[str, str] = {}

    def send(self, method: str, path: str, form: dict | None = None) -> tuple[int, str]:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = None
        if form is not None:
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            headers["Origin"] = f"https://127.0.0.1:{self.port}"
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            text = response.read().decode("utf-8")
            for name, value in response.getheaders():
                if name.lower() == "set-cookie":
                    key, _, val = value.split(";", 1)[0].partition("=")
                    self.cookies[key] = val
            return response.status, text
        finally:
            conn.close()


def run_cli(config: ServerConfig, log: io.StringIO, *args: str, stdin: str | None = None, env=None):  # type: ignore[no-untyped-def]
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        cwd=ROOT,
        env={
            "RENKEI_SERVER_DATA_DIR": str(config.data_dir),
            "RENKEI_SERVER_DATABASE_URL": config.database_url,  # SQLite file or the test's PG
            "PATH": "/usr/bin:/bin",
            **(env or {}),
        },
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log.write(result.stdout + result.stderr)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result


@pytest.mark.slow
def test_a_whole_day_logs_no_personal_data(tmp_path):  # type: ignore[no-untyped-def]
    config = api_init_data(tmp_path / "srv", tls=True)
    data_dir = config.data_dir
    cli_output = io.StringIO()
    today = business_day(datetime.now(UTC))
    samples = SampleFactory(seed=41, day=today)
    ministry = [*samples.day_of(MINISTRY, API_A, 6), *samples.day_of(MINISTRY, API_B, 3)]
    jsonl = io.StringIO()
    records_to_jsonl(MINISTRY, ministry, jsonl)
    notices = tmp_path / "notices.jsonl"
    notices.write_text(jsonl.getvalue(), encoding="utf-8")
    run_cli(config, cli_output, "import", str(notices))
    run_cli(config, cli_output, "close-day")
    contacts = tmp_path / "contacts.csv"
    contacts.write_text(f"lasdec,address\n{API_A},juki@city.example.lg.jp\n", encoding="utf-8")
    run_cli(config, cli_output, "operator", "add", "tanaka", "--password-stdin",
            stdin="correct horse battery staple\n")  # fmt: skip
    token = json.loads(
        run_cli(config, cli_output, "terminal", "token", "--lasdec", API_A, "--json").stdout
    )["token"]

    uploaded = list(SampleFactory(seed=43, day=today).day_of(MUNICIPALITY, API_A, 6))
    uploaded[1] = dataclasses.replace(
        uploaded[1], values={**uploaded[1].values, "birth_date": "19591399"}
    )
    card = uploaded[3].values["card_number"]
    uploaded[3] = dataclasses.replace(
        uploaded[3], values={**uploaded[3].values, "card_number": card[:-1] + "9"}
    )
    personal = personal_values(ministry) | personal_values(uploaded) | {"19591399"}
    file_name = f"{uploaded[0].values['name_alphabet'].replace(' ', '_')}修正.csv"
    personal.add(file_name.removesuffix(".csv"))
    assert len(personal) > 40

    server = ServerProcess(data_dir, log_path=tmp_path / "gunicorn.log", workers=2)
    server.start()
    clients = []
    try:
        key = Ed25519PrivateKey.generate()
        enroll_client = server.client(key=key, key_id="enroll")
        clients.append(enroll_client)
        body = {"token": token, "public_key": statement.public_key_to_text(key.public_key())}
        enrolled = enroll_client.post_json("/api/v1/enroll", body)
        assert enrolled.status == 201, enrolled.body
        terminal = server.client(key=key, key_id=enrolled.json()["terminal_id"])
        clients.append(terminal)
        listing = terminal.get("/api/v1/batches", headers={"X-Request-Id": "lb-request-000123"})
        assert listing.status == 200
        [batch] = listing.json()["batches"]
        assert terminal.get(batch["file"]).status == 200
        assert terminal.get(batch["manifest"]).status == 200
        ack = terminal.post_json(f"{batch['file']}/ack", {"sha256": batch["sha256"]})
        assert ack.status == 200
        data = encode_notice_file(MUNICIPALITY, uploaded)
        reply = terminal.post(
            "/api/v1/uploads",
            data,
            headers={
                "Content-Type": "application/octet-stream",
                "Renkei-File-Name": quote(file_name),
            },
        )
        assert reply.status == 201, reply.body
        receipt = reply.json()["statement"]
        assert len(receipt["rejected"]) == 2
        assert "19591399" in reply.body.decode(), (
            "the receipt quotes the bad value (it is not a log)"
        )
        assert terminal.get(f"/api/v1/uploads/{receipt['upload_id']}/receipt").status == 200
        stranger = server.client(
            key=Ed25519PrivateKey.generate(), key_id=enrolled.json()["terminal_id"]
        )
        clients.append(stranger)
        assert stranger.get("/api/v1/batches").status == 401

        web = Web(server)
        _status, form = web.send("GET", "/dashboard/login")
        login_token = re.search(r'name="login_token" value="([^"]+)"', form).group(1)
        logged, _ = web.send(
            "POST",
            "/dashboard/login",
            {
                "name": "tanaka",
                "password": "correct horse battery staple",
                "login_token": login_token,
            },
        )
        assert logged == 303
        _status, page = web.send("GET", f"/dashboard/m/{API_A}")
        assert "19591399" in page and receipt["upload_id"] in page, "the operator sees the reasons"
        searched, _ = web.send("GET", "/dashboard/?q=" + quote(uploaded[0].values["name_alphabet"]))
        assert searched == 200
    finally:
        for client in clients:
            client.close()
        server.stop()
    run_cli(
        config,
        cli_output,
        "report",
        "--dry-run",
        "--date",
        today.isoformat(),
        env={"RENKEI_SERVER_MAIL_OPERATORS": "ops@moj.example.go.jp",
             "RENKEI_SERVER_MAIL_CONTACTS_FILE": str(contacts)},
    )  # fmt: skip

    server_log = (tmp_path / "gunicorn.log").read_text(encoding="utf-8")
    lines = server_log.splitlines() + cli_output.getvalue().splitlines()
    assert len(lines) > 30
    leaks = [(value, line) for line in lines for value in personal if value in line]
    assert leaks == [], f"personal data in the logs: {leaks[:5]}"

    events = [json.loads(line) for line in server_log.splitlines() if line.startswith("{")]
    requests = [e for e in events if e["event"] == "http.request"]
    assert len(requests) >= 12
    assert all(e.get("request_id") for e in requests)
    assert any(e["request_id"] == "lb-request-000123" for e in requests)
    routes = {(e["route"], e["status"]) for e in requests}
    assert ("/api/v1/uploads", 201) in routes and ("/api/v1/batches", 401) in routes
    assert any(e["event"] == "dashboard.login" and e["outcome"] == "success" for e in events)
    assert "件名: 【市町村連携】市町村通知に不備があります" in cli_output.getvalue()
