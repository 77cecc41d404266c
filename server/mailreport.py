"""``renkei-server report``: the morning mails (spec §2.2.1 ④) — spooled first, so none is lost.

Each morning a timer runs the report for the previous business day:

* one **summary** to the operators (``mail.operators``): counts, the units
  that have not fetched their batches, enrolled units that sent nothing that
  day, the units with rejected records, clocks off and silent terminals;
* one mail **per municipality with rejected records** (or a file error), in
  Japanese, to its contact address (``mail.contacts_file``, CSV
  ``lasdec,address``).  It names line, record id, item and problem code —
  never the values: messages of the validator quote the bad value (a birth
  date, a card number, a character of a name) and mail is not the place for
  residents' data.  Staff read the full reasons in the report the terminal
  filed in ``rejected/``.

Delivery is at-least-once and survives a relay that is down:

1. every mail of the day is written to ``mail.spool_dir`` (atomically, one
   ``.eml`` file each) and recorded in the ``mail_outbox`` table under a key
   (``<date>/summary``, ``<date>/<lasdec>``) — a second run for the same day
   makes no new mail;
2. then every unsent mail in the outbox, of this day or earlier ones, is
   handed to the relay; one accepted by the relay is marked sent and its file
   removed; one that failed stays, with the error's code, for the next run.

A crash between the relay's "250 accepted" and the mark sends that mail once
more next time; a stable Message-ID lets mail clients fold the two.  A run
claims each mail before sending it, so two runs at once do not both send it.
"""

from __future__ import annotations

import csv
import email.utils
import io
import json
import smtplib
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from common import lasdec as lasdec_codes
from common.atomicwrite import write_bytes
from common.items import UnknownItemError, get_item

from .config import MailConfig
from .errors import ServerError
from .status import server_status
from .storage import TOKYO, Storage, mail_outbox, uploads

__all__ = [
    "ContactsError",
    "MailError",
    "ReportRun",
    "build_mails",
    "deliver",
    "gather",
    "load_contacts",
    "run_report",
    "spool",
]

#: Longest list in the summary before "… and N more" (the dashboard has the rest).
LIST_LIMIT = 200
#: A mail claimed by a run is not taken by another for this long (a run that died frees it).
CLAIM = timedelta(minutes=10)
_PROBLEM_KINDS = {
    "date": "日付が正しくありません",
    "code": "コードが定義されていません",
    "lasdec": "地方公共団体コードが正しくありません",
    "card_number": "在留カード等の番号の形式が正しくありません",
    "card": "在留カード等の区分と番号がそろっていません",
    "text": "使用できない文字（制御文字・住基統一文字コードにない文字）があります",
    "name": "氏名の項目の組み合わせが正しくありません",
    "address": "住所の項目の組み合わせが正しくありません",
    "period": "在留期間の形式が正しくありません",
    "record": "レコード番号に問題があります（形式、または以前の送信と内容が異なる）",
    "record_id": "レコード番号の形式が正しくありません",
    "pattern": "連携パターンと項目が合っていません",
    "item": "項目の過不足があります",
    "change_fact": "異動事実に問題があります",
    "change_reason": "異動事由に問題があります",
    "householder": "世帯主の項目に問題があります",
    "row": "行を読み取れません（列の数・形式）",
    "column": "列に問題があります",
    "file": "ファイル全体を読み取れません",
}


class ContactsError(ServerError):
    """The contacts file cannot be read; the message names the line."""

    code = "mail.contacts"


class MailError(ServerError):
    """A mail could not be handed to the relay; ``code`` is ``mail.*`` (see :func:`deliver`)."""

    code = "mail.error"


def load_contacts(path: Path) -> dict[str, str]:
    """``lasdec -> address`` from a UTF-8 CSV with the header ``lasdec,address``."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ContactsError(f"{path}: cannot be read ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not {"lasdec", "address"} <= set(reader.fieldnames):
        raise ContactsError(f"{path}: the first line must be the header lasdec,address")
    contacts: dict[str, str] = {}
    for number, row in enumerate(reader, start=2):
        code, address = (row.get("lasdec") or "").strip(), (row.get("address") or "").strip()
        if not lasdec_codes.is_valid(code):
            raise ContactsError(f"{path} line {number}: {code!r} is not a local government code")
        if "@" not in address or any(ch in address for ch in ' <>,;"') or not address.isascii():
            raise ContactsError(f"{path} line {number}: {address!r} is not a mail address")
        contacts[code] = address
    return contacts


# --- what happened on the day -------------------------------------------------------------------


@dataclass
class UnitDay:
    """One receiving unit's facts for the report."""

    lasdec: str
    name: str
    terminals: int
    pending: int
    oldest_pending: date | None
    last_contact: datetime | None
    clock_skew: float | None
    silent: bool
    skewed: bool
    uploads: int = 0
    rejected: int = 0
    file_errors: int = 0
    rejected_uploads: list[dict] = field(default_factory=list)  # receipt statements


@dataclass
class DayReport:
    day: date
    now: datetime
    latest_closed: date | None
    units: list[UnitDay]

    @property
    def enrolled(self) -> list[UnitDay]:
        return [u for u in self.units if u.terminals]

    @property
    def not_fetched(self) -> list[UnitDay]:
        return [
            u
            for u in self.enrolled
            if u.oldest_pending is not None and u.oldest_pending <= self.day
        ]

    @property
    def not_uploaded(self) -> list[UnitDay]:
        return [u for u in self.enrolled if not u.uploads]

    @property
    def with_rejections(self) -> list[UnitDay]:
        return [u for u in self.units if u.rejected or u.file_errors]


def gather(storage: Storage, day: date, *, now: datetime) -> DayReport:
    """The facts of ``day`` (uploads received that Japanese calendar day) and the state at ``now``."""
    status = server_status(storage, now=now)
    units = {
        m.lasdec: UnitDay(
            m.lasdec,
            m.name,
            m.terminals,
            m.pending,
            m.oldest_pending,
            m.last_contact,
            m.clock_skew,
            m.silent(now),
            m.skewed(),
        )
        for m in status.municipalities
    }
    start = datetime.combine(day, time(0), tzinfo=TOKYO)
    query = (
        sa.select(uploads.c.lasdec, uploads.c.rejected, uploads.c.file_error, uploads.c.receipt)
        .where(uploads.c.received_at >= start, uploads.c.received_at < start + timedelta(days=1))
        .order_by(uploads.c.received_at)
    )
    with storage.read() as conn:
        for row in conn.execute(query):
            unit = units.get(row.lasdec)
            if unit is None:
                continue
            unit.uploads += 1
            unit.rejected += row.rejected
            unit.file_errors += 1 if row.file_error else 0
            if row.rejected or row.file_error:
                unit.rejected_uploads.append(json.loads(row.receipt)["statement"])
    return DayReport(day, now, status.latest_closed, list(units.values()))


# --- the mails ----------------------------------------------------------------------------------


def _jst(instant: datetime | None) -> str:
    return instant.astimezone(TOKYO).strftime("%Y-%m-%d %H:%M") if instant else "-"


def _listing(units: list[UnitDay], line) -> list[str]:  # type: ignore[no-untyped-def]
    lines = [line(u) for u in units[:LIST_LIMIT]]
    if len(units) > LIST_LIMIT:
        lines.append(f"  … ほか {len(units) - LIST_LIMIT} 団体（運用画面で確認してください）")
    return lines or ["  なし"]


def summary_text(report: DayReport, contacts: dict[str, str], dashboard_url: str | None) -> str:
    day = report.day.isoformat()
    rejected_records = sum(u.rejected for u in report.units)
    file_errors = sum(u.file_errors for u in report.units)
    files = sum(u.uploads for u in report.units)
    lines = [
        f"市町村連携 日次報告 {day}（業務日）",
        f"作成 {_jst(report.now)}（日本時間）",
        "",
        "■ 概要",
        f"受信単位 {len(report.units)}・端末登録済 {len(report.enrolled)}・"
        f"未接続 {len(report.units) - len(report.enrolled)}",
        f"最終締め {report.latest_closed.isoformat() if report.latest_closed else 'なし'}・"
        f"未受領の団体 {len(report.not_fetched)}",
        f"{day} の受信: ファイル {files}・不備レコード {rejected_records}・ファイルエラー {file_errors}",
        f"送信のなかった団体（端末登録済）: {len(report.not_uploaded)}",
        "",
        f"■ 未受領（{day} までのバッチを受領していない団体）",
        *_listing(
            report.not_fetched,
            lambda u: (
                f"  {u.lasdec} {u.name}  未受領 {u.pending}（最古 {u.oldest_pending}）"
                f"  最終接続 {_jst(u.last_contact)}"
            ),
        ),
        "",
        f"■ 送信なし（{day} に市町村通知を受信していない団体）",
        *_listing(report.not_uploaded, lambda u: f"  {u.lasdec} {u.name}"),
        "",
        "■ 不備のあった団体",
        *_listing(
            report.with_rejections,
            lambda u: (
                f"  {u.lasdec} {u.name}  不備 {u.rejected} 件・ファイルエラー {u.file_errors} 件"
                f"  連絡先 {contacts.get(u.lasdec, '未登録（通知できません）')}"
            ),
        ),
        "",
        "■ 端末の時刻ずれ・長期無通信",
        *_listing(
            [u for u in report.enrolled if u.skewed or u.silent],
            lambda u: (
                f"  {u.lasdec} {u.name}  時刻差 "
                f"{f'{u.clock_skew:+.1f} 秒' if u.clock_skew is not None else '-'}"
                f"  最終接続 {_jst(u.last_contact)}"
            ),
        ),
        "",
    ]
    if dashboard_url:
        lines.append(f"詳細は運用画面で確認してください: {dashboard_url}")
    lines.append("このメールは renkei-server report が自動送信しています。")
    return "\n".join(lines) + "\n"


def _problem_line(problem: dict) -> str:
    code = str(problem.get("code") or "")
    kind = _PROBLEM_KINDS.get(code.split(".", 1)[0], "内容に不備があります")
    label = problem.get("column") or "-"
    if problem.get("item"):
        try:
            label = (
                f"{get_item(problem['item']).name_ja}（{problem.get('column') or problem['item']}）"
            )
        except UnknownItemError:
            pass
    return f"{label}: {kind} [{code}]"


def municipality_text(unit: UnitDay, day: date) -> str:
    """The Japanese mail to a municipality about its rejected records, without any values."""
    lines = [
        f"{unit.name} 市町村通知ご担当者様",
        "",
        f"{day.isoformat()} に受信した市町村通知のファイルに、受け付けられなかったレコードがありました。",
        "該当するレコードを住基システムで確認・修正し、新しいファイルとして送信してください。",
        "理由の詳細（値を含む）は、情報連携端末の「rejected」フォルダにある報告書に記載されています。",
        "このメールには、氏名・生年月日・在留カード等の番号などの個人情報は記載していません。",
        "",
    ]
    for receipt in unit.rejected_uploads:
        received = datetime.fromisoformat(receipt["received_at"].replace("Z", "+00:00"))
        lines.append(
            f"■ 受付番号 {receipt['upload_id']}（受信 {_jst(received)}、"
            f"{receipt.get('records', 0)} 件中 受理 {len(receipt.get('accepted', []))} 件・"
            f"不備 {len(receipt.get('rejected', []))} 件）"
        )
        error = receipt.get("file_error")
        if error:
            where = f"{error['line']} 行目: " if error.get("line") else ""
            kind = _PROBLEM_KINDS.get(str(error.get("code", "")).split(".", 1)[0], "")
            lines.append(
                f"  ファイルエラー {where}{kind} [{error.get('code')}]（何も受理していません）"
            )
        for entry in receipt.get("rejected", []):
            record = entry.get("record_id") or "（番号なし）"
            lines.append(f"  {entry.get('line') or '-'} 行目 レコード番号 {record}")
            for problem in entry.get("problems", []):
                lines.append(f"    - {_problem_line(problem)}")
        lines.append("")
    lines.append("法務省 市町村連携 運用担当（このメールは自動送信です）")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Mail:
    key: str  # mail_outbox.mail_key
    kind: str  # summary | municipality
    lasdec: str | None
    message: EmailMessage

    @property
    def spool_name(self) -> str:
        return self.key.replace("-", "").replace("/", "-") + ".eml"


def _message(
    config: MailConfig, key: str, to: Iterable[str], subject: str, body: str, now: datetime
) -> EmailMessage:
    sender = config.sender or "renkei-server@localhost.invalid"
    message = EmailMessage(policy=policy.SMTP)
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = email.utils.format_datetime(now.astimezone(TOKYO))
    domain = sender.rpartition("@")[2]
    stamp = now.strftime("%Y%m%d%H%M%S")
    message["Message-ID"] = f"<{key.replace('/', '.')}.{stamp}.renkei@{domain}>"
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies
    message.set_content(body, charset="utf-8", cte="base64")  # 7-bit clean for any relay
    return message


def build_mails(report: DayReport, config: MailConfig, contacts: dict[str, str]) -> list[Mail]:
    """The day's mails: the operators' summary (when there are operators) and one per
    municipality with rejections that has a contact address."""
    day = report.day.isoformat()
    mails = []
    if config.operators:
        flags = []
        if report.not_fetched:
            flags.append(f"未受領 {len(report.not_fetched)}")
        if report.with_rejections:
            flags.append(f"不備 {len(report.with_rejections)}")
        subject = f"【市町村連携】日次報告 {day}" + (f"（{'・'.join(flags)}）" if flags else "")
        key = f"{day}/summary"
        body = summary_text(report, contacts, config.dashboard_url)
        mails.append(
            Mail(
                key,
                "summary",
                None,
                _message(config, key, config.operators, subject, body, report.now),
            )
        )
    for unit in report.with_rejections:
        address = contacts.get(unit.lasdec)
        if address is None:
            continue
        key = f"{day}/{unit.lasdec}"
        subject = f"【市町村連携】市町村通知に不備があります（{day} {unit.name}）"
        body = municipality_text(unit, report.day)
        mails.append(
            Mail(
                key,
                "municipality",
                unit.lasdec,
                _message(config, key, [address], subject, body, report.now),
            )
        )
    return mails


# --- spool and delivery --------------------------------------------------------------------------


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


@dataclass
class ReportRun:
    day: date
    created: list[str]
    known: list[str]
    delivery: Delivery
    mails: list[Mail]
    unreachable: list[str]  # municipalities with rejections but no contact address
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        return not self.delivery.failed

    def to_json(self) -> dict:
        return {
            "business_date": self.day.isoformat(),
            "dry_run": self.dry_run,
            "created": self.created,
            "already_made": self.known,
            "sent": self.delivery.sent,
            "failed": [
                {"mail_key": k, "code": c, "message": m} for k, c, m in self.delivery.failed
            ],
            "no_contact": self.unreachable,
            "mails": [
                {
                    "mail_key": m.key,
                    "to": str(m.message["To"]),
                    "subject": str(m.message["Subject"]),
                }
                for m in self.mails
            ],
        }


def run_report(
    storage: Storage, config: MailConfig, *, day: date, now: datetime, dry_run: bool = False
) -> ReportRun:
    """Build the day's mails, spool the new ones, deliver everything unsent (module docstring).

    ``dry_run`` builds the mails and changes nothing.  Raises ContactsError
    when the contacts file cannot be read (nothing is spooled then).
    """
    contacts = load_contacts(config.contacts_file) if config.contacts_file else {}
    report = gather(storage, day, now=now)
    mails = build_mails(report, config, contacts)
    unreachable = [u.lasdec for u in report.with_rejections if u.lasdec not in contacts]
    if dry_run:
        return ReportRun(day, [], [], Delivery(), mails, unreachable, dry_run=True)
    created, known = spool(storage, config.spool_dir, mails, now=now)
    delivery = deliver(storage, config, now=now)
    return ReportRun(day, created, known, delivery, mails, unreachable)
