"""The morning report against a real SMTP relay: aiosmtpd on 127.0.0.1 with STARTTLS and AUTH.

The relay's certificate comes from a dev CA of ``server.tls``; the password is accepted only
after STARTTLS (aiosmtpd's ``auth_require_tls``).  The day is the dashboard tests' day:
千代田区 (A) uploaded a file with one rejected record, 中央区 (B) has not fetched its batch,
港区 (C) has no terminal.  "Relay down" is a port nobody listens on; the relay then starts on
that very port and the next run must deliver each spooled mail exactly once.
"""

from __future__ import annotations

import json
import socket
import ssl
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from click.testing import CliRunner

from server.blobs import BlobStore
from server.cli import main
from server.config import load_config
from server.keys import load_signing_key
from server.mailreport import ContactsError, load_contacts, run_report
from server.storage import Storage, mail_outbox
from server.tls import make_dev_ca, make_server_cert
from tests.server.conftest import API_A, CORE_NOW, api_init_data
from tests.server.test_dashboard import BAD_BIRTH_DATE, make_day, municipality_file
from tests.smtp_relay import Recorder

USER, SECRET = "renkei-report", "relay pass phrase"
OPERATORS = ("ops1@moj.example.go.jp", "ops2@moj.example.go.jp")
CONTACT_A = "juki@city.chiyoda.example.lg.jp"
DAY = date(2026, 11, 27)
#: The next morning, 07:00 in Japan, when the timer runs the report.
MORNING = CORE_NOW + timedelta(hours=13)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def relay_tls(tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("relay-tls")
    ca_cert, ca_key = make_dev_ca(folder)
    cert, key = make_server_cert(folder, ca_cert, ca_key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return SimpleNamespace(ca=ca_cert, context=context)


@pytest.fixture
def start_relay(relay_tls):  # type: ignore[no-untyped-def]
    controllers = []

    def start(port: int) -> Recorder:
        recorder = Recorder(USER, SECRET)
        controller = Controller(
            recorder,
            hostname="127.0.0.1",
            port=port,
            tls_context=relay_tls.context,
            require_starttls=True,
            authenticator=recorder.authenticate,
            auth_required=True,
        )
        controller.start()
        controllers.append(controller)
        return recorder

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def site(tmp_path, relay_tls):  # type: ignore[no-untyped-def]
    """The dashboard tests' day in a fresh data folder, a contacts file and a password file."""
    config = api_init_data(tmp_path / "srv")
    storage = Storage(config.database_url)
    services = SimpleNamespace(
        storage=storage,
        blobs=BlobStore(config.blob_dir),
        signing_key=load_signing_key(config.signing_key_path),
    )
    day = make_day(services, CORE_NOW)
    contacts = tmp_path / "contacts.csv"
    contacts.write_text(f"lasdec,address\n{API_A},{CONTACT_A}\n", encoding="utf-8")
    password = tmp_path / "relay-password"
    password.write_text(SECRET + "\n", encoding="utf-8")
    password.chmod(0o600)
    port = free_port()

    def mail_config(**changes):  # type: ignore[no-untyped-def]
        values = {
            "relay_host": "127.0.0.1",
            "relay_port": port,
            "starttls": True,
            "ca_file": str(relay_tls.ca),
            "username": USER,
            "password_file": str(password),
            "sender": "renkei-report@moj.example.go.jp",
            "operators": list(OPERATORS),
            "contacts_file": str(contacts),
            "timeout": 5,
            "dashboard_url": "https://renkei.example.go.jp/dashboard/",
        }
        values.update(changes)
        return load_config(env={}, data_dir=config.data_dir, mail=values).mail

    yield SimpleNamespace(
        config=config, storage=storage, day=day, port=port, mail_config=mail_config, env={}
    )
    storage.dispose()


def personal_values() -> list[str]:
    """Names, birth dates and card numbers of every record in A's uploaded file."""
    _data, records = municipality_file(API_A)
    keys = ("name_alphabet", "name_kanji", "birth_date", "card_number", "address")
    return [r.values[k] for r in records for k in keys if r.values.get(k)]


def outbox(storage: Storage) -> list:
    with storage.read() as conn:
        return conn.execute(sa.select(mail_outbox).order_by(mail_outbox.c.mail_key)).all()


def test_report_is_delivered_over_starttls_and_says_what_happened(site, start_relay):  # type: ignore[no-untyped-def]
    relay = start_relay(site.port)
    run = run_report(site.storage, site.mail_config(), day=DAY, now=MORNING)
    assert run.ok and sorted(run.delivery.sent) == ["2026-11-27/131016", "2026-11-27/summary"]
    assert len(relay.messages) == 2
    assert all(m.tls and m.login == USER.encode() for m in relay.messages)
    by_to = {tuple(m.rcpt_tos): m for m in relay.messages}

    summary = by_to[OPERATORS].message
    assert summary["Subject"] == "【市町村連携】日次報告 2026-11-27（未受領 1・不備 1）"
    assert summary["Auto-Submitted"] == "auto-generated"
    body = summary.get_content()
    section = body.split("■ 未受領")[1].split("■")[0]
    assert "131024 東京都中央区" in section and "131016" not in section
    section = body.split("■ 送信なし")[1].split("■")[0]
    assert "131024 東京都中央区" in section and "131016" not in section
    section = body.split("■ 不備のあった団体")[1].split("■")[0]
    assert "131016 東京都千代田区  不備 1 件" in section and CONTACT_A in section
    assert "受信単位 3・端末登録済 2・未接続 1" in body
    assert "https://renkei.example.go.jp/dashboard/" in body

    notice = by_to[(CONTACT_A,)]
    assert notice.data.isascii(), "7-bit clean for any relay"
    message = notice.message
    assert (
        message["Subject"]
        == "【市町村連携】市町村通知に不備があります（2026-11-27 東京都千代田区）"
    )
    text = message.get_content()
    assert site.day.rejected_record in text and site.day.upload_id in text
    assert "出生の年月日" in text and "[date.invalid]" in text
    for value in personal_values():
        assert value not in text, f"personal data in the municipality's mail: {value!r}"
    assert BAD_BIRTH_DATE not in notice.data.decode("ascii")
    # Delivered mails leave the spool; the outbox keeps the record.
    assert list(site.mail_config().spool_dir.glob("*.eml")) == []
    rows = outbox(site.storage)
    assert [r.sent_at is not None for r in rows] == [True, True]
    assert {r.message_id for r in rows} == {m.message["Message-ID"].strip() for m in relay.messages}


def test_a_second_run_for_the_same_day_sends_nothing(site, start_relay):  # type: ignore[no-untyped-def]
    relay = start_relay(site.port)
    run_report(site.storage, site.mail_config(), day=DAY, now=MORNING)
    again = run_report(site.storage, site.mail_config(), day=DAY, now=MORNING + timedelta(hours=1))
    assert again.created == [] and len(again.known) == 2 and again.delivery.sent == []
    assert len(relay.messages) == 2


def test_relay_down_spools_and_the_next_run_delivers_once(site, start_relay):  # type: ignore[no-untyped-def]
    config = site.mail_config()
    down = run_report(site.storage, config, day=DAY, now=MORNING)
    assert not down.ok and down.delivery.sent == []
    assert sorted(code for _key, code, _msg in down.delivery.failed) == ["mail.connect"] * 2
    spooled = sorted(p.name for p in config.spool_dir.glob("*.eml"))
    assert spooled == ["20261127-131016.eml", "20261127-summary.eml"]
    assert [(r.sent_at, r.attempts, r.last_error) for r in outbox(site.storage)] == [
        (None, 1, "mail.connect")
    ] * 2

    relay = start_relay(site.port)  # the relay is back, on the same port
    later = MORNING + timedelta(hours=1)
    back = run_report(site.storage, config, day=DAY, now=later)
    assert (
        back.ok
        and back.created == []
        and sorted(back.delivery.sent)
        == [
            "2026-11-27/131016",
            "2026-11-27/summary",
        ]
    )
    assert len(relay.messages) == 2
    assert list(config.spool_dir.glob("*.eml")) == []
    third = run_report(site.storage, config, day=DAY, now=later + timedelta(hours=1))
    assert third.delivery.sent == [] and len(relay.messages) == 2, "delivered once"


def test_a_refused_login_keeps_the_mail(site, start_relay, tmp_path):  # type: ignore[no-untyped-def]
    relay = start_relay(site.port)
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not it\n", encoding="utf-8")
    run = run_report(site.storage, site.mail_config(password_file=str(wrong)), day=DAY, now=MORNING)
    assert {code for _k, code, _m in run.delivery.failed} == {"mail.auth"}
    assert relay.messages == []
    assert len(list(site.mail_config().spool_dir.glob("*.eml"))) == 2


def test_a_relay_certificate_from_another_ca_is_refused(site, start_relay, tmp_path):  # type: ignore[no-untyped-def]
    start_relay(site.port)
    other_ca, _ = make_dev_ca(tmp_path / "other")
    run = run_report(site.storage, site.mail_config(ca_file=str(other_ca)), day=DAY, now=MORNING)
    assert {code for _k, code, _m in run.delivery.failed} == {"mail.tls"}


def test_dry_run_changes_nothing(site):  # type: ignore[no-untyped-def]
    run = run_report(site.storage, site.mail_config(), day=DAY, now=MORNING, dry_run=True)
    assert [m.key for m in run.mails] == ["2026-11-27/summary", "2026-11-27/131016"]
    assert outbox(site.storage) == []
    assert not site.mail_config().spool_dir.exists()


def test_municipality_without_contact_is_named_in_the_summary(site, start_relay, tmp_path):  # type: ignore[no-untyped-def]
    relay = start_relay(site.port)
    empty = tmp_path / "no-contacts.csv"
    empty.write_text("lasdec,address\n", encoding="utf-8")
    run = run_report(site.storage, site.mail_config(contacts_file=str(empty)), day=DAY, now=MORNING)
    assert run.unreachable == [API_A] and run.delivery.sent == ["2026-11-27/summary"]
    [summary] = relay.messages
    assert "未登録（通知できません）" in summary.message.get_content()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("code,mail\n131016,a@b.jp\n", "header"),
        ("lasdec,address\n131017,a@b.jp\n", "line 2"),
        ("lasdec,address\n131016,not-an-address\n", "line 2"),
        ("lasdec,address\n131016,a@b.jp\n131024,a b@c.jp\n", "line 3"),
    ],
)
def test_contacts_file_errors_name_the_line(tmp_path, text, needle):  # type: ignore[no-untyped-def]
    path = tmp_path / "contacts.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ContactsError) as exc:
        load_contacts(path)
    assert needle in exc.value.message


def test_cli_report_exit_codes(site, start_relay):  # type: ignore[no-untyped-def]
    """renkei-server report: 1 while mails stay spooled, 0 once the relay took them."""
    mail = site.mail_config()
    env = {
        "RENKEI_SERVER_DATA_DIR": str(site.config.data_dir),
        "RENKEI_SERVER_MAIL_RELAY_HOST": "127.0.0.1",
        "RENKEI_SERVER_MAIL_RELAY_PORT": str(site.port),
        "RENKEI_SERVER_MAIL_CA_FILE": str(mail.ca_file),
        "RENKEI_SERVER_MAIL_USERNAME": USER,
        "RENKEI_SERVER_MAIL_PASSWORD_FILE": str(mail.password_file),
        "RENKEI_SERVER_MAIL_SENDER": mail.sender,
        "RENKEI_SERVER_MAIL_OPERATORS": ",".join(OPERATORS),
        "RENKEI_SERVER_MAIL_CONTACTS_FILE": str(mail.contacts_file),
        "RENKEI_SERVER_MAIL_TIMEOUT": "5",
    }
    runner = CliRunner()
    dry = runner.invoke(main, ["report", "--date", "2026-11-27", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert "件名: 【市町村連携】日次報告 2026-11-27" in dry.output
    down = runner.invoke(main, ["report", "--date", "2026-11-27", "--json"], env=env)
    assert down.exit_code == 1, down.output
    result = json.loads(down.stdout)
    assert len(result["created"]) == 2 and {f["code"] for f in result["failed"]} == {"mail.connect"}
    relay = start_relay(site.port)
    up = runner.invoke(main, ["report", "--date", "2026-11-27"], env=env)
    assert up.exit_code == 0, up.output
    assert "送信 2 通" in up.output and len(relay.messages) == 2
    bad = runner.invoke(
        main, ["report"], env={**env, "RENKEI_SERVER_MAIL_CONTACTS_FILE": "/nonexistent"}
    )
    assert bad.exit_code == 2


def test_spool_survives_for_the_dashboard_config_defaults(tmp_path):  # type: ignore[no-untyped-def]
    """Without [mail] settings the spool sits in the data folder and nothing is misconfigured."""
    config = load_config(env={}, data_dir=tmp_path)
    assert config.mail.spool_dir == tmp_path / "mail-spool"
    assert config.mail.relay_host is None and config.mail.operators == ()
    assert Path(config.metrics.multiprocess_dir) == tmp_path / "metrics"
