"""How a refused record or file is written down: the entries of a receipt's ``rejected`` list.

The server puts these in the signed receipt it returns for an upload (and in
an import's report); the terminal writes the same shapes when it refuses a
file before sending it, so one renderer serves both.  The shape is part of the
receipt contract (docs/api.md):

* a rejected entry: ``{"line", "record_id", "problems": [{"code", "item",
  "column", "message", "message_en"}, …]}`` — ``message`` in Japanese for
  staff, ``message_en`` for engineers;
* a file error: ``{"code", "line", "message", "message_en"}``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import NoticeFileError
from .noticefile import RowError
from .validation import Problem


def rejected_entry(
    line: int | None, record_id: str | None, problems: Iterable[Problem]
) -> dict[str, Any]:
    """A record that validation refused."""
    return {
        "line": line,
        "record_id": record_id or None,
        "problems": [problem.to_json() for problem in problems],
    }


def row_error_entry(row: RowError) -> dict[str, Any]:
    """A line that could not be read as a record, with its one problem."""
    return {
        "line": row.line,
        "record_id": row.record_id,
        "problems": [
            {
                "code": row.code,
                "item": None,
                "column": row.column,
                "message": row.message_ja,
                "message_en": row.message,
            }
        ],
    }


def file_error_entry(error: NoticeFileError) -> dict[str, Any]:
    """A file that cannot be read as a whole."""
    return {
        "code": error.code,
        "line": error.line,
        "message": error.message_ja,
        "message_en": error.message,
    }
