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
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from email import policy
from email.message import EmailMessage
from pathlib import Path

import sqlalchemy as sa

from common import lasdec as lasdec_codes
from common.items import UnknownItemError, get_item

from .config import MailConfig
from .errors import ServerError
from .mailspool import Delivery, Mail, MailError, deliver, spool
from .status import server_status
from .storage import TOKYO, Storage, uploads

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
