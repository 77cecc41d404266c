"""The mail spool: every report mail is on disk and in ``mail_outbox`` before the relay sees it.

Split from ``mailreport.py`` (which decides what to say) so delivery — claims,
retries, the SMTP relay with STARTTLS and its error codes — is one idea in one
place.  The guarantees are described in ``mailreport``'s docstring.
"""

from __future__ import annotations

import smtplib
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from common.atomicwrite import write_bytes

from .config import MailConfig
from .errors import ServerError
from .storage import Storage, mail_outbox

__all__ = ["CLAIM", "Delivery", "Mail", "MailError", "SmtpRelay", "deliver", "spool"]

#: A mail claimed by a run is not taken by another for this long (a run that died frees it).
CLAIM = timedelta(minutes=10)


class MailError(ServerError):
    """A mail could not be handed to the relay; ``code`` is ``mail.*`` (see :func:`deliver`)."""

    code = "mail.error"


@dataclass(frozen=True)
class Mail:
    key: str  # mail_outbox.mail_key
    kind: str  # summary | municipality
    lasdec: str | None
    message: EmailMessage

    @property
    def spool_name(self) -> str:
        return self.key.replace("-", "").replace("/", "-") + ".eml"


def spool(
    storage: Storage, spool_dir: Path, mails: Iterable[Mail], *, now: datetime
) -> tuple[list[str], list[str]]:
    """Write each mail not yet in the outbox to the spool and record it: (new keys, known keys)."""
    spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    created: list[str] = []
    known: list[str] = []
    for mail in mails:
        with storage.read() as conn:
            exists = conn.execute(
                sa.select(mail_outbox.c.mail_key).where(mail_outbox.c.mail_key == mail.key)
            ).first()
        if exists is not None:
            known.append(mail.key)
            continue
        write_bytes(
            spool_dir / mail.spool_name, mail.message.as_bytes(policy=policy.SMTP), mode=0o600
        )
        try:
            with storage.begin() as conn:
                conn.execute(
                    mail_outbox.insert().values(
                        mail_key=mail.key,
                        business_date=date.fromisoformat(mail.key.split("/", 1)[0]),
                        kind=mail.kind,
                        lasdec=mail.lasdec,
                        message_id=mail.message["Message-ID"],
                        spool_name=mail.spool_name,
                        recipients=len(mail.message["To"].addresses),
                        created_at=now,
                        attempts=0,
                    )
                )
        except IntegrityError:  # another run recorded it a moment ago
            known.append(mail.key)
            continue
        created.append(mail.key)
    return created, known


class SmtpRelay:
    """One SMTP session with the configured relay (STARTTLS and login as configured)."""

    def __init__(self, config: MailConfig):
        self.config = config
        self.client: smtplib.SMTP | None = None

    def __enter__(self) -> SmtpRelay:
        config = self.config
        if not config.relay_host:
            raise MailError(
                "mail.relay_host is not set; mails stay in the spool", code="mail.config"
            )
        password = None
        if config.username:
            assert config.password_file is not None  # the configuration checks it
            try:
                password = config.password_file.read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as exc:
                raise MailError(
                    f"{config.password_file}: cannot be read ({exc})", code="mail.password"
                ) from None
        try:
            client = smtplib.SMTP(
                config.relay_host,
                config.relay_port,
                local_hostname=socket.gethostname(),
                timeout=config.timeout,
            )
            self.client = client
            client.ehlo()
            if config.starttls:
                if not client.has_extn("starttls"):
                    raise MailError("the relay does not offer STARTTLS", code="mail.tls")
                cafile = str(config.ca_file) if config.ca_file else None
                client.starttls(context=ssl.create_default_context(cafile=cafile))
                client.ehlo()
            if config.username and password is not None:
                client.login(config.username, password)
        except BaseException as exc:
            self.__exit__(None, None, None)
            if isinstance(exc, MailError):
                raise
            raise _mail_error(exc) from None
        return self

    def send(self, data: bytes) -> None:
        assert self.client is not None
        message = BytesParser(policy=policy.SMTP).parsebytes(data)
        recipients = [a.addr_spec for a in message["To"].addresses]
        try:
            refused = self.client.sendmail(self.config.sender or "", recipients, data)
        except BaseException as exc:
            raise _mail_error(exc) from None
        if refused:
            raise MailError(f"the relay refused {len(refused)} recipient(s)", code="mail.partial")

    def __exit__(self, *exc: object) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()


def _mail_error(exc: BaseException) -> MailError:
    """An exception of smtplib, ssl or the socket as a :class:`MailError` with a stable code."""
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return MailError(f"the relay refused the login ({exc.smtp_code})", code="mail.auth")
    if isinstance(
        exc, smtplib.SMTPRecipientsRefused | smtplib.SMTPSenderRefused | smtplib.SMTPDataError
    ):
        return MailError(f"the relay refused the mail ({exc})", code="mail.refused")
    if isinstance(exc, ssl.SSLError):
        return MailError(f"TLS with the relay failed ({exc})", code="mail.tls")
    if isinstance(exc, TimeoutError | socket.timeout):
        return MailError("the relay did not answer in time", code="mail.timeout")
    if isinstance(exc, socket.gaierror):
        return MailError(f"the relay's name does not resolve ({exc})", code="mail.dns")
    if isinstance(exc, ConnectionError | OSError) and not isinstance(exc, smtplib.SMTPException):
        return MailError(f"cannot reach the relay ({exc})", code="mail.connect")
    if isinstance(exc, smtplib.SMTPException):
        return MailError(f"SMTP error ({exc})", code="mail.protocol")
    raise exc


@dataclass
class Delivery:
    sent: list[str] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (key, code, message)


def _claim(storage: Storage, key: str, now: datetime) -> bool:
    with storage.begin() as conn:
        return (
            conn.execute(
                mail_outbox.update()
                .where(
                    mail_outbox.c.mail_key == key,
                    mail_outbox.c.sent_at.is_(None),
                    sa.or_(
                        mail_outbox.c.last_attempt_at.is_(None),
                        mail_outbox.c.last_attempt_at < now - CLAIM,
                    ),
                )
                .values(attempts=mail_outbox.c.attempts + 1, last_attempt_at=now)
            ).rowcount
            == 1
        )


def _fail(storage: Storage, key: str, code: str) -> None:
    with storage.begin() as conn:
        conn.execute(
            mail_outbox.update()
            .where(mail_outbox.c.mail_key == key)
            .values(last_error=code, last_attempt_at=None)
        )


def deliver(storage: Storage, config: MailConfig, *, now: datetime) -> Delivery:
    """Hand every unsent mail of the outbox to the relay (oldest first); see the module docstring.

    Failure codes: ``mail.config`` (no relay configured), ``mail.password``,
    ``mail.connect``, ``mail.dns``, ``mail.timeout``, ``mail.tls``,
    ``mail.auth``, ``mail.refused``, ``mail.partial`` (some recipients
    refused: counted as sent), ``mail.protocol``, ``mail.spool_missing``.
    """
    result = Delivery()
    with storage.read() as conn:
        keys = [
            row.mail_key
            for row in conn.execute(
                sa.select(mail_outbox.c.mail_key)
                .where(mail_outbox.c.sent_at.is_(None))
                .order_by(mail_outbox.c.created_at, mail_outbox.c.mail_key)
            )
        ]
    if not keys:
        return result
    try:
        relay = SmtpRelay(config).__enter__()
    except MailError as error:
        with storage.begin() as conn:
            conn.execute(
                mail_outbox.update()
                .where(mail_outbox.c.mail_key.in_(keys))
                .values(attempts=mail_outbox.c.attempts + 1, last_error=error.code)
            )
        result.failed.extend((key, error.code, error.message) for key in keys)
        return result
    try:
        for key in keys:
            if not _claim(storage, key, now):
                continue  # another run has it
            with storage.read() as conn:
                name = conn.execute(
                    sa.select(mail_outbox.c.spool_name).where(mail_outbox.c.mail_key == key)
                ).scalar_one()
            path = config.spool_dir / name
            try:
                data = path.read_bytes()
            except OSError:
                _fail(storage, key, "mail.spool_missing")
                result.failed.append((key, "mail.spool_missing", f"{path} is missing"))
                continue
            code = None
            try:
                relay.send(data)
            except MailError as error:
                if error.code != "mail.partial":
                    _fail(storage, key, error.code)
                    result.failed.append((key, error.code, error.message))
                    continue
                code = error.code
            with storage.begin() as conn:
                conn.execute(
                    mail_outbox.update()
                    .where(mail_outbox.c.mail_key == key)
                    .values(sent_at=now, last_error=code)
                )
            path.unlink(missing_ok=True)
            result.sent.append(key)
    finally:
        relay.__exit__(None, None, None)
    return result
