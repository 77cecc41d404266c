"""The short table each scenario prints: what it did, what happened, what was checked.

:func:`emit` prints the table (shown with ``pytest -s``, or ``-rP`` for passed
tests) and attaches it to the test's report, so ``tests/e2e/conftest.py``
repeats every table in the terminal summary — also under xdist, where a
worker's prints are not shown.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import pytest

__all__ = ["PROPERTY", "emit", "table"]

PROPERTY = "e2e-table"


#: A cell wider than this wraps onto continuation lines (at ", " or a space).
WRAP = 70


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table with a title line; cells are str()-ed, columns padded, long cells wrapped."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    wrapped = [[_wrap(cell) for cell in row] for row in cells]
    widths = [max(_width(part) for row in wrapped for part in row[i]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = [title, line]
    for number, row in enumerate(wrapped):
        for depth in range(max(len(parts) for parts in row)):
            parts = [cell[depth] if depth < len(cell) else "" for cell in row]
            padded = (p + " " * (w - _width(p)) for p, w in zip(parts, widths, strict=True))
            out.append("  ".join(padded).rstrip())
        if number == 0:
            out.append(line)
    return "\n".join(out)


def _wrap(text: str) -> list[str]:
    lines: list[str] = []
    while _width(text) > WRAP:
        cut = max(text.rfind(", ", 0, WRAP), text.rfind(" ", 0, WRAP))
        if cut <= 0:
            break
        lines.append(text[: cut + (1 if text[cut] == "," else 0)])
        text = text[cut + 1 :].lstrip()
    return [*lines, text]


def _width(text: str) -> int:
    """Columns on a terminal: wide (CJK) characters take two, combining marks none."""
    return sum(
        0
        if unicodedata.combining(c) or 0xE0100 <= ord(c) <= 0xE01EF
        else 2
        if unicodedata.east_asian_width(c) in ("W", "F")
        else 1
        for c in text
    )


def emit(request: pytest.FixtureRequest, title: str, header: Sequence[str], rows) -> str:  # type: ignore[no-untyped-def]
    text = table(title, header, rows)
    print("\n" + text)
    request.node.user_properties.append((PROPERTY, text))
    return text
