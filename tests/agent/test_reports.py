"""Reports for staff: built from real files read and validated by common/."""

from __future__ import annotations

import io

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.agent.folders import REASONS
from appliance.agent.reports import (
    QUARANTINE_REASONS,
    local_rejection_report,
    quarantine_report,
    receipt_report,
    refusal_report,
    report_bytes,
)
from common import statement
from common.errors import NoticeFileError
from common.items import MUNICIPALITY, get_item
from common.noticefile import RowError, encode_notice_file, read_notice_file
from common.rejections import file_error_entry, rejected_entry, row_error_entry
from common.synthetic import SampleFactory
from common.validation import validate

CHIYODA = "131016"


def juki_line(text: str) -> bytes:
    """An ASCII line in Juki code (J+0020–007E equal ASCII, two bytes each)."""
    return (text + "\r\n").encode("utf-16-be")


@pytest.fixture(scope="module")
def bad_file() -> bytes:
    """Four good records, two made invalid, and one line with too few fields."""
    records = list(SampleFactory(seed=3).day_of(MUNICIPALITY, CHIYODA, 4))
    records[1] = records[1].with_values(event_date="20261399")
    records[2] = records[2].with_values(change_reason=None, change_fact="9")
    return encode_notice_file(MUNICIPALITY, records) + juki_line("C-short,A")


def check(data: bytes, name: str) -> tuple[int, list[dict]]:
    """What the agent's local check does: read, validate, collect rejected entries."""
    reader = read_notice_file(io.BytesIO(data), name=name)
    rejected = []
    rows = 0
    for row in reader:
        rows += 1
        if isinstance(row, RowError):
            rejected.append(row_error_entry(row))
        else:
            problems = validate(row)
            if problems:
                rejected.append(rejected_entry(reader.stats.lines, row.record_id, problems))
    return rows, rejected


def test_local_rejection_lists_every_bad_record(bad_file: bytes) -> None:
    rows, rejected = check(bad_file, "notice.csv")
    assert rows == 5 and [entry["line"] for entry in rejected] == [3, 4, 6]
    text = local_rejection_report(
        "notice.csv", rejected=rejected, records=rows, checked_at="2026-11-27 18:05"
    )
    assert "ファイル名: notice.csv" in text
    assert "チェック日時: 2026-11-27 18:05" in text
    assert "送信していません" in text
    assert "レコード数: 5 件（うち誤りのあるレコード 3 件）" in text
    for entry in rejected:
        assert f"{entry['line']} 行目" in text
        if entry["record_id"]:
            assert f"レコード番号 {entry['record_id']}" in text
        for problem in entry["problems"]:
            assert problem["message"] in text
            assert f"（コード: {problem['code']}）" in text
            if problem["item"]:
                assert get_item(problem["item"]).name_ja in text
    date = get_item("event_date")
    assert f"項目 {date.name_ja}（event_date）" in text
    assert "row.columns" in text  # the short line
    assert "■ 次にすること" in text and "outbox" in text
    assert text.endswith("\n") and not text.endswith("\n\n")


def test_a_file_that_cannot_be_read(bad_file: bytes) -> None:
    with pytest.raises(NoticeFileError) as caught:
        check(b"renkei-municipality-notice-v1,pattern\r\n", "utf8.csv")
    entry = file_error_entry(caught.value)
    assert entry["code"] == "file.encoding"
    text = local_rejection_report("utf8.csv", file_error=entry)
    assert caught.value.message_ja in text
    assert "（コード: file.encoding）" in text
    assert "renkei-format encode" in text
    with pytest.raises(NoticeFileError) as caught:
        check(bad_file[:-3], "cut.csv")
    text = local_rejection_report("cut.csv", file_error=file_error_entry(caught.value))
    assert "もう一度コピー" in text


def receipt(**body) -> dict:
    base = {
        "type": "municipality-receipt",
        "upload_id": "up_0123456789abcdef",
        "lasdec": CHIYODA,
        "file_name": "notice.csv",
        "sha256": "0" * 64,
        "size": 100,
        "received_at": "2026-11-27T09:05:00Z",
        "records": 0,
        "accepted": [],
        "duplicates": [],
        "rejected": [],
        "file_error": None,
    }
    return statement.sign(base | body, Ed25519PrivateKey.generate())


def test_receipt_with_rejected_records(bad_file: bytes) -> None:
    _, rejected = check(bad_file, "notice.csv")
    signed = receipt(records=5, accepted=["C1", "C2"], duplicates=[], rejected=rejected)
    text = receipt_report("notice.csv", signed)
    assert "受付日時: 2026-11-27 18:05:00（日本時間）" in text  # the receipt's UTC, in Japan time
    assert "受付番号: up_0123456789abcdef" in text
    assert "受付: 2 件 / 重複（以前に受付済み）: 0 件 / 受付できず: 3 件" in text
    for entry in rejected:
        assert f"{entry['line']} 行目" in text
    assert "直したレコードだけ" in text
    assert receipt_report("notice.csv", signed["statement"]) == text  # the body alone


def test_receipt_all_accepted_and_duplicates() -> None:
    text = receipt_report("a.csv", receipt(records=3, accepted=["a", "b"], duplicates=["c"]))
    assert "すべてのレコードを受け付けました" in text
    assert "受付: 2 件 / 重複（以前に受付済み）: 1 件 / 受付できず: 0 件" in text
    assert "次にすること" not in text


def test_receipt_with_a_file_error() -> None:
    error = {
        "code": "file.direction",
        "line": 1,
        "message": "法務省通知のファイルです",
        "message_en": "x",
    }
    text = receipt_report("m.csv", receipt(file_error=error))
    assert "ファイル全体を受け付けませんでした" in text
    assert "理由: 法務省通知のファイルです（1 行目）" in text
    assert "inbox フォルダから取り出すだけ" in text


def test_conflicting_record_from_the_server() -> None:
    conflict = {
        "line": 2,
        "record_id": "C-1",
        "problems": [
            {
                "code": "record.conflict",
                "item": None,
                "column": "record_id",
                "message": "レコード番号 C-1 は以前の送信で既に異なる内容で受け付けています。",
                "message_en": "…",
            }
        ],
    }
    text = receipt_report("a.csv", receipt(records=1, rejected=[conflict]))
    assert "・列 record_id" in text
    assert "既に異なる内容で受け付けています" in text


@pytest.mark.parametrize("code", sorted(REASONS))
def test_refusal_reports(code: str) -> None:
    text = refusal_report("bad.csv", code, detail="some detail", checked_at="2026-11-27 18:00")
    assert REASONS[code][1] in text
    assert f"（コード: {code}、some detail）" in text
    assert "rejected フォルダに移してあります" in text
    if code.startswith("name."):
        assert "ファイル名を変えて" in text
    else:
        assert "ファイルを分けて" in text


def test_content_cannot_break_the_layout() -> None:
    entry = {
        "line": 2,
        "record_id": "evil\r\nrecord",
        "problems": [{"code": "x", "item": "no_such_item", "column": None, "message": "a\nb"}],
    }
    text = local_rejection_report("a\nb.csv", rejected=[entry], records=1)
    lines = text.split("\n")
    assert "ファイル名: a\\u000ab.csv" in lines
    assert "b.csv" not in lines and "record" not in lines and "b" not in lines
    assert "項目 no_such_item" in text


def test_long_lists_are_cut() -> None:
    entries = [
        {"line": n, "record_id": f"C{n}", "problems": [{"code": "x", "message": "m"}]}
        for n in range(2, 12)
    ]
    text = local_rejection_report("a.csv", rejected=entries, records=10, max_listed=4)
    assert "[4] 5 行目" in text and "[5]" not in text
    assert "ほか 6 件" in text


@pytest.mark.parametrize("reason", [*sorted(QUARANTINE_REASONS), "batch.something_new"])
def test_quarantine_report_in_english_and_japanese(reason: str) -> None:
    text = quarantine_report(
        "b_0042",
        reason=reason,
        detail="expected 1234 bytes",
        sequence=42,
        business_date="2026-11-27",
        expected_sha256="a" * 64,
        actual_sha256="b" * 64,
        size=1000,
        path="/var/lib/renkei/quarantine/b_0042.csv",
        detected_at="2026-11-27 18:10",
    )
    english, japanese = QUARANTINE_REASONS.get(reason, (reason, reason))
    for fragment in (
        "b_0042",
        "Sequence:  42",
        "連番:           42",
        "2026-11-27",
        "a" * 64,
        "b" * 64,
        "1000",
        "/var/lib/renkei/quarantine/b_0042.csv",
        english,
        japanese,
        f"[{reason}]",
        "expected 1234 bytes",
        "NOT placed in the inbox and NOT acknowledged",
        "inbox フォルダに置いていません",
        "ヘルプデスク",
    ):
        assert fragment in text, fragment


def test_quarantine_report_with_the_minimum() -> None:
    text = quarantine_report("b_1", reason="batch.signature")
    assert "Sequence" not in text and "Technical" not in text
    assert QUARANTINE_REASONS["batch.signature"][1] in text


def test_report_bytes_for_windows_notepad() -> None:
    data = report_bytes("一行目\n二行目\r\n三行目\n")
    assert data.startswith(b"\xef\xbb\xbf")
    assert data.count(b"\r\n") == 3 and b"\r\r" not in data
    assert data.decode("utf-8-sig").replace("\r\n", "\n") == "一行目\n二行目\n三行目\n"
