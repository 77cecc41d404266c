"""Reports for people: what happened to a file, and what to do next.

Municipal staff read ``<name>.report.txt`` next to a file in sent/ or
rejected/; they are not engineers, so the reports are in plain Japanese, name
the file, each bad record by line and record id, the item and the reason, and
end with what to do next.  Codes (``item.missing`` …) are shown in brackets
for the help desk.  A quarantined batch's report is for the technician or help
desk as much as for staff, so it is in English and Japanese.

Everything here is pure: functions from values to text.  A record problem has
one shape wherever it comes from — the entries of a server receipt's
``rejected`` list — so the local check builds the same entries with
:func:`row_error_entry` and :func:`rejected_entry`, and one renderer serves
both.  Write the text with :func:`report_bytes`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from common.items import UnknownItemError, get_item

from .folders import REASONS

__all__ = [
    "JST",
    "MAX_LISTED",
    "QUARANTINE_REASONS",
    "local_rejection_report",
    "quarantine_report",
    "receipt_report",
    "refusal_report",
    "report_bytes",
]

#: Records listed in one report at most; the receipt (sent/) has them all.
MAX_LISTED = 1000

_RULE = "=" * 60
JST = timezone(timedelta(hours=9), "JST")
#: Shown escaped in reports: control characters, line and paragraph separators, direction
#: controls (a name with U+202E would read backwards), and lone surrogates (bytes of a file
#: name that are not UTF-8; no UTF-8 report can hold them).
_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


# --- rendering helpers -----------------------------------------------------------------------


def _clean(value: object) -> str:
    """One-line text: control characters and line breaks from file content made visible;
    a byte of a name that is not UTF-8 as ``\\xNN``."""
    return _CONTROL.sub(_visible, str(value))


def _visible(found: re.Match[str]) -> str:
    point = ord(found.group())
    if 0xDC80 <= point <= 0xDCFF:  # os.fsdecode's stand-in for the byte point - 0xDC00
        return f"\\x{point - 0xDC00:02x}"
    return f"\\u{point:04x}"


def _when(value: str | datetime | None) -> str | None:
    """A time for staff: in Japan time when it carries a zone (receipts are in UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return _clean(value)
        if parsed.tzinfo is None:
            return _clean(value)
        value = parsed
    if value.tzinfo is not None:
        return value.astimezone(JST).strftime("%Y-%m-%d %H:%M:%S") + "（日本時間）"
    return value.isoformat(" ", "seconds")


def _item_label(item: object) -> str | None:
    if not item:
        return None
    try:
        found = get_item(str(item))
    except (UnknownItemError, KeyError):
        return _clean(item)
    return f"{found.name_ja}（{found.item_id}）"


def _records_section(rejected: Sequence[Mapping[str, Any]], limit: int) -> list[str]:
    lines: list[str] = []
    for number, entry in enumerate(rejected[:limit], start=1):
        where = f"{entry['line']} 行目" if entry.get("line") else "行不明"
        record_id = entry.get("record_id")
        who = f"レコード番号 {_clean(record_id)}" if record_id else "レコード番号なし"
        lines.append(f"[{number}] {where}　{who}")
        for problem in entry.get("problems") or ():
            label = _item_label(problem.get("item"))
            column = problem.get("column")
            head = "・"
            if label:
                head += f"項目 {label}"
                if column:
                    head += f"　列 {_clean(column)}"
            elif column:
                head += f"列 {_clean(column)}"
            else:
                head += "レコード全体"
            lines.append(f"    {head}")
            lines.append(f"      {_clean(problem.get('message') or problem.get('message_en'))}")
            lines.append(f"      （コード: {_clean(problem.get('code'))}）")
        lines.append("")
    if len(rejected) > limit:
        lines.append(
            f"……ほか {len(rejected) - limit} 件は省略しました。上の誤りを直して送り直すと、"
            "残りの誤りも報告されます。"
        )
        lines.append("")
    return lines


#: What to do next when a whole file is refused, by code; the default fits any other.
_FILE_ADVICE: dict[str, str] = {
    "file.empty": "ファイルが空です。住民記録システムからもう一度出力してください。",
    "file.encoding": "住基統一文字コードで出力し直してください。"
    "UTF-8 のファイルは renkei-format encode で変換できます。",
    "file.bom": "先頭に BOM を付けない設定で出力し直してください。",
    "file.version": "この端末が対応している形式の版で出力し直してください。"
    "出力する側のシステムの更新が必要なときは、システムの業者に相談してください。",
    "file.header": "1行目（見出し）が通知ファイルの形式ではありません。"
    "市町村通知のファイルかどうか確認してください。",
    "file.direction": "法務省通知のファイルです。outbox フォルダに置くのは市町村通知のファイルです。"
    "法務省通知は inbox フォルダから取り出すだけで、送り返す必要はありません。",
    "file.truncated": "ファイルが途中で切れています。コピーが途中で止まった可能性があります。"
    "元のファイルからもう一度コピーしてください。",
    "file.odd_length": "ファイルが途中で切れているか、住基統一文字コードではありません。"
    "元のファイルからもう一度コピーし、それでも同じときは出力し直してください。",
    "file.line_end": "改行コードを CR LF にして出力し直してください。",
    "file.long_line": "通知ファイルではないファイルの可能性があります。置いたファイルを確認してください。",
    "file.too_many_records": "レコードが多すぎます。ファイルを分けて、1つずつ outbox フォルダに置いてください。",
    "file.too_large": "ファイルが大きすぎます。ファイルを分けて、1つずつ outbox フォルダに置いてください。",
}
_NAME_ADVICE = (
    "ファイル名を変えて（半角英数字と - _ . だけの名前をおすすめします）、"
    "もう一度 outbox フォルダに置いてください。"
)
_DEFAULT_ADVICE = (
    "ファイルを作成したシステムで出力し直し、もう一度 outbox フォルダに置いてください。"
)
_HELPDESK = "分からないときは、この報告ファイルを添えてヘルプデスクへ連絡してください。"


def _advice(code: str) -> str:
    if code.startswith("name."):
        return _NAME_ADVICE
    return _FILE_ADVICE.get(code, _DEFAULT_ADVICE)


def _head(title: str, file_name: str, label: str, when: str | None) -> list[str]:
    lines = [title, _RULE, f"ファイル名: {_clean(file_name)}"]
    if when:
        lines.append(f"{label}: {when}")
    return lines


def _file_error_lines(file_error: Mapping[str, Any]) -> list[str]:
    line = file_error.get("line")
    where = f"（{line} 行目）" if line else ""
    return [
        f"理由: {_clean(file_error.get('message') or file_error.get('message_en'))}{where}",
        f"（コード: {_clean(file_error.get('code'))}）",
    ]


def _finish(lines: list[str]) -> str:
    return "\n".join(lines).rstrip("\n") + "\n"


# --- the reports -----------------------------------------------------------------------------


def local_rejection_report(
    file_name: str,
    *,
    rejected: Sequence[Mapping[str, Any]] = (),
    file_error: Mapping[str, Any] | None = None,
    records: int | None = None,
    checked_at: str | datetime | None = None,
    max_listed: int = MAX_LISTED,
) -> str:
    """Japanese report for a file the agent's own check refused; nothing of it was sent.

    ``rejected`` holds entries from :func:`row_error_entry` / :func:`rejected_entry`;
    ``file_error`` one from :func:`file_error_entry`; ``records`` the rows read.
    """
    lines = _head(
        "市町村通知ファイル 送信前チェックの結果", file_name, "チェック日時", _when(checked_at)
    )
    if file_error is not None:
        lines += ["結果: ファイル全体を読み取れないため、このファイルは送信していません。", ""]
        lines += _file_error_lines(file_error)
        lines += ["", "■ 次にすること", f"1. {_advice(str(file_error.get('code', '')))}"]
        lines += [f"2. {_HELPDESK}"]
        return _finish(lines)
    lines.append(
        "結果: 誤りのあるレコードがあるため、このファイルは送信していません（1 件も送っていません）。"
    )
    if records is not None:
        lines.append(f"レコード数: {records} 件（うち誤りのあるレコード {len(rejected)} 件）")
    lines += ["", f"■ 誤りのあるレコード（{len(rejected)} 件）", ""]
    lines += _records_section(rejected, max_listed)
    lines += [
        "■ 次にすること",
        "1. 上の各レコードを住民記録システムで確認し、誤りを直してください。",
        "2. ファイル全体を出力し直して、outbox フォルダに置いてください。",
        "   このファイルは rejected フォルダに移してあります（削除はしていません）。",
        f"3. {_HELPDESK}",
    ]
    return _finish(lines)


def refusal_report(
    file_name: str, problem: str, *, detail: str = "", checked_at: str | datetime | None = None
) -> str:
    """Japanese report for a file refused unread: a bad name or too large (``folders.REASONS``)."""
    japanese = REASONS.get(problem, (problem, problem))[1]
    lines = _head(
        "市町村通知ファイル 送信前チェックの結果", file_name, "チェック日時", _when(checked_at)
    )
    lines += [
        "結果: このファイルは送信していません。",
        "",
        f"理由: {japanese}",
        f"（コード: {_clean(problem)}{'、' + _clean(detail) if detail else ''}）",
        "",
        "■ 次にすること",
        f"1. {_advice(problem)}",
        "   このファイルは rejected フォルダに移してあります（削除はしていません）。",
        f"2. {_HELPDESK}",
    ]
    return _finish(lines)


def receipt_report(
    file_name: str, receipt: Mapping[str, Any], *, max_listed: int = MAX_LISTED
) -> str:
    """Japanese report on the server's receipt for a sent file: counts, refused records or
    the whole-file error, what to do next.

    ``receipt`` is the signed receipt (``{"statement": …, "signature": …}``) or its body.
    """
    body = receipt.get("statement", receipt)
    if not isinstance(body, Mapping):
        raise ValueError("a receipt body must be a JSON object")
    rejected: Sequence[Mapping[str, Any]] = body.get("rejected") or ()
    file_error = body.get("file_error")
    lines = _head(
        "市町村通知ファイル 受付結果のお知らせ",
        file_name,
        "受付日時",
        _when(body.get("received_at")),
    )
    if body.get("upload_id"):
        lines.append(f"受付番号: {_clean(body['upload_id'])}")
    if file_error:
        lines += [
            "結果: サーバがファイル全体を受け付けませんでした（1 件も登録されていません）。",
            "",
        ]
        lines += _file_error_lines(file_error)
        lines += ["", "■ 次にすること", f"1. {_advice(str(file_error.get('code', '')))}"]
        lines += [f"2. {_HELPDESK}"]
        return _finish(lines)
    accepted = len(body.get("accepted") or ())
    duplicates = len(body.get("duplicates") or ())
    records = body.get("records")
    if rejected:
        lines.append("結果: 受け付けできなかったレコードがあります。")
    else:
        lines.append("結果: すべてのレコードを受け付けました。")
    if records is not None:
        lines.append(f"レコード数: {records} 件")
    lines.append(
        f"  受付: {accepted} 件 / 重複（以前に受付済み）: {duplicates} 件 / 受付できず: {len(rejected)} 件"
    )
    if not rejected:
        return _finish(lines)
    lines += ["", f"■ 受け付けできなかったレコード（{len(rejected)} 件）", ""]
    lines += _records_section(rejected, max_listed)
    lines += [
        "■ 次にすること",
        "1. 上の各レコードを住民記録システムで確認し、誤りを直してください。",
        "2. 直したレコードだけを新しいファイルに出力し、outbox フォルダに置いてください。",
        "   受け付けたレコードは送り直す必要はありません"
        "（同じ内容をもう一度送っても、二重には登録されません）。",
        f"3. {_HELPDESK}",
    ]
    return _finish(lines)


#: Quarantine reasons: code -> (English, Japanese).  Others are shown by code and detail.
QUARANTINE_REASONS: dict[str, tuple[str, str]] = {
    "batch.hash_mismatch": (
        "the downloaded file's SHA-256 does not match the server's signed statement",
        "受信したファイルのハッシュ値（SHA-256）が、サーバの署名付き明細と一致しません",
    ),
    "batch.size_mismatch": (
        "the downloaded file's size does not match the server's signed statement",
        "受信したファイルの大きさが、サーバの署名付き明細と一致しません",
    ),
    "batch.signature": (
        "the server's signature on the batch statement is not valid for the pinned server key",
        "バッチ明細のサーバ署名が、登録済みのサーバ鍵で検証できません",
    ),
    "batch.manifest": (
        "the batch statement is malformed or names another municipality, batch or date",
        "バッチ明細の形式が正しくないか、別の市区町村・バッチ・日付を示しています",
    ),
    "batch.format": (
        "the file cannot be read as a ministry notice file",
        "ファイルを法務省通知のファイルとして読み取れません",
    ),
}


def quarantine_report(
    batch_id: str,
    *,
    reason: str,
    detail: str = "",
    sequence: int | None = None,
    business_date: str | None = None,
    expected_sha256: str | None = None,
    actual_sha256: str | None = None,
    size: int | None = None,
    path: str | None = None,
    detected_at: str | datetime | None = None,
) -> str:
    """English and Japanese report for a ministry batch that failed verification.

    Says what failed, that the batch was neither placed in the inbox nor
    acknowledged (so the server still offers it), and what to do.
    """
    english, japanese = QUARANTINE_REASONS.get(reason, (reason, reason))
    when = _when(detected_at)
    facts_en = [f"Batch:     {_clean(batch_id)}"]
    facts_ja = [f"バッチ:         {_clean(batch_id)}"]
    if sequence is not None:
        facts_en.append(f"Sequence:  {sequence}")
        facts_ja.append(f"連番:           {sequence}")
    if business_date:
        facts_en.append(f"Date:      {_clean(business_date)}")
        facts_ja.append(f"業務日:         {_clean(business_date)}")
    if when:
        facts_en.append(f"Detected:  {when}")
        facts_ja.append(f"検出日時:       {when}")
    tech = []
    if expected_sha256:
        tech.append(f"Expected SHA-256 / 明細の SHA-256:   {_clean(expected_sha256)}")
    if actual_sha256:
        tech.append(f"Received SHA-256 / 受信した SHA-256: {_clean(actual_sha256)}")
    if size is not None:
        tech.append(f"Received bytes / 受信したバイト数:   {size}")
    if path:
        tech.append(f"Kept at / 保管場所: {_clean(path)}")
    lines = [
        "Quarantined ministry notice batch / 検証に失敗した法務省通知（隔離）",
        _RULE,
        "[English]",
        *facts_en,
        f"Reason:    {english} [{_clean(reason)}]",
    ]
    if detail:
        lines.append(f"Detail:    {_clean(detail)}")
    lines += [
        "",
        "The batch was NOT placed in the inbox and NOT acknowledged: the server still offers it.",
        "What to do: nothing at once — the next run downloads it again.  If this report comes",
        "again for the same batch, call the help desk and give them this report.  Do not copy",
        "the quarantined file into the inbox by hand: its content cannot be trusted.",
        "",
        "[日本語]",
        *facts_ja,
        f"理由:           {japanese} [{_clean(reason)}]",
    ]
    if detail:
        lines.append(f"詳細:           {_clean(detail)}")
    lines += [
        "",
        "このバッチは inbox フォルダに置いていません。サーバへの受領の連絡もしていないため、",
        "サーバには未受信として残っています。",
        "次にすること: すぐにすることはありません。次回の連携で自動的にもう一度受信します。",
        "同じバッチで繰り返しこの報告が出るときは、この報告を添えてヘルプデスクへ連絡してください。",
        "隔離したファイルを手で inbox フォルダへコピーしないでください（内容が信頼できません）。",
    ]
    if tech:
        lines += ["", "[Technical / 技術情報]", *tech]
    return _finish(lines)


def report_bytes(text: str) -> bytes:
    """The bytes of a report file: UTF-8 with a BOM and CR LF line ends.

    The BOM and CR LF are for Windows Notepad on the municipality's PCs:
    older versions take a file without a BOM for Shift_JIS and garble it.
    """
    text = "\ufeff" + text.replace("\r\n", "\n").replace("\n", "\r\n")
    return text.encode("utf-8", "backslashreplace")  # a stray surrogate cannot fail a report
