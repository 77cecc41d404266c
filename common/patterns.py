"""The 【別紙】 pattern tables: which items each event pattern carries, and how.

The spec's annex ("【別紙】連携パターン別連携項目") has one column per event
pattern — A…BG for ministry notices, A…AE and a…f for municipality notices —
and one row per item (rows 1-40 on the ministry sheets, 1-38 on the
municipality sheets).  A cell says whether the item is a *changed item* (●:
new and old value are sent), a *context item* (○: current value only), not
carried, or still being settled by the ministry ((調整中)/(整理中)).  Rows 1-5
describe the event itself: row 1 names the change fact (●修正, ●記載・修正・削除
…), row 5 says what the event date means (新在留カード交付年月日, 転入年月日 …).

The tables are data: ``patterns/ministry.csv`` and ``patterns/municipality.csv``
keep the spec's layout (one line per spec row, one column per pattern, the
spec's own Japanese text), ``patterns/change_reasons.csv`` the change reasons
(異動事由) of each pattern.  ``patterns/SOURCE.md`` records where the text
extraction of the spec was ambiguous and what was decided.  Loading checks the
files strictly, so a bad edit fails at import of the first pattern rather than
in a validation report.
"""

from __future__ import annotations

import csv
import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from types import MappingProxyType

from .items import DIRECTIONS, MINISTRY, MUNICIPALITY, item_by_row

__all__ = [
    "Mark",
    "Pattern",
    "PatternDataError",
    "UnknownPatternError",
    "change_reasons",
    "get_pattern",
    "load_patterns",
]


class Mark(enum.Enum):
    """What a pattern's cell says about one item."""

    CHANGED = "●"  # 記載又は修正の対象項目: new and old value are sent
    CONTEXT = "○"  # 対象項目ではないが連携が必要な項目: current value is sent
    PENDING = "調整中"  # (調整中)/(整理中): the ministry has not settled the cell yet
    NONE = ""  # not carried


class UnknownPatternError(KeyError, ValueError):
    """A pattern code that the direction's table does not have."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class PatternDataError(ValueError):
    """The pattern data files are inconsistent; fix the file named in the message."""


@dataclass(frozen=True, slots=True)
class Pattern:
    """One column of the 【別紙】: an event pattern and the items its records carry."""

    direction: str  # "ministry" | "municipality"
    code: str  # "A" … "BG", "a" … "f"
    case: str  # sheet heading (法務省通知が必要な場合 / 制度・法律)
    persons: str  # 在留資格・地位 / 対象者, as in the spec
    title: str  # 事由 / 届出等
    legal_basis: str  # 項目／条項
    residence_record_effect: str  # 外国人住民の住民票に反映
    card_effect: str  # 在留カード・特別永住者証明書の扱い ('' if none)
    change_facts: frozenset[str]  # allowed change-fact codes, subset of {"1","2","3","4"}
    change_fact_text: str  # row 1 as written, e.g. "●修正"
    event_date_meaning: str  # row 5 as written ('' if blank)
    marks: Mapping[str, Mark] = field(hash=False)  # item_id -> mark, NONE left out
    notes: Mapping[str, str] = field(hash=False)  # item_id -> footnote text
    change_reasons: frozenset[str] = field(hash=False)  # change-reason codes of this pattern
    pending: bool  # row 1 gives no change fact: the spec has not settled the pattern
    row_marks: Mapping[int, Mark] = field(hash=False)  # spec row -> mark, every row


#: Spec rows per direction: rows 1-5 are the event rows, the rest items of the 住民票.
SPEC_ROWS = {MINISTRY: 40, MUNICIPALITY: 38}
EVENT_ROWS = range(1, 6)
CHANGE_FACT_ROW = 1
EVENT_DATE_ROW = 5

#: Change-fact text of row 1 (after its ●) -> change-fact codes (common/codes/change_fact.csv):
#: 1 記載, 2 消除/削除, 3 修正, 4 住民票の回復・記載.
CHANGE_FACTS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "記載": frozenset({"1"}),
        "消除": frozenset({"2"}),
        "削除": frozenset({"2"}),
        "修正": frozenset({"3"}),
        "記載・修正": frozenset({"1", "3"}),
        "記載・修正・削除": frozenset({"1", "2", "3"}),
        "住民票の回復・記載": frozenset({"4"}),
        "住民票回復・記載": frozenset({"4"}),
    }
)

#: Prefix of change-reason codes per direction ("M-A", "C-b").
REASON_PREFIX = {MINISTRY: "M-", MUNICIPALITY: "C-"}

_META_ROWS = (
    "sheet",
    "case",
    "persons",
    "title",
    "legal_basis",
    "residence_record_effect",
    "card_effect",
)
_PENDING_RE = re.compile(r"\((?:調整中|整理中)\)|（(?:調整中|整理中)）")
_NOTE_RE = re.compile(r"※\d+")
_MARK_CELL_RE = re.compile(r"^(?P<mark>[●○])?\s*(?P<notes>(?:※\d+\s*)*)$")


def _letters(count: int) -> list[str]:
    """Spreadsheet-style column codes A, B, …, Z, AA, AB, … (the spec's pattern codes)."""
    out = []
    for n in range(1, count + 1):
        code = ""
        while n:
            n, rest = divmod(n - 1, 26)
            code = chr(ord("A") + rest) + code
        out.append(code)
    return out


#: The pattern codes of the spec, in spec order.
SPEC_CODES = {
    MINISTRY: tuple(_letters(59)),  # A … BG
    MUNICIPALITY: tuple(_letters(31)) + tuple("abcdef"),  # A … AE, a … f
}


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}: use {MINISTRY!r} or {MUNICIPALITY!r}")


def _read_csv(name: str) -> list[list[str]]:
    source = resources.files(__package__).joinpath("patterns", name)
    with source.open(encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def _parse_cell(where: str, row: int, text: str) -> tuple[Mark, tuple[str, ...]]:
    """The mark and footnote keys of one cell; rejects anything the spec does not write."""
    if not text:
        return Mark.NONE, ()
    if _PENDING_RE.search(text):
        return Mark.PENDING, tuple(_NOTE_RE.findall(text))
    if row == EVENT_DATE_ROW:
        return Mark.CHANGED, ()  # a meaning ("転入年月日"): the event date is carried
    if row == CHANGE_FACT_ROW:
        fact = text.removeprefix("●")
        if fact == text or fact not in CHANGE_FACTS:
            raise PatternDataError(f"{where}: row 1 {text!r} is not ● and a known change fact")
        return Mark.CHANGED, ()
    match = _MARK_CELL_RE.match(text)
    if match is None or not match["mark"]:
        raise PatternDataError(f"{where}: row {row} cell {text!r} is not ●, ○, (調整中) or blank")
    return Mark(match["mark"]), tuple(_NOTE_RE.findall(match["notes"]))


def _parse_table(direction: str) -> tuple[list[dict], dict[str, str]]:
    """Columns of ``{direction}.csv`` as dicts, and the footnotes (※n -> text)."""
    name = f"{direction}.csv"
    rows = _read_csv(name)
    if not rows or rows[0][:2] != ["row", "label"]:
        raise PatternDataError(f"{name}: the first line must be 'row,label,<pattern codes…>'")
    codes = rows[0][2:]
    if tuple(codes) != SPEC_CODES[direction]:
        raise PatternDataError(
            f"{name}: pattern columns {codes} are not the spec's {SPEC_CODES[direction]}"
        )
    width = len(rows[0])
    by_key: dict[str, list[str]] = {}
    footnotes: dict[str, str] = {}
    for number, line in enumerate(rows[1:], start=2):
        if len(line) != width:
            raise PatternDataError(f"{name}:{number}: {len(line)} cells, expected {width}")
        key = line[0]
        if key in by_key or key in footnotes:
            raise PatternDataError(f"{name}:{number}: row {key!r} appears twice")
        if _NOTE_RE.fullmatch(key):
            footnotes[key] = line[1]
        else:
            by_key[key] = line
    expected = [*_META_ROWS, *(str(n) for n in range(1, SPEC_ROWS[direction] + 1))]
    if list(by_key) != expected:
        raise PatternDataError(f"{name}: rows {list(by_key)} are not {expected}")
    columns = []
    for index, code in enumerate(codes, start=2):
        column = {key: line[index].strip() for key, line in by_key.items()}
        column["code"] = code
        column["labels"] = {int(key): line[1] for key, line in by_key.items() if key.isdigit()}
        columns.append(column)
    return columns, footnotes


def _parse_reasons(direction: str) -> dict[str, tuple[str, str]]:
    """change_reasons.csv rows of this direction: code -> (pattern code, label)."""
    name = "change_reasons.csv"
    rows = _read_csv(name)
    if not rows or rows[0] != ["code", "direction", "pattern", "label"]:
        raise PatternDataError(f"{name}: the first line must be 'code,direction,pattern,label'")
    out: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(rows[1:], start=2):
        if len(line) != 4 or not all(line):
            raise PatternDataError(f"{name}:{number}: expected 4 non-empty cells")
        code, line_direction, pattern, label = line
        if line_direction not in DIRECTIONS:
            raise PatternDataError(f"{name}:{number}: unknown direction {line_direction!r}")
        if line_direction != direction:
            continue
        if not code.startswith(REASON_PREFIX[direction]):
            raise PatternDataError(
                f"{name}:{number}: code {code!r} lacks {REASON_PREFIX[direction]!r}"
            )
        if code in out:
            raise PatternDataError(f"{name}:{number}: code {code!r} appears twice")
        if pattern not in SPEC_CODES[direction]:
            raise PatternDataError(f"{name}:{number}: no {direction} pattern {pattern!r}")
        out[code] = (pattern, label)
    return out


def _build(
    direction: str, column: dict, footnotes: dict[str, str], reasons: frozenset[str]
) -> Pattern:
    code = column["code"]
    where = f"{direction}.csv, pattern {code}"
    items = item_by_row(direction)
    row_marks: dict[int, Mark] = {}
    marks: dict[str, Mark] = {}
    notes: dict[str, list[str]] = {}
    for row in range(1, SPEC_ROWS[direction] + 1):
        mark, keys = _parse_cell(where, row, column[str(row)])
        row_marks[row] = mark
        if mark is Mark.NONE:
            continue
        item = items.get(row)
        if item is None:
            raise PatternDataError(
                f"{where}: row {row} is marked but common/items.csv has no item for it"
            )
        marks[item.item_id] = mark
        # A footnote may sit in the cell ("○ ※1") or in the row's label ("在留カード等の番号（※2）").
        for key in (*keys, *_NOTE_RE.findall(column["labels"][row])):
            if key not in footnotes:
                raise PatternDataError(
                    f"{where}: row {row} cites {key}, which the table does not define"
                )
            text = f"{key} {footnotes[key]}"
            if text not in notes.setdefault(item.item_id, []):
                notes[item.item_id].append(text)
    fact_text = column[str(CHANGE_FACT_ROW)]
    pending = row_marks[CHANGE_FACT_ROW] is not Mark.CHANGED
    facts = frozenset() if pending else CHANGE_FACTS[fact_text.removeprefix("●")]
    if not reasons:
        raise PatternDataError(
            f"change_reasons.csv: {direction} pattern {code} has no change reason"
        )
    return Pattern(
        direction=direction,
        code=code,
        case=column["case"],
        persons=column["persons"],
        title=column["title"],
        legal_basis=column["legal_basis"],
        residence_record_effect=column["residence_record_effect"],
        card_effect=column["card_effect"],
        change_facts=facts,
        change_fact_text=fact_text,
        event_date_meaning=column[str(EVENT_DATE_ROW)],
        marks=MappingProxyType(marks),
        notes=MappingProxyType({item_id: "\n".join(texts) for item_id, texts in notes.items()}),
        change_reasons=reasons,
        pending=pending,
        row_marks=MappingProxyType(row_marks),
    )


@cache
def _tables(direction: str) -> tuple[Mapping[str, Pattern], Mapping[str, str]]:
    columns, footnotes = _parse_table(direction)
    reasons = _parse_reasons(direction)
    sheets = [column["sheet"] for column in columns]
    if not all(s.isdigit() for s in sheets) or sheets != sorted(sheets, key=int):
        raise PatternDataError(
            f"{direction}.csv: sheet numbers {sheets} must be ascending integers"
        )
    patterns = {}
    for column in columns:
        own = frozenset(code for code, (pattern, _) in reasons.items() if pattern == column["code"])
        patterns[column["code"]] = _build(direction, column, footnotes, own)
    labels = {code: label for code, (_, label) in reasons.items()}
    return MappingProxyType(patterns), MappingProxyType(labels)


def load_patterns(direction: str) -> Mapping[str, Pattern]:
    """All patterns of ``direction`` ("ministry" or "municipality"), code -> pattern, in spec order.

    Read once and cached; the mapping is read-only.  Raises ``PatternDataError`` if the
    data files are inconsistent and ``ValueError`` for an unknown direction.
    """
    _check_direction(direction)
    return _tables(direction)[0]


def get_pattern(direction: str, code: str) -> Pattern:
    """The pattern ``code`` of ``direction``; ``UnknownPatternError`` if the spec has none.

    Codes are case-sensitive: municipality "A" (転入届) and "a" (出生届) differ.
    """
    try:
        return load_patterns(direction)[code]
    except KeyError:
        raise UnknownPatternError(
            f"no {direction} pattern {code!r} in the 【別紙】 tables"
        ) from None


def change_reasons(direction: str) -> Mapping[str, str]:
    """Change reasons (異動事由) of ``direction``: code ("M-A", "C-b" …) -> Japanese label."""
    _check_direction(direction)
    return _tables(direction)[1]


#: 対象者 text (start) -> resident category code (common/codes/resident_category.csv).
_PERSONS_CATEGORY = (
    ("特別永住", "2"),
    ("一時庇護", "3"),
    ("仮滞在", "4"),
    ("出生", "5"),
    ("経過", "5"),
    ("中長期", "1"),
)


def persons_category(pattern: Pattern) -> str | None:
    """The resident category the pattern's persons (対象者) start from, if the spec names one.

    The ministry's 消除 sheet lists several categories for one pattern; there the
    first named is returned, and callers that care read the record's own
    ``resident_category``.  Municipality sheets W… and a…f name none (None).
    """
    for prefix, code in _PERSONS_CATEGORY:
        if pattern.persons.startswith(prefix):
            return code
    return None
