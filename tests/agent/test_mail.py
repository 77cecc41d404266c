"""The failure notice against a real SMTP server: aiosmtpd on 127.0.0.1, in a thread.

The relay is aiosmtpd's threaded ``Controller`` on a free port; STARTTLS uses
a certificate from the dev CA of ``server.tls`` (names ``127.0.0.1``); AUTH
uses aiosmtpd's ``authenticator`` hook with ``auth_require_tls`` left at its
default (True), so the password is only accepted after STARTTLS — the same
rule :func:`send_failure_notice` applies on its side.
"""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from appliance.agent.config import SmtpConfig
from appliance.agent.mail import MailError, send_failure_notice
from server.tls import make_dev_ca, make_server_cert
from tests.agent.helpers import (
    HOST,
    PASSWORD,
    REFUSED,
    USER,
    Delivered,
    Recorder,
    Tls,
    free_port,
)

SUBJECT = "【連携】送信に失敗しました（市町村コード 131016）"
BODY = "本日の連携ファイルを送信できませんでした。\n再送は「renkei-agent sync」で行えます。\n"


@dataclass
class Relay:
    port: int
    recorder: Recorder


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> Tls:  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("tls")
    ca_cert, ca_key = make_dev_ca(folder / "ca")
    cert, key = make_server_cert(folder / "ca", ca_cert, ca_key)
    other_ca, _ = make_dev_ca(folder / "other")
    return Tls(ca_cert, other_ca, cert, key)


@pytest.fixture
def start_relay(tls) -> Iterator:  # type: ignore[no-untyped-def]
    """``start(starttls=False, auth=False)`` → a running :class:`Relay`; stopped after the test."""
    controllers: list[Controller] = []

    def start(*, starttls: bool = False, auth: bool = False) -> Relay:
        recorder = Recorder(USER, PASSWORD)
        options: dict = {}
        if starttls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert, tls.key)
            options["tls_context"] = context
        if auth:
            options["authenticator"] = recorder.authenticate
        controller = Controller(recorder, hostname=HOST, port=free_port(), **options)
        controller.start()
        controllers.append(controller)
        return Relay(controller.port, recorder)

    try:
        yield start
    finally:
        for controller in controllers:
            controller.stop()


def config(port: int, **changes) -> SmtpConfig:  # type: ignore[no-untyped-def]
    values = {
        "host": HOST,
        "port": port,
        "sender": "renkei-agent@city.example.lg.jp",
        "recipients": ("juki@city.example.lg.jp", "joho@city.example.lg.jp"),
    }
    values.update(changes)
    return SmtpConfig(**values)


@pytest.fixture
def password_file(tmp_path) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / "smtp-password"
    path.write_text(PASSWORD + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def parsed(delivered: Delivered) -> email.message.EmailMessage:
    return email.message_from_bytes(delivered.data, policy=email.policy.default)  # type: ignore[return-value]


def test_japanese_notice_is_delivered_and_decodes(start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay()
    smtp = config(relay.port)
    send_failure_notice(smtp, subject=SUBJECT, body=BODY, timeout=5)

    [got] = relay.recorder.messages
    assert got.mail_from == smtp.sender
    assert got.rcpt_tos == list(smtp.recipients)
    assert not got.tls
    assert got.data.isascii(), "the message must be 7-bit clean for any relay"
    assert "=?utf-8?" in got.data.decode("ascii").lower(), "subject as an RFC 2047 encoded-word"
    message = parsed(got)
    assert message["Subject"] == SUBJECT
    # Text travels in MIME canonical form (CRLF line breaks, RFC 2046 §4.1.1).
    assert message.get_content().replace("\r\n", "\n") == BODY
    assert message.get_content_charset() == "utf-8"
    assert message["From"] == smtp.sender
    assert [a.addr_spec for a in message["To"].addresses] == list(smtp.recipients)
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["Message-ID"].endswith("@city.example.lg.jp>")
    assert message["Date"]


def test_starttls_and_auth_with_password_file(start_relay, tls, password_file) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(starttls=True, auth=True)
    smtp = config(relay.port, starttls=True, username=USER, password_file=password_file)
    send_failure_notice(smtp, subject=SUBJECT, body=BODY, timeout=5, ca_file=tls.ca)

    [got] = relay.recorder.messages
    assert got.tls, "the message must travel after STARTTLS"
    assert got.login == USER.encode()
    assert parsed(got)["Subject"] == SUBJECT


def test_starttls_without_auth(start_relay, tls) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(starttls=True)
    send_failure_notice(
        config(relay.port, starttls=True), subject=SUBJECT, body=BODY, timeout=5, ca_file=tls.ca
    )
    [got] = relay.recorder.messages
    assert got.tls and got.login is None


def test_wrong_password_is_mail_auth_and_not_in_the_message(start_relay, tls, tmp_path) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(starttls=True, auth=True)
    wrong = "not-the-password-0123"
    path = tmp_path / "pw"
    path.write_text(wrong, encoding="utf-8")
    smtp = config(relay.port, starttls=True, username=USER, password_file=path)
    with pytest.raises(MailError) as caught:
        send_failure_notice(smtp, subject=SUBJECT, body=BODY, timeout=5, ca_file=tls.ca)
    assert caught.value.code == "mail.auth"
    assert wrong not in caught.value.message
    # smtplib tries each mechanism the relay offers (PLAIN, then LOGIN).
    assert set(relay.recorder.logins) == {USER.encode()}, "the relay saw the login attempt"
    assert relay.recorder.messages == []


def test_certificate_from_another_ca_is_mail_tls(start_relay, tls, password_file) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(starttls=True, auth=True)
    smtp = config(relay.port, starttls=True, username=USER, password_file=password_file)
    with pytest.raises(MailError) as caught:
        send_failure_notice(smtp, subject=SUBJECT, body=BODY, timeout=5, ca_file=tls.other_ca)
    assert caught.value.code == "mail.tls"
    assert "certificate" in caught.value.message
    assert relay.recorder.logins == [], "no password may be sent to an unverified relay"
    assert relay.recorder.messages == []


def test_starttls_required_but_not_offered_is_mail_tls(start_relay, tls) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay()
    with pytest.raises(MailError) as caught:
        send_failure_notice(
            config(relay.port, starttls=True), subject=SUBJECT, body=BODY, timeout=5, ca_file=tls.ca
        )
    assert caught.value.code == "mail.tls"
    assert "STARTTLS" in caught.value.message
    assert relay.recorder.messages == []


def test_auth_configured_but_not_offered_is_mail_auth(start_relay, tls, password_file) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(starttls=True)  # no authenticator: no AUTH in EHLO
    smtp = config(relay.port, starttls=True, username=USER, password_file=password_file)
    with pytest.raises(MailError) as caught:
        send_failure_notice(smtp, subject=SUBJECT, body=BODY, timeout=5, ca_file=tls.ca)
    assert caught.value.code == "mail.auth"
    assert relay.recorder.messages == []


def test_unreadable_ca_file_is_mail_tls(start_relay, tmp_path) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(starttls=True)
    with pytest.raises(MailError) as caught:
        send_failure_notice(
            config(relay.port, starttls=True),
            subject=SUBJECT,
            body=BODY,
            timeout=5,
            ca_file=tmp_path / "missing-ca.pem",
        )
    assert caught.value.code == "mail.tls"
    assert "missing-ca.pem" in caught.value.message


def test_relay_down_fails_quickly() -> None:
    started = time.monotonic()
    with pytest.raises(MailError) as caught:
        send_failure_notice(config(free_port()), subject=SUBJECT, body=BODY, timeout=5)
    assert caught.value.code == "mail.connect"
    assert time.monotonic() - started < 2


def test_silent_relay_times_out() -> None:
    # Listening but never greeting: the kernel accepts the connection, nobody answers.
    with socket.socket() as silent:
        silent.bind((HOST, 0))
        silent.listen(1)
        started = time.monotonic()
        with pytest.raises(MailError) as caught:
            send_failure_notice(
                config(silent.getsockname()[1]), subject=SUBJECT, body=BODY, timeout=0.5
            )
    assert caught.value.code == "mail.timeout"
    assert time.monotonic() - started < 3


def test_every_recipient_refused_is_mail_refused(start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay()
    with pytest.raises(MailError) as caught:
        send_failure_notice(
            config(relay.port, recipients=(REFUSED,)), subject=SUBJECT, body=BODY, timeout=5
        )
    assert caught.value.code == "mail.refused"
    assert caught.value.refused[REFUSED][0] == 550
    assert REFUSED in caught.value.message
    assert relay.recorder.messages == []


def test_some_recipients_refused_is_mail_partial(start_relay) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay()
    smtp = config(relay.port, recipients=("juki@city.example.lg.jp", REFUSED))
    with pytest.raises(MailError) as caught:
        send_failure_notice(smtp, subject=SUBJECT, body=BODY, timeout=5)
    assert caught.value.code == "mail.partial"
    assert set(caught.value.refused) == {REFUSED}
    [got] = relay.recorder.messages
    assert got.rcpt_tos == ["juki@city.example.lg.jp"]


@pytest.mark.parametrize(
    ("changes", "password", "code"),
    [
        ({"recipients": ()}, None, "mail.config"),
        ({"username": USER, "starttls": False}, PASSWORD, "mail.config"),
        ({"username": USER, "starttls": True}, "", "mail.password"),
        ({"username": USER, "starttls": True}, "\n", "mail.password"),
        ({"username": USER, "starttls": True}, "missing", "mail.password"),
        ({"username": USER, "starttls": True}, b"\x82\xa0", "mail.password"),
        ({"username": USER, "starttls": True}, "pässwort", "mail.password"),
    ],
)
def test_refused_before_connecting(start_relay, tmp_path, changes, password, code) -> None:  # type: ignore[no-untyped-def]
    relay = start_relay(starttls=True, auth=True)
    path = tmp_path / "pw"
    if isinstance(password, bytes):
        path.write_bytes(password)
    elif password is not None and password != "missing":
        path.write_text(password, encoding="utf-8")
    if "username" in changes:
        changes = {**changes, "password_file": path}
    with pytest.raises(MailError) as caught:
        send_failure_notice(config(relay.port, **changes), subject=SUBJECT, body=BODY, timeout=5)
    assert caught.value.code == code
    if password:
        assert PASSWORD not in caught.value.message
    assert relay.recorder.logins == [] and relay.recorder.messages == []
