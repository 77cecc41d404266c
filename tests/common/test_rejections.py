"""The receipt's entries for refused records and files: one shape for server and terminal."""

from __future__ import annotations

from common.errors import NoticeFileError
from common.noticefile import RowError
from common.rejections import file_error_entry, rejected_entry, row_error_entry
from common.validation import Problem


def test_row_error_entry():
    row = RowError(7, "row.columns", "3 fields, expected 90", "項目の数が 3 個です", record_id="C1")
    assert row_error_entry(row) == {
        "line": 7,
        "record_id": "C1",
        "problems": [
            {
                "code": "row.columns",
                "item": None,
                "column": None,
                "message": "項目の数が 3 個です",
                "message_en": "3 fields, expected 90",
            }
        ],
    }


def test_rejected_entry_lists_every_problem():
    problems = [
        Problem("date.invalid", "birth_date", "birth_date", "日付が正しくありません", "bad date"),
        Problem("code.unknown", "sex", "sex", "コードがありません", "unknown code"),
    ]
    entry = rejected_entry(4, "", problems)
    assert entry["line"] == 4 and entry["record_id"] is None
    assert [p["code"] for p in entry["problems"]] == ["date.invalid", "code.unknown"]
    assert entry["problems"][0] == problems[0].to_json()


def test_file_error_entry():
    error = NoticeFileError("cut", message_ja="切れています", code="file.truncated", line=9)
    assert file_error_entry(error) == {
        "code": "file.truncated",
        "line": 9,
        "message": "切れています",
        "message_en": "<stream>:9: cut",
    }
